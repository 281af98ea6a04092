"""Per-record scores of the baseline selectors: response loss and perplexity, IFD (Cherry LLM;
Superfiltering is IFD with a smaller model) and SelectIT (token + sentence level).

Every function here is pure scoring: records in, per-record float64 columns (n,) out, in input
order; the ``*_order`` functions turn a column into a preference order (best first). Notation
as in :mod:`tunesift.scoring.nll`: record i has response tokens y_1..y_T (the response ids plus
the template's end token) and

    loss_i = -(1/T) sum_t log p(y_t | header, prompt_i, user_end, y_<t)      (mean NLL, nats)

See docs/baselines.md for what each baseline keeps and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import OptionError, TunesiftError
from .logprobs import Continuation, ResponseScorer, attention_backends, length_batches
from .nll import response_nll

OnBatch = Callable[[int], None] | None


# -- loss and perplexity ---------------------------------------------------------------------


def loss_scores(
    lm, renderer, records: Sequence, *, token_budget: int = 4096, on_batch: OnBatch = None
) -> dict[str, np.ndarray]:
    """One teacher-forced pass: ``loss`` (mean response NLL), ``perplexity`` = exp(loss) and
    ``n_tokens`` (T, int64), each (n,). Both methods rank identically; they differ only in the
    column a reader sees."""
    nll, n = response_nll(lm, renderer, records, token_budget=token_budget, on_batch=on_batch)
    loss = nll / n
    return {"loss": loss, "perplexity": np.exp(loss), "n_tokens": n}


def loss_order(loss: np.ndarray, keep: str = "easiest") -> np.ndarray:
    """Indices best first: lowest loss first (``easiest``) or highest first (``hardest``).

    Ties keep input order; NaN scores come last either way.
    """
    if keep not in ("easiest", "hardest"):
        raise OptionError(f"unknown keep '{keep}': use easiest or hardest")
    loss = np.asarray(loss, dtype=np.float64)
    key = loss if keep == "easiest" else -loss
    return np.argsort(key, kind="stable")  # NaN sorts to the end


# -- IFD ---------------------------------------------------------------------------------------


def alone_continuations(renderer, records: Sequence) -> Sequence[Continuation]:
    """The unconditioned arm: ``user_end | response | end`` after the header, i.e. the same
    sequence with the prompt (and any earlier chat turns) removed. The scored tokens are exactly
    the conditioned arm's; ``user_end`` is the one unscored token run the scorer needs."""
    user_end = renderer.ids(renderer.fmt.user_end)
    if not user_end:
        raise TunesiftError(
            "the template's user_end is empty: IFD needs a token before the response"
        )
    from .token_table import ContinuationTable

    def items():
        for r in records:
            resp = renderer.encode(r).response
            yield user_end + resp, len(resp)

    return ContinuationTable(items())  # one flat token array, not a tuple of ints per token


def ifd_scores(
    lm, renderer, records: Sequence, *, token_budget: int = 4096, on_batch: OnBatch = None
) -> dict[str, np.ndarray]:
    """Instruction-Following Difficulty (Li et al. 2023, "From Quantity to Quality", Cherry LLM).

        loss_i       = -(1/T) sum_t log p(y_t | header, prompt_i, user_end, y_<t)
        loss_alone_i = -(1/T) sum_t log p(y_t | header, user_end, y_<t)
        ifd_i        = loss_i / loss_alone_i

    Same T tokens in both arms (the response ids plus the template's end token); the
    unconditioned arm is the chat turn with an empty prompt (:func:`alone_continuations`).
    IFD < 1: the prompt helps predict the response, and the larger the IFD the less it helps
    (a hard but followable instruction). IFD >= 1: the prompt does not help at all; the paper
    drops these first. Superfiltering (Li et al. 2024) is this same score from a much smaller
    model: pass a small ``lm``.

    Returns ``loss``, ``loss_alone``, ``ifd`` (float64) and ``n_tokens`` (int64), each (n,).
    ``loss`` equals :func:`loss_scores`'s. A zero ``loss_alone`` gives ``ifd = inf`` (NaN when
    ``loss`` is 0 too, or either is NaN).
    ``on_batch(rows)`` follows every forward batch: 2n rows in all.
    """
    nll, n = response_nll(lm, renderer, records, token_budget=token_budget, on_batch=on_batch)
    scorer = ResponseScorer(lm, token_budget=token_budget)
    [(_, logp)] = scorer.score_groups(
        [(renderer.header, alone_continuations(renderer, records))], on_batch=on_batch
    )
    loss, alone = nll / n, -logp / n
    return {"loss": loss, "loss_alone": alone, "ifd": ifd_ratio(loss, alone), "n_tokens": n}


