"""Plots: the PNG grid of originals / perturbations / adversarial examples, accuracy and
budget curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aegis.atomic import atomic, write_error


def save_grid(
    path: Path,
    x: np.ndarray,
    x_adv: np.ndarray,
    y: np.ndarray,
    clean_pred: np.ndarray,
    adv_pred: np.ndarray,
    *,
    columns: int = 8,
    title: str = "",
) -> Path:
    """Three rows per example: original, perturbation (amplified around grey), adversarial.

    ``x`` and ``x_adv`` are NCHW in [0, 1]. The perturbation is scaled so its largest magnitude
    fills the colour range; the factor is printed on the row label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(columns, x.shape[0])
    fig, axes = plt.subplots(3, max(k, 1), figsize=(1.6 * max(k, 1), 5.4), squeeze=False)
    delta = x_adv[:k] - x[:k]
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    gain = 0.5 / peak if peak > 0 else 1.0
    for j in range(max(k, 1)):
        for i in range(3):
            axes[i][j].axis("off")
        if j >= k:
            continue
        images = (x[j], 0.5 + gain * delta[j], x_adv[j])
        for i, img in enumerate(images):
            ax = axes[i][j]
            arr = np.clip(np.transpose(img, (1, 2, 0)), 0, 1)
            if arr.shape[2] == 1:
                ax.imshow(arr[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(arr)
        axes[0][j].set_title(f"y={y[j]} pred={clean_pred[j]}", fontsize=7)
        color = "red" if adv_pred[j] != y[j] else "green"
        axes[2][j].set_title(f"adv pred={adv_pred[j]}", fontsize=7, color=color)
    axes[0][0].text(
        -0.3,
        0.5,
        "original",
        transform=axes[0][0].transAxes,
        rotation=90,
        va="center",
        ha="right",
        fontsize=8,
    )
    axes[1][0].text(
        -0.3,
        0.5,
        f"perturbation ×{gain:.1f}",
        transform=axes[1][0].transAxes,
        rotation=90,
        va="center",
        ha="right",
        fontsize=8,
    )
    axes[2][0].text(
        -0.3,
        0.5,
        "adversarial",
        transform=axes[2][0].transAxes,
        rotation=90,
        va="center",
        ha="right",
        fontsize=8,
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_curve(
    path: Path,
    points: list[tuple[float, float]],
    *,
    norm: str,
    title: str = "",
    minimal_norms: np.ndarray | None = None,
) -> Path:
    """Accuracy under attack against the budget ε; with a minimal-norm run's norms, a second
    panel shows their distribution (the curve is one minus its cumulative share)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if minimal_norms is not None and minimal_norms.size else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4), squeeze=False)
    eps = [p[0] for p in points]
    acc = [100 * p[1] for p in points]
    ax = axes[0][0]
    ax.plot(eps, acc, marker="o" if len(points) <= 12 else None, color="tab:blue")
    ax.set_xlabel(f"ε ({norm})")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy vs budget", fontsize=9)
    if panels == 2 and minimal_norms is not None:
        hx = axes[0][1]
        hx.hist(minimal_norms, bins=30, color="tab:orange")
        median = float(np.median(minimal_norms))
        hx.axvline(median, color="black", linestyle="--", linewidth=1)
        hx.set_xlabel(f"smallest adversarial perturbation ({norm})")
        hx.set_ylabel("inputs")
        hx.set_title(f"minimal norms (median {median:.3g})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_budget_curve(
    path: Path,
    curves: dict[str, list[tuple[float, float]]],
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """One line per setting of a share (0..1, drawn in %) against a query budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name, points in curves.items():
        ax.plot(
            [p[0] for p in points],
            [100 * p[1] for p in points],
            marker="o" if len(points) <= 12 else None,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("queries (budget)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as ``path`` whole (no temporary file left on any failure), then close it."""
    import matplotlib.pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic(path, ".tmp.png") as tmp:
            fig.savefig(tmp, dpi=110)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        plt.close(fig)
    return path
