"""Legacy HDF5 Keras files (``.h5``/``.hdf5``) as Keras 2.x, tf.keras and Keras 3 wrote them.

The file is read with h5py, never handed whole to ``keras.saving.load_model``: the stored config
(root attribute ``model_config``, plus ``keras_version`` and ``backend``) is checked and repaired
for Keras 3 (:mod:`aegis.io.keras_repair`), the model is rebuilt from it in Keras' safe mode, and
the weights are loaded into it by Keras 3's legacy HDF5 weight loader (matched layer by layer, in
order). The file may hold:

- a whole model (``model.save("net.h5")``): ``model_config`` and a ``model_weights`` group;
- weights only, Keras 2 layout (``model.save_weights("w.h5")``: ``layer_names`` at the root) or
  Keras 3 layout (``model.save_weights("net.weights.h5")``: ``layers``/``vars`` groups).

The architecture of a weights-only file comes from ``factory`` (``--factory``: a function that
returns the Keras model) or from the JSON that ``model.to_json()`` wrote, found where the sidecar
is (``<name>.json`` or ``model.json``) and told apart from aegis' metadata sidecar by its content
(a ``class_name`` and a ``config``). A factory also rebuilds a whole-model file whose config Keras
3 cannot (a custom layer); its weights then come from the file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis.errors import AegisError, ModelError, UnsafeFileError
from aegis.io.factories import _resolve_factory
from aegis.io.keras_repair import Repairer, keras_major, lambda_message, refuse_code
from aegis.io.loaded import Factory, _corrupt, _one_line


@dataclass(frozen=True)
class KerasBuild:
    """What the caller knows beyond the file: sidecar, factory and how far to trust them."""

    sidecar: Mapping[str, Any] = field(default_factory=dict)
    factory: str | Factory | None = None
    factory_kwargs: Mapping[str, Any] | None = None
    trust_sidecar: bool = False
    allow_unsafe: bool = False


@dataclass
class _Contents:
    config: Any  # the decoded model_config, None for a weights-only file
    version: str  # keras_version, "unknown" if the file does not say
    backend: str
    weights: str  # "model" (model_weights group), "legacy" (Keras 2 save_weights), "keras3", ""


def _load_hdf5(keras: Any, file: Path, build: KerasBuild) -> tuple[Any, str, dict[str, str]]:
    """The Keras model in ``file``, the format name and the notes for the provenance."""
    h5py = _import_h5py()
    try:
        handle = h5py.File(file, "r")
    except Exception as exc:  # h5py cannot parse the bytes
        raise _corrupt(file, "an HDF5 file", exc) from exc
    with handle:
        try:
            found = _contents(file, handle)
        except Exception as exc:
            if isinstance(exc, AegisError) or not _damaged(exc):
                raise
            raise _corrupt(file, "an HDF5 file", exc) from exc
        _check_version(file, found)
        side = build.sidecar
        use_factory = build.factory is not None or (found.config is None and side.get("factory"))
        if use_factory:
            _need_weights(file, found)
            model, source = _factory_model(keras, file, build)
            _load_weights(keras, file, handle, found, model)
            what = f"{_what(found)}: weights loaded into the factory's model"
            notes = {"factory": source, "keras": what}
            return model, "keras HDF5 weights + factory", notes
        config, notes = found.config, {}
        if config is None:
            config = _architecture(side)
            if config is None:
                raise ModelError(
                    f"{file.name} is a Keras weights-only file (no model config); pass --factory "
                    "package.module:function that returns the Keras model, or put its "
                    "model.to_json() beside it as model.json"
                )
            notes["architecture"] = "model.to_json() config from the sidecar"
            if found.version == "unknown" and isinstance(side.get("keras_version"), str):
                found.version = side["keras_version"][:40]
                _check_version(file, found)
        _need_weights(file, found)
        model, repairs = _rebuild(keras, file, config, found, allow_unsafe=build.allow_unsafe)
        _load_weights(keras, file, handle, found, model)
    notes["keras"] = _what(found) + (f": config repaired: {'; '.join(repairs)}" if repairs else "")
    fmt = "keras (legacy HDF5)" if found.config is not None else "keras HDF5 weights + JSON config"
    return model, fmt, notes


def _what(found: _Contents) -> str:
    version = "" if found.version == "unknown" else f" {found.version}"
    backend = "" if found.backend == "unknown" else f" (backend {found.backend})"
    return f"Keras{version} HDF5{backend}"


def _saved_by(found: _Contents) -> str:
    if found.version == "unknown":
        return "no keras_version recorded"
    return f"saved by Keras {found.version}"


def _import_h5py() -> Any:
    try:
        import h5py
    except Exception as exc:
        raise ModelError(
            f"cannot import h5py ({_one_line(exc)}); install it with: pip install h5py"
        ) from exc
    return h5py


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "decode"):
        return str(value.decode("utf-8", errors="replace"))
    return str(value)


def _contents(file: Path, handle: Any) -> _Contents:
    attrs = handle.attrs
    group = handle.get("model_weights")
    group_attrs = group.attrs if group is not None and hasattr(group, "attrs") else {}
    version = _text(attrs.get("keras_version")) or _text(group_attrs.get("keras_version"))
    backend = _text(attrs.get("backend")) or _text(group_attrs.get("backend"))
    config = None
    raw = _text(attrs.get("model_config"))
    if raw is not None:
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise ModelError(
                f"the model_config of {file.name} is not valid JSON ({_one_line(exc, 120)}); the "
                "file is corrupt: re-save or re-download it"
            ) from exc
    if group is not None:
        weights = "model"
    elif "layer_names" in attrs or "layer_names0" in attrs:
        weights = "legacy"
    elif "layers" in handle or "vars" in handle:
        weights = "keras3"
    else:
        weights = ""
    if config is None and not weights:
        raise ModelError(
            f"{file.name} is an HDF5 file without a Keras model or weights (no model_config, "
            "model_weights or layer_names); pass the file Keras saved with model.save()"
        )
    return _Contents(config, version or "unknown", backend or "unknown", weights)


def _check_version(file: Path, found: _Contents) -> None:
    major = keras_major(found.version)
    if major is not None and major < 2:
        raise ModelError(
            f"{file.name} was saved by Keras {found.version}, whose configs and weights Keras 3 "
            "cannot read; load it in Keras 2 and re-save it there with model.save()"
        )
    if found.backend == "theano" and "Conv" in json.dumps(found.config or ""):
        raise ModelError(
            f"{file.name} was saved by Keras {found.version} on the theano backend, whose "
            "convolution kernels Keras 3 would read flipped; re-save it with the tensorflow backend"
        )


def _need_weights(file: Path, found: _Contents) -> None:
    if not found.weights:
        raise ModelError(
            f"{file.name} holds a Keras model config but no weights (no model_weights group); "
            "re-save it with model.save() after training"
        )


def _architecture(sidecar: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``model.to_json()`` config found where the sidecar is, if that is what it holds."""
    if isinstance(sidecar.get("class_name"), str) and "config" in sidecar:
        return {"class_name": sidecar["class_name"], "config": sidecar["config"]}
    return None


