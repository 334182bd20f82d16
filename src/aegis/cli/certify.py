"""``aegis certify MODEL DATA``: randomized smoothing's certified accuracy (the work is in
:func:`aegis.defenses.certification.run_certify`)."""

from __future__ import annotations

from typing import Annotated

import typer

from aegis.cli.formatting import pct, run_files
from aegis.cli.options import (
    Data,
    Device,
    Factory,
    Labels,
    Limit,
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


def certify(
    model: Annotated[str, typer.Argument(help="Base model file (e.g. trained on noise).")],
    data: Data,
    labels: Labels = None,
    sigma: Annotated[float, typer.Option(help="Noise standard deviation σ (pixels).")] = 0.25,
    n0: Annotated[int, typer.Option(help="Noise samples that select the class.")] = 100,
    n: Annotated[int, typer.Option(help="Noise samples that estimate its probability.")] = 1000,
    alpha: Annotated[float, typer.Option(help="Failure probability of a certificate.")] = 0.001,
    radii: Annotated[
        str, typer.Option(help="L2 radii for certified accuracy, comma-separated.")
    ] = "0,0.25,0.5,1",
    noise_batch: Annotated[int, typer.Option(help="Noisy copies per forward pass.")] = 1000,
    limit: Limit = None,
    seed: Seed = 0,
    out: Out = None,
    num_classes: NumClasses = None,
    factory: Factory = None,
    device: Device = None,
    trust_sidecar: TrustSidecar = False,
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Certify MODEL on DATA with randomized smoothing (Cohen et al. 2019): certified accuracy
    at each L2 radius and the abstain rate, written to results.json.

        aegis certify models/mnist_cnn_noise0.25.safetensors mnist --sigma 0.25 --n0 100
        --n 1000 --alpha 0.001 --radii 0,0.25,0.5,1 --limit 100 --out runs/certify
    """
    from aegis.defenses.certification import Smoothing
    from aegis.workflows.certify import run_certify

    grid = floats(radii, "--radii") or ()
    smoothing = Smoothing(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=noise_batch)
    run_dir = RunDir.of(
        out,
        "certify",
        overwrite=overwrite,
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    with run_dir.writing(f"certify σ={sigma:g}") as bar:
        results = run_certify(
            model,
            data,
            smoothing=smoothing,
            radii=grid,
            labels=labels,
            limit=limit,
            seed=seed,
            out=run_dir.out_dir,
            progress=bar.update,
            model_options=model_options(num_classes, factory, device, None, trust_sidecar),
        )
    c = results["certification"]
    typer.echo(
        f"randomized smoothing σ={sigma:g}, n0={n0}, n={n}, α={alpha:g} on {c['n']} inputs "
        f"({results['seconds']:.1f} s)"
    )
    for point in c["certified_accuracy"]:
        typer.echo(f"certified accuracy at L2 radius {point['radius']:g}: {pct(point['accuracy'])}")
    typer.echo(f"abstain rate: {pct(c['abstain_rate'])}")
    typer.echo(
        f"largest radius these n and α can certify: "
        f"{results['config']['max_certifiable_radius']:.3g} (σ·Φ⁻¹(α^(1/n)))"
    )
    typer.echo(run_files(results["out_dir"]))
    run_dir.track(results["out_dir"])
