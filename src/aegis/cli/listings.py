"""``aegis attacks``, ``aegis defenses`` and ``aegis datasets``: what aegis offers, as text
wrapped to the terminal (the text is made in :mod:`aegis.cli.listing`)."""

from __future__ import annotations

from typing import Annotated

import typer


def attacks(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'pgd*'.")] = "*",
    wide: Annotated[
        bool, typer.Option("--wide", help="One line per attack, for wide terminals.")
    ] = False,
) -> None:
    """List the attacks, suites and aliases: norms, access (gradients or queries only), whether
    they take a target, whether they are minimal-norm, their parameters with defaults, paper."""
    import shutil

    from aegis.cli.listing import attacks_text

    width = shutil.get_terminal_size().columns
    typer.echo(attacks_text(width, wide=wide, pattern=pattern), nl=False)


def defenses(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'b*'.")] = "*",
) -> None:
    """List the preprocessing defenses (for `attack --preprocess`): parameters with their
    defaults, and how the adaptive evaluation attacks each (exact gradient, BPDA, EOT)."""
    import shutil

    from aegis.cli.listing import defenses_text

    typer.echo(defenses_text(shutil.get_terminal_size().columns, pattern), nl=False)


def datasets() -> None:
    """List the built-in offline datasets."""
    import shutil

    from aegis.cli.listing import datasets_text

    typer.echo(datasets_text(shutil.get_terminal_size().columns), nl=False)
