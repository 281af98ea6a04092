"""Select -> fine-tune -> evaluate, for every method, budget and seed; then tables and plots.

A *cell* is one (method, budget, seed): select ``budget`` records of the training pool with the
method (seeded), fine-tune a fresh copy of the training model on them (same seed), evaluate on the
test set. ``full`` trains on the whole pool and ``base`` evaluates the model without fine-tuning
(one cell each per seed / once). Each finished cell is written to ``OUT/cells/<cell>.json`` at
once, so a rerun skips it (resume); its greedy generations go beside it to
``OUT/generations/<cell>.jsonl`` (a cell stays a few kB, small enough to keep under version
control, while a cell's 300 generations run to hundreds of kB); the settings are pinned in ``OUT/bench.json`` and a rerun
with other settings is refused rather than mixing results. Methods, budgets and seeds may be added
to a bench later; each method's own options (``method_options``) are pinned per method, so adding a
variant leaves the cells already run valid, and rerunning a method with other options is refused.

Outputs, written from the cells by :mod:`tunesift.bench_tables`: ``results.md`` / ``results.csv`` /
``results.json`` (mean and sample std over seeds per method and budget; the paired difference from
``random`` with its standard error and a mark where it exceeds two; the selection's and the
fine-tuning's wall time and their ratio) and ``results.png`` (bars with error bars), plus
``curve.png`` (data efficiency: each metric against the records picked, one line per method with a
band for the seed spread) when several budgets are given.

Beyond the plain grid: ``method_options`` gives a bench method its own selection options, or makes
it a named variant of a registry method (``{"delift-learned": {"method": "delift", "utility":
"learned"}}``); ``also_test`` evaluates every cell on further held-out sets (metrics named
``<metric>@<name>``); ``continual="sequential"`` fine-tunes on the existing data first (once per
seed, saved under ``OUT/stage1/``) and then continues on each method's pick.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .bench_tables import aggregate, has_stage1, write_results
from .errors import OptionError, TunesiftError
from .finetune import TrainConfig, evaluation_template
from .methods.catalogue import get_method, method_names
from .methods.options import parse_budget

log = logging.getLogger("tunesift")

BENCH_METHODS = ("base", *method_names(), "full")
NO_SELECTION = ("base", "full")  # the arms that select nothing: the untrained model, the whole pool
DEFAULT_METHODS = ("base", "random", "delift-se", "delift", "donod", "donod+delift", "full")
# --quick: a smoke profile that finishes in minutes on a laptop CPU
QUICK = {"train_limit": 120, "test_limit": 40, "generate_limit": 16, "max_new_tokens": 32, "epochs": 1}


@dataclass
class BenchConfig:
    """Everything that defines a bench's results (pinned in OUT/bench.json)."""

    train: str
    test: str
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    budgets: list[float | int] = field(default_factory=lambda: [0.3])
    seeds: int = 3
    stage: str = "instruction"
    target: str | None = None
    existing: str | None = None
    train_with_existing: bool = True  # continual stage: fine-tune on existing + selection
    select_model: str = "default"
    train_model: str = "default"
    select_options: dict = field(default_factory=dict)  # extra pipeline Options (knn, distance, ...)
    training: TrainConfig = field(default_factory=TrainConfig)
    metrics: list[str] | None = None
    max_new_tokens: int = 128
    generate_limit: int | None = 100
    train_limit: int | None = None
    test_limit: int | None = None
    device: str = "auto"
    # per bench method: its own selection options; {"method": m, ...} makes the name a variant of m
    method_options: dict = field(default_factory=dict)
    also_test: dict = field(default_factory=dict)  # name -> path: further held-out sets ("<metric>@<name>")
    continual: str = "joint"  # continual stage: joint (existing + pick at once) | sequential (existing, then pick)
    # name -> {"max_new_tokens": .., "generate_limit": ..}: a further set's own generation settings
    # (a GSM8K set beside an Alpaca test set needs longer answers); the test set's otherwise
    also_generation: dict = field(default_factory=dict)
    # sequential continual stage: the methods that score with the select model score with the seed's
    # stage-1 model instead, the model their pick goes on to train (the paper's continual setting)
    select_with_stage1: bool = False


# fields added after benches were run: left out of the settings key while at their default, so those
# benches still resume
LATER_FIELDS = {"method_options": {}, "also_test": {}, "continual": "joint", "also_generation": {},
                "select_with_stage1": False}
CONTINUAL_MODES = ("joint", "sequential")


def registry_name(cfg: BenchConfig, name: str) -> str:
    """The registry method behind a bench method name (itself, or a variant's ``method``)."""
    return cfg.method_options.get(name, {}).get("method", name)


