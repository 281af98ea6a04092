"""--template paper: the DELIFT reference code's prompt format, exact strings and token ids, and its
kernel (each arm with its own target tokens) against an independent port of the reference scorer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import tiny
import torch

from tunesift.errors import TunesiftError
from tunesift.io.records import read_records
from tunesift.methods.options import Options
from tunesift.render import (
    PAPER_EXAMPLE,
    PaperRenderer,
    make_renderer,
    paper_texts,
    renderer_for,
    turn_format,
)
from tunesift.scoring.utility import plain_utility_kernel, utility_kernel

# the reference's strings, written out here independently of tunesift.render
NO_ICL = "Please generate a response to the following query."
ICL = ("Use the following example as a guide to answer the query in the same format and style, "
       "providing a clear and concise response.")


def ref_no_icl(prompt: str) -> str:
    return f"Instruction: {NO_ICL}\n\n\nQuery: {prompt}\n"


def ref_icl(prompt_j: str, response_j: str, prompt_i: str) -> str:
    return f"Instruction:\n{ICL}\n\n\nExample:\n{prompt_j}\n{response_j}\n\n\nQuery:\n{prompt_i}\n"


def ref_ids(tok, context: str, response: str) -> tuple[list[int], int]:
    """The reference's sequence: ids(context) [EOS] ids(response) [EOS], tokenised apart, no
    special tokens; the response and the final EOS are scored."""
    r = tok(response, add_special_tokens=False).input_ids
    return tok(context, add_special_tokens=False).input_ids + [tok.eos_token_id] + r + [tok.eos_token_id], len(r) + 1


def ref_distance(lm, ids: list[int], n_scored: int) -> float:
    """||p - 1||_2 / sqrt(T) over the last T tokens, from one plain forward (the reference's scorer)."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0, :-1].float()
    p = torch.softmax(logits, dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)[-n_scored:]
    return float(torch.linalg.norm(p.double() - 1.0) / math.sqrt(n_scored))


def ref_kernel(lm, targets, examples, exclude_diagonal: bool = True) -> np.ndarray:
    """UF[i, j] = d(no-ICL i) - d(ICL j, i), straight from the reference strings."""
    tok = lm.tokenizer
    uf = np.full((len(targets), len(examples)), np.nan)
    for i, t in enumerate(targets):
        p_i, r_i = paper_texts(t)
        d0 = ref_distance(lm, *ref_ids(tok, ref_no_icl(p_i), r_i))
        for j, e in enumerate(examples):
            if exclude_diagonal and i == j:
                continue
            p_j, r_j = paper_texts(e)
            uf[i, j] = d0 - ref_distance(lm, *ref_ids(tok, ref_icl(p_j, r_j, p_i), r_i))
    return uf


RECS = [
    tiny.rec(0, "What is 2 + 2?", "The answer is 4."),
    tiny.rec(1, "Name the opposite of hot:", "cold."),
    tiny.rec(2, "Sort the numbers 5, 3, 9:", "3, 5, 9.", [("user", "hi"), ("assistant", "hello there")]),
    tiny.rec(3, "  leading spaces", "trailing spaces   \n"),
    tiny.rec(4, "café naïve 東京 🙂\n\n", "\nnumbers 1234567890"),
]


@pytest.fixture(scope="module")
def chat_tok():
    return tiny.make_tokenizer(chat=True)


# -- the strings --------------------------------------------------------------------------------


def test_record_mapping_alpaca_chat_and_single_prompt(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = read_records(path)
    assert paper_texts(a) == ("Instruction: Add the numbers.\nInput: 2 and 3\n", " 5")
    assert paper_texts(b) == ("Instruction: Say hi.\nInput: \n", " Hi!")
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]}) + "\n")
    [c] = read_records(chat)
    assert paper_texts(c) == ("Instruction: \nInput: system: Be brief.\nuser: Hi\nassistant: Hello.\nuser: 2+2?\n",
                              " 4")
    assert paper_texts(tiny.rec(0, "What is 2 + 2?", "4")) == ("Instruction: What is 2 + 2?\nInput: \n", " 4")


