"""Defenses: input preprocessing (attacked adaptively, with BPDA and EOT, by default).

>>> from aegis.defenses import defend, parse_preprocess
>>> defended = defend(model, [parse_preprocess("jpeg:quality=75")])
"""

from __future__ import annotations

from aegis.defenses.preprocessing import (
    DEFAULT_EOT_SAMPLES,
    DefendedClassifier,
    Preprocessor,
    create_preprocessor,
    defend,
    list_preprocessors,
    parse_preprocess,
)

__all__ = [
    "DEFAULT_EOT_SAMPLES",
    "DefendedClassifier",
    "Preprocessor",
    "create_preprocessor",
    "defend",
    "list_preprocessors",
    "parse_preprocess",
]
