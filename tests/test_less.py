"""LESS: exact per-record LoRA gradients, the Adam update direction, the random projection, the
matching, end-to-end behaviour on tiny models, caching and resume."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import tiny
import torch

import tunesift.finetune
from tunesift.errors import OptionError
from tunesift.finetune import wrap_lora
from tunesift.render import Renderer, turn_format
from tunesift.scoring import less
from tunesift.scoring.less import (
    AdamState,
    LoraGradients,
    RademacherProjection,
    adam_direction,
    less_match,
    less_scores,
    warmup_config,
    warmup_indices,
)

TEXTS = tiny.CORPUS[:11]


def rec(i: int, prompt: str, response: str) -> SimpleNamespace:
    return SimpleNamespace(id=f"r{i}", prompt=prompt, response=response, context=(), line=i + 1)


def pool(n: int) -> list[SimpleNamespace]:
    return [rec(i, TEXTS[i % 11], TEXTS[(3 * i + 1) % 11] + f" #{i}") for i in range(n)]


def lora_copy(lm, seed: int = 0) -> LoraGradients:
    """A LoRA-carrying copy of ``lm`` with random (non-zero) A and B."""
    model = copy.deepcopy(lm.model)
    wrap_lora(model, less._target_modules(model, warmup_config()))
    grads = LoraGradients(type(lm)(model, lm.tokenizer, lm.source, lm.path, lm.fingerprint,
                                   lm.device, lm.dtype))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in grads.mods:
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.1)
    return grads


def test_lora_targets_every_attention_projection_fused_or_not(tiny_lm):
    """Phi-3 fuses q, k and v into qkv_proj: the attention regex matched its o_proj alone (so the
    all-linear fallback never fired) and LESS's gradients left out the query, key and value."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    cfg = less._target_modules(model, warmup_config())
    assert cfg.target_modules == less.FUSED_ATTENTION
    # a model with q, k, v apart keeps the paper's string (and so its cache keys)
    assert less._target_modules(tiny_lm.model, warmup_config()).target_modules == less.ATTENTION
    wrap_lora(model, cfg)
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any(".qkv_proj." in n for n in names) and any(".o_proj." in n for n in names)


def reference_grad(grads: LoraGradients, ids: list[int], mask: list[int]) -> torch.Tensor:
    """One record alone: full-model logits, mean CE over the response tokens, plain backward."""
    logits = grads.model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    m = torch.tensor(mask[1:], dtype=torch.float32)
    loss = -(lp * m).sum() / m.sum()
    gs = torch.autograd.grad(loss, [mod.weight for _, mod in grads.mods])
    return torch.cat([g.reshape(-1) for g in gs])


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_plain_lm"])
def test_per_record_gradients_equal_single_record_backward(which, request):
    lm = request.getfixturevalue(which)
    grads = lora_copy(lm)
    rend = Renderer(lm.tokenizer, turn_format(lm.tokenizer), max_length=256)
    seqs = [rend.sequence(r) for r in pool(7)]
    ref = torch.stack([reference_grad(grads, s, m) for s, m in seqs])
    assert grads.n_params == ref.shape[1] and (ref.abs().sum(1) > 0).all()
    for budget in (40, 10_000):  # several padded batches, then all rows in one batch
        grads.token_budget = budget
        got = grads(seqs)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    # a lone record's gradient does not depend on the records batched with it
    torch.testing.assert_close(grads.batch(seqs[2:3])[0], got[2], rtol=0,
                               atol=1e-5 * float(ref.abs().max()))


