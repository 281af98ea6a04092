"""The Ray backend starts its own local Ray instance when none is running, as asked (sized to the
workers), and shuts it down at the end, for the DELIFT kernel too (whose job goes into Ray's
object store: putting it must not start a default Ray first)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")


def test_delift_on_ray_from_nothing_starts_and_stops_its_own_ray(tiny_lm, tmp_path):
    from tunesift.pipeline import select

    if ray.is_initialized():  # another module's instance: start from nothing
        ray.shutdown()
    rows = [{"id": f"r{i}", "instruction": f"Count to {i}.", "output": " ".join(map(str, range(i + 1)))}
            for i in range(9)]
    kw = dict(method="delift", budget=3, knn=0, token_budget=256)  # dense: no embeddings first
    local = select(rows, lm=tiny_lm, cache_dir=str(tmp_path / "a"), **kw)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    remote = select(rows, lm=tiny_lm, cache_dir=str(tmp_path / "b"), backend="ray", ray_workers=1, ray_gpus=0, **kw)
    assert not ray.is_initialized()  # the instance it started is gone
    # and the signal handlers are the caller's again (ray.init left its own SIGTERM handler, a
    # sys.exit: the CLI's SIGTERM became exit status 15 without its one line)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    np.testing.assert_array_equal(local.order, remote.order)
    assert any((tmp_path / "b" / "delift-utility").rglob("cols-*.npy"))
