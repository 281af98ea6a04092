"""Kill test: SIGKILL a selection during scoring, run it again: it resumes from the cache and its
outputs are byte-identical to an uninterrupted run (same machine, same thread count: the blocks are
the same computations). The run kills itself right after its first block is stored, so the test
does not depend on how fast the CPU is (a timed external kill can miss a fast machine's run)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny


def _cli(args, env):
    return [sys.executable, "-m", "tunesift", *map(str, args)]


# The CLI, SIGKILLed by itself once the first cache block has been stored (mid-scoring).
_KILL_AFTER_FIRST_BLOCK = """
import os, signal, sys
from tunesift import store
from tunesift.cli import main
put = store.ArrayStore.put
def put_then_die(self, name, array):
    put(self, name, array)
    os.kill(os.getpid(), signal.SIGKILL)
store.ArrayStore.put = put_then_die
sys.exit(main(sys.argv[1:]))
"""


def _killed_cli(args):
    return [sys.executable, "-c", _KILL_AFTER_FIRST_BLOCK, *map(str, args)]


@pytest.fixture(scope="module")
def slow_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    model = tiny.save_tiny(root / "model", layers=6, hidden=384)  # slow enough to kill mid-scoring
    data = root / "data.jsonl"
    with open(data, "w") as fh:
        for i in range(64):
            answer = " ".join(f"step {j}: {i} plus {j} is {i + j}." for j in range(12))
            fh.write(json.dumps({"id": f"r{i}", "instruction": f"Count from {i}.", "output": answer}) + "\n")
    return root, model, data


def _chunks(cache: Path) -> dict[str, float]:
    d = cache / "donod"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.npy")} if d.exists() else {}


def test_sigkill_during_scoring_then_resume_is_byte_identical(slow_setup, tmp_path):
    root, model, data = slow_setup
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    common = ["select", data, "--method", "donod", "--budget", "0.25", "--model", model, "--token-budget", "512", "-q"]

    # the reference: an uninterrupted run with its own cache
    ref = subprocess.run(_cli(common + ["--out", tmp_path / "ref", "--cache-dir", tmp_path / "c0"], env), env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    total = len(_chunks(tmp_path / "c0"))
    from tunesift.io.records import read_records
    from tunesift.store import content_spans

    spans = content_spans([(r.prompt, r.response, r.context) for r in read_records(data)], 16)
    assert total == len(spans) >= 3  # 64 records, about 16 per block (cut by content)

    cache, out = tmp_path / "c1", tmp_path / "out"
    proc = subprocess.run(_killed_cli(common + ["--out", out, "--cache-dir", cache]), env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done = _chunks(cache)
    assert len(done) == 1 < total
    assert not out.exists()  # nothing partial was written

    again = subprocess.run(_cli(common + ["--out", out, "--cache-dir", cache], env), env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    after = _chunks(cache)
    assert len(after) == total
    assert all(after[name] == mtime for name, mtime in done.items())  # finished blocks were not recomputed
    for name in ("selected.jsonl", "scores.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    m_ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    m_new = json.loads((out / "manifest.json").read_text())
    for m in (m_ref, m_new):
        m.pop("timings"), m["options"].pop("cache_dir")
    assert m_ref == m_new


def test_a_killed_writes_temporary_files_are_swept_once_stale(tmp_path):
    """A SIGKILL between mkstemp and the rename left `.<name>.npy.*.tmp` files that nothing removed
    (a dense kernel block's is ~100 MB at 100,000 targets)."""
    import os
    import time

    import numpy as np

    from tunesift import store as st

    folder = tmp_path / "blocks"
    folder.mkdir()
    old, fresh, mine = folder / ".cols-1.npy.abc.tmp", folder / ".cols-2.npy.def.tmp", folder / "notes.tmp"
    for p in (old, fresh, mine):
        p.write_bytes(b"x")
    hour_ago = time.time() - st.STALE_TEMP_S - 10
    os.utime(old, (hour_ago, hour_ago))
    os.utime(mine, (hour_ago, hour_ago))
    st.ArrayStore(folder).put("kept", np.zeros(2))
    # the stale temp file is gone; a concurrent writer's fresh one and a file not named like ours stay
    assert not old.exists() and fresh.exists() and mine.exists()
    assert st.ArrayStore(folder).get("kept") is not None


def test_cache_blocks_follow_content_so_an_edit_rescores_only_its_neighbourhood():
    """Fixed slices [0, 64), [64, 128), ... shifted every later block when one record was inserted
    at the front (or set aside as unscorable): the whole input was scored again."""
    import random

    from tunesift.store import content_spans

    rng = random.Random(0)
    items = [[rng.randrange(50_000) for _ in range(rng.randrange(5, 40))] for _ in range(3000)]
    spans = content_spans(items, 64)
    sizes = [e - s for s, e in spans]
    assert spans[0][0] == 0 and spans[-1][1] == len(items) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert min(sizes[:-1]) >= 32 and max(sizes) <= 128 and 48 <= len(items) / len(spans) <= 80
    blocks = {tuple(map(tuple, items[s:e])) for s, e in spans}
    edited = [[1, 2, 3]] + items[:1500] + items[1501:]  # one record in front, one removed mid-way
    after = {tuple(map(tuple, edited[s:e])) for s, e in content_spans(edited, 64)}
    assert len(blocks - after) <= 4  # the blocks holding the two edits (and a cut each may move)
    assert content_spans(items, 64) == spans  # the same in every run (sha256, not Python's hash)
    assert content_spans([], 64) == [] and content_spans(items[:3], 1) == [(0, 1), (1, 2), (2, 3)]
    assert max(e - s for s, e in content_spans(items, 3)) <= 6 and len(content_spans(items, 3)) < len(items)
