"""DONOD: Delta of Norm and Norm of Delta of the output layer, in closed form.

For one record with T scored response tokens, let h_t (d,) be the final hidden state that
predicts token y_t, z_t = W h_t (V,) the logits of the LM head W (V, d), p_t = softmax(z_t) and
r_t = p_t - onehot(y_t) (times tanh' when the model soft-caps its logits). The gradient of the
record's loss on W is G = c * sum_t r_t h_t^T, with c = 1/T for ``mean`` reduction, 1 for ``sum``
and 1/sqrt(T) for ``sqrt`` (per-token normalised: length-neutral when token gradients are
uncorrelated; ours, not the paper's, which does not say which it used).
One plain SGD step gives W' = W - eta * G, and

    NOD = ||W' - W||_F = eta * ||G||_F
    DON = ||W'||_F - ||W||_F = (-2 eta <W, G> + eta^2 ||G||^2) / (||W'||_F + ||W||_F)
    <W, G>  = c * sum_t r_t . z_t
    ||G||^2 = c^2 * sum_{t,s} (h_t . h_s) (r_t . r_s)

so scoring needs one forward pass and two T x T Gram matrices: no backward pass and no V x d
gradient in memory. DON is computed from the expansion above (never as a difference of two large
norms) and everything after the forward pass runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OptionError, TunesiftError

REDUCTIONS = ("mean", "sum", "sqrt")
# token scale c of the loss (and so of G) for a response of T scored tokens
TOKEN_SCALE = {
    "mean": lambda t: 1.0 / t, "sum": lambda t: 1.0, "sqrt": lambda t: 1.0 / math.sqrt(t)}



@dataclass(frozen=True)
class DonodParams:
    """``eta``: SGD step of the simulated update; ``reduction``: token reduction of the loss,
    ``mean`` (c = 1/T, what a standard SFT loss does), ``sum`` (c = 1, the literal per-sample
    loss) or ``sqrt`` (c = 1/sqrt(T), per-token normalised; ours). The paper does not say which.

    Defaults: eta = 1e-3 and ``sqrt`` reduction (ours): of the two-metric (TOPSIS) variants it has
    the best worst case over the noise benchmark's 32 cells (4 kinds of sets x 4 corruptions x
    budgets 30% / 70%, bench/noise_bench.py): hard-but-clean kept minus corrupted kept is at most
    11 points below the loss filter's, vs 38 for ``mean`` (docs/results.md). Scores cached under
    any reduction stay valid: the cache holds eta- and reduction-free terms.
    """

    eta: float = 1e-3
    reduction: str = "sqrt"

    def __post_init__(self):
        if not (self.eta > 0 and math.isfinite(self.eta)):
            raise OptionError(f"eta must be a positive number, got {self.eta}")
        if self.reduction not in REDUCTIONS:
            raise OptionError(f"reduction must be one of {', '.join(REDUCTIONS)}, got '{self.reduction}'")


def gradient_terms(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, softcap: float | None = None,
                   scale: float = 1.0, chunk: int = 16384, max_elems: int = 1 << 25) -> tuple[float, float]:
    """Return (sum_t r_t . z_t, sum_{t,s} (h_t.h_s)(r_t.r_s)) for one record, unscaled, in float64.

    h: (T, d) final hidden states; w: (V, d) LM head; y: (T,) target token ids; z_t = W h_t. The
    model's output is f(z) = c tanh(s z / c) (``scale`` s: Cohere's logit_scale or 1 / Granite's
    logits_scaling; ``softcap`` c: Gemma's final_logit_softcapping, identity when None), and
    r_t = f'(z_t) * (softmax(f(z_t)) - e_t) is the gradient of the loss with respect to z_t.

    The vocabulary is processed in chunks of ``chunk`` rows of W, so memory stays O(T * chunk)
    whatever V is: a first pass gets each token's log-normaliser, a second forms r chunk by chunk
    and accumulates r.z and r r^T. When T * V <= ``max_elems`` the logits of the first pass are
    kept, so nothing is computed twice.
    """
    h = h.double()
    w = w.double()
    n_tok, vocab = len(y), w.shape[0]
    rows = torch.arange(n_tok, device=h.device)
    spans = [(i, min(i + chunk, vocab)) for i in range(0, vocab, chunk)]

    def out_and_deriv(z):
        out = head_output(z, softcap, scale)
        if softcap:
            t = out / softcap
            return out, (1.0 - t * t) * scale  # d(c tanh(s z / c))/dz
        return out, (scale if scale != 1.0 else None)

    keep = n_tok * vocab <= max_elems
    kept: list[torch.Tensor] = []
    lse = None
    for lo, hi in spans:  # pass 1: log-normaliser of every token
        z = h @ w[lo:hi].T
        if keep:
            kept.append(z)
        m = torch.logsumexp(out_and_deriv(z)[0], dim=-1)
        lse = m if lse is None else torch.logaddexp(lse, m)
    inner = torch.zeros((), dtype=torch.float64, device=h.device)
    rr = torch.zeros((n_tok, n_tok), dtype=torch.float64, device=h.device)
    for k, (lo, hi) in enumerate(spans):  # pass 2: r = f'(z) (p - e), chunk by chunk
        z = kept[k] if keep else h @ w[lo:hi].T
        o, deriv = out_and_deriv(z)
        r = torch.exp(o - lse[:, None])
        hit = (y >= lo) & (y < hi)
        r[rows[hit], y[hit] - lo] -= 1.0
        if deriv is not None:
            r = r * deriv
        inner += (r * z).sum()
        rr += r @ r.T
    g_sq = ((h @ h.T) * rr).sum()
    return float(inner), float(g_sq)


def don_nod(inner: float, g_sq: float, n_tokens: int, w_sq: float, params: DonodParams) -> tuple[float, float]:
    """DON and NOD from the unscaled gradient terms of :func:`gradient_terms`.

    ``w_sq`` is ||W||_F^2 of the LM head (float64).
    """
    if n_tokens < 1:
        raise TunesiftError("DONOD needs at least one scored response token per record")
    c = TOKEN_SCALE[params.reduction](n_tokens)
    eta = params.eta
    wg = c * inner
    gg = c * c * g_sq
    delta = -2.0 * eta * wg + eta * eta * gg  # ||W'||^2 - ||W||^2
    w = math.sqrt(w_sq)
    w_new = math.sqrt(max(w_sq + delta, 0.0))
    return delta / (w_new + w), eta * math.sqrt(max(gg, 0.0))


def head_output(z: torch.Tensor, softcap: float | None, scale: float) -> torch.Tensor:
    """The model's logits f(z) = c tanh(s z / c) from the LM head's output z (..., V); s z when
    there is no soft cap c (see :func:`decoder_and_head`)."""
    zs = z * scale if scale != 1.0 else z
    return softcap * torch.tanh(zs / softcap) if softcap else zs


def decoder_and_head(model):
    """The transformer body (final, normed hidden states), the LM head, its soft-cap and scale."""
    body = getattr(model, "model", None) or model.get_decoder()
    head = model.get_output_embeddings()
    cfg = getattr(model.config, "text_config", None) or model.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)  # Cohere: logits * logit_scale
    if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
        scale /= float(cfg.logits_scaling)
    return body, head, softcap, scale


def lm_head_norm_sq(model, chunk: int = 16384) -> float:
    """||W||_F^2 of the LM head in float64, ``chunk`` vocabulary rows at a time (no full-size copy)."""
    w = model.get_output_embeddings().weight.detach()
    return float(sum(float((w[i:i + chunk].double() ** 2).sum()) for i in range(0, w.shape[0], chunk)))


# one float64 copy of the head being scored, reused across batches (converting it per record would
# cost more than the record); dropped by release_head_copy() when the scoring ends, so it never
# outlives the run (V x d x 8 bytes: 226 MB for SmolLM2, 4.2 GB for a 128k-token 8B head)
_W64: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}


def _float64_weight(head) -> torch.Tensor:
    """A float64 copy of the LM head, cached per weight tensor and its in-place version counter
    (a ``load_state_dict`` or training step in place makes a new copy)."""
    w = head.weight
    hit = _W64.get(id(head))
    if hit is None or hit[0] is not w or hit[1] != w._version or hit[2].shape != w.shape:
        _W64.clear()
        hit = (w, w._version, w.detach().double())
        _W64[id(head)] = hit
    return hit[2]


def release_head_copy() -> None:
    """Drop the float64 copy of the LM head (and the reference to the weights it holds)."""
    _W64.clear()


def padded_batch(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (B, width) of ``[(input_ids, mask)]``."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (seq, _) in enumerate(batch):
        ids[b, : len(seq)] = torch.tensor(seq)
        att[b, : len(seq)] = 1
    return ids, att


@torch.inference_mode()
def score_batch(model, batch: list[tuple[list[int], list[int]]], pad_id: int) -> np.ndarray:
    """Gradient terms of right-padded sequences from one forward pass.

    batch: [(input_ids, response_mask)] with mask 1 on scored tokens. Returns (B, 3) float64:
    sum_t r_t.z_t, ||sum_t r_t h_t^T||^2 and T, from which :func:`don_nod` gives DON and NOD for
    any eta and reduction (so changing them never needs the model again).
    """
    body, head, softcap, scale = decoder_and_head(model)
    if getattr(head, "bias", None) is not None:  # no LM head we know has one; refuse rather than be wrong
        raise OptionError("the DONOD closed form assumes an LM head without bias")
    dev = next(model.parameters()).device
    check_output_transform(model, *batch[0])  # once per model: its logits are what the closed form assumes
    ids, att = padded_batch(batch, pad_id)
    hidden = body(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).last_hidden_state
    # Logits in float64: <W, G> = sum_t (E_p[z_t] - z_t[y_t]) cancels heavily for confident tokens,
    # and float32 logits leave it ~1% off on real models (measured on SmolLM2).
    w = _float64_weight(head)
    out = np.zeros((len(batch), 3))
    for b, (seq, mask) in enumerate(batch):
        pos = torch.tensor([t for t in range(1, len(seq)) if mask[t]], dtype=torch.long, device=dev)
        h = hidden[b, pos - 1].double()
        inner, g_sq = gradient_terms(h, w, ids[b].to(dev)[pos], softcap, scale=scale)
        out[b] = (inner, g_sq, len(pos))
    return out


def check_output_transform(model, seq: list[int], mask: list[int], n: int = 8) -> None:
    """Refuse a model whose logits are not ``c tanh(s h W^T / c)`` (or ``s h W^T``): the closed
    form knows soft-capping and Cohere/Granite scaling only, and another transform (FalconH1's
    ``lm_head_multiplier``, a model's own soft cap under another name) would give wrong DON and
    NOD silently. Compares the model's own logits with the reconstruction from its final hidden
    states at the first ``n`` response positions of one record (both from one unpadded input,
    so only the head's rounding separates them), once per model."""
    if getattr(model, "_tunesift_head_checked", False):
        return
    body, head, softcap, scale = decoder_and_head(model)
    dev = next(model.parameters()).device
    pos = torch.tensor([t for t in range(1, len(seq)) if mask[t]][:n], dtype=torch.long, device=dev)
    first, end = int(pos[0]) - 1, int(pos[-1])
    ids = torch.tensor([seq[:end]], device=dev)
    with torch.inference_mode():
        h = body(input_ids=ids, use_cache=False).last_hidden_state[0, pos - 1].double()
        try:
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=end - first).logits[0]
        except TypeError:  # a model without logits_to_keep
            logits = model(input_ids=ids, use_cache=False).logits[0]
    got = logits[-(end - first):][pos - 1 - first].double()  # the last positions, whether or not it kept only them
    ours = head_output(h @ _float64_weight(head).T, softcap, scale)
    tight = logits.dtype == next(model.parameters()).dtype == torch.float32  # else bf16/fp16 rounding
    tol = (1e-3 if tight else 3e-2) * max(1.0, float(got.abs().max()))
    gap = float((ours - got).abs().max())
    if not gap <= tol:
        raise OptionError(f"DONOD: {type(model).__name__}'s logits are not the LM head's output as the closed form "
                          f"computes it (soft cap {softcap}, scale {scale:g}; largest gap {gap:.3g} at the first "
                          "response tokens): its output layer transforms the logits another way, so DON and NOD "
                          "would be wrong; use another method or model")
    model._tunesift_head_checked = True


def plan_batches(lengths: list[int], token_budget: int, max_batch: int = 64) -> list[list[int]]:
    """Group indices into length-sorted batches of at most ``token_budget`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (max(lengths[cur[-1]], lengths[i]) * (len(cur) + 1) > token_budget or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def gradient_stats(model, sequences: list[tuple[list[int], list[int]]], *, pad_id: int,
                   token_budget: int = 4096, progress=None) -> np.ndarray:
    """(n, 3) float64 gradient terms (see :func:`score_batch`) for every sequence.

    Sequences are length-bucketed into batches of at most ``token_budget`` padded tokens;
    ``progress(n_done)`` is called after each batch when given.
    """
    out = np.zeros((len(sequences), 3), dtype=np.float64)
    for idx in plan_batches([len(s[0]) for s in sequences], token_budget):
        out[idx] = score_batch(model, [sequences[i] for i in idx], pad_id)
        if progress is not None:
            progress(len(idx))
    return out


def don_nod_from_stats(stats: np.ndarray, w_sq: float, params: DonodParams) -> np.ndarray:
    """(n, 2) DON, NOD from (n, 3) gradient terms."""
    return np.array([don_nod(a, b, int(t), w_sq, params) for a, b, t in stats], dtype=np.float64).reshape(-1, 2)


def autograd_don_nod(model, ids: list[int], mask: list[int], params: DonodParams) -> tuple[float, float]:
    """Reference by brute force: materialise G = dL/dW with autograd, step, take the norms (float64).

    Only the LM-head role of W gets the gradient (for tied embeddings the input-embedding path is
    held fixed, as in the closed form). Slow, for tests and the benchmark only.
    """
    body, head, softcap, scale = decoder_and_head(model)
    x = torch.tensor([ids], device=head.weight.device)
    with torch.no_grad():
        hidden = body(input_ids=x).last_hidden_state[0].double()
    w = head.weight.detach().double().clone().requires_grad_(True)
    pos = torch.tensor([t for t in range(1, len(ids)) if mask[t]], device=x.device)
    z = head_output(hidden[pos - 1] @ w.T, softcap, scale)
    loss = torch.nn.functional.cross_entropy(z, x[0, pos], reduction="sum") * TOKEN_SCALE[params.reduction](len(pos))
    (g,) = torch.autograd.grad(loss, w)
    with torch.no_grad():
        w_new = w - params.eta * g
        # ||W'|| - ||W|| as a plain difference loses ~1e-9 relative to summation error over millions
        # of weights, which is all of DON on a real model; (W'-W).(W'+W) / (||W'|| + ||W||) does not.
        don = ((w_new - w) * (w_new + w)).sum() / (w_new.norm() + w.norm())
        return float(don), float((w_new - w).norm())