def ifd_ratio(loss: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """IFD = loss / loss_alone, (n,) -> (n,): +inf where only ``loss_alone`` is 0 (the response is
    certain without its prompt), NaN where it is undefined (either NaN, or both 0), never "the
    prompt does not help" for a failed score."""
    loss, alone = np.asarray(loss, dtype=np.float64), np.asarray(alone, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ifd = np.where(alone > 0, loss / np.where(alone > 0, alone, 1.0), np.inf)
    ifd[np.isnan(loss) | np.isnan(alone) | ((alone == 0) & (loss == 0))] = np.nan
    return ifd


def ifd_order(ifd: np.ndarray) -> np.ndarray:
    """Indices best first: records with IFD < 1 by decreasing IFD, then the IFD >= 1 records
    (the ones the paper drops first) by increasing IFD, then NaN. Ties keep input order."""
    ifd = np.asarray(ifd, dtype=np.float64)
    idx = np.arange(len(ifd))
    below = ifd < 1  # False for NaN
    above = ifd >= 1
    first = idx[below][np.argsort(-ifd[below], kind="stable")]
    then = idx[above][np.argsort(ifd[above], kind="stable")]
    return np.concatenate([first, then, idx[np.isnan(ifd)]])


# -- SelectIT ----------------------------------------------------------------------------------

# K rating prompts (sentence-level reflection needs several wordings of the same question).
# "{instruction}" and "{response}" mark where the record goes; nothing else is substituted.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Rate the quality of the response to the instruction below on a scale from 1 (poor) to "
    "5 (excellent).\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Answer with one digit from 1 to 5.",
    "How well does the response follow the instruction and answer it correctly? Give a score "
    "from 1 to 5, where 5 is best.\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Reply with the score only.",
    "You are grading training data for an assistant. Score this instruction and response pair "
    "from 1 (wrong or useless) to 5 (accurate and helpful).\n\nInstruction:\n{instruction}\n\n"
    "Response:\n{response}\n\nScore (1-5):",
    "Judge whether the response is accurate, relevant and complete for the instruction, and "
    "rate it 1, 2, 3, 4 or 5.\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Write just the number.",
    "Below are an instruction and a response. On a scale of 1 to 5, how good is the response "
    "as an answer to the instruction?\n\nInstruction:\n{instruction}\n\nResponse:\n{response}"
    "\n\nOutput a single digit.",
)
DIGITS = "12345"
TOKEN_LEVELS = ("paper", "expected")


def selectit_token(p: np.ndarray, token_level: str = "paper") -> np.ndarray:
    """Token-level scores (..., K) from digit probabilities p (..., K, 5) of "1".."5".

    With q = p / sum_d p_d (the five digits renormalised, as in the paper):

    - ``paper`` (SelectIT eq. 2-3): s = b * (1/4) sum_d (q_b - q_d) = b * (5 q_b - 1) / 4, with
      b = argmax_d q_d (the lower digit on ties); the factor is 0 for a uniform q, 1 for one-hot.
    - ``expected``: s = sum_d d q_d, the probability-weighted rating.
    """
    if token_level not in TOKEN_LEVELS:
        raise OptionError(f"unknown token level '{token_level}': use paper or expected")
    p = np.asarray(p, dtype=np.float64)
    q = p / p.sum(-1, keepdims=True)
    d = np.arange(1, q.shape[-1] + 1, dtype=np.float64)
    if token_level == "expected":
        return q @ d
    b = q.argmax(-1)
    qb = np.take_along_axis(q, b[..., None], -1)[..., 0]
    return (b + 1) * (q.shape[-1] * qb - 1) / (q.shape[-1] - 1)


def selectit_combine(
    p: np.ndarray, alpha: float = 0.2, token_level: str = "paper"
) -> dict[str, np.ndarray]:
    """Sentence-level SelectIT from digit probabilities p (n, K, 5) (any positive scale per row).

        s_ik       = selectit_token(p)[i, k]
        selectit_i = mean_k s_ik / (1 + alpha * std_k s_ik)      (std with ddof 0)

    Returns ``selectit``, ``selectit_mean``, ``selectit_std``, each (n,) float64. Higher is
    better: keep the highest.
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise OptionError(f"alpha must be a finite number >= 0, got {alpha}")
    s = selectit_token(p, token_level)
    mean, std = s.mean(-1), s.std(-1)
    return {"selectit": mean / (1 + alpha * std), "selectit_mean": mean, "selectit_std": std}


def digit_token_ids(tokenizer, digits: str = DIGITS) -> list[tuple[int, ...]]:
    """Per digit, the single tokens that spell it: the encodings of "d" and " d" when they are
    one token, and the token of d after a newline (SentencePiece tokenizers put "▁" in front of a
    bare "1"); kept only when the token decodes to the digit. Raises when a digit has none."""
    nl = tokenizer("\n", add_special_tokens=False).input_ids
    out: list[tuple[int, ...]] = []
    for d in digits:
        ids = set()
        for text in (d, " " + d):
            enc = tokenizer(text, add_special_tokens=False).input_ids
            if len(enc) == 1:
                ids.add(enc[0])
        enc = tokenizer("\n" + d, add_special_tokens=False).input_ids
        if len(enc) == len(nl) + 1 and enc[: len(nl)] == nl:
            ids.add(enc[-1])
        ids = {i for i in ids if tokenizer.decode([i]).strip() == d}
        if not ids:
            raise TunesiftError(f"SelectIT: the tokenizer has no single token for the digit {d}")
        out.append(tuple(sorted(ids)))
    flat = [i for t in out for i in t]
    if len(flat) != len(set(flat)):
        raise TunesiftError("SelectIT: one token decodes to two different digits")
    return out


def _split_prompt(prompt: str) -> tuple[str, str, str]:
    """``pre{instruction}mid{response}post`` -> (pre, mid, post)."""
    pre, sep, rest = prompt.partition("{instruction}")
    mid, sep2, post = rest.partition("{response}")
    if not sep or not sep2 or "{instruction}" in post or "{response}" in pre + mid + post:
        raise OptionError(
            "a SelectIT rating prompt must contain {instruction} then {response}, once each"
        )
    return pre, mid, post


def rating_text(record) -> str:
    """The record as the rating prompt shows it: earlier turns as ``role: content``, then the prompt."""
    turns = [f"{role}: {content}" for role, content in record.context]
    return "\n\n".join([*turns, record.prompt])


def rating_ids(renderer, record, prompt: str) -> list[int]:
    """``header | pre | instruction | mid | response | post | user_end``: the rating prompt as
    the user turn; the rating digit would be the first assistant token.

    Segments are tokenised separately (like :class:`~tunesift.render.Renderer`). Over
    ``renderer.max_length``, instruction and response each keep at most c tokens, c the largest
    that fits (the shorter one is cut only when both exceed c): the instruction keeps its end,
    the response its start.
    """
    pre, mid, post = (renderer.ids(s) for s in _split_prompt(prompt))
    head, tail = renderer.header + pre, post + renderer.ids(renderer.fmt.user_end)
    def text(t: str) -> list[int]:  # record text: a control string in it is plain characters, not a turn
        return renderer.tokenizer(t, add_special_tokens=False, split_special_tokens=renderer.has_control(t)).input_ids

    ins, resp = text(rating_text(record)), text(record.response)
    room = renderer.max_length - len(head) - len(mid) - len(tail)
    if len(ins) + len(resp) > room:
        if room < 2:
            raise TunesiftError(
                f"record {record.id} (line {record.line}): the SelectIT rating prompt does not "
                f"fit max_length {renderer.max_length}"
            )
        short = min(len(ins), len(resp))
        c = room - short if short <= room // 2 else room // 2
        ins, resp = ins[max(0, len(ins) - c) :], resp[:c]
    return head + ins + mid + resp + tail


def last_logprobs(
    lm,
    seqs: Sequence[Sequence[int]],
    token_ids: Sequence[int],
    *,
    token_budget: int = 4096,
    on_batch: OnBatch = None,
) -> np.ndarray:
    """log p(v | seq) of the next token after each sequence, for v in ``token_ids``:
    (len(seqs), len(token_ids)) float64 (log-softmax over the whole vocabulary in float32).

    Sequences are length-sorted, right-padded and batched within ``token_budget`` padded
    tokens; the decoder's last real position per row goes through the LM head alone when the
    decoder + head path is exact (else full-model logits, gathered).
    """
    scorer = ResponseScorer(lm, token_budget=token_budget)
    head, dev = scorer.head_path, scorer.device
    cols = torch.tensor(list(token_ids), device=dev)
    out = np.zeros((len(seqs), len(token_ids)))
    for rows in length_batches([len(s) for s in seqs], token_budget, scorer.overhead):
        width = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), width), scorer.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, : len(seqs[i])] = torch.tensor(list(seqs[i]))
            mask[r, : len(seqs[i])] = 1
        ar = torch.arange(len(rows), device=dev)
        last = torch.tensor([len(seqs[i]) - 1 for i in rows], device=dev)
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.inference_mode(), attention_backends(dev):
            if head:  # only the last position goes through the head: (B, V), not (B, L, V)
                hid = scorer.decoder(input_ids=ids, attention_mask=mask, use_cache=False)
                z = scorer.head_logits(hid.last_hidden_state[ar, last])
            else:
                z = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[ar, last]
            lp = torch.log_softmax(z.float(), dim=-1)[:, cols]
        out[rows] = lp.double().cpu().numpy()
        if on_batch:
            on_batch(len(rows))
    return out


def selectit_scores(
    lm,
    renderer,
    records: Sequence,
    *,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    alpha: float = 0.2,
    token_level: str = "paper",
    token_budget: int = 4096,
    on_batch: OnBatch = None,
) -> dict[str, np.ndarray]:
    """SelectIT (Liu et al. 2024), token- and sentence-level self-reflection with one model.

    For record i and rating prompt k (K = len(prompts)), the model reads the rating prompt as
    the user turn (:func:`rating_ids`) and p[i, k, d] is its next-token probability of the digit
    d in 1..5 (summed over the digit's token variants, :func:`digit_token_ids`). Then
    :func:`selectit_combine` gives ``selectit`` = mean_k s_ik / (1 + alpha std_k s_ik), plus
    ``selectit_mean`` and ``selectit_std``; ``selectit_digit_mass`` is mean_k sum_d p[i, k, d],
    how much of the next-token distribution the digits hold (a sanity check that the model
    answers with a digit at all). All (n,) float64; keep the highest ``selectit``.

    Cost: K forwards of the record's length per record, one LM-head row per sequence.
    ``on_batch(rows)`` follows every forward batch: K * n rows in all.
    """
    if not prompts:
        raise OptionError("SelectIT needs at least one rating prompt")
    for pr in prompts:
        _split_prompt(pr)
    selectit_token(np.ones((1, 5)), token_level)  # validate options before any forward
    selectit_combine(np.ones((1, 1, 5)), alpha)
    variants = digit_token_ids(renderer.tokenizer)
    flat = [i for t in variants for i in t]
    owner = np.repeat(np.arange(len(variants)), [len(t) for t in variants])
    seqs = [rating_ids(renderer, r, pr) for r in records for pr in prompts]
    lp = last_logprobs(lm, seqs, flat, token_budget=token_budget, on_batch=on_batch)
    # log-mass of each digit (sum over its variants), then rescale per row so exp cannot underflow
    digit_lp = np.stack([np.logaddexp.reduce(lp[:, owner == d], axis=1) for d in range(5)], 1)
    mass = np.exp(digit_lp).sum(1)
    p = np.exp(digit_lp - digit_lp.max(1, keepdims=True))
    n, k = len(records), len(prompts)
    cols = selectit_combine(p.reshape(n, k, 5), alpha, token_level)
    cols["selectit_digit_mass"] = mass.reshape(n, k).mean(1)
    return cols
