"""``--config recipe.yaml``: a command's options as YAML keys, checked where the file and line are known.

The typer callback of every command's ``--config`` option: each key must name an option of the
command (``_`` or ``-``), each value must have the option's type (a YAML boolean only for a flag),
and every defect is a one-line :class:`~tunesift.errors.TunesiftError` naming the file and the key's
line. The values become the command's defaults, so flags on the command line override them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import TunesiftError


def load_recipe(ctx: typer.Context, param, value: Path | None):
    """``--config recipe.yaml``: every option of the command as YAML keys; flags override them."""
    if value is None:
        return None
    import yaml

    try:
        text = Path(value).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text) or {}
        node = yaml.compose(text)  # the same document again, for each key's line
    except OSError as exc:
        raise TunesiftError(f"{value}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise TunesiftError(f"{value}: cannot read config: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} "
                            f"at offset {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise TunesiftError(f"{value}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(loaded, dict):
        raise TunesiftError(f"{value}: config must be a mapping of option names to values")
    # each key as written and its line (a YAML 1.1 key like "yes" loads as True: name it as written)
    written = {}
    if isinstance(node, yaml.MappingNode):
        keys = yaml.SafeLoader("")
        written = {keys.construct_object(k): (k.value, k.start_mark.line + 1) for k, _ in node.value
                   if isinstance(k, yaml.ScalarNode)}
    known = {p.name: p for p in ctx.command.params}
    config = {}
    for key, val in loaded.items():
        shown, line = written.get(key, (str(key), None))
        name = str(shown).replace("-", "_")
        where = f"{value}:{line}" if line else str(value)
        if name not in known or name == "config":
            raise TunesiftError(f"{where}: unknown option '{shown}' (see tunesift {ctx.command.name} --help)")
        val = ",".join(map(str, val)) if isinstance(val, list) else val
        if isinstance(val, bool) and not getattr(known[name], "is_flag", False):  # typer would read it as 1 or 0
            raise TunesiftError(f"{where}: option '{shown}': expected a value, got the boolean {str(val).lower()}")
        if val is not None and known[name].callback is None:  # its type check, here where the line is known
            try:
                known[name].process_value(ctx, val)
            except typer.BadParameter as exc:
                raise TunesiftError(f"{where}: option '{shown}': {getattr(exc, 'message', None) or exc}") from None
        config[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **config}
    return value
