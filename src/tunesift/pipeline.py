"""The selection pipeline: records -> scores -> selection.

:func:`select` is the one entry point behind the CLI and the Python API. It reads the records
(and the stage's target or existing set), loads the model when the method needs one, sets aside
the records the method cannot score (error rows under ``--on-error skip``), runs the method's
registry entry (:mod:`tunesift.methods`: one entry per method; its run function returns score
columns and a preference order) and returns a :class:`Selection`: every input record, its
scores, the kept mask and the order the method preferred.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .backends.blocks import record_errors
from .errors import OptionError, RecordsError
from .io.json_values import utf8_text
from .io.records import Record, read_records, records_from_rows, schema_of
from .io.repeats import near_repeats_of, repeats_of
from .io.schema import FieldMap
from .methods.catalogue import get_method, method_names
from .methods.options import Options, options_dict, parse_budget, resolve_budget
from .methods.registry import Job, Method, Progress, spread_column
from .render import renderer_for
from .store import check_cache_dir, default_cache_dir
from .version import __version__

__all__ = ["Options", "Selection", "as_records", "options_dict", "parse_budget", "resolve_budget", "select",
           "versions"]

log = logging.getLogger("tunesift")

#: The bundled models' names, for Selection's repr (``--model`` aliases resolve to these keys).
MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "gemma-3-270m"}


@dataclass(repr=False)
class Selection:
    """The result of a selection.

    ``records`` are the n records selected from, in input order (every input record, or the part
    that ``limit`` / ``sample`` chose); ``kept`` (n,) bool marks the selected ones; ``columns``
    holds per-record score arrays (n,) named after what they are; ``order`` lists selected indices
    (into ``records``) in the order the method preferred them. ``positions`` (n,) is each record's
    0-based position among the input's records (None: 0..n-1, nothing was sampled); ``data`` is
    the input when it was given in memory (a list, DataFrame or Dataset: :attr:`subset` returns
    the same type), None for a path; ``sources`` the absolute paths of the inputs read from files.
    """

    method: str
    records: list[Record]
    kept: np.ndarray
    columns: dict[str, np.ndarray]
    order: np.ndarray
    options: Options
    budget: int
    model: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    positions: np.ndarray | None = None
    data: object = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """Ids of the kept records, in input order."""
        return [r.id for r, k in zip(self.records, self.kept) if k]

    @property
    def mask(self) -> np.ndarray:
        """(n,) bool, one per record selected from (the rows of :meth:`scores`): True where kept."""
        return np.asarray(self.kept, dtype=bool)

    @property
    def indices(self) -> np.ndarray:
        """(k,) int64: the kept records' 0-based positions in the input, ascending (input order).
        ``df.iloc[sel.indices]`` / ``ds.select(sel.indices)`` give :attr:`subset`; without
        ``limit`` / ``sample`` this equals ``np.flatnonzero(sel.mask)``."""
        kept = np.flatnonzero(self.mask)
        return kept.astype(np.int64) if self.positions is None else np.asarray(self.positions, np.int64)[kept]

    @property
    def rows(self) -> list[dict]:
        """The kept records' original rows as dicts, untouched, in input order."""
        return [r.row for r, k in zip(self.records, self.kept) if k]

    @property
    def subset(self):
        """The kept rows, in input order, in the input's own type: a pandas DataFrame for a
        DataFrame (``iloc``, its index kept), a ``datasets.Dataset`` for a Dataset or the train
        split of a DatasetDict (``select``), a list of the very row objects for a list; for a
        path (or any other input) the rows as a list of dicts."""
        data, idx = self.data, self.indices
        if data is None:
            return self.rows
        kind = type(data).__name__
        if kind in ("DatasetDict", "IterableDatasetDict"):
            data, kind = data["train"], "Dataset"
        if kind == "DataFrame" and hasattr(data, "iloc"):
            return data.iloc[idx]
        if kind == "Dataset" and hasattr(data, "select"):
            return data.select(idx.tolist())
        if isinstance(data, (list, tuple)):
            return [data[i] for i in idx]
        return self.rows

    def __repr__(self) -> str:
        """``Selection(method='donod', kept=300/1000, budget=300, model='SmolLM2-135M-Instruct')``."""
        parts = [f"method={self.method!r}", f"kept={int(self.mask.sum())}/{len(self.records)}",
                 f"budget={self.budget}"]
        if self.model:
            from .models import ALIASES

            name = str(self.model.get("name"))
            name = MODEL_NAMES.get(ALIASES.get(name, ""), Path(name).name)
            parts.append(f"model={name!r}")
        if self.extra.get("errors"):
            parts.append(f"errors={self.extra['errors']}")
        read = self.extra.get("read") or {}
        if read.get("limit") is not None:
            parts.append(f"limit={read['limit']}")
        if read.get("sample") is not None:
            parts.append(f"sample={read['sample']}, seed={read['seed']}")
        return f"Selection({', '.join(parts)})"

    def table(self):
        """One row per input record: id, line, the method's scores, rank, kept (a pyarrow Table).
        A string that is not valid Unicode (a lone surrogate in an id or an error reason, which
        Python holds and Arrow does not) is its ``\\uXXXX`` escape."""
        import pyarrow as pa

        rank = np.zeros(len(self.records), dtype=np.int64)
        rank[self.order] = np.arange(1, len(self.order) + 1)
        cols = {"id": pa.array([utf8_text(r.id) for r in self.records], pa.string()),
                "line": pa.array([r.line for r in self.records], pa.int64())}
        for name, arr in self.columns.items():
            cols[name] = pa.array([utf8_text(x) if isinstance(x, str) else x for x in arr]
                                  if np.asarray(arr).dtype == object else arr)
        cols["rank"] = pa.array(rank, pa.int64(), mask=rank == 0)  # null: not ranked (not picked)
        cols["kept"] = pa.array(self.kept.astype(bool))
        return pa.table(cols)

    def scores(self):
        """:meth:`table` as a pandas DataFrame: one row per record selected from. For a DataFrame
        input its index is the input's (the rows selected from, under ``limit`` / ``sample``),
        so with a unique index ``df.loc[sel.scores().query("kept").index]`` is :attr:`subset`
        (a repeated label selects every row it names; ``sel.indices`` are positions); otherwise 0..n-1."""
        out = self.table().to_pandas()
        if type(self.data).__name__ == "DataFrame" and hasattr(self.data, "index"):
            pos = np.arange(len(self.records)) if self.positions is None else np.asarray(self.positions)
            out.index = self.data.index.take(pos)
        return out

    def to_pandas(self):
        """The same as :meth:`scores`."""
        return self.scores()