def test_sequences_are_the_reference_strings_and_ids(chat_tok):
    r = make_renderer(chat_tok, "paper", 2048)
    assert isinstance(r, PaperRenderer) and r.fmt.name == "paper" and r.header == []
    eos = chat_tok.eos_token_id
    t, e = RECS[0], RECS[1]
    # exact strings, spelled out once
    enc = r.encode(t)
    assert chat_tok.decode(enc.prompt + enc.response) == (
        "Instruction: Please generate a response to the following query.\n\n\n"
        "Query: Instruction: What is 2 + 2?\nInput: \n\n<|im_end|> The answer is 4.<|im_end|>")
    q = r.query(t)
    assert chat_tok.decode(r.example_prefix(e) + q.prompt + q.response) == (
        "Instruction:\nUse the following example as a guide to answer the query in the same format and style, "
        "providing a clear and concise response.\n\n\nExample:\nInstruction: Name the opposite of hot:\nInput: \n\n"
        " cold.\n\n\nQuery:\nInstruction: What is 2 + 2?\nInput: \n\n<|im_end|> The answer is 4.<|im_end|>")
    # no BOS, EOS between prompt and response, the response's leading space, the final EOS scored
    assert enc.prompt[0] != chat_tok.bos_token_id and enc.prompt[-1] == eos and q.prompt[-1] == eos
    assert enc.response == chat_tok(" The answer is 4.", add_special_tokens=False).input_ids + [eos]
    assert q.response == enc.response
    ids, mask = r.sequence(t)
    assert ids == enc.prompt + enc.response and sum(mask) == len(enc.response) and mask[-1] == 1
    # exact ids for every pair, awkward whitespace and chat turns included
    for ti in RECS:
        p_i, r_i = paper_texts(ti)
        e_i = r.encode(ti)
        assert (e_i.prompt + e_i.response, len(e_i.response)) == ref_ids(chat_tok, ref_no_icl(p_i), r_i)
        q_i = r.query(ti)
        for tj in RECS:
            p_j, r_j = paper_texts(tj)
            assert (r.example_prefix(tj) + q_i.prompt + q_i.response, len(q_i.response)) == \
                ref_ids(chat_tok, ref_icl(p_j, r_j, p_i), r_i)
        assert r.example_prefix(ti)[:len(r.example_header)] == r.example_header


def test_truncation_keeps_the_response_and_the_separator(chat_tok):
    long = tiny.rec(0, "Write a short poem about the sea. " * 20, "The sea.")
    r = make_renderer(chat_tok, "paper", 160)
    e, q = r.encode(long), r.query(long)
    assert len(e.prompt) + len(e.response) == 160 and e.truncated > 0 and e.prompt[-1] == chat_tok.eos_token_id
    assert len(r.example_header) + len(q.prompt) + len(q.response) == 160 and q.prompt[-1] == chat_tok.eos_token_id
    assert e.response == q.response == chat_tok(" The sea.", add_special_tokens=False).input_ids + [2]
    with pytest.raises(TunesiftError, match="does not fit max_length 6;"):
        make_renderer(chat_tok, "paper", 6).encode(long)
    with pytest.raises(TunesiftError, match="after the paper template's example header"):
        make_renderer(chat_tok, "paper", 64).query(long)


def test_paper_needs_renderer_for_and_an_eos(chat_tok, tiny_lm):
    with pytest.raises(TunesiftError, match="renderer_for"):
        turn_format(chat_tok, "paper")
    assert isinstance(renderer_for(tiny_lm, "paper"), PaperRenderer)
    no_eos = tiny.make_tokenizer(chat=True)
    no_eos.eos_token = None
    with pytest.raises(TunesiftError, match="EOS"):
        make_renderer(no_eos, "paper")
    Options(method="delift", template="paper").validate()


def test_a_tokenizer_merging_across_the_cut_is_an_error(chat_tok, monkeypatch):
    r = make_renderer(chat_tok, "paper", 2048)
    real = PaperRenderer._response_ids

    def merged(self, text):  # pretend the whole string tokenises differently at the cut
        ids = real(self, text)
        return ids[:-1] if text.startswith(PAPER_EXAMPLE) else ids

    monkeypatch.setattr(PaperRenderer, "_response_ids", merged)
    with pytest.raises(TunesiftError, match="example/query boundary"):
        r.example_prefix(RECS[0])


