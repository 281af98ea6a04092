"""RDS+ representations: the model's final hidden states, position-weighted mean, L2-normalised.

RDS+ (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning", arXiv 2503.01807;
code: hamishivi/automated-instruction-selection, ``--pooling weighted_mean``) represents a record
by the weighted mean of the selection model's final-layer hidden states over the whole rendered
sequence, with the SGPT weighting (Muennighoff 2022): position t of L real tokens (1-based) weighs
t, so later tokens, which have attended to more of the record, count more::

    w_t = t / sum_{s=1..L} s = 2 t / (L (L + 1))          t = 1..L,  sum_t w_t = 1
    e   = sum_t w_t h_t                                    h_t: (d,) final hidden state (after the
                                                           model's final norm, HF's hidden_states[-1])
    rds = e / ||e||_2                                      (d,) float32, unit length

The sequence is the record exactly as fine-tuning sees it (``header | prompt | user_end |
response | end``, :meth:`tunesift.render.Renderer.sequence`), for pool and target records alike.

One deliberate difference from the reference code: it builds the weights from the *padded* batch
width and multiplies them into padded positions too, so a record's vector depends on which batch
it landed in (and on the padding side). Here the weights run over the record's own real tokens
only (padding weighs 0), so the vector is the record's alone; batches of different shapes agree
to float tolerance (the tests check it).

Cost: one forward pass per record (no LM head), batched by length within ``token_budget``
padded tokens (:func:`tunesift.scoring.logprobs.length_batches`). Vectors are cached in blocks
of ``BLOCK`` records under ``<cache_dir>/rds/``, keyed by the model fingerprint, dtype and the
block's token ids, so reruns and further seeds read them back and a killed run resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import overflow_error
from ..store import ArrayStore, content_key, content_spans, default_cache_dir
from .logprobs import attention_backends, length_batches

CACHE_VERSION = "rds-v1"
BLOCK = 64  # records per cached block of vectors
OnBatch = Callable[[int], None] | None


def position_weights(length: int) -> np.ndarray:
    """The SGPT / RDS+ weights (length,) float64: w_t = t / sum_s s for t = 1..length."""
    t = np.arange(1, length + 1, dtype=np.float64)
    return t / t.sum()


def weighted_mean_pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean of right-padded hidden states.

    ``hidden`` (B, T, d) any float dtype, ``lengths`` (B,) the real tokens of each row (its first
    ``lengths[b]`` positions; the rest is padding). Returns (B, d) float32 with
    ``out[b] = sum_{t < L_b} (t + 1) h[b, t] / (L_b (L_b + 1) / 2)``; padded positions weigh 0.
    """
    _, width, _ = hidden.shape
    pos = torch.arange(1, width + 1, device=hidden.device, dtype=torch.float32)[None, :]  # (1, T)
    lens = lengths.to(device=hidden.device, dtype=torch.float32)[:, None]  # (B, 1)
    w = torch.where(pos <= lens, pos, torch.zeros_like(pos))  # (B, T)
    w = w / w.sum(dim=1, keepdim=True)
    return torch.einsum("bt,btd->bd", w, hidden.float())


def _hidden_size(model) -> int:
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return int((get() if callable(get) else cfg).hidden_size)


def _pad_token(lm) -> int:
    """Any id works for padding (padded positions are masked and weigh 0): pad, else eos, else 0."""
    tok = lm.tokenizer
    for cand in (tok.pad_token_id, tok.eos_token_id):
        if cand is not None:
            return int(cand)
    return 0


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _final_hidden(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Final-layer hidden states (B, T, d) after the model's final norm: the decoder's
    ``last_hidden_state`` (no LM head), or ``hidden_states[-1]`` of a model without a decoder."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None:
        return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    return out.hidden_states[-1]


def embed_sequences(lm, seqs: Sequence[Sequence[int]], *, token_budget: int = 4096,
                    on_batch: OnBatch = None) -> np.ndarray:
    """RDS+ vectors (n, d) float32, unit length, of token id sequences (one forward per batch).

    Sequences are length-sorted, right-padded and batched within ``token_budget`` padded tokens;
    the hidden states are pooled with :func:`weighted_mean_pool` over each row's real tokens.
    ``on_batch(rows)`` follows every forward batch.
    """
    model = lm.model
    dev = torch.device(lm.device)
    pad = _pad_token(lm)
    out = np.zeros((len(seqs), _hidden_size(model)), dtype=np.float32)
    for rows in length_batches([len(s) for s in seqs], token_budget):
        width = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, :len(seqs[i])] = torch.tensor(list(seqs[i]))
            mask[r, :len(seqs[i])] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.inference_mode(), attention_backends(dev):
            hid = _final_hidden(model, ids, mask)
            pooled = weighted_mean_pool(hid, mask.sum(dim=1))
        out[rows] = pooled.cpu().numpy()
        if on_batch:
            on_batch(len(rows))
    return unit_rows(out)


def rds_embeddings(lm, renderer, records: Sequence, *, token_budget: int = 4096,
                   cache_dir: str | Path | None = None, on_batch: OnBatch = None) -> np.ndarray:
    """RDS+ vectors (n, d) float32 of ``records`` as rendered by ``renderer``, cached in blocks.

    Each block of about ``BLOCK`` records (cut by content: :func:`~tunesift.store.content_spans`) is stored under ``<cache_dir>/rds/<key>`` with ``key`` the
    content key of (cache version, model fingerprint, dtype, the block's token ids), so a rerun
    reads it back and an interrupted run computes only the missing blocks. ``on_batch(rows)``
    counts records done (cached blocks included).
    """
    seqs = [renderer.sequence(r)[0] for r in records]
    store = ArrayStore(Path(cache_dir or default_cache_dir()) / "rds")
    parts = []
    for s, e in content_spans(seqs, BLOCK):  # cut by content: an edited input rescores the blocks it touched
        block = seqs[s:e]
        key = content_key(CACHE_VERSION, lm.fingerprint, lm.dtype, block)
        got = store.get(key, finite=True)
        if got is None or got.shape[0] != len(block):
            got = embed_sequences(lm, block, token_budget=token_budget)
            bad = np.flatnonzero(~np.isfinite(got).all(axis=1))
            if len(bad):  # a NaN vector made the centroid NaN and every score 0: input order
                raise overflow_error("rds", records[s:e], bad, lm.dtype)
            store.put(key, got)
        parts.append(got)
        if on_batch:
            on_batch(len(block))
    if not parts:
        return np.zeros((0, _hidden_size(lm.model)), dtype=np.float32)
    return np.concatenate(parts)