SKIP_HINT = "; fix or drop such records, or pass --on-error skip to keep them out as error rows"


def as_records(data, fields: FieldMap | None = None, *, source: str = "<rows>", on_error: str = "fail",
               digest: dict | None = None, limit: int | None = None) -> list[Record]:
    """Records from a path, a list of Records, a list of dicts, a pandas DataFrame or an HF Dataset.
    ``on_error="skip"``: records with a defect come back with ``Record.error`` set; ``digest``
    receives the input's sha256 as it was read (paths only) and the Arrow schema of a Parquet,
    ``datasets`` folder or in-memory ``Dataset`` input; ``limit``: the first ``limit`` only."""
    hint = SKIP_HINT if on_error == "fail" and source == "<rows>" else ""
    if isinstance(data, (str, Path)):
        return read_records(data, fields, on_error=on_error, digest=digest, hint=hint, limit=limit)
    if isinstance(data, list) and data and isinstance(data[0], Record):
        return data[:limit] if limit else data
    ds = data["train"] if type(data).__name__ == "DatasetDict" and "train" in data else data
    if digest is not None and type(ds).__name__ == "Dataset":  # its features (ClassLabel, Image, int32)
        digest["schema"] = getattr(getattr(ds, "data", None), "schema", None)  # for Parquet/hf output
    return records_from_rows(data, fields, source=source, on_error=on_error, limit=limit,
                             hint=hint)  # dicts, DataFrame, Dataset, DatasetDict


