"""One exception tree. The CLI turns any AegisError into a one-line message and exit code 1
(2 for a UsageError: an option value the command cannot take)."""

from __future__ import annotations


class AegisError(Exception):
    """Base of every error aegis raises on purpose; its message names the problem and the fix."""


class ConfigError(AegisError, ValueError):
    """An impossible or contradictory parameter (eps < 0, steps = 0, unknown attack name, ...)."""


class UsageError(ConfigError):
    """A command-line option value the command cannot take; the CLI exits with code 2."""


class DataError(AegisError, ValueError):
    """The data cannot be used as given (shape, dtype, NaN, range, labels)."""


class ModelError(AegisError):
    """The model file cannot be loaded or does not match the data / metadata."""


class UnsafeFileError(ModelError):
    """Loading this file would execute code from it; the user must opt in explicitly."""


class CapabilityError(AegisError):
    """The attack needs something the model lacks (e.g. gradients of a query-only model)."""


class TrackingError(AegisError):
    """Logging a run to an experiment tracker (MLflow) failed, or the tracker is not installed."""


class AegisWarning(UserWarning):
    """A suspicion (gradient masking, randomness, model in training mode, ...) worth recording."""
