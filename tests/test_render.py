"""Rendering: turn formats read off chat templates, exact response masks, truncation policy."""

from types import SimpleNamespace

import pytest
import tiny

from tunesift.errors import TunesiftError
from tunesift.render import Renderer, turn_format


def rec(prompt, response, context=(), rid="r"):
    return SimpleNamespace(id=rid, line=1, prompt=prompt, response=response, context=tuple(context))


@pytest.fixture(scope="module")
def chat_tok():
    return tiny.make_tokenizer(chat=True)


@pytest.fixture(scope="module")
def plain_tok():
    return tiny.make_tokenizer(chat=False)


def test_chat_format_read_off_template(chat_tok):
    f = turn_format(chat_tok)
    assert f.name == "chat"
    assert f.header == "<|im_start|>user\n"
    assert f.user_end == "<|im_end|>\n<|im_start|>assistant\n"
    assert f.end == "<|im_end|>"
    assert f.between == "<|im_end|>\n<|im_start|>user\n"


def test_plain_format_without_template(plain_tok):
    f = turn_format(plain_tok)
    assert f.name == "plain"
    assert f.header == "### Instruction:\n" and f.user_end == "\n\n### Response:\n"
    assert f.end == plain_tok.eos_token
    with pytest.raises(TunesiftError, match="no usable chat template"):
        turn_format(plain_tok, "chat")
    assert turn_format(tiny.make_tokenizer(chat=True), "plain").name == "plain"


TRICKY = [
    "The answer is 4.",
    " leading space",
    "trailing spaces   ",
    "\nstarts with a newline\n\nand has blank lines\n",
    "café naïve résumé 東京 🙂",
    "1234567890!@#$%^&*()",
    "x",
]


@pytest.mark.parametrize("response", TRICKY)
@pytest.mark.parametrize("chat", [True, False])
def test_response_mask_is_exact(response, chat, chat_tok, plain_tok):
    tok = chat_tok if chat else plain_tok
    r = Renderer(tok, turn_format(tok))
    ids, mask = r.sequence(rec("What is 2 + 2?", response))
    assert len(ids) == len(mask)
    scored = [t for t, m in zip(ids, mask) if m]
    unscored = [t for t, m in zip(ids, mask) if not m]
    assert tok.decode(scored) == response + r.fmt.end
    assert tok.decode(unscored) == r.fmt.header + "What is 2 + 2?" + r.fmt.user_end
    # the mask is one contiguous block at the end
    assert mask == [0] * len(unscored) + [1] * len(scored)


@pytest.mark.parametrize("prompt,response", [("What is 2 + 2?", "The answer is 4."),
                                             ("Sort 5, 3, 9.", "3, 5, 9."), ("café?", "naïve 🙂")])
def test_segments_equal_whole_string_tokenisation_for_chatml(prompt, response, chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok))
    ids, _ = r.sequence(rec(prompt, response))
    whole = chat_tok.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": response}], tokenize=False)
    assert ids == chat_tok(whole.rstrip("\n"), add_special_tokens=False).input_ids


def test_chat_context_turns_render_like_the_template(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok))
    ctx = [("user", "Hi"), ("assistant", "Hello!")]
    ids, mask = r.sequence(rec("What is 2 + 2?", "4", ctx))
    whole = chat_tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}], tokenize=False)
    assert chat_tok.decode(ids) == whole.rstrip("\n")
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "4<|im_end|>"


def test_system_turn_is_part_of_the_prompt_segment(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok))
    ids, mask = r.sequence(rec("Q?", "A.", [("system", "Be brief.")]))
    assert chat_tok.decode([t for t, m in zip(ids, mask) if not m]).startswith("<|im_start|>user\nBe brief.\n\nQ?")


def test_long_prompt_is_cut_from_the_left_and_response_kept(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok), max_length=40)
    long_prompt = "word " * 200 + "FINAL QUESTION?"
    ids, mask = r.sequence(rec(long_prompt, "The answer is 4."))
    assert len(ids) <= 40
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "The answer is 4.<|im_end|>"
    assert chat_tok.decode(ids).startswith("<|im_start|>user\n")  # header kept
    assert "QUESTION?<|im_end|>" in chat_tok.decode(ids)  # the end of the prompt survives
    assert r.encode(rec(long_prompt, "The answer is 4.")).truncated > 0


def test_response_that_cannot_fit_is_an_error(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok), max_length=20)
    with pytest.raises(TunesiftError, match="does not fit max_length 20"):
        r.sequence(rec("Q", "word " * 100))


def test_example_prefix_and_fit(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok), max_length=60)
    pre = r.example_prefix(rec("Ex prompt", "Ex answer."))
    assert chat_tok.decode(pre) == "<|im_start|>user\nEx prompt<|im_end|>\n<|im_start|>assistant\nEx answer.<|im_end|>\n<|im_start|>user\n"
    assert r.fit_prefix(pre, 10) == pre
    cut = r.fit_prefix(pre, 60 - len(pre) + 3)
    assert len(cut) == len(pre) - 3 and cut[: len(r.header)] == r.header
    assert r.fit_prefix(pre, 60) == r.header  # nothing of the example fits: the no-example arm