# -- the kernel -----------------------------------------------------------------------------------


def test_kernel_equals_the_reference_scorer_and_the_plain_kernel(tiny_lm):
    r = renderer_for(tiny_lm, "paper", 2048)
    fast = utility_kernel(tiny_lm, r, RECS, RECS, cache_dir=False, token_budget=128)
    plain = plain_utility_kernel(tiny_lm, r, RECS, RECS)
    ref = ref_kernel(tiny_lm, RECS, RECS)
    for k in (fast, plain):
        np.testing.assert_allclose(k.values("rmse"), ref, atol=1e-5, rtol=0, equal_nan=True)
    np.testing.assert_allclose(fast.values("pmi"), plain.values("pmi"), atol=1e-4, rtol=0, equal_nan=True)
    # the two arms really differ: the same-wording kernel (paper texts in the chat template) is another kernel
    chat = utility_kernel(tiny_lm, renderer_for(tiny_lm, "chat"), RECS, RECS, cache_dir=False)
    assert not np.allclose(np.nan_to_num(chat.values()), np.nan_to_num(fast.values()), atol=1e-3)
    # a sparse pattern keeps its entries' values
    pat = sp.csr_matrix(np.array([[0, 1, 0, 1, 0], [1, 0, 1, 0, 0], [0, 0, 0, 1, 1], [1, 1, 0, 0, 0],
                                  [0, 0, 1, 0, 1]], dtype=bool))
    coo = utility_kernel(tiny_lm, r, RECS, RECS, pairs=pat, cache_dir=False).values().tocoo()
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-5, rtol=0)
    # rectangular (targets x other examples), no diagonal rule
    fast_r = utility_kernel(tiny_lm, r, RECS[:3], RECS[2:], cache_dir=False)
    np.testing.assert_allclose(fast_r.values(), ref_kernel(tiny_lm, RECS[:3], RECS[2:], exclude_diagonal=False),
                               atol=1e-5, rtol=0)


def test_kernel_with_cut_examples_equals_plain_and_cached_rerun(tiny_lm, tmp_path):
    long = [tiny.rec(10 + i, tiny.CORPUS[i] + " " + tiny.CORPUS[i + 3] * 3, tiny.CORPUS[i + 1]) for i in range(3)]
    recs = RECS[:3] + long
    r = renderer_for(tiny_lm, "paper", 170)
    fast = utility_kernel(tiny_lm, r, recs, recs, token_budget=96, cache_dir=tmp_path)
    assert fast.info["cut_prefixes"] > 0
    plain = plain_utility_kernel(tiny_lm, r, recs, recs)
    np.testing.assert_allclose(fast.values(), plain.values(), atol=1e-4, rtol=0, equal_nan=True)
    again = utility_kernel(tiny_lm, r, recs, recs, token_budget=96, cache_dir=tmp_path)
    assert again.info["blocks_loaded"] > 0 and again.info["blocks_computed"] == 0
    np.testing.assert_array_equal(again.values(), fast.values())
    # the chat template's kernel of the same records has its own cache entry
    other = utility_kernel(tiny_lm, renderer_for(tiny_lm, "chat", 170), recs, recs, cache_dir=tmp_path)
    assert other.info["blocks_computed"] > 0


def test_an_example_cut_to_nothing_keeps_the_rows_wording_shift(tiny_lm):
    """The paper template words the target apart in the two arms, so every pair of a row carries a
    shift; a pair whose example was cut to nothing took the no-example arm's statistics, UF 0
    exactly, which could be the row's largest value. It is scored in the example arm's wording."""
    long = tiny.rec(20, tiny.CORPUS[4], " ".join(tiny.CORPUS[5:7]))
    recs = RECS[:3] + [long]
    r = renderer_for(tiny_lm, "paper", 170)  # the long target leaves no room for any example
    fast = utility_kernel(tiny_lm, r, recs, recs, token_budget=96, cache_dir=False)
    assert fast.info["empty_prefixes"] >= 3
    row = fast.values()[3, :3]
    assert np.all(row != 0) and np.ptp(row) < 1e-6  # the same empty example, the row's shift
    plain = plain_utility_kernel(tiny_lm, r, recs, recs)
    np.testing.assert_allclose(fast.values(), plain.values(), atol=1e-6, rtol=0, equal_nan=True)


