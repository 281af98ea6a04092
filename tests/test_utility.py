"""DELIFT utility kernel: the prefix-reuse scorer equals the plain full-recompute scorer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import tiny
import torch

from tunesift.errors import OptionError
from tunesift.render import Renderer, turn_format
from tunesift.scoring.kernel_blocks import BLOCK_PAIRS, column_spans
from tunesift.scoring.logprobs import (
    Continuation,
    ResponseScorer,
    expand_cache,
    kv_batches,
    length_batches,
)
from tunesift.scoring.utility import (
    UtilityKernel,
    plain_utility_kernel,
    to_similarity,
    utility_kernel,
)

TOL = 1e-4
TEXTS = tiny.CORPUS[:11]


rec = tiny.rec


def records(n: int, *, long_every: int = 0) -> list[SimpleNamespace]:
    out = []
    for i in range(n):
        prompt = TEXTS[i % 11] + (
            " " + TEXTS[(i + 5) % 11] * 3 if long_every and i % long_every == 0 else ""
        )
        out.append(rec(i, prompt, TEXTS[(3 * i + 1) % 11]))
    if n > 2:  # one record with earlier chat turns
        out[2] = rec(2, TEXTS[2], TEXTS[4], [("user", "hi"), ("assistant", "hello there")])
    return out


def renderer_for(lm, max_length: int = 512) -> Renderer:
    return Renderer(lm.tokenizer, turn_format(lm.tokenizer), max_length=max_length)


def dense_stats(k: UtilityKernel) -> list[np.ndarray]:
    conv = (lambda m: m.toarray()) if k.is_sparse else (lambda m: m)
    return [conv(k.sq_err), conv(k.logp), k.base_sq_err, k.base_logp]


def assert_close(fast: UtilityKernel, plain: UtilityKernel, tol: float = TOL) -> None:
    assert fast.shape == plain.shape
    np.testing.assert_array_equal(fast.n_tokens, plain.n_tokens)
    for a, b in zip(dense_stats(fast), dense_stats(plain), strict=True):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, atol=tol, rtol=0, equal_nan=True)
    for dist in ("rmse", "pmi"):
        a, b = fast.values(dist), plain.values(dist)
        if sp.issparse(a):
            np.testing.assert_array_equal(a.indptr, b.indptr)
            np.testing.assert_array_equal(a.indices, b.indices)
            a, b = a.data, b.data
        np.testing.assert_allclose(a, b, atol=tol, rtol=0, equal_nan=True)


# -- equality with the plain scorer ----------------------------------------------------------


def test_dense_chat_equals_plain_and_sequences_are_the_rendered_ones(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(7)
    calls = []
    fast = utility_kernel(
        tiny_lm,
        r,
        recs,
        recs,
        cache_dir=False,
        token_budget=96,
        progress=lambda d, t: calls.append((d, t)),
    )
    plain = plain_utility_kernel(tiny_lm, r, recs, recs)
    assert_close(fast, plain)
    uf = fast.values()
    assert uf.shape == (7, 7)
    assert np.isnan(np.diag(uf)).all() and not np.isnan(uf[~np.eye(7, dtype=bool)]).any()
    assert fast.info["pairs"] == 42 and fast.info["prefixes"] == 7
    assert calls[0] == (0, 42) and calls[-1] == (42, 42)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    # the no-example arm is exactly the Renderer's zero-shot sequence
    for t, n in zip(recs, fast.n_tokens, strict=True):
        ids, mask = r.sequence(t)
        assert sum(mask) == n


def test_plain_template_rectangular_with_truncation(tiny_plain_lm):
    lm = tiny_plain_lm
    targets = records(6, long_every=2)
    examples = [
        rec(10 + k, TEXTS[k] * (1 + 3 * (k % 3)), TEXTS[k + 1] * (1 + 2 * (k % 2)))
        for k in range(5)
    ]
    base = renderer_for(lm, 4096)
    seq_lens = [
        len(base.header) + len(e.prompt) + len(e.response) for e in map(base.encode, targets)
    ]
    max_length = max(seq_lens)  # no room for any example before the longest target
    r = renderer_for(lm, max_length)
    fast = utility_kernel(lm, r, targets, examples, cache_dir=False, token_budget=128)
    plain = plain_utility_kernel(lm, r, targets, examples)
    assert fast.info["cut_prefixes"] > 0 and fast.info["empty_prefixes"] > 0  # both cases happen
    assert fast.info["mixed_batches"] > 0  # rows with differently cut prefixes in one batch
    assert not np.isnan(fast.values()).any()  # different records: nothing excluded
    assert_close(fast, plain)
    # examples cut to nothing are the no-example arm: UF exactly 0 (plain: the same sequence)
    cut_to_nothing = np.array(
        [
            [
                len(r.fit_prefix(r.example_prefix(e), len(c.prompt) + len(c.response)))
                == len(r.header)
                for e in examples
            ]
            for c in map(r.encode, targets)
        ]
    )
    assert cut_to_nothing.any()
    for dist in ("rmse", "pmi"):
        assert (fast.values(dist)[cut_to_nothing] == 0.0).all()
        assert np.abs(plain.values(dist)[cut_to_nothing]).max() < 1e-6


def test_sparse_pattern_kept_and_equals_plain_and_dense(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(8)
    rng = np.random.default_rng(0)
    dense_pat = rng.random((8, 8)) < 0.4
    dense_pat[:, 3] = False  # an empty column
    dense_pat[5, :] = False  # an empty row
    dense_pat[1, 1] = dense_pat[6, 6] = True  # diagonal entries in the pattern
    pattern = sp.csr_matrix(dense_pat)
    fast = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, cache_dir=False, block_size=3)
    plain = plain_utility_kernel(tiny_lm, r, recs, recs, pairs=pattern)
    # a target with no pair to score gets no no-example pass (NaN): only targets with pairs pay it
    assert np.isnan(fast.base_sq_err[5]) and np.isnan(fast.base_logp[5])
    assert np.isfinite(np.delete(fast.base_logp, 5)).all()
    plain.base_sq_err[5] = plain.base_logp[5] = np.nan
    assert_close(fast, plain)
    uf = fast.values()
    assert sp.isspmatrix_csr(uf) and uf.shape == (8, 8)
    np.testing.assert_array_equal(uf.indptr, pattern.indptr)
    np.testing.assert_array_equal(uf.indices, pattern.indices)
    assert np.isnan(uf[1, 1]) and np.isnan(uf[6, 6])  # excluded diagonal entries hold NaN
    full = utility_kernel(tiny_lm, r, recs, recs, cache_dir=False).values("pmi")
    coo = fast.values("pmi").tocoo()
    off = coo.row != coo.col
    # other batches, so float32 rounding differs: PMI is a difference of mean log-probs (~10),
    # so its noise is absolute, ~1e-6 (measured 4e-7 between two token budgets)
    tiny.assert_close_across_runs(coo.data[off], full[coo.row[off], coo.col[off]], rtol=1e-5, atol=1e-5)
    assert fast.info["pairs"] == dense_pat.sum() - np.diag(dense_pat).sum()
    assert fast.info["mixed_batches"] > 0  # rows of several examples shared forward batches


def test_diagonal_rules(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(4)
    copies = [SimpleNamespace(**vars(x)) for x in recs]  # same ids, other objects: detected
    k = utility_kernel(tiny_lm, r, recs, copies, cache_dir=False)
    assert np.isnan(np.diag(k.values())).all()
    # another set numbered the same way (ids r0..r3, other texts) is not the pool: no diagonal left out
    others = [SimpleNamespace(**{**vars(x), "response": x.response + " More."}) for x in recs]
    assert not np.isnan(utility_kernel(tiny_lm, r, recs, others, cache_dir=False).values()).any()
    kept = utility_kernel(tiny_lm, r, recs, recs, exclude_diagonal=False, cache_dir=False)
    forced = utility_kernel(tiny_lm, r, recs, copies, same=False, cache_dir=False)
    assert not np.isnan(kept.values()).any() and not np.isnan(forced.values()).any()
    plain = plain_utility_kernel(tiny_lm, r, recs, recs, exclude_diagonal=False)
    assert_close(kept, plain)
    # self-utility: the model sees its own answer, which it can copy
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(kept.values()[off], k.values()[off], atol=1e-6)


def test_token_budget_does_not_change_values(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(6)
    one = utility_kernel(
        tiny_lm, r, recs, recs, cache_dir=False, token_budget=1
    )  # one row per batch
    big = utility_kernel(tiny_lm, r, recs, recs, cache_dir=False, token_budget=100_000)
    assert one.info["forwards"] == 7 + 6 + 6 * 5  # 7 prefixes, then one forward per row
    assert big.info["forwards"] < one.info["forwards"]
    # summed log-probs reach ~160 here: float32 rounding of other batch shapes is relative
    # (measured 6e-6 absolute), so an absolute 1e-5 would be too tight on another CPU
    for a, b in zip(dense_stats(one), dense_stats(big), strict=True):
        tiny.assert_close_across_runs(a, b, rtol=1e-5, atol=1e-5)


def test_distances_match_a_hand_computation(tiny_plain_lm):
    lm = tiny_plain_lm
    r = renderer_for(lm)
    recs = records(3)
    k = utility_kernel(lm, r, recs, recs, cache_dir=False)
    i, j = 0, 2
    enc = r.encode(recs[i])

    def probs(prefix):
        ids = prefix + enc.prompt + enc.response
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
        p = logits.softmax(-1)
        start = len(prefix) + len(enc.prompt)
        return np.array([float(p[t - 1, ids[t]]) for t in range(start, len(ids))])

    p0, p1 = probs(r.header), probs(r.example_prefix(recs[j]))
    rmse = math.sqrt(np.mean((1 - p0) ** 2)) - math.sqrt(np.mean((1 - p1) ** 2))
    pmi = np.mean(np.log(p1)) - np.mean(np.log(p0))
    assert k.n_tokens[i] == len(enc.response) == len(p0)
    assert abs(k.values("rmse")[i, j] - rmse) < 1e-5
    assert abs(k.values("pmi")[i, j] - pmi) < 1e-5
    np.testing.assert_array_equal(k.values(), k.values("rmse"))  # rmse is the default
    with pytest.raises(OptionError):
        k.values("kl")
    lean = utility_kernel(lm, r, recs, recs, cache_dir=False, distance_stats=False)
    assert lean.sq_err is None
    np.testing.assert_array_equal(lean.values("pmi"), k.values("pmi"))
    with pytest.raises(OptionError):
        lean.values("rmse")


def test_length_batches_respect_budget_and_avoid_padding():
    lengths = [100, 10, 12, 95, 11, 300, 9, 98]
    batches = length_batches(lengths, budget=400, overhead=8)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 400
    # long and short items are never padded together: {300}, {100, 98, 95}, {12, 11, 10, 9}
    assert [sorted(lengths[i] for i in b) for b in batches] == [
        [300],
        [95, 98, 100],
        [9, 10, 11, 12],
    ]
    assert length_batches([500, 20], budget=100) == [[0], [1]]  # over-budget items go alone
    assert length_batches([], budget=100) == []


def test_kv_batches_bound_cached_tokens():
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, 300, 40).tolist()
    length = rng.integers(1, 60, 40).tolist()
    prefix[7], length[7] = 900, 50  # over the budget on its own
    batches = kv_batches(range(40), prefix, length, budget=600)
    assert sorted(r for b in batches for r in b) == list(range(40))
    assert [7] in batches
    for b in batches:
        held = len(b) * (max(prefix[r] for r in b) + max(length[r] for r in b))
        assert len(b) == 1 or held <= 600
    # longest prefixes first, and a batch closes only when the next row would pass the budget
    assert kv_batches([0, 1, 2, 3], [100, 10, 200, 10], [10, 10, 10, 10], budget=400) == [[2], [0, 1, 3]]
    assert kv_batches([], [], [], budget=10) == []


def test_kv_budget_bounds_every_forward_and_keeps_values(tiny_lm):
    """Short continuations after long prefixes: rows x (prefix + continuation) stays within the
    KV budget in every forward (mixed-prefix bank and single-prefix batches), same numbers."""
    r = renderer_for(tiny_lm)
    recs = records(11, long_every=3)
    encs = [r.encode(x) for x in recs]
    groups = [(r.example_prefix(recs[j]), [Continuation(tuple(e.prompt + e.response), len(e.response))
                                           for e in encs if e is not encs[j]]) for j in (0, 3, 4)]
    p_longest = max(len(p) for p, _ in groups)
    w_longest = max(len(c.ids) for _, cs in groups for c in cs)
    free = ResponseScorer(tiny_lm, token_budget=4096, kv_budget=10**9)
    bound = ResponseScorer(tiny_lm, token_budget=4096, kv_budget=3 * (p_longest + w_longest))
    for scorer in (free, bound):
        got = scorer.score_groups(groups)
        single = [scorer.score(p, c) for p, c in groups]  # one prefix per call: expanded caches
        assert scorer.mixed_batches > 0
        for a, b in zip(got, single, strict=True):
            tiny.assert_close_across_runs(np.array(a), np.array(b), rtol=1e-5, atol=1e-5)
    assert free.widest_kv > bound.kv_budget  # the unbounded scorer held more than the bound
    assert 0 < bound.widest_kv <= bound.kv_budget
    assert bound.forwards > free.forwards
    for a, b in zip(free.score_groups(groups), bound.score_groups(groups), strict=True):
        tiny.assert_close_across_runs(np.array(a), np.array(b), rtol=1e-5, atol=1e-5)
    assert ResponseScorer(tiny_lm, token_budget=100).kv_budget == 400  # KV_TOKENS x token_budget


def test_mixed_prefix_batches_keep_padding_positions_within_each_row(tiny_lm):
    """In a batch of rows with different prefixes, a row's padding slots never get a position past
    its last real token (prefix + continuation - 1): a short row beside a long one would otherwise
    reach past max_length, out of a learned position table."""
    r = renderer_for(tiny_lm)
    recs = records(11, long_every=3)
    encs = [r.encode(x) for x in recs]
    groups = [(r.example_prefix(recs[j]), [Continuation(tuple(e.prompt + e.response), len(e.response))
                                           for e in encs if e is not encs[j]]) for j in (0, 3, 4)]
    scorer = ResponseScorer(tiny_lm, token_budget=4096, kv_budget=10**9)
    seen = []

    def hook(_module, _args, kwargs):
        if kwargs.get("position_ids") is not None:
            seen.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in (scorer.decoder, scorer.model)]
    try:
        scorer.score_groups(groups)
    finally:
        for h in handles:
            h.remove()
    assert scorer.mixed_batches > 0 and seen
    widths = [len(set((m.sum(1)).tolist())) for _, m in seen]
    assert max(widths) > 1  # rows of different lengths shared a batch: padding was there to place
    for pos, m in seen:
        last = m.sum(1) - 1  # (B,) each row's last real position: prefix + continuation - 1
        assert (pos.max(1).values == last).all()


def test_empty_inputs_and_bad_pattern(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(3)
    assert utility_kernel(tiny_lm, r, recs, [], cache_dir=False).values().shape == (3, 0)
    assert utility_kernel(tiny_lm, r, [], recs, cache_dir=False).values().shape == (0, 3)
    with pytest.raises(OptionError):
        utility_kernel(
            tiny_lm, r, recs, recs, pairs=sp.csr_matrix((3, 2), dtype=bool), cache_dir=False
        )


# -- model heads: soft-capping, sliding windows, unknown heads ---------------------------------


def test_gemma_softcap_and_sliding_window(tiny_gemma):
    r = renderer_for(tiny_gemma)
    recs = records(5)
    fast = utility_kernel(tiny_gemma, r, recs, recs, cache_dir=False)
    assert_close(fast, plain_utility_kernel(tiny_gemma, r, recs, recs))
    assert fast.info["mixed_batches"] == 0  # sliding-window caches are never mixed
    scorer = ResponseScorer(tiny_gemma)
    scorer._check_head()
    assert scorer._mode == "head" and scorer.softcap == 3.0


def test_unknown_head_falls_back_to_full_logits(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(4)
    prefix = r.example_prefix(recs[0])
    conts = [
        Continuation(tuple(e.prompt + e.response), len(e.response)) for e in map(r.encode, recs[1:])
    ]
    good = ResponseScorer(tiny_lm)
    odd = ResponseScorer(tiny_lm)
    odd.softcap = 0.5  # a head transform the model does not apply: the self-check must notice
    a, b = good.score(prefix, conts), odd.score(prefix, conts)
    assert good._mode == "head" and odd._mode == "full"
    tiny.assert_close_across_runs(a, b, rtol=1e-5, atol=1e-5)  # summed log-probs: relative rounding


def test_expanded_cache_is_a_view_and_leaves_the_prefix_cache_intact(tiny_gemma):
    import copy

    r = renderer_for(tiny_gemma)
    scorer = ResponseScorer(tiny_gemma)
    cache = scorer.prefix_cache(r.example_prefix(records(1)[0]))
    before = [(x.keys.clone(), x.values.clone()) for x in cache.layers]
    big = expand_cache(cache, 3)
    ref = copy.deepcopy(cache)
    ref.batch_repeat_interleave(3)
    for a, b in zip(big.layers, ref.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    ids = torch.tensor([[5, 6, 7]] * 3)
    with torch.inference_mode():
        scorer.decoder(input_ids=ids, cache=big, use_cache=True)
    assert big.get_seq_length() == cache.get_seq_length() + 3
    for x, (k, v) in zip(cache.layers, before, strict=True):
        assert torch.equal(x.keys, k) and torch.equal(x.values, v)


# -- cache and resume ------------------------------------------------------------------------


def test_span_pairs_count_the_pattern_less_the_diagonal(tiny_lm):
    from tunesift.scoring.kernel_job import prepare_job

    r = renderer_for(tiny_lm)
    recs = records(7)
    pat = np.random.default_rng(1).random((7, 7)) < 0.5
    pat[[0, 3, 5], [0, 3, 5]] = True
    pat[2, 2] = False
    for exclude in (True, False):
        job = prepare_job(r, recs, recs, sp.csr_matrix(pat), exclude, None)
        per = [int(pat[:, j].sum()) - int(exclude and pat[j, j]) for j in range(7)]
        for c0, c1 in [(0, 7), (0, 3), (3, 4), (2, 2), (4, 7)]:
            assert job.span_pairs(c0, c1) == sum(per[c0:c1])
        assert job.n_pairs() == sum(per)
    dense = prepare_job(r, recs, recs[:5], None, True, False)  # other examples: no diagonal
    assert dense.span_pairs(1, 4) == 3 * 7 and dense.n_pairs() == 35
    square = prepare_job(r, recs, recs, None, True, None)
    assert square.span_pairs(0, 2) == 2 * 6 and square.n_pairs() == 42


def test_column_spans_widen_thin_sparse_blocks_only():
    assert column_spans(None, 10, 4) == [(0, 4), (4, 8), (8, 10)]  # dense: fixed width
    rng = np.random.default_rng(1)
    n_e, bs = 1000, 8
    need = BLOCK_PAIRS * bs
    # a full kNN-like pattern (every column holds >= need / bs entries): the dense spans again
    full = sp.csc_matrix(rng.random((200, n_e)) < 0.3)
    assert column_spans(full, n_e, bs) == column_spans(None, n_e, bs)
    # a learned run's labels: 3 target rows over 1,000 columns, about one entry per column
    thin = sp.csc_matrix(rng.random((50, n_e)) < 0.001 * np.isin(np.arange(50), [4, 9, 30])[:, None] * 300)
    spans = column_spans(thin, n_e, bs)
    assert spans[0][0] == 0 and spans[-1][1] == n_e
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous
    entries = [int(thin.indptr[c1] - thin.indptr[c0]) for c0, c1 in spans]
    assert all(e >= need for e in entries[:-1])  # every block but the last is full enough
    assert len(spans) <= thin.nnz // need + 1 < n_e // bs  # far fewer blocks than 125
    assert all(c1 - c0 >= bs for c0, c1 in spans[:-1])


def test_thin_pattern_scores_in_few_blocks_and_equals_plain(tiny_lm, tmp_path):
    r = renderer_for(tiny_lm)
    recs = records(11)
    dense_pat = np.zeros((11, 11), dtype=bool)
    dense_pat[[1, 7]] = True  # two labelled target rows, as in a learned run's row labels
    pattern = sp.csr_matrix(dense_pat)
    kw = {"block_size": 2, "token_budget": 4096, "cache_dir": tmp_path}
    fast = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, **kw)
    # 20 pairs (diagonal excluded); blocks need 8 entries: 3 blocks, not 6 two-column ones
    assert fast.info["blocks_computed"] == 3
    plain = plain_utility_kernel(tiny_lm, r, recs, recs, pairs=pattern)
    np.testing.assert_allclose(fast.values().data, plain.values().data, rtol=1e-4, atol=1e-4)
    again = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, **kw)
    assert again.info["forwards"] == 0  # resumed from the same spans


def test_wave_prefix_bank_is_bounded(tiny_lm, monkeypatch):
    """A thin pattern's waves gather one prefix per column; the bank of their KV caches stops
    growing at BANK_TOKENS x token_budget padded tokens, with the same numbers."""
    import tunesift.scoring.kernel_blocks as kb

    r = renderer_for(tiny_lm)
    recs = records(11, long_every=2)
    dense_pat = np.zeros((11, 11), dtype=bool)
    dense_pat[[1, 7]] = True
    pattern = sp.csr_matrix(dense_pat)
    banks = []
    real_bank = ResponseScorer._bank
    monkeypatch.setattr(ResponseScorer, "_bank",
                        lambda self, p: banks.append((len(p), max(map(len, p)))) or real_bank(self, p))
    kw = {"block_size": 2, "token_budget": 4096, "cache_dir": False}
    wide = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, **kw)
    assert max(n for n, _ in banks) > 1  # unbounded here: several columns share a bank
    # a cap of 2.5 long prefixes: a long prefix joining short ones would pad them all to its
    # length, so the wave runs without it (the bank never passes the cap, padding included)
    cap = int(2.5 * max(p for _, p in banks))
    assert max(n * p for n, p in banks) > cap
    banks.clear()
    monkeypatch.setattr(kb, "BANK_TOKENS", cap / 4096)
    capped = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, **kw)
    assert banks and max(n for n, _ in banks) > 1 and max(n * p for n, p in banks) <= cap
    banks.clear()
    monkeypatch.setattr(kb, "BANK_TOKENS", 1e-9)  # any one prefix fills the bank
    narrow = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, **kw)
    assert banks == []  # every wave is one column, i.e. one prefix: no bank at all
    assert narrow.info["forwards"] > wide.info["forwards"]
    plain = plain_utility_kernel(tiny_lm, r, recs, recs, pairs=pattern)
    np.testing.assert_allclose(narrow.values().data, plain.values().data, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wide.values().data, plain.values().data, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(capped.values().data, plain.values().data, rtol=1e-4, atol=1e-4)


class Stop(Exception):
    pass


def test_interrupted_run_resumes_without_recomputing(tiny_lm, tmp_path):
    r = renderer_for(tiny_lm)
    recs = records(6)
    kw = {"block_size": 2, "token_budget": 64}
    whole = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path / "a", **kw)
    assert whole.info["blocks_computed"] == 3

    pairs_block1 = 2 * 5  # 2 columns x 5 rows (diagonal excluded)

    def stop_after_block1(done, total):  # interrupts in the middle of block 2
        if done > pairs_block1:
            raise Stop

    calls = []
    hook = tiny_lm.model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(Stop):
            utility_kernel(
                tiny_lm, r, recs, recs, cache_dir=tmp_path / "b", progress=stop_after_block1, **kw
            )
        assert len(calls) > 0
        calls.clear()
        resumed = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path / "b", **kw)
        resumed_calls = len(calls)
        calls.clear()
        again = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path / "b", **kw)
        assert len(calls) == 0  # everything (baseline and blocks) comes from the cache
    finally:
        hook.remove()
    assert resumed.info["blocks_loaded"] == 1 and resumed.info["blocks_computed"] == 2
    assert again.info["blocks_loaded"] == 3 and again.info["forwards"] == 0
    # the resumed run did exactly the forwards of blocks 2 and 3: the whole run's minus those of
    # the baseline and block 1 (measured on a run over the first two examples only)
    first = utility_kernel(tiny_lm, r, recs, recs[:2], same=True, cache_dir=False, **kw)
    assert (
        resumed_calls == resumed.info["forwards"] == whole.info["forwards"] - first.info["forwards"]
    )
    for k in (resumed, again):
        for a, b in zip(dense_stats(k), dense_stats(whole), strict=True):
            np.testing.assert_array_equal(a, b)  # bit for bit (NaN where NaN)
    for dist in ("rmse", "pmi"):
        np.testing.assert_array_equal(resumed.values(dist), whole.values(dist))


def test_cache_is_keyed_by_inputs(tiny_lm, tmp_path):
    r = renderer_for(tiny_lm)
    recs = records(4)
    pat = sp.csr_matrix(np.ones((4, 4), dtype=bool))
    first = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path, pairs=pat)
    same = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path, pairs=pat.copy())
    assert same.info["pairs_shared"] == 12 and same.info["forwards"] == 0  # every pair from the pair store
    np.testing.assert_array_equal(same.values().data, first.values().data)
    sub = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path, pairs=sp.csr_matrix(np.eye(4, k=1, dtype=bool)))
    assert sub.info["pairs_shared"] == 3 and sub.info["forwards"] == 0  # a subset of the pairs: shared too
    for other in ({"pairs": pat, "exclude_diagonal": False}, {"pairs": None}):
        k = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path, **other)
        assert k.info["blocks_loaded"] == 0 and k.info["cache"] != first.info["cache"]
        assert k.info["forwards"] > 0 and not k.info.get("pairs_shared")
    shorter = renderer_for(tiny_lm, 300)
    k = utility_kernel(tiny_lm, shorter, recs, recs, cache_dir=tmp_path, pairs=pat)
    assert k.info["blocks_loaded"] == 0  # max_length is in the key


def test_sparse_runs_share_scored_pairs(tiny_lm, tmp_path):
    """A learned run's labels serve a later exact kNN run (and the reverse): only new pairs are scored."""
    r = renderer_for(tiny_lm)
    recs = records(8)
    rng = np.random.default_rng(0)
    full = sp.csr_matrix(rng.random((8, 8)) < 0.6)
    part = full.multiply(sp.csr_matrix(rng.random((8, 8)) < 0.5)).tocsr()
    kw = {"block_size": 3, "token_budget": 64}
    a = utility_kernel(tiny_lm, r, recs, recs, pairs=part, cache_dir=tmp_path, **kw)
    b = utility_kernel(tiny_lm, r, recs, recs, pairs=full, cache_dir=tmp_path, **kw)
    n_part = int(part.nnz - part.diagonal().sum())
    assert b.info["pairs_shared"] == n_part and b.info["pairs"] == int(full.nnz - full.diagonal().sum())
    fresh = utility_kernel(tiny_lm, r, recs, recs, pairs=full, cache_dir=False, **kw)
    for x, y in zip(dense_stats(b), dense_stats(fresh), strict=True):
        tiny.assert_close_across_runs(x, y)
    # the subset read back from the store equals what the first run computed, bit for bit
    c = part.tocoo()
    off = c.row != c.col
    got_a = np.asarray(a.values()[c.row[off], c.col[off]]).ravel()
    got_b = np.asarray(b.values()[c.row[off], c.col[off]]).ravel()
    np.testing.assert_array_equal(got_b, got_a)
    again = utility_kernel(tiny_lm, r, recs, recs, pairs=part, cache_dir=tmp_path, **kw)
    assert again.info["forwards"] == 0 and again.info["pairs_shared"] == n_part