def test_adam_direction_is_the_adamw_step_and_the_paper_formula():
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, generator=gen, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=1.0, weight_decay=0.0, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(5):
        p.grad = torch.randn(50, generator=gen, dtype=torch.float64)
        opt.step()
    st = opt.state[p]
    state = AdamState(st["exp_avg"].clone(), st["exp_avg_sq"].clone(), int(st["step"]),
                      (0.8, 0.99), 1e-6)
    g = torch.randn(3, 50, generator=gen, dtype=torch.float64)
    m = 0.8 * state.exp_avg + 0.2 * g
    v = 0.99 * state.exp_avg_sq + 0.01 * g**2
    paper = (m / (1 - 0.8**6)) / (torch.sqrt(v / (1 - 0.99**6)) + 1e-6)
    torch.testing.assert_close(adam_direction(g, state), paper, rtol=1e-12, atol=0)
    torch.testing.assert_close(adam_direction(g, state, bias_correction=False),
                               m / (torch.sqrt(v) + 1e-6), rtol=1e-12, atol=0)
    before = p.detach().clone()  # the step AdamW really takes with gradient g[1] (lr 1)
    p.grad = g[1].clone()
    opt.step()
    torch.testing.assert_close(before - p.detach(), adam_direction(g[1], state),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(adam_direction(g[:, 10:20], state.part(10, 20)),
                               adam_direction(g, state)[:, 10:20])


def test_projection_preserves_inner_products_and_is_seeded(monkeypatch):
    monkeypatch.setattr(less, "CHUNK", 1000 * 2048)  # several chunks of 1000 rows, the last short
    n, d = 4500, 2048
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, n, generator=gen)
    x[1] = 0.6 * x[0] + 0.8 * x[1]  # a correlated pair
    proj = RademacherProjection(n, d, seed=3)
    y = proj(x)
    r = torch.cat([proj.chunk(c) for c in range(5)])
    assert r.shape == (n, d) and set(torch.unique(torch.sign(r)).tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(r.abs(), torch.full_like(r, d**-0.5))
    assert abs(float(r.mean())) < 0.01 * d**-0.5
    gram, pgram = x @ x.T, y @ y.T
    scale = torch.sqrt(torch.diag(gram)[:, None] * torch.diag(gram)[None, :])
    assert float(((pgram - gram) / scale).abs().max()) < 0.12  # JL: ~sqrt(2/d) = 0.03 per entry
    torch.testing.assert_close(y, RademacherProjection(n, d, seed=3)(x))  # seeded
    torch.testing.assert_close(proj(x[2:4]), y[2:4])  # rows are independent of the batch
    assert not torch.allclose(RademacherProjection(n, d, seed=4)(x), y)
    with pytest.raises(OptionError, match="multiple of 8"):
        RademacherProjection(n, 100)


def test_match_mean_and_max():
    f = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    h = np.array([[3.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(less_match(f, h, "max"), [1.0, 1.0, 2**-0.5, 0.0])
    np.testing.assert_allclose(less_match(f, h, "mean"), [2**-0.5, 2**-0.5, 1.0, 0.0])
    # mean ranks like the average per-target cosine
    rng = np.random.default_rng(0)
    f, h = rng.normal(size=(30, 8)), rng.normal(size=(5, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    avg = (unit(f) @ unit(h).T).mean(1)
    assert (np.argsort(less_match(f, h, "mean")) == np.argsort(avg)).all()
    with pytest.raises(OptionError, match="unknown LESS match"):
        less_match(f, h, "min")


def test_warmup_indices():
    a = warmup_indices(100, 0.05, seed=1)
    assert len(a) == 8 and (np.diff(a) > 0).all() and a.max() < 100  # at least MIN_WARMUP
    assert len(warmup_indices(1000, 0.05)) == 50 and len(warmup_indices(5, 0.05)) == 5
    assert (warmup_indices(100, 0.05, seed=1) == a).all()
    assert (warmup_indices(100, 0.05, seed=2) != a).any()
    with pytest.raises(OptionError, match="warmup"):
        warmup_indices(10, 0.0)


KW = dict(warmup_epochs=2, dim=256, token_budget=512)


@pytest.fixture(scope="module")
def sets():
    others = pool(20)
    target = [rec(100, "Translate seven into digits:", "7"),
              rec(101, "Name the opposite of hot:", "cold.")]
    return others, target


def test_end_to_end_scores_caching_and_resume(tiny_lm, sets, tmp_path, monkeypatch):
    others, target = sets
    records = others[:9] + [target[0]] + others[9:]  # record 9 duplicates the target
    rend = Renderer(tiny_lm.tokenizer, turn_format(tiny_lm.tokenizer), max_length=256)
    before = tiny_lm.model(input_ids=torch.tensor([rend.sequence(records[0])[0]])).logits
    calls = {"warm": 0, "batch": 0}
    real_ft, real_batch = tunesift.finetune.finetune, LoraGradients.batch

    def counting_ft(*a, **k):
        calls["warm"] += 1
        return real_ft(*a, **k)

    def counting_batch(self, seqs):
        calls["batch"] += len(seqs)
        return real_batch(self, seqs)

    monkeypatch.setattr(tunesift.finetune, "finetune", counting_ft)
    monkeypatch.setattr(LoraGradients, "batch", counting_batch)
    seen = []
    prog = lambda label, total: (seen.append((label, total)), lambda n: None)[1]  # noqa: E731
    cols = less_scores(tiny_lm, records, target[:1], match="max", cache_dir=tmp_path,
                       renderer=rend, progress=prog, **KW)
    assert calls == {"warm": 1, "batch": len(records) + 1}
    assert seen == [("LESS gradients", len(records) + 1), ("LESS warm-up", 8 * 2)]
    s = cols["less"]
    assert s.shape == (len(records),) and np.isfinite(s).all() and np.abs(s).max() <= 1 + 1e-6
    assert int(np.argmax(s)) == 9  # the pool's copy of the target matches it best
    assert cols["less_warmup"].sum() == 8 and np.isfinite(cols["less_grad_norm"]).all()
    assert (cols["less_grad_norm"] > 0).all()
    # the caller's model is untouched (no LoRA layers, same logits)
    assert not any("lora" in n for n, _ in tiny_lm.model.named_modules())
    after = tiny_lm.model(input_ids=torch.tensor([rend.sequence(records[0])[0]])).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    # a rerun recomputes nothing: no warm-up, no gradient
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(tunesift.finetune, "finetune", boom)
    monkeypatch.setattr(LoraGradients, "batch", boom)
    again = less_scores(tiny_lm, records, target[:1], match="max", cache_dir=tmp_path,
                        renderer=rend, **KW)
    for k in cols:
        np.testing.assert_array_equal(again[k], cols[k])

    # a killed run: one pool block lost -> only that block is recomputed, the warm-up is read back
    blocks = sorted(p for p in (tmp_path / "less").glob("*/*.npy")
                    if p.stem not in ("lora", "exp_avg", "exp_avg_sq"))
    assert len(blocks) == 2  # one pool block (BLOCK = 64), one target block
    sizes = {p: np.load(p).shape[0] for p in blocks}
    lost = next(p for p in blocks if sizes[p] == len(records))
    lost.unlink()
    calls["batch"] = 0
    monkeypatch.setattr(LoraGradients, "batch", counting_batch)
    resumed = less_scores(tiny_lm, records, target[:1], match="max", cache_dir=tmp_path,
                          renderer=rend, **KW)
    assert calls["batch"] == len(records)
    for k in cols:  # batched differently than the first time (the target shared its pass)
        np.testing.assert_allclose(resumed[k], cols[k], rtol=1e-5, atol=1e-6)


def test_deterministic_and_mean_match(tiny_plain_lm, sets, tmp_path):
    others, target = sets
    records = others[:6] + target + others[6:]  # records 6 and 7 copy the two targets
    a = less_scores(tiny_plain_lm, records, target, cache_dir=tmp_path / "a", **KW)
    b = less_scores(tiny_plain_lm, records, target, cache_dir=tmp_path / "b", **KW)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert np.isfinite(a["less"]).all()
    assert set(np.argsort(-a["less"])[:2]) == {6, 7}  # the copies of the targets match best
    c = less_scores(tiny_plain_lm, records, target, cache_dir=tmp_path / "a", seed=1, **KW)
    assert not np.array_equal(a["less"], c["less"])  # the seed draws another warm-up


def test_options(tiny_lm, sets, tmp_path):
    others, target = sets
    with pytest.raises(OptionError, match="needs a target set"):
        less_scores(tiny_lm, others, None, cache_dir=tmp_path)
    with pytest.raises(OptionError, match="needs a target set"):
        less_scores(tiny_lm, others, [], cache_dir=tmp_path)
    for kw, msg in [({"match": "min"}, "match"), ({"dim": 12}, "multiple of 8"),
                    ({"warmup": 1.5}, "warmup"), ({"warmup_epochs": 0}, "epochs"),
                    ({"train": warmup_config(mode="full")}, "LoRA"), ({"seed": -1}, "seed")]:
        with pytest.raises(OptionError, match=msg):
            less_scores(tiny_lm, others, target, cache_dir=tmp_path, **kw)
    assert not (tmp_path / "less").exists()  # options are checked before any work


def test_less_renders_with_the_paper_template_without_a_renderer(tiny_lm, sets, tmp_path):
    """less_scores builds its renderer with renderer_for, so ``train.template = "paper"`` works
    (a bare turn format would refuse it) and equals passing that renderer explicitly."""
    from tunesift.render import renderer_for

    others, target = sets
    cfg = warmup_config(1, template="paper", max_length=256)
    got = less_scores(tiny_lm, others[:6], target[:2], train=cfg, cache_dir=False)
    want = less_scores(tiny_lm, others[:6], target[:2], train=cfg, cache_dir=False,
                       renderer=renderer_for(tiny_lm, "paper", 256))
    np.testing.assert_allclose(got["less"], want["less"], rtol=1e-6, atol=1e-9)


def test_a_target_feature_that_overflowed_stops_the_run_and_is_never_cached(tiny_lm, sets, tmp_path, monkeypatch):
    """One NaN target feature made every pool score NaN under the mean match: input order, cached."""
    import tunesift.scoring.less as less_mod
    from tunesift.errors import TunesiftError

    others, target = sets
    real = less_mod.RademacherProjection.__call__

    def nan_last_row(self, *a, **k):  # the pass's last row is a target's: pool rows come first
        out = real(self, *a, **k)
        out[-1] = float("nan")
        return out

    monkeypatch.setattr(less_mod.RademacherProjection, "__call__", nan_last_row)
    with pytest.raises(TunesiftError, match=r"less \(target\): record \S+ \(line \d+\) scored NaN or infinity"):
        less_scores(tiny_lm, others[:6], target, cache_dir=tmp_path, **KW)
    monkeypatch.setattr(less_mod.RademacherProjection, "__call__", real)
    got = less_scores(tiny_lm, others[:6], target, cache_dir=tmp_path, **KW)  # not cached: computed again
    assert np.isfinite(got["less"]).all()
