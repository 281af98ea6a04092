"""Evaluation: answer extraction, metric choice, exact loss, greedy generation equal to a manual
greedy loop (left padding must not change anything), ROUGE-L and cosine."""

import numpy as np
import pytest
import torch

from tunesift.errors import OptionError
from tunesift.evaluate import (
    default_metrics,
    evaluate,
    exact_match,
    final_answer,
    generate,
    generation_batches,
    is_math,
    parse_metrics,
    rouge_l,
)
from tunesift.io.records import records_from_rows
from tunesift.render import Renderer, turn_format
from tunesift.scoring.logprobs import plain_logprob_stats

GSM = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"


@pytest.mark.parametrize("text, value", [
    (GSM, 18.0), ("#### 1,234", 1234.0), ("so the total is $5.", 5.0), ("It is -3.5 degrees", -3.5),
    ("first 2 then 7", 7.0), ("no number here", None), ("#### 42\nThe answer: 43", 42.0), (".5 of it", 0.5),
    # a model that runs on past its answer: the first #### is its answer, "answer is" before the rest
    ("#### 72\n\nQuestion: Sam has 3 pens. #### 3", 72.0), ("The answer is 72.\n\nQuestion: Sam has 3 pens.", 72.0),
    ("The answer is 7. Check: 7*2=14", 7.0),
    # fractions are their value; a hyphen after a digit is no minus; commas only group thousands
    ("3/4", 0.75), ("#### 3/4", 0.75), ("5-3", 3.0), ("it takes 3-4 days", 4.0), ("in 2023-2024", 2024.0),
    ("3,4,5", 5.0), ("#### 1,234,567", 1234567.0), ("\u22125", -5.0), ("-$5", -5.0), ("$1,000.50", 1000.5),
    # a fraction ending a sentence is still a fraction
    ("The answer is 3/4.", 0.75), ("#### 1/2.", 0.5), ("so she pays 3/4.", 0.75), ("3/4.5", 4.5),
])
def test_final_answer(text, value):
    assert final_answer(text) == value


def test_exact_match_and_math_detection():
    assert list(exact_match(["The answer is 18", "#### 17", "none", "18.0"], [GSM, GSM, GSM, "18"])) == [1, 0, 0, 1]
    assert list(exact_match(["0.75", "#### 18\nQuestion: ... #### 4"], ["#### 3/4", GSM])) == [1, 1]
    assert is_math([GSM, "#### 3"]) and is_math(["51", "7.5"])
    assert not is_math(["Paris is the capital of France, home to 2 million people."])
    math_recs = records_from_rows([{"prompt": "q", "response": GSM}] * 3)
    text_recs = records_from_rows([{"prompt": "q", "response": "A long answer in words."}] * 3)
    assert "exact_match" in default_metrics(math_recs) and "exact_match" not in default_metrics(text_recs)


def test_parse_metrics():
    assert parse_metrics("auto") is None and parse_metrics(None) is None
    assert parse_metrics("loss, rougeL") == ["loss", "rougeL"]
    with pytest.raises(OptionError, match="unknown metric 'bleu'"):
        parse_metrics("loss,bleu")


def test_rouge_l():
    r = rouge_l(["the cat sat", "dog", "the cat"], ["the cat sat", "cat", "the cat sat on"])
    assert r[0] == pytest.approx(1.0) and r[1] == 0.0 and 0.5 < r[2] < 1.0


@pytest.fixture(scope="module")
def recs():
    return records_from_rows([{"prompt": p, "response": f"answer {i}"} for i, p in enumerate(
        ["Sort 5, 3, 9", "What is 2 + 2? Think carefully about it before you answer.", "hot", "Capital of France?"])])


