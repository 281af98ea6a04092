"""The selection pipeline: records -> scores -> selection.

:func:`select` is the one entry point behind both the CLI and the Python API. Each method is a
small function that turns records into per-record score columns and a keep mask:

- ``random``: a seeded uniform sample (the baseline every method must beat).
- ``donod``: DON and NOD of the LM head after one simulated SGD step per record, ranked by
  TOPSIS (DON a benefit, NOD a cost); the top ``budget`` records are kept.
- ``delift``: the in-context utility kernel UF, scaled to a similarity, then greedy submodular
  maximisation: Facility Location (``instruction`` stage), FL mutual information against a
  target set (``task``) or FL conditional gain against data already trained on (``continual``).
- ``delift-se``: the same objectives on an embedding kernel (all-MiniLM-L6-v2, (cos + 1) / 2).
- ``donod+delift``: DONOD first drops the worst records (keeps the top ``prefilter`` share by
  TOPSIS closeness), then DELIFT selects the budget from what is left. DONOD is a cheap O(n) pass
  that catches records the model cannot learn from (a swapped answer still looks representative
  to DELIFT's kernel); DELIFT then adds coverage, and its O(n^2) kernel runs on fewer records.

Baselines (docs/baselines.md): ``loss`` / ``perplexity`` (lowest first, or highest with
``keep="hardest"``), ``ifd`` (Instruction-Following Difficulty; highest below 1 first) and
``selectit`` (the model rates each record; highest first) and ``less`` (task stage: LoRA
gradient features matched to the target set's; highest cosine first).
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__
from .errors import OptionError, TunesiftError
from .records import FieldMap, Record, read_records, records_from_rows

log = logging.getLogger("tunesift")

METHODS = ("random", "donod", "delift", "delift-se", "donod+delift", "ifd", "loss", "perplexity", "selectit",
           "less")
LM_METHODS = ("donod", "delift", "donod+delift", "ifd", "loss", "perplexity", "selectit", "less")
DELIFT_METHODS = ("delift", "delift-se", "donod+delift")
STAGES = ("instruction", "task", "continual")
DISTANCES = ("rmse", "pmi")

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Options:
    """Every option of a selection. Defaults are the documented ones (docs/options.md)."""

    method: str = "donod"
    budget: float | int | str = 0.3
    seed: int = 0
    # model
    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    template: str = "auto"
    max_length: int = 2048
    token_budget: int = 0  # padded tokens per forward batch; 0 = from the device's free memory
    cache_dir: str | None = None
    # DONOD
    eta: float = 1e-3
    reduction: str = "sqrt"  # DonodParams: best worst case in bench/noise_bench.py
    weights: tuple[float, float] = (0.5, 0.5)
    # DELIFT
    stage: str = "instruction"
    distance: str = "rmse"
    knn: int = 0
    clip_negative: bool = False
    keep_diagonal: bool = False
    mi_eta: float = 1.0
    mi_form: str = "min"
    nu: float = 1.0
    optimizer: str = "lazy"
    epsilon: float = 0.01
    # DONOD + DELIFT
    prefilter: float = 0.7
    # execution: local, or scoring, DELIFT kernels and embeddings on Ray workers (docs/ray.md)
    backend: str = "local"
    ray_address: str | None = None
    ray_workers: int = 2
    ray_gpus: float | None = None
    # records the model cannot score (a response longer than max_length): fail | skip (error rows)
    on_error: str = "fail"
    # baselines
    keep: str = "easiest"
    selectit_alpha: float = 0.2
    less_dim: int = 8192
    # large pools: approximate kNN (docs/scaling.md) and GreeDi partitions for delift-se
    ann: str = "auto"
    partitions: int = 1

    def validate(self) -> None:
        if self.method not in METHODS:
            raise OptionError(f"unknown method '{self.method}': use one of {', '.join(METHODS)}")
        if self.stage not in STAGES:
            raise OptionError(f"unknown stage '{self.stage}': use one of {', '.join(STAGES)}")
        if self.distance not in DISTANCES:
            raise OptionError(f"unknown distance '{self.distance}': use rmse or pmi")
        if self.template not in ("auto", "chat", "plain"):
            raise OptionError(f"unknown template '{self.template}': use auto, chat or plain")
        if self.optimizer not in ("naive", "lazy", "stochastic"):
            raise OptionError(f"unknown optimizer '{self.optimizer}': use naive, lazy or stochastic")
        if self.mi_form not in ("min", "additive"):
            raise OptionError(f"unknown FLMI form '{self.mi_form}': use min or additive")
        for name in ("nu", "mi_eta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise OptionError(f"{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if not (isinstance(self.prefilter, (int, float)) and 0 < self.prefilter <= 1):
            raise OptionError(f"prefilter must be a fraction in (0, 1], got {self.prefilter}")
        if self.backend not in ("local", "ray"):
            raise OptionError(f"unknown backend '{self.backend}': use local or ray")
        if self.ray_workers < 1:
            raise OptionError(f"ray-workers must be at least 1, got {self.ray_workers}")
        if self.ray_gpus is not None and self.ray_gpus < 0:
            raise OptionError(f"ray-gpus must be >= 0, got {self.ray_gpus}")
        from .scoring.embedding import ANN_METHODS

        if self.ann not in ANN_METHODS:
            raise OptionError(f"unknown ann '{self.ann}': use one of {', '.join(ANN_METHODS)}")
        if self.partitions < 1:
            raise OptionError(f"partitions must be at least 1, got {self.partitions}")
        if self.partitions > 1 and (self.method != "delift-se" or self.stage != "instruction"):
            raise OptionError("--partitions (GreeDi) works with --method delift-se --stage instruction")
        if self.less_dim < 1:
            raise OptionError(f"less-dim must be at least 1, got {self.less_dim}")
        if self.method == "less" and self.stage != "task":
            raise OptionError("less matches gradients to a target set: use --stage task --target FILE")
        if self.on_error not in ("fail", "skip"):
            raise OptionError(f"unknown on-error '{self.on_error}': use fail or skip")
        if self.keep not in ("easiest", "hardest"):
            raise OptionError(f"unknown keep '{self.keep}': use easiest or hardest")
        if not (isinstance(self.selectit_alpha, (int, float)) and self.selectit_alpha >= 0):
            raise OptionError(f"selectit-alpha must be a number >= 0, got {self.selectit_alpha}")
        if not 0 < self.epsilon < 1:
            raise OptionError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise OptionError(f"seed must be an integer >= 0, got {self.seed}")
        if self.token_budget < 0:
            raise OptionError(f"token budget must be >= 0 (0 = auto), got {self.token_budget}")
        if self.knn < 0:
            raise OptionError(f"knn must be >= 0 (0 = dense kernel), got {self.knn}")
        if self.max_length < 8:
            raise OptionError(f"max-length must be at least 8 tokens, got {self.max_length}")
        if (len(self.weights) != 2 or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.weights)
                or min(self.weights) < 0 or sum(self.weights) <= 0):
            raise OptionError(f"weights must be two finite non-negative numbers, not both 0, got "
                              f"{','.join(map(str, self.weights))}")
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                           and self.device[5:].isdigit())):
            raise OptionError(f"unknown device '{self.device}': use auto, cpu, cuda or cuda:N")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise OptionError(f"unknown dtype '{self.dtype}': use auto, float32, bfloat16 or float16")
        if self.ray_gpus is not None and not math.isfinite(self.ray_gpus):
            raise OptionError(f"ray-gpus must be a finite number >= 0, got {self.ray_gpus}")
        if not math.isfinite(self.selectit_alpha):
            raise OptionError(f"selectit-alpha must be a finite number >= 0, got {self.selectit_alpha}")
        parse_budget(self.budget)
        from .scoring.donod import DonodParams

        DonodParams(self.eta, self.reduction)  # validates eta and reduction before any model loads


@dataclass
class Selection:
    """The result of a selection.

    ``records`` are all input records in input order; ``kept`` (n,) bool marks the selected
    ones; ``columns`` holds per-record score arrays (n,) named after what they are; ``order``
    lists selected indices in the order the method preferred them.
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

    @property
    def ids(self) -> list[str]:
        """Ids of the kept records, in input order."""
        return [r.id for r, k in zip(self.records, self.kept) if k]

    @property
    def subset(self) -> list[dict]:
        """The kept records' original rows, untouched, in input order."""
        return [r.row for r, k in zip(self.records, self.kept) if k]

    def table(self):
        """One row per input record: id, line, the method's scores, rank, kept (a pyarrow Table)."""
        import pyarrow as pa

        rank = np.zeros(len(self.records), dtype=np.int64)
        rank[self.order] = np.arange(1, len(self.order) + 1)
        cols = {"id": pa.array([r.id for r in self.records], pa.string()),
                "line": pa.array([r.line for r in self.records], pa.int64())}
        for name, arr in self.columns.items():
            cols[name] = pa.array(arr)
        cols["rank"] = pa.array(rank, pa.int64(), mask=rank == 0)  # null: not ranked (not picked)
        cols["kept"] = pa.array(self.kept.astype(bool))
        return pa.table(cols)

    def to_pandas(self):
        return self.table().to_pandas()


