"""The ``aegis`` command line: a thin Typer layer over the Python API, no logic of its own.

One module per command (``aegis.cli.attack``, ``aegis.cli.audit``, ...); the option types and
exit codes they share are in :mod:`aegis.cli.options`, the run directory, progress bar and
MLflow logging of the commands that write a run in :mod:`aegis.cli.run_dir`. This module holds
the app, the options every command takes (--debug, --verbose, --version) and :func:`main`.

Exit codes (:mod:`aegis.cli.options`): 0 done, 1 error, 2 usage error (an unknown option, a
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
from aegis.cli import (
    attack,
    audit,
    certify,
    compare,
    defend,
    detect,
    extract,
    inspect,
    listings,
    membership,
    poison,
    report,
    train,
)
from aegis.cli.options import EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_USAGE
from aegis.errors import AegisError, UsageError

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


# the commands, in the order `aegis --help` lists them
app.command(no_args_is_help=True)(attack.attack)
app.command()(listings.attacks)
app.command()(listings.defenses)
app.command()(listings.datasets)
app.command(no_args_is_help=True)(inspect.inspect)
app.command(no_args_is_help=False)(train.train)
app.command(no_args_is_help=True)(defend.defend)
app.command(no_args_is_help=True)(certify.certify)
app.command(no_args_is_help=True)(detect.detect)
app.command(name="poison")(poison.poison)
app.command(name="report", no_args_is_help=True)(report.report)
app.command(name="compare", no_args_is_help=True)(compare.compare)
app.command(name="audit")(audit.audit)
app.command("extract", no_args_is_help=True)(extract.extract)
app.command("membership", no_args_is_help=True)(membership.membership)


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
