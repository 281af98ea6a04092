"""Teacher-forced response-token statistics, with and without a shared cached prefix.

Both scorers here return, for each scored sequence, the two sufficient statistics of the
response tokens y_1..y_T (the response ids including the template's end token)::

    sq_err = sum_t (1 - p_t)^2          p_t = softmax(logits at position t-1)[y_t]
    logp   = sum_t log p_t

from which DELIFT's distances follow without rescoring (see :mod:`tunesift.scoring.utility`).
The log-softmax always runs in float32, whatever the model dtype; sums are float64.

:class:`ResponseScorer` is the fast path. A *prefix* (an in-context example, or only the
template header) is run once with ``use_cache=True``; its KV cache serves a batch of
right-padded *continuations* (``prompt_i | user_end | response_i | end``) that all follow it:
the cache is expanded (a view, no copy) to the batch, and the attention mask is ones over the
prefix plus the continuations' padding mask. Only the decoder runs over the continuation; its
last hidden states are gathered at the positions that predict response tokens and only those
go through the LM head (``get_output_embeddings()``, then the model's logit soft-capping or
scaling if it has one), so the (tokens x vocabulary) logits of prompt positions are never
formed. Every scored position lies inside the continuation (it starts with at least one prompt
token), so the prefix pass needs no logits at all.

Batching: rows are length-sorted and cut into batches of at most ``token_budget`` padded tokens
with a dynamic programme that minimises padding plus a per-forward overhead
(:func:`length_batches`); a batch after a prefix is cut further so that it holds at most
``kv_budget`` cached tokens, ``rows x (prefix + continuation)`` (:func:`kv_batches`). When
several prefixes are scored together (:meth:`ResponseScorer.score_groups`: sparse columns with
few targets, examples cut differently for long targets) and the model's
cache is plain full-attention layers, the prefixes run right-padded in a few batched forwards
and their caches are stacked into a :class:`_PrefixBank`; a batch can then mix rows of different
prefixes (the mask hides each row's padded prefix slots and the continuation's position ids
start at the row's own prefix length). Sliding-window caches never mix prefixes.

:func:`plain_logprob_stats` is the reference: it builds each full sequence, batches them
right-padded, and runs ``model(...).logits`` at every position, exactly like the original
DELIFT code does.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import TunesiftError

HEAD_CHUNK = 256  # response positions per LM-head matmul: its logits, float32 copy and log-softmax
# are ~14 bytes x vocabulary a position (170 MB for SmolLM2's 49,152 at 256)
BATCH_OVERHEAD = 32  # fixed cost of one forward batch, in padded-token equivalents
_HEAD_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {head key: mode}


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


CPU_TOKEN_BUDGET = 4096  # padded tokens per forward batch on a CPU (measured best on 2 cores)
MAX_TOKEN_BUDGET = 1 << 16
# a forward after a prefix holds at most this many cached tokens per ``token_budget`` (KV memory:
# 23 kB a token for SmolLM2-135M in bfloat16, held twice, so 4 x 4096 tokens is about 750 MB)
KV_TOKENS = 4
# the prefix caches one score_groups call holds at once: at most this many padded prefix tokens per
# ``token_budget`` (a column of a dense kernel over long records has one prefix per distinct cut)
BANK_TOKENS = 4


def auto_token_budget(lm, *, fraction: float = 0.5, free_bytes: int | None = None) -> int:
    """Padded tokens per forward batch that fit the device's free memory.

    CPU: ``CPU_TOKEN_BUDGET``. CUDA: ``fraction`` of the free memory (``free_bytes``, default
    ``torch.cuda.mem_get_info``) divided by a per-token cost, clamped to [4096, 65536]. The cost
    of one batch token, in bytes: the logits at response positions (the LM head output, its
    float32 copy and log-softmax: 3 x 4 x V, every token counted as a response token, the worst
    case), the KV cache a forward after a prefix may hold (``KV_TOKENS`` cached tokens per batch
    token, held three times on the bank path: the bank, the rows taken from it and their
    concatenation with the new keys: 3 x KV_TOKENS x 2 x layers x kv_heads x head_dim x b) and the
    layer activations (32 x hidden x b), with V the vocabulary and b the bytes of the model's dtype.
    (One copy of one token's keys and values undercounted a 7B model's KV by 12x.)
    """
    if torch.device(lm.device).type != "cuda":
        return CPU_TOKEN_BUDGET
    cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
    hidden = int(cfg.hidden_size)
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // int(cfg.num_attention_heads))
    b = {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(getattr(lm, "dtype", "")), 4)
    per_token = 12 * int(cfg.vocab_size) + 3 * KV_TOKENS * 2 * layers * heads * head_dim * b + 32 * hidden * b
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(torch.device(lm.device))
    fit = int(fraction * free_bytes) // per_token
    return int(min(MAX_TOKEN_BUDGET, max(CPU_TOKEN_BUDGET, fit)))


def prefix_chunks(lengths: Sequence[int], cap: int) -> list[list[int]]:
    """Indices of ``lengths`` (prefix lengths) in parts, shortest first, whose padded size (count x
    longest) stays within ``cap`` tokens; a prefix longer than ``cap`` alone is a part of its own.
    One part when everything fits."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    parts: list[list[int]] = []
    cur: list[int] = []
    for i in order:  # sorted: the newest is the widest
        if cur and (len(cur) + 1) * lengths[i] > cap:
            parts.append(cur)
            cur = []
        cur.append(i)
    return parts + [cur] if cur else parts