def parse_budget(budget: float | int | str) -> float | int:
    """A fraction in (0, 1] (written with a decimal point, e.g. 0.3 or 1.0) or a count >= 1."""
    shown = isinstance(budget, str)
    if isinstance(budget, str):
        text = budget.strip()
        try:
            budget = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise OptionError(f"budget must be a fraction in (0, 1] or a count, got '{text}'") from None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise OptionError(f"budget must be a fraction in (0, 1] or a count, got {budget!r}")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            hint = ""
            if budget > 1 and budget == int(budget):
                hint = f"; a count is written as a whole number, e.g. {int(budget)}"
            raise OptionError(f"budget fraction must be in (0, 1], got {text if shown else budget}{hint}")
        return budget
    if budget < 1:
        raise OptionError(f"budget count must be at least 1, got {budget}")
    return budget


def resolve_budget(budget: float | int | str, n: int) -> int:
    """Number of records to keep out of ``n``: round(fraction * n) (at least 1) or the count."""
    b = parse_budget(budget)
    if isinstance(b, float):
        return max(1, min(n, int(round(b * n))))
    if b > n:
        raise OptionError(f"budget {b} is larger than the {n} input records")
    return b


SKIP_HINT = "; fix or drop such records, or pass --on-error skip to keep them out as error rows"