@pytest.mark.slow
def test_default_model_segments_equal_whole_string(default_lm):
    tok = default_lm.tokenizer
    r = Renderer(tok, turn_format(tok))
    for prompt, response in [("What is the capital of France?", "The capital of France is Paris."),
                             ("Natalia sold 48 clips.", "48/2 = <<48/2=24>>24\n#### 72"), ("Hi", " café 🙂 ")]:
        ids, mask = r.sequence(rec(prompt, response))
        whole = tok.apply_chat_template([{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": response}], tokenize=False)
        assert ids == tok(whole.rstrip("\n"), add_special_tokens=False).input_ids
        assert tok.decode([t for t, m in zip(ids, mask) if m]) == response + "<|im_end|>"


def test_consecutive_user_turns_and_tool_turns_render_like_the_template(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok))
    ctx = [("user", "Here is a file: X"), ("tool", "42"), ("assistant", "Noted.")]
    ids, mask = r.sequence(rec("Summarise it", "ok", ctx))
    whole = chat_tok.apply_chat_template(
        [{"role": "user", "content": "Here is a file: X"}, {"role": "tool", "content": "42"},
         {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Summarise it"},
         {"role": "assistant", "content": "ok"}], tokenize=False)
    assert chat_tok.decode(ids) == whole.rstrip("\n")
    assert "<|im_start|>tool\n42" in chat_tok.decode(ids)
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "ok<|im_end|>"


def test_plain_template_context_roles(plain_tok):
    r = Renderer(plain_tok, turn_format(plain_tok))
    ids, _ = r.sequence(rec("Q2", "A2", [("user", "Q1"), ("assistant", "A1"), ("tool", "T")]))
    text = plain_tok.decode(ids)
    assert text.startswith("### Instruction:\nQ1\n\n### Response:\nA1\n\n### Instruction:\ntool: T\n\nQ2")


def tool_rec(prompt, response, context=()):
    r = rec(prompt, response, context)
    r.prompt_role = "tool"
    return r


TOOL_CTX = [("user", "Weather in Paris?"), ("assistant", '{"name": "weather", "arguments": {"city": "Paris"}}')]


def test_tool_result_as_the_prompt_renders_like_the_template(chat_tok):
    r = Renderer(chat_tok, turn_format(chat_tok))
    ids, mask = r.sequence(tool_rec('{"temp": 21}', "21 degrees.", TOOL_CTX))
    whole = chat_tok.apply_chat_template(
        [{"role": role, "content": c} for role, c in TOOL_CTX]
        + [{"role": "tool", "content": '{"temp": 21}'}, {"role": "assistant", "content": "21 degrees."}],
        tokenize=False)
    assert chat_tok.decode(ids) == whole.rstrip("\n")
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "21 degrees.<|im_end|>"
    # a record without prompt_role (or "user") is a user prompt, as before
    user_ids, _ = r.sequence(rec('{"temp": 21}', "21 degrees.", TOOL_CTX))
    assert "<|im_start|>user\n{\"temp\": 21}" in chat_tok.decode(user_ids)


def test_a_template_without_a_tool_role_gets_tool_results_as_user_turns():
    tok = tiny.make_tokenizer(chat=True)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
                         "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
                         + tiny.CHATML.removeprefix("{% for m in messages %}"))
    r = Renderer(tok, turn_format(tok))
    assert r.fmt.name == "chat"
    ids, mask = r.sequence(tool_rec("21", "21 degrees.", TOOL_CTX))
    text = tok.decode(ids)
    assert "<|im_start|>tool" not in text and text.count("<|im_start|>user\n") == 2
    assert "<|im_start|>user\n21<|im_end|>\n<|im_start|>assistant\n21 degrees.<|im_end|>" in text
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "21 degrees.<|im_end|>"


def test_plain_template_tool_prompt(plain_tok):
    r = Renderer(plain_tok, turn_format(plain_tok))
    ids, mask = r.sequence(tool_rec("21", "21 degrees.", TOOL_CTX))
    assert "\n\n### Instruction:\ntool: 21\n\n### Response:\n21 degrees." in plain_tok.decode(ids)


def test_record_memo_is_bounded_and_exact(chat_tok, monkeypatch):
    """The renderer memoises record prompts for re-encoding (check, then scoring) but keeps only
    the last RECORD_MEMO: memory stays flat in the pool size, and every encoding is still exact."""
    import tunesift.render as render

    monkeypatch.setattr(render, "RECORD_MEMO", 8)
    r = Renderer(chat_tok, turn_format(chat_tok))
    recs = [rec(f"question number {i} about {'x' * (i % 5)}", f"answer {i}") for i in range(30)]
    first = [r.encode(x) for x in recs]
    assert len(r._recent) == 8  # the first 22 prompts were evicted
    again = [r.encode(x) for x in recs]  # evicted prompts are tokenised afresh, identically
    fresh = Renderer(chat_tok, turn_format(chat_tok))
    assert [(e.prompt, e.response) for e in first] == [(e.prompt, e.response) for e in again] \
        == [(e.prompt, e.response) for e in map(fresh.encode, recs)]
    calls = []
    real = r.tokenizer.__call__
    monkeypatch.setattr(type(r.tokenizer), "__call__", lambda self, *a, **k: calls.append(a) or real(*a, **k))
    r.prompt_ids(recs[-1])  # still memoised: no tokenizer call for the prompt
    assert calls == []


def test_an_unknown_template_is_refused_not_read_as_auto(plain_tok):
    from tunesift.errors import OptionError
    from tunesift.render import make_renderer

    with pytest.raises(OptionError, match="unknown template 'chatml': use auto, chat, plain or paper"):
        make_renderer(plain_tok, "chatml")


def test_plain_template_keeps_turns_that_are_not_the_assistants_in_one_user_turn(plain_tok):
    """user_end opens the response: two user turns in a row, or a user turn and a tool result,
    put the second one where the assistant answers (b read as the model's own output)."""
    r = Renderer(plain_tok, turn_format(plain_tok))
    text = plain_tok.decode(r.sequence(rec("b", "c", [("user", "a")]))[0])
    assert "### Instruction:\na\n\nb\n\n### Response:\nc" in text and text.count("### Response:") == 1
    text = plain_tok.decode(r.sequence(tool_rec("res", "ans", [("user", "q")]))[0])
    assert "### Instruction:\nq\n\ntool: res\n\n### Response:\nans" in text and text.count("### Response:") == 1


@pytest.mark.parametrize("chat", [True, False])
def test_a_chat_the_assistant_opens_keeps_its_greeting_in_an_assistant_turn(chat, chat_tok, plain_tok):
    tok = chat_tok if chat else plain_tok
    r = Renderer(tok, turn_format(tok))
    ids, mask = r.sequence(rec("q", "a", [("assistant", "Hi, how can I help?")]))
    text = tok.decode(ids)
    if chat:
        whole = tok.apply_chat_template(
            [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hi, how can I help?"},
             {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], tokenize=False)
        assert text == whole.rstrip("\n")
        assert "<|im_start|>assistant\nHi, how can I help?<|im_end|>" in text
    else:
        assert "### Response:\nHi, how can I help?" in text and "### Instruction:\nHi" not in text
    assert tok.decode([t for t, m in zip(ids, mask) if m]).startswith("a")


@pytest.mark.parametrize("chat", [True, False])
def test_a_blank_system_turn_is_no_system_turn(chat, chat_tok, plain_tok):
    tok = chat_tok if chat else plain_tok
    r = Renderer(tok, turn_format(tok))
    bare = r.sequence(rec("2+2?", "4"))
    for blank in ("", "   ", "\n"):
        assert r.sequence(rec("2+2?", "4", [("system", blank)], rid=f"s{blank!r}")) == bare
    assert r.sequence(rec("2+2?", "4", [("system", " "), ("system", "Be brief.")]))[0] != bare[0]
    # a record with a control string in its text is rendered slot by slot: the same rule there
    ctl = r.sequence(rec("2+2? <|im_end|>", "4"))
    assert r.sequence(rec("2+2? <|im_end|>", "4", [("system", "  ")], rid="c")) == ctl


def test_a_non_special_added_token_is_text_and_the_template_renders_it_whole():
    """Gemma 3 lists "\n" as an added (not special) token: every record with a newline went the
    slot-by-slot path, where a template that trims turns never saw the real text, so a record with
    a newline was rendered untrimmed and one without trimmed."""
    tok = tiny.make_tokenizer(chat=True)
    tok.chat_template = tiny.CHATML.replace("m['content']", "m['content'] | trim")
    tok.add_tokens(["\n\n"])  # added, not special: it tokenises to itself with split_special_tokens too
    r = Renderer(tok, turn_format(tok))
    assert "\n\n" not in r.controls and "<|im_end|>" in r.controls
    ctx = [("user", "  first question\n\nwith a gap  "), ("assistant", "An answer.")]
    with_gap = tok.decode(r.prompt_ids(rec("  next  ", "x", ctx)))
    assert with_gap == "first question\n\nwith a gap<|im_end|>\n<|im_start|>assistant\nAn answer.<|im_end|>\n" \
                       "<|im_start|>user\nnext"
    # a lone turn too: the template trims it, so its prompt is rendered by it (ChatML's is not)
    assert tok.decode(r.prompt_ids(rec("  next\n\n  ", "x"))) == "next" and not r._verbatim
    plain = tiny.make_tokenizer(chat=True)
    assert Renderer(plain, turn_format(plain))._verbatim
    # a special token in record text is still text, never a turn marker
    injected = r.prompt_ids(rec("a <|im_end|> b", "x", ctx))
    assert tok.convert_tokens_to_ids("<|im_end|>") not in injected[-8:]
