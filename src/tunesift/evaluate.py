"""Held-out evaluation of a (fine-tuned) model on instruction records.

Metrics (higher is better unless noted):

- ``loss``: mean response-token negative log-likelihood, teacher-forced, token-weighted over the
  set: sum_i nll_i / sum_i T_i (nats; lower is better).
- ``perplexity``: exp(loss) (lower is better).
- ``rougeL``: mean ROUGE-L F1 (rouge-score, Porter stemming) of the greedy generation against the
  reference response.
- ``exact_match``: share of generations whose final answer equals the reference's: the number
  after the first ``####`` when there is one (GSM8K), else the number after "answer is", else the
  last number in the text (SVAMP-style answers); see :func:`final_answer`.
- ``cosine``: mean cosine similarity of all-MiniLM-L6-v2 embeddings of generation and reference.

:func:`default_metrics` picks them per dataset: all but ``exact_match`` always, ``exact_match``
when the references are math answers (nearly all carry a number and either ``####`` or are a bare
number). Generation is greedy, prompts rendered exactly as in training, and stops at the
template's end token or ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .errors import OptionError

log = logging.getLogger("tunesift")

METRICS = ("loss", "perplexity", "rougeL", "exact_match", "cosine")
LOWER_IS_BETTER = {"loss", "perplexity"}
_GENERATIVE = {"rougeL", "exact_match", "cosine"}
# A number: a minus sign only where no digit is glued before it ("5-3" and "2023-2024" are two
# numbers), commas only as thousands separators ("1,234"; "3,4,5" is three numbers), a decimal
# part, and a fraction ("3/4" is 0.75, also before a full stop; "3/4.5" is 3 and 4.5). U+2212 counts
# as a minus.
_NUMBER = re.compile(r"(?<![\d.])(?P<sign>[-\u2212](?=\.?\d))?"
                     r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:/(?P<den>\d+)(?!\d|\.\d))?")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER.finditer(text.replace("$", "")):
        v = float(m["num"].replace(",", "")) * (-1 if m["sign"] else 1)
        if m["den"] is not None:
            if float(m["den"]) == 0:
                continue
            v /= float(m["den"])
        out.append(v)
    return out


def final_answer(text: str) -> float | None:
    """The final numeric answer of a math response, or None when there is none: the first number
    after the first ``####`` (GSM8K's marker; a model that runs on past its answer may write a
    second one for a question it made up); else the first number after the last "answer is";
    else the last number in the text. ``$`` and thousands separators are ignored; fractions are
    their value."""
    if "####" in text:
        nums = _numbers(text.split("####", 1)[1])
        return nums[0] if nums else None
    cue = list(_ANSWER_IS.finditer(text))
    if cue:
        nums = _numbers(text[cue[-1].end():])
        if nums:
            return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def is_math(references: Sequence[str]) -> bool:
    """True when >= 90% of references carry a final number and either use ``####`` or are short
    (at most 3 words: a bare answer)."""
    if not references:
        return False
    ok = sum(final_answer(r) is not None and ("####" in r or len(r.split()) <= 3) for r in references)
    return ok >= 0.9 * len(references)


def default_metrics(records: Sequence) -> list[str]:
    """The metrics that make sense for these records (see the module docstring)."""
    out = ["loss", "perplexity", "rougeL", "cosine"]
    if is_math([r.response for r in records]):
        out.insert(3, "exact_match")
    return out


def parse_metrics(text: str | Sequence[str] | None) -> list[str] | None:
    """``"loss,rougeL"`` -> ["loss", "rougeL"]; None/"auto" -> None (per-dataset defaults)."""
    if text is None or text == "auto":
        return None
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise OptionError(f"unknown metric '{(bad or [''])[0]}': use any of {', '.join(METRICS)} or auto")
    return names


#: fewer prompt tokens than this left for a generation (max_length - header - max_new_tokens) are warned about
MIN_PROMPT_ROOM = 32


def check_settings(metrics: Sequence[str] | None, *, template: str = "auto", max_length: int = 2048,
                   max_new_tokens: int = 128, generate_limit: int | None = None) -> None:
    """Refuse, in one line and before any model loads, settings :func:`evaluate` cannot honour.

    ``metrics``: the names (None: the defaults, which always generate). ``generate_limit`` 0
    generates nothing, which only a set of likelihood metrics (loss, perplexity) allows."""
    from .render import check_template

    names = list(metrics) if metrics else default_metrics(())  # without records: the ones every set gets
    parse_metrics(names)
    check_template(template)
    for what, v, least in (("max-length", max_length, 8), ("max-new-tokens", max_new_tokens, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise OptionError(f"{what} must be a whole number of at least {least}, got {v!r}")
    gen_names = [m for m in names if m in _GENERATIVE]
    if gen_names and max_new_tokens >= max_length:  # the prompt would be cut to nothing
        raise OptionError(f"max-new-tokens {max_new_tokens} leaves no room for the prompt in max-length {max_length}: "
                          f"raise --max-length or lower --max-new-tokens (needed for {', '.join(gen_names)})")
    if generate_limit is None:  # every record
        return
    if isinstance(generate_limit, bool) or not isinstance(generate_limit, int) or generate_limit < 0:
        raise OptionError(f"generate-limit must be a whole number of at least 0, got {generate_limit!r}")
    if generate_limit == 0 and gen_names:
        raise OptionError(f"generate-limit must be at least 1 for {', '.join(gen_names)}, got 0 (0 generates "
                          "nothing, which only likelihood metrics allow, e.g. --metrics loss,perplexity)")


@dataclass
class Evaluation:
    """Set-level ``metrics`` and per-record arrays (n,) in ``per_record`` (NaN where a metric
    was not computed for a record, e.g. beyond ``generate_limit``); ``generations`` (or None)."""

    metrics: dict[str, float]
    per_record: dict[str, np.ndarray]
    generations: list[str | None]
    timings: dict[str, float] = field(default_factory=dict)
    # records whose prompt lost tokens to max_length (teacher-forced loss; generation), and
    # generations cut off at max_new_tokens: what a metric was computed over, said out loud
    counts: dict[str, int] = field(default_factory=dict)


GEN_TOKENS = 16384  # rows x (prompt width + new tokens) per generation batch: bounds its KV cache


def generation_batches(widths: Sequence[int], max_new_tokens: int, batch_size: int,
                       budget: int = GEN_TOKENS) -> list[list[int]]:
    """Rows (indices into ``widths``, the prompt lengths) in batches for :func:`generate`: sorted
    by width, at most ``batch_size`` rows and ``rows x (widest + max_new_tokens) <= budget``
    tokens a batch (a row over the budget on its own goes alone)."""
    out: list[list[int]] = []
    for i in sorted(range(len(widths)), key=lambda i: (widths[i], i)):
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * (widths[i] + max_new_tokens) <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def generation_prompt(renderer, record, max_new_tokens: int) -> tuple[list[int], int]:
    """(token ids, tokens cut) of the prompt a model answers ``record`` from: header | prompt |
    user_end, rendered as in training, its prompt cut from the left to leave ``max_new_tokens``
    of room in ``max_length``. The cut never depends on the reference answer's length (a
    teacher-forced encoding makes room for the reference; a generation needs room for its own)."""
    bare = (dataclasses.replace(record, response="") if dataclasses.is_dataclass(record)
            else SimpleNamespace(**{**vars(record), "response": ""}))
    e = renderer.encode(bare)  # the prompt, cut only to leave room for the end token
    keep = max(1, renderer.max_length - len(renderer.header) - max_new_tokens)
    cut = max(0, len(e.prompt) - keep)
    return renderer.header + e.prompt[cut:], e.truncated + cut


#: plain greedy decoding, whatever the checkpoint's generation_config says: transformers fills every
#: setting a call leaves unset from it (a shipped repetition_penalty, no_repeat_ngram_size, num_beams
#: or min_new_tokens would change every answer), so each one that alters the pick is set here
GREEDY = {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "temperature": None, "top_p": None,
          "top_k": None, "min_p": None, "typical_p": None, "epsilon_cutoff": None, "eta_cutoff": None,
          "repetition_penalty": None, "encoder_repetition_penalty": None, "no_repeat_ngram_size": None,
          "encoder_no_repeat_ngram_size": None, "bad_words_ids": None, "sequence_bias": None,
          "suppress_tokens": None, "begin_suppress_tokens": None, "min_length": 0, "min_new_tokens": None,
          "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
          "guidance_scale": None, "stop_strings": None, "max_time": None, "watermarking_config": None}


def control_end(renderer, tok) -> int | None:
    """The first control (special or added) token of the template's ``end`` string, or None."""
    control = set(tok.all_special_ids) | set((getattr(tok, "get_added_vocab", dict)() or {}).values())
    return next((i for i in renderer.ids(renderer.fmt.end) if i in control), None)