def attention_backends(device):
    """Context manager for scoring forwards: on CUDA avoid cuDNN attention, which plans a new
    kernel for every (batch, length) shape and made scoring CPU-bound (~2 ms per layer call);
    a no-op on CPU."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (1 - p)^2 and log p, float32, from logits (N, V) and target ids (N,)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return (1.0 - lp.exp()).square(), lp


def _segment_sums(values: torch.Tensor, seg: torch.Tensor, n: int) -> np.ndarray:
    out = torch.zeros(n, dtype=torch.float64, device=values.device)
    out.index_add_(0, seg, values.double())
    return out.cpu().numpy()


def length_batches(
    lengths: Sequence[int], budget: int, overhead: int = BATCH_OVERHEAD
) -> list[list[int]]:
    """Split items into batches of at most ``budget`` padded tokens, minimising padding.

    Items are sorted by decreasing length (ties by index) and cut into contiguous runs; a run
    costs ``rows * longest + overhead`` tokens and the cut that minimises the total is found by
    dynamic programming (O(n * rows per batch)). A single item longer than the budget gets its own
    batch. Returns lists of indices into ``lengths``, longest batch first.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    best = [0.0] + [float("inf")] * n  # best[k]: cost of the first k sorted items
    cut = [0] * (n + 1)
    for k in range(1, n + 1):
        for j in range(k - 1, -1, -1):  # batch = sorted items j..k-1, widest is item j
            rows, width = k - j, lengths[order[j]]
            if rows > 1 and rows * width > budget:
                break
            c = best[j] + rows * width + overhead
            if c < best[k]:
                best[k], cut[k] = c, j
    out: list[list[int]] = []
    k = n
    while k > 0:
        out.append(order[cut[k] : k])
        k = cut[k]
    return out[::-1]


