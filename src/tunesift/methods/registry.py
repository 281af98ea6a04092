"""One registry entry per method: what it is, what it needs, which options it reads, how it runs.

A :class:`Method` is the whole contract between a selection method and the rest of tunesift:
``pipeline.select`` reads the records, loads the model when ``needs_lm``, sets aside the records
the method cannot score, then calls ``run(job)`` and turns its :class:`Picked` into a
:class:`~tunesift.pipeline.Selection`. The CLI lists the names, the report reads ``hints``, the
bench reads ``needs_lm``. Adding a method is one entry here and its run function
(docs/architecture.md shows ``balanced-random`` as the worked example).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import OptionError

#: The DELIFT settings a method may select in (``--stage``).
STAGES = ("instruction", "task", "continual")
#: Options the pipeline reads for every method: which records, the method, how scoring runs and
#: where its scores are cached (harmless to a method that caches nothing).
COMMON_OPTIONS = ("method", "budget", "limit", "sample", "on_error", "cache_dir")
#: The Ray backend's options, in the entries of the methods that score on Ray workers (the
#: per-record scorers and DELIFT's kernels and embeddings); any other method warns that it
#: ignores them (docs/ray.md).
RAY_OPTIONS = ("backend", "ray_address", "ray_workers", "ray_gpus")

#: Options a method reads only under another option's setting: name -> (that setting as flags,
#: whether ``opt`` has it). Given otherwise, they change nothing and :meth:`Method.unread` says so.
READ_WHEN: dict[str, tuple[str, Callable[[object], bool]]] = {
    "label_fraction": ("--utility learned", lambda o: o.utility == "learned"),
    "labels": ("--utility learned", lambda o: o.utility == "learned"),
    "mi_eta": ("--stage task", lambda o: o.stage == "task"),
    "mi_form": ("--stage task", lambda o: o.stage == "task"),
    "nu": ("--stage continual", lambda o: o.stage == "continual"),
    "epsilon": ("--optimizer stochastic", lambda o: o.optimizer == "stochastic"),
    "ann": ("--knn above 0", lambda o: o.knn > 0),
    "local_budget": ("--partitions above 1", lambda o: o.partitions > 1),
}

log = logging.getLogger("tunesift")

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Job:
    """What a method's run function gets. ``records`` (n,) are the scorable records, ``k`` the
    budget, ``other`` the stage's second set (target or existing records) or None."""

    records: list
    k: int
    opt: object  # Options
    lm: object | None
    progress: Progress
    other: list | None = None


@dataclass
class Picked:
    """What a method returns: ``columns`` {name: (n,) array} of per-record scores, ``order`` the
    indices it prefers, best first (the first k are kept), ``extra`` manifest details
    (``timings``, ``objective``, ``counts``: added to the manifest's counts)."""

    columns: dict[str, np.ndarray]
    order: np.ndarray
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RankedHint:
    """For the report: a method that keeps the top ``budget`` records of one score column.

    The report needs nothing else for it: the histogram of the score kept vs dropped with the cut,
    the why line and the dropped list."""

    column: str  # the ranking score (a scores.parquet column)
    label: str  # its name in the why lines
    higher_first: bool  # direction; keep="hardest" flips it for methods with the "keep" option
    meaning: str  # what the score measures, one sentence for the plot caption
    columns: tuple[str, ...]  # every score column shown, the ranking one first
    options: tuple[str, ...] = ()  # the method's own options (after the model's)
    optional: tuple[str, ...] = ()  # further columns shown when scores.parquet has them
    words: tuple[str, str, str, str] = ("lowest", "lower", "highest", "higher")  # superlatives, comparatives
    log: bool = False  # plot on a log axis when the values span decades


