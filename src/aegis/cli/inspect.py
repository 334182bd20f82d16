"""``aegis inspect MODEL [DATA]``: what aegis sees in a model file (the work is in
:func:`aegis.workflows.inspect.inspect_model`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aegis.cli.options import (
    InputShape,
    Layout,
    NpyLabels,
    NumClasses,
    TrustSidecar,
    WeightsFactory,
    checking_options,
    floats,
)
from aegis.errors import ConfigError


def inspect(
    model: Annotated[str, typer.Argument(help="Model file (any format `aegis attack` takes).")],
    data: Annotated[
        str | None,
        typer.Argument(help="Optional data (.npy, .npz, image folder, built-in name)."),
    ] = None,
    labels: NpyLabels = None,
    limit: Annotated[int, typer.Option(help="Inputs scored (the first N of the data).")] = 512,
    num_classes: NumClasses = None,
    input_shape: InputShape = None,
    bounds: Annotated[
        str | None, typer.Option(help="The model's valid input range low,high (default 0,1).")
    ] = None,
    mean: Annotated[str | None, typer.Option(help="Mean: numbers or a preset name.")] = None,
    std: Annotated[str | None, typer.Option(help="Std: numbers or a preset name.")] = None,
    layout: Layout = None,
    factory: WeightsFactory = None,
    unsafe_pickle: Annotated[
        bool, typer.Option(help="Allow unpickling (EXECUTES CODE from the file).")
    ] = False,
    trust_sidecar: TrustSidecar = False,
    write_sidecar: Annotated[
        bool,
        typer.Option(
            "--write-sidecar",
            help="Write what was found (shape, layout, classes, bounds, and a normalization "
            "that fits the labeled data clearly better) to <model>.json beside the model, "
            "merged into the sidecar it has, so the next run needs no flags.",
        ),
    ] = False,
) -> None:
    """Show what aegis sees in MODEL: format, input shape and layout, classes, bounds,
    normalization, logits or probabilities, white-box or query-only, and where each came from.
    With DATA that has labels, the clean accuracy, scored with each common normalization too.

    Example: aegis inspect net.onnx test.npz --write-sidecar
    """
    from aegis import normalization
    from aegis.workflows.inspect import inspect_model

    with checking_options():
        options: dict[str, Any] = {
            "num_classes": num_classes,
            "input_shape": input_shape,
            "bounds": floats(bounds, "--bounds"),
            "mean": normalization.parse(mean, "mean"),
            "std": normalization.parse(std, "std"),
            "layout": layout,
            "factory": factory,
            "allow_unsafe_pickle": unsafe_pickle or None,
            "trust_sidecar": trust_sidecar or None,
        }
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
    report = inspect_model(
        model,
        data,
        labels=labels,
        limit=limit,
        model_options={k: v for k, v in options.items() if v is not None},
        write=write_sidecar,
    )
    _print_inspection(report.results)


def _print_inspection(r: dict[str, Any]) -> None:
    prov = r["provenance"]

    def line(label: str, value: object, key: str | None = None) -> None:
        src = prov.get(key or label.replace(" ", "_"))
        typer.echo(f"{label + ':':15} {value}" + (f"  ({src})" if src else ""))

    line("model", r["model"])
    typer.echo(f"{'format:':15} {r['format']}")
    line("input shape", "×".join(map(str, r["input_shape"])) + " (C×H×W)")
    line("layout", r["layout"])
    line("classes", r["num_classes"], "num_classes")
    line("bounds", f"[{r['bounds'][0]:g}, {r['bounds'][1]:g}]")
    line("mean", r["mean"] or "none")
    line("std", r["std"] or "none")
    typer.echo(f"{'outputs:':15} {r['outputs']}")
    gradients = "white-box (gradients flow)" if r["white_box"] else "query-only (no gradients)"
    line("gradients", gradients)
    if "data" in r:
        acc = r.get("clean_accuracy")
        shown = r.get("labels") if acc is None else f"{acc:.1%} on {r['n']} inputs"
        typer.echo(f"{'clean accuracy:':15} {shown}")
        norm = r.get("normalization")
        if norm:
            scores = ", ".join(f"{k} {v:.1%}" for k, v in norm["accuracy"].items())
            typer.echo(f"{'normalization:':15} {scores}")
            if norm["hint"]:
                typer.echo(f"hint: {norm['hint']}")
    if "sidecar_written" in r:
        typer.echo(f"wrote {r['sidecar_written']}")
