"""Validation of the hyper-parameters the iterative gradient attacks share (written once)."""

from __future__ import annotations

from aegis.errors import ConfigError


def check_iterative(steps: int, step_size: float | None, restarts: int, sparsity: float) -> None:
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if step_size is not None and not step_size > 0:
        raise ConfigError(f"step_size must be > 0, got {step_size}")
    if restarts < 1:
        raise ConfigError(f"restarts must be >= 1, got {restarts}")
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")


STEP_FACTOR = 2.5
"""The default step of the iterative attacks: ``STEP_FACTOR · eps / steps`` (Madry et al.)."""


def resolve_step(
    step_size: float | None, eps: float, steps: int, factor: float = STEP_FACTOR
) -> float:
    """An explicit step size, or ``factor · eps / steps`` (by default Madry et al.'s 2.5, the
    one place that rule is written; BIM and MI-FGSM pass 1.0)."""
    return step_size if step_size is not None else factor * eps / steps
