"""Teacher-forced response-token statistics, with and without a shared cached prefix.

Both scorers here return, for each scored sequence, the two sufficient statistics of the
response tokens y_1..y_T (the response ids including the template's end token)::

    sq_err = sum_t (1 - p_t)^2          p_t = softmax(logits at position t-1)[y_t]
    logp   = sum_t log p_t

from which DELIFT's distances follow without rescoring (see :mod:`tunesift.scoring.utility`).
The log-softmax always runs in float32, whatever the model dtype; sums are float64.

:class:`ResponseScorer` is the fast path. A *prefix* (an in-context example, or only the
template header) is run once with batch 1 and ``use_cache=True``; its KV cache is copied and
repeated to a batch of right-padded *continuations* (``prompt_i | user_end | response_i | end``)
that all share it. Only the decoder runs over the continuation; its last hidden states are
gathered at the positions that predict response tokens and only those go through the LM head
(``get_output_embeddings()``, then the model's logit soft-capping or scaling if it has one), so
the (tokens x vocabulary) logits of prompt positions are never formed. Every scored position
lies inside the continuation (the continuation always starts with at least one prompt token),
so the prefix pass needs no logits at all.

:func:`plain_logprob_stats` is the reference: it builds each full sequence, batches them
right-padded, and runs ``model(...).logits`` at every position, exactly like the original
DELIFT code does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import TunesiftError

HEAD_CHUNK = 1024  # response positions per LM-head matmul (bounds the float32 logits to ~200 MB)


@dataclass(frozen=True)
class Continuation:
    """Token ids scored after a prefix: ``ids = prompt | response``; the last ``n_response`` ids
    (response incl. end token) are scored. ``n_prompt = len(ids) - n_response >= 1``."""

    ids: tuple[int, ...]
    n_response: int

    @property
    def n_prompt(self) -> int:
        return len(self.ids) - self.n_response


def _text_config(model):
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def _pad_id(lm) -> int:
    tok = lm.tokenizer
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0  # pragma: no cover


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (1 - p)^2 and log p, float32, from logits (N, V) and target ids (N,)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return (1.0 - lp.exp()).square(), lp


def _segment_sums(values: torch.Tensor, seg: torch.Tensor, n: int) -> np.ndarray:
    out = torch.zeros(n, dtype=torch.float64, device=values.device)
    out.index_add_(0, seg, values.double())
    return out.cpu().numpy()


@dataclass
class ResponseScorer:
    """Scores continuations after a cached prefix with one LM (see the module docstring).

    ``token_budget`` bounds ``rows x padded continuation length`` per forward batch; rows are
    sorted by length so padding stays small. ``forwards`` counts decoder forward calls.
    """

    lm: object
    token_budget: int = 4096
    forwards: int = 0
    _mode: str | None = field(default=None, repr=False)

    def __post_init__(self):
        model = self.lm.model
        self.model = model
        self.decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        self.head = model.get_output_embeddings()
        cfg = _text_config(model)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)  # Cohere: logits * scale
        self.logits_scaling = getattr(cfg, "logits_scaling", None)  # Granite: logits / scaling
        self.device = torch.device(self.lm.device)
        self.pad = _pad_id(self.lm)

    # -- logits from hidden states ---------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.head(hidden)
        if self.logit_scale is not None:
            z = z * self.logit_scale
        if self.logits_scaling is not None:
            z = z / self.logits_scaling
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def _check_head(self) -> None:
        """Once per scorer: the decoder + head path must reproduce ``model(...).logits``.

        Architectures whose head does something this class does not know about fall back to
        full-model logits (slower, still exact) instead of silently scoring wrong numbers.
        """
        if self._mode is not None:
            return
        self._mode = "full"
        if self.decoder is None or self.head is None:
            return
        ids = torch.arange(1, 9, device=self.device)[None] % max(2, self.head.weight.shape[0])
        with torch.inference_mode():
            ref = self.model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
            hid = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
            ours = self._logits(hid).float().log_softmax(-1)
        tol = 1e-3 if self.model.dtype == torch.float32 else 0.1
        if torch.allclose(ref, ours, atol=tol, rtol=0):
            self._mode = "head"

    # -- one prefix, many continuations ----------------------------------------------------
    def prefix_cache(self, prefix: Sequence[int]):
        """Run ``prefix`` (batch 1) and return its KV cache, or None for an empty prefix."""
        if not prefix:
            return None
        self._check_head()
        ids = torch.tensor([list(prefix)], device=self.device)
        with torch.inference_mode():
            if self._mode == "head":
                out = self.decoder(input_ids=ids, use_cache=True)
            else:
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.forwards += 1
        return out.past_key_values

    def batches(self, conts: Sequence[Continuation]) -> list[list[int]]:
        """Indices of ``conts`` grouped into length-sorted batches within the token budget."""
        order = sorted(range(len(conts)), key=lambda i: (-len(conts[i].ids), i))
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = len(conts[cur[0]].ids) if cur else len(conts[i].ids)  # longest comes first
            if cur and (len(cur) + 1) * width > self.token_budget:
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def score(self, prefix: Sequence[int], conts: Sequence[Continuation],
              cache=None) -> tuple[np.ndarray, np.ndarray]:
        """(sq_err, logp) float64 arrays (len(conts),) for ``prefix | cont`` sequences.

        ``cache`` is ``prefix_cache(prefix)`` when the caller already has it.
        """
        self._check_head()
        n = len(conts)
        sq = np.zeros(n)
        lp = np.zeros(n)
        if n == 0:
            return sq, lp
        if cache is None and prefix:
            cache = self.prefix_cache(prefix)
        p_len = len(prefix)
        for rows in self.batches(conts):
            s, l_ = self._score_batch(p_len, cache, [conts[i] for i in rows])
            sq[rows] = s
            lp[rows] = l_
        return sq, lp

    def _score_batch(self, p_len: int, cache, conts: list[Continuation]):
        b = len(conts)
        width = max(len(c.ids) for c in conts)
        ids = torch.full((b, width), self.pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        rows, pos, tgt, seg = [], [], [], []
        for r, c in enumerate(conts):
            ids[r, : len(c.ids)] = torch.tensor(c.ids)
            mask[r, : len(c.ids)] = 1
            start = c.n_prompt  # first scored token's index in the continuation
            if start < 1:
                raise TunesiftError("internal: a continuation must start with a prompt token")
            rows += [r] * c.n_response
            pos += range(start - 1, start - 1 + c.n_response)
            tgt += c.ids[start:]
            seg += [r] * c.n_response
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        kw = {}
        if cache is not None:
            kv = copy.deepcopy(cache)
            if b > 1:
                kv.batch_repeat_interleave(b)
            mask = torch.cat([torch.ones((b, p_len), dtype=mask.dtype, device=dev), mask], 1)
            kw = {"past_key_values": kv, "use_cache": True}
        else:
            kw = {"use_cache": False}
        rows_t = torch.tensor(rows, device=dev)
        pos_t = torch.tensor(pos, device=dev)
        tgt_t = torch.tensor(tgt, device=dev)
        seg_t = torch.tensor(seg, device=dev)
        with torch.inference_mode():
            if self._mode == "head":
                hid = self.decoder(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
                hid = hid[rows_t, pos_t]  # (N, d): only positions that predict response tokens
                sq_parts, lp_parts = [], []
                for a in range(0, hid.shape[0], HEAD_CHUNK):
                    s, l_ = token_stats(self._logits(hid[a : a + HEAD_CHUNK]), tgt_t[a : a + HEAD_CHUNK])
                    sq_parts.append(s)
                    lp_parts.append(l_)
                sq_t, lp_t = torch.cat(sq_parts), torch.cat(lp_parts)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, **kw).logits
                sq_t, lp_t = token_stats(logits[rows_t, pos_t], tgt_t)
        self.forwards += 1
        return _segment_sums(sq_t, seg_t, b), _segment_sums(lp_t, seg_t, b)


def plain_logprob_stats(lm, seqs: Sequence[tuple[Sequence[int], int]], *,
                        token_budget: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Reference scorer: (sq_err, logp) for full sequences, ``model(...).logits`` at every position.

    ``seqs``: (input_ids, n_response) pairs; the last ``n_response`` ids are scored. Sequences
    are length-sorted, right-padded and batched within ``token_budget`` padded tokens.
    """
    n = len(seqs)
    sq = np.zeros(n)
    lp = np.zeros(n)
    dev = torch.device(lm.device)
    pad = _pad_id(lm)
    order = sorted(range(n), key=lambda i: (-len(seqs[i][0]), i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * len(seqs[batches[-1][0]][0]) <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    for rows in batches:
        width = len(seqs[rows[0]][0])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            s = list(seqs[i][0])
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        with torch.inference_mode():
            logits = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(rows):
            s, n_resp = seqs[i]
            start = len(s) - n_resp
            tgt = torch.tensor(list(s[start:]), device=dev)
            tok_lp = logp[r, start - 1 : len(s) - 1].gather(-1, tgt[:, None]).squeeze(-1)
            sq[i] = float((1.0 - tok_lp.exp()).square().double().sum())
            lp[i] = float(tok_lp.double().sum())
    return sq, lp