def _in_memory_count(data) -> int | None:
    """How many rows an in-memory input holds (the train split of a DatasetDict), if it says."""
    if type(data).__name__ in ("DatasetDict", "IterableDatasetDict"):
        data = data["train"] if "train" in data else None
    try:
        return len(data)
    except TypeError:
        return None


def _take_part(records: list[Record], data, opt: Options) -> tuple[list[Record], np.ndarray | None, dict]:
    """The part of the input selected from: ``opt.limit`` was applied while reading; ``opt.sample``
    keeps ``sorted(random.Random(seed).sample(range(n), sample))`` of the n records read (the
    sample :func:`~tunesift.io.records.read_records` takes). Returns the records, their input
    positions (None: 0..n-1) and the accounting for the manifest: ``read`` records read,
    ``not_read`` after ``limit`` (None: not counted, a file's rest is not parsed),
    ``not_sampled``."""
    n = len(records)
    total = None if isinstance(data, (str, Path)) else _in_memory_count(data)
    not_read = 0 if opt.limit is None or n < opt.limit else (total - n if total is not None else None)
    part = {"limit": opt.limit, "sample": opt.sample, "seed": opt.seed if opt.sample is not None else None,
            "read": n, "not_read": not_read, "not_sampled": 0}
    if opt.sample is None:
        return records, None, part
    if opt.sample > n:
        raise OptionError(f"--sample {opt.sample} is more than the {n} records of the input; "
                          "give a smaller sample, or leave --sample out to read them all")
    keep = np.array(sorted(random.Random(opt.seed).sample(range(n), opt.sample)), dtype=np.int64)
    part["not_sampled"] = n - opt.sample
    return [records[i] for i in keep], keep, part


# the second set a stage needs, when it is missing
NEEDS = {"target": "stage 'task' needs a target set (--target FILE)",
         "existing": "stage 'continual' needs the existing data (--existing FILE)"}


def _check_second_set(method: Method, opt: Options, target, existing) -> None:
    """A second set (target or existing data) is given exactly where the method and stage use it:
    checked before anything is read."""
    uses = method.uses(opt.stage)
    for given, name, stage in ((target, "target", "task"), (existing, "existing", "continual")):
        if given is not None and uses != name:
            readers = "/".join(m for m in method_names() if get_method(m).second_set.get(stage) == name)
            raise OptionError(f"--{name} is used only by --method {readers} --stage {stage}; it would be ignored here")
    if uses is not None and {"target": target, "existing": existing}[uses] is None:
        raise OptionError(NEEDS[uses])


def _second_set(method: Method, opt: Options, target, existing) -> list[Record] | None:
    """The second record set the stage needs, once read (an empty one is refused)."""
    uses = method.uses(opt.stage)
    if uses is None:
        return None
    given = {"target": target, "existing": existing}[uses]
    if not given:
        raise OptionError(NEEDS[uses] + (" (the one given holds no records)" if given is not None else ""))
    return given


