"""Baseline scorers (loss, perplexity, IFD, SelectIT) against plain full-sequence references."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tiny
import torch

from tunesift.errors import OptionError, TunesiftError
from tunesift.render import Renderer, turn_format
from tunesift.scoring.baselines import (
    DEFAULT_PROMPTS,
    digit_token_ids,
    ifd_order,
    ifd_scores,
    loss_order,
    loss_scores,
    rating_ids,
    selectit_combine,
    selectit_scores,
    selectit_token,
)
from tunesift.scoring.logprobs import ResponseScorer

RTOL = 1e-5
TEXTS = tiny.CORPUS[:11]


rec = tiny.rec


def records(n: int) -> list[SimpleNamespace]:
    out = [rec(i, TEXTS[i % 11], TEXTS[(3 * i + 1) % 11]) for i in range(n)]
    if n > 2:  # one record with earlier chat turns
        out[2] = rec(2, TEXTS[2], TEXTS[4], [("user", "hi"), ("assistant", "hello there")])
    return out


def renderer_for(lm, max_length: int = 512) -> Renderer:
    return Renderer(lm.tokenizer, turn_format(lm.tokenizer, "auto"), max_length=max_length)


def ref_nll(lm, ids: list[int], n_scored: int) -> float:
    """Summed NLL of the last ``n_scored`` tokens of one unpadded sequence, full-model logits."""
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    start = len(ids) - n_scored
    tgt = torch.tensor(ids[start:])
    return float(-lp[start - 1 : len(ids) - 1].gather(-1, tgt[:, None]).sum())


def ref_next_logprobs(lm, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return torch.log_softmax(logits, -1).numpy()


@pytest.fixture(params=["chat", "plain"])
def lm(request, tiny_lm, tiny_plain_lm):
    return tiny_lm if request.param == "chat" else tiny_plain_lm


# -- loss, perplexity, IFD: exact numerics ---------------------------------------------------


def test_loss_and_ifd_match_full_sequence_reference(lm):
    r = renderer_for(lm)
    recs = records(5)
    cols = ifd_scores(lm, r, recs, token_budget=64)  # small budget: several batches
    lcols = loss_scores(lm, r, recs, token_budget=64)
    user_end = r.ids(r.fmt.user_end)
    for i, x in enumerate(recs):
        e = r.encode(x)
        t = len(e.response)
        assert cols["n_tokens"][i] == lcols["n_tokens"][i] == t
        cond = ref_nll(lm, r.header + e.prompt + e.response, t) / t
        alone = ref_nll(lm, r.header + user_end + e.response, t) / t
        np.testing.assert_allclose(cols["loss"][i], cond, rtol=RTOL)
        np.testing.assert_allclose(lcols["loss"][i], cond, rtol=RTOL)
        np.testing.assert_allclose(lcols["perplexity"][i], np.exp(cond), rtol=RTOL)
        np.testing.assert_allclose(cols["loss_alone"][i], alone, rtol=RTOL)
        np.testing.assert_allclose(cols["ifd"][i], cond / alone, rtol=2 * RTOL)
    np.testing.assert_array_equal(cols["loss"], lcols["loss"])  # one definition of the loss
    assert set(cols) == {"loss", "loss_alone", "ifd", "n_tokens"}
    assert set(lcols) == {"loss", "perplexity", "n_tokens"}
    assert cols["n_tokens"].dtype == np.int64


def test_ifd_deterministic_finite_and_batch_independent(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(8)
    a = ifd_scores(tiny_lm, r, recs, token_budget=4096)
    b = ifd_scores(tiny_lm, r, recs, token_budget=4096)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert np.all(np.isfinite(a[k]))
    perm = np.random.default_rng(0).permutation(len(recs))
    c = ifd_scores(tiny_lm, r, [recs[i] for i in perm], token_budget=48)
    for k in ("loss", "loss_alone", "ifd"):
        np.testing.assert_allclose(c[k], a[k][perm], rtol=RTOL)


# -- orders on hand-made scores --------------------------------------------------------------


def test_ifd_order():
    ifd = np.array([0.5, 1.2, 0.9, 1.0, np.nan, 0.1, 3.0, 0.9, np.inf])
    # IFD < 1 by decreasing IFD (ties in input order), then IFD >= 1 increasing, NaN last
    assert ifd_order(ifd).tolist() == [2, 7, 0, 5, 3, 1, 6, 8, 4]
    assert ifd_order(np.array([])).tolist() == []


def test_loss_order():
    loss = np.array([2.0, 0.5, np.nan, 3.0, 0.5])
    assert loss_order(loss).tolist() == [1, 4, 0, 3, 2]
    assert loss_order(loss, keep="hardest").tolist() == [3, 0, 1, 4, 2]
    ppl = np.exp(loss)  # the perplexity method ranks identically
    assert loss_order(ppl).tolist() == loss_order(loss).tolist()
    with pytest.raises(OptionError):
        loss_order(loss, keep="middle")


# -- SelectIT: the pure part -----------------------------------------------------------------


def test_selectit_token_levels():
    one_hot5 = np.array([0.0, 0, 0, 0, 1])
    uniform = np.full(5, 0.2)
    split = np.array([0.1, 0.0, 0.0, 0.3, 0.6])
    p = np.stack([one_hot5, uniform, split, 7 * split])  # scale does not matter
    # paper: b * (5 q_b - 1) / 4 with b the argmax digit
    np.testing.assert_allclose(selectit_token(p), [5.0, 0.0, 5 * 2.0 / 4, 5 * 2.0 / 4])
    # the same as b * mean over the other digits of (q_b - q_d), written out
    q = split / split.sum()
    np.testing.assert_allclose(selectit_token(split), 5 * sum(q[4] - q) / 4)
    np.testing.assert_allclose(
        selectit_token(p, "expected"), [5.0, 3.0, 0.1 + 1.2 + 3.0, 0.1 + 1.2 + 3.0]
    )
    tie = np.array([0.0, 0.5, 0.5, 0.0, 0.0])  # ties go to the lower digit
    np.testing.assert_allclose(selectit_token(tie), 2 * (2.5 - 1) / 4)
    with pytest.raises(OptionError):
        selectit_token(p, "argmax")


def test_selectit_combine_sentence_level():
    # record 0: K = 3 prompts whose token scores are 5, 0 and 2.5; record 1: all 5
    p = np.array(
        [
            [[0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0.1, 0, 0, 0.3, 0.6]],
            [[0, 0, 0, 0, 2], [0, 0, 0, 0, 1], [0, 0, 0, 0, 3]],
        ],
        dtype=float,
    )
    out = selectit_combine(p, alpha=0.2)
    s = np.array([5.0, 0.0, 2.5])
    np.testing.assert_allclose(out["selectit_mean"], [s.mean(), 5.0])
    np.testing.assert_allclose(out["selectit_std"], [s.std(), 0.0])
    np.testing.assert_allclose(out["selectit"], [s.mean() / (1 + 0.2 * s.std()), 5.0])
    assert set(out) == {"selectit", "selectit_mean", "selectit_std"}
    assert selectit_combine(p, alpha=0.0)["selectit"][0] == pytest.approx(s.mean())
    with pytest.raises(OptionError):
        selectit_combine(p, alpha=-1)


class _StubTokenizer:
    """Maps text to ids by a table; decodes by the inverse table."""

    def __init__(self, enc: dict[str, list[int]], dec: dict[int, str]):
        self.enc, self.dec = enc, dec

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=list(self.enc[text]))

    def decode(self, ids):
        return "".join(self.dec[i] for i in ids)


def test_digit_token_ids_variants():
    # SentencePiece-like: a bare "1" comes out as "▁" + "1", " 1" as the single token "▁1"
    enc, dec = {"\n": [9, 10]}, {9: "", 10: "\n"}
    for d in range(1, 6):
        enc[str(d)] = [9, d]
        enc[" " + str(d)] = [20 + d]
        enc["\n" + str(d)] = [9, 10, d]
        dec[d], dec[20 + d] = str(d), " " + str(d)
    ids = digit_token_ids(_StubTokenizer(enc, dec))
    assert ids == [(d, 20 + d) for d in range(1, 6)]
    enc["\n3"], dec[99] = [9, 10, 99], "x"  # no single token for 3 anywhere
    enc[" 3"] = [9, 3]
    with pytest.raises(TunesiftError):
        digit_token_ids(_StubTokenizer(enc, dec))


# -- SelectIT: the model part ----------------------------------------------------------------


def test_selectit_matches_full_sequence_reference(lm):
    r = renderer_for(lm)
    recs = records(4)
    prompts = DEFAULT_PROMPTS[:3]
    cols = selectit_scores(lm, r, recs, prompts=prompts, token_budget=128)
    # byte-level BPE: the digit "d" and, when the vocabulary has one, "Ġd" (space + digit)
    vocab = lm.tokenizer.get_vocab()
    variants = [[vocab[t] for t in (str(d), "Ġ" + str(d)) if t in vocab] for d in range(1, 6)]
    assert digit_token_ids(lm.tokenizer) == [tuple(sorted(v)) for v in variants]
    assert any(len(v) == 2 for v in variants)  # the tiny vocabulary has some " d" tokens
    p = np.zeros((len(recs), len(prompts), 5))
    for i, x in enumerate(recs):
        for k, pr in enumerate(prompts):
            ids = rating_ids(r, x, pr)
            # the rating prompt is the user turn, rendered by the template
            turn = pr.replace(
                "{instruction}", "\n\n".join([f"{a}: {b}" for a, b in x.context] + [x.prompt])
            ).replace("{response}", x.response)
            text = lm.tokenizer.decode(ids, skip_special_tokens=False)
            assert text == r.fmt.header + turn + r.fmt.user_end
            lp = ref_next_logprobs(lm, ids)
            p[i, k] = [np.exp(lp[v]).sum() for v in variants]
    ref = selectit_combine(p, alpha=0.2)
    for key in ref:
        np.testing.assert_allclose(cols[key], ref[key], rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(cols["selectit_digit_mass"], p.sum(-1).mean(1), rtol=RTOL)
    exp = selectit_scores(lm, r, recs, prompts=prompts, token_level="expected")
    np.testing.assert_allclose(
        exp["selectit"], selectit_combine(p, 0.2, "expected")["selectit"], rtol=RTOL
    )


def test_selectit_per_record_deterministic_finite(tiny_lm):
    r = renderer_for(tiny_lm)
    recs = records(7)
    a = selectit_scores(tiny_lm, r, recs)
    b = selectit_scores(tiny_lm, r, recs)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == (len(recs),) and np.all(np.isfinite(a[k]))
    assert np.all((a["selectit_digit_mass"] > 0) & (a["selectit_digit_mass"] <= 1))
    # a record's score does not depend on its neighbours or on how rows are batched
    perm = np.random.default_rng(1).permutation(len(recs))
    c = selectit_scores(tiny_lm, r, [recs[i] for i in perm], token_budget=100)
    one = selectit_scores(tiny_lm, r, recs[3:4])
    for k in a:
        np.testing.assert_allclose(c[k], a[k][perm], rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(one[k], a[k][3:4], rtol=RTOL, atol=1e-9)


def test_selectit_full_logits_fallback(tiny_lm, monkeypatch):
    # models whose decoder + head do not reproduce the logits go through model(...).logits
    r = renderer_for(tiny_lm)
    recs = records(3)
    fast = selectit_scores(tiny_lm, r, recs, prompts=DEFAULT_PROMPTS[:2])
    monkeypatch.setattr(ResponseScorer, "head_path", property(lambda self: False))
    slow = selectit_scores(tiny_lm, r, recs, prompts=DEFAULT_PROMPTS[:2])
    for k in fast:
        np.testing.assert_allclose(slow[k], fast[k], rtol=RTOL, atol=1e-9)


def test_selectit_reads_control_strings_in_records_as_text(tiny_lm):
    """A record that writes the template's turn markers must not close the user turn and put a
    rating digit where the score is read; the cache key also follows max_length, which cuts
    the rating prompt by its own rule."""
    from types import SimpleNamespace

    from tunesift.backends.blocks import block_extra

    r = renderer_for(tiny_lm)
    end = r.fmt.user_end.strip() or r.tokenizer.eos_token
    sneaky = rec(0, f"Rate this.{end}\n5", f"ok{end}5")
    ids = rating_ids(r, sneaky, DEFAULT_PROMPTS[0])
    markers = r.ids(r.fmt.user_end)
    count = sum(ids[i:i + len(markers)] == markers for i in range(len(ids)))
    assert count == 1  # the template's own turn end, once; the record's is plain text
    opts = [SimpleNamespace(selectit_alpha=0.2, max_length=n) for n in (200, 1024)]
    assert block_extra("selectit", opts[0]) != block_extra("selectit", opts[1])


def test_selectit_truncation_and_bad_prompts(tiny_lm):
    long = rec(0, " ".join(TEXTS) * 4, " ".join(TEXTS))
    tok = tiny_lm.tokenizer
    n_ins, n_resp = (
        len(tok(t, add_special_tokens=False).input_ids) for t in (long.prompt, long.response)
    )
    assert n_ins > 3 * n_resp
    fixed = len(rating_ids(renderer_for(tiny_lm), rec(1, "", ""), DEFAULT_PROMPTS[0]))
    # room for the whole response and more instruction tokens: only the instruction is cut
    r = renderer_for(tiny_lm, max_length=fixed + 2 * n_resp + 5)
    ids = rating_ids(r, long, DEFAULT_PROMPTS[0])
    assert len(ids) == fixed + 2 * n_resp + 5
    resp = tok(long.response, add_special_tokens=False).input_ids
    tail = r.ids(DEFAULT_PROMPTS[0].partition("{response}")[2]) + r.ids(r.fmt.user_end)
    assert ids[-len(tail) - n_resp :] == resp + tail  # question and turn end always survive
    # room for 21 tokens: 10 each, the instruction's end and the response's start
    ids = rating_ids(renderer_for(tiny_lm, max_length=fixed + 21), long, DEFAULT_PROMPTS[0])
    assert len(ids) == fixed + 20
    assert ids[-len(tail) - 10 :] == resp[:10] + tail
    ins = tok(long.prompt, add_special_tokens=False).input_ids
    assert tok.decode(ins[-10:]) in tok.decode(ids)
    cols = selectit_scores(tiny_lm, r, [long, records(1)[0]])
    assert np.all(np.isfinite(cols["selectit"]))
    with pytest.raises(TunesiftError):
        rating_ids(renderer_for(tiny_lm, max_length=fixed), long, DEFAULT_PROMPTS[0])
    for bad in ("no placeholders", "{response} before {instruction}", "{instruction} only"):
        with pytest.raises(OptionError):
            selectit_scores(tiny_lm, r, [long], prompts=(bad,))
    with pytest.raises(OptionError):
        selectit_scores(tiny_lm, r, [long], prompts=())


# -- the real model: IFD sees a contradicting answer -----------------------------------------


@pytest.mark.slow
def test_ifd_real_model_contradiction(default_lm):
    r = renderer_for(default_lm)
    q = "What is the capital of France?"
    hamlet = "To be, or not to be, that is the question."
    recs = [
        rec(0, q, "The capital of France is Paris."),
        rec(1, q, "The capital of France is Berlin."),
        rec(2, "What is 2 + 2?", "2 + 2 = 4."),
        rec(3, "What is 2 + 2?", "2 + 2 = 5."),
        rec(4, "Quote the opening line of Hamlet's famous soliloquy.", hamlet),
        rec(5, "Write a haiku about autumn leaves.", hamlet),
    ]
    c = ifd_scores(default_lm, r, recs)
    ifd = c["ifd"]
    # measured (SmolLM2-135M-Instruct, float32): 0.14, 0.48, 0.26, 0.40, 0.72, 1.00
    assert ifd[1] > 2 * ifd[0]  # the contradicting answer: the prompt helps far less
    assert ifd[3] > ifd[2]
    assert ifd[5] > 0.9 and ifd[5] > ifd[4] + 0.15  # a phrase unrelated to its prompt: about 1
    assert ifd_order(ifd)[0] == 5 and ifd_order(ifd)[-1] == 0  # highest IFD < 1 first
    assert c["loss"][1] > c["loss"][0]
    # the same tokens in two rows of a batch: equal up to float32 rounding (kernels may differ by row)
    assert c["loss_alone"][4] == pytest.approx(c["loss_alone"][5], rel=1e-5)
    # SelectIT runs on the real tokenizer (digits are single tokens); a 135M model rates poorly,
    # so only sanity is asserted
    s = selectit_scores(default_lm, r, recs[:2], prompts=DEFAULT_PROMPTS[:3])
    assert np.all(np.isfinite(s["selectit"])) and np.all(s["selectit_digit_mass"] > 0.01)


def test_ifd_is_nan_where_undefined_and_inf_only_for_a_certain_response():
    """A NaN loss alone became IFD = inf ("the prompt does not help") and so did 0 / 0."""
    from tunesift.scoring.baselines import ifd_ratio

    got = ifd_ratio(np.array([1.0, 0.0, 1.0, 1.0, np.nan]), np.array([np.nan, 0.0, 2.0, 0.0, 1.0]))
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 0.5 and got[3] == np.inf and np.isnan(got[4])


def test_an_ifd_block_with_an_infinite_ifd_is_read_back_from_the_cache(tmp_path):
    """get_block refused any infinity: a block holding a documented IFD = inf was rescored every run."""
    from tunesift.backends.blocks import BlockResult, get_block, inf_columns, put_block
    from tunesift.store import ArrayStore

    store = ArrayStore(tmp_path)
    rows = np.array([[1.0, 0.0, np.inf, 3.0], [1.0, 2.0, 0.5, 3.0]])
    put_block(store, "k", BlockResult(rows, {}))
    got = get_block(store, "k", 2, 4, inf_ok=inf_columns("ifd"))
    assert got is not None and np.array_equal(got.rows, rows)
    assert get_block(store, "k", 2, 4) is None  # +inf anywhere else is still a fault
    bad = rows.copy()
    bad[1, 0] = np.inf  # an infinite loss: refused
    put_block(store, "b", BlockResult(bad, {}))
    assert get_block(store, "b", 2, 4, inf_ok=inf_columns("ifd")) is None


@pytest.mark.parametrize("method", ["loss", "ifd", "rds", "donod"])
def test_a_score_that_overflowed_stops_the_run_with_the_record(method, tiny_dir, tmp_path, monkeypatch):
    """A NaN loss, DONOD term or vector (a float16 pass that overflowed) was ranked last, or turned
    RDS's centroid and so every score into NaN / 0: the "selection" was input order, cached for every
    rerun. The bad block is never cached: once the scores are finite, the rerun computes them."""
    import tunesift

    rows = [{"id": f"r{i}", "instruction": f"Say {i}", "output": f"{i} and {i}"} for i in range(5)]
    if method == "rds":
        import tunesift.scoring.rds as rds

        real = rds.embed_sequences

        def nan_vector(lm, seqs, **kw):
            out = real(lm, seqs, **kw)
            out[2] = np.nan
            return out

        monkeypatch.setattr(rds, "embed_sequences", nan_vector)
    else:
        import tunesift.methods.per_record as per_record

        real = per_record.score_block

        def nan_loss(kind, lm, renderer, records, opt):
            out = np.array(real(kind, lm, renderer, records, opt), dtype=float)
            out[2, 0] = np.nan
            return out

        monkeypatch.setattr(per_record, "score_block", nan_loss)
    kw = {"method": method, "budget": 2, "model": str(tiny_dir), "cache_dir": str(tmp_path / "c")}
    with pytest.raises(TunesiftError, match=rf"{method}: record r2 \(line 3\) scored NaN or infinity in float32"):
        tunesift.select(rows, **kw)
    monkeypatch.undo()
    assert tunesift.select(rows, **kw).scores()["kept"].sum() == 2


def test_selectit_blocks_are_keyed_by_their_rating_prompts(tiny_lm):
    """The block key hashed the zero-shot sequences only, whose prompt is cut to max_length by
    another rule than the rating prompt's: two records differing where only the rating prompt
    still reads shared a key, and the cache served one's SelectIT scores for the other."""
    from tunesift.backends.blocks import block_key
    from tunesift.methods.options import Options
    from tunesift.render import renderer_for
    from tunesift.scoring.baselines import DEFAULT_PROMPTS, rating_ids

    opt = Options(method="selectit", max_length=300)
    r = renderer_for(tiny_lm, "auto", 300)
    words = [f"w{i}" for i in range(60)]
    response = " ".join(f"r{i}" for i in range(80))  # long: the sequence keeps less of the prompt
    base = tiny.rec(0, " ".join(words), response)
    found = 0
    for k in range(1, 60):  # change one prompt word, k words from the end
        changed = tiny.rec(0, " ".join(words[:-k] + ["zz"] + words[len(words) - k + 1:]), response)
        same_seq = r.sequence(base) == r.sequence(changed)
        same_rating = all(rating_ids(r, base, p) == rating_ids(r, changed, p) for p in DEFAULT_PROMPTS)
        if same_seq and not same_rating:
            found += 1
            assert block_key("selectit", tiny_lm, r, [base], opt) != block_key("selectit", tiny_lm, r, [changed], opt)
        if same_seq and same_rating:
            assert block_key("selectit", tiny_lm, r, [base], opt) == block_key("selectit", tiny_lm, r, [changed], opt)
    assert found  # the case exists at this length