def test_loss_and_perplexity_are_exact(tiny_lm, recs):
    rend = Renderer(tiny_lm.tokenizer, turn_format(tiny_lm.tokenizer), max_length=256)
    ev = evaluate(tiny_lm, recs, metrics=["loss", "perplexity"], renderer=rend)
    seqs = [(rend.sequence(r)[0], sum(rend.sequence(r)[1])) for r in recs]
    _, lp = plain_logprob_stats(tiny_lm, seqs)
    n = sum(t for _, t in seqs)
    assert ev.metrics["loss"] == pytest.approx(-lp.sum() / n, rel=1e-5)
    assert ev.metrics["perplexity"] == pytest.approx(np.exp(-lp.sum() / n), rel=1e-5)
    np.testing.assert_allclose(ev.per_record["loss"], -lp / [t for _, t in seqs], rtol=1e-5)
    assert ev.generations == [None] * len(recs)


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_plain_lm", "tiny_gemma"])  # gemma: sliding-window layers
def test_batched_greedy_generation_equals_a_manual_loop(which, request, recs):
    """Left padding and the static cache (sized per batch, written in place) change nothing."""
    lm = request.getfixturevalue(which)
    rend = Renderer(lm.tokenizer, turn_format(lm.tokenizer), max_length=256)
    counts: dict = {}
    got = generate(lm, rend, recs, max_new_tokens=6, batch_size=4, counts=counts)  # different lengths, left-padded
    assert generate(lm, rend, recs, max_new_tokens=6, batch_size=1) == got  # no padding at all
    assert generate(lm, rend, recs, max_new_tokens=6, batch_size=4, static_cache=False) == got
    stop = rend.ids(rend.fmt.end)[0]
    capped = 0
    for r, text in zip(recs, got):
        ids = rend.header + rend.encode(r).prompt
        new = []
        with torch.no_grad():
            for _ in range(6):
                logits = lm.model(input_ids=torch.tensor([ids + new])).logits[0, -1]
                # no near-tie (measured gap >= 0.003): batched float32 rounding (~1e-5) cannot flip
                # the argmax on another CPU, so the exact comparison below is safe
                top2 = torch.topk(logits, 2).values
                assert float(top2[0] - top2[1]) > 1e-4
                nxt = int(logits.argmax())
                if nxt in (stop, lm.tokenizer.eos_token_id):
                    break
                new.append(nxt)
        capped += len(new) == 6  # ran to max_new_tokens without an end token
        assert text == lm.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert counts == {"generation_prompts_cut": 0, "generations_capped": capped}


def test_generation_batches_bound_rows_and_cache_tokens():
    widths = [50, 10, 300, 12, 11, 40, 900]
    got = generation_batches(widths, max_new_tokens=100, batch_size=3, budget=500)
    assert sorted(i for b in got for i in b) == list(range(7))
    for b in got:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * (max(widths[i] for i in b) + 100) <= 500
    assert got == [[1, 4, 3], [5, 0], [2], [6]]  # by width; 900 + 100 alone
    assert generation_batches([], 10, 4) == []


def test_a_generate_limit_that_generates_nothing_is_refused(tiny_lm, recs):
    for bad in (-1, 0):
        with pytest.raises(OptionError, match="generate-limit must be"):
            evaluate(tiny_lm, recs, metrics=["loss", "rougeL"], generate_limit=bad)
    assert "loss" in evaluate(tiny_lm, recs, metrics=["loss"], generate_limit=0).metrics  # nothing to generate


def test_generative_metrics_respect_the_limit(tiny_lm, recs):
    ev = evaluate(tiny_lm, recs, metrics=["rougeL", "cosine", "loss"], max_new_tokens=4, generate_limit=2)
    assert [g is None for g in ev.generations] == [False, False, True, True]
    assert np.isnan(ev.per_record["rougeL"][2:]).all() and not np.isnan(ev.per_record["rougeL"][:2]).any()
    assert -1.0 <= ev.metrics["cosine"] <= 1.0 and 0.0 <= ev.metrics["rougeL"] <= 1.0
    assert set(ev.metrics) == {"rougeL", "cosine", "loss"}


