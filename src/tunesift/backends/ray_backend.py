"""Run tunesift's expensive blocks on Ray actors: the per-record scorers (DONOD and the
baselines), DELIFT utility-kernel blocks, and MiniLM embeddings.

A pool of ``num_workers`` Ray actors (:class:`~tunesift.backends.ray_worker.BlockWorker`) each
loads the model once and computes whole blocks:
per-record blocks with :func:`tunesift.backends.blocks.score_block_checked` (the local loop
scores the same blocks with :func:`tunesift.backends.blocks.score_block` after select() has set
unscorable records aside), kernel column blocks with
:func:`tunesift.scoring.kernel_blocks.kernel_block` (:class:`RayKernelRunner`), text chunks with
:func:`tunesift.scoring.embedding.embed_texts` (:class:`RayEmbedRunner`). The driver hands out blocks, at most two queued per actor, and writes every finished block into
the same content-addressed :class:`~tunesift.store.ArrayStore` the local loop uses, the moment
it arrives. So:

* local and Ray runs share results (same keys, same files), and a killed job, driver or
  cluster, resumes from the blocks already stored: they are read back, not sent to Ray;
* only the driver writes to the cache, so the cluster's nodes need no shared file system; they
  need tunesift installed and the model folder at the same path (its fingerprint is checked);
* a worker must run what the driver runs: :meth:`RayBlockPool._ready` refuses other tunesift
  source or transformers, tokenizers, torch versions; each per-record block comes back with the
  key the worker rendered (:func:`~tunesift.backends.blocks.block_key`) and is refused, unstored,
  unless it is the driver's; embedding workers refuse another sentence encoder;
* a worker that dies is restarted by Ray (``max_restarts``) and its task re-run
  (``max_task_retries``); a block that still fails is re-queued by the driver (``max_attempts``
  tries in all), on a fresh actor when the old one is gone for good (waited for like the first
  ones: one the cluster cannot place is an error after ``ready_timeout``); a busy worker that
  leaves a ping unanswered for ``answer_timeout`` (Ray restarting it where it cannot be placed)
  is replaced the same way, so no job waits forever.

Ray is an optional extra (``pip install 'tunesift[ray]'``), imported only here.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..errors import OptionError, TunesiftError, overflow_error
from ..io.describe import first_line
from ..signals import handlers_kept
from ..store import ArrayStore
from .blocks import (
    BLOCK_SCORERS,
    BlockResult,
    get_block,
    inf_columns,
    overflowed_rows,
    put_block,
)
from .ray_worker import BlockWorker
from .versions import stack_versions, version_error, version_mismatch

log = logging.getLogger("tunesift")

OnBlock = Callable[[str, BlockResult], None]
Block = tuple[str, Sequence]  # (cache key, records)

# environment of every worker process: no busy-waiting OpenMP threads, nothing from the Hub
WORKER_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
QUEUE_PER_WORKER = 2  # blocks queued on an actor at once: the next one is ready when one ends
LIVENESS_S = 30.0  # while no block finishes, busy actors are pinged this often (in their own thread)
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # blocks and records are small; keep /dev/shm free


def import_ray():
    """The ``ray`` module, or a one-line :class:`TunesiftError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise TunesiftError(
            "the Ray backend needs Ray, which is not installed: pip install 'tunesift[ray]'"
        ) from None
    return ray


def worker_env(threads: int = 1) -> dict[str, str]:
    """Environment variables of the worker processes (``runtime_env`` ``env_vars``)."""
    n = str(int(threads))
    return {**WORKER_ENV, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def model_spec(lm) -> dict:
    """What a worker needs to load the driver's model: ``path``, ``dtype`` and ``fingerprint``.

    The dtype is the driver's resolved one (``lm.dtype``, e.g. ``float32``), never ``auto``:
    it is part of every block's cache key, so workers must compute in exactly that dtype.
    """
    path = Path(lm.path)  # absolute: a relative folder means another place in a worker's directory
    return {"path": str(path.resolve()) if path.exists() else str(lm.path), "dtype": str(lm.dtype),
            "fingerprint": lm.fingerprint}


def gpu_share(total: float, workers: int) -> float:
    """GPUs per worker when ``--ray-gpus`` is not given: at most 1, and a share that fits inside
    one GPU (Ray places a fractional request on a single device): 4 workers on 3 GPUs get 1/2 each,
    not 3/4, since a fourth 3/4 share fits nowhere and its worker would never be placed."""
    if total <= 0:
        return 0.0
    if total < 1:  # a fraction of one GPU (a MIG slice): split it
        return total / workers
    return 1.0 / math.ceil(workers / math.floor(total))


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ...) or, with
    None, start a local instance with ``num_cpus`` CPUs (no dashboard, a 256 MB object store).

    Returns True when this call connected (the caller then calls ``ray.shutdown()``), False
    when Ray was already initialised in this process (it is reused as it is).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    common = dict(runtime_env={"env_vars": worker_env()}, logging_level=logging.WARNING,
                  log_to_driver=False)
    if address:
        _check_reachable(address)
    # ray.init installs its own SIGTERM handler (sys.exit) and never takes it back: the CLI's
    # (one line, exit 143, temporary files removed) and a Python user's own are restored after it
    try:
        with handlers_kept():
            if address:
                ray.init(address=address, **common)
            else:
                # "local": a fresh instance even where RAY_ADDRESS or a `ray start` cluster would be joined
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
        raise TunesiftError(f"cannot start or join {where}: {first_line(exc)}") from None
    return True


class RayBlockPool:
    """``num_workers`` Ray actors, each holding one copy of the model (``spec``, see
    :func:`model_spec`; None for an embeddings-only pool). Ray must be initialised, see
    :func:`init_ray`. Reusable for any number of :meth:`score` calls, kinds and options;
    :meth:`close` (or ``with``) removes the actors.

    ``num_gpus`` per actor: None takes the cluster's GPUs shared evenly (at most 1 per actor;
    0 when it has none); a worker with a GPU share loads the model on ``cuda``, else on ``cpu``.
    ``threads_per_worker`` is both the actor's CPU request and its torch threads. Workers not
    placed and loaded within ``ready_timeout`` seconds (a cluster without the resources asked
    for), and workers running other tunesift source or library versions than this process
    (:func:`~tunesift.backends.versions.stack_versions`), are a :class:`TunesiftError`. A busy
    worker that leaves a ping unanswered for ``answer_timeout`` seconds (default ``ready_timeout``;
    Ray restarting it where it cannot be placed) is replaced and its blocks sent again.
    """

    worker_class = BlockWorker  # the actor class (tests substitute a subclass)

    def __init__(self, spec: dict | None, *, num_workers: int = 2, num_gpus: float | None = None,
                 threads_per_worker: int = 1, max_restarts: int = 4, max_task_retries: int = 4,
                 ready_timeout: float = 600.0, answer_timeout: float | None = None):
        ray = import_ray()
        if num_workers < 1:
            raise OptionError(f"the Ray backend needs at least 1 worker, got {num_workers}")
        if threads_per_worker < 1:
            raise OptionError(f"threads per worker must be at least 1, got {threads_per_worker}")
        if not ray.is_initialized():
            raise TunesiftError("Ray is not initialised: call tunesift.backends.ray_backend.init_ray()")
        if num_gpus is None:
            num_gpus = gpu_share(float(ray.cluster_resources().get("GPU", 0)), num_workers)
        if num_gpus < 0:
            raise OptionError(f"GPUs per worker must be >= 0, got {num_gpus}")
        self.spec = dict(spec) if spec is not None else None
        self.num_gpus, self.threads = float(num_gpus), int(threads_per_worker)
        self.device = "cuda" if self.num_gpus > 0 else "cpu"
        # a "ping" group: ready() answers from its own thread while a long block runs, so a worker
        # that answers is alive and one that does not (restarting where it cannot be placed) is not
        self._actor = ray.remote(concurrency_groups={"ping": 1})(self.worker_class).options(
            num_cpus=self.threads, num_gpus=self.num_gpus, max_restarts=max_restarts,
            max_task_retries=max_task_retries, runtime_env={"env_vars": worker_env(self.threads)})
        self.ready_timeout = ready_timeout
        # how long a busy worker may leave a ping unanswered before it is replaced (_check_alive)
        self.answer_timeout = ready_timeout if answer_timeout is None else float(answer_timeout)
        self.workers = [self._new_worker() for _ in range(num_workers)]
        self.info = self._ready(self.workers)

    def _new_worker(self):
        return self._actor.remote(self.spec, self.device, self.threads, stack_versions())

    def _ready(self, workers: list) -> list[dict]:
        ray = import_ray()
        try:
            info = ray.get([w.ready.remote() for w in workers], timeout=self.ready_timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            have = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            raise TunesiftError(
                f"{len(workers)} Ray workers ({self.threads} CPU, {self.num_gpus:g} GPU each) were "
                f"not ready within {self.ready_timeout:g} s; the cluster has {have} free") from None
        except ray.exceptions.RayError as exc:
            self.close()
            raise TunesiftError(f"a Ray worker did not start: {_reason(exc)}") from None
        self._check_versions(info)  # first: another torch is the likeliest reason a model did not load
        bad = [i["error"] for i in info if i.get("error")]
        if bad:
            self.close()
            raise TunesiftError(f"a Ray worker could not load the model: {bad[0]}")
        return info

    def _check_versions(self, info: list[dict]) -> None:
        """Refuse (and close the pool) when a worker runs other code than this driver: other
        tokens or scores would land under the driver's cache keys."""
        ours = stack_versions()
        for i in info:
            why = version_mismatch(i.get("versions") or {}, ours)
            if why:
                self.close()
                raise TunesiftError(version_error(i.get("worker"), why))

    def close(self) -> None:
        """Remove the actors (their resources go back to the cluster)."""
        ray = import_ray()
        for w in getattr(self, "workers", []):
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # already gone
                pass
        self.workers = []

    def __enter__(self) -> RayBlockPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, kind: str, blocks: Iterable[Block], opt, store_root: str | Path, *,
              on_block: OnBlock | None = None, max_attempts: int = 3) -> dict[str, BlockResult]:
        """Score ``blocks`` of ``kind`` on the actors; see :func:`score_blocks_ray`."""
        results, todo = _split_cached(kind, blocks, store_root, on_block)
        if todo:
            self._run(kind, todo, opt, ArrayStore(store_root), results, on_block, max_attempts)
        return results

    def _run(self, kind: str, todo: list[Block], opt, store: ArrayStore,
             results: dict[str, BlockResult], on_block: OnBlock | None, max_attempts: int) -> None:
        def done(key: str, recs: list, res: BlockResult) -> None:
            check_block(kind, key, len(recs), res)
            bad = overflowed_rows(kind, res.rows, res.errors)
            if len(bad):  # stop at the first, as the local loop does; never cached
                raise overflow_error(kind, recs, bad, (self.spec or {}).get("dtype", "this dtype"))
            put_block(store, key, res)
            results[key] = res
            if on_block:
                on_block(key, res)

        self.dispatch([(key, list(recs)) for key, recs in todo],
                      lambda actor, recs: actor.score.remote(kind, recs, opt), done, max_attempts)

    def dispatch(self, tasks: list[tuple[str, object]], submit: Callable, done: Callable,
                 max_attempts: int = 3) -> None:
        """Run ``tasks`` (``(key, payload)`` pairs) on the actors, at most ``QUEUE_PER_WORKER``
        queued per actor: ``submit(actor, payload)`` starts one (returns its object ref) and
        ``done(key, payload, result)`` takes each result as it arrives, in this process.

        A task whose worker died is retried (``max_attempts`` tries in all), on a fresh actor when
        the old one is gone for good; a :class:`TunesiftError` raised in a task fails the job
        with its message.
        """
        ray = import_ray()
        if not self.workers:
            raise TunesiftError("the Ray worker pool is closed")
        queue = deque((key, payload, 1) for key, payload in tasks)
        inflight: dict = {}  # object ref -> (worker index, actor, key, payload, attempt)
        try:
            self._drain(queue, inflight, submit, done, max_attempts)
        finally:  # a failed job leaves no task running on the (reusable) actors
            for ref in inflight:
                try:
                    ray.cancel(ref)
                except Exception:  # already finished or gone
                    pass

    def _drain(self, queue: deque, inflight: dict, submit: Callable, done: Callable,
               max_attempts: int) -> None:
        ray = import_ray()
        load = [0] * len(self.workers)
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError)
        pings: dict[int, tuple] = {}  # worker -> (the actor pinged, its ping's ref, when it was sent)
        checked = time.monotonic()
        while queue or inflight:
            while queue and min(load) < QUEUE_PER_WORKER:
                w = load.index(min(load))
                key, payload, attempt = queue.popleft()
                actor = self.workers[w]
                inflight[submit(actor, payload)] = (w, actor, key, payload, attempt)
                load[w] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=LIVENESS_S)
            if time.monotonic() - checked >= LIVENESS_S:  # on its own clock: others finishing hide no silent one
                self._check_alive(pings, {w for w, *_ in inflight.values()})
                checked = time.monotonic()
            if not ready:
                continue
            ref = ready[0]
            w, actor, key, payload, attempt = inflight.pop(ref)
            load[w] -= 1
            try:
                res = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the task raised: a failure of the job, in one line
                if isinstance(exc.cause, TunesiftError):
                    raise TunesiftError(str(exc.cause)) from None
                raise TunesiftError(f"Ray worker failed on block {key}: {_reason(exc)}") from None
            except lost as exc:  # the worker died and Ray's own retries are used up
                if attempt >= max_attempts:
                    raise TunesiftError(f"Ray: block {key} failed {attempt} times, last: "
                                        f"{_reason(exc)}") from None
                log.warning("Ray worker lost while computing block %s (try %d of %d): %s", key,
                            attempt, max_attempts, _reason(exc))
                if isinstance(exc, ray.exceptions.ActorDiedError) and self.workers[w] is actor:
                    self._replace(w)  # gone for good (and not replaced yet): a fresh actor
                queue.appendleft((key, payload, attempt + 1))
                continue
            except ray.exceptions.RayError as exc:  # out of memory, a node gone, a result that cannot be read
                raise TunesiftError(f"Ray: block {key} failed: {_reason(exc)}") from None
            done(key, payload, res)

    def _check_alive(self, pings: dict, busy: set) -> None:
        """Ping each busy worker from its "ping" thread; kill one whose ping has gone unanswered for
        ``answer_timeout`` (default ``ready_timeout``): Ray is restarting it where it cannot be placed (its node left), or it is
        gone without an error reaching us. Its blocks then fail as lost and are sent again, to a
        fresh worker (:meth:`_replace`, itself bounded by ``ready_timeout``). A worker busy with a
        long block still answers, so no block is ever cut short for taking long."""
        ray = import_ray()
        now = time.monotonic()
        for w in busy:
            actor = self.workers[w]
            sent = pings.get(w)
            if sent is None or sent[0] is not actor:  # none yet, or the worker was replaced since
                pings[w] = (actor, actor.ready.options(concurrency_group="ping").remote(), now)
                continue
            _, ref, at = sent
            if ray.wait([ref], timeout=0)[0]:  # answered (or failed: the block's own error says why)
                pings.pop(w)
            elif now - at > self.answer_timeout:
                log.warning("Ray worker %d has not answered for %.0f s (restarting where it cannot be "
                            "placed?): replacing it", w, now - at)
                pings.pop(w)
                try:
                    ray.kill(actor, no_restart=True)  # its blocks fail as lost, then go to a fresh worker
                except Exception:  # already gone
                    pass

    def _replace(self, w: int) -> None:
        """A fresh actor for worker ``w``, waited for like the first ones: one the cluster cannot
        place is a :class:`TunesiftError` after ``ready_timeout``, not a job waiting forever."""
        ray = import_ray()
        try:
            ray.kill(self.workers[w], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[w] = self._new_worker()
        self.info[w] = self._ready([self.workers[w]])[0]


def check_block(kind: str, key: str, n: int, res: BlockResult) -> None:
    """Refuse a block of ``n`` records a worker sent back for the driver's ``key``: one whose
    :func:`~tunesift.backends.blocks.block_key` (``res.key``) is another or missing, or that holds
    error rows (the driver rendered every record of it), was tokenised differently and must not
    be stored under ``key``; a wrong shape is a bug."""
    if getattr(res, "key", None) != key or res.errors:
        said = f"; it reported: {next(iter(res.errors.values()))}" if res.errors else ""
        raise TunesiftError(f"Ray worker {res.worker} tokenised block {key} differently from the driver "
                            f"(another tokenizer, chat template, transformers or tunesift version); "
                            f"nothing stored{said}")
    width = len(BLOCK_SCORERS[kind][0])
    if res.rows.shape != (n, width):
        raise RuntimeError(f"Ray: block {key} came back with shape {res.rows.shape}, expected {(n, width)}")


def _split_cached(kind: str, blocks: Iterable[Block], store_root: str | Path,
                  on_block: OnBlock | None) -> tuple[dict[str, BlockResult], list[Block]]:
    """Blocks already in the store (read back, ``computed=False``) and the ones still to score
    (each key once)."""
    if kind not in BLOCK_SCORERS:
        raise OptionError(f"no block scorer '{kind}': use one of {', '.join(BLOCK_SCORERS)}")
    width = len(BLOCK_SCORERS[kind][0])
    store = ArrayStore(store_root)
    results: dict[str, BlockResult] = {}
    todo: list[Block] = []
    queued: set[str] = set()
    for key, recs in blocks:
        if key in results or key in queued:
            continue
        got = get_block(store, key, len(recs), width, inf_ok=inf_columns(kind))
        if got is None:
            todo.append((key, recs))
            queued.add(key)
        else:
            results[key] = got
            if on_block:
                on_block(key, got)
    return results, todo


def score_blocks_ray(kind: str, spec: dict, blocks: Iterable[Block], opt, store_root: str | Path,
                     *, address: str | None = None, num_workers: int = 2,
                     num_gpus: float | None = None, threads_per_worker: int = 1,
                     on_block: OnBlock | None = None,
                     pool: RayBlockPool | None = None) -> dict[str, BlockResult]:
    """Score blocks of a per-record scorer on Ray; every result lands in the score cache.

    ``kind``: a key of ``blocks.BLOCK_SCORERS`` (``donod``, ``loss``, ``ifd``, ``selectit``).
    ``spec``: :func:`model_spec` of the driver's model (``path``, resolved ``dtype``,
    ``fingerprint``). ``blocks``: ``(cache key, records)`` pairs, each key the
    :func:`~tunesift.backends.blocks.block_key` of its records (as the local loop computes it):
    every worker computes it again and a block whose key differs is refused. ``opt``: the
    :class:`~tunesift.methods.options.Options`
    (``template``, ``max_length``, ``token_budget``, ``selectit_alpha`` matter). ``store_root``:
    the folder of the kind's :class:`~tunesift.store.ArrayStore` (``<cache>/<kind>``).

    Blocks already in the store are read back and not sent to Ray (if all are, Ray is not even
    started); the others are scored by ``num_workers`` actors (a fresh pool, closed at the end,
    unless ``pool`` is given) and each is written to the store by this process as soon as it
    arrives. Ray is joined at ``address`` or started locally with ``num_workers *
    threads_per_worker`` CPUs, unless already initialised; a connection made here is closed at
    the end. ``num_gpus`` per worker: see :class:`RayBlockPool`.

    Returns ``{key: BlockResult}`` for every distinct key: ``rows`` ``(len(records), width)``
    float64 in the order of ``BLOCK_SCORERS[kind][0]``; ``errors`` ``{index within the block:
    reason}`` only for blocks read back from a cache that holds some (a worker's block with error
    rows is refused: the driver rendered every one of its records, so the worker rendered them
    differently). ``computed`` tells a block scored now from one read back. ``on_block(key,
    result)`` is called once per key as results come in (cached ones first), e.g. to advance a
    progress bar.

    Raises :class:`TunesiftError` when Ray is missing or cannot start, a worker cannot load the
    model (or finds other weights than ``spec['fingerprint']``, or runs other code), a worker
    tokenised a block differently (nothing of it is stored), or a scorer raises one; a block
    whose workers keep dying fails the job after 3 tries.
    """
    results, todo = _split_cached(kind, blocks, store_root, on_block)
    if not todo:
        return results
    with (nullcontext(pool) if pool is not None else
          ray_pool(spec, address=address, num_workers=num_workers, num_gpus=num_gpus,
                   threads_per_worker=threads_per_worker)) as p:
        p._run(kind, todo, opt, ArrayStore(store_root), results, on_block, max_attempts=3)
    return results


@contextmanager
def ray_pool(spec: dict | None, *, address: str | None = None, num_workers: int = 2,
             num_gpus: float | None = None, threads_per_worker: int = 1) -> Iterator[RayBlockPool]:
    """A :class:`RayBlockPool` on the cluster at ``address`` (or a local instance with
    ``num_workers * threads_per_worker`` CPUs), closed at the end; a Ray connection made here
    is shut down at the end too."""
    started = init_ray(address, num_cpus=num_workers * threads_per_worker)
    pool = None
    try:
        pool = RayBlockPool(spec, num_workers=num_workers, num_gpus=num_gpus,
                            threads_per_worker=threads_per_worker)
        yield pool
    finally:
        if pool is not None:
            pool.close()
        if started:
            import_ray().shutdown()


class LazyPool:
    """A :func:`ray_pool` started on first use (calling the object returns the pool) and closed
    by :meth:`close` (or ``with``): a run whose results are all cached never starts Ray."""

    def __init__(self, spec: dict | None, **kw):
        self.spec, self.kw = spec, kw
        self._stack: ExitStack | None = None
        self._pool: RayBlockPool | None = None

    def __call__(self) -> RayBlockPool:
        if self._pool is None:
            self._stack = ExitStack()
            self._pool = self._stack.enter_context(ray_pool(self.spec, **self.kw))
        return self._pool

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._pool = None

    def __enter__(self) -> LazyPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayKernelRunner:
    """A :class:`~tunesift.scoring.utility.KernelRunner` on Ray: the no-example statistics in
    chunks of ``base_rows`` targets (default ``utility.BASE_ROWS``, as the local run) and every
    missing column block as one task each, on the actors of ``pool()`` (a :class:`LazyPool`, or
    ``lambda: pool`` for a :class:`RayBlockPool` with the driver's model). The job (token ids,
    pattern) goes into Ray's object store once per kernel and each actor fetches it once;
    :func:`~tunesift.scoring.utility.utility_kernel` stores each block in the cache as it
    arrives, so a killed run resumes from the finished blocks."""

    def __init__(self, pool: Callable[[], RayBlockPool], base_rows: int | None = None):
        self.pool, self.base_rows = pool, base_rows
        self._put: tuple | None = None  # (job, [ref]) of the last job put in the object store

    def _job_ref(self, job) -> list:
        if self._put is None or self._put[0] is not job:
            self._put = (job, [import_ray().put(job)])
        return self._put[1]

    def base(self, job, token_budget: int, rows: np.ndarray | None = None,
             on_part: Callable[[np.ndarray, np.ndarray], None] | None = None) -> tuple[np.ndarray, dict]:
        """(2, n_t) no-example statistics of the targets ``rows`` (default all; NaN elsewhere), in the
        local loop's parts of ``BASE_ROWS`` rows, and the work counts: a learned run labelling 1% of
        the rows pays for 1% of the no-example passes here too. ``on_part(part rows, (2, len)
        statistics)`` as each part arrives (the caller saves it: a killed run resumes from it)."""
        from ..scoring import utility
        from ..scoring.kernel_blocks import add_counts, work_counts

        pool = self.pool()  # first: Ray is initialised (as asked) before anything is put
        job_ref = self._job_ref(job)
        rows = np.arange(job.n_t) if rows is None else np.asarray(rows, dtype=np.int64)
        step = self.base_rows or utility.BASE_ROWS
        parts = [rows[r:r + step] for r in range(0, len(rows), step)]
        base = np.full((2, job.n_t), np.nan)
        counts = work_counts()

        def done(key, part, res) -> None:
            base[:, part] = res[0]
            add_counts(counts, res[1])
            if on_part is not None:
                on_part(part, res[0])

        pool.dispatch([(f"base rows {p[0]}-{p[-1]}", p) for p in parts],
                      lambda actor, part: actor.kernel_base.remote(job_ref, token_budget, part.tolist()), done)
        return base, counts

    def blocks(self, job, base: np.ndarray, spans: list[tuple[int, int]], token_budget: int,
               on_block) -> None:
        if not spans:
            return
        pool = self.pool()
        job_ref, base_ref = self._job_ref(job), [import_ray().put(base)]
        pool.dispatch(
            [(f"columns {c0}-{c1}", (c0, c1)) for c0, c1 in spans],
            lambda actor, span: actor.kernel_block.remote(job_ref, base_ref, *span, token_budget),
            lambda key, span, res: on_block(span[0], span[1], res[0], res[1]))


class RayEmbedRunner:
    """Embeds chunks of texts on the actors of ``pool()`` (see
    :func:`~tunesift.scoring.embedding.embed_records`, which caches each chunk as it arrives)."""

    def __init__(self, pool: Callable[[], RayBlockPool]):
        self.pool = pool

    def embed(self, chunks: list[tuple[int, list[str]]], on_chunk: Callable[[int, np.ndarray], None], *,
              precision: str = "float32") -> None:
        """``chunks``: ``(start, texts)`` pairs; ``on_chunk(start, (len(texts), 384) array)``. Each
        worker checks its encoder against this process's (part of the cache key)."""
        from ..scoring import embedding

        if chunks:
            fingerprint = embedding.embedder_fingerprint()
            self.pool().dispatch([(f"texts {start}-{start + len(texts)}", (start, texts))
                                  for start, texts in chunks],
                                 lambda actor, chunk: actor.embed.remote(chunk[1], precision, fingerprint),
                                 lambda key, chunk, res: on_chunk(chunk[0], res))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens at (Ray itself retries for minutes).
    ``auto``, ``local`` and ``ray://`` addresses are left to Ray."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise TunesiftError(f"cannot reach the Ray cluster at '{address}': {first_line(exc)} "
                            f"(start it with `ray start --head`, or leave out --ray-address "
                            f"for a local instance)") from None


def _reason(exc: BaseException) -> str:
    """The most telling line of a Ray error: the original exception's message when there is one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return first_line(cause)
    for line in reversed(str(exc).strip().splitlines()):  # ActorDiedError: the creation error is last
        if line.strip():
            return line.strip()
    return type(exc).__name__
