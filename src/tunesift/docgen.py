"""Generate docs/options.md from the CLI itself: ``python -m tunesift.docgen > docs/options.md``.

A test checks that the file equals this output, so the options page never drifts from the CLI."""

from __future__ import annotations

INTRO = (
    "# Every option\n\n"
    "Generated from the CLI's own help by `python -m tunesift.docgen > docs/options.md` "
    "(`tunesift COMMAND --help` shows the same); `tests/test_cli.py` checks that this page equals "
    "that output. Options of {commands} can also be given in a "
    "`--config recipe.yaml` file, with `_` or `-` in their names; flags on the command line "
    "override the file.\n"
)


def _and(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def options_markdown() -> str:
    import typer.main

    from .cli import app

    group = typer.main.get_command(app)
    with_config = [name for name, cmd in group.commands.items() if any("--config" in p.opts for p in cmd.params)]
    parts = [INTRO.format(commands=_and(with_config))]
    for name, cmd in group.commands.items():
        doc = (cmd.help or "").strip().splitlines()[0]
        parts.append(f"\n## tunesift {name}\n\n{doc}\n\n| option | default | meaning |\n|---|---|---|\n")
        for p in cmd.params:
            text = (getattr(p, "help", None) or "").replace("|", "/")
            if p.param_type_name == "argument":
                parts.append(f"| `{p.name.upper()}` (argument) | | {text} |\n")
                continue
            flags = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            default = "" if p.default is None or callable(p.default) else f"`{p.default}`"
            parts.append(f"| {flags} | {default} | {text} |\n")
    return "".join(parts)


if __name__ == "__main__":
    print(options_markdown(), end="")