# -- the real default model -------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_ids_and_kernel_equal_the_reference(default_lm):
    tok = default_lm.tokenizer
    recs = [tiny.rec(0, "Name the capital of Italy.", "The capital of Italy is Rome."),
            tiny.rec(1, "Tom has 3 apples and buys 5 more. How many apples does he have?",
                     "He has 3 + 5 = 8 apples.\n#### 8")]
    r = renderer_for(default_lm, "paper", 2048)
    assert r.header == [] and tok.eos_token == "<|im_end|>"
    for t in recs:
        p, resp = paper_texts(t)
        e = r.encode(t)
        assert (e.prompt + e.response, len(e.response)) == ref_ids(tok, ref_no_icl(p), resp)
        for u in recs:
            q = r.query(t)
            pj, rj = paper_texts(u)
            assert (r.example_prefix(u) + q.prompt + q.response, len(q.response)) == ref_ids(tok, ref_icl(pj, rj, p), resp)
    fast = utility_kernel(default_lm, r, recs, recs, cache_dir=False)
    np.testing.assert_allclose(fast.values(), ref_kernel(default_lm, recs, recs), atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["delift", "donod", "ifd"])
def test_select_runs_with_the_paper_template(tiny_lm, tmp_path, method):
    from tunesift.pipeline import select

    rows = [{"instruction": t, "input": "x" if i % 2 else "", "output": tiny.CORPUS[(3 * i + 1) % 11]}
            for i, t in enumerate(tiny.CORPUS[:6])]
    sel = select(rows, method=method, budget=2, lm=tiny_lm, template="paper", cache_dir=str(tmp_path))
    assert sel.extra["template"] == "paper" and int(sel.kept.sum()) == 2


def test_a_record_that_fits_alone_but_not_after_the_example_header_is_an_error_row(tiny_lm, tmp_path):
    """The up-front check covers DELIFT's example arm under --template paper: a record whose
    query no longer fits after the example header becomes an error row (or a clear error), never
    a failure inside the kernel; DONOD scores it, since it has no example arm."""
    from tunesift.pipeline import select

    r = renderer_for(tiny_lm, "paper", 8192)
    long_out = " ".join(tiny.CORPUS)
    rows = [{"instruction": t, "output": tiny.CORPUS[(3 * i + 1) % 11]} for i, t in enumerate(tiny.CORPUS[:6])]
    rows.append({"instruction": "Say it.", "output": long_out})
    rec = tiny.rec(6, "Say it.", long_out)
    alone = len(r.encode(rec).response) + 6  # room for the response and a little of the prompt
    limit = alone + len(r.example_header) // 2
    short = renderer_for(tiny_lm, "paper", limit)
    short.encode(rec)  # fits alone
    with pytest.raises(TunesiftError, match="after the paper template's example header"):
        short.query(rec)
    sel = select(rows, method="delift", budget=2, lm=tiny_lm, template="paper", max_length=limit, knn=3,
                 on_error="skip", cache_dir=str(tmp_path))
    assert sel.columns["error"][6] and "line 7" in sel.columns["error"][6]
    assert "example header" in sel.columns["error"][6] and not any(sel.columns["error"][:6])
    assert int(sel.kept.sum()) == 2 and not sel.kept[6]
    with pytest.raises(TunesiftError, match="example header"):
        select(rows, method="delift", budget=2, lm=tiny_lm, template="paper", max_length=limit, knn=3,
               cache_dir=str(tmp_path))
    donod = select(rows, method="donod", budget=2, lm=tiny_lm, template="paper", max_length=limit,
                   cache_dir=str(tmp_path))
    assert "error" not in donod.columns or not any(donod.columns["error"])