# -- similarity transform --------------------------------------------------------------------


def test_to_similarity_dense():
    uf = np.array([[np.nan, -0.5, 0.5], [1.5, np.nan, 0.0]])
    s = to_similarity(uf)
    np.testing.assert_allclose(s, [[0, 0, 0.5], [1, 0, 0.25]])
    c = to_similarity(uf, clip_negative=True)
    np.testing.assert_allclose(c, [[0, 0, 1 / 3], [1, 0, 0]])
    assert np.isnan(uf[0, 0])  # input untouched
    np.testing.assert_array_equal(to_similarity(np.full((2, 2), 0.3)), np.ones((2, 2)))
    np.testing.assert_array_equal(to_similarity(np.full((2, 2), np.nan)), np.zeros((2, 2)))


def test_to_similarity_sparse_scales_stored_entries_only():
    m = sp.csr_matrix(
        (np.array([-1.0, 1.0, 3.0, np.nan]), ([0, 0, 1, 2], [1, 2, 0, 2])), shape=(3, 3)
    )
    s = to_similarity(m)
    assert sp.isspmatrix_csr(s)
    np.testing.assert_array_equal(s.indices, m.indices)
    np.testing.assert_allclose(s.data, [0.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(to_similarity(m, clip_negative=True).data, [0, 1 / 3, 1, 0])
    assert s[1, 1] == 0  # missing = similarity 0


def test_clipping_starts_the_scale_at_no_effect():
    """With every UF positive, clipping took the smallest one as the bottom: the least helpful
    example that helps at all got similarity 0, as a harmful one."""
    from tunesift.scoring.utility import similarity_bounds

    uf = np.array([[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(to_similarity(uf, clip_negative=True), [[1 / 3, 2 / 3, 1]])
    assert similarity_bounds([uf, np.array([[-0.4, 0.6]])], clip_negative=True) == (0.0, 0.6)
    assert similarity_bounds([uf], clip_negative=False) == (0.1, 0.3)


def test_a_knn_kernel_picks_what_its_dense_form_picks():
    """A pair a kNN kernel does not hold is 'no effect'. Under the min-max it was similarity 0, the
    most harmful pair's value, so a harmful example in many targets' lists (A) outscored a helpful
    one in one list (B)."""
    from types import SimpleNamespace

    from tunesift.methods.delift import scaled
    from tunesift.selection.submodular import facility_location

    # 5 targets x 3 candidates: A harms targets 0-3 a little, B helps target 4, C harms target 4 most
    rows, cols = [0, 1, 2, 3, 4, 4], [0, 0, 0, 0, 1, 2]
    vals = [-0.05, -0.05, -0.05, -0.05, 0.3, -0.2]
    knn = sp.csr_matrix((vals, (rows, cols)), shape=(5, 3))
    dense = knn.toarray()  # the pairs the kNN kernel lacks at UF 0, "no effect"
    [s_knn] = scaled([knn], SimpleNamespace(clip_negative=False, scale="joint", knn=16))
    [s_dense] = scaled([dense], SimpleNamespace(clip_negative=False, scale="joint", knn=0))
    assert facility_location(s_dense, 1).order.tolist() == [1]
    assert facility_location(s_knn, 1).order.tolist() == [1]  # was [0]: A, for its four list entries
    assert s_knn[0, 0] == 0 and s_knn[4, 1] == 1  # harmful = unscored = 0
    # a dense kernel keeps the paper's min-max (harmful pairs small but positive)
    assert 0 < s_dense[0, 0] < s_dense[0, 1]
    # a learned kernel over every pair (--knn 0) is a CSR too, and keeps the min-max like the dense one
    r_all, c_all = np.indices(dense.shape).reshape(2, -1)  # every pair stored, UF 0 ones too
    all_pairs = sp.csr_matrix((dense.ravel(), (r_all, c_all)), shape=dense.shape)
    [s_all] = scaled([all_pairs], SimpleNamespace(clip_negative=False, scale="joint", knn=0))
    np.testing.assert_allclose(s_all.toarray(), s_dense, atol=1e-7)
    # the continual stage's two kNN kernels share one clipped scale: harmful existing pairs are 0 too
    existing = sp.csr_matrix(([-0.1, 0.6], ([0, 4], [0, 0])), shape=(5, 1))
    pool, cross = scaled([knn, existing], SimpleNamespace(clip_negative=False, scale="joint", knn=16))
    assert cross[0, 0] == 0 and cross[4, 0] == 1 and pool[4, 1] == pytest.approx(0.5)  # 0.3 / 0.6


# -- the real default model ------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_fast_equals_plain(default_lm):
    r = renderer_for(default_lm, 2048)
    recs = [
        rec(0, "What is 12 + 30?", "12 + 30 = 42. The answer is 42."),
        rec(1, "Name the capital of Italy.", "The capital of Italy is Rome."),
        rec(
            2,
            "Tom has 3 apples and buys 5 more. How many apples does he have?",
            "He has 3 + 5 = 8 apples.\n#### 8",
        ),
        rec(3, "Translate 'thank you' into French.", "Merci."),
    ]
    fast = utility_kernel(default_lm, r, recs, recs, cache_dir=False)
    plain = plain_utility_kernel(default_lm, r, recs, recs)
    assert_close(fast, plain)
    pat = sp.csr_matrix(
        np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=bool)
    )
    sparse = utility_kernel(default_lm, r, recs, recs, pairs=pat, cache_dir=False)
    coo = sparse.values("pmi").tocoo()
    np.testing.assert_allclose(coo.data, fast.values("pmi")[coo.row, coo.col], atol=TOL, rtol=0)


def test_auto_token_budget_follows_free_memory():
    """0 (the default) sizes batches to the device: 4096 on a CPU; on CUDA the free memory over
    the per-token cost (logits at 3 x 4 x V bytes dominate), clamped to [4096, 65536]."""
    from types import SimpleNamespace

    from tunesift.scoring.logprobs import auto_token_budget

    cfg = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, head_dim=64, vocab_size=49152)
    gpu = SimpleNamespace(device="cuda", dtype="bfloat16", model=SimpleNamespace(config=cfg))
    # the KV a forward after a prefix holds: KV_TOKENS cached tokens a batch token, three copies
    per_token = 12 * 49152 + 3 * 4 * 2 * 30 * 3 * 64 * 2 + 32 * 576 * 2
    assert auto_token_budget(gpu, free_bytes=20 * per_token * 1000) == 10_000  # half of 20,000
    assert auto_token_budget(gpu, free_bytes=10**9) == 4096  # a busy GPU: never below the CPU's
    assert auto_token_budget(gpu, free_bytes=10**12) == 65536  # a big one: capped
    assert auto_token_budget(SimpleNamespace(device="cpu", model=None)) == 4096
    # Llama-2-7B in bf16 (32 layers x 32 KV heads x 128) on 33 GB free: the KV term dominates; the
    # old count (one copy of one token's K/V) gave 28k tokens, a wave holding ~177 GB of KV
    llama = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, head_dim=128, vocab_size=32000)
    big = SimpleNamespace(device="cuda", dtype="bfloat16", model=SimpleNamespace(config=llama))
    budget = auto_token_budget(big, free_bytes=66 * 10**9)
    assert budget * 3 * 4 * 2 * 32 * 32 * 128 * 2 <= 33 * 10**9  # every KV copy of a full wave fits


def test_select_resolves_the_default_token_budget(tiny_lm, tmp_path):
    from tunesift.pipeline import select

    rows = [{"instruction": f"Say {i}.", "output": f"{i} {i}"} for i in range(6)]
    sel = select(rows, method="loss", budget=3, lm=tiny_lm, cache_dir=str(tmp_path))
    assert sel.options.token_budget == 4096  # on this CPU


def test_an_interrupted_no_example_pass_keeps_its_finished_parts(tiny_lm, tmp_path, monkeypatch):
    """The base pass was stored only once every part was done: a run killed in its last part
    redid the whole pass on resume."""
    import tunesift.scoring.utility as utility

    r = renderer_for(tiny_lm)
    recs = records(6)
    monkeypatch.setattr(utility, "BASE_ROWS", 2)  # 3 parts of the no-example pass
    real = utility.kernel_base
    parts = []

    def stop_in_part3(job, scorer, counts=None, rows=None):
        parts.append(list(rows))
        if len(parts) == 3:
            raise Stop
        return real(job, scorer, counts=counts, rows=rows)

    monkeypatch.setattr(utility, "kernel_base", stop_in_part3)
    with pytest.raises(Stop):
        utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path, block_size=2, token_budget=64)
    parts.clear()
    monkeypatch.setattr(utility, "kernel_base", lambda job, scorer, counts=None, rows=None:
                        parts.append(list(rows)) or real(job, scorer, counts=counts, rows=rows))
    resumed = utility_kernel(tiny_lm, r, recs, recs, cache_dir=tmp_path, block_size=2, token_budget=64)
    assert parts == [[4, 5]]  # only the part that was cut off
    whole = utility_kernel(tiny_lm, r, recs, recs, cache_dir=False, block_size=2, token_budget=64)
    for a, b in zip(dense_stats(resumed), dense_stats(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_prefix_caches_beyond_the_bank_cap_are_scored_a_part_at_a_time(tiny_lm, monkeypatch):
    """One column of long, differently cut examples held every group's prefix cache at once: 34x the
    bank cap in a measured case. The parts give the same numbers."""
    import tunesift.scoring.logprobs as lp
    from tunesift.scoring.logprobs import prefix_chunks

    assert prefix_chunks([5, 30, 10, 30], 59) == [[0, 2], [1], [3]] and prefix_chunks([5, 30, 10, 30], 60)[1] == [1, 3]
    assert prefix_chunks([5, 5], 60) == [[0, 1]] and prefix_chunks([100], 60) == [[0]] and prefix_chunks([], 9) == []
    r = renderer_for(tiny_lm)
    recs = records(11, long_every=3)
    encs = [r.encode(x) for x in recs]
    groups = [(r.example_prefix(recs[j]), [Continuation(tuple(e.prompt + e.response), len(e.response))
                                           for e in encs if e is not encs[j]]) for j in (0, 3, 4, 6)]
    whole = ResponseScorer(tiny_lm, token_budget=4096).score_groups(groups)
    banks = []
    real = lp.ResponseScorer._bank
    monkeypatch.setattr(lp.ResponseScorer, "_bank", lambda self, prefixes: banks.append(
        len(prefixes) * max(map(len, prefixes))) or real(self, prefixes))
    small = ResponseScorer(tiny_lm, token_budget=64)  # cap: 4 x 64 = 256 padded prefix tokens
    parted = small.score_groups(groups)
    assert max(banks) <= 256 < sum(len(p) for p, _ in groups)
    for a, b in zip(parted, whole, strict=True):
        tiny.assert_close_across_runs(np.array(a), np.array(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_pairs_that_overflow_are_an_error_and_never_cached(tiny_lm, tmp_path, monkeypatch, sparse):
    """A float16 forward pass that overflows gives NaN pairs: cached, they read back as unscored
    pairs (UF 0) on every rerun. Now the run stops with one line, nothing of the block is stored,
    and a NaN block already in a cache (written before the check) is scored again."""
    from tunesift.errors import TunesiftError
    from tunesift.scoring import utility as ut

    r = renderer_for(tiny_lm)
    recs = records(6)
    pattern = sp.csr_matrix(np.ones((6, 6), dtype=bool)) if sparse else None
    real = ut.kernel_block

    def overflowing(job, scorer, base, c0, c1, *a, **k):
        block = real(job, scorer, base, c0, c1, *a, **k)
        block[1, ..., 0] = np.nan  # the first target (dense) / entry (sparse) of the block's first column
        return block

    clean = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, cache_dir=tmp_path / "clean", block_size=3)
    monkeypatch.setattr(ut, "kernel_block", overflowing)
    with pytest.raises(TunesiftError, match=r"^DELIFT kernel: target \d with example 0 \(positions from 0\) "
                                            r".*scored NaN or infinity in float32: .*--dtype float32 or bfloat16"):
        utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, cache_dir=tmp_path / "c", block_size=3)
    assert not list((tmp_path / "c").rglob("cols-*.npy"))  # the failing block was not stored
    # a cache holding a NaN block (as the unchecked code wrote them) is not read as scored pairs
    # (sparse kernels read their pairs from the shared pair store's chunks)
    monkeypatch.setattr(ut, "kernel_block", real)
    from tunesift.store import ArrayStore

    (path,) = sorted((tmp_path / "clean").rglob("chunk-*.npy" if sparse else "cols-0000000-*.npy"))
    store = ArrayStore(path.parent)
    got = store.get(path.stem)
    if sparse:
        got[1, np.flatnonzero(got[0] == 1 * 6 + 0)] = np.nan  # the pair (target 1, example 0)
    else:
        got[0, 1, 0] = np.nan  # the same pair in column block 0
    store.put(path.stem, got)
    again = utility_kernel(tiny_lm, r, recs, recs, pairs=pattern, cache_dir=tmp_path / "clean", block_size=3)
    assert again.info["blocks_computed"] == 1
    assert_close(again, clean)