@dataclass(frozen=True)
class Method:
    """A selection method.

    ``stages``: the stages it supports, or None when it ignores ``--stage``; ``second_set``:
    per stage, the second record set it reads (``target`` / ``existing``); ``options``: the
    options it reads (the report shows these, the rest folded away); ``columns``: the
    scores.parquet columns it always writes; ``block_kind``: the per-record scorer whose up-front
    check (``backends.blocks.record_errors``) applies; ``in_context``: it also scores each record
    after another one as an in-context example (DELIFT), so that check covers the example arm
    too; ``greedy``: its kept records are submodular
    picks; ``ranked``: for methods that keep the top of one score column, how the report plots it;
    ``revision``: raised when the method picks differently from the same inputs and options (a
    fix of what it selects, not of its speed or I/O), so that a bench never adds cells of a new
    revision to a method's earlier cells (the history: docs/methods.md#revisions)."""

    name: str
    summary: str
    run: Callable[[Job], Picked]
    needs_lm: bool = False
    stages: tuple[str, ...] | None = None
    second_set: dict[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ("method", "budget")
    columns: tuple[str, ...] = ()
    block_kind: str = "loss"
    in_context: bool = False
    greedy: bool = False
    ranked: RankedHint | None = None
    required: tuple[str, ...] = ()  # options that must be given (no default serves)
    embeds: bool = False  # caches sentence embeddings without a language model (delift-se)
    revision: int = 1

    def uses_cache(self) -> bool:
        """Whether a run writes the score cache (``--cache-dir``), which is then probe-written
        before any work (:func:`tunesift.store.check_cache_dir`)."""
        return self.needs_lm or self.embeds

    def check(self, opt) -> None:
        """Checks across options that this method's entry decides; raises OptionError."""
        if self.stages is not None and opt.stage not in self.stages:
            if self.stages == ("task",):
                raise OptionError(f"{self.name} matches gradients to a target set: use --stage task --target FILE")
            raise OptionError(f"{self.name} does not support --stage {opt.stage}: use {', '.join(self.stages)}")
        if opt.partitions > 1 and (self.name != "delift-se" or opt.stage != "instruction"):
            raise OptionError("--partitions (GreeDi) works with --method delift-se --stage instruction")
        for name in self.required:
            if getattr(opt, name) in (None, ""):
                raise OptionError(f"{self.name} needs --{name.replace('_', '-')} (see docs/methods.md)")
        if opt.by is not None and "by" not in self.options:
            raise OptionError("--by is read only by --method balanced-random")
        if opt.within is not None and "within" not in self.options:
            raise OptionError("--within is read only by --method random")

    def unread(self, opt) -> list[str]:
        """The options of ``opt`` (an :class:`~tunesift.methods.options.Options`) set away from their
        defaults that this method never reads, in declaration order: a user who gives ``--eta`` to
        ``random`` should hear that it changed nothing. ``seed`` counts as read when ``--sample``
        draws a seeded subsample."""
        from dataclasses import fields

        read = self.reads(opt)
        return [f.name for f in fields(opt) if f.name not in read and getattr(opt, f.name) != f.default]

    def reads(self, opt) -> set[str]:
        """The options this method reads under ``opt``'s settings (anything with the options'
        attributes): its own, the pipeline's (:data:`COMMON_OPTIONS`), ``seed`` when ``--sample``
        draws a subsample, less those :data:`READ_WHEN` says only another setting reads."""
        read = {*self.options, *COMMON_OPTIONS, *(("seed",) if opt.sample else ())}
        return read - {name for name, (_, when) in READ_WHEN.items() if not when(opt)}

    def warn_unread(self, opt) -> None:
        """Log one warning naming the options :meth:`unread` finds (as flags), if any; an option
        this method reads under another setting says which."""
        names = self.unread(opt)
        if names:
            flags = ", ".join("--" + n.replace("_", "-")
                              + (f" (only with {READ_WHEN[n][0]})" if n in READ_WHEN and n in self.options else "")
                              for n in names)
            log.warning("%s does not read %s: %s ignored", self.name, flags, "it is" if len(names) == 1 else "they are")

    def uses(self, stage: str) -> str | None:
        """The second set (``target`` / ``existing``) this method reads at ``stage``, or None."""
        return self.second_set.get(stage) if self.stages is not None else None


def spread_column(arr, rows: np.ndarray, n: int) -> np.ndarray:
    """A column of some records (``arr`` (len(rows),), at positions ``rows``) spread over all
    ``n``; the others get a value that reads as missing: NaN for numbers, -1 for integers (an
    unsigned column becomes int64), False for booleans, None for objects and text."""
    arr = np.asarray(arr)
    kind = arr.dtype.kind
    if kind in "US":  # numpy text: "nan" would read as a value
        arr, kind = arr.astype(object), "O"
    elif kind == "u":  # 0 would read as a value; past int64, floats (NaN for the missing)
        big = arr.size and int(arr.max()) > np.iinfo(np.int64).max
        arr, kind = (arr.astype(np.float64), "f") if big else (arr.astype(np.int64), "i")
    fill = {"b": False, "i": -1, "O": None, "M": np.datetime64("NaT"), "m": np.timedelta64("NaT")}.get(kind, np.nan)
    full = np.full(n, fill, dtype=arr.dtype if kind in "biOMm" else np.result_type(arr.dtype, np.float64))
    full[rows] = arr
    return full


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method '{method.name}' registered twice")
    REGISTRY[method.name] = method
    return method
