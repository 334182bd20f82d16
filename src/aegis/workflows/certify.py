"""The certify workflow, the Python call behind ``aegis certify``: load, certify every input
by randomized smoothing (:mod:`aegis.defenses.certification`), and write the run directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis.defenses.certification import (
    Smoothing,
    certified_radius,
    certify,
    clopper_pearson_lower,
)
from aegis.errors import ConfigError
from aegis.io import rundir
from aegis.io.inputs import load_inputs
from aegis.metrics import certification_summary
from aegis.model import Classifier
from aegis.workflows.result import WorkflowResult
from aegis.workflows.rundir_writer import write_results


def run_certify(
    model: Classifier | str | Path,
    data: Any,
    *,
    smoothing: Smoothing,
    radii: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
    labels: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
) -> WorkflowResult:
    """Load, certify every input, and return (and write to ``out``/results.json) the results
    (kind ``certify``): a ``certification`` section with certified accuracy at each radius and
    the abstain rate, and the per-sample certificates (also the result's ``records``)."""

    grid = [float(r) for r in radii]
    if not grid or any(not r >= 0 for r in grid):
        raise ConfigError(f"radii must be >= 0, got {list(radii)}")
    clf, dataset, y = load_inputs(model, data, labels, limit, data_options, model_options)
    n = len(dataset.x)
    report = None if progress is None else (lambda done: progress(done, n))
    cert = certify(clf, dataset.x, y, smoothing, seed=seed, progress=report)
    results: dict[str, Any] = {
        **rundir.header(seed, "certification"),
        "model": clf.describe(),
        "data": dataset.to_dict(),
        "config": {
            "method": "randomized-smoothing",
            "paper": "https://arxiv.org/abs/1902.02918",
            "smoothing": smoothing.to_dict(),
            "radii": sorted(grid),
            "noise_clipped": False,
            # with all n samples on one class: no radius above this can be certified
            "max_certifiable_radius": certified_radius(
                clopper_pearson_lower(smoothing.n, smoothing.n, smoothing.alpha), smoothing.sigma
            ),
        },
        "certification": certification_summary(cert, grid),
        "seconds": float(cert.seconds.sum()),
        "certificates": cert.to_dict(),
        "files": {},
    }
    written = results if out is None else write_results(out, results)
    return WorkflowResult.of("certify", written, records=cert)


@dataclass(frozen=True)
class NoiseTraining:
    """What ``train_smoothed_base`` wrote and how good the base model is."""

    model_path: Path
    test_accuracy: float
    noisy_test_accuracy: float
    seconds: float


def train_smoothed_base(
    dataset: str = "mnist",
    *,
    out_dir: Path | str,
    sigma: float = 0.25,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float | None = None,
    augment_shift: int | None = None,
    progress: bool = False,
) -> NoiseTraining:
    """Train (or reuse) the zoo CNN of a built-in dataset on Gaussian-noise-augmented inputs
    (every batch gets N(0, σ²) noise, not clipped, as in Cohen et al.) with the reference
    trainer (``train_reference(noise_sigma=σ)``, the same as ``aegis train --noise-sigma σ``)
    and save it with a sidecar as ``<dataset>_cnn_noise<σ>.safetensors``, loadable by
    ``aegis certify``. Deterministic for a seed on one machine and thread count."""
    from aegis.zoo.train import train_reference

    result = train_reference(
        dataset,
        out_dir=Path(out_dir),
        noise_sigma=sigma,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        augment_shift=augment_shift,
        progress=progress,
    )
    if result.noisy_test_accuracy is None:  # a reused model from before the field existed
        raise ConfigError(f"{result.model_path} has no noisy accuracy; retrain it with force")
    return NoiseTraining(
        result.model_path, result.test_accuracy, result.noisy_test_accuracy, result.seconds
    )
