"""Small reference architectures for the built-in datasets.

Every factory returns a plain ``nn.Module`` that takes NCHW input in [0, 1] and returns logits.
The factories are named in model sidecars as ``aegis.zoo.architectures:<name>`` with their
keyword arguments, so a saved model can be rebuilt from its sidecar alone. A sidecar can name only
a registered architecture: one of :data:`ARCHITECTURES` (add your own with
:func:`register_architecture`) or one an installed package declares under the entry-point group
``aegis.architectures``; :func:`find_architecture` resolves a sidecar's name by exact lookup.

    >>> net = mnist_cnn()
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib import metadata

from torch import Tensor, nn

from aegis.errors import ConfigError
from aegis.registry import Registry


class ConvNet(nn.Module):
    """Two 3×3 conv blocks (ReLU, optional 2×2 max-pool each), then FC-ReLU-FC.

    Args:
        input_shape: (C, H, W) of the input.
        channels: output channels of the two conv layers.
        pools: whether each conv block ends with a 2×2 max-pool.
        hidden: width of the hidden fully connected layer.
        num_classes: number of logits.
        dropout: dropout before each fully connected layer (only active in ``train()``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        channels: tuple[int, int] = (32, 64),
        pools: tuple[bool, bool] = (True, True),
        hidden: int = 128,
        num_classes: int = 10,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        c, h, w = _shape(input_shape)
        _check_classes(num_classes)
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        in_ch = c
        for out_ch, pool in zip(channels, pools, strict=True):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
            if pool:
                if h < 2 or w < 2:
                    raise ConfigError(f"input {input_shape} is too small to pool twice")
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_ch * h * w, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.features(x))
        return out


class TinyMLP(nn.Module):
    """Flatten, one hidden ReLU layer, logits: the smallest useful model for tests."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, hidden: int = 64) -> None:
        super().__init__()
        c, h, w = _shape(input_shape)
        _check_classes(num_classes)
        if hidden < 1:
            raise ConfigError(f"hidden must be >= 1, got {hidden}")
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def mnist_cnn(*, num_classes: int = 10, dropout: float = 0.25) -> nn.Module:
    """conv32-pool-conv64-pool-fc128-fc10 for 1×28×28 (≈ 420k parameters)."""
    return ConvNet((1, 28, 28), num_classes=num_classes, dropout=dropout)


def digits_cnn(*, num_classes: int = 10, dropout: float = 0.1) -> nn.Module:
    """conv32-conv64-pool-fc128-fc10 for the 1×8×8 scikit-learn digits (≈ 150k parameters)."""
    return ConvNet(
        (1, 8, 8), pools=(False, True), hidden=128, num_classes=num_classes, dropout=dropout
    )


def tiny_mlp(input_shape: Sequence[int], num_classes: int, *, hidden: int = 64) -> nn.Module:
    """Flatten → Linear(hidden) → ReLU → Linear(num_classes)."""
    return TinyMLP(input_shape, num_classes, hidden=hidden)


Factory = Callable[..., nn.Module]

ARCHITECTURES = Registry[Factory](
    "architecture",
    underscores=True,
    lowercase=False,
    unknown_parameter="bad arguments for {kind} {name!r}: it has no parameter {unknown}; "
    "{hint}its parameters are {known}",
)
"""Architecture name → factory; the name is what sidecars and the CLI use."""
ARCHITECTURES.register("mnist_cnn", mnist_cnn)
ARCHITECTURES.register("digits_cnn", digits_cnn)
ARCHITECTURES.register("tiny_mlp", tiny_mlp)
# The real-scale architectures of public checkpoints (preact_resnet18, resnet18_cifar, wrn_28_10,
# wrn_34_10, resnet50) register themselves from aegis.zoo.cifar and aegis.zoo.imagenet, which
# the package aegis.zoo imports before this module can be used (they sit higher in DESIGN.md's
# layers, so this module cannot import them).

DATASET_ARCH: dict[str, str] = {"mnist": "mnist_cnn", "digits": "digits_cnn"}
"""The reference architecture of each built-in dataset."""

ENTRY_POINT_GROUP = "aegis.architectures"
"""Installed packages declare architectures here: ``[project.entry-points."aegis.architectures"]``
``my_net = "my_pkg.models:my_net"``."""

_ZOO_PREFIXES = ("aegis.zoo.architectures:", "aegis.zoo:")


def register_architecture(name: str, factory: Factory, *, replace: bool = False) -> Factory:
    """Register ``factory`` as architecture ``name`` (then sidecars may name it); returns it.

    Example::

        register_architecture("my_net", my_net)  # a sidecar may now say "factory": "my_net"
    """
    ARCHITECTURES.check_name(name)
    if not callable(factory):
        raise ConfigError(f"architecture {name!r} must be a callable, got {type(factory).__name__}")
    return ARCHITECTURES.register(name, factory, replace=replace)


def list_architectures() -> list[str]:
    """The registered names and those installed packages declare, sorted."""
    return sorted(set(ARCHITECTURES.names()) | {ep.name for ep in _entry_points()})


def find_architecture(spec: str) -> Factory | None:
    """The registered factory ``spec`` names, by exact lookup only, or None.

    ``spec`` is ``aegis.zoo.architectures:NAME`` or ``aegis.zoo:NAME`` (a key of
    :data:`ARCHITECTURES`), a bare registered ``NAME``, or the name or the value
    (``"package.module:function"``) of an entry point in :data:`ENTRY_POINT_GROUP`. Nothing is
    resolved by walking attributes, and no module is imported except a matching entry point's.
    """
    if not isinstance(spec, str):
        return None
    for prefix in _ZOO_PREFIXES:
        if spec.startswith(prefix) and spec[len(prefix) :] in ARCHITECTURES:
            return ARCHITECTURES[spec[len(prefix) :]]
    if spec in ARCHITECTURES:
        return ARCHITECTURES[spec]
    for ep in _entry_points():
        if spec in (ep.name, ep.value):
            return _load_entry_point(ep)
    return None


def _entry_points() -> Iterable[metadata.EntryPoint]:
    try:
        return metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken package metadata must not break loading aegis' own models
        return ()


def _load_entry_point(ep: metadata.EntryPoint) -> Factory:
    try:
        factory = ep.load()
    except Exception as exc:
        raise ConfigError(
            f"architecture {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) cannot be loaded "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); reinstall its package"
        ) from exc
    if not callable(factory):
        raise ConfigError(
            f"architecture {ep.name} = {ep.value} is not callable; fix its package's entry point"
        )
    built: Factory = factory
    return built


def create(name: str, **kwargs: object) -> nn.Module:
    """Build the architecture registered as ``name`` with its keyword arguments."""
    built: nn.Module = ARCHITECTURES.create(name, **kwargs)
    return built


def _shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    values = [int(v) for v in input_shape]
    if len(values) != 3 or min(values) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) of positive ints, got {input_shape}")
    return values[0], values[1], values[2]


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")


__all__ = [
    "ARCHITECTURES",
    "DATASET_ARCH",
    "ENTRY_POINT_GROUP",
    "ConvNet",
    "TinyMLP",
    "create",
    "digits_cnn",
    "find_architecture",
    "list_architectures",
    "mnist_cnn",
    "register_architecture",
    "tiny_mlp",
]