def as_records(data, fields: FieldMap | None = None, *, source: str = "<rows>", on_error: str = "fail",
               digest: dict | None = None) -> list[Record]:
    """Records from a path, a list of Records, a list of dicts, a pandas DataFrame or an HF Dataset.
    ``on_error="skip"``: records with a defect come back with ``Record.error`` set; ``digest``
    receives the input's sha256 as it was read (paths only)."""
    hint = SKIP_HINT if on_error == "fail" and source == "<rows>" else ""
    if isinstance(data, (str, Path)):
        return read_records(data, fields, on_error=on_error, digest=digest, hint=hint)
    if isinstance(data, list) and data and isinstance(data[0], Record):
        return data
    return records_from_rows(data, fields, source=source, on_error=on_error,
                             hint=hint)  # dicts, DataFrame, Dataset, DatasetDict


def _no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


# ----------------------------------------------------------------------------- methods


def _random(records: list[Record], k: int, opt: Options) -> tuple[dict, np.ndarray, dict]:
    rng = np.random.default_rng(opt.seed)
    perm = rng.permutation(len(records))
    return {}, perm, {}


def _renderer(lm, opt: Options):
    from .render import Renderer, turn_format

    return Renderer(lm.tokenizer, turn_format(lm.tokenizer, opt.template), max_length=opt.max_length)


# Per-record scorers computed in cached blocks: kind -> (columns, cache version, records per block)
BLOCK_SCORERS = {
    "donod": (("r_dot_z", "grad_norm_sq", "n_tokens"), "donod-v1", 16),  # eta-free terms, see donod.score_batch
    "loss": (("loss", "perplexity", "n_tokens"), "loss-v1", 64),
    "ifd": (("loss", "loss_alone", "ifd", "n_tokens"), "ifd-v1", 64),
    "selectit": (("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"), "selectit-v1", 64),
}


def score_block(kind: str, lm, renderer, records: list[Record], opt: Options) -> np.ndarray:
    """Rows (len(records), width) of one block of a per-record scorer; the same function serves the
    local loop and remote workers."""
    if kind == "donod":
        from .scoring.donod import gradient_stats

        return gradient_stats(lm.model, [renderer.sequence(r) for r in records],
                              pad_id=lm.tokenizer.pad_token_id, token_budget=opt.token_budget)
    from .scoring import baselines as bl

    kw = {"token_budget": opt.token_budget}
    if kind == "selectit":
        kw["alpha"] = opt.selectit_alpha
    cols = getattr(bl, f"{kind}_scores")(lm, renderer, records, **kw)
    return np.stack([cols[c] for c in BLOCK_SCORERS[kind][0]], axis=1)


def _block_extra(kind: str, opt: Options) -> tuple:
    """Settings besides the token sequences that change a block's scores (part of its cache key)."""
    if kind == "selectit":
        from .scoring.baselines import DEFAULT_PROMPTS

        return (DEFAULT_PROMPTS, opt.selectit_alpha)
    return ()


