"""Small reference architectures for the built-in datasets.

Every factory returns a plain ``nn.Module`` that takes NCHW input in [0, 1] and returns logits.
The factories are named in model sidecars as ``aegis.zoo.architectures:<name>`` with their
keyword arguments, so a saved model can be rebuilt from its sidecar alone.

    >>> net = mnist_cnn()
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from aegis.errors import ConfigError


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


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": mnist_cnn,
    "digits_cnn": digits_cnn,
    "tiny_mlp": tiny_mlp,
}
"""Architecture name → factory; the name is what sidecars and the CLI use."""

DATASET_ARCH: dict[str, str] = {"mnist": "mnist_cnn", "digits": "digits_cnn"}
"""The reference architecture of each built-in dataset."""


def create(name: str, **kwargs: object) -> nn.Module:
    """Build the architecture registered as ``name`` with its keyword arguments."""
    factory = ARCHITECTURES.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown architecture {name!r}; use one of {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for architecture {name!r}: {exc}") from exc


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
    "ConvNet",
    "TinyMLP",
    "create",
    "digits_cnn",
    "mnist_cnn",
    "tiny_mlp",
]
