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


def resolve_step(step_size: float | None, eps: float, steps: int, factor: float) -> float:
    """An explicit step size, or ``factor · eps / steps`` (Madry et al. use factor 2.5)."""
    return step_size if step_size is not None else factor * eps / steps