def _rebuild(
    keras: Any, file: Path, config: Any, found: _Contents, *, allow_unsafe: bool
) -> tuple[Any, list[str]]:
    """The model its config describes, repaired for Keras 3, built in Keras' safe mode."""
    try:
        from keras.src.legacy.saving import saving_options, saving_utils
        from keras.src.saving import serialization_lib
    except ImportError as exc:
        raise ModelError(
            f"keras {keras.__version__} lacks its legacy HDF5 loader ({_one_line(exc)}); "
            "install keras>=3.3"
        ) from exc
    refuse_code(config, file.name, allow_unsafe=allow_unsafe)
    major = keras_major(found.version)
    repairs = Repairer(keras, file.name, legacy=major is not None and major < 3).repair(config)
    legacy = saving_options.keras_option_scope(use_legacy_config=True)
    try:
        with legacy, serialization_lib.SafeModeScope(not allow_unsafe), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = saving_utils.model_from_config(config)
    except AegisError:
        raise
    except Exception as exc:
        text = str(exc)
        if not allow_unsafe and ("safe_mode" in text or "Lambda" in text):
            raise UnsafeFileError(lambda_message(file.name)) from exc
        raise ModelError(
            f"Keras {keras.__version__} cannot rebuild {file.name} ({_saved_by(found)}): "
            f"{keras_detail(exc)}; pass --factory package.module:function "
            "that builds the model (the weights load from the file)"
        ) from exc
    return model, repairs