def _blocked_scores(kind: str, lm, opt: Options, records: list[Record], progress: Progress) -> np.ndarray:
    """Per-record score rows (n, width) of ``kind``, computed a block of records at a time and cached.

    Each block is stored under ``<cache>/<kind>`` keyed by its content (cache version, model
    fingerprint and dtype, the block's token sequences, other settings), so a rerun reads
    everything back and a killed run recomputes only the missing blocks (the unit of resume).
    With ``backend="ray"`` the missing blocks are scored on Ray workers (docs/ray.md), into the
    same cache."""
    from .backends.blocks import BlockResult, get_block, put_block
    from .store import ArrayStore, content_key, default_cache_dir

    names, version, block = BLOCK_SCORERS[kind]
    renderer = _renderer(lm, opt)
    seqs = [renderer.sequence(r) for r in records]
    root = Path(opt.cache_dir or default_cache_dir()) / version.split("-v")[0]
    store = ArrayStore(root)
    spans = [(s, min(len(seqs), s + block)) for s in range(0, len(seqs), block)]
    keys = [content_key(version, lm.fingerprint, lm.dtype, seqs[s:e], *_block_extra(kind, opt)) for s, e in spans]
    advance = progress(f"{kind} scoring", len(seqs))
    if opt.backend == "ray":
        from .backends.ray_backend import model_spec, score_blocks_ray

        results = score_blocks_ray(kind, model_spec(lm), [(k, records[s:e]) for k, (s, e) in zip(keys, spans)],
                                   opt, root, address=opt.ray_address, num_workers=opt.ray_workers,
                                   num_gpus=opt.ray_gpus, on_block=lambda key, res: advance(len(res.rows)))
    out = np.zeros((len(seqs), len(names)))
    for key, (s, e) in zip(keys, spans):
        if opt.backend == "ray":
            got = results[key]
        else:
            got = get_block(store, key, e - s, len(names))
            if got is None:  # select() has set unscorable records aside: score the block as it is
                got = BlockResult(np.asarray(score_block(kind, lm, renderer, records[s:e], opt), dtype=np.float64), {})
                put_block(store, key, got)
            advance(e - s)
        if got.errors:  # select() sets unscorable records aside before scoring: a bug, not a record
            i, why = next(iter(got.errors.items()))
            raise TunesiftError(f"{kind}: record {records[s + i].id} could not be scored: {why}")
        out[s:e] = got.rows
    return out


def _donod(records, k, opt, lm, progress: Progress):
    from .scoring.donod import DonodParams, don_nod_from_stats, lm_head_norm_sq
    from .selection.topsis import rank_desc, topsis

    stats = _blocked_scores("donod", lm, opt, records, progress)
    dn = don_nod_from_stats(stats, lm_head_norm_sq(lm.model), DonodParams(opt.eta, opt.reduction))
    close = topsis(dn, opt.weights, [True, False])
    order = np.argsort(rank_desc(close), kind="stable")
    cols = {"don": dn[:, 0], "nod": dn[:, 1], "closeness": close, "n_tokens": stats[:, 2].astype(np.int64)}
    return cols, order, {}


def _baseline(records, k, opt, lm, progress: Progress):
    """Score every record with one of the baselines (blockwise, cached) and rank them."""
    from .scoring import baselines as bl

    kind = "loss" if opt.method == "perplexity" else opt.method  # one pass serves both
    rows = _blocked_scores(kind, lm, opt, records, progress)
    cols = {c: rows[:, j] for j, c in enumerate(BLOCK_SCORERS[kind][0])}
    if "n_tokens" in cols:
        cols["n_tokens"] = cols["n_tokens"].astype(np.int64)
    if kind == "loss":
        order = bl.loss_order(cols["loss"], opt.keep)
    elif kind == "ifd":
        order = bl.ifd_order(cols["ifd"])
    else:  # selectit: highest first, NaN last
        order = np.argsort(np.where(np.isnan(cols["selectit"]), np.inf, -cols["selectit"]), kind="stable")
    return cols, order, {}


def _submodular(sim, cross, k: int, opt: Options):
    from .selection import submodular as sm

    kw = dict(optimizer=opt.optimizer, epsilon=opt.epsilon, seed=opt.seed)
    if opt.stage == "instruction":
        return sm.facility_location(sim, k, **kw)
    if opt.stage == "task":
        return sm.fl_mutual_information(sim, cross, k, eta=opt.mi_eta, form=opt.mi_form, **kw)
    return sm.fl_conditional_gain(sim, cross, k, nu=opt.nu, **kw)


