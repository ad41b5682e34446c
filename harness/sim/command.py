"""``tokenbench sim ...``: the same options as ``python -m harness.sim``.

Why pass-through: the sim's argparse parser is the single definition of its
options (it must also start fast without typer), so the CLI command forwards
its arguments untouched instead of redeclaring them.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``sim`` command to the tokenbench CLI."""

    @app.command(
        "sim",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def sim(ctx: typer.Context) -> None:
        """Run the simulated LLM server (exact timings or a modelled GPU engine; faults). `tokenbench sim --help`."""
        from harness.sim.__main__ import main

        raise typer.Exit(main(list(ctx.args)))