def kv_batches(batch: Sequence[int], prefix_lens: Sequence[int], lengths: Sequence[int],
               budget: int) -> list[list[int]]:
    """Cut one continuation batch so that no forward holds more than ``budget`` cached tokens.

    A forward after a prefix cache keeps, in every layer, ``rows x (P + W)`` keys and values
    (the cache expanded or gathered to the batch, then concatenated with the continuation's),
    with P the longest prefix and W the longest continuation of its rows; ``length_batches``
    bounds only ``rows x W``. Many short continuations after long prefixes (2,000-token examples,
    50-token targets) would otherwise hold 40 x 2,050 tokens in every layer, gigabytes. Rows are
    taken longest prefix first and a batch is closed before ``rows x (P + W)`` would pass
    ``budget`` (a row longer than ``budget`` on its own gets a batch of one).

    ``batch``: row ids; ``prefix_lens[r]`` / ``lengths[r]``: prefix and continuation lengths of
    row ``r``. Returns batches of row ids, every row exactly once.
    """
    order = sorted(batch, key=lambda r: (-prefix_lens[r], r))
    out: list[list[int]] = []
    cur: list[int] = []
    p_max = w_max = 0
    for r in order:
        p, w = (p_max, max(w_max, lengths[r])) if cur else (prefix_lens[r], lengths[r])
        if cur and (len(cur) + 1) * (p + w) > budget:
            out.append(cur)
            cur, p, w = [], prefix_lens[r], lengths[r]
        cur.append(r)
        p_max, w_max = p, w
    if cur:
        out.append(cur)
    return out