def _stage_other(opt: Options, target, existing) -> list[Record] | None:
    """The second record set the stage needs (target or existing data), checking that a set is
    given exactly where the method and stage use it."""
    uses = {"task": "target", "continual": "existing"}.get(opt.stage) if opt.method in DELIFT_METHODS + ("less",) \
        else None
    for given, name, stage in ((target, "target", "task"), (existing, "existing", "continual")):
        if given is not None and uses != name:
            raise OptionError(f"--{name} is used only by --method {'/'.join(DELIFT_METHODS + ('less',) * (name == 'target'))} "
                              f"--stage {stage}; "
                              f"it would be ignored here")
    if uses == "target" and not target:
        raise OptionError("stage 'task' needs a target set (--target FILE)")
    if uses == "existing" and not existing:
        raise OptionError("stage 'continual' needs the existing data (--existing FILE)")
    return target if uses == "target" else existing if uses == "existing" else None


def _pair_progress(progress: Progress, label: str) -> Callable[[int, int], None]:
    """Adapt progress(done, total) calls (kernel, embeddings) to a progress bar."""
    state = {"advance": None, "done": 0}

    def update(done: int, total: int) -> None:
        if state["advance"] is None:
            state["advance"] = progress(label, total)
        state["advance"](done - state["done"])
        state["done"] = done

    return update


def _delift(records, k, opt, lm, progress: Progress, other, embed_kernel: bool):
    if opt.backend != "ray":
        return _delift_on(records, k, opt, lm, progress, other, embed_kernel, None)
    from .backends.ray_backend import LazyPool, model_spec

    # one pool for the embeddings and the kernel, started only if something is not cached;
    # DELIFT (SE) needs no language model on the workers
    with LazyPool(None if embed_kernel else model_spec(lm), address=opt.ray_address,
                  num_workers=opt.ray_workers, num_gpus=opt.ray_gpus) as pool:
        return _delift_on(records, k, opt, lm, progress, other, embed_kernel, pool)