def stop_ids(renderer, tok) -> set[int]:
    """Token ids that end a generated answer: the template's end token (its first control token:
    ``<|im_end|>``; never an ordinary text token such as the "▁" of Llama 2's ``" </s>"``, which
    would cut every answer at its first space) and EOS. An end of plain text only (no control
    token) stops at EOS, and the answer is cut at the end text."""
    return {i for i in (control_end(renderer, tok), tok.eos_token_id) if i is not None}


def generate(lm, renderer, records: Sequence, *, max_new_tokens: int = 128, batch_size: int = 32,
             static_cache: bool = True, progress: Callable[[int], None] | None = None,
             counts: dict[str, int] | None = None) -> list[str]:
    """Greedy generations for ``records`` (their prompts rendered as in training), in input order.

    Prompts are left-padded and batched by length (:func:`generation_batches`); generation stops
    at the template's end token (and EOS) or after ``max_new_tokens``; the text is decoded without
    special tokens, stripped. ``counts`` (a dict, if given) gets ``generation_prompts_cut`` (prompts
    cut by :func:`generation_prompt`) and ``generations_capped`` (generations that ran to
    ``max_new_tokens`` without an end token: a cut-off answer). The KV cache is a ``StaticCache``
    sized to the batch (prompt width + ``max_new_tokens``), written in place: the default cache concatenates every layer's keys
    and values at every step, which took ~40% of a CPU generation (measured 1.7x faster with
    identical tokens; docs/results.md). ``static_cache=False``: the model's default cache (for
    an architecture whose cache cannot be static, and the benchmark's reference)."""
    import torch
    from transformers import StaticCache

    from .scoring.token_table import TokenLists

    tok = lm.tokenizer
    n_cut = [0]  # prompts cut by generation_prompt

    def prompt_ids():
        for r in records:
            ids, cut = generation_prompt(renderer, r, max_new_tokens)
            n_cut[0] += cut > 0
            yield ids

    prompts = TokenLists(prompt_ids())  # 4 bytes a token, not a list of Python ints per record
    capped = 0
    stops = stop_ids(renderer, tok)
    tail = "" if control_end(renderer, tok) is not None else renderer.fmt.end.strip()  # an end of plain text
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stops))
    out: list[str] = [""] * len(prompts)
    dev = torch.device(lm.device)
    lengths = prompts.lengths()
    for rows in generation_batches(lengths.tolist(), max_new_tokens, batch_size):
        width = int(max(lengths[i] for i in rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            p = prompts.array(i)
            ids[r, width - len(p):] = torch.from_numpy(p.astype("int64"))
            mask[r, width - len(p):] = 1
        kw = {}
        if static_cache:  # no torch.compile per batch shape on CUDA
            kw = {"cache": StaticCache(config=lm.model.config, max_cache_len=width + max_new_tokens),
                  "disable_compile": True}
        with torch.inference_mode():
            gen = lm.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **GREEDY,
                                    max_new_tokens=max_new_tokens, eos_token_id=sorted(stops), pad_token_id=pad, **kw)
        for r, i in enumerate(rows):
            new = gen[r, width:].tolist()
            cut = next((t for t, x in enumerate(new) if x in stops), len(new))
            text = tok.decode(new[:cut], skip_special_tokens=True)
            out[i] = (text.split(tail)[0] if tail else text).strip()
            capped += cut == len(new)
        if progress:
            progress(len(rows))
    if counts is not None:
        counts.update(generation_prompts_cut=n_cut[0], generations_capped=capped)
    return out


# scripts written without spaces between words: each character is a token
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f\u0e80-\u0eff]")
_WORD = re.compile(r"[^\W_]+")
_PIECES = re.compile(_UNSPACED.pattern + "|" + _UNSPACED.pattern.replace("[", "[^", 1) + "+")