def _no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def select(data, *, target=None, existing=None, fields: FieldMap | None = None,
           progress: Progress | None = None, lm=None, check_rows: Callable | None = None, **options) -> Selection:
    """Select the records worth training on.

    ``data`` (and ``target``/``existing`` for the task/continual stages) may be a path, a list
    of dicts, a pandas DataFrame, a Hugging Face Dataset or a list of Records. ``options`` are the
    fields of :class:`Options` (``method``, ``budget``, ``model``, ...). ``lm`` reuses an already
    loaded model (:func:`tunesift.models.load_lm`). ``check_rows(records, source, schema)``, when
    given, runs once the records are read and before anything is scored (the output's check that
    it can hold them: :func:`tunesift.row_values.check_rows_writable`); what it returns (the column
    types) is kept as ``extra["row_types"]`` for the writer.

    >>> sel = select([{"instruction": "2+2?", "output": "4"}, ...], method="random", budget=0.5)
    >>> sel.subset  # the kept rows, untouched
    """
    opt = Options(**options)
    opt.validate()
    method = get_method(opt.method)
    _check_second_set(method, opt, target, existing)  # before anything is read
    if lm is not None:
        from .models import LoadedModel

        if not isinstance(lm, LoadedModel):
            raise OptionError(f"lm must be a model loaded with tunesift.models.load_lm, got {type(lm).__name__}; "
                              "or pass model=NAME")
        if not method.needs_lm:
            log.warning("%s scores with no language model: lm is not used", opt.method)
    if method.uses_cache():  # writable before the model loads and anything is scored
        check_cache_dir(opt.cache_dir or default_cache_dir())
    progress = progress or _no_progress
    t_start = time.perf_counter()
    digests: dict[str, dict] = {"data": {}, "target": {}, "existing": {}}  # sha256 of what was read
    # per-record defects become Record.error here, so that every defect of the run (unreadable fields,
    # records the model cannot score) is reported together below, or turned into error rows
    records = as_records(data, fields, on_error="skip", digest=digests["data"], limit=opt.limit)
    records, positions, part = _take_part(records, data, opt)
    # the column types every record fits, which the writer then uses (row_values.check_rows_writable)
    row_types = None if check_rows is None else \
        check_rows(records, str(data) if isinstance(data, (str, Path)) else "<rows>", digests["data"].get("schema"))
    tgt = as_records(target, fields, source="<target>", digest=digests["target"]) if target is not None else None
    ext = as_records(existing, fields, source="<existing>", digest=digests["existing"]) \
        if existing is not None else None
    other = _second_set(method, opt, tgt, ext)
    # pool records repeating the second set, found before any scoring (counted with the pick below)
    repeats = _repeats(records, other) if other is not None else None
    k = resolve_budget(opt.budget, len(records))
    log.info("%s: %d records read, keeping %d", opt.method, len(records), k)
    timings = {"read_s": time.perf_counter() - t_start}
    model_info, template = None, None
    if method.needs_lm:
        if lm is not None:  # a model loaded by the caller: its device and dtype are the run's (the encoder's too)
            opt = replace(opt, device=lm.device, dtype=lm.dtype)
        else:
            from .models import load_lm

            t = time.perf_counter()
            log.info("loading model '%s' (%s, %s)", opt.model, opt.device, opt.dtype)
            lm = load_lm(opt.model, device=opt.device, dtype=opt.dtype)
            timings["load_model_s"] = time.perf_counter() - t
        renderer = renderer_for(lm, opt.template, opt.max_length)
        template = renderer.fmt.name
        log.info("model %s on %s, %s; template %s", lm.source, lm.device, lm.dtype, template)
        model_info = describe_model(lm)
        opt = with_token_budget(opt, lm)
    t = time.perf_counter()
    errors = {i: r.error for i, r in enumerate(records) if r.error}  # defects found when reading
    readable = [i for i in range(len(records)) if i not in errors]
    cuts: dict[str, int] = {}  # prompts_cut: scored records whose prompt lost its start to max_length
    if method.needs_lm and readable:
        errors.update({readable[j]: why for j, why in
                       record_errors(method.block_kind, renderer, [records[i] for i in readable],
                                     in_context=method.in_context, counts=cuts).items()})
        errors = dict(sorted(errors.items()))
        if cuts["prompts_cut"]:
            log.warning("%d of %d records have prompts longer than max_length %d: each is scored on its "
                        "prompt's last tokens (counts.prompts_cut)", cuts["prompts_cut"], len(records),
                        opt.max_length)
    if method.needs_lm and other:  # the second set is scored too: checked before any scoring, never skipped
        name = method.uses(opt.stage)
        source = target if name == "target" else existing
        if bad := record_errors(method.block_kind, renderer, other, in_context=method.in_context):
            where = source if isinstance(source, (str, Path)) else f"<{name}>"
            raise RecordsError(f"the {name} set: " + _errors_line(bad, len(other), where)
                               + " (--on-error skip covers the pool only: fix or drop them)")
    ok = np.array([i for i in range(len(records)) if i not in errors], dtype=np.int64)
    if errors:
        if opt.on_error == "fail":
            raise RecordsError(_errors_line(errors, len(records), data) + SKIP_HINT)
        if not len(ok):
            raise RecordsError(f"none of the {len(records)} records can be used (every one is an error row "
                                f"under --on-error skip): {_errors_line(errors, len(records), data)}")
        log.warning("%d of %d records cannot be scored (see the error column); they are never kept",
                    len(errors), len(records))
        if k > len(ok):
            b = parse_budget(opt.budget)
            if not (isinstance(b, float) and b == 1.0):  # "the whole pool" needs no warning that it is smaller
                log.warning("the budget of %d records is more than the %d that can be used: keeping %d", k,
                            len(ok), len(ok))
            k = len(ok)
    scored = [records[i] for i in ok] if errors else records
    picked = method.run(Job(scored, k, opt, lm, progress, other))
    cols, order, extra = picked.columns, picked.order, dict(picked.extra)
    top = np.asarray(order[:k], dtype=np.int64)
    distinct = np.unique(top[(top >= 0) & (top < len(scored))])  # in range, once each
    if len(distinct) < k:
        raise RuntimeError(f"internal: {opt.method} ordered {len(top)} records for a budget of {k} (distinct, "
                           f"in range: {len(distinct)}): a method must order at least k distinct records")
    if cuts:
        extra["counts"] = {**cuts, **(extra.get("counts") or {})}
    if errors:  # back to every input record: failed ones get NaN / -1 / False and their reason
        cols = {name: spread_column(arr, ok, len(records)) for name, arr in cols.items()}
        cols["error"] = np.array([errors.get(i) for i in range(len(records))], dtype=object)
        order = ok[np.asarray(order, dtype=np.int64)]
        extra["errors"] = len(errors)
    schema = schema_of(records)
    extra["schema"], extra["template"] = (schema.name if schema else None), template
    extra["read"] = part
    extra["input_sha256"] = {k: v["sha256"] for k, v in digests.items() if v.get("sha256")}
    extra["input_schema"] = digests["data"].get("schema")  # Arrow schema of Parquet/HF input (outputs)
    if row_types is not None:
        extra["row_types"] = row_types
    # the field map the input was read with: the report reads it again the same way
    extra["fields"] = {k: v for k, v in vars(fields).items() if v is not None} if fields is not None else {}
    # a second set given in memory: its type and size, for the manifest (a file is named by its path)
    extra["second_sets"] = {name: {"in_memory": type_label(given), "records": len(got)}
                            for name, given, got in (("target", target, tgt), ("existing", existing, ext))
                            if given is not None and got is not None and not isinstance(given, (str, Path))}
    timings["score_select_s"] = time.perf_counter() - t
    timings.update(extra.pop("timings", {}))
    kept = np.zeros(len(records), dtype=bool)
    kept[order[:k]] = True
    if other is not None:
        extra["counts"] = {**(extra.get("counts") or {}),
                           **_second_set_repeats(records, repeats, method.uses(opt.stage), kept)}
    log.info("%s: selected %d of %d records in %.1f s", opt.method, k, len(records), time.perf_counter() - t_start)
    timings["total_s"] = time.perf_counter() - t_start
    sources = {name: str(Path(given).resolve()) for name, given in (("data", data), ("target", target), ("existing", existing))
               if isinstance(given, (str, Path))}
    in_memory = None if isinstance(data, (str, Path)) or (isinstance(data, list) and data
                                                            and isinstance(data[0], Record)) else data
    return Selection(opt.method, records, kept, cols, np.asarray(order, dtype=np.int64), opt, k,
                     model_info, timings, extra, positions, in_memory, sources)