def _delift_on(records, k, opt, lm, progress: Progress, other, embed_kernel: bool, pool):
    """DELIFT / DELIFT (SE) selection; ``pool``: a Ray worker pool (LazyPool) or None (local)."""
    from .scoring import embedding as emb

    embed_runner = kernel_runner = None
    if pool is not None:
        from .backends.ray_backend import RayEmbedRunner, RayKernelRunner

        embed_runner, kernel_runner = RayEmbedRunner(pool), RayKernelRunner(pool)

    t0 = time.perf_counter()
    timings = {}
    pattern = cross_pattern = None
    need_emb = embed_kernel or opt.knn > 0
    if need_emb:
        log.info("embedding %d records with all-MiniLM-L6-v2", len(records) + len(other or []))
        e_pool = emb.embed_records(records, cache_dir=opt.cache_dir, device=opt.device, runner=embed_runner,
                                   progress=_pair_progress(progress, "embedding the pool"))
        e_other = (emb.embed_records(other, cache_dir=opt.cache_dir, device=opt.device, runner=embed_runner,
                                     progress=_pair_progress(progress, f"embedding the {opt.stage} set"))
                   if other else None)
        timings["embed_s"] = time.perf_counter() - t0
    def knn(a: np.ndarray, b: np.ndarray, kk: int, exclude_self: bool = False):  # exact or faiss (--ann)
        return emb.ann_knn_pattern(a, b, kk, exclude_self=exclude_self, method=opt.ann, seed=opt.seed)

    if embed_kernel and opt.partitions > 1:  # GreeDi: the n x n kernel is never formed
        from .selection.partitioned import partitioned_facility_location

        t2 = time.perf_counter()
        log.info("GreeDi over %d partitions, budget %d", opt.partitions, k)
        res = partitioned_facility_location(e_pool, k, partitions=opt.partitions, knn=opt.knn or None,
                                            ann_method=opt.ann, seed=opt.seed, optimizer=opt.optimizer, weighted=True,
                                            epsilon=opt.epsilon)
        timings["select_s"] = time.perf_counter() - t2
        return _greedy_columns(res, len(records)), np.asarray(res.order), {"timings": timings,
                                                                           "objective": res.objective}
    if embed_kernel:
        def se_kernel(b: np.ndarray):  # dense, or only at the k nearest (the pattern caps k)
            return emb.cosine_similarity_kernel(e_pool, b, knn(e_pool, b, opt.knn) if opt.knn else None)

        sim = se_kernel(e_pool)
        cross = se_kernel(e_other) if other else None
    else:
        from .scoring.utility import similarity_bounds, to_similarity, utility_kernel

        if opt.knn:
            # with the diagonal kept, the record itself takes one of the slots: ask for one more
            # (knn_pattern caps k at the columns available)
            k_self = opt.knn + 1 if opt.keep_diagonal else opt.knn
            pattern = knn(e_pool, e_pool, k_self, exclude_self=not opt.keep_diagonal)
            if other:
                cross_pattern = knn(e_pool, e_other, opt.knn)
        renderer = _renderer(lm, opt)
        t1 = time.perf_counter()
        kern = utility_kernel(lm, renderer, records, records, pairs=pattern, exclude_diagonal=not opt.keep_diagonal,
                              same=True, token_budget=opt.token_budget, cache_dir=opt.cache_dir, runner=kernel_runner,
                              progress=_pair_progress(progress, "DELIFT kernel (pool x pool)"))
        uf = kern.values(opt.distance)
        uf_cross = None
        if other:
            kc = utility_kernel(lm, renderer, records, other, pairs=cross_pattern, exclude_diagonal=False,
                                same=False, token_budget=opt.token_budget, cache_dir=opt.cache_dir,
                                runner=kernel_runner, progress=_pair_progress(progress, f"DELIFT kernel (pool x {opt.stage})"))
            uf_cross = kc.values(opt.distance)
        timings["kernel_s"] = time.perf_counter() - t1
        kernels = [uf] + ([uf_cross] if other else [])
        bounds = similarity_bounds(kernels, clip_negative=opt.clip_negative)
        sim, *rest = (to_similarity(k, clip_negative=opt.clip_negative, bounds=bounds).astype(np.float32)
                      for k in kernels)
        cross = rest[0] if rest else None
    t2 = time.perf_counter()
    log.info("greedy %s maximisation (%s stage), budget %d", opt.optimizer, opt.stage, k)
    res = _submodular(sim, cross, k, opt)
    timings["select_s"] = time.perf_counter() - t2
    cols = _greedy_columns(res, len(records))
    cols.update(_coverage(sim, res.order, records))
    if not embed_kernel:
        cols["helped_by"] = _nanmean(uf, axis=1)  # mean UF of this record as a target: how much examples help it
        cols["helpfulness"] = _nanmean(uf, axis=0)  # mean UF of this record as an example: how much it helps others
    return cols, np.asarray(res.order), {"timings": timings, "objective": res.objective}


def _coverage(sim, picks: np.ndarray, records) -> dict[str, np.ndarray]:
    """For each record not picked, the pick that covers it best in the selection kernel ``sim``
    (rows: records, columns: candidates) and by how much: ``covered_by`` (the pick's id; None for
    picks and for records no pick covers) and ``coverage`` (``max_{j in picks} sim[i, j]``, its
    term of the facility-location objective; NaN for picks), (n,) each."""
    from .selection.objectives import fl_assignment

    pos, value = fl_assignment(sim, picks)
    picked = np.zeros(len(records), dtype=bool)
    picked[picks] = True
    ids = [records[int(j)].id for j in picks]
    covered_by = np.array([None if p < 0 or picked[i] else ids[p] for i, p in enumerate(pos)], dtype=object)
    return {"covered_by": covered_by, "coverage": np.where(picked, np.nan, value)}


def _greedy_columns(res, n: int) -> dict[str, np.ndarray]:
    """``order`` (1-based pick position, -1 if not picked) and ``gain`` (NaN if not picked), (n,)."""
    order_pos = np.full(n, -1, dtype=np.int64)
    order_pos[res.order] = np.arange(1, len(res.order) + 1)
    gain = np.full(n, np.nan)
    gain[res.order] = res.gains
    return {"order": order_pos, "gain": gain}


def _less(records, opt: Options, lm, progress: Progress, target):
    """LESS (docs/baselines.md): cosine of each record's Adam-preconditioned LoRA gradient
    (after a short warm-up on 5% of the pool) to the target set's mean gradient; highest first."""
    from .scoring.less import less_scores

    cols = less_scores(lm, records, target, dim=opt.less_dim, seed=opt.seed, cache_dir=opt.cache_dir,
                       token_budget=opt.token_budget, renderer=_renderer(lm, opt), progress=progress)
    order = np.argsort(np.where(np.isnan(cols["less"]), np.inf, -cols["less"]), kind="stable")
    return cols, order, {}