def _factory_model(keras: Any, file: Path, build: KerasBuild) -> tuple[Any, str]:
    fn, kwargs, source = _resolve_factory(
        file,
        build.sidecar,
        build.factory,
        build.factory_kwargs,
        trust_sidecar=build.trust_sidecar,
    )
    name = source.split(": ", 1)[1]
    try:
        model = fn(**kwargs)
    except AegisError:
        raise
    except Exception as exc:
        raise ModelError(
            f"factory {name}(**{kwargs}) failed ({_one_line(exc)}); check --factory and "
            "factory_kwargs"
        ) from exc
    if not isinstance(model, keras.Model):
        raise ModelError(
            f"factory {name} returned {type(model).__name__}, not a Keras model; a Keras weights "
            "file needs --factory pointing at a function that returns the keras.Model"
        )
    if not model.built:
        raise ModelError(
            f"factory {name} returned a Keras model that is not built; start it with keras.Input"
            "(shape) or call model.build((None, *shape)) in the factory"
        )
    return model, source + (f" with {kwargs}" if kwargs else "")


def _load_weights(keras: Any, file: Path, handle: Any, found: _Contents, model: Any) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if found.weights == "keras3":
                with _weights_h5_name(file) as path:
                    model.load_weights(str(path))
            else:
                from keras.src.legacy.saving import legacy_h5_format

                group = handle["model_weights"] if found.weights == "model" else handle
                legacy_h5_format.load_weights_from_hdf5_group(group, model)
    except AegisError:
        raise
    except Exception as exc:
        if _damaged(exc):
            raise _corrupt(file, "an HDF5 file", exc) from exc
        raise ModelError(
            f"the weights in {file.name} ({_saved_by(found)}) do not fit the model "
            f"({_one_line(exc)}); check --factory and factory_kwargs, or re-save the model "
            "whole with model.save()"
        ) from exc


def _damaged(exc: BaseException) -> bool:
    """Whether h5py failed on the bytes themselves (not on a name the model asked for)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    h5_error = "synchronously" in text or "Unable to open object" in text
    return isinstance(exc, (KeyError, RuntimeError)) and h5_error and "doesn't exist" not in text


def keras_detail(exc: BaseException) -> str:
    """Keras' deserialization error without the config it repeats: the class and the cause."""
    text = str(exc)
    found = re.search(r"deserializing class '([^']+)'.*?Exception encountered: (.*)", text, re.S)
    if found:
        return f"layer class {found.group(1)}: {_one_line(RuntimeError(found.group(2)), 160)}"
    return _one_line(exc)


@contextmanager
def _weights_h5_name(file: Path) -> Iterator[Path]:
    """``file`` under a name ending in ``.weights.h5``, which Keras 3 requires of that layout."""
    if file.name.endswith(".weights.h5"):
        yield file
        return
    with tempfile.TemporaryDirectory(prefix="aegis-keras-") as tmp:
        link = Path(tmp) / "model.weights.h5"
        try:
            os.symlink(file.resolve(), link)
        except OSError:
            link.write_bytes(file.read_bytes())
        yield link
