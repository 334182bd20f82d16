"""Checks and repairs of a Keras model config (the JSON of ``model.to_json()`` or of an HDF5
file's ``model_config`` attribute) before Keras 3 rebuilds it.

Keras 2.x and tf.keras wrote configs that Keras 3 misreads or refuses; each repair here is a
known Keras 2 → 3 difference, and each one applied is reported in words for the provenance:

- a ``Sequential`` whose first layer carries ``batch_input_shape`` and has no ``InputLayer``
  (Keras 2.0-2.3): an ``InputLayer`` with that batch shape is inserted (Keras 3 would otherwise
  read the batch shape as a per-sample shape and fail with "Kernel shape must have the same length
  as input");
- the Keras 2.0/2.1 ``Sequential`` config that is a bare list of layers: wrapped in
  ``{"name", "layers"}``;
- ``"class_name": "Model"`` (Keras 2 functional models): renamed ``Functional``;
- ``InputLayer`` ``batch_input_shape``: renamed ``batch_shape``; on other layers it is dropped;
- tf.keras mixed-precision ``Policy`` dtypes: replaced by the policy's name;
- ``ThresholdedReLU`` (removed in Keras 3): a ``ReLU`` with ``threshold=theta``;
- settings Keras 3 layers no longer take whose value changes nothing at inference
  (``DepthwiseConv2D.groups=1``, ``BatchNormalization.fused``, ``None``/``False`` flags): dropped.

Keras 1/2 weight initializers are dropped silently: the weights are loaded from the file anyway.
Nothing here executes code from the config: Lambda layers and Python modules outside Keras are
refused before Keras sees the config, unless the user allowed unsafe files.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

from aegis.errors import ModelError, UnsafeFileError

_MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
_INERT_KEYS = frozenset({"fused", "adjustment", "force_generator"})  # tf.keras, training only
_TF_ONLY = frozenset({"TFOpLambda", "SlicingOpLambda", "TFOpLayer", "TensorFlowOpLayer"})
_WRAPPED_KEYS = ("layer", "forward_layer", "backward_layer")
_BASE_KEYS = frozenset(
    {"name", "trainable", "dtype", "autocast", "input_shape", "input_dim", "activity_regularizer"}
)


def lambda_message(file_name: str) -> str:
    return (
        f"{file_name} has a Keras Lambda layer whose Python bytecode would run on load; "
        "pass --unsafe-pickle only if you trust its source, or rebuild it without Lambda"
    )


def keras_major(version: str) -> int | None:
    """The major version of a ``keras_version`` attribute ("2.2.4-tf" → 2), None if unknown."""
    found = re.match(r"\s*(\d+)\.", version)
    return int(found.group(1)) if found else None


def refuse_code(config: Any, file_name: str, *, allow_unsafe: bool) -> None:
    """Refuse a config that would run Python from the file (Lambda) or import a foreign module."""
    if allow_unsafe:
        return
    for node in _dicts(config, 0):
        if node.get("class_name") == "Lambda":
            raise UnsafeFileError(lambda_message(file_name))
        module = node.get("module")
        if isinstance(module, str) and module != "keras" and not module.startswith("keras."):
            raise UnsafeFileError(
                f"{file_name} names the Python module {module[:80]!r} in its Keras config; aegis "
                "builds only Keras' own layers: pass --unsafe-pickle only if you trust its source"
            )


def _dicts(value: Any, depth: int) -> Iterator[dict[str, Any]]:
    if depth > 64:
        raise ModelError("the Keras config is nested more than 64 levels deep; re-save the model")
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item, depth + 1)


class Repairer:
    """Repairs one model config in place; :attr:`notes` says what it changed."""

    def __init__(self, keras: Any, file_name: str, *, legacy: bool) -> None:
        self.keras = keras
        self.file_name = file_name
        self.legacy = legacy  # written by Keras 1/2: initializers are dropped
        self.notes: list[str] = []
        self.dropped: list[str] = []

    def repair(self, config: Any) -> list[str]:
        if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
            raise ModelError(
                f"the Keras config of {self.file_name} has no class_name; re-save the model with "
                "model.save() or pass --factory package.module:function that builds it"
            )
        self._model(config)
        if self.dropped:
            self._note("dropped settings Keras 3 lacks: " + ", ".join(sorted(set(self.dropped))))
        return self.notes

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _model(self, node: dict[str, Any]) -> None:
        if node["class_name"] == "Model":
            node["class_name"] = "Functional"
            self._note("class Model renamed Functional")
        inner = node.get("config")
        if node["class_name"] == "Sequential" and isinstance(inner, list):
            inner = node["config"] = {"name": "sequential", "layers": inner}
            self._note("Keras 2.0 layer list wrapped in a Sequential config")
        if not isinstance(inner, dict) or not isinstance(inner.get("layers"), list):
            raise ModelError(
                f"the {node['class_name']} config in {self.file_name} has no list of layers; "
                "re-save the model or pass --factory package.module:function that builds it"
            )
        layers: list[Any] = inner["layers"]
        if node["class_name"] == "Sequential":
            inner.setdefault("name", "sequential")
            self._add_input_layer(layers)
        for layer in layers:
            self._layer(layer)

    def _add_input_layer(self, layers: list[Any]) -> None:
        if not layers or not isinstance(layers[0], dict):
            return
        first = layers[0]
        inner = first.get("config")
        if first.get("class_name") == "InputLayer" or not isinstance(inner, dict):
            return
        shape = inner.get("batch_input_shape")
        if not isinstance(shape, list):
            return
        del inner["batch_input_shape"]
        names = {_name_of(lay) for lay in layers}
        name = f"{inner.get('name', 'layer')}_input"
        while name in names:
            name += "_"
        dtype = inner.get("dtype") if isinstance(inner.get("dtype"), str) else "float32"
        config = {"batch_shape": shape, "dtype": dtype, "name": name}
        layer = {"class_name": "InputLayer", "config": config}
        layers.insert(0, layer)
        self._note("InputLayer added from batch_input_shape")

    def _layer(self, layer: Any) -> None:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            raise ModelError(
                f"a layer in the Keras config of {self.file_name} has no class_name; re-save "
                "the model or pass --factory package.module:function that builds it"
            )
        kind = layer["class_name"]
        if kind in _MODEL_CLASSES:
            self._model(layer)
            return
        inner = layer.get("config")
        if not isinstance(inner, dict):
            inner = layer["config"] = {}
        if kind == "ThresholdedReLU":
            layer["class_name"] = kind = "ReLU"
            inner["threshold"] = inner.pop("theta", 1.0)
            self._note("ThresholdedReLU rebuilt as ReLU(threshold=theta)")
        cls = self._class_of(kind, inner)
        self._shape_keys(kind, inner)
        self._dtype(inner)
        if self.legacy:
            for key in [k for k in inner if k.endswith("_initializer")]:
                del inner[key]
        for key in _WRAPPED_KEYS:
            if isinstance(inner.get(key), dict):
                self._layer(inner[key])
        if cls is not None:
            self._drop_inert(kind, cls, inner)

    def _class_of(self, kind: str, inner: dict[str, Any]) -> type | None:
        """The built-in Keras 3 layer class named ``kind`` (None for a registered custom one)."""
        layers = self.keras.layers
        cls = getattr(layers, kind, None)
        if isinstance(cls, type) and issubclass(cls, layers.Layer):
            return cls
        if self.keras.saving.get_registered_object(kind) is not None:
            return None
        name = str(inner.get("name", "?"))[:80]
        if kind in _TF_ONLY:
            why = "a TensorFlow operation recorded by tf.keras, which Keras 3 cannot rebuild"
        else:
            why = "a custom layer, or one Keras 3 removed"
        raise ModelError(
            f"{self.file_name} has layer {name!r} of class {kind[:80]} ({why}); pass --factory "
            "package.module:function that builds the model in Keras 3 (the weights load from "
            "the file)"
        )

    def _shape_keys(self, kind: str, inner: dict[str, Any]) -> None:
        if "batch_input_shape" not in inner:
            return
        shape = inner.pop("batch_input_shape")
        if kind == "InputLayer":
            if "batch_shape" not in inner:
                inner["batch_shape"] = shape
            self._note("InputLayer batch_input_shape renamed batch_shape")

    def _dtype(self, inner: dict[str, Any]) -> None:
        dtype = inner.get("dtype")
        if isinstance(dtype, dict) and dtype.get("class_name") == "Policy":
            name = (
                dtype.get("config", {}).get("name")
                if isinstance(dtype.get("config"), dict)
                else None
            )
            inner["dtype"] = name if isinstance(name, str) else "float32"
            self._note(f"tf.keras dtype Policy replaced by {inner['dtype']!r}")

    def _drop_inert(self, kind: str, cls: type, inner: dict[str, Any]) -> None:
        accepted = _accepted_keys(cls)
        if accepted is None:
            return
        for key in [k for k in inner if k not in accepted]:
            value = inner[key]
            inert = value is None or value is False or key in _INERT_KEYS
            if inert or (key == "groups" and value == 1):
                del inner[key]
                self.dropped.append(f"{kind}.{key}" + ("=1" if key == "groups" else ""))
        # anything else stays: Keras 3 takes it (e.g. LeakyReLU alpha) or names it when it fails


def _name_of(layer: Any) -> str:
    inner = layer.get("config") if isinstance(layer, dict) else None
    return str(inner.get("name")) if isinstance(inner, dict) else ""


def _accepted_keys(cls: type) -> set[str] | None:
    """Keyword arguments the layer class and its bases name (None if they cannot be read)."""
    keys = set(_BASE_KEYS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        keys.update(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        if klass.__name__ == "Layer":
            break
    keys.discard("self")
    return keys
