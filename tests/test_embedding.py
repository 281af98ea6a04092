"""Sentence-embedding kernel (DELIFT SE) and k-nearest-neighbour pair patterns."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import tiny

from tunesift.errors import OptionError
from tunesift.scoring import embedding as emb


def rec(i, prompt, response, context=()):
    return SimpleNamespace(
        id=f"e{i}", prompt=prompt, response=response, context=tuple(context), line=i + 1
    )


RECS = [
    rec(0, "What is 2 + 2?", "4"),
    rec(1, "What is 3 + 5?", "8"),
    rec(2, "Name the capital of France.", "Paris."),
    rec(3, "Which city is the capital of Germany?", "Berlin."),
    rec(
        4,
        "Write a haiku about the sea.",
        "Waves fold into foam / salt wind combs the restless blue / gulls stitch sky to shore",
    ),
]


def test_record_text():
    assert emb.record_text(RECS[0]) == "What is 2 + 2?\n\n4"
    r = rec(
        9, "And now?", "Done.", [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]
    )
    assert emb.record_text(r) == "Be brief.\n\nHi\n\nHello\n\nAnd now?\n\nDone."


def test_embed_records_normalised_cached_and_meaningful(tmp_path, monkeypatch):
    e = emb.embed_records(RECS, cache_dir=tmp_path, batch_size=2)
    assert e.shape == (5, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    k = emb.cosine_similarity_kernel(e, e)
    # arithmetic questions are closer to each other than to capitals, and vice versa
    assert k[0, 1] > k[0, 2] and k[2, 3] > k[2, 0]
    # a second call is served by the cache: the encoder must not be touched
    monkeypatch.setattr(emb, "_encoder", lambda device: pytest.fail("encoder called despite cache"))
    again = emb.embed_records(RECS, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, e)
    assert emb.embed_records([], cache_dir=tmp_path).shape == (0, 384)


def test_bf16_embeddings_are_close_and_cached_apart(tmp_path, monkeypatch):
    """--dtype bfloat16 embeds under bf16 autocast: close to float32 (cosine > 0.999, the same
    neighbours here), in its own cache entry, and an unknown precision is a clear error."""
    e32 = emb.embed_records(RECS, cache_dir=tmp_path)
    e16 = emb.embed_records(RECS, cache_dir=tmp_path, precision="bfloat16")
    assert e16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e16, axis=1), 1.0, atol=1e-5)
    cos = (e32 * e16).sum(axis=1)
    assert cos.min() > 0.999
    k32, k16 = e32 @ e32.T, e16 @ e16.T
    np.fill_diagonal(k32, -1)
    np.fill_diagonal(k16, -1)
    # the same nearest neighbour wherever fp32's top two are further apart than bf16 moves any entry
    # (bf16 rounds differently with AMX, AVX512-BF16 or neither)
    top2 = np.sort(k32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * np.abs(k32 - k16).max()
    assert clear.sum() >= len(k32) - 1 and (k32.argmax(axis=1) == k16.argmax(axis=1))[clear].all()
    assert len(list(tmp_path.rglob("emb.npy"))) == 2  # two cache entries, neither served for the other
    monkeypatch.setattr(emb, "_encoder", lambda device: pytest.fail("encoder called despite cache"))
    np.testing.assert_array_equal(emb.embed_records(RECS, cache_dir=tmp_path, precision="bfloat16"), e16)
    with pytest.raises(OptionError, match="precision 'float16'"):
        emb.embed_records(RECS, cache_dir=tmp_path, precision="float16")
    assert emb.embed_precision("bfloat16", "cpu") == "bfloat16"
    assert emb.embed_precision("auto", "cpu") == emb.embed_precision("float32", "cpu") == "float32"


def test_cosine_similarity_kernel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)) * 3, rng.normal(size=(3, 6))
    k = emb.cosine_similarity_kernel(a, b)
    assert k.shape == (4, 3) and k.dtype == np.float32
    an, bn = (
        a / np.linalg.norm(a, axis=1, keepdims=True),
        b / np.linalg.norm(b, axis=1, keepdims=True),
    )
    np.testing.assert_allclose(k, (an @ bn.T + 1) / 2, atol=1e-6)
    assert k.min() >= 0 and k.max() <= 1
    np.testing.assert_allclose(emb.cosine_similarity_kernel(a, -a).diagonal(), 0.0, atol=1e-6)
    np.testing.assert_allclose(emb.cosine_similarity_kernel(a, a).diagonal(), 1.0, atol=1e-6)


def brute_knn(a, b, k, exclude_self=False):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = (a @ b.T).astype(np.float32)
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    out = np.zeros(s.shape, dtype=bool)
    for i, row in enumerate(s):
        out[i, np.argsort(-row, kind="stable")[:k]] = True
    return out


@pytest.mark.parametrize("block_rows", [None, 1, 7])
def test_knn_pattern_matches_brute_force(block_rows):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(23, 8)).astype(np.float32)
    b = rng.normal(size=(17, 8)).astype(np.float32)
    p = emb.knn_pattern(a, b, 5, block_rows=block_rows)
    assert sp.isspmatrix_csr(p) and p.dtype == bool and p.shape == (23, 17)
    assert (np.diff(p.indptr) == 5).all()
    np.testing.assert_array_equal(p.toarray(), brute_knn(a, b, 5))
    s = emb.knn_pattern(a, a, 4, exclude_self=True, block_rows=block_rows)
    assert not s.diagonal().any() and (np.diff(s.indptr) == 4).all()
    np.testing.assert_array_equal(s.toarray(), brute_knn(a, a, 4, exclude_self=True))


def test_knn_pattern_ties_and_caps():
    base = np.eye(3, 4, dtype=np.float32)
    b = np.concatenate([base, base, base])  # every vector three times: ties everywhere
    p1 = emb.knn_pattern(base, b, 2)
    p2 = emb.knn_pattern(base, b, 2, block_rows=1)
    np.testing.assert_array_equal(p1.toarray(), p2.toarray())
    assert p1[0].indices.tolist() == [0, 3]  # the two lowest-index copies of the exact match
    full = emb.knn_pattern(base, b, 100)  # k capped at the number of columns
    assert full.nnz == 3 * 9
    selfp = emb.knn_pattern(b, b, 100, exclude_self=True)
    assert selfp.nnz == 9 * 8 and not selfp.diagonal().any()
    assert emb.knn_pattern(base, b, 0).nnz == 0
    with pytest.raises(OptionError):
        emb.knn_pattern(base, b, -1)


def test_cosine_kernel_at_a_pattern_equals_the_dense_kernel_there():
    import scipy.sparse as sp

    from tunesift.scoring.embedding import cosine_similarity_kernel, knn_pattern

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(7, 5))
    pattern = knn_pattern(a, b, 3)
    sparse = cosine_similarity_kernel(a, b, pattern)
    assert sp.issparse(sparse) and sparse.dtype == np.float32 and sparse.nnz == 27
    dense = cosine_similarity_kernel(a, b)
    r, c = pattern.nonzero()
    tiny.assert_close_across_runs(sparse.toarray()[r, c], dense[r, c])  # row dots vs a matrix product


def test_interrupted_embedding_resumes_from_its_chunks(tmp_path, monkeypatch):
    """Finished chunks are cached while a run is under way; a rerun embeds only the rest, and
    the chunks are removed once the whole array is stored."""
    recs = [rec(i, f"Question {i}?", f"Answer {i}.") for i in range(7)]
    want = emb.embed_records(recs, cache_dir=False)
    calls, done = [], []
    real = emb.embed_texts

    class Killed(Exception):
        pass

    def flaky(texts, **kw):
        calls.append(len(texts))
        if len(calls) == 2 and not done:
            done.append(1)
            raise Killed  # killed during the second chunk
        return real(texts, **kw)

    monkeypatch.setattr(emb, "embed_texts", flaky)
    with pytest.raises(Killed):
        emb.embed_records(recs, cache_dir=tmp_path, chunk_size=3)
    assert len(list(tmp_path.rglob("chunk-*.npy"))) == 1
    calls.clear()
    got = emb.embed_records(recs, cache_dir=tmp_path, chunk_size=3)
    assert calls == [3, 1]  # the first chunk came from the cache
    # chunks of 3 vs one batch of 7 (other padding and shapes): equal up to float32 rounding of
    # unit vectors (measured 1e-7), never bit for bit
    tiny.assert_close_across_runs(got, want, rtol=1e-5, atol=1e-5)
    assert [p.name for p in tmp_path.rglob("*.npy")] == ["emb.npy"]