def _donod_delift(records, k, opt, lm, progress: Progress, other):
    """DONOD keeps the top max(k, round(prefilter * n)) records by closeness; DELIFT picks k of them.

    Columns: DONOD's (for every record), ``prefiltered`` (True where DONOD let the record through)
    and DELIFT's (order/gain; -1/NaN for records DONOD cut)."""
    n = len(records)
    cols_d, order_d, _ = _donod(records, k, opt, lm, progress)
    m = max(k, int(round(opt.prefilter * n)))
    keep = np.sort(order_d[:m])
    log.info("DONOD prefilter kept %d of %d records; DELIFT selects %d of them", m, n, k)
    cols_s, order_s, extra = _delift([records[i] for i in keep], k, opt, lm, progress, other, embed_kernel=False)
    cols = dict(cols_d)
    cols["prefiltered"] = np.zeros(n, dtype=bool)
    cols["prefiltered"][keep] = True
    for name, arr in cols_s.items():
        full = np.full(n, {"i": -1, "O": None}.get(arr.dtype.kind, np.nan), dtype=arr.dtype)
        full[keep] = arr
        cols[name] = full
    return cols, keep[np.asarray(order_s, dtype=np.int64)], extra


def _nanmean(m, axis: int) -> np.ndarray:
    """Mean over the defined entries (not NaN; for sparse kernels, stored entries) along ``axis``."""
    import scipy.sparse as sp

    if sp.issparse(m):
        c = m.tocoo()
        ok = ~np.isnan(c.data)
        idx = (c.row if axis == 1 else c.col)[ok]
        size = m.shape[0] if axis == 1 else m.shape[1]
        tot = np.bincount(idx, weights=c.data[ok], minlength=size)
        cnt = np.bincount(idx, minlength=size)
        return np.divide(tot, cnt, out=np.full(size, np.nan), where=cnt > 0)
    import warnings

    with warnings.catch_warnings():  # an all-NaN row (n = 1) is a NaN mean, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(m, axis=axis)


# ----------------------------------------------------------------------------- entry point


