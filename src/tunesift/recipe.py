"""``--config recipe.yaml``: a command's options as YAML keys, checked where the file and line are known.

The typer callback of every command's ``--config`` option: each key must name an option of the
command (``_`` or ``-``), each value must have the option's type (a YAML boolean only for a flag),
and every defect is a one-line :class:`~tunesift.errors.TunesiftError` naming the file and the key's
line. The values become the command's defaults, so flags on the command line override them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import OptionError, TunesiftError
from .methods.options import field_problem, parse_budget, parse_weights, weights_problem

RANGE_CHECKED = ("select", "kernel")  # commands whose options are selection Options, checked one by one
#: options that take a comma list, which a recipe may write as a YAML list; any other takes one value
LIST_OPTIONS = {"methods", "budget", "weights", "metrics", "prompt_field"}


def list_problem(name: str, command: str, text: str) -> str | None:
    """Why the text of a budget or weights option is bad (None: fine), checked where the recipe's
    line is known: ``budget`` (several, comma-separated, for ``bench``) and DONOD's ``weights``."""
    try:
        if name == "budget":
            for b in (text.split(",") if command == "bench" else [text]):
                parse_budget(b.strip())
        elif name == "weights":
            return weights_problem(parse_weights(text))
    except OptionError as exc:
        return str(exc)
    return None


def _decimal(text: str) -> bool:
    """Whether a YAML integer is written as plain decimal digits (an optional sign, no leading 0;
    ``1_000`` too, which YAML and the command line both read as 1000)."""
    digits = text.lstrip("+-").replace("_", "")
    return digits.isdigit() and (digits == "0" or not digits.startswith("0"))


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
    written, spelled = {}, {}  # key -> (as written, line); option name -> line
    if isinstance(node, yaml.MappingNode):
        keys = yaml.SafeLoader("")
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            if k.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults": the loader cannot name its line
                raise TunesiftError(f"{value}:{k.start_mark.line + 1}: YAML merge keys ('<<') are not read in a "
                                    "config: write each option as its own key")
            key = keys.construct_object(k)
            name = str(k.value).replace("-", "_")
            if name in spelled:  # safe_load keeps the last silently (max-length and max_length too)
                raise TunesiftError(f"{value}:{k.start_mark.line + 1}: option '{k.value}' is given twice (also on "
                                    f"line {spelled[name]}); give it once")
            spelled[name] = k.start_mark.line + 1
            written[key] = (k.value, k.start_mark.line + 1)
            items = v.value if isinstance(v, yaml.SequenceNode) else [v]
            for item in items:  # a value, or the items of a list value (bench's budgets, weights)
                if isinstance(item, yaml.ScalarNode) and item.tag == "tag:yaml.org,2002:int" and not _decimal(item.value):
                    # YAML 1.1 reads 010 as 8 and 0x10 as 16, where the command line reads 010 as 10
                    raise TunesiftError(f"{value}:{item.start_mark.line + 1}: option '{k.value}': write the number "
                                        f"{item.value} in decimal digits (YAML reads it as "
                                        f"{keys.construct_object(item)})")
    known = {p.name: p for p in ctx.command.params}
    config = {}
    for key, val in loaded.items():
        shown, line = written.get(key, (str(key), None))
        name = str(shown).replace("-", "_")
        where = f"{value}:{line}" if line else str(value)
        if name not in known or name == "config":
            raise TunesiftError(f"{where}: unknown option '{shown}' (see tunesift {ctx.command.name} --help)")
        param = known[name]
        if val is None and param.default is not None:  # a blank value would quietly mean the default
            raise TunesiftError(f"{where}: option '{shown}' has no value; give one, or leave the key out for the "
                                f"default ({param.default})")
        if isinstance(val, dict):  # str() of it would become the value (a model named "{'name': 'x'}")
            raise TunesiftError(f"{where}: option '{shown}': expected a value, got a mapping")
        if isinstance(val, list):  # a comma list, for the options that take one (methods, budgets, weights)
            if name not in LIST_OPTIONS or getattr(getattr(param, "type_descriptor", None), "annotation", str) is not str:
                raise TunesiftError(f"{where}: option '{shown}': expected one value, got a list")
            if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in val):
                # a nested list or mapping (and YAML aliases nested in one could expand without bound)
                raise TunesiftError(f"{where}: option '{shown}': a list of plain values (text or numbers) expected")
            val = ",".join(map(str, val))
        if isinstance(val, bool) and not getattr(param, "is_flag", False):  # typer would read it as 1 or 0
            raise TunesiftError(f"{where}: option '{shown}': expected a value, got the boolean {str(val).lower()}")
        if isinstance(val, (str, int, float)) and (why := list_problem(name, ctx.command.name, str(val))):
            raise TunesiftError(f"{where}: option '{shown}': {why}")
        if val is not None and param.callback is None:  # its type and range, here where the line is known
            try:
                typed = param.process_value(ctx, val)
            except typer.BadParameter as exc:
                raise TunesiftError(f"{where}: option '{shown}': {getattr(exc, 'message', None) or exc}") from None
            if ctx.command.name in RANGE_CHECKED and (why := field_problem(name, typed, cli=True)):
                raise TunesiftError(f"{where}: {why}")
        config[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **config}
    return value