class RougeTokens:
    """rouge-score's tokenizer (lower case, runs of ``[a-z0-9]``, Porter stems of words over 3
    letters) for ASCII text, bit for bit; other text keeps its letters (the default drops every
    non-ASCII one, scoring two identical Chinese or Cyrillic answers 0): Unicode words, and
    single characters in scripts written without spaces (Chinese, Japanese, Thai, Lao)."""

    def __init__(self) -> None:
        from rouge_score import tokenizers

        self.ascii = tokenizers.DefaultTokenizer(use_stemmer=True)

    def tokenize(self, text: str) -> list[str]:
        if text.isascii():
            return self.ascii.tokenize(text)
        out: list[str] = []
        for run in _WORD.findall(text.lower()):
            for word in _PIECES.findall(run):  # "中文abc": 中, 文, abc
                out.extend(self.ascii.tokenize(word) if word.isascii() else [word])
        return out


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 (n,) of each prediction against its reference (tokens: :class:`RougeTokens`)."""
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeTokens())
    return np.array([sc.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)])


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """1.0 where the final numbers agree (to 1e-6 relative), else 0.0 (n,)."""
    out = np.zeros(len(predictions))
    for i, (p, r) in enumerate(zip(predictions, references)):
        a, b = final_answer(p), final_answer(r)
        out[i] = float(a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b)))
    return out


def embedding_cosine(predictions: Sequence[str], references: Sequence[str], device: str = "cpu") -> np.ndarray:
    """Cosine similarity (n,) of all-MiniLM-L6-v2 embeddings of prediction and reference."""
    from .scoring.embedding import embed_texts

    a, b = embed_texts(list(predictions), device=device), embed_texts(list(references), device=device)
    return np.sum(a.astype(np.float64) * b, axis=1)


def evaluate(
    lm,
    records: Sequence,
    *,
    metrics: Sequence[str] | None = None,
    renderer=None,
    template: str = "auto",
    max_length: int = 2048,
    max_new_tokens: int = 128,
    generate_limit: int | None = None,
    token_budget: int = 4096,
    batch_size: int = 32,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> Evaluation:
    """Evaluate ``lm`` (a :class:`~tunesift.models.LoadedModel`) on held-out ``records``.

    ``metrics`` defaults to :func:`default_metrics`; generative metrics use the first
    ``generate_limit`` records (all when None), the likelihood metrics always use all of them.
    """
    from .render import renderer_for
    from .scoring.nll import perplexity, response_nll

    names = list(metrics) if metrics else default_metrics(records)
    check_settings(names, template=template, max_length=max_length, max_new_tokens=max_new_tokens,
                   generate_limit=generate_limit)
    gen_names = [m for m in names if m in _GENERATIVE]
    renderer = renderer or renderer_for(lm, template, max_length)
    room = renderer.max_length - len(renderer.header) - max_new_tokens
    if gen_names and room < MIN_PROMPT_ROOM:  # prompts cut to (nearly) nothing: answers without the question
        log.warning("max-length %d leaves %d tokens for each generation prompt after the template's %d and "
                    "max-new-tokens %d: longer prompts lose their start; raise --max-length or lower "
                    "--max-new-tokens", renderer.max_length, max(room, 1), len(renderer.header), max_new_tokens)
    if not records:
        raise OptionError("no test records to evaluate")
    n = len(records)
    per: dict[str, np.ndarray] = {}
    out: dict[str, float] = {}
    timings = {}
    counts: dict[str, int] = {}
    t = time.perf_counter()
    if {"loss", "perplexity"} & set(names):
        bar = progress("held-out loss", n) if progress else None
        nll, n_tok = response_nll(lm, renderer, records, token_budget=token_budget, on_batch=bar)
        counts["loss_prompts_cut"] = sum(1 for r in records if renderer.encode(r).truncated)
        per["loss"] = nll / np.maximum(n_tok, 1)
        per["n_tokens"] = n_tok
        if "loss" in names:
            out["loss"] = float(nll.sum() / max(1, n_tok.sum()))
        if "perplexity" in names:
            out["perplexity"] = perplexity(nll, n_tok)
        timings["loss_s"] = time.perf_counter() - t
    gens: list[str | None] = [None] * n
    if gen_names:
        m = n if generate_limit is None else min(n, generate_limit)
        sub = list(records[:m])
        t = time.perf_counter()
        bar = progress("generating", m) if progress else None
        texts = generate(lm, renderer, sub, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=bar,
                         counts=counts)
        gens[:m] = texts
        timings["generate_s"] = time.perf_counter() - t
        refs = [r.response for r in sub]
        scorers = {"rougeL": rouge_l, "exact_match": exact_match,
                   "cosine": lambda p, r: embedding_cosine(p, r, lm.device)}
        for name in gen_names:
            vals = np.full(n, np.nan)
            vals[:m] = scorers[name](texts, refs)
            per[name] = vals
            out[name] = float(np.mean(vals[:m])) if m else float("nan")
    for key, what in (("loss_prompts_cut", "for the loss"), ("generation_prompts_cut", "for generation")):
        if counts.get(key):  # counted in metrics.json as well; said here for a run without --out
            log.warning("%d of %d test prompts were cut from the left to fit max-length %d %s (counts.%s)",
                        counts[key], n, renderer.max_length, what, key)
    return Evaluation(out, per, gens, timings, counts)


EVAL_FILES = frozenset({"metrics.json", "predictions.jsonl"})


def written_by_evaluate(meta: dict) -> bool:
    """True for a ``metrics.json`` that :func:`save_evaluation` wrote (also one from before its ``tool`` key)."""
    return meta.get("tool") == "tunesift" or {"metrics", "records", "fingerprint"} <= meta.keys()


def save_evaluation(out, records: Sequence, ev: Evaluation, result: dict) -> None:
    """``metrics.json`` (``result`` plus the SHA-256 of the predictions) and ``predictions.jsonl``
    (one row per test record: id, reference, prediction, per-record metrics; NaN as null), written
    as one unit into ``out`` (:func:`tunesift.folders.publish`). The command line checked ``out``
    before any work (:func:`tunesift.outputs.check_output_folder` with :data:`EVAL_FILES`); here
    again, for callers from Python: a folder is replaced only when it is an unchanged earlier
    evaluation, and a file is never replaced (a one-line error, nothing written)."""
    import json
    from pathlib import Path

    from .folders import check_earlier_set, digests, publish

    if Path(out).is_dir():  # an evaluation from before the checksums is trusted by its entries' names
        names = all(p.name in EVAL_FILES for p in Path(out).iterdir())
        check_earlier_set(Path(out), out, "metrics.json", unlisted={}, ours=written_by_evaluate, names_checked=names)

    def fill(tmp: Path) -> None:
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for i, r in enumerate(records):
                row = {"id": r.id, "reference": r.response, "prediction": ev.generations[i]}
                row.update({k: (None if v[i] != v[i] else float(v[i])) for k, v in ev.per_record.items()})
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta = {"tool": "tunesift", **result, "files": digests(tmp)}  # predictions.jsonl
        (tmp / "metrics.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    publish(Path(out), fill, "the evaluation", out)
