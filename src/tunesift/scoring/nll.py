"""Per-record teacher-forced response loss: the building block of evaluation and the loss baselines.

For record i with response tokens y_1..y_T (the response ids plus the template's end token)::

    nll_i = - sum_t log p(y_t | header, prompt_i, user_end, y_<t)      (summed, nats)
    loss_i = nll_i / T_i                                                 (mean per token)
    perplexity over a set = exp( sum_i nll_i / sum_i T_i )               (token-weighted)

The shared template header is run once and its KV cache serves every record
(:class:`~tunesift.scoring.logprobs.ResponseScorer`), so only prompt and response tokens are
forwarded and only response positions go through the LM head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .logprobs import Continuation, ResponseScorer


def continuations(renderer, records: Sequence) -> Sequence[Continuation]:
    """Each record's zero-shot ``prompt | user_end | response | end`` after the header, held as one
    flat token array (:class:`~tunesift.scoring.token_table.ContinuationTable`: a tuple of Python
    ints per token held a 100,000-record pool's tokens in about 1 GB)."""
    from .token_table import ContinuationTable

    def items():
        for r in records:
            e = renderer.encode(r)
            yield e.prompt + e.response, len(e.response)

    return ContinuationTable(items())


def response_nll(
    lm,
    renderer,
    records: Sequence,
    *,
    token_budget: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(nll, n_tokens): summed response negative log-likelihood (n,) float64 and the number of
    scored response tokens (n,) int64 of every record, conditioned on its prompt."""
    conts = continuations(renderer, records)
    scorer = ResponseScorer(lm, token_budget=token_budget)
    [(_, logp)] = scorer.score_groups([(renderer.header, conts)], on_batch=on_batch)
    return -logp, np.array([c.n_response for c in conts], dtype=np.int64)


def perplexity(nll: np.ndarray, n_tokens: np.ndarray) -> float:
    """Token-weighted perplexity of a set: exp(sum nll / sum T)."""
    return float(np.exp(np.sum(nll) / max(1, int(np.sum(n_tokens)))))
