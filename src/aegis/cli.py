"""The ``aegis`` command line: a thin Typer layer over the Python API, no logic of its own.

Exit codes (:mod:`aegis.cli_options`): 0 done, 1 error, 2 usage error (an unknown option, a
missing argument, or an option value the command cannot take), 3 gate tripped.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from aegis._version import __version__
from aegis.cli_options import (
    EXIT_ERROR,
    EXIT_GATE,
    EXIT_OK,
    EXIT_USAGE,
    Device,
    Overwrite,
    Seed,
    TrustSidecar,
    checking_options,
)
from aegis.errors import AegisError, ConfigError, UsageError
from aegis.io.claim import claimed
from aegis.report.track_options import Mlflow, MlflowExperiment, MlflowUri, track, wanted

__all__ = ["EXIT_ERROR", "EXIT_GATE", "EXIT_OK", "EXIT_USAGE", "app", "main"]

app = typer.Typer(
    name="aegis",
    help=(
        "Attack, harden and measure the security of image classifiers.\n\n"
        "Point `aegis attack` at a model file (PyTorch, Keras, ONNX) and an attack dataset "
        "(.npy, .npz, an image folder, or a built-in one) to get metrics, pictures and a "
        "verdict; `aegis audit` runs a whole declared suite, `aegis report` rebuilds a run's "
        "HTML report and `aegis compare` shows what got better or worse between two runs; "
        "`--mlflow` on any command that writes a run directory logs it to MLflow. "
        "Exit codes: 0 done, 1 error, 2 usage error, 3 gate tripped (`attack --gate`: the "
        "attack reached --success-threshold; `audit`: a threshold failed; `compare "
        "--fail-on-worse`: a figure got worse)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aegis {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what aegis does.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print aegis' version and exit.",
        ),
    ] = False,
) -> None:
    _state["debug"] = debug
    # MLflow configures its own loggers when imported (--mlflow): INFO only with --verbose
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    # INFO reaches the run directory's aegis.log; the console shows it only with --verbose
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """aegis' own warnings are one console line; other libraries' go to the log (the run
    directory's aegis.log, and the console with --verbose), not the user's terminal."""
    from aegis.errors import AegisWarning

    if issubclass(category, AegisWarning):
        logging.getLogger("aegis").warning("%s", message)
    else:
        where = f"{Path(filename).name}:{lineno}"
        logging.getLogger("aegis.third_party").info(
            "%s (%s): %s", category.__name__, where, message
        )


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from exc


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


def _params(items: list[str] | None) -> dict[str, Any]:
    """``NAME=VALUE`` pairs → hyper-parameters as text; each attack or defense converts them
    by its fields' declared types (``aegis.params``), naming a value that does not fit."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name or not raw.strip():
            raise ConfigError(f"--param takes NAME=VALUE, got {item!r}")
        if name in out:
            raise ConfigError(f"--param {name} is given twice; keep one")
        out[name] = raw.strip()
    return out


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


@app.command(no_args_is_help=True)
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
    labels: Annotated[
        str | None, typer.Option("--labels", "-y", help="Labels .npy for a .npy data file.")
    ] = None,
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
    batch_size: Annotated[int, typer.Option(help="Inputs per batch.")] = 256,
    seed: Seed = 0,
    limit: Annotated[int | None, typer.Option(help="Use only the first N inputs.")] = None,
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
    num_classes: Annotated[int | None, typer.Option(help="Model outputs (classes).")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Model input C,H,W, e.g. 1,28,28.")
    ] = None,
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
    layout: Annotated[
        str | None, typer.Option(help="Model input layout: NCHW, NHWC or flat.")
    ] = None,
    factory: Annotated[
        str | None,
        typer.Option(help="package.module:function building the network for a weights file."),
    ] = None,
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
    from aegis import normalization
    from aegis.api import plan_attack, run_attack
    from aegis.io import rundir
    from aegis.progress import progress_bar

    with checking_options():
        model_options: dict[str, Any] = {
            "num_classes": num_classes,
            "input_shape": input_shape,
            "bounds": _floats(bounds, "--bounds"),
            "mean": normalization.parse(mean, "mean"),
            "std": normalization.parse(std, "std"),
            "layout": layout,
            "factory": factory,
            "allow_unsafe_pickle": unsafe_pickle,
            "trust_sidecar": trust_sidecar,
            "keep_softmax": keep_softmax or None,
            "device": device,
            "batch_size": batch_size,
        }
        model_options = {k: v for k, v in model_options.items() if v is not None}
        data_options: dict[str, Any] = {"scale": scale}
        if data_layout is not None:
            data_options["layout"] = data_layout
        if gate and success_threshold is None:
            raise ConfigError("--gate needs --success-threshold (e.g. 0.9)")
        if resume and out is None:
            raise ConfigError("--resume needs the --out directory of the interrupted run")
        if out is not None and out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a directory for the run")
        if resume and overwrite:
            raise ConfigError(
                "--resume continues the run in --out, --overwrite replaces it; drop one"
            )
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        params = {
            "steps": steps,
            "step_size": None if step_size is None else _step(step_size),
            "restarts": restarts,
            "random_start": random_start,
            "decay": decay,
            "sparsity": sparsity,
            "queries": queries,
            **_params(param),
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
            **params,
        )
    out_dir = (
        out
        if out is not None
        else rundir.default_run_dir(Path("runs"), attack_name.replace(",", "+"))
    )

    bar: Any = None
    task: Any = None

    def loaded(clf: Any, ds: Any) -> None:
        nonlocal bar, task
        bar = progress_bar(enabled=sys.stderr.isatty())
        bar.start()
        task = bar.add_task(f"{attack_name} {norm} ε={eps or 'default'}", total=len(ds))

    def advance(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    try:
        run = run_attack(
            model,
            data,
            labels=labels,
            attack=attack_name,
            norm=norm,
            eps=budgets,
            targets=targets,
            success_threshold=success_threshold,
            out=out_dir,
            seed=seed,
            batch_size=batch_size,
            attack_misclassified=attack_misclassified,
            limit=limit,
            progress=advance,
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
            **params,
        )
    finally:
        if bar is not None:
            bar.stop()
    _print_summary(run)
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(out_dir, mlflow_uri, mlflow_experiment)
    if gate and run.reached_threshold:
        raise typer.Exit(EXIT_GATE)


def _run_files(out_dir: str | Path) -> str:
    """The line that tells where a run's results and report are."""
    return f"results: {Path(out_dir) / 'results.json'}  report: {Path(out_dir) / 'report.html'}"


def _executor_note(executor: Any) -> str:
    """`` · 4 Ray workers`` for a run on Ray; nothing for a local one."""
    if not isinstance(executor, dict) or executor.get("name") != "ray":
        return ""
    return f" · {executor.get('workers')} Ray workers"


def _fmt_eps(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def _print_summary(run: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    m = run.metrics
    res = run.results
    console = Console()
    cfg = res["config"]
    data = res["data"]
    console.print(
        f"model {res['model']['source'] or res['model']['name']} · data {data['name']} "
        f"({m['n']} inputs) · attack {cfg['attack']['name']} {cfg['threat']['norm']} "
        f"ε={_fmt_eps(cfg['threat']['eps'])}"
        + (
            f" of the bounds' width (= {cfg['threat']['eps_model_units']:.4g} in the model's units)"
            if "eps_model_units" in cfg["threat"]
            else ""
        )
        + (f" · target {cfg['targets']}" if cfg["targets"] is not None else "")
        + _executor_note(cfg.get("executor"))
    )
    table = Table(show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("clean", justify="right")
    table.add_column("under attack", justify="right")
    na = "labels" in m  # no labels: accuracy, precision, recall and F1 say nothing
    cell = (lambda v: "n/a") if na else _pct
    table.add_row("accuracy", cell(m["clean_accuracy"]), cell(m["adversarial_accuracy"]))
    for key in ("precision", "recall", "f1"):
        table.add_row(
            f"macro {key}", cell(m["clean"][f"macro_{key}"]), cell(m["adversarial"][f"macro_{key}"])
        )
    console.print(table)
    if "labels" in m:
        console.print(f"labels: {m['labels']}", markup=False)
    s = m["success"]
    nrm = m["norms"]
    why = "true label = target" if "labels" not in m else "already predicted as the target"
    extra = f", {s['excluded_target']} excluded ({why})" if s["excluded_target"] else ""
    console.print(
        f"success rate {_pct(s['rate'])} ({s['successes']}/{s['attacked']} attacked{extra}); "
        f"median L∞ {_fmt(nrm['linf']['median'])}, L2 {_fmt(nrm['l2']['median'])}, "
        f"L0 {_fmt(nrm['l0']['median'])} of the successful; "
        f"{m['calls']['gradient_total']} gradients, {m['calls']['forward_total']} forward "
        f"queries (median {_fmt(m['calls']['forward_median_per_attacked'])} per attacked "
        f"input) in {res['seconds']:.1f} s"
    )
    if "sweep" in res:
        sweep = Table("ε", "accuracy under attack", "success rate", header_style="bold")
        for point in res["sweep"]:
            sweep.add_row(
                f"{point['eps']:g}",
                _pct(point["metrics"]["adversarial_accuracy"]),
                _pct(point["metrics"]["success"]["rate"]),
            )
        console.print(sweep)
    if "minimal" in res:
        mn = res["minimal"]
        pct = mn["percentiles"]
        console.print(
            f"minimal {mn['norm']} perturbation: median {_fmt(mn['median'])} "
            f"(p10 {_fmt(pct['p10'])}, p90 {_fmt(pct['p90'])}); found for {mn['found']} of "
            f"{mn['attacked']} attacked inputs"
        )
        curve = mn["curve"]
        step = max(1, len(curve) // 6)
        console.print(
            "accuracy vs ε: "
            + ", ".join(
                f"{p['eps']:.3g} → {_pct(p['accuracy'])}"
                for p in curve[::step] + ([] if (len(curve) - 1) % step == 0 else curve[-1:])
            ),
            markup=False,
        )
    if "defense" in res:
        _print_defense(res["defense"], m, console)
    for flag in res.get("sanity", []):
        if flag["flagged"]:
            console.print(f"sanity: {flag['name']}: {flag['evidence']}", markup=False)
    rem = res.get("remedies")
    if rem:
        console.print(
            f"remedy for {', '.join(rem['flags'])}: {'; '.join(rem['what'])}; accuracy under "
            f"attack {_pct(rem['naive_adversarial_accuracy'])} without it, "
            f"{_pct(rem['remedied_adversarial_accuracy'])} with it ({rem['points_gained']} more "
            f"inputs fooled)"
            + (f"; still raised: {', '.join(rem['still_raised'])}" if rem["still_raised"] else ""),
            markup=False,
        )
    if run.out_dir is not None:
        files = "  ".join(f"{k}: {run.out_dir / v}" for k, v in res["files"].items())
        console.print(f"results: {run.out_dir / 'results.json'}  {files}", markup=False)
    console.print(f"verdict: {run.verdict}", markup=False)


def _print_defense(defense: dict[str, Any], m: dict[str, Any], console: Any) -> None:
    how = []
    if defense["bpda"]:
        how.append(f"BPDA for {', '.join(defense['bpda'])}")
    if defense["eot"]:
        eot = defense["eot"]
        how.append(f"EOT over {eot['samples']} draws for {', '.join(eot['steps'])}")
    mode = (
        "adaptive" + (f" ({'; '.join(how)})" if how else " (exact gradients)")
        if defense["adaptive"]
        else "NAIVE (no BPDA/EOT: the numbers are misleading)"
    )
    console.print(f"defense: {' → '.join(defense['preprocess'])} · {mode}", markup=False)
    console.print(
        f"accuracy under attack, {'adaptive' if defense['adaptive'] else 'naive'}: "
        f"{_pct(m['adversarial_accuracy'])}",
        markup=False,
    )
    if "naive" in defense:
        nv = defense["naive"]
        console.print(
            f"accuracy under attack, naive (MISLEADING: gradients through the raw "
            f"preprocessing, one draw of random steps): {_pct(nv['adversarial_accuracy'])}",
            markup=False,
        )


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


@app.command()
def attacks(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'pgd*'.")] = "*",
    wide: Annotated[
        bool, typer.Option("--wide", help="One line per attack, for wide terminals.")
    ] = False,
) -> None:
    """List the attacks, suites and aliases: norms, access (gradients or queries only), whether
    they take a target, whether they are minimal-norm, their parameters with defaults, paper."""
    import shutil

    from aegis.cli_listing import attacks_text

    width = shutil.get_terminal_size().columns
    typer.echo(attacks_text(width, wide=wide, pattern=pattern), nl=False)


@app.command()
def defenses(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'b*'.")] = "*",
) -> None:
    """List the preprocessing defenses (for `attack --preprocess`): parameters with their
    defaults, and how the adaptive evaluation attacks each (exact gradient, BPDA, EOT)."""
    import shutil

    from aegis.cli_listing import defenses_text

    typer.echo(defenses_text(shutil.get_terminal_size().columns, pattern), nl=False)


@app.command()
def datasets() -> None:
    """List the built-in offline datasets."""
    import shutil

    from aegis.cli_listing import datasets_text

    typer.echo(datasets_text(shutil.get_terminal_size().columns), nl=False)


@app.command(no_args_is_help=True)
def inspect(
    model: Annotated[str, typer.Argument(help="Model file (any format `aegis attack` takes).")],
    data: Annotated[
        str | None,
        typer.Argument(help="Optional data (.npy, .npz, image folder, built-in name)."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", "-y", help="Labels .npy for a .npy data file.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Inputs scored (the first N of the data).")] = 512,
    num_classes: Annotated[int | None, typer.Option(help="Model outputs (classes).")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Model input C,H,W, e.g. 1,28,28.")
    ] = None,
    bounds: Annotated[
        str | None, typer.Option(help="The model's valid input range low,high (default 0,1).")
    ] = None,
    mean: Annotated[str | None, typer.Option(help="Mean: numbers or a preset name.")] = None,
    std: Annotated[str | None, typer.Option(help="Std: numbers or a preset name.")] = None,
    layout: Annotated[
        str | None, typer.Option(help="Model input layout: NCHW, NHWC or flat.")
    ] = None,
    factory: Annotated[
        str | None,
        typer.Option(help="package.module:function building the network for a weights file."),
    ] = None,
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
            "bounds": _floats(bounds, "--bounds"),
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
    _print_inspection(report)


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


@app.command(no_args_is_help=False)
def train(
    dataset: Annotated[str, typer.Option(help="Built-in dataset: mnist or digits.")] = "mnist",
    defense: Annotated[
        str | None,
        typer.Option(
            help="Robust training: pgd-at (Madry et al.), trades (Zhang et al.), fast-at "
            "(Wong et al.) or mart (Wang et al.); none: standard training."
        ),
    ] = None,
    adversarial: Annotated[
        str | None,
        typer.Option(help="Older spelling: --adversarial pgd is --defense pgd-at."),
    ] = None,
    eps: Annotated[float, typer.Option(help="L∞ budget for adversarial training.")] = 0.3,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the zoo's).")] = None,
    seed: Seed = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="A defense hyper-parameter as NAME=VALUE, repeatable (trades: beta, mart: "
            "lam, fast-at: step_ratio).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the model file and its sidecar.")] = Path(
        "models"
    ),
    noise_sigma: Annotated[
        float | None,
        typer.Option(
            help="Train on Gaussian-noise-augmented inputs, N(0, σ²) per batch (Cohen et al.): "
            "the base model of randomized smoothing for `aegis certify --sigma σ`, written as "
            "<dataset>_cnn_noise<σ>.safetensors. Not with --defense."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Retrain even if the model exists.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue an interrupted run from its last finished epoch (<model>.ckpt.pt).",
        ),
    ] = True,
) -> None:
    """Train a seeded reference CNN on a built-in dataset (model file + model.json sidecar)."""
    from aegis.zoo.train import train_reference

    result = train_reference(
        dataset,
        out_dir=out,
        epochs=epochs,
        defense=defense,
        defense_params=_params(param) or None,
        adversarial=adversarial,
        eps=eps,
        seed=seed,
        progress=sys.stderr.isatty(),
        force=force,
        resume=resume,
        noise_sigma=noise_sigma,
    )
    robust, noisy = result.robust_accuracy, result.noisy_test_accuracy
    typer.echo(
        f"model {result.model_path} (sidecar {result.sidecar_path}): "
        + (f"defense {result.defense}, " if result.defense else "")
        + f"test accuracy {result.test_accuracy:.2%}"
        + (f", PGD robust accuracy {robust:.2%} at eps {eps}" if robust is not None else "")
        + (f", under its training noise {noisy:.2%}" if noisy is not None else "")
        + f", {result.seconds:.0f} s"
        + (" (reused)" if result.reused else "")
        + (
            f" (resumed after epoch {result.resumed_from_epoch})"
            if result.resumed_from_epoch
            else ""
        )
    )


def _model_options(
    num_classes: int | None,
    factory: str | None,
    device: str | None,
    batch_size: int | None,
    trust_sidecar: bool = False,
) -> dict[str, Any]:
    options = {
        "num_classes": num_classes,
        "factory": factory,
        "device": device,
        "batch_size": batch_size,
        "trust_sidecar": trust_sidecar or None,
    }
    return {k: v for k, v in options.items() if v is not None}


@app.command(no_args_is_help=True)
def defend(
    base: Annotated[str, typer.Argument(help="The undefended model file.")],
    data: Annotated[str, typer.Argument(help="Data: .npy/.npz, image folder or built-in name.")],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="A defended model file (e.g. from `aegis train --defense`)."
        ),
    ] = None,
    preprocess: Annotated[
        list[str] | None,
        typer.Option(help="A preprocessing defense put in front of BASE (`aegis defenses`)."),
    ] = None,
    labels: Annotated[str | None, typer.Option("--labels", "-y", help="Labels .npy.")] = None,
    attack: Annotated[
        str, typer.Option("--attack", "-a", help="Attack or suite for every row.")
    ] = "standard",
    norm: Annotated[str, typer.Option(help="Threat norm: linf, l2, l1, l0.")] = "linf",
    eps: Annotated[float, typer.Option(help="Perturbation budget.")] = 0.3,
    limit: Annotated[int | None, typer.Option(help="Use only the first N inputs.")] = None,
    seed: Seed = 0,
    batch_size: Annotated[int | None, typer.Option(help="Inputs per batch.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory for results.json.")] = None,
    detector: Annotated[
        list[str] | None,
        typer.Option(
            "--detector",
            help="A detector of adversarial inputs put beside BASE: mahalanobis or squeeze "
            "(fitted on clean data, attacked by the attack and a detector-aware PGD).",
        ),
    ] = None,
    smoothed: Annotated[
        list[str] | None,
        typer.Option(
            "--smoothed",
            help="A model file to certify behind randomized smoothing (e.g. from "
            "`aegis certify --train`).",
        ),
    ] = None,
    sigma: Annotated[float, typer.Option(help="Smoothing noise σ for --smoothed.")] = 0.25,
    certify_samples: Annotated[
        int, typer.Option(help="Noise samples per input for --smoothed (Cohen et al.'s n).")
    ] = 1000,
    certify_radii: Annotated[
        str, typer.Option(help="L2 radii of the certified-accuracy column, comma-separated.")
    ] = "0.5,1",
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Compare BASE with its defended versions in one table: clean accuracy, clean macro
    precision/recall/F1, accuracy under the same attack on the same points (preprocessing
    attacked adaptively, with the naive, misleading figure beside it), detection ROC-AUC,
    certified accuracy and training time.

        aegis defend models/mnist_cnn.safetensors mnist -m models/mnist_cnn_pgd.safetensors
        --preprocess jpeg:quality=75 --detector mahalanobis --attack standard --eps 0.3
        --limit 200

        aegis defend models/mnist_cnn.safetensors mnist --smoothed models/noise.safetensors
        --sigma 0.25 --certify-radii 0.5,1 --limit 100

    Accuracy under attack is an upper bound on robust accuracy; a row with a warning sign of
    gradient masking is marked SUSPICIOUS. A detector row's accuracy is that of classifier +
    detector (a flagged input counts as handled), the worst case of the attack and of the
    detector-aware adaptive attack. A smoothed row's certified accuracy is a guarantee at an
    L2 radius (with probability 1 − α), not an attack's figure. Each family in depth:
    `aegis detect`, `aegis certify`.
    """
    from aegis.defenses.compare import compare_defenses
    from aegis.io import rundir

    out_dir = out if out is not None else rundir.default_run_dir(Path("runs"), "defend")
    with claimed(Path(out_dir), overwrite=overwrite):
        table = compare_defenses(
            base,
            data,
            models=model or (),
            preprocess=preprocess or (),
            attack=attack,
            norm=norm,
            eps=eps,
            labels=labels,
            limit=limit,
            seed=seed,
            batch_size=batch_size,
            out=out_dir,
            detectors=detector or (),
            smoothed=smoothed or (),
            sigma=sigma,
            certify_samples=certify_samples,
            certify_radii=_floats(certify_radii, "--certify-radii") or (),
        )
    from rich.console import Console
    from rich.table import Table

    grid = Table(title=f"{attack} {norm} ε={eps:g} on {table['rows'][0]['n']} inputs")
    heads = ("model", "clean", "P", "R", "F1", "attacked", "naive*", "det AUC", "certified")
    for head in (*heads, "train s", "flags"):
        grid.add_column(
            head,
            justify="left" if head in ("model", "flags") else "right",
            min_width=28 if head == "model" else None,
        )
    for r in table["rows"]:
        naive = r["naive_adversarial_accuracy"]
        cert = r["certified_accuracy"]
        grid.add_row(
            r["name"].replace(".safetensors", ""),
            _pct(r["clean_accuracy"]),
            *(_pct(r[f"clean_macro_{k}"]) for k in ("precision", "recall", "f1")),
            "–" if r["adversarial_accuracy"] is None else _pct(r["adversarial_accuracy"]),
            "–" if naive is None else _pct(naive),
            "–" if r["detection_auc"] is None else f"{r['detection_auc']:.3f}",
            "–" if cert is None else " ".join(f"{_pct(v)}@{k}" for k, v in cert.items()),
            "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
            "SUSPICIOUS: " + ", ".join(r["suspicious"]) if r["suspicious"] else "",
        )
    Console(width=max(Console().width, 150)).print(grid)
    typer.echo(
        "P/R/F1: clean macro precision, recall, F1. attacked: accuracy under the attack, an "
        "upper bound on robust accuracy, not a guarantee (detector rows: classifier + "
        "detector, worst case with the adaptive attack). *naive: the same attack without "
        "BPDA/EOT, MISLEADING. certified: certified L2 accuracy at each radius. "
        + _run_files(table["out_dir"])
    )
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(table["out_dir"], mlflow_uri, mlflow_experiment)


@app.command(no_args_is_help=True)
def certify(
    model: Annotated[str, typer.Argument(help="Base model file (e.g. trained on noise).")],
    data: Annotated[str, typer.Argument(help="Data: .npy/.npz, image folder or built-in name.")],
    labels: Annotated[str | None, typer.Option("--labels", "-y", help="Labels .npy.")] = None,
    sigma: Annotated[float, typer.Option(help="Noise standard deviation σ (pixels).")] = 0.25,
    n0: Annotated[int, typer.Option(help="Noise samples that select the class.")] = 100,
    n: Annotated[int, typer.Option(help="Noise samples that estimate its probability.")] = 1000,
    alpha: Annotated[float, typer.Option(help="Failure probability of a certificate.")] = 0.001,
    radii: Annotated[
        str, typer.Option(help="L2 radii for certified accuracy, comma-separated.")
    ] = "0,0.25,0.5,1",
    noise_batch: Annotated[int, typer.Option(help="Noisy copies per forward pass.")] = 1000,
    limit: Annotated[int | None, typer.Option(help="Use only the first N inputs.")] = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory for results.json.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Model outputs (classes).")] = None,
    factory: Annotated[
        str | None, typer.Option(help="package.module:function building the network.")
    ] = None,
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
    from aegis.defenses.certification import Smoothing, run_certify
    from aegis.io import rundir
    from aegis.progress import progress_bar

    grid = _floats(radii, "--radii") or ()
    smoothing = Smoothing(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=noise_batch)
    out_dir = out if out is not None else rundir.default_run_dir(Path("runs"), "certify")
    with (
        claimed(Path(out_dir), overwrite=overwrite),
        progress_bar(enabled=sys.stderr.isatty()) as bar,
    ):
        task = bar.add_task(f"certify σ={sigma:g}", total=None)
        results = run_certify(
            model,
            data,
            smoothing=smoothing,
            radii=grid,
            labels=labels,
            limit=limit,
            seed=seed,
            out=out_dir,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            model_options=_model_options(num_classes, factory, device, None, trust_sidecar),
        )
    c = results["certification"]
    typer.echo(
        f"randomized smoothing σ={sigma:g}, n0={n0}, n={n}, α={alpha:g} on {c['n']} inputs "
        f"({results['seconds']:.1f} s)"
    )
    for point in c["certified_accuracy"]:
        typer.echo(
            f"certified accuracy at L2 radius {point['radius']:g}: {_pct(point['accuracy'])}"
        )
    typer.echo(f"abstain rate: {_pct(c['abstain_rate'])}")
    typer.echo(
        f"largest radius these n and α can certify: "
        f"{results['config']['max_certifiable_radius']:.3g} (σ·Φ⁻¹(α^(1/n)))"
    )
    typer.echo(_run_files(results["out_dir"]))
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(results["out_dir"], mlflow_uri, mlflow_experiment)


@app.command(no_args_is_help=True)
def detect(
    model: Annotated[str, typer.Argument(help="Model file.")],
    data: Annotated[str, typer.Argument(help="Data: .npy/.npz, image folder or built-in name.")],
    labels: Annotated[str | None, typer.Option("--labels", "-y", help="Labels .npy.")] = None,
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
    out: Annotated[Path | None, typer.Option(help="Run directory for results.json.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Inputs per batch.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Model outputs (classes).")] = None,
    factory: Annotated[
        str | None, typer.Option(help="package.module:function building the network.")
    ] = None,
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
    from aegis.defenses.detection import run_detect
    from aegis.io import rundir

    out_dir = out if out is not None else rundir.default_run_dir(Path("runs"), "detect")
    with claimed(Path(out_dir), overwrite=overwrite):
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
            adaptive_weights=_floats(adaptive_weights, "--adaptive-weights") or (),
            seed=seed,
            out=out_dir,
            model_options=_model_options(num_classes, factory, device, batch_size, trust_sidecar),
            steps=steps,
        )
    d = results["detection"]
    na = d["non_adaptive"]
    typer.echo(
        f"{d['detector']} detector, {d['attack']['name']} {norm} ε={eps:g} on {d['n']} inputs; "
        f"threshold {d['threshold']:.4g} flags {_pct(d['clean_flagged'])} of clean inputs"
    )
    typer.echo(
        f"non-adaptive: ROC-AUC {_fmt(na['roc_auc'])}, detection rate at {fpr:.0%} FPR "
        f"{_pct(na['tpr'])} of {na['successful']} successful adversarial examples"
    )
    typer.echo(
        f"combined clean accuracy {_pct(na['combined']['clean_accuracy'])} (classifier alone "
        f"{_pct(na['combined']['classifier_clean_accuracy'])})"
    )
    typer.echo(
        f"combined robust accuracy, non-adaptive: {_pct(na['combined']['robust_accuracy'])} "
        f"(classifier alone {_pct(na['combined']['classifier_robust_accuracy'])})"
    )
    if "adaptive" in d:
        ad = d["adaptive"]
        typer.echo(
            f"combined robust accuracy, adaptive: {_pct(ad['combined']['robust_accuracy'])} "
            f"(detection rate {_pct(ad['tpr'])} of {ad['successful']} successful); worst case "
            f"of both per input: {_pct(d['worst_case']['robust_accuracy'])}"
        )
    typer.echo(
        "combined robust accuracy is an upper bound, not a guarantee: a stronger adaptive "
        "attack can only lower it"
    )
    typer.echo(_run_files(results["out_dir"]))
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(results["out_dir"], mlflow_uri, mlflow_experiment)


# -- aegis poison (implementation in aegis.poisoning.command) --------------------------------
from aegis.poisoning.command import poison as _poison  # noqa: E402  (imports nothing heavy)

app.command(name="poison")(_poison)

# `aegis report RUN_DIR`: the HTML report, rebuilt from results.json (aegis.report.command)
from aegis.report.command import report as _report  # noqa: E402

app.command(name="report", no_args_is_help=True)(_report)

# `aegis compare RUN_A RUN_B`: what got better or worse (aegis.report.compare_command)
from aegis.report.compare_command import compare as _compare  # noqa: E402

app.command(name="compare", no_args_is_help=True)(_compare)

# `aegis audit CONFIG`: every evaluation from one YAML config, a CI gate (aegis.audit)
from aegis.audit.command import audit as _audit  # noqa: E402

app.command(name="audit")(_audit)

# -- leakage: model extraction and membership inference (aegis.leakage) -----------------
from aegis.leakage import cli as _leakage_cli  # noqa: E402

app.command("extract", no_args_is_help=True)(_leakage_cli.extract)
app.command("membership", no_args_is_help=True)(_leakage_cli.membership)


def main() -> None:
    """Entry point: AegisError → one line on stderr and exit 1 (traceback with --debug).

    Typer runs in standalone mode: it reports usage errors itself (exit 2) and turns
    ``typer.Exit`` into the exit code; everything else reaches the handlers here.
    """
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            app()
    except AegisError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR)
    except Exception as exc:  # the CLI edge: anything unexpected is still one line
        if _state["debug"]:
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for "
            "the traceback and please report it)",
            err=True,
        )
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
