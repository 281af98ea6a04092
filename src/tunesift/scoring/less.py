"""LESS (Xia et al. 2024, "LESS: Selecting Influential Data for Targeted Instruction Tuning",
ICML 2024, arXiv 2402.04333): how well each pool record's training update points the way the
target set's loss gradient points. Task-stage baseline: it needs a target set.

Notation: theta are the LoRA weights (P numbers: A and B of every adapted linear layer) after
the warm-up; record i has response tokens y_1..y_T (the response ids plus the template's end
token, the tokens fine-tuning trains on) and

    g_i = grad_theta (1/T_i) sum_t -log p(y_t | header, prompt_i, user_end, y_<t)      (P,)

Steps, as in the paper, on the one model we are given:

1. **Warm-up.** A copy of the model gets LoRA adapters (the attention projections q, k, v, o by
   default, as in the paper; a fused ``qkv_proj`` counts as q, k and v) and is fine-tuned with :func:`tunesift.finetune.finetune` (AdamW,
   response-only loss) on a seeded random share ``warmup`` of the pool (at least
   ``MIN_WARMUP`` records) for ``warmup_epochs`` epochs. The caller's model is never modified.
2. **Gradient features** at the warmed-up weights, in eval mode (no dropout). Pool records get
   the Adam update direction (paper section 3.1) from AdamW's state after warm-up (first and
   second moments m, v, step count s, betas and eps of the optimizer)::

       m_i = beta1 m + (1 - beta1) g_i          v_i = beta2 v + (1 - beta2) g_i^2
       Gamma_i = (m_i / (1 - beta1^(s+1))) / (sqrt(v_i / (1 - beta2^(s+1))) + eps)    (P,)

   Target records get the plain gradient g_j (the paper's SGD features for validation data).
3. **Projection** to d dimensions with one seeded Rademacher matrix R (P, d), entries
   +-1/sqrt(d) (:class:`RademacherProjection`; never held whole in memory)::

       f_i = R^T Gamma_i (d,)  for pool records        h_j = R^T g_j (d,)  for target records

4. **Score**, a cosine, higher = keep (``match``)::

       mean (default):  less_i = cos(f_i, hbar),   hbar = mean_j h_j / |h_j|
       max:             less_i = max_j cos(f_i, h_j)

   ``mean`` ranks exactly like the mean over target records of cos(f_i, h_j) (what the
   released LESS code does within one subtask); ``max`` is the paper's max over validation
   subtasks with every target record its own subtask.

The paper sums learning-rate-weighted scores over the checkpoints of every warm-up epoch;
:func:`~tunesift.finetune.finetune` returns the final checkpoint and optimizer only, so we use
that one (a single term, whose weight does not change a ranking). See docs/baselines.md.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import OptionError, TunesiftError, overflow_error
from ..finetune import TrainConfig, response_loss_sum, wrap_lora
from .logprobs import ResponseScorer, length_batches

Progress = Callable[[str, int], Callable[[int], None]] | None

VERSION = "less-v1"
MATCHES = ("mean", "max")
MIN_WARMUP = 8  # fewest warm-up records, whatever the share
DEFAULT_DIM = 8192  # the paper's; see docs/baselines.md for the cost and the noise of smaller d
BLOCK = 64  # records per cached feature block (and per projection pass)
CHUNK = 1 << 22  # entries of the projection matrix generated at a time (16 MB of float32)
KEEP_BYTES = 1 << 28  # keep the projection in memory when it is at most this big
ATTENTION = r".*\.(q_proj|k_proj|v_proj|o_proj)"  # the paper's LoRA target modules
# a model with q, k and v fused (Phi-3's qkv_proj), whose o_proj alone matched ATTENTION; its own
# string, so the cache keys of every other model stay as they were
FUSED_ATTENTION = r".*\.(qkv_proj|o_proj)"


# -- warm-up -----------------------------------------------------------------------------------


def warmup_config(epochs: int = 4, seed: int = 0, **overrides) -> TrainConfig:
    """The warm-up's fine-tuning settings: LoRA (rank 16, alpha 32, dropout 0.1 as in the paper)
    on the attention projections, ``epochs`` epochs, batch 8, learning rate 2e-4 with linear
    warm-up and decay (finetune's LoRA defaults); ``overrides`` are other TrainConfig fields."""
    base = {"epochs": epochs, "lora_dropout": 0.1, "target_modules": ATTENTION, "seed": seed}
    return TrainConfig(**{**base, **overrides})


def warmup_indices(n: int, warmup: float, seed: int = 0) -> np.ndarray:
    """The warm-up records: k = min(n, max(MIN_WARMUP, round(warmup * n))) distinct indices
    drawn with ``numpy.random.default_rng(seed)``, sorted; (k,) int64."""
    if isinstance(warmup, bool) or not (isinstance(warmup, (int, float)) and 0 < warmup <= 1):
        raise OptionError(f"warmup must be a fraction in (0, 1], got {warmup}")
    k = min(n, max(MIN_WARMUP, int(round(warmup * n))))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


def _target_modules(model, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the attention regex replaced by ``all-linear`` when no linear layer of the
    model matches it (architectures without q/k/v/o_proj), and by :data:`FUSED_ATTENTION` for a
    model whose q, k and v are one ``qkv_proj``."""
    if cfg.target_modules != ATTENTION:
        return cfg
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if any(n.endswith(".qkv_proj") for n in linear):
        return TrainConfig(**{**asdict(cfg), "target_modules": FUSED_ATTENTION})
    hit = any(re.fullmatch(ATTENTION, n) for n in linear)
    return cfg if hit else TrainConfig(**{**asdict(cfg), "target_modules": "all-linear"})


def lora_modules(model) -> list[tuple[str, torch.nn.Linear]]:
    """The LoRA linear layers (every adapted layer's A then B), in module order, with their
    names in ``model`` (their weights are ``name + ".weight"``)."""
    out = []
    for name, mod in model.named_modules():
        if re.search(r"\.lora_[AB]\.[^.]+$", name):
            if not isinstance(mod, torch.nn.Linear) or mod.bias is not None:
                raise TunesiftError(f"LESS: LoRA layer {name} is not a bias-free linear layer")
            out.append((name, mod))
    if not out:
        raise TunesiftError("LESS: the model carries no LoRA layers")
    return out


@dataclass
class AdamState:
    """AdamW's state after warm-up, flattened in :func:`lora_modules` order: ``exp_avg`` m and
    ``exp_avg_sq`` v (P,) float32, ``step`` s (steps taken), ``betas`` and ``eps``."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    betas: tuple[float, float]
    eps: float

    def part(self, a: int, b: int) -> AdamState:
        """The state of parameters ``a:b`` of the flat layout."""
        return AdamState(self.exp_avg[a:b], self.exp_avg_sq[a:b], self.step, self.betas, self.eps)


def adam_direction(
    g: torch.Tensor, state: AdamState, *, bias_correction: bool = True
) -> torch.Tensor:
    """The Adam update direction Gamma of gradients ``g`` (..., P), one row per record, from
    ``state`` (P,)::

        m' = beta1 m + (1 - beta1) g,   v' = beta2 v + (1 - beta2) g^2
        Gamma = (m' / c1) / (sqrt(v' / c2) + eps),   c_k = 1 - beta_k^(s+1)

    (the step AdamW would take next, before the learning rate). ``bias_correction=False`` sets
    c1 = c2 = 1, as the released LESS code does (which also puts eps inside the square root).
    With one step count for all parameters the correction scales Gamma by sqrt(c2)/c1 and
    turns eps into eps*sqrt(c2): cosines barely change."""
    b1, b2 = state.betas
    m = b1 * state.exp_avg + (1 - b1) * g
    v = b2 * state.exp_avg_sq + (1 - b2) * g * g
    c1 = 1 - b1 ** (state.step + 1) if bias_correction else 1.0
    c2 = 1 - b2 ** (state.step + 1) if bias_correction else 1.0
    return (m / c1) / (torch.sqrt(v / c2) + state.eps)


# -- per-record gradients ----------------------------------------------------------------------


class LoraGradients:
    """Per-record gradients of the mean response-token loss with respect to the LoRA weights of
    ``lm.model`` (a model carrying LoRA layers, e.g. after finetune wrapped it in place).

    A batch of records runs as one right-padded forward
    (:func:`tunesift.finetune.response_loss_sum`, the fine-tuning loss and masking) and one
    backward to the LoRA layers' outputs. Rows of a batch do not interact, so for the LoRA
    layer y = x W^T the gradient of row b alone is sum_t dy[b, t]^T x[b, t] (padding positions
    carry dy = 0), divided by the row's T_b. Exact, and only activation gradients are
    backpropagated (no weight gradient of the base model). The model runs in eval mode (no
    dropout)."""

    def __init__(self, lm, *, token_budget: int = 2048):
        self.model = lm.model
        self.model.eval()
        self.mods = lora_modules(self.model)
        self.names = [n + ".weight" for n, _ in self.mods]
        self.sizes = [m.weight.numel() for _, m in self.mods]
        self.n_params = int(sum(self.sizes))
        for _, m in self.mods:
            m.weight.requires_grad_(True)  # so the layers' outputs carry a graph
        self.scorer = ResponseScorer(lm)
        self.scorer.head_path  # noqa: B018 -- probe once, in eval mode
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        self.token_budget = token_budget

    def weights(self) -> torch.Tensor:
        """The LoRA weights flattened in :attr:`names` order, (P,) float32 on the CPU."""
        return torch.cat([m.weight.detach().float().reshape(-1).cpu() for _, m in self.mods])

    def load_weights(self, flat: torch.Tensor) -> None:
        """Set the LoRA weights from :meth:`weights`' layout."""
        if flat.numel() != self.n_params:
            raise TunesiftError("LESS: cached adapter does not fit the model's LoRA layers")
        with torch.no_grad():
            for (_, m), part in zip(self.mods, torch.split(flat, self.sizes)):
                m.weight.copy_(part.reshape(m.weight.shape).to(m.weight.dtype))

    def batch(self, seqs: Sequence[tuple[list[int], list[int]]]) -> torch.Tensor:
        """(len(seqs), P) float32: row b is g_b of ``seqs[b]`` (input_ids, response_mask), all
        ``seqs`` in one padded batch."""
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(mod, inputs, output):
            if id(mod) in captured:
                raise TunesiftError("LESS: a LoRA layer ran twice in one forward (shared weights)")
            captured[id(mod)] = (inputs[0], output)

        handles = [m.register_forward_hook(hook) for _, m in self.mods]
        try:
            with torch.enable_grad():
                loss, _ = response_loss_sum(self.scorer, self.model, seqs, self.pad)
        finally:
            for h in handles:
                h.remove()
        if len(captured) != len(self.mods):
            raise TunesiftError("LESS: some LoRA layers did not run in the forward pass")
        xs, outs = zip(*(captured[id(m)] for _, m in self.mods))
        dys = torch.autograd.grad(loss, outs)
        counts = torch.tensor([max(1, sum(m[1:])) for _, m in seqs], dtype=torch.float32)
        b = len(seqs)
        out = torch.empty((b, self.n_params), dtype=torch.float32)
        a = 0
        with torch.no_grad():
            for x, dy, size in zip(xs, dys, self.sizes):
                w = torch.bmm(dy.float().transpose(1, 2), x.float())  # (b, out, in)
                out[:, a : a + size] = w.reshape(b, -1).cpu()
                a += size
        return out.div_(counts[:, None])

    def __call__(self, seqs: Sequence[tuple[list[int], list[int]]]) -> torch.Tensor:
        """(len(seqs), P) float32 in input order, batched by length within ``token_budget``."""
        out = torch.empty((len(seqs), self.n_params), dtype=torch.float32)
        for rows in length_batches([len(s) for s, _ in seqs], self.token_budget):
            out[rows] = self.batch([seqs[i] for i in rows])
        return out


# -- projection --------------------------------------------------------------------------------


class RademacherProjection:
    """x (B, P) -> x R (B, d) with R[k, c] = +-1/sqrt(d), fair independent signs, so that
    E[<x R, y R>] = <x, y> (Johnson-Lindenstrauss: relative error about sqrt(2/d)).

    R is generated in chunks of ``rows = max(1, CHUNK // d)`` rows: chunk c holds the bits of
    ``numpy.random.default_rng([seed, c]).bytes(rows * d / 8)`` (bit 1 = +), so R depends
    only on (seed, d) and each row's index, never on batch sizes or the device, and only one
    chunk is in memory at a time (all of R is kept when it is at most ``KEEP_BYTES``)."""

    def __init__(self, n_params: int, dim: int, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 8 or dim % 8:
            raise OptionError(f"LESS projection dim must be a positive multiple of 8, got {dim}")
        self.n_params, self.dim, self.seed = n_params, dim, seed
        self.rows = max(1, CHUNK // dim)
        small = n_params * dim * 4 <= KEEP_BYTES
        self._kept: dict[int, torch.Tensor] | None = {} if small else None

    def chunk(self, c: int) -> torch.Tensor:
        """Rows ``c * self.rows`` up to ``(c + 1) * self.rows`` of R: (rows, d) float32."""
        if self._kept is not None and c in self._kept:
            return self._kept[c]
        rows = min(self.rows, self.n_params - c * self.rows)
        raw = np.random.default_rng([self.seed, c]).bytes(rows * self.dim // 8)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).reshape(rows, self.dim)
        r = torch.from_numpy(bits).to(torch.float32).mul_(2 / math.sqrt(self.dim))
        r.sub_(1 / math.sqrt(self.dim))
        if self._kept is not None:
            self._kept[c] = r
        return r

    def __call__(
        self,
        x: torch.Tensor,
        transform: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, P) -> (B, d) float32: ``transform(x[:, a:b], a, b) @ R[a:b]`` summed over the
        chunks (``transform`` maps columns elementwise, e.g. :func:`adam_direction`, without a
        second (B, P) copy of ``x``)."""
        if x.shape[-1] != self.n_params:
            raise ValueError(f"expected {self.n_params} columns, got {x.shape[-1]}")
        out = torch.zeros((x.shape[0], self.dim), dtype=torch.float32, device=x.device)
        for c in range(math.ceil(self.n_params / self.rows)):
            a = c * self.rows
            r = self.chunk(c).to(x.device)
            xc = x[:, a : a + r.shape[0]].float()
            if transform is not None:
                xc = transform(xc, a, a + r.shape[0])
            out += xc @ r
        return out


# -- matching ----------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def less_match(pool: np.ndarray, target: np.ndarray, match: str = "mean") -> np.ndarray:
    """Scores (n,) float64 of pool features (n, d) against target features (m, d)::

        mean: cos(f_i, hbar), hbar = mean_j h_j / |h_j|     max: max_j cos(f_i, h_j)

    A zero vector has cosine 0 with everything."""
    if match not in MATCHES:
        raise OptionError(f"unknown LESS match '{match}': use mean or max")
    f = _unit(np.asarray(pool, dtype=np.float64))
    h = _unit(np.asarray(target, dtype=np.float64))
    if match == "mean":
        return f @ _unit(h.mean(0))
    return (f @ h.T).max(1)


# -- the scorer --------------------------------------------------------------------------------


def _flat_state(grads: LoraGradients, model, optimizer) -> AdamState:
    """AdamW's moments in ``grads``' layout (zeros for a parameter that never had state)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {by_id[id(p)]: optimizer.state.get(p, {}) for p in params}
    avg, sq, steps = [], [], []
    for name, size in zip(grads.names, grads.sizes):
        s = state.get(name, {})
        if "exp_avg" in s:
            avg.append(s["exp_avg"].detach().float().reshape(-1).cpu())
            sq.append(s["exp_avg_sq"].detach().float().reshape(-1).cpu())
            steps.append(int(s["step"]))
        else:
            avg.append(torch.zeros(size))
            sq.append(torch.zeros(size))
    group = optimizer.param_groups[0]
    return AdamState(torch.cat(avg), torch.cat(sq), max(steps, default=0),
                     tuple(float(b) for b in group["betas"]), float(group["eps"]))


def _warm_up(
    lm, records, cfg, renderer, store, progress: Progress
) -> tuple[LoraGradients, AdamState]:
    """A LoRA-carrying copy of ``lm`` after the warm-up, and its AdamW state: read back from
    ``store`` when a previous run saved them, else trained (and saved)."""
    from ..finetune import finetune
    from ..store import write_text

    model = copy.deepcopy(lm.model)
    copy_lm = type(lm)(model, lm.tokenizer, lm.source, lm.path, lm.fingerprint, lm.device, lm.dtype)
    meta_path = store.root / "warmup.json"
    arrays = [store.get(k) for k in ("lora", "exp_avg", "exp_avg_sq")]
    if meta_path.exists() and all(a is not None for a in arrays):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        wrap_lora(model, cfg)
        grads = LoraGradients(copy_lm)
        if grads.names == meta["names"] and all(a.shape == (grads.n_params,) for a in arrays):
            grads.load_weights(torch.from_numpy(arrays[0]))
            state = AdamState(torch.from_numpy(arrays[1]), torch.from_numpy(arrays[2]),
                              int(meta["step"]), tuple(meta["betas"]), float(meta["eps"]))
            return grads, state
        model = copy.deepcopy(lm.model)  # stale cache: train afresh
        copy_lm.model = model
    advance = progress("LESS warm-up", len(records) * cfg.epochs) if progress else None
    result = finetune(copy_lm, records, cfg, renderer=renderer, progress=advance)
    grads = LoraGradients(copy_lm)  # copy_lm.model now carries the trained LoRA layers
    state = _flat_state(grads, copy_lm.model, result.optimizer)
    store.put("lora", grads.weights().numpy())
    store.put("exp_avg", state.exp_avg.numpy())
    store.put("exp_avg_sq", state.exp_avg_sq.numpy())
    meta = {"names": grads.names, "step": state.step, "betas": list(state.betas), "eps": state.eps,
            "losses": result.losses, "seconds": round(result.seconds, 2), "records": len(records)}
    write_text(meta_path, json.dumps(meta) + "\n")  # written last: marks the warm-up complete
    return grads, state


def _passes(jobs: list) -> list[list]:
    """Consecutive missing blocks packed into projection passes of at most ``BLOCK`` rows (a
    short last pool block and the target blocks share one pass: R is generated once per pass)."""
    out: list[list] = []
    rows = BLOCK
    for job in jobs:
        if rows + len(job[2]) > BLOCK:
            out.append([])
            rows = 0
        out[-1].append(job)
        rows += len(job[2])
    return out


def _adam_rows(state: AdamState, k: int) -> Callable[[torch.Tensor, int, int], torch.Tensor] | None:
    """A projection transform: :func:`adam_direction` on the first ``k`` rows, the rest as is."""
    if k == 0:
        return None

    def transform(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        head = adam_direction(x[:k], state.part(a, b))
        return head if k == x.shape[0] else torch.cat([head, x[k:]])

    return transform


def less_scores(
    lm,
    records: Sequence,
    target: Sequence | None,
    *,
    warmup: float = 0.05,
    warmup_epochs: int = 4,
    dim: int = DEFAULT_DIM,
    match: str = "mean",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    token_budget: int = 2048,
    renderer=None,
    train: TrainConfig | None = None,
    progress: Progress = None,
) -> dict[str, np.ndarray]:
    """LESS scores of ``records`` (the pool, n) against ``target`` (m records); see the module
    docstring for the formulas.

    Returns, each (n,) in input order: ``less`` (float64 cosine in [-1, 1], higher = keep),
    ``less_grad_norm`` (float64 |g_i|, the exact norm of the record's unprojected LoRA
    gradient; short records tend to have large norms, which is why LESS uses cosines) and
    ``less_warmup`` (int64, 1 for the records the warm-up trained on).

    ``lm`` (a :class:`~tunesift.models.LoadedModel`) is deep-copied for the warm-up and never
    modified. ``train`` replaces :func:`warmup_config` (its epochs and training seed are used,
    ``warmup_epochs`` is ignored); it must be a LoRA config. ``seed`` draws the warm-up
    records, seeds the projection and (without ``train``) the warm-up. ``renderer`` defaults
    to the ``train.template`` turn format with ``train.max_length``. ``token_budget`` bounds
    padded tokens per gradient batch.

    Cached under ``<cache_dir or the default score cache>/less/<warm-up key>/``, the key
    covering the model fingerprint and dtype, the warm-up settings and the warm-up records'
    token ids: the warmed-up LoRA weights and AdamW moments, then the projected features in
    blocks of ``BLOCK`` records keyed by (kind, dim, seed, the block's token ids). A rerun
    recomputes nothing (it does not even copy the model); a killed run recomputes only the
    missing blocks. ``progress(label, total)`` returns a callback advanced by records done:
    "LESS warm-up" (records x epochs) and "LESS gradients" (n + m).

    Raises :class:`OptionError` without a target set: LESS matches a target (task stage).
    """
    from ..render import renderer_for
    from ..store import ArrayStore, content_key, default_cache_dir

    if not target:
        raise OptionError(
            "LESS needs a target set (stage 'task' with --target FILE): it scores pool records "
            "by their gradient match to the target's"
        )
    if match not in MATCHES:
        raise OptionError(f"unknown LESS match '{match}': use mean or max")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OptionError(f"seed must be an integer >= 0, got {seed}")
    if token_budget < 1:
        raise OptionError(f"token budget must be positive, got {token_budget}")
    RademacherProjection(1, dim)  # validates dim
    cfg = train if train is not None else warmup_config(warmup_epochs, seed)
    cfg.validate()
    if cfg.mode != "lora":
        raise OptionError("LESS warm-up must be LoRA fine-tuning (train.mode = 'lora')")
    cfg = _target_modules(lm.model, cfg)
    widx = warmup_indices(len(records), warmup, seed)
    renderer = renderer or renderer_for(lm, cfg.template, cfg.max_length)
    seqs = [renderer.sequence(r) for r in records]
    tseqs = [renderer.sequence(r) for r in target]
    warm_key = content_key(
        VERSION, lm.fingerprint, lm.dtype, asdict(cfg), [seqs[i] for i in widx]
    )
    store = ArrayStore(Path(cache_dir or default_cache_dir()) / "less" / warm_key)

    def blocks(kind: str, ss: list) -> list[tuple[int, list, str]]:
        return [
            (a, ss[a : a + BLOCK], content_key(VERSION, kind, dim, seed, ss[a : a + BLOCK]))
            for a in range(0, len(ss), BLOCK)
        ]

    jobs = [("adam", seqs, blocks("adam", seqs)), ("sgd", tseqs, blocks("sgd", tseqs))]
    feats = {
        "adam": np.zeros((len(seqs), dim + 1), np.float32),
        "sgd": np.zeros((len(tseqs), dim + 1), np.float32),
    }
    advance = progress("LESS gradients", len(seqs) + len(tseqs)) if progress else None
    missing = []
    for kind, _, bl in jobs:
        for a, part, key in bl:
            got = store.get(key)
            if got is not None and got.shape == (len(part), dim + 1):
                feats[kind][a : a + len(part)] = got
                if advance:
                    advance(len(part))
            else:
                missing.append((kind, a, part, key))
    if missing:
        grads, state = _warm_up(
            lm, [records[i] for i in widx], cfg, renderer, store, progress
        )
        grads.token_budget = token_budget
        proj = RademacherProjection(grads.n_params, dim, seed)
        for group in _passes(missing):
            g = grads([s for job in group for s in job[2]])
            norm = torch.linalg.vector_norm(g, dim=1)
            k = sum(len(job[2]) for job in group if job[0] == "adam")  # pool rows come first
            rows = torch.cat([proj(g, _adam_rows(state, k)), norm[:, None]], 1).numpy()
            r = 0
            for kind, a, part, key in group:
                bad = np.flatnonzero(~np.isfinite(rows[r : r + len(part)]).all(axis=1))
                if len(bad):  # one NaN target feature made every pool score NaN: input order
                    raise overflow_error(f"less ({'pool' if kind == 'adam' else 'target'})",
                                         records[a : a + len(part)] if kind == "adam" else target[a : a + len(part)],
                                         bad, lm.dtype)
                store.put(key, rows[r : r + len(part)])
                feats[kind][a : a + len(part)] = rows[r : r + len(part)]
                r += len(part)
                if advance:
                    advance(len(part))
    pool, tgt = feats["adam"], feats["sgd"]
    in_warmup = np.zeros(len(seqs), dtype=np.int64)
    in_warmup[widx] = 1
    return {
        "less": less_match(pool[:, :dim], tgt[:, :dim], match),
        "less_grad_norm": pool[:, dim].astype(np.float64),
        "less_warmup": in_warmup,
    }