def _repeats(records: list[Record], other: list[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(same_prompt, same_example, near)`` (n,) masks of the pool records that repeat a record
    of the second set (:func:`~tunesift.io.repeats.repeats_of`), or ask a near copy of one of its
    prompts without repeating it (:func:`~tunesift.io.repeats.near_repeats_of`)."""
    same_prompt, same_example = repeats_of(records, other)
    return same_prompt, same_example, near_repeats_of(records, other) & ~same_prompt


def _second_set_repeats(records: list[Record], repeats: tuple, name: str, kept: np.ndarray) -> dict[str, int]:
    """The manifest's counts of pool records that repeat a record of the second set (``name``:
    ``target`` or ``existing``): ``{name}_prompts`` ask one of its prompts, ``{name}_copies`` with
    its response too, ``{name}_near_prompts`` ask a near one (:func:`~tunesift.io.repeats.near_repeats_of`,
    exact repeats not counted again), and ``..._kept`` of each. Kept ones are warned about,
    naming the first few: for ``target``, training on them leaks the target set into the model (a
    problem when it is also what the model is evaluated on); for ``existing``, they were trained on
    already. ``repeats``: :func:`_repeats`."""
    same_prompt, same_example, near = repeats
    out = {f"{name}_prompts": int(same_prompt.sum()), f"{name}_prompts_kept": int((same_prompt & kept).sum()),
           f"{name}_copies": int(same_example.sum()), f"{name}_copies_kept": int((same_example & kept).sum()),
           f"{name}_near_prompts": int(near.sum()), f"{name}_near_prompts_kept": int((near & kept).sum())}

    def why(act: str) -> str:  # act: what to do with a target copy ("remove them from the pool")
        return (f"if the target set is what you evaluate on, this is a leak: {act}" if name == "target"
                else "the model was trained on these already")

    def named(mask: np.ndarray) -> str:
        bad = np.flatnonzero(mask).tolist()
        return ", ".join(str(records[i].id) for i in bad[:3]) + (", ..." if len(bad) > 3 else "")

    if n := out[f"{name}_prompts_kept"]:
        log.warning("%d kept record(s) ask a prompt of the %s set (%d with its response too: counts.%s_copies_kept): "
                    "%s; %s", n, name, out[f"{name}_copies_kept"], name, named(same_prompt & kept),
                    why("remove them from the pool"))
    if n := out[f"{name}_near_prompts_kept"]:
        log.warning("%d kept record(s) ask a near copy of a prompt of the %s set (half or more of their 8-word "
                    "sequences shared: counts.%s_near_prompts_kept): %s; %s", n, name, name, named(near & kept),
                    why("check them"))
    return out


def type_label(data) -> str:
    """``pandas.DataFrame``, ``datasets.Dataset``, ``builtins.list``: what rows in memory were."""
    return f"{type(data).__module__.split('.')[0]}.{type(data).__name__}"


def describe_model(lm) -> dict:
    """The manifest's ``model``: what was asked for, what was loaded, its fingerprint, dtype and device."""
    return {"name": lm.source, "path": lm.path, "fingerprint": lm.fingerprint, "dtype": lm.dtype, "device": lm.device}


def with_token_budget(opt: Options, lm) -> Options:
    """``opt`` with ``token_budget`` 0 (auto) resolved: batches sized to the device's free memory
    (4096 padded tokens on a CPU)."""
    if opt.token_budget:
        return opt
    from .scoring.logprobs import auto_token_budget

    opt = replace(opt, token_budget=auto_token_budget(lm))
    log.info("token budget %d padded tokens per batch", opt.token_budget)
    return opt


def _errors_line(errors: dict[int, str], n: int, data=None) -> str:
    """The first reason in full, then how many records fail and the first few of the others
    (without the file name, which the first names)."""
    items = list(errors.items())
    line = items[0][1]
    src = f"{data}:" if isinstance(data, (str, Path)) else None
    if src and not line.startswith(src):  # a record too long names the record; the file is known here
        line = f"{data}: {line}"

    def short(why: str) -> str:
        if src and why.startswith(src):  # "FILE:N: field ...": a read defect
            why = "line " + why[len(src):]
        return why if len(why) <= 120 else why[:117] + "..."

    if len(items) > 1:
        more = ", ".join(short(why) for _, why in items[1:4])
        line += f"; {len(items)} of {n} records cannot be used, also: {more}" + (
            f" and {len(items) - 4} more" if len(items) > 4 else "")
    return line


def versions() -> dict[str, str]:
    """Library versions for the manifest."""
    out = {"tunesift": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "numpy", "scipy", "pyarrow", "sentence-transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
