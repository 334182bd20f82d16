"""A Keras model of common layers as a plain torch module: the fast path for Keras files.

Keras 3 on its torch backend runs every convolution and pooling as NHWC → NCHW → NHWC copies
(the kernel transposed on every call too), which costs about a third of a forward + backward of a
small CNN on CPU. Where a loaded model is a Sequential or Functional graph made only of the layers
below, :func:`to_torch` rebuilds it from torch ops on copies of its weights: 4-D tensors are held
channels-first inside (one transpose at the input, one where Keras' channels-last order matters:
``Flatten``, ``Reshape``, ``Dense`` on a feature map, the output), so the module takes and
returns what the Keras model does. Nothing from the file runs: the model was already loaded by
aegis' safe loader, and only its layers' settings and weights are read.

Layers: ``InputLayer``, ``Conv2D`` (groups, strides, dilation, ``same``/``valid``),
``DepthwiseConv2D``, ``Dense``, ``MaxPooling2D``, ``AveragePooling2D``, ``GlobalAveragePooling2D``,
``GlobalMaxPooling2D``, ``Flatten``, ``Reshape``, ``ZeroPadding2D``, ``Cropping2D``,
``BatchNormalization`` (inference), ``Rescaling``, ``Normalization``, ``Activation``, ``ReLU``,
``LeakyReLU``, ``ELU``, ``Softmax``, the dropout and noise layers (identity), ``Add``,
``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``, ``Concatenate``; channels-last
data, float32. Anything else (a nested model, a ``Lambda``, a recurrent or custom layer, mixed
precision) keeps the Keras call. The caller checks the result against Keras before using it
(:func:`same_as_keras`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KerasGraph", "Unsupported", "same_as_keras", "to_torch"]

_CHANNELS_FIRST = (0, 2, 3, 1)  # Keras axis (N, H, W, C) -> where it is held inside (N, C, H, W)


class Unsupported(Exception):
    """The model holds something the converter does not express (the message says what)."""


def _inside(x: Tensor) -> Tensor:
    """Keras layout -> the layout held inside (4-D: NHWC -> NCHW)."""
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


def _outside(x: Tensor) -> Tensor:
    """The layout held inside -> Keras layout (4-D: NCHW -> NHWC)."""
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def _axis(axis: int, ndim: int) -> int:
    """Where Keras axis ``axis`` of a tensor of ``ndim`` dimensions is held inside."""
    a = axis % ndim
    return _CHANNELS_FIRST[a] if ndim == 4 else a


class KerasGraph(nn.Module):
    """The converted model: its steps run in the Keras graph's order on slots of tensors."""

    def __init__(self, steps: Sequence[nn.Module], wiring: Sequence[tuple[tuple[int, ...], int]]):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.wiring = list(wiring)  # (input slots, output slot) per step; slot 0: the input
        self.channels_last = False

    def use_channels_last(self) -> None:
        """Run feature maps in channels-last memory format (oneDNN's native layout on CPU: an
        NHWC input then needs no copy, and Flatten reads it as it lies)."""
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.channels_last = True

    def forward(self, x: Tensor) -> Tensor:
        h = _inside(x)
        if self.channels_last and h.ndim == 4:
            h = h.contiguous(memory_format=torch.channels_last)
        slots: dict[int, Tensor] = {0: h}
        out = 0
        for step, (ins, out) in zip(self.steps, self.wiring, strict=True):
            slots[out] = step(*[slots[i] for i in ins])
        return _outside(slots[out])


