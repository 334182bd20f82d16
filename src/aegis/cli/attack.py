"""``aegis attack MODEL DATA``: one attack, suite or ensemble on a model, its metrics and a
verdict (the work is in :func:`aegis.api.run_attack`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aegis.cli.attack_summary import print_summary
from aegis.cli.options import (
    EXIT_GATE,
    Device,
    InputShape,
    Layout,
    Limit,
    Mlflow,
    MlflowExperiment,
    MlflowUri,
    NpyLabels,
    NumClasses,
    Overwrite,
    Seed,
    TrustSidecar,
    WeightsFactory,
    checking_options,
    floats,
    params,
)
from aegis.cli.run_dir import RunDir
from aegis.errors import ConfigError


def _budget_list(text: str | None) -> list[float] | None:
    """``--eps``: numbers, fractions such as ``8/255``, ``inf``, comma-separated."""
    if text is None:
        return None
    try:
        return [_number(v) for v in text.split(",")]
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(
            f"--eps takes a number, a fraction such as 8/255, 'inf' or comma-separated "
            f"numbers, got {text!r}"
        ) from exc


def _step(text: str) -> float:
    try:
        return _number(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(
            f"--step-size takes a number or a fraction such as 2/255, got {text!r}"
        ) from exc


def _number(text: str) -> float:
    top, sep, bottom = text.partition("/")
    return float(top) / float(bottom) if sep else float(text)


def _targets(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    import numpy as np

    path = Path(text)
    if path.suffix != ".npy" or not path.is_file():
        raise ConfigError(f"--target takes a class number or a .npy file of classes, got {text!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read targets from {path}: {exc}") from exc


def attack(
    model: Annotated[
        str,
        typer.Argument(
            help="Model file: .pt/.pth/.ts (TorchScript), .pt2 "
            "(torch.export), .safetensors/.pt state dict with "
            "--factory, .keras/.h5, .onnx."
        ),
    ],
    data: Annotated[
        str,
        typer.Argument(
            help="Attack data: .npy, .npz (x/y), an image folder "
            "(one sub-folder per class) or a built-in name "
            "(`aegis datasets`)."
        ),
    ],
    labels: NpyLabels = None,
    attack_name: Annotated[
        str,
        typer.Option(
            "--attack",
            "-a",
            help="Attack name (`aegis attacks`), a suite (standard: AutoAttack's protocol; "
            "fast: a quick check), or a comma-separated ensemble such as apgd-ce,apgd-t: each "
            "runs on the points the earlier ones failed on, and each point keeps its first "
            "success.",
        ),
    ] = "pgd",
    norm: Annotated[
        str, typer.Option(help="Threat norm: linf, l2, l1, or l0 (the budget counts pixels).")
    ] = "linf",
    eps: Annotated[
        str | None,
        typer.Option(
            help="Perturbation budget as a fraction of the width of the model's --bounds (the "
            "RobustBench/AutoAttack convention: 8/255 is 8 grey levels whether the model takes "
            "[0, 1] or 0-255; for a [0, 1] model it is the plain value; l0 counts pixels). "
            "Fractions such as 8/255 are accepted; the value in the model's units is printed "
            "and recorded beside it. Several, comma-separated (0.1,0.2,0.3), sweep the budget; "
            "'inf' is unbounded. Default: 0.3, or unbounded for a minimal-norm attack (fmn, "
            "ddn, cw, deepfool, fab, ...), which then reports each input's smallest "
            "adversarial perturbation."
        ),
    ] = None,
    step_size: Annotated[
        str | None,
        typer.Option(
            "--step-size",
            "--step",
            help="Step size η of each iteration, like --eps a fraction of the bounds' width; a "
            "number or a fraction such as 2/255 (default: the attack's).",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", "--iterations", help="Number of iterations (default: the attack's)."
        ),
    ] = None,
    restarts: Annotated[int | None, typer.Option(help="Random restarts (pgd).")] = None,
    random_start: Annotated[
        bool | None,
        typer.Option(
            "--random-start/--no-random-start", help="Start from a random point in the ball (pgd)."
        ),
    ] = None,
    decay: Annotated[float | None, typer.Option(help="Momentum decay (mifgsm).")] = None,
    queries: Annotated[
        int | None, typer.Option(help="Query budget per input of a black-box attack.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Any other attack hyper-parameter as NAME=VALUE, repeatable "
            "(e.g. -p overshoot=0.05 -p target_classes=3); `aegis attacks` lists them.",
        ),
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(
            help="L1 only: share of gradient coordinates left still in each step (0.99 → top 1%)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="Targeted attack: one class for every input, or a .npy with one class per input."
        ),
    ] = None,
    success_threshold: Annotated[
        float | None,
        typer.Option(
            help="Required success rate, as a share (0.9 = 90%); the verdict says if it is reached."
        ),
    ] = None,
    gate: Annotated[
        bool,
        typer.Option(
            help="Exit with code 3 when the attack reaches --success-threshold (CI gate)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run directory for results.json, samples.npz and grid.png "
            "(default: runs/<time>-<attack>)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run in --out: its finished batches (kept under "
            "OUT/progress/) are read back, the rest attacked; same records as an uninterrupted "
            "run with the same seed.",
        ),
    ] = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Inputs per batch. Default: the largest batch that fits in half the free "
            "memory (GPU or RAM), up to 256, measured on the model; a batch that still runs "
            "out of memory is halved and retried. The size and retries land in results.json."
        ),
    ] = None,
    seed: Seed = 0,
    limit: Limit = None,
    attack_misclassified: Annotated[
        bool, typer.Option(help="Also attack inputs the model already gets wrong.")
    ] = False,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            help="Where the batches run: local (this process) or ray (Ray workers, each with "
            "its own copy of the model: a local Ray instance, or the cluster at "
            "--ray-address). Both give the same records for the same seed; ray needs "
            "pip install 'aegis-robust[ray]'.",
        ),
    ] = "local",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Ray workers (default: one per GPU of the cluster, else one per CPU); each "
            "runs torch on its share of the CPUs, or on its own GPU.",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Run on an existing Ray cluster (auto, HOST:6379 or ray://HOST:10001; aegis "
            "must be installed on its nodes) instead of starting a local Ray instance.",
        ),
    ] = None,
    num_classes: NumClasses = None,
    input_shape: InputShape = None,
    bounds: Annotated[
        str | None,
        typer.Option(
            help="The model's valid input range low,high (default 0,1; e.g. 0,255 for a model "
            "on raw pixels). The data is brought to it (uint8 stays 0-255 for 0,255)."
        ),
    ] = None,
    mean: Annotated[
        str | None,
        typer.Option(
            help="Per-channel mean the model subtracts (on [0, 1] pixels): numbers, or a "
            "preset: imagenet, cifar10, cifar100, mnist, half (0.5). Without --mean/--std "
            "aegis tries the presets on labeled clean data and says when one fits better."
        ),
    ] = None,
    std: Annotated[
        str | None,
        typer.Option(help="Per-channel std the model divides by: numbers, or a preset name."),
    ] = None,
    layout: Layout = None,
    factory: WeightsFactory = None,
    unsafe_pickle: Annotated[
        bool,
        typer.Option(
            help="Allow unpickling a plain pickle model file: this EXECUTES CODE from the file."
        ),
    ] = False,
    trust_sidecar: TrustSidecar = False,
    keep_softmax: Annotated[
        bool,
        typer.Option(
            "--keep-softmax",
            help="Attack the model's outputs as they are. By default, when the graph is "
            "visible and ends in a softmax (or log-softmax), aegis attacks the tensor under it "
            "(the same predictions, checked), because a saturated softmax hides the gradient.",
        ),
    ] = False,
    overwrite: Overwrite = False,
    data_layout: Annotated[
        str | None,
        typer.Option(help="Layout of the data file: NCHW, NHWC or flat (default: detected)."),
    ] = None,
    scale: Annotated[
        str,
        typer.Option(
            help="How the data reaches the model's --bounds: auto (uint8 and whole-number "
            "0-255 pixels are mapped onto the bounds, values already within them kept), 255 "
            "(0-255 pixels, mapped onto the bounds) or none (kept; must fit the bounds)."
        ),
    ] = "auto",
    resize: Annotated[
        int | None,
        typer.Option(
            "--resize",
            help="Image folders: scale each image's shorter side to this many pixels (aspect "
            "kept, Pillow bilinear, antialiased), e.g. 256.",
        ),
    ] = None,
    center_crop: Annotated[
        int | None,
        typer.Option(
            "--center-crop",
            help="Image folders: keep the central SIZE x SIZE pixels after --resize, e.g. 224 "
            "(--resize 256 --center-crop 224 is ImageNet evaluation style).",
        ),
    ] = None,
    class_index: Annotated[
        Path | None,
        typer.Option(
            "--class-index",
            help='Image folders: JSON ({name: index} or {"0": [name, label]}) or CSV '
            "(name,index) mapping sub-folder names to class indices (default: sorted names).",
        ),
    ] = None,
    device: Device = None,
    preprocess: Annotated[
        list[str] | None,
        typer.Option(
            "--preprocess",
            help="A preprocessing defense in front of the model, NAME or "
            "NAME:PARAM=VALUE[,PARAM=VALUE] (e.g. jpeg:quality=75, bit-depth:bits=4, "
            "median:size=3, gaussian-noise:sigma=0.1); repeat the option for several, applied "
            "in the order given. `aegis defenses` lists them. Attacked adaptively by default: "
            "BPDA through non-differentiable steps, EOT for random ones.",
        ),
    ] = None,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive/--no-adaptive",
            help="Attack the preprocessing adaptively (BPDA/EOT, the default) or naively "
            "(gradients as torch computes them, one random draw: misleading numbers).",
        ),
    ] = True,
    eot_samples: Annotated[
        int | None,
        typer.Option(
            "--eot-samples",
            help="Random draws each gradient averages for random preprocessing (default 10).",
        ),
    ] = None,
    naive: Annotated[
        bool,
        typer.Option(
            "--naive",
            help="Also run the naive (non-adaptive) evaluation of the preprocessing and show "
            "its misleading accuracy beside the adaptive one.",
        ),
    ] = False,
) -> None:
    """Attack MODEL on DATA, print metrics and a verdict, and write a run directory.

    Example (the targeted scenario: 100 steps of 0.01 toward class 5, 90% required):

        aegis attack model.keras attack_dataset.npy --labels labels.npy --attack bim
        --eps 0.3 --step 0.01 --iterations 100 --target 5 --success-threshold 0.9
    """
    from aegis.workflows.attack import plan_attack, run_attack

    with checking_options():
        model_options = _model_options(
            num_classes=num_classes,
            input_shape=input_shape,
            bounds=bounds,
            mean=mean,
            std=std,
            layout=layout,
            factory=factory,
            allow_unsafe_pickle=unsafe_pickle,
            trust_sidecar=trust_sidecar,
            keep_softmax=keep_softmax or None,
            device=device,
            batch_size=batch_size,
        )
        data_options: dict[str, Any] = {"scale": scale}
        if data_layout is not None:
            data_options["layout"] = data_layout
        for key, value in (
            ("resize", resize),
            ("center_crop", center_crop),
            ("class_index", class_index),
        ):
            if value is not None:
                data_options[key] = value
        _check_run(gate, success_threshold, resume, out, overwrite, limit)
        hyper = {
            "steps": steps,
            "step_size": None if step_size is None else _step(step_size),
            "restarts": restarts,
            "random_start": random_start,
            "decay": decay,
            "sparsity": sparsity,
            "queries": queries,
            **params(param),
        }
        budgets = _budget_list(eps)
        targets = _targets(target)
        plan_attack(
            attack_name,
            norm,
            budgets,
            targets=targets,
            success_threshold=success_threshold,
            seed=seed,
            batch_size=batch_size,
            preprocess=preprocess,
            adaptive=adaptive,
            eot_samples=eot_samples,
            compare_naive=naive,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            **hyper,
        )
    run_dir = RunDir.of(
        out,
        attack_name.replace(",", "+"),
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    # run_attack claims the run directory itself (it knows --resume and --overwrite)
    with run_dir.writing(claim=False) as bar:

        def loaded(clf: Any, ds: Any) -> None:
            bar.start(f"{attack_name} {norm} ε={eps or 'default'}", total=len(ds))

        run = run_attack(
            model,
            data,
            labels=labels,
            attack=attack_name,
            norm=norm,
            eps=budgets,
            targets=targets,
            success_threshold=success_threshold,
            out=run_dir.out_dir,
            seed=seed,
            batch_size=batch_size,
            attack_misclassified=attack_misclassified,
            limit=limit,
            progress=bar.update,
            model_options=model_options,
            data_options=data_options,
            on_loaded=loaded,
            preprocess=preprocess,
            adaptive=adaptive,
            eot_samples=eot_samples,
            compare_naive=naive,
            resume=resume,
            overwrite=overwrite,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            **hyper,
        )
    print_summary(run)
    run_dir.track(run_dir.out_dir)
    if gate and run.reached_threshold:
        raise typer.Exit(EXIT_GATE)


def _model_options(
    *,
    num_classes: int | None,
    input_shape: str | None,
    bounds: str | None,
    mean: str | None,
    std: str | None,
    layout: str | None,
    factory: str | None,
    allow_unsafe_pickle: bool,
    trust_sidecar: bool,
    keep_softmax: bool | None,
    device: str | None,
    batch_size: int | None,
) -> dict[str, Any]:
    """The model options the Python API takes, those not given left out."""
    from aegis import normalization

    options: dict[str, Any] = {
        "num_classes": num_classes,
        "input_shape": input_shape,
        "bounds": floats(bounds, "--bounds"),
        "mean": normalization.parse(mean, "mean"),
        "std": normalization.parse(std, "std"),
        "layout": layout,
        "factory": factory,
        "allow_unsafe_pickle": allow_unsafe_pickle,
        "trust_sidecar": trust_sidecar,
        "keep_softmax": keep_softmax,
        "device": device,
        "batch_size": batch_size,
    }
    return {k: v for k, v in options.items() if v is not None}


def _check_run(
    gate: bool,
    success_threshold: float | None,
    resume: bool,
    out: Path | None,
    overwrite: bool,
    limit: int | None,
) -> None:
    """The options that do not fit together, refused before anything is loaded."""
    if gate and success_threshold is None:
        raise ConfigError("--gate needs --success-threshold (e.g. 0.9)")
    if resume and out is None:
        raise ConfigError("--resume needs the --out directory of the interrupted run")
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the run")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out, --overwrite replaces it; drop one")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