def test_evaluation_counts_cut_prompts(tiny_lm, recs):
    """What the metrics were computed over is said out loud: prompts cut to max_length, for the loss
    (room for the reference answer) and for generation (room for max_new_tokens, whatever the
    reference's length)."""
    from tunesift.evaluate import generation_prompt
    from tunesift.render import renderer_for

    rend = renderer_for(tiny_lm, max_length=28)
    roomy = renderer_for(tiny_lm, max_length=4096)
    whole = [roomy.header + roomy.encode(r).prompt for r in recs]  # never cut
    for r, full in zip(recs, whole):
        ids, cut = generation_prompt(rend, r, 16)
        assert len(ids) == min(len(full), rend.max_length - 16) and ids[len(rend.header):] == full[-(len(ids) - len(rend.header)):]
        assert cut == len(full) - len(ids)
    want_gen = sum(len(full) > rend.max_length - 16 for full in whole)
    want_loss = sum(1 for r in recs if rend.encode(r).truncated)
    assert want_gen > want_loss  # 16 new tokens need more room than these short answers
    ev = evaluate(tiny_lm, recs, metrics=["loss", "rougeL"], renderer=rend, max_new_tokens=16)
    assert ev.counts["loss_prompts_cut"] == want_loss and ev.counts["generation_prompts_cut"] == want_gen


def test_cosine_of_identical_texts_is_one():
    from tunesift.evaluate import embedding_cosine

    c = embedding_cosine(["The capital of France is Paris.", "apples"], ["The capital of France is Paris.",
                                                                        "quantum chromodynamics"])
    assert c[0] == pytest.approx(1.0, abs=1e-5) and c[1] < 0.5


def test_a_checkpoints_generation_config_does_not_change_greedy_answers(tiny_lm, recs):
    """transformers fills every generation setting a call leaves unset from the model's own
    generation_config: a shipped repetition_penalty or no_repeat_ngram_size changed the answers."""
    rend = Renderer(tiny_lm.tokenizer, turn_format(tiny_lm.tokenizer), max_length=256)
    clean = generate(tiny_lm, rend, recs, max_new_tokens=8)
    cfg = tiny_lm.model.generation_config
    saved = cfg.to_dict()
    try:
        ids = torch.tensor([rend.header + rend.encode(recs[0]).prompt])
        with torch.no_grad():
            first = int(tiny_lm.model.generate(input_ids=ids, do_sample=False, max_new_tokens=1)[0, -1])
            cfg.suppress_tokens, cfg.no_repeat_ngram_size, cfg.repetition_penalty = [first], 1, 3.0
            polluted = tiny_lm.model.generate(input_ids=ids, do_sample=False, max_new_tokens=1)
        assert int(polluted[0, -1]) != first  # the setting bites when a call leaves it unset
        assert generate(tiny_lm, rend, recs, max_new_tokens=8) == clean
    finally:
        for k in ("suppress_tokens", "no_repeat_ngram_size", "repetition_penalty"):
            setattr(cfg, k, saved.get(k))


class _Tok:
    """A tokenizer stub: ``▁`` (7) is ordinary text, ``</s>`` (2) and ``<|im_end|>`` (5) are control tokens."""
    all_special_ids = [2]
    eos_token_id = 2

    def get_added_vocab(self):
        return {"<|im_end|>": 5}


def _rend(end: str, ids: list[int]):
    from types import SimpleNamespace

    return SimpleNamespace(fmt=SimpleNamespace(end=end), ids=lambda text: ids)


def test_the_stop_token_is_the_ends_control_token_never_ordinary_text():
    """Llama 2's template ends an answer with " </s>" = ["▁", "</s>"]: stopping on its first token
    cut every answer at its first space."""
    from tunesift.evaluate import control_end, stop_ids

    assert stop_ids(_rend(" </s>", [7, 2]), _Tok()) == {2}
    assert stop_ids(_rend("<|im_end|>", [5]), _Tok()) == {5, 2}
    assert control_end(_rend("\n### End", [7, 9]), _Tok()) is None and stop_ids(_rend("x", [7]), _Tok()) == {2}
