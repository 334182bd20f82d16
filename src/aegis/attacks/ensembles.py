"""Attack suites: named ensembles run in order, per-sample worst case (the engine's job).

``standard`` is AutoAttack's standard protocol (Croce & Hein 2020,
https://arxiv.org/abs/2003.01690) with its budgets, so its numbers compare with published ones:
APGD-CE (100 steps) → APGD-T (100 steps, 9 target classes) → FAB-T (100 steps, 9 targets) →
Square (5,000 queries), each run only on the points every earlier one failed on. For L1 the
reference runs APGD-CE with 5 restarts and APGD-T with 5 targets, both with the larger-ε
warm-up; Square has no L1 version here, so the L1 suite ends with FAB-T (see docs).

``minimal`` runs minimal-norm attacks that take different routes to the boundary and keeps,
per point, the smallest adversarial perturbation any of them found (L2: DDN, FMN, FAB; L∞:
FMN, FAB; L1: FMN, FAB, EAD; L0: FMN); run unbounded it gives the tightest minimal-norm curve
aegis can compute.

``fast`` is for quick checks while developing a model, not for reporting: APGD-CE and APGD-T
(3 targets), 25 steps each. Its budgets may be overridden; the standard suite's may not.

    >>> run_attack(model, data, attack="standard", norm="linf", eps=0.3)
"""

from __future__ import annotations

from aegis.registry import EnsembleSpec, register_ensemble

AUTOATTACK = "https://arxiv.org/abs/2003.01690"

_DENSE = (
    ("apgd-ce", {"steps": 100, "restarts": 1}),
    ("apgd-t", {"steps": 100, "restarts": 1, "target_classes": 9}),
    ("fab-t", {"steps": 100, "restarts": 1, "target_classes": 9}),
    ("square", {"queries": 5000, "restarts": 1, "p_init": 0.8, "rescale_schedule": False}),
)
_L1 = (
    ("apgd-ce", {"steps": 100, "restarts": 5}),
    ("apgd-t", {"steps": 100, "restarts": 1, "target_classes": 5}),
    ("fab-t", {"steps": 100, "restarts": 1, "target_classes": 9}),
)

STANDARD = register_ensemble(
    EnsembleSpec(
        "standard",
        {"linf": _DENSE, "l2": _DENSE, "l1": _L1},
        AUTOATTACK,
        "AutoAttack's standard suite with its budgets: APGD-CE, APGD-T, FAB-T, Square",
        fixed=True,
    )
)

_FAST = (
    ("apgd-ce", {"steps": 25}),
    ("apgd-t", {"steps": 25, "target_classes": 3}),
)

FAST = register_ensemble(
    EnsembleSpec(
        "fast",
        {"linf": _FAST, "l2": _FAST, "l1": _FAST},
        AUTOATTACK,
        "quick check, not for reporting: APGD-CE and APGD-T (3 targets), 25 steps each",
        fixed=False,
    )
)

MINIMAL = register_ensemble(
    EnsembleSpec(
        "minimal",
        {
            "l2": (("ddn", {}), ("fmn", {}), ("fab", {})),
            "linf": (("fmn", {}), ("fab", {})),
            "l1": (("fmn", {}), ("fab", {}), ("ead", {})),
            "l0": (("fmn", {}),),
        },
        "https://arxiv.org/abs/2102.12827",
        "per point, the smallest adversarial perturbation of several minimal-norm attacks",
        fixed=False,
    )
)