def selection_stage(cfg: BenchConfig, entry) -> str:
    """The stage a method selects in: the bench's stage where the method supports it; the
    instruction stage for a method that ignores stages, or that has no form for the bench's stage
    but an instruction-stage one (``rds`` in a continual bench: its pool-only variant)."""
    if entry.stages is None:
        return "instruction"
    if cfg.stage in entry.stages:
        return cfg.stage
    if "instruction" in entry.stages:
        return "instruction"
    raise OptionError(f"{entry.name} does not select in the {cfg.stage} stage: it runs in the "
                      f"{', '.join(entry.stages)} stage; drop it from --methods")


def selection_options(cfg: BenchConfig, name: str) -> dict:
    """Every option of the selection of bench method ``name`` (less the budget and seed of a cell)."""
    entry = get_method(registry_name(cfg, name))
    own = {k: v for k, v in cfg.method_options.get(name, {}).items() if k != "method"}
    return {**cfg.select_options, "model": cfg.select_model, "device": cfg.device, **own,
            "method": entry.name, "stage": selection_stage(cfg, entry)}


def _twice(values: list) -> str | None:
    """The first value given more than once (as text), or None."""
    seen = set()
    for v in map(str, values):
        if v in seen:
            return v
        seen.add(v)
    return None


def _check(cfg: BenchConfig) -> None:
    """Every setting of the grid, before any file is written or model loaded (one-line OptionError)."""
    from .methods.options import Options
    from .methods.registry import STAGES

    names = set(BENCH_METHODS) | {n for n, o in cfg.method_options.items() if "method" in o}
    bad = [m for m in cfg.methods if m not in names]
    if bad or not cfg.methods:
        raise OptionError(f"unknown bench method '{(bad or [''])[0]}': use any of {', '.join(BENCH_METHODS)}")
    if cfg.stage not in STAGES:
        raise OptionError(f"unknown stage '{cfg.stage}': use {', '.join(STAGES)}")
    budgets = [parse_budget(b) for b in cfg.budgets]
    if not budgets and any(m not in NO_SELECTION for m in cfg.methods):
        raise OptionError("no budget given: name at least one, e.g. --budget 0.1,0.3")
    # the same cell file would serve twice: compare names as cell files spell them
    for what, values, as_file in (("method", cfg.methods, lambda m: cell_name(m, 0, 0)),
                                  ("budget", budgets, str)):
        files = [as_file(v) for v in values]
        if (dup := _twice(files)) is not None:
            first, second = [v for v, f in zip(values, files) if f == dup][:2]
            same = f"{what} {first} is given twice" if str(first) == str(second) else \
                f"{what}s {first} and {second} would share one cell file"
            raise OptionError(f"{same}: name each {what} once")
    for what, v in (("train-limit", cfg.train_limit), ("test-limit", cfg.test_limit)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise OptionError(f"{what} must be a whole number of at least 1, got {v!r}")
    for name in cfg.methods:
        if name not in NO_SELECTION:  # every option of every selection, before any cell runs
            Options(**selection_options(cfg, name)).validate()
    if cfg.continual not in CONTINUAL_MODES:
        raise OptionError(f"unknown continual mode '{cfg.continual}': use joint or sequential")
    if cfg.seeds < 1:
        raise OptionError(f"seeds must be at least 1, got {cfg.seeds}")
    if cfg.select_with_stage1 and not has_stage1(cfg):
        raise OptionError("select_with_stage1 needs a sequential continual bench (stage continual, "
                          "continual sequential): only it has a stage-1 model")
    if cfg.select_with_stage1 and cfg.select_model != cfg.train_model:
        raise OptionError(f"select_with_stage1 scores with the stage-1 model, the train model after the existing "
                          f"data: select_model must be the train model ({cfg.train_model}), got {cfg.select_model}")
    for name, gen in cfg.also_generation.items():
        if name not in cfg.also_test:
            raise OptionError(f"also_generation names '{name}', which is not one of also_test's sets")
        unknown = sorted(set(gen) - {"max_new_tokens", "generate_limit"})
        if unknown:
            raise OptionError(f"also_generation['{name}']: unknown setting '{unknown[0]}': use max_new_tokens, "
                              "generate_limit")
        # the values alone here (a likelihood metric never refuses generate_limit 0): which metrics
        # the set gets depends on its records, so run_bench checks them again once they are read
        check_generation(cfg, name, ["loss"])
    check_generation(cfg, None, cfg.metrics)  # a further set's once its records are read
    from .models import resolve_device

    resolve_device(cfg.device)  # unknown, or cuda without a GPU: before bench.json pins it
    if cfg.stage == "task" and not cfg.target:
        raise OptionError("bench --stage task needs --target")
    if cfg.stage == "continual" and not cfg.existing:
        raise OptionError("bench --stage continual needs --existing")
    cfg.training.validate()


def generation(cfg: BenchConfig, name: str | None) -> dict:
    """``max_new_tokens`` and ``generate_limit`` of a held-out set: the test set's (``name`` None),
    or further set ``name``'s own (``also_generation``) over them."""
    own = cfg.also_generation.get(name, {}) if name is not None else {}
    return {"max_new_tokens": cfg.max_new_tokens, "generate_limit": cfg.generate_limit, **own}


def check_generation(cfg: BenchConfig, name: str | None, metrics: list[str] | None) -> None:
    """:func:`tunesift.evaluate.check_settings` for one held-out set (None: the test set) with the
    metrics it is evaluated on (a further set's: :func:`also_metrics`), its message prefixed with
    the set's name."""
    from .evaluate import check_settings

    try:
        check_settings(metrics, template=cfg.training.template, max_length=cfg.training.max_length,
                       **generation(cfg, name))
    except OptionError as exc:
        raise OptionError(f"{name or 'the test set'}: {exc}") from None


def cell_name(method: str, budget, seed: int) -> str:
    b = "all" if method in NO_SELECTION else str(budget)
    return f"{method}__b{b}__s{seed}".replace("+", "-plus-")


def grid_cells(cfg: BenchConfig) -> list[tuple[str, object, int]]:
    """(method, budget, seed) of every cell the bench holds. ``base`` is evaluated once (seed 0): the
    untouched model does not depend on the seed; in a sequential continual bench it is the seed's
    stage-1 model, trained with that seed, so there it is one cell per seed."""
    cells = []
    for method in cfg.methods:
        if method == "base" and not has_stage1(cfg):
            cells.append((method, None, 0))  # deterministic: once
            continue
        budgets = [None] if method in NO_SELECTION else cfg.budgets
        for b in budgets:
            for s in range(cfg.seeds):
                cells.append((method, b, s))
    return cells


def _config_key(cfg: BenchConfig, digests: dict, *, legacy: bool = False) -> str:
    """The settings key pinned in bench.json. ``legacy``: as benches pinned it before method options
    were pinned per method (options in the key when any were given), so those benches still resume."""
    d = asdict(cfg)
    # adding methods/budgets/seeds extends a bench; a method's own options are pinned per method
    # (pin_method_options), so adding a variant does not change the key of the methods already run
    for name in ("methods", "budgets", "seeds") if legacy else ("methods", "budgets", "seeds", "method_options"):
        d.pop(name)
    for name, default in LATER_FIELDS.items():
        if name in d and d[name] == default:
            d.pop(name)
    # checkpointing trades memory for time and gives the same gradients bit for bit (dropout's RNG
    # is replayed; tests/test_finetune.py), so a bench resumes with it on or off
    d["training"]["checkpointing"] = True
    d["inputs"] = digests
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pin_method_options(pinned: dict | None, cfg: BenchConfig, out: Path) -> dict[str, dict]:
    """Each method's own options (``cfg.method_options``, ``{}`` for none) over every method run in
    ``out``: those ``pinned`` (the folder's bench.json) records, extended with this run's methods.

    A method that ran here before with other options is refused: its cells would mix two settings
    under one name. ``cache_dir`` is not compared: where the scores are kept changes no result (a
    method given its own cache later keeps its cells). A bench.json written before this map existed
    records only its last run's methods.

    Each selecting method's entry also pins its registry ``revision``. A method whose cells here
    were selected by another revision (the pinned one; without one, the cells' own ``ran_with``
    revision, 1 for cells made before revisions were recorded) is refused: a new revision picks
    differently and the cells would mix two selections. Without cells of it here, the new
    revision is pinned.
    """
    def norm(opts: dict) -> dict:  # as JSON reads it back (tuples become lists)
        return json.loads(json.dumps(opts, sort_keys=True, default=str))

    def setting(opts: dict) -> dict:
        return {k: v for k, v in opts.items() if k not in ("cache_dir", "revision")}

    if pinned is None:
        have = {}
    elif "method_options" in pinned:
        have = pinned["method_options"]
    else:
        c = pinned["config"]
        have = {m: c.get("method_options", {}).get(m, {}) for m in c["methods"]}
    mine = {m: norm(cfg.method_options.get(m, {})) for m in cfg.methods}
    for m, opts in mine.items():
        if m in have and setting(have[m]) != setting(opts):
            raise OptionError(f"{out}: method {m!r} ran here with options {have[m]}, now {opts}; use another --out")
        if m in NO_SELECTION:
            continue
        opts["revision"] = now = get_method(registry_name(cfg, m)).revision
        files = cell_name(m, 0, 0).split("__")[0] + "__*.json"  # donod+delift: donod-plus-delift__...
        cells = sorted((out / "cells").glob(files))
        if not cells:
            continue
        # the pinned revision, else what the cells recorded (none before revisions existed: 1)
        was = ({have[m]["revision"]} if "revision" in have.get(m, {}) else
               {json.loads(c.read_text(encoding="utf-8")).get("ran_with", {}).get("revision", 1) for c in cells})
        if was != {now}:
            raise OptionError(f"{out}: the cells of {m!r} here were selected by its revision "
                              f"{', '.join(map(str, sorted(was)))}, this is revision {now}, which picks differently "
                              f"(docs/methods.md#revisions): delete {out / 'cells'}/{files} to rerun them, or use "
                              "another --out")
    return {**have, **mine}


def pin_models(pinned: dict | None, names: set[str], out: Path) -> dict[str, str | None]:
    """``{model: fingerprint}`` of the models this run loads (``names``: it trains or selects
    with them; :func:`~tunesift.models.source_fingerprint`), over those ``pinned`` (the folder's
    bench.json) recorded: the key pins a model by name only, so a folder re-exported or a model package
    upgraded between runs would add cells made on other weights. A changed fingerprint is a
    one-line OptionError; a bench pinned before models were (no ``models``) pins them now."""
    from .models import source_fingerprint

    have = dict((pinned or {}).get("models") or {})
    for name in sorted(names):
        now = source_fingerprint(name)
        was = have.get(name)
        if was is not None and now is not None and was != now:
            raise OptionError(f"{out}: model {name!r} has other weights than when this bench's cells ran "
                              f"(fingerprint {was}, now {now}); use another --out, or restore the model")
        have[name] = now if now is not None else was
    return have


BENCH_FILE = "bench.json"


def open_bench_folder(out_dir: str | Path, inputs: list[str | None]) -> dict | None:
    """Check the bench folder before anything is written; return its pinned ``bench.json`` (None
    for a new or empty folder).

    A bench adds cells to its folder rather than replacing it, so the folder must be new, empty,
    or an earlier bench's (it holds ``bench.json``): never a folder of other files (a data folder,
    the current folder), never one holding an input or inside an input folder, and its
    ``bench.json`` must be one a bench wrote. Any of these is a one-line OptionError."""
    import os

    from .outputs import check_apart, existing_parent
    from .store import probe_write

    if not str(out_dir).strip():
        raise OptionError("--out is empty: name the bench folder")
    try:
        out = Path(os.path.realpath(out_dir))
        if out.exists() and not out.is_dir():
            raise OptionError(f"--out '{out_dir}' exists and is not a folder")
        check_apart(out, out_dir, inputs, "where the bench writes its results")
        # hidden files (.gitkeep, .DS_Store) do not make a folder someone else's
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if names and BENCH_FILE not in names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise OptionError(f"--out '{out_dir}' holds files that are not a bench's ({shown}; no {BENCH_FILE}): "
                              "name a new or empty folder, or an earlier bench's folder to resume it")
        probe_write(existing_parent(out))
    except OSError as exc:
        raise OptionError(f"--out '{out_dir}': {exc.strerror or exc}") from None
    if not names:
        return None
    pinned = out / BENCH_FILE
    try:
        old = json.loads(pinned.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OptionError(f"{Path(out_dir) / BENCH_FILE}: cannot read the bench's settings "
                          f"({getattr(exc, 'strerror', None) or exc}); restore it or use another --out") from None
    if not (isinstance(old, dict) and isinstance(old.get("key"), str) and isinstance(old.get("config"), dict)
            and isinstance(old.get("method_options", {}), dict)):
        raise OptionError(f"{Path(out_dir) / BENCH_FILE}: not a bench's settings (no key and config); "
                          "restore it or use another --out")
    return old


def _limit(records, n: int | None):
    return records if n is None else records[:n]


def release_memory() -> None:
    """Free what the last cell left unreachable: collect reference cycles (torch modules and peft
    wrappers hold some, so reference counting alone does not free a model), then hand the
    heap's free pages back to the OS (:func:`tunesift.heap.trim_heap`)."""
    import gc

    from .heap import trim_heap

    gc.collect()
    trim_heap()


def selection_model(cfg: BenchConfig, name: str) -> str | None:
    """The model bench method ``name`` scores with (its own ``model`` option, else the bench's
    select model), or None for a method that loads none: one answer for the up-front check and the
    cell that loads it."""
    if name in NO_SELECTION or not get_method(registry_name(cfg, name)).needs_lm:
        return None
    return selection_options(cfg, name)["model"]


def stage1_selects(cfg: BenchConfig, name: str) -> bool:
    """Whether bench method ``name`` scores with its seed's stage-1 model (``select_with_stage1``):
    a method that scores with the bench's select model; one with its own ``model`` option keeps it."""
    return (cfg.select_with_stage1 and selection_model(cfg, name) is not None
            and "model" not in cfg.method_options.get(name, {}))


def select_for_cell(cfg: BenchConfig, method: str, budget, seed: int, data: dict,
                    progress: Callable[[str, int], Callable[[int], None]] | None,
                    out: Path | None = None) -> tuple[list, float, dict]:
    """(chosen records in pool order, selection wall seconds, score cache counts) of one cell.

    The counts (:func:`~tunesift.store.counting_cache`), ``{"cached": n, "written": m}``, are the
    score-cache blocks the selection read that an earlier run had computed and the blocks it
    computed and stored: ``cached == 0`` is a cold selection (its wall time is the whole cost);
    ``cached > 0`` means part or all of the work was done before, so the wall time is less.

    A method that scores with a model loads the selection model here and drops it on return, so
    it is never alive next to the training model (reloading it from the converted cache takes
    well under a second; its scores come from the score cache on later seeds). With
    ``select_with_stage1`` it is the seed's stage-1 model (:func:`stage_one` trains it first where
    no earlier cell has, which needs ``out``); its fingerprint covers the adapter, so each seed's
    scores are its own in the cache."""
    from .finetune import load_trained
    from .models import load_lm
    from .pipeline import select

    opts = selection_options(cfg, method)
    entry = get_method(opts["method"])
    model = selection_model(cfg, method)
    dtype = opts.get("dtype", "auto")
    if stage1_selects(cfg, method):  # implies a model
        if out is None:
            raise TunesiftError("selecting with the stage-1 model needs the bench folder (out)")
        lm = load_trained(stage_one(cfg, seed, data, out, progress=progress), device=opts["device"], dtype=dtype)
    else:
        lm = load_lm(model, device=opts["device"], dtype=dtype) if model else None
    side = {}
    uses = entry.second_set.get(opts["stage"]) if entry.stages is not None else None
    if uses in ("target", "existing"):
        side[uses] = data[uses]
    from .store import counting_cache

    with counting_cache() as counts:
        sel = select(data["train"], budget=budget, seed=seed, progress=progress, lm=lm, **side, **opts)
    return [r for r, k in zip(sel.records, sel.kept) if k], round(sel.timings.get("score_select_s", 0.0), 3), counts


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def stage1_digest(folder: Path) -> str:
    """Which stage-1 model a cell started from: sha256 (16 hex digits) over the weight files its
    ``tunesift_train.json`` lists (names and SHA-256 of the ``*.safetensors`` / ``*.bin``), not
    over that metadata file, whose wall time and paths differ on every retrain of the same weights
    (stage 1 is not kept under version control, so a fresh checkout trains it again), nor over
    the adapter's config and model card: PEFT writes ``target_modules`` from a set, in an order
    that changes from process to process (session 54: a retrain with other digests under the
    old rule evaluated bit for bit as the first)."""
    from .finetune import TRAIN_META

    files = json.loads((folder / TRAIN_META).read_text(encoding="utf-8"))["files"]
    weights = sorted((k, v) for k, v in files.items() if k.endswith(WEIGHT_SUFFIXES))
    return hashlib.sha256(json.dumps(weights or sorted(files.items())).encode()).hexdigest()[:16]


def stage1_path(out: Path, seed: int) -> Path:
    """Where a sequential continual bench keeps seed ``seed``'s stage-1 model: ``OUT/stage1/s<seed>``."""
    return out / "stage1" / f"s{seed}"


def stage1_done(out: Path, seed: int) -> bool:
    """Whether seed ``seed``'s stage-1 model is saved whole (its ``tunesift_train.json`` is written last)."""
    from .finetune import TRAIN_META

    return (stage1_path(out, seed) / TRAIN_META).exists()


def stage_one(cfg: BenchConfig, seed: int, data: dict, out: Path, *,
              progress: Callable[[str, int], Callable[[int], None]] | None = None) -> Path:
    """Continual stage, sequential: the training model fine-tuned on the existing data with
    ``seed``, saved once under ``OUT/stage1/s<seed>/`` (adapter or model, ``tunesift_train.json``)
    and reused by every cell of that seed; a rerun finds it there (resume)."""
    from .finetune import finetune, save
    from .models import load_lm

    path = stage1_path(out, seed)
    if stage1_done(out, seed):
        return path
    lm = load_lm(cfg.train_model, device=cfg.device)
    bar = progress(f"stage 1: existing data, seed {seed}", len(data["existing"]) * cfg.training.epochs) \
        if progress else None
    res = finetune(lm, data["existing"], replace(cfg.training, seed=seed), progress=bar)
    save(res, lm, path, {"stage1": {"existing": len(data["existing"]), "seed": seed}})
    del res, lm
    release_memory()
    return path


def _training_model(cfg: BenchConfig, seed: int, data: dict, out: Path | None, progress) -> tuple[object, float]:
    """(the model a cell fine-tunes, seconds its stage 1 took): the train model, or in a sequential
    continual bench the model after the existing data (:func:`stage_one`)."""
    from .models import load_lm

    if not has_stage1(cfg):
        return load_lm(cfg.train_model, device=cfg.device), 0.0
    from .finetune import TRAIN_META, load_trained

    if out is None:
        raise TunesiftError("a sequential continual bench cell needs the bench folder (out)")
    path = stage_one(cfg, seed, data, out, progress=progress)
    meta = json.loads((path / TRAIN_META).read_text(encoding="utf-8"))
    return load_trained(path, device=cfg.device), float(meta.get("seconds", 0.0))


def also_metrics(metrics: list[str] | None, records) -> list[str] | None:
    """The metrics of a further held-out set: the bench's (None: each set's defaults), less
    ``exact_match`` where the set's references are not math answers."""
    from .evaluate import is_math

    if metrics is None or "exact_match" not in metrics or is_math([r.response for r in records]):
        return metrics
    return [m for m in metrics if m != "exact_match"] or None


def code_fingerprint() -> str:
    """The first 16 hex digits of the SHA-256 of tunesift's own source files (names and bytes):
    which code made a cell, where the version number does not change between commits
    (:func:`tunesift.backends.versions.source_digest`, which Ray workers are checked against)."""
    from .backends.versions import source_digest

    return source_digest()


def item_bits(values) -> str:
    """Pass/fail results (n,) in test-set order as a string of ``"0"``/``"1"``; NaN (a question
    beyond ``generate_limit``, never generated: those are the last) ends the string."""
    out = []
    for v in values:
        if v != v:  # NaN
            break
        out.append("1" if v else "0")
    return "".join(out)


def item_results(ev) -> dict:
    """What a cell keeps per test question (``cell["items"]``) of an
    :class:`~tunesift.evaluate.Evaluation`, for the question-by-question tests of
    :func:`tunesift.bench_stats.versus_random_items`, where the evaluation reports the metric:
    ``exact_match`` as :func:`item_bits` (300 questions in 300 characters), ``loss`` (n,) rounded to
    6 significant digits with its weights, the response tokens ``n_tokens`` (n,), beside it."""
    per_record, out = ev.per_record, {}
    if "exact_match" in ev.metrics and "exact_match" in per_record:
        out["exact_match"] = item_bits(per_record["exact_match"])
    if "loss" in ev.metrics and "loss" in per_record and "n_tokens" in per_record:  # not for perplexity alone
        out["loss"] = [float(f"{v:.6g}") for v in per_record["loss"]]
        out["n_tokens"] = [int(v) for v in per_record["n_tokens"]]
    return out


def backfill_items(out: str | Path, test: str | Path) -> tuple[list[str], list[str]]:
    """Add ``items["exact_match"]`` to the finished cells of the bench folder ``out`` made before
    cells kept it, recomputed from each cell's generations (``OUT/generations/<cell>.jsonl``,
    git-ignored: only on the machine that ran the cell) against ``test``'s references. Refused
    (:class:`~tunesift.errors.TunesiftError`, nothing written) when ``test`` is not the test set
    bench.json pins, when a cell's generations are not the test set's first questions in order,
    or when the recomputed share differs from the cell's ``exact_match`` by more than 1e-9: the
    cell would then not be the one its bits describe. Returns (cells updated, cells without a
    generations file); cells that already hold their items are left as they are."""
    from .evaluate import exact_match
    from .io.files import input_checksum
    from .io.records import read_records
    from .store import write_text

    out = Path(out)
    pinned = json.loads((out / BENCH_FILE).read_text(encoding="utf-8")).get("inputs", {}).get("test")
    if pinned != input_checksum(test):
        raise TunesiftError(f"{test}: not the test set {out / BENCH_FILE} pins (its digest differs)")
    refs = read_records(test)
    done, missing, todo = [], [], {}
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        if "exact_match" not in cell["metrics"] or "exact_match" in cell.get("items", {}):
            continue
        gen = out / "generations" / f"{path.stem}.jsonl"
        if not gen.exists():
            missing.append(path.stem)
            continue
        rows = [json.loads(x) for x in gen.read_text(encoding="utf-8").splitlines() if x.strip()]
        if [r["id"] for r in rows] != [r.id for r in refs[:len(rows)]]:
            raise TunesiftError(f"{gen}: its ids are not the first {len(rows)} of {test} in order")
        flags = exact_match([r["prediction"] for r in rows], [r.response for r in refs[:len(rows)]])
        if not rows or abs(flags.mean() - cell["metrics"]["exact_match"]) > 1e-9:
            raise TunesiftError(f"{gen}: exact match recomputed {flags.mean() if rows else 'nothing'}, the cell "
                                f"says {cell['metrics']['exact_match']}")
        todo[path] = {**cell, "items": {**cell.get("items", {}), "exact_match": item_bits(flags)}}
    for path, cell in todo.items():  # every cell checked first: a refusal writes nothing
        write_text(path, json.dumps(cell, indent=1) + "\n")
        done.append(path.stem)
    return done, missing


def run_cell(cfg: BenchConfig, method: str, budget, seed: int, data: dict, *,
             progress: Callable[[str, int], Callable[[int], None]] | None = None, out: Path | None = None) -> dict:
    """Run one cell and return its record (what ``OUT/cells/<cell>.json`` holds).

    ``data``: the records under ``train``, ``test``, ``target`` and ``existing`` (None when not
    given) and ``also`` ({name: records} of the further held-out sets). Memory: at most one model
    is alive at a time. The selection model lives only inside the selection; the training model is
    loaded after it, and once LoRA is merged the training result (peft wrapper, optimizer state,
    LoRA weights and their gradients) is dropped before the evaluation. Nothing of the cell's
    models is reachable after the return (call :func:`release_memory` to free it before the next
    cell loads its models).

    Continual stage: ``joint`` trains on existing + selection (``train_with_existing``);
    ``sequential`` starts from the seed's stage-1 model (:func:`stage_one`, which needs ``out``)
    and trains on the selection only; ``base`` is then the stage-1 model itself."""
    from .evaluate import evaluate
    from .finetune import finetune, merged, to_float32

    t0 = time.perf_counter()
    info: dict = {"method": method, "budget": budget, "seed": seed}
    if method in NO_SELECTION:
        chosen = data["train"] if method == "full" else []
        info["select_s"] = 0.0
    else:
        chosen, info["select_s"], info["score_cache"] = select_for_cell(cfg, method, budget, seed, data, progress,
                                                                          out)
        if stage1_selects(cfg, method):
            info["selected_with"] = "stage1"  # the seed's stage-1 model (stage1_digest below) scored the pool
    existing = data["existing"]
    joint = cfg.stage == "continual" and cfg.continual == "joint" and cfg.train_with_existing
    fit_on = chosen + (existing if joint and method != "base" else [])
    info["n_selected"] = len(chosen)
    info["n_train"] = len(fit_on)
    info["selected_ids"] = [r.id for r in chosen]
    lm, stage1_s = _training_model(cfg, seed, data, out, progress)
    if stage1_s:
        info["stage1_s"] = round(stage1_s, 3)
        info["stage1_digest"] = stage1_digest(stage1_path(out, seed))  # the pairing needs one per seed
    info["checkpointing"] = cfg.training.checkpointing  # same results, ~1.5x the training time
    t1 = time.perf_counter()
    if fit_on:
        bar = progress(f"fine-tuning {cell_name(method, budget, seed)}", len(fit_on) * cfg.training.epochs) \
            if progress else None
        res = finetune(lm, fit_on, replace(cfg.training, seed=seed), progress=bar)
        info["train_losses"] = res.losses
        lm = merged(lm, res)
        del res  # optimizer state, peft wrapper and LoRA gradients: not needed to evaluate
    info["train_s"] = round(time.perf_counter() - t1, 3)
    to_float32(lm)  # every cell evaluated at one precision: trained models are merged in float32, base too
    t2 = time.perf_counter()
    kw = {"metrics": cfg.metrics, "template": cfg.training.template, "max_length": cfg.training.max_length,
          "max_new_tokens": cfg.max_new_tokens, "generate_limit": cfg.generate_limit, "progress": progress}
    ev = evaluate(lm, data["test"], **kw)
    info["metrics"] = dict(ev.metrics)
    info["eval_counts"] = dict(ev.counts)  # prompts cut to max_length, generations cut off
    info["generations"] = [{"id": r.id, "prediction": g} for r, g in zip(data["test"], ev.generations) if g is not None]
    items = item_results(ev)
    for name, records in (data.get("also") or {}).items():  # further held-out sets: "<metric>@<name>"
        more = evaluate(lm, records, **{**kw, **generation(cfg, name), "metrics": also_metrics(cfg.metrics, records)})
        info["metrics"].update({f"{m}@{name}": v for m, v in more.metrics.items()})
        info["eval_counts"].update({f"{k}@{name}": v for k, v in more.counts.items()})
        items.update({f"{m}@{name}": v for m, v in item_results(more).items()})
    if items:
        info["items"] = items
    info["eval_s"] = round(time.perf_counter() - t2, 3)
    info["total_s"] = round(time.perf_counter() - t0, 3)
    return info


def check_held_out_fit(cfg: BenchConfig, sets: list[tuple[str, list]]) -> None:
    """A one-line TunesiftError naming the file, unless every held-out record's response fits
    ``training.max_length`` in the train model's rendering (what :func:`evaluate` encodes): checked
    with the tokenizer alone, before bench.json is written, so such a record never stops a cell
    after its fine-tuning. ``sets``: (path, records) of the test set and each further set."""
    from .models import load_tokenizer
    from .render import make_renderer

    template = evaluation_template(cfg.train_model, cfg.training.template)  # as the loaded train model renders
    renderer = make_renderer(load_tokenizer(cfg.train_model), template, cfg.training.max_length)
    for path, records in sets:
        for r in records:
            try:
                renderer.encode(r)
            except TunesiftError as exc:
                raise TunesiftError(f"{path}: {exc}") from None


def run_bench(cfg: BenchConfig, out: str | Path, *,
              progress: Callable[[str, int], Callable[[int], None]] | None = None) -> list[dict]:
    """Run every missing cell, then write the tables and plots. Returns the aggregated rows."""
    from .io.files import input_checksum
    from .io.records import read_records
    from .models import check_model
    from .store import write_text

    _check(cfg)
    old = open_bench_folder(out, [cfg.train, cfg.test, cfg.target, cfg.existing, *cfg.also_test.values()])
    out = Path(out)
    train = _limit(read_records(cfg.train), cfg.train_limit)
    test = _limit(read_records(cfg.test), cfg.test_limit)
    target = read_records(cfg.target) if cfg.target else None
    existing = read_records(cfg.existing) if cfg.existing else None
    also = {name: _limit(read_records(path), cfg.test_limit) for name, path in cfg.also_test.items()}
    digests = {k: input_checksum(v) for k, v in (("train", cfg.train), ("test", cfg.test), ("target", cfg.target),
                                                  ("existing", cfg.existing)) if v}
    digests.update({f"also:{name}": input_checksum(path) for name, path in cfg.also_test.items()})
    key = _config_key(cfg, digests)
    if old is not None and old["key"] not in (key, _config_key(cfg, digests, legacy=True)):
        raise OptionError(f"{out} holds a bench run with other settings or inputs; use another --out")
    per_method = pin_method_options(old, cfg, out)
    for name, records in also.items():
        check_generation(cfg, name, also_metrics(cfg.metrics, records))
    todo = [c for c in grid_cells(cfg) if not (out / "cells" / f"{cell_name(*c)}.json").exists()]
    # before bench.json is written, a model that cannot load fails here (one a cell to run will load)
    models = {cfg.train_model} if todo else set()
    models |= {selection_model(cfg, m) for m, _, _ in todo} - {None}
    for model in sorted(models):
        check_model(model)
    weights = pin_models(old, models, out)
    if todo:
        check_held_out_fit(cfg, [(cfg.test, test), *((cfg.also_test[n], r) for n, r in also.items())])
    pinned = out / BENCH_FILE
    out.mkdir(parents=True, exist_ok=True)
    write_text(pinned, json.dumps({"key": key, "config": asdict(cfg), "inputs": digests,
                                   "method_options": per_method, "models": weights}, indent=2, default=str) + "\n")
    (out / "cells").mkdir(exist_ok=True)  # after bench.json: a folder with cells/ is always a bench's
    log.info("bench: %d cells, %d to run (%d train / %d test records)", len(grid_cells(cfg)), len(todo),
             len(train), len(test))
    data = {"train": train, "test": test, "target": target, "existing": existing, "also": also}
    from .machine import describe
    from .pipeline import versions

    ran_with = {"versions": versions(), "code": code_fingerprint(), "machine": describe(), "models": weights}
    for method, budget, seed in todo:
        info = run_cell(cfg, method, budget, seed, data, progress=progress, out=out)
        # which code and machine made the cell (cells of a grid span sessions), and the method's revision
        info["ran_with"] = {**ran_with, **({"revision": per_method[method]["revision"]}
                                           if "revision" in per_method.get(method, {}) else {})}
        name = cell_name(method, budget, seed)
        generations = info.pop("generations")  # written first: the cell file marks the cell finished
        write_text(out / "generations" / f"{name}.jsonl",
                   "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations))
        write_text(out / "cells" / f"{name}.json", json.dumps(info, indent=1) + "\n")
        log.info("%s: %s", cell_name(method, budget, seed),
                 ", ".join(f"{k} {v:.4g}" for k, v in info["metrics"].items()))
        release_memory()  # the cell's models are unreachable now: free them before the next cell loads
    cells = load_cells(out)
    rows = aggregate(cells)
    write_results(out, rows, cfg, cells)
    return rows


def load_cells(out: Path) -> list[dict]:
    """Every finished cell in ``out`` (``cells/*.json``), whichever run made it. bench.json pins
    one settings key per folder (methods, budgets and seeds extend it), so they all belong to one
    grid: a run of some methods (``--only``), budgets or seeds tabulates the whole folder, never
    only its own cells."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((Path(out) / "cells").glob("*.json"))]