def expand_cache(cache, batch: int):
    """A batch-``batch`` copy of a batch-1 KV cache that leaves ``cache`` untouched.

    For dynamic layers (the default cache of Llama, Gemma, Qwen... incl. sliding windows) the
    keys/values become ``expand`` views, so the only copy is the ``torch.cat`` the next forward
    does anyway; other cache types are deep-copied and repeated (``batch_repeat_interleave``).
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers and all(isinstance(x, DynamicLayer) and x.is_initialized for x in layers):
        out = copy.copy(cache)
        out.layers = []
        for layer in layers:
            new = copy.copy(layer)
            new.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            new.values = layer.values.expand(batch, *layer.values.shape[1:])
            out.layers.append(new)
        return out
    out = copy.deepcopy(cache)
    if batch > 1:
        out.batch_repeat_interleave(batch)
    return out


@dataclass
class ResponseScorer:
    """Scores continuations after a cached prefix with one LM (see the module docstring).

    ``token_budget`` bounds ``rows x padded continuation length`` per forward batch; rows are
    sorted by length so padding stays small. ``kv_budget`` (default ``KV_TOKENS x
    token_budget``) bounds ``rows x (padded prefix + continuation length)``, the keys and values
    a forward after a prefix holds in every layer (:func:`kv_batches`). ``forwards`` counts
    decoder forward calls; ``widest_kv`` is the largest ``rows x (P + W)`` any forward held.
    """

    lm: object
    token_budget: int = 4096
    kv_budget: int | None = None
    forwards: int = 0
    widest_kv: int = 0
    mixed_batches: int = 0  # forward batches whose rows had different prefixes
    _mode: str | None = field(default=None, repr=False)
    mergeable: bool = field(default=False, repr=False)

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
        # a forward's fixed cost in padded-token equivalents: small on CPU, large on a GPU
        self.overhead = BATCH_OVERHEAD if self.device.type == "cpu" else 1024
        if self.kv_budget is None:
            self.kv_budget = KV_TOKENS * self.token_budget

    @property
    def head_path(self) -> bool:
        """True when decoder + :meth:`head_logits` reproduce ``model(...).logits`` (probed once per
        model); callers that need logits at a few positions only can then skip the full head."""
        self._check_head()
        return self._mode == "head"

    # -- logits from hidden states ---------------------------------------------------------
    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits (..., V) of final hidden states (..., d), with the model's scaling/soft-cap."""
        z = self.head(hidden)
        if self.logit_scale is not None:
            z = z * self.logit_scale
        if self.logits_scaling is not None:
            z = z / self.logits_scaling
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def _check_head(self) -> None:
        """Once per model (and head settings): the decoder + head path must reproduce
        ``model(...).logits`` on a short probe sequence.

        Architectures whose head does something this class does not know about fall back to
        full-model logits (slower, still exact) instead of silently scoring wrong numbers.
        """
        if self._mode is not None:
            return
        key = (self.softcap, self.logit_scale, self.logits_scaling)
        known = _HEAD_CHECKS.setdefault(self.model, {})
        if key not in known:
            known[key] = self._probe()
        self._mode, self.mergeable = known[key]

    def _probe(self) -> tuple[str, bool]:
        """(mode, mergeable): ``head`` when decoder + head reproduce the model's logits, else
        ``full``; mergeable when the KV cache is made of plain full-attention dynamic layers."""
        from transformers.cache_utils import DynamicLayer

        ids = torch.arange(1, 9, device=self.device)[None] % max(2, self.model.config.vocab_size)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True)
            ref = out.logits.float().log_softmax(-1)
            layers = getattr(out.cache, "layers", None)
            mergeable = bool(layers) and all(type(x) is DynamicLayer for x in layers)
            if self.decoder is None or self.head is None:
                return "full", mergeable
            hid = self.decoder(input_ids=ids, use_cache=False).last_hidden_state
            ours = self.head_logits(hid).float().log_softmax(-1)
        tol = 1e-3 if self.model.dtype == torch.float32 else 0.1
        return ("head" if torch.allclose(ref, ours, atol=tol, rtol=0) else "full"), mergeable

    # -- one prefix, many continuations ----------------------------------------------------
    def prefix_cache(self, prefix: Sequence[int]):
        """Run ``prefix`` (batch 1) and return its KV cache, or None for an empty prefix."""
        if not prefix:
            return None
        return self._prefix_forward([prefix])

    def _prefix_forward(self, prefixes: Sequence[Sequence[int]]):
        """KV cache of right-padded ``prefixes`` (batch len(prefixes), padded slots masked)."""
        self._check_head()
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(prefixes), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prefixes):
            ids[r, : len(p)] = torch.tensor(list(p))
            mask[r, : len(p)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kw = {} if len(prefixes) == 1 else {"attention_mask": mask}
        with torch.inference_mode(), attention_backends(self.device):
            if self._mode == "head":
                out = self.decoder(input_ids=ids, use_cache=True, **kw)
            else:
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
        self.forwards += 1
        return out.cache

    def score(
        self, prefix: Sequence[int], conts: Sequence[Continuation]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sq_err, logp) float64 arrays (len(conts),) for the ``prefix | cont`` sequences."""
        return self.score_groups([(prefix, conts)])[0]

    def score_groups(
        self,
        groups: Sequence[tuple[Sequence[int], Sequence[Continuation]]],
        on_batch: Callable[[int], None] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Score several ``(prefix, continuations)`` groups: one (sq_err, logp) pair per group.

        Each prefix runs once. When the model's cache is made of plain full-attention layers,
        rows of different groups share forward batches (prefix caches right-padded into one
        bank, positions passed explicitly), so many small groups still fill the token budget;
        otherwise (sliding windows, unusual caches) each batch holds one group's rows.
        ``on_batch(rows)`` is called after every forward batch.
        """
        self._check_head()
        out = [(np.zeros(len(c)), np.zeros(len(c))) for _, c in groups]
        live = [g for g, (_, c) in enumerate(groups) if len(c)]
        if not live:
            return out
        parts = prefix_chunks([len(groups[g][0]) for g in live], BANK_TOKENS * self.token_budget)
        if len(parts) > 1:  # the prefix caches of all groups would not fit at once: a part at a time
            for part in parts:
                got = self.score_groups([groups[live[i]] for i in part], on_batch)
                for i, res in zip(part, got):
                    out[live[i]] = res
            return out
        bank = None
        if len(live) > 1 and self.mergeable and all(len(groups[g][0]) for g in live):
            bank = self._bank([groups[g][0] for g in live])
            caches = None
        else:
            caches = [self.prefix_cache(groups[g][0]) for g in live]
        items = [(a, k) for a, g in enumerate(live) for k in range(len(groups[g][1]))]
        length = [len(groups[live[a]][1][k].ids) for a, k in items]
        if bank is not None:
            batches = [
                [items[i] for i in b]
                for b in length_batches(length, self.token_budget, self.overhead)
            ]
        else:
            batches = []
            for a, g in enumerate(live):
                lens = [len(c.ids) for c in groups[g][1]]
                batches += [
                    [(a, k) for k in b]
                    for b in length_batches(lens, self.token_budget, self.overhead)
                ]
        p_len = [len(groups[g][0]) for g in live]
        batches = [
            [batch[i] for i in part]
            for batch in batches
            for part in kv_batches(
                range(len(batch)),
                [p_len[a] for a, _ in batch],
                [len(groups[live[a]][1][k].ids) for a, k in batch],
                self.kv_budget,
            )
        ]
        for batch in batches:
            conts = [groups[live[a]][1][k] for a, k in batch]
            owners = sorted({a for a, _ in batch})
            if len(owners) == 1 and caches is not None:
                a = owners[0]
                s, l_ = self._score_batch(
                    conts, *self._single(caches[a], len(groups[live[a]][0]), len(batch))
                )
            else:
                s, l_ = self._score_batch(conts, *bank.take([a for a, _ in batch], self.device))
                self.mixed_batches += len(owners) > 1
            for r, (a, k) in enumerate(batch):
                out[live[a]][0][k] = s[r]
                out[live[a]][1][k] = l_[r]
            if on_batch:
                on_batch(len(batch))
        return out

    def _bank(self, prefixes: Sequence[Sequence[int]]) -> _PrefixBank:
        """All ``prefixes`` run right-padded, a few per forward, stacked into one bank."""
        parts = []
        for b in length_batches([len(p) for p in prefixes], 2 * self.token_budget, self.overhead):
            parts.append((b, self._prefix_forward([prefixes[i] for i in b])))
        return _PrefixBank.from_batches(parts, [len(p) for p in prefixes])

    def _single(self, cache, p_len: int, b: int):
        if cache is None:
            return None, None, None
        return (
            expand_cache(cache, b),
            torch.ones((b, p_len), dtype=torch.long, device=self.device),
            None,
        )

    def _score_batch(self, conts: list[Continuation], cache, prefix_mask, prefix_lens):
        """Forward one batch of continuations after ``cache`` (None: no prefix).

        ``prefix_mask`` (B, P) marks real prefix slots; ``prefix_lens`` (B,) is given when rows
        have different prefix lengths, and then sets the continuation's position ids.
        """
        b = len(conts)
        width = max(len(c.ids) for c in conts)
        ids = torch.full((b, width), self.pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        pos, tgt, seg = [], [], []
        for r, c in enumerate(conts):
            ids[r, : len(c.ids)] = torch.tensor(c.ids)
            mask[r, : len(c.ids)] = 1
            start = c.n_prompt  # first scored token's index in the continuation
            if start < 1:
                raise TunesiftError("internal: a continuation must start with a prompt token")
            pos += range(start - 1, start - 1 + c.n_response)
            tgt += c.ids[start:]
            seg += [r] * c.n_response
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        if cache is not None:
            self.widest_kv = max(self.widest_kv, b * (prefix_mask.shape[1] + width))
            mask = torch.cat([prefix_mask, mask], 1)
            kw = {"cache": cache, "use_cache": True}
            if prefix_lens is not None:
                # (B, width): a padding slot repeats its row's last real position, so no position
                # passes max_length (learned position tables) or moves a dynamic RoPE's scale
                lens = torch.tensor([len(c.ids) for c in conts], device=dev)
                steps = torch.minimum(torch.arange(width, device=dev)[None], lens[:, None] - 1)
                kw["position_ids"] = prefix_lens[:, None] + steps
        else:
            kw = {"use_cache": False}
        seg_t = torch.tensor(seg, device=dev)
        pos_t = torch.tensor(pos, device=dev)
        tgt_t = torch.tensor(tgt, device=dev)
        with torch.inference_mode(), attention_backends(dev):
            if self._mode == "head":
                hid = self.decoder(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
                hid = hid[seg_t, pos_t]  # (N, d): only positions that predict response tokens
                sq_parts, lp_parts = [], []
                for a in range(0, hid.shape[0], HEAD_CHUNK):
                    s, l_ = token_stats(
                        self.head_logits(hid[a : a + HEAD_CHUNK]), tgt_t[a : a + HEAD_CHUNK]
                    )
                    sq_parts.append(s)
                    lp_parts.append(l_)
                sq_t, lp_t = torch.cat(sq_parts), torch.cat(lp_parts)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, **kw).logits
                sq_t, lp_t = token_stats(logits[seg_t, pos_t], tgt_t)
        self.forwards += 1
        return _segment_sums(sq_t, seg_t, b), _segment_sums(lp_t, seg_t, b)


class _PrefixBank:
    """KV caches of many prefixes, right-padded into one stack per layer.

    Built from batched, right-padded prefix forwards of a model whose cache is plain
    full-attention :class:`DynamicLayer` s (slot order is then irrelevant: only the mask and the
    positions baked into the keys matter). ``take(groups)`` gives a batch cache whose row r holds
    prefix ``groups[r]`` in slots ``0..len-1``; the mask hides the padded slots and the
    continuation's position ids start at each row's own prefix length.
    """

    def __init__(self, template, keys, values, lens):
        self.template, self.keys, self.values, self.lens = template, keys, values, lens

    @classmethod
    def from_batches(cls, parts, lens: list[int]) -> _PrefixBank:
        """``parts``: (indices into ``lens``, batched cache of those prefixes) pairs."""
        p_max = max(lens)
        template = parts[0][1]
        n_layers = len(template.layers)
        keys, values = [], []
        for i in range(n_layers):
            k0, v0 = template.layers[i].keys, template.layers[i].values
            ks = k0.new_zeros((len(lens), k0.shape[1], p_max, k0.shape[3]))
            vs = v0.new_zeros((len(lens), v0.shape[1], p_max, v0.shape[3]))
            for idx, cache in parts:
                layer = cache.layers[i]
                rows = torch.tensor(idx, device=layer.keys.device)
                ks[rows, :, : layer.keys.shape[2]] = layer.keys
                vs[rows, :, : layer.values.shape[2]] = layer.values
                layer.keys = layer.values = None  # copied: free it now, not after the last layer
            keys.append(ks)
            values.append(vs)
        return cls(template, keys, values, torch.tensor(lens, device=keys[0].device))

    def take(self, groups: list[int], device):
        idx = torch.tensor(groups, device=self.lens.device)
        lens = self.lens[idx]
        p_b = int(lens.max())
        out = copy.copy(self.template)
        out.layers = []
        for i, layer in enumerate(self.template.layers):
            new = copy.copy(layer)
            new.keys = self.keys[i][:, :, :p_b].index_select(0, idx)
            new.values = self.values[i][:, :, :p_b].index_select(0, idx)
            out.layers.append(new)
        prefix_mask = (torch.arange(p_b, device=lens.device)[None] < lens[:, None]).long()
        return out, prefix_mask.to(device), lens.to(device)


def plain_logprob_stats(
    lm, seqs: Sequence[tuple[Sequence[int], int]], *, token_budget: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Reference scorer: (sq_err, logp) for full sequences, ``model(...).logits`` at every position.

    ``seqs``: (input_ids, n_response) pairs; the last ``n_response`` ids are scored. Sequences
    are length-sorted, right-padded and batched within ``token_budget`` padded tokens with the
    same least-padding batching as the fast scorer (:func:`length_batches`).
    """
    n = len(seqs)
    sq = np.zeros(n)
    lp = np.zeros(n)
    dev = torch.device(lm.device)
    pad = _pad_id(lm)
    for rows in length_batches([len(s) for s, _ in seqs], token_budget):
        width = len(seqs[rows[0]][0])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            s = list(seqs[i][0])
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        with torch.inference_mode(), attention_backends(dev):
            logits = lm.model(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False
            ).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(rows):
            s, n_resp = seqs[i]
            start = len(s) - n_resp
            tgt = torch.tensor(list(s[start:]), device=dev)
            tok_lp = logp[r, start - 1 : len(s) - 1].gather(-1, tgt[:, None]).squeeze(-1)
            sq[i] = float((1.0 - tok_lp.exp()).square().double().sum())
            lp[i] = float(tok_lp.double().sum())
    return sq, lp
