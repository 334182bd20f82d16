"""``aegis detect MODEL DATA``: a detector of adversarial inputs, fitted and attacked (the work
is in :func:`aegis.defenses.detection.run_detect`)."""

from __future__ import annotations

from typing import Annotated

import typer

from aegis.cli.formatting import fmt, pct, run_files
from aegis.cli.options import (
    BatchSize,
    Data,
    Device,
    Factory,
    Labels,
    Mlflow,
    MlflowExperiment,
    MlflowUri,
    NumClasses,
    Out,
    Overwrite,
    Seed,
    TrustSidecar,
    floats,
    model_options,
)
from aegis.cli.run_dir import RunDir


def detect(
    model: Annotated[str, typer.Argument(help="Model file.")],
    data: Data,
    labels: Labels = None,
    detector: Annotated[str, typer.Option(help="Detector: mahalanobis or squeeze.")] = (
        "mahalanobis"
    ),
    layers: Annotated[
        str | None,
        typer.Option(
            help="Mahalanobis: comma-separated module names whose outputs are features "
            "(default: the penultimate layer)."
        ),
    ] = None,
    noise: Annotated[
        float | None, typer.Option(help="Mahalanobis: input preprocessing step (default 0).")
    ] = None,
    bits: Annotated[int | None, typer.Option(help="Squeeze: bit depth (default 1).")] = None,
    median_size: Annotated[
        int | None, typer.Option(help="Squeeze: median filter window (default 2).")
    ] = None,
    attack_name: Annotated[
        str, typer.Option("--attack", "-a", help="The non-adaptive attack (`aegis attacks`).")
    ] = "pgd",
    norm: Annotated[str, typer.Option(help="Threat norm: linf, l2, l1.")] = "linf",
    eps: Annotated[float, typer.Option(help="Perturbation budget.")] = 0.3,
    steps: Annotated[int | None, typer.Option(help="Steps of the non-adaptive attack.")] = None,
    fpr: Annotated[float, typer.Option(help="False-positive rate that sets the threshold.")] = (
        0.05
    ),
    fit_data: Annotated[
        str | None,
        typer.Option(
            help="Clean data to fit on (default: a built-in's train split, else the "
            "inputs after --limit)."
        ),
    ] = None,
    fit_limit: Annotated[int, typer.Option(help="Clean inputs to fit the detector on.")] = 1000,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N inputs.")] = None,
    adaptive: Annotated[
        bool, typer.Option("--adaptive/--no-adaptive", help="Also run the adaptive attack.")
    ] = True,
    adaptive_steps: Annotated[int, typer.Option(help="Steps of the adaptive attack.")] = 100,
    adaptive_weights: Annotated[
        str,
        typer.Option(
            help="Weights of the detector penalty in the adaptive loss, comma-separated: one "
            "run each, on the inputs the earlier runs did not get through."
        ),
    ] = "1,10,0.1",
    seed: Seed = 0,
    out: Out = None,
    batch_size: BatchSize = None,
    num_classes: NumClasses = None,
    factory: Factory = None,
    device: Device = None,
    trust_sidecar: TrustSidecar = False,
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Fit a detector of adversarial inputs and measure it: ROC-AUC, detection rate at the
    FPR, and the accuracy of classifier + detector under the attack and an adaptive attack.

        aegis detect models/mnist_cnn.safetensors mnist --detector mahalanobis --attack pgd
        --eps 0.3 --fit-limit 1000 --limit 200 --out runs/detect
    """
    from aegis.workflows.detect import run_detect

    run_dir = RunDir.of(
        out,
        "detect",
        overwrite=overwrite,
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    with run_dir.writing():
        results = run_detect(
            model,
            data,
            detector=detector,
            detector_params={
                "layers": None if layers is None else tuple(v.strip() for v in layers.split(",")),
                "noise": noise,
                "bits": bits,
                "median_size": median_size,
            },
            attack=attack_name,
            norm=norm,
            eps=eps,
            fpr=fpr,
            fit_limit=fit_limit,
            limit=limit,
            fit_data=fit_data,
            labels=labels,
            adaptive=adaptive,
            adaptive_steps=adaptive_steps,
            adaptive_weights=floats(adaptive_weights, "--adaptive-weights") or (),
            seed=seed,
            out=run_dir.out_dir,
            model_options=model_options(num_classes, factory, device, batch_size, trust_sidecar),
            steps=steps,
        )
    d = results["detection"]
    na = d["non_adaptive"]
    typer.echo(
        f"{d['detector']} detector, {d['attack']['name']} {norm} ε={eps:g} on {d['n']} inputs; "
        f"threshold {d['threshold']:.4g} flags {pct(d['clean_flagged'])} of clean inputs"
    )
    typer.echo(
        f"non-adaptive: ROC-AUC {fmt(na['roc_auc'])}, detection rate at {fpr:.0%} FPR "
        f"{pct(na['tpr'])} of {na['successful']} successful adversarial examples"
    )
    typer.echo(
        f"combined clean accuracy {pct(na['combined']['clean_accuracy'])} (classifier alone "
        f"{pct(na['combined']['classifier_clean_accuracy'])})"
    )
    typer.echo(
        f"combined robust accuracy, non-adaptive: {pct(na['combined']['robust_accuracy'])} "
        f"(classifier alone {pct(na['combined']['classifier_robust_accuracy'])})"
    )
    if "adaptive" in d:
        ad = d["adaptive"]
        typer.echo(
            f"combined robust accuracy, adaptive: {pct(ad['combined']['robust_accuracy'])} "
            f"(detection rate {pct(ad['tpr'])} of {ad['successful']} successful); worst case "
            f"of both per input: {pct(d['worst_case']['robust_accuracy'])}"
        )
    typer.echo(
        "combined robust accuracy is an upper bound, not a guarantee: a stronger adaptive "
        "attack can only lower it"
    )
    typer.echo(run_files(results["out_dir"]))
    run_dir.track(results["out_dir"])
