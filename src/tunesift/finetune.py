"""Supervised fine-tuning on a selection: LoRA (default) or full, loss on response tokens only.

Records are rendered exactly as the scorers render them (:mod:`tunesift.render`), so the model is
trained on the same token sequences the selection judged. The loss of a batch is the mean
cross-entropy over its response tokens (prompt, template header and padding are never scored)::

    L = - (1 / sum_i T_i) * sum_i sum_t log p(y_it | x_i, y_i,<t)

Only the final hidden states at response positions go through the LM head, so the
(tokens x vocabulary) logits of prompt positions are never formed (this matters for Gemma's
262k vocabulary). Batches are drawn from a seeded shuffle and grouped by length within windows of
``8 x batch_size`` records (less padding, still random). AdamW, linear warm-up then linear decay,
gradient-norm clipping at 1.0. Everything random (LoRA init, dropout, order) follows ``seed``.

Memory is bounded by three things, none of which changes the gradient (up to float summation
order): a batch is split into micro-batches of at most ``token_budget`` padded tokens whose
gradients accumulate (each micro-batch's loss sum is divided by the whole batch's token count);
each decoder layer is recomputed in the backward pass instead of keeping its activations
(gradient checkpointing: LoRA's dropout copies alone cost ~3 MB per token without it); and the
LM head with its cross-entropy runs in chunks of ``HEAD_CHUNK`` positions, recomputed in backward,
so no (tokens x vocabulary) logits are kept. Right-padded batches need no attention mask under
causal attention (a real token only sees earlier, real tokens), which lets SDPA use its fused
kernel instead of materialising the (batch, heads, T, T) probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import OptionError, TunesiftError
from .models import (
    TRAIN_META,
    load_adapter,
    load_lm,
    to_float32,
    trained_dtype,
    trained_template,
)
from .render import check_template

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Fine-tuning settings. ``lr=None`` means 2e-4 for LoRA, 2e-5 for full fine-tuning."""

    mode: str = "lora"  # lora | full
    epochs: int = 2
    lr: float | None = None
    batch_size: int = 8
    max_length: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of the steps
    seed: int = 0
    autocast: str = "none"  # none | bfloat16 (mixed precision; ~2-3x faster on CPUs with AMX)
    template: str = "auto"
    token_budget: int = 2048  # padded tokens per micro-batch (gradients accumulate over a batch)
    checkpointing: bool = True  # recompute decoder layers in backward (memory flat in the batch)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.mode == "lora" else 2e-5)

    def validate(self) -> None:
        if self.mode not in ("lora", "full"):
            raise OptionError(f"unknown fine-tuning mode '{self.mode}': use lora or full")
        if self.epochs < 1:
            raise OptionError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise OptionError(f"learning rate must be a positive number, got {self.lr}")
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise OptionError(f"LoRA rank and alpha must be positive, got r={self.lora_r} alpha={self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup < 1:
            raise OptionError("lora-dropout and warmup must be in [0, 1)")
        if self.autocast not in ("none", "bfloat16"):
            raise OptionError(f"unknown autocast '{self.autocast}': use none or bfloat16")
        if self.max_length < 8:
            raise OptionError(f"max-length must be at least 8 tokens, got {self.max_length}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise OptionError(f"seed must be an integer >= 0, got {self.seed}")
        if self.token_budget < 8:
            raise OptionError(f"token budget must be at least 8 tokens, got {self.token_budget}")
        check_template(self.template)


@dataclass
class TrainResult:
    """A trained model (a peft model for LoRA) with its optimizer state and loss curve.

    ``losses`` (steps,) is each step's mean response-token loss; ``tokens`` counts the response
    tokens trained on (all epochs)."""

    model: object
    optimizer: object
    losses: list[float]
    steps: int
    tokens: int
    seconds: float
    config: TrainConfig
    extra: dict = field(default_factory=dict)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """A random partition of ``range(n)`` into batches of ``batch_size`` (the last may be short):
    shuffle, sort windows of 8 batches by length, cut, shuffle the batch order."""
    perm = rng.permutation(len(lengths))
    window = 8 * batch_size
    batches = []
    for a in range(0, len(perm), window):
        part = sorted(perm[a:a + window].tolist(), key=lambda i: -lengths[i])
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _pad(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int):
    import torch

    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, (s, m) in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        attn[r, :len(s)] = 1
        scored[r, :len(s)] = torch.tensor(m, dtype=torch.bool)
    return ids, attn, scored


# response positions per LM-head chunk: a chunk's logits, their float32 log-softmax and, in backward,
# their recompute and gradient cost ~0.6 MB a position at 49k vocab (peak RSS fine-tuning 100 records:
# 1.77 GB at 512, 1.59 GB at 64, no slower; docs/results.md)
HEAD_CHUNK = 128


def _head_loss_sum(head_logits, hidden, targets):
    """Sum of cross-entropies of ``targets`` (N,) under ``head_logits(hidden)`` (N, V)."""
    import torch

    return torch.nn.functional.cross_entropy(head_logits(hidden).float(), targets, reduction="sum")


def _ids_and_mask(seqs, i: int) -> tuple[list[int], list[int]]:
    """Record ``i`` of a ContinuationTable as (input_ids, response_mask), the mask 1 on its response."""
    ids, n = seqs.array(i).tolist(), int(seqs.n_response[i])
    return ids, [0] * (len(ids) - n) + [1] * n


def response_loss_sum(scorer, model, seqs, pad_id: int):
    """(sum of response-token cross-entropies, number of response tokens) of one batch, with grad.

    ``seqs``: (input_ids, response_mask) pairs. Position t predicts token t+1, so the hidden state
    at t-1 is gathered for every scored token t (the first token is never scored). Sequences are
    right-padded and attention is causal, so no attention mask is passed (see the module doc).
    In training mode the head runs in checkpointed chunks of ``HEAD_CHUNK`` positions."""
    import torch
    from torch.utils.checkpoint import checkpoint

    ids, _attn, scored = _pad(seqs, pad_id)
    dev = next(model.parameters()).device
    ids, scored = ids.to(dev), scored.to(dev)
    rows, cols = torch.nonzero(scored[:, 1:], as_tuple=True)  # predicting position cols+1
    targets = ids[rows, cols + 1]
    if scorer.head_path:
        hid = scorer.decoder(input_ids=ids, use_cache=False).last_hidden_state[rows, cols]  # (N, d)
        if not torch.is_grad_enabled():
            return _head_loss_sum(scorer.head_logits, hid, targets), int(targets.numel())
        loss = hid.new_zeros((), dtype=torch.float32)
        for a in range(0, hid.shape[0], HEAD_CHUNK):
            loss = loss + checkpoint(_head_loss_sum, scorer.head_logits, hid[a:a + HEAD_CHUNK],
                                     targets[a:a + HEAD_CHUNK], use_reentrant=False)
        return loss, int(targets.numel())
    # an architecture whose head we do not reproduce: full logits, still exact
    logits = model(input_ids=ids, use_cache=False).logits[rows, cols]
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())


def _checkpointing(model, on: bool) -> None:
    """Per-layer activation checkpointing on or off (non-reentrant: dropout's RNG is replayed)."""
    if on:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()


def wrap_lora(model, cfg: TrainConfig):
    """Freeze ``model`` and inject LoRA layers (rank, alpha, dropout, target modules of ``cfg``)
    in place; returns the peft model."""
    import warnings

    from peft import LoraConfig, get_peft_model

    # peft 0.17+ asks transformers 5 a deprecated question; nothing for the user to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=cfg.target_modules, task_type="CAUSAL_LM"))


def finetune(
    lm,
    records: Sequence,
    config: TrainConfig | None = None,
    *,
    renderer=None,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune ``lm`` (a :class:`~tunesift.models.LoadedModel`) on ``records``.

    LoRA wraps ``lm.model`` in place with peft (``lm.model`` then carries the adapters); full mode
    trains every weight. A model still carrying an earlier run's unmerged adapters is refused
    (:func:`merged` merges them; a merged model trains on as any other). ``progress(n)`` is called with the records done after each step.
    Returns a :class:`TrainResult`; the model is left in eval mode.
    """
    import torch

    from .render import renderer_for
    from .scoring.logprobs import ResponseScorer, length_batches
    from .scoring.token_table import ContinuationTable

    cfg = config or TrainConfig()
    cfg.validate()
    if not records:
        raise TunesiftError("nothing to fine-tune on: the training set is empty")
    renderer = renderer or renderer_for(lm, cfg.template, cfg.max_length)
    cut = [0]  # prompts cut from the left to fit max_length: counted and warned about, never silent

    def continuations():
        for r in records:
            ids, n_response, truncated = renderer.continuation(r)
            cut[0] += truncated > 0
            yield ids, n_response

    # 4 bytes a token (a list of Python ints costs ~36): each batch's lists are rebuilt from it
    seqs = ContinuationTable(continuations())
    if cut[0]:
        log.warning("%d of %d training records have prompts longer than max_length %d: each is trained on its "
                    "prompt's last tokens (prompts_cut in %s)", cut[0], len(records), renderer.max_length, TRAIN_META)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    base = lm.model
    if any(hasattr(m, "lora_A") for m in base.modules()):  # peft's LoRA layers, not merged
        raise TunesiftError("this model already carries the LoRA adapters of an earlier finetune(), which a second "
                            "run would train beside: merge them first (lm = tunesift.finetune.merged(lm, result)) "
                            "or load the model again")
    if cfg.mode == "full":
        to_float32(lm)  # float32 master weights
    if cfg.mode == "lora":
        model = wrap_lora(base, cfg)
        inner = model.get_base_model()  # the same module tree, now with LoRA layers injected
    else:
        model = inner = base
        for p in model.parameters():
            p.requires_grad_(True)
    scorer = ResponseScorer(type(lm)(inner, lm.tokenizer, lm.source, lm.path, lm.fingerprint, lm.device, lm.dtype))
    model.eval()
    scorer.head_path  # noqa: B018 -- probe the head path now, in eval mode: in train mode dropout would
    # perturb the probe and draw from the RNG, making runs depend on whether the model was probed before
    if cfg.checkpointing:
        _checkpointing(inner, True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(seqs) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warm = int(round(cfg.warmup * total))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dev_type = torch.device(lm.device).type
    if cfg.autocast == "bfloat16" and dev_type == "cpu":
        from .machine import cpu_model, slow_bf16

        if slow_bf16():
            log.warning("--autocast bfloat16 on %s, a CPU without AVX512-BF16 or AMX: bfloat16 is emulated "
                        "there: fine-tuning measured 9x slower than in float32 on an AMD EPYC; --autocast none "
                        "trains faster on this machine", cpu_model())
    losses, tokens = [], 0
    t0 = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        for batch in length_grouped_batches(seqs.lengths().tolist(), cfg.batch_size, rng):
            part = [_ids_and_mask(seqs, i) for i in batch]
            n_tok = sum(sum(m[1:]) for _, m in part)  # response tokens of the whole batch
            opt.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for micro in length_batches([len(s) for s, _ in part], cfg.token_budget):
                with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=cfg.autocast == "bfloat16"):
                    loss_sum, _ = response_loss_sum(scorer, inner, [part[i] for i in micro], pad)
                (loss_sum / max(1, n_tok)).backward()  # accumulates: the batch's mean, micro by micro
                batch_loss += float(loss_sum.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(batch_loss / max(1, n_tok))
            tokens += n_tok
            if progress:
                progress(len(batch))
    model.eval()
    if cfg.checkpointing:
        _checkpointing(inner, False)
    for p in model.parameters():
        p.requires_grad_(False)
    return TrainResult(model, opt, losses, total, tokens, time.perf_counter() - t0, cfg,
                       {"template": renderer.fmt.name, "records": len(seqs), "prompts_cut": cut[0]})


def merged(lm, result: TrainResult):
    """A :class:`~tunesift.models.LoadedModel` of the trained weights (LoRA merged into the base),
    ready for scoring and generation. Its fingerprint covers the base and the trained weights."""
    import hashlib

    model = result.model
    if result.config.mode == "lora":
        to_float32(lm)  # lm.model is the module tree the adapters were injected into: merge in float32
        model = model.merge_and_unload()
    h = hashlib.sha256(lm.fingerprint.encode())
    h.update(json.dumps(asdict(result.config), sort_keys=True).encode())
    h.update(np.asarray(result.losses, dtype=np.float64).tobytes())
    return type(lm)(model.eval(), lm.tokenizer, f"{lm.source}+{result.config.mode}", lm.path,
                    h.hexdigest()[:16], lm.device, lm.dtype, result.extra.get("template", "auto"))


def trained_by_tunesift(meta: dict) -> bool:
    """True for a ``tunesift_train.json`` that :func:`save` wrote (also one from before its ``tool`` key)."""
    return meta.get("tool") == "tunesift" or {"base_model", "config", "losses"} <= meta.keys()


def check_model_out(out: str | Path) -> None:
    """Refuse ``out`` unless it is new, empty, or a folder :func:`save` wrote that nobody changed
    since (its files' SHA-256 as ``tunesift_train.json`` lists them): one-line OptionError, before
    any training. A rerun replaces only what tunesift wrote."""
    from .folders import check_earlier_set

    out = Path(out)
    if out.is_dir():
        check_earlier_set(out, out, TRAIN_META, unlisted={}, ours=trained_by_tunesift, names_checked=False)


def save(result: TrainResult, lm, out: str | Path, info: dict | None = None) -> Path:
    """Write the adapter (LoRA) or the whole model (full) plus ``tunesift_train.json`` to ``out``.

    Filled in a sibling folder and swapped in (:func:`tunesift.folders.publish`), so ``out`` is
    never half written; ``tunesift_train.json`` lists the SHA-256 of every other file, and an
    existing ``out`` is replaced only when :func:`check_model_out` allows it."""
    from .folders import digests, publish

    out = Path(out)
    check_model_out(out)

    def fill(tmp: Path) -> None:
        result.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        meta = {"tool": "tunesift", "base_model": lm.source, "base_path": lm.path, "base_fingerprint": lm.fingerprint,
                "config": asdict(result.config), "steps": result.steps, "tokens": result.tokens,
                "seconds": round(result.seconds, 2), "losses": result.losses, **result.extra, **(info or {}),
                "files": digests(tmp)}
        (tmp / TRAIN_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    publish(out, fill, "the model", out)
    return out


def check_trained_folder(path: str | Path) -> Path:
    """``path`` as a Path when it is a folder (checked before any other work), else a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise TunesiftError(f"{path}: not a fine-tuned model folder (run tunesift finetune first)")
    return path


def evaluation_template(path: str | Path, template: str) -> str:
    """The template to evaluate the model in ``path`` with: ``template`` as given, except that
    ``auto`` becomes the one it was trained with (a model trained on plain prompts would otherwise
    be asked in chat form); another explicit one than training's is used, with a warning."""
    trained = trained_template(path)
    if trained in (None, "auto") or trained == template:
        return template
    if template == "auto":
        log.info("template %s, as the model was trained", trained)
        return trained
    log.warning("--template %s, but the model was trained with template %s", template, trained)
    return template


def load_trained(path: str | Path, *, model: str | None = None, device: str = "auto", dtype: str = "auto"):
    """Load what :func:`save` wrote: a LoRA adapter merged into its base model, or a full model.

    The base model is the one recorded in ``tunesift_train.json`` unless ``model`` names another."""
    path = check_trained_folder(path)
    if (path / "adapter_config.json").exists():
        return load_adapter(path, base=model, device=device, dtype=dtype)
    if (path / "config.json").exists():  # save() wrote float32: "auto" keeps it (bf16 would round updates away)
        if model is not None:
            log.warning("%s holds a whole model (full fine-tuning): --model %s is not used", path, model)
        return load_lm(str(path), device=device, dtype=trained_dtype(dtype))
    raise TunesiftError(f"{path}: neither a LoRA adapter nor a model folder")
