"""The reference models' files: weights (safetensors) beside a JSON sidecar, reuse of a model
trained with the same hyper-parameters, and rebuilding a zoo model from its files."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from aegis.errors import ModelError
from aegis.io.digest import file_sha256
from aegis.io.sidecar import METADATA_KEYS, read_sidecar
from aegis.model import Classifier, ModelInfo
from aegis.zoo.architectures import ARCHITECTURES

FACTORY_PREFIX = "aegis.zoo.architectures:"


@dataclass(frozen=True)
class TrainResult:
    """Where the model was written and how good it is."""

    model_path: Path
    sidecar_path: Path
    test_accuracy: float
    robust_accuracy: float | None
    seconds: float
    epochs: int
    reused: bool = False
    defense: str | None = None
    resumed_from_epoch: int = 0  # finished epochs read back from a checkpoint (0: fresh run)
    noisy_test_accuracy: float | None = None  # under the training noise (noise_sigma models)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["model_path"] = str(self.model_path)
        out["sidecar_path"] = str(self.sidecar_path)
        return out


def save_weights(module: nn.Module, path: Path, params: dict[str, Any]) -> str:
    """Atomically write the weights as safetensors; return their SHA-256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata={"factory": FACTORY_PREFIX + params["arch"]})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return file_sha256(path)


def reuse(model_path: Path, side_path: Path, params: dict[str, Any]) -> TrainResult | None:
    if not (model_path.is_file() and side_path.is_file()):
        return None
    try:
        meta = read_sidecar(model_path)
    except ModelError:
        return None
    if meta.get("training") != params or meta.get("sha256") != file_sha256(model_path):
        return None
    test_acc = meta.get("test_accuracy")
    robust = meta.get("robust_accuracy")
    if not isinstance(test_acc, float) or not (robust is None or isinstance(robust, float)):
        return None
    return TrainResult(
        model_path=model_path,
        sidecar_path=side_path,
        test_accuracy=test_acc,
        robust_accuracy=robust,
        seconds=float(meta.get("seconds", 0.0)),
        epochs=int(params["epochs"]),
        reused=True,
    )


def load_reference(path: Path | str) -> Classifier:
    """Rebuild a zoo model from its safetensors file and sidecar (no general loader needed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file {path}; train it first with aegis.zoo.train_reference")
    meta = read_sidecar(path)
    factory = meta.get("factory")
    if not isinstance(factory, str) or not factory.startswith(FACTORY_PREFIX):
        raise ModelError(
            f"{path} has no zoo sidecar (factory {factory!r}); load it with "
            "aegis.io.models.load_classifier instead"
        )
    arch = factory[len(FACTORY_PREFIX) :]
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"{path} names unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}"
        )
    kwargs = meta.get("factory_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelError(f"sidecar of {path} has factory_kwargs that are not an object; fix it")
    try:
        module = ARCHITECTURES[arch](**kwargs)
        module.load_state_dict(load_file(str(path)))
        info = ModelInfo(
            num_classes=int(meta["num_classes"]),
            input_shape=_triple(meta["input_shape"]),
            bounds=(float(meta.get("bounds", [0, 1])[0]), float(meta.get("bounds", [0, 1])[1])),
            mean=None if meta.get("mean") is None else tuple(meta["mean"]),
            std=None if meta.get("std") is None else tuple(meta["std"]),
            layout=str(meta.get("layout", "NCHW")),
        )
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
        raise ModelError(
            f"cannot rebuild {path} from its sidecar ({exc}); retrain it with force=True"
        ) from exc
    module.eval()
    return Classifier(
        module,
        info,
        name=path.stem,
        source=str(path),
        provenance={k: "sidecar" for k in METADATA_KEYS if k in meta},
    )


def _triple(value: Any) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in value)
    return (c, h, w)