def select(data, *, target=None, existing=None, fields: FieldMap | None = None,
           progress: Progress | None = None, lm=None, **options) -> Selection:
    """Select the records worth training on.

    ``data`` (and ``target``/``existing`` for the task/continual stages) may be a path, a list
    of dicts, a pandas DataFrame, a Hugging Face Dataset or a list of Records. ``options`` are the
    fields of :class:`Options` (``method``, ``budget``, ``model``, ...). ``lm`` reuses an already
    loaded model (:func:`tunesift.models.load_lm`).

    >>> sel = select([{"instruction": "2+2?", "output": "4"}, ...], method="random", budget=0.5)
    >>> sel.subset  # the kept rows, untouched
    """
    opt = Options(**options)
    opt.validate()
    progress = progress or _no_progress
    t_start = time.perf_counter()
    digests: dict[str, dict] = {"data": {}, "target": {}, "existing": {}}  # sha256 of what was read
    # per-record defects become Record.error here, so that every defect of the run (unreadable fields,
    # records the model cannot score) is reported together below, or turned into error rows
    records = as_records(data, fields, on_error="skip", digest=digests["data"])
    tgt = as_records(target, fields, source="<target>", digest=digests["target"]) if target is not None else None
    ext = as_records(existing, fields, source="<existing>", digest=digests["existing"]) \
        if existing is not None else None
    other = _stage_other(opt, tgt, ext)
    k = resolve_budget(opt.budget, len(records))
    log.info("%s: %d records read, keeping %d", opt.method, len(records), k)
    timings = {"read_s": time.perf_counter() - t_start}
    model_info = None
    if opt.method in LM_METHODS:
        if lm is None:
            from .models import load_lm

            t = time.perf_counter()
            log.info("loading model '%s' (%s, %s)", opt.model, opt.device, opt.dtype)
            lm = load_lm(opt.model, device=opt.device, dtype=opt.dtype)
            timings["load_model_s"] = time.perf_counter() - t
        model_info = {"name": lm.source, "path": lm.path, "fingerprint": lm.fingerprint,
                      "dtype": lm.dtype, "device": lm.device}
        if not opt.token_budget:  # batches sized to the device's free memory (4096 on a CPU)
            from .scoring.logprobs import auto_token_budget

            opt = replace(opt, token_budget=auto_token_budget(lm))
            log.info("token budget %d padded tokens per batch", opt.token_budget)
    t = time.perf_counter()
    errors = {i: r.error for i, r in enumerate(records) if r.error}  # defects found when reading
    readable = [i for i in range(len(records)) if i not in errors]
    if opt.method in LM_METHODS and readable:
        errors.update({readable[j]: why for j, why in
                       _unscorable([records[i] for i in readable], lm, opt).items()})
        errors = dict(sorted(errors.items()))
    ok = np.array([i for i in range(len(records)) if i not in errors], dtype=np.int64)
    if errors:
        if opt.on_error == "fail":
            raise TunesiftError(_errors_line(errors, len(records), data) + SKIP_HINT)
        if not len(ok):
            raise TunesiftError(f"none of the {len(records)} records can be used (every one is an error row "
                                f"under --on-error skip): {_errors_line(errors, len(records), data)}")
        log.warning("%d of %d records cannot be scored (see the error column); they are never kept",
                    len(errors), len(records))
        k = min(k, len(ok))
    scored = [records[i] for i in ok] if errors else records
    if opt.method == "random":
        cols, order, extra = _random(scored, k, opt)
    elif opt.method == "donod":
        cols, order, extra = _donod(scored, k, opt, lm, progress)
    elif opt.method == "donod+delift":
        cols, order, extra = _donod_delift(scored, k, opt, lm, progress, other)
    elif opt.method == "less":
        cols, order, extra = _less(scored, opt, lm, progress, other)
    elif opt.method in ("ifd", "loss", "perplexity", "selectit"):
        cols, order, extra = _baseline(scored, k, opt, lm, progress)
    else:
        cols, order, extra = _delift(scored, k, opt, lm, progress, other, embed_kernel=opt.method == "delift-se")
    if errors:  # back to every input record: failed ones get NaN / -1 / False and their reason
        cols = {name: _spread(arr, ok, len(records)) for name, arr in cols.items()}
        cols["error"] = np.array([errors.get(i) for i in range(len(records))], dtype=object)
        order = ok[np.asarray(order, dtype=np.int64)]
        extra["errors"] = len(errors)
    extra["input_sha256"] = {k: v["sha256"] for k, v in digests.items() if v.get("sha256")}
    extra["input_schema"] = digests["data"].get("schema")  # Arrow schema of Parquet/HF input (outputs)
    timings["score_select_s"] = time.perf_counter() - t
    timings.update(extra.pop("timings", {}))
    kept = np.zeros(len(records), dtype=bool)
    kept[order[:k]] = True
    log.info("%s: selected %d of %d records in %.1f s", opt.method, k, len(records), time.perf_counter() - t_start)
    timings["total_s"] = time.perf_counter() - t_start
    return Selection(opt.method, records, kept, cols, np.asarray(order, dtype=np.int64), opt, k,
                     model_info, timings, extra)


def _errors_line(errors: dict[int, str], n: int, data=None) -> str:
    """The first reason in full, then how many records fail and the first few of the others
    (without the file name, which the first names)."""
    items = list(errors.items())
    line = items[0][1]
    src = f"{data}:" if isinstance(data, (str, Path)) else None

    def short(why: str) -> str:
        why = "line " + why[len(src):] if src and why.startswith(src) else why
        return why if len(why) <= 120 else why[:117] + "..."

    if len(items) > 1:
        more = ", ".join(short(why) for _, why in items[1:4])
        line += f"; {len(items)} of {n} records cannot be used, also: {more}" + (
            f" and {len(items) - 4} more" if len(items) > 4 else "")
    return line


def _unscorable(records: list[Record], lm, opt: Options) -> dict[int, str]:
    """{index: reason} of the records the method cannot score (checked before any scoring, so a
    long job never dies halfway on one record): the blocks' own per-record check."""
    from .backends.blocks import record_errors

    return record_errors(opt.method, _renderer(lm, opt), records)


def _spread(arr: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """A column of the scored records spread over all n records (missing: NaN, -1 or False)."""
    arr = np.asarray(arr)
    fill = {"b": False, "i": -1, "u": 0, "O": None}.get(arr.dtype.kind, np.nan)
    full = np.full(n, fill, dtype=arr.dtype if arr.dtype.kind in "biu" else np.result_type(arr.dtype, np.float64))
    full[rows] = arr
    return full


def versions() -> dict[str, str]:
    """Library versions for the manifest."""
    import importlib.metadata as md

    out = {"tunesift": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "numpy", "scipy", "pyarrow", "sentence-transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def options_dict(opt: Options) -> dict:
    d = asdict(opt)
    d["weights"] = list(opt.weights)
    return d
