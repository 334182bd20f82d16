"""Per-sample records: the single source every metric, table, plot and verdict is computed from."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

NORM_FIELDS = ("l0", "l1", "l2", "linf")


@dataclass
class Records:
    """One row per evaluated sample (arrays of equal length).

    ``target`` is −1 for untargeted attacks. ``eligible`` is False for targeted points whose true
    label already is the target (they are excluded from the targeted success rate). ``attacked``
    marks the points the attack ran on (by default the eligible, correctly classified ones);
    for the others ``adv_pred`` equals ``clean_pred`` and the norms are 0. ``success`` is decided
    by predicting again on the returned input: untargeted ``adv_pred != y``, targeted
    ``adv_pred == target``, and only for attacked points.
    """

    index: np.ndarray
    y: np.ndarray
    target: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    eligible: np.ndarray
    attacked: np.ndarray
    success: np.ndarray
    attack_index: np.ndarray  # which member of an ensemble succeeded first; −1 for none
    l0: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    forward_calls: np.ndarray
    gradient_calls: np.ndarray
    seconds: np.ndarray  # the sample's share of its batch's wall time

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def targeted(self) -> bool:
        return bool(len(self) and (self.target >= 0).any())

    @classmethod
    def empty(cls) -> Records:
        return cls.concat([])

    @classmethod
    def concat(cls, parts: list[Records]) -> Records:
        out: dict[str, np.ndarray] = {}
        for f in fields(cls):
            arrays = [getattr(p, f.name) for p in parts]
            out[f.name] = np.concatenate(arrays) if arrays else np.zeros(0, dtype=_DTYPES[f.name])
        return cls(**out)

    def within(self, norm: str, eps: float) -> Records:
        """The records a bounded run at ``eps`` implies, from a minimal-norm (unbounded) run.

        A success whose ``norm`` exceeds ``eps`` becomes a failure: the point keeps its clean
        prediction and zero norms, as if the attack returned the input unchanged (the input it
        would return is then the clean one, an upper bound on robust accuracy at ``eps``).
        """
        size = getattr(self, norm)
        lost = self.success & (size > eps)
        out = Records(**{f.name: getattr(self, f.name).copy() for f in fields(self)})
        out.success = self.success & ~lost
        out.adv_pred = np.where(lost, self.clean_pred, self.adv_pred)
        out.attack_index = np.where(lost, -1, self.attack_index)
        for name in NORM_FIELDS:
            getattr(out, name)[lost] = 0.0
        return out

    def to_dict(self) -> dict[str, list[Any]]:
        return {f.name: getattr(self, f.name).tolist() for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, list[Any]]) -> Records:
        return cls(**{f.name: np.asarray(data[f.name], dtype=_DTYPES[f.name]) for f in fields(cls)})


_DTYPES: dict[str, type] = {
    "index": np.int64,
    "y": np.int64,
    "target": np.int64,
    "clean_pred": np.int64,
    "adv_pred": np.int64,
    "eligible": np.bool_,
    "attacked": np.bool_,
    "success": np.bool_,
    "attack_index": np.int64,
    "l0": np.float64,
    "l1": np.float64,
    "l2": np.float64,
    "linf": np.float64,
    "forward_calls": np.int64,
    "gradient_calls": np.int64,
    "seconds": np.float64,
}


ABSTAIN = -1
"""The prediction of a smoothed classifier that abstains."""


@dataclass
class Certificates:
    """One row per certified sample (randomized smoothing, see ``aegis.defenses.certification``).

    ``prediction`` is the smoothed classifier's class or ``ABSTAIN`` (−1); ``radius`` is the
    certified L2 radius (0 for an abstain); ``p_lower`` the lower confidence bound on the top
    class's probability under noise; ``count`` how many of the ``n`` estimation samples the
    base classifier gave that class. An abstain is never correct.
    """

    index: np.ndarray
    y: np.ndarray
    prediction: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    count: np.ndarray
    seconds: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def correct(self) -> np.ndarray:
        return np.asarray((self.prediction == self.y) & (self.prediction != ABSTAIN))

    @property
    def abstained(self) -> np.ndarray:
        return np.asarray(self.prediction == ABSTAIN)

    def to_dict(self) -> dict[str, list[Any]]:
        out = {f.name: getattr(self, f.name).tolist() for f in fields(self)}
        out["correct"] = self.correct.tolist()
        return out