# -- steps ------------------------------------------------------------------------------------
class _Fn(nn.Module):
    """A weightless step: ``fn(*inputs, **settings)``; ``fn`` a module-level function, so that
    the module pickles (a Ray worker gets a copy)."""

    def __init__(self, fn: Callable[..., Tensor], what: str, **settings: Any) -> None:
        super().__init__()
        self.fn = fn
        self.what = what
        self.settings = settings

    def forward(self, *xs: Tensor) -> Tensor:
        return self.fn(*xs, **self.settings)

    def extra_repr(self) -> str:
        return self.what


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's ``same`` padding of one spatial axis: (before, after)."""
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(
    x: Tensor, k: Sequence[int], s: Sequence[int], d: Sequence[int], value: float
) -> Tensor:
    top, bottom = _same_pads(x.shape[2], k[0], s[0], d[0])
    left, right = _same_pads(x.shape[3], k[1], s[1], d[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class _Conv(nn.Module):
    weight: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None, layer: Any, groups: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride = tuple(layer.strides)
        self.dilation = tuple(layer.dilation_rate)
        self.same = layer.padding == "same"
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if self.same:
            k = self.weight.shape[2:]
            x = _pad_same(x, k, self.stride, self.dilation, 0.0)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _Pool(nn.Module):
    def __init__(self, layer: Any, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.size = tuple(layer.pool_size)
        self.stride = tuple(layer.strides)
        self.same = layer.padding == "same"

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            if self.same:
                x = _pad_same(x, self.size, self.stride, (1, 1), -math.inf)
            return F.max_pool2d(x, self.size, self.stride)
        if not self.same:
            return F.avg_pool2d(x, self.size, self.stride)
        # ``same`` averages only over the inputs inside the window (TensorFlow's convention)
        total = F.avg_pool2d(
            _pad_same(x, self.size, self.stride, (1, 1), 0.0), self.size, self.stride
        )
        ones = torch.ones_like(x[:1, :1])
        count = F.avg_pool2d(
            _pad_same(ones, self.size, self.stride, (1, 1), 0.0), self.size, self.stride
        )
        return total / count


class _Dense(nn.Module):
    weight: Tensor
    bias: Tensor | None

    def __init__(self, kernel: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", kernel.t().contiguous())
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:  # on the channels of a feature map
            return _inside(F.linear(_outside(x), self.weight, self.bias))
        return F.linear(x, self.weight, self.bias)


class _Affine(nn.Module):
    """``x * scale + shift`` along one Keras axis (scale/shift of that axis' length, or 1)."""

    scale: Tensor
    shift: Tensor

    def __init__(self, scale: Tensor, shift: Tensor, axis: int) -> None:
        super().__init__()
        self.register_buffer("scale", scale.reshape(-1))
        self.register_buffer("shift", shift.reshape(-1))
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.ndim
        shape[_axis(self.axis, x.ndim)] = -1
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


class _Reshape(nn.Module):
    def __init__(self, target: Sequence[int]) -> None:
        super().__init__()
        self.target = tuple(int(t) for t in target)

    def forward(self, x: Tensor) -> Tensor:
        return _inside(_outside(x).reshape(x.shape[0], *self.target))


def _flatten(x: Tensor) -> Tensor:
    return _outside(x).flatten(1)


def _global_pool(x: Tensor, reduce: str, keepdims: bool) -> Tensor:
    if x.ndim != 4:
        raise Unsupported(f"global pooling of a {x.ndim}-D tensor")
    if reduce == "mean":
        return x.mean(dim=(2, 3), keepdim=keepdims)
    return x.amax(dim=(2, 3), keepdim=keepdims)


def _global(reduce: str, keepdims: bool) -> _Fn:
    return _Fn(_global_pool, f"global {reduce} pooling", reduce=reduce, keepdims=keepdims)


def _softmax_of(x: Tensor, axis: int, log: bool) -> Tensor:
    dim = _axis(axis, x.ndim)
    return F.log_softmax(x, dim=dim) if log else F.softmax(x, dim=dim)


def _softmax(axis: int, log: bool) -> _Fn:
    what = f"{'log_' if log else ''}softmax over Keras axis {axis}"
    return _Fn(_softmax_of, what, axis=axis, log=log)


def _relu_of(x: Tensor, max_value: float | None, slope: float, threshold: float) -> Tensor:
    out = torch.where(x >= threshold, x, slope * (x - threshold))
    return out if max_value is None else out.clamp(max=max_value)


def _relu(max_value: float | None, slope: float, threshold: float) -> _Fn:
    if max_value is None and slope == 0.0 and threshold == 0.0:
        return _Fn(F.relu, "relu")
    what = f"relu(max {max_value}, slope {slope}, threshold {threshold})"
    return _Fn(_relu_of, what, max_value=max_value, slope=slope, threshold=threshold)


def _identity(x: Tensor) -> Tensor:
    return x


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": _identity,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "elu": F.elu,
    "selu": F.selu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "exponential": torch.exp,
    "hard_sigmoid": F.hardsigmoid,
    "hard_silu": F.hardswish,
    "hard_swish": F.hardswish,
    "mish": F.mish,
}


def _activation(keras: Any, fn: Any, where: str) -> nn.Module | None:
    """The torch form of a Keras activation function (None for linear)."""
    name = getattr(fn, "__name__", "")
    try:
        own = keras.activations.get(name)
    except Exception:
        own = None
    if own is not fn:
        raise Unsupported(f"{where}: activation {name or type(fn).__name__} is not Keras' own")
    if name == "linear":
        return None
    if name in ("softmax", "log_softmax"):
        return _softmax(-1, name == "log_softmax")
    if name not in _ACTIVATIONS:
        raise Unsupported(f"{where}: activation {name}")
    return _Fn(_ACTIVATIONS[name], name)


# -- layers -----------------------------------------------------------------------------------
def _copy(variable: Any) -> Tensor:
    value = getattr(variable, "value", variable)
    return torch.as_tensor(value).detach().clone()


def _conv(keras: Any, layer: Any) -> list[nn.Module]:
    if layer.padding not in ("same", "valid"):
        raise Unsupported(f"{layer.name}: padding {layer.padding!r}")
    kernel = _copy(layer.kernel)
    bias = _copy(layer.bias) if layer.use_bias else None
    if type(layer).__name__ == "DepthwiseConv2D":
        kh, kw, c, m = kernel.shape  # output channel c * m + j: kernel[..., c, j]
        weight = kernel.reshape(kh, kw, c * m).permute(2, 0, 1).unsqueeze(1)
        groups = c
    else:
        weight = kernel.permute(3, 2, 0, 1)  # (kh, kw, in/groups, out) -> (out, in/groups, kh, kw)
        groups = int(getattr(layer, "groups", 1))
    steps: list[nn.Module] = [_Conv(weight.contiguous(), bias, layer, groups)]
    return _with_activation(keras, layer, steps)


def _dense(keras: Any, layer: Any) -> list[nn.Module]:
    if getattr(layer, "lora_enabled", False):
        raise Unsupported(f"{layer.name}: LoRA weights")
    bias = _copy(layer.bias) if layer.use_bias else None
    return _with_activation(keras, layer, [_Dense(_copy(layer.kernel), bias)])


def _with_activation(keras: Any, layer: Any, steps: list[nn.Module]) -> list[nn.Module]:
    act = _activation(keras, layer.activation, layer.name)
    return steps if act is None else [*steps, act]


def _batch_norm(layer: Any) -> list[nn.Module]:
    axis = layer.axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1 or getattr(layer, "renorm", False):
        raise Unsupported(f"{layer.name}: BatchNormalization over axes {axes}")
    mean, var = _copy(layer.moving_mean), _copy(layer.moving_variance)
    inv = torch.rsqrt(var + layer.epsilon)
    if layer.scale:
        inv = inv * _copy(layer.gamma)
    shift = -mean * inv
    if layer.center:
        shift = shift + _copy(layer.beta)
    return [_Affine(inv, shift, int(axes[0]))]


def _rescaling(layer: Any) -> list[nn.Module]:
    scale = torch.as_tensor(layer.scale, dtype=torch.float32)
    offset = torch.as_tensor(layer.offset, dtype=torch.float32)
    return [_Affine(scale, offset, -1)]


def _normalization(keras: Any, layer: Any) -> list[nn.Module]:
    axis = tuple(layer.axis) if layer.axis is not None else ()
    if layer.invert or axis not in ((-1,),):
        raise Unsupported(f"{layer.name}: Normalization over axes {axis} (invert {layer.invert})")
    mean = torch.as_tensor(keras.ops.convert_to_numpy(layer.mean), dtype=torch.float32)
    var = torch.as_tensor(keras.ops.convert_to_numpy(layer.variance), dtype=torch.float32)
    inv = 1.0 / torch.clamp(torch.sqrt(var), min=keras.backend.epsilon())
    return [_Affine(inv, -mean * inv, -1)]


def _padding(layer: Any) -> list[nn.Module]:
    (top, bottom), (left, right) = layer.padding
    pad = (int(left), int(right), int(top), int(bottom))
    return [_Fn(F.pad, f"zero padding {layer.padding}", pad=pad)]


def _crop(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]


def _cropping(layer: Any) -> list[nn.Module]:
    (top, bottom), (left, right) = (tuple(int(v) for v in pair) for pair in layer.cropping)
    what = f"cropping {layer.cropping}"
    return [_Fn(_crop, what, top=top, bottom=bottom, left=left, right=right)]


_MERGE_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Subtract": torch.sub,
    "Multiply": torch.mul,
    "Average": torch.add,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
}


def _concat(*xs: Tensor, axis: int) -> Tensor:
    return torch.cat(xs, dim=_axis(axis, xs[0].ndim))


def _merged(*xs: Tensor, name: str) -> Tensor:
    out = xs[0]
    for other in xs[1:]:
        if other.ndim != out.ndim:
            raise Unsupported(f"{name} of tensors of {out.ndim} and {other.ndim} dimensions")
        out = _MERGE_OPS[name](out, other)
    return out / len(xs) if name == "Average" else out


def _merge(name: str, layer: Any) -> list[nn.Module]:
    if name == "Concatenate":
        return [_Fn(_concat, f"concatenate on Keras axis {layer.axis}", axis=int(layer.axis))]
    return [_Fn(_merged, name.lower(), name=name)]


_IDENTITY = {
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
}
_MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
_SPATIAL = {
    "Conv2D",
    "DepthwiseConv2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "ZeroPadding2D",
    "Cropping2D",
}


def _check_layer(layer: Any) -> str:
    """The class name of a Keras layer the converter may express; raises where it cannot."""
    name = type(layer).__name__
    if not type(layer).__module__.startswith("keras."):
        raise Unsupported(f"{layer.name}: class {name} is not one of Keras' own layers")
    policy = getattr(layer, "dtype_policy", None)
    compute = getattr(policy, "compute_dtype", "float32")
    variables = getattr(policy, "variable_dtype", "float32")
    if compute != "float32" or variables != "float32" or getattr(policy, "quantization_mode", None):
        raise Unsupported(f"{layer.name}: dtype policy {getattr(policy, 'name', policy)}")
    if name in _SPATIAL and getattr(layer, "data_format", "channels_last") != "channels_last":
        raise Unsupported(f"{layer.name}: data_format {layer.data_format}")
    return name


def _layer_steps(keras: Any, layer: Any) -> list[nn.Module]:
    """The torch steps computing one Keras layer (empty for an identity)."""
    name = _check_layer(layer)
    if name in _IDENTITY:
        return []
    if name in ("Conv2D", "DepthwiseConv2D"):
        return _conv(keras, layer)
    if name == "Dense":
        return _dense(keras, layer)
    if name in ("MaxPooling2D", "AveragePooling2D"):
        return [_Pool(layer, "max" if name.startswith("Max") else "avg")]
    if name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return [_global("mean" if "Average" in name else "max", bool(layer.keepdims))]
    if name == "Flatten":
        return [_Fn(_flatten, "flatten (Keras order)")]
    if name == "Reshape":
        return [_Reshape(layer.target_shape)]
    if name == "BatchNormalization":
        return _batch_norm(layer)
    if name == "Rescaling":
        return _rescaling(layer)
    if name == "Normalization":
        return _normalization(keras, layer)
    if name == "ZeroPadding2D":
        return _padding(layer)
    if name == "Cropping2D":
        return _cropping(layer)
    if name in _MERGES:
        return _merge(name, layer)
    return _activation_layer(keras, name, layer)


def _activation_layer(keras: Any, name: str, layer: Any) -> list[nn.Module]:
    if name == "Activation":
        act = _activation(keras, layer.activation, layer.name)
        return [] if act is None else [act]
    if name == "ReLU":
        max_value = None if layer.max_value is None else float(layer.max_value)
        return [_relu(max_value, float(layer.negative_slope), float(layer.threshold))]
    if name == "LeakyReLU":
        slope = float(layer.negative_slope)
        return [_Fn(F.leaky_relu, f"leaky_relu({slope})", negative_slope=slope)]
    if name == "ELU":
        alpha = float(layer.alpha)
        return [_Fn(F.elu, f"elu({alpha})", alpha=alpha)]
    if name == "Softmax":
        axis = layer.axis
        if not isinstance(axis, int):
            raise Unsupported(f"{layer.name}: Softmax over axes {axis}")
        return [_softmax(axis, False)]
    raise Unsupported(f"{layer.name}: layer class {name}")


# -- the graph --------------------------------------------------------------------------------
def _graph_of(keras: Any, model: Any) -> Any:
    """The Functional graph behind a Keras model (a Sequential's own)."""
    if type(model).__name__ == "Sequential":
        model = getattr(model, "_functional", None)
        if model is None:
            raise Unsupported("a Sequential model without an Input (no graph)")
    if type(model).__name__ != "Functional" or not hasattr(model, "_nodes_by_depth"):
        raise Unsupported(f"a subclassed Keras model ({type(model).__name__})")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise Unsupported("a model of several inputs or outputs")
    return model


def _check_call(name: str, node: Any) -> None:
    """Refuse a layer call of several outputs or with keyword arguments beyond ``mask=None``
    and ``training`` not True (a layer called with ``training=True`` stays random)."""
    if len(node.output_tensors) != 1:
        raise Unsupported(f"{name}: a call of {len(node.output_tensors)} outputs")
    for key, value in node.arguments.kwargs.items():
        if not (value is None or (key == "training" and value is False)):
            raise Unsupported(f"{name}: called with {key}={value!r}")


def to_torch(keras: Any, model: Any) -> KerasGraph:
    """``model`` (a Keras Sequential or Functional model) as a :class:`KerasGraph` holding
    copies of its weights, on their device (in channels-last memory format on CPU); raises
    :class:`Unsupported` saying what it cannot express. Not verified: see
    :func:`same_as_keras`."""
    graph = _graph_of(keras, model)
    slots = {id(graph.inputs[0]): 0}  # Keras tensor -> the slot holding it
    steps: list[nn.Module] = []
    wiring: list[tuple[tuple[int, ...], int]] = []
    by_depth = graph._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            layer = node.operation
            if type(layer).__name__ == "InputLayer":
                continue
            if isinstance(layer, keras.Model):
                raise Unsupported(f"{layer.name}: a nested model")
            _check_call(layer.name, node)
            try:
                ins = tuple(slots[id(t)] for t in node.input_tensors)
            except KeyError as exc:
                raise Unsupported(f"{layer.name}: an input outside the graph") from exc
            for step in _layer_steps(keras, layer):
                steps.append(step)
                wiring.append((ins, len(wiring) + 1))
                ins = (len(wiring),)
            if len(ins) != 1:
                raise Unsupported(f"{layer.name}: an identity of several inputs")
            slots[id(node.output_tensors[0])] = ins[0]
    result = slots.get(id(graph.outputs[0]))
    if result is None:
        raise Unsupported("the output is not computed by the graph")
    if result != len(wiring):  # the output is not the last step's (or is the input)
        steps.append(_Fn(_identity, "output"))
        wiring.append(((result,), len(wiring) + 1))
    module = KerasGraph(steps, wiring).eval()
    if all(t.device.type == "cpu" for t in module.buffers()):
        module.use_channels_last()
    return module


def _out_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = fn(xg)
        (grad,) = torch.autograd.grad((out * w).sum(), xg)
    return out.detach(), grad.detach()


def _close(a: Tensor, b: Tensor) -> bool:
    atol = 1e-5 * max(1.0, float(a.abs().max()))
    return a.shape == b.shape and bool(torch.allclose(b, a, rtol=1e-4, atol=atol))


def same_as_keras(
    keras_fn: Callable[[Tensor], Tensor], module: nn.Module, probes: Sequence[Tensor]
) -> str:
    """Why ``module`` differs from the Keras call on the probe batches (outputs, or gradients
    of a random weighting of the outputs with respect to the input); "" where it does not."""
    gen = torch.Generator().manual_seed(0)
    for x in probes:
        with torch.no_grad():
            shape = keras_fn(x).shape
        w = torch.randn(shape, generator=gen).to(x.device)
        want, want_grad = _out_and_grad(keras_fn, x, w)
        got, got_grad = _out_and_grad(module, x, w)
        if not _close(want, got):
            diff = float((want - got).abs().max()) if want.shape == got.shape else math.inf
            return f"outputs differ from Keras' (max difference {diff:.2g})"
        if not _close(want_grad, got_grad):
            diff = float((want_grad - got_grad).abs().max())
            return f"input gradients differ from Keras' (max difference {diff:.2g})"
    return ""
