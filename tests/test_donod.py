"""DONOD closed form against a brute-force autograd reference, and TOPSIS by hand."""

from types import SimpleNamespace

import numpy as np
import pytest
import tiny
import torch

from tunesift.errors import OptionError, TunesiftError
from tunesift.render import Renderer, turn_format
from tunesift.scoring.donod import (
    DonodParams,
    autograd_don_nod,
    check_output_transform,
    don_nod,
    don_nod_from_stats,
    gradient_stats,
    lm_head_norm_sq,
    plan_batches,
)
from tunesift.selection.topsis import rank_desc, topsis

PAIRS = [("What is 2 + 2?", "The answer is 4."), ("The capital of France?", "Paris."),
         ("Sort 5, 3, 9.", "3, 5, 9 and some more words to make it longer"),
         ("Convert hello world to upper case", "HELLO WORLD"), ("café?", "naïve résumé 🙂")]


def sequences(lm):
    r = Renderer(lm.tokenizer, turn_format(lm.tokenizer))
    return [r.sequence(SimpleNamespace(id=str(i), line=i, prompt=p, response=a, context=()))
            for i, (p, a) in enumerate(PAIRS)]


def closed_and_reference(lm, params, seqs):
    stats = gradient_stats(lm.model, seqs, pad_id=lm.tokenizer.pad_token_id, token_budget=64)
    ours = don_nod_from_stats(stats, lm_head_norm_sq(lm.model), params)
    ref = np.array([autograd_don_nod(lm.model, ids, mask, params) for ids, mask in seqs])
    return ours, ref


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_plain_lm"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "sqrt"])
@pytest.mark.parametrize("eta", [1e-3, 1.0])
def test_closed_form_matches_autograd(which, reduction, eta, request):
    lm = request.getfixturevalue(which)
    ours, ref = closed_and_reference(lm, DonodParams(eta, reduction), sequences(lm))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=0)
    assert np.all(ref[:, 1] > 0)


def test_softcapped_logits_match_autograd():
    tok = tiny.make_tokenizer()
    model = tiny.make_model(len(tok), seed=3)
    model.config.final_logit_softcapping = 2.0  # DON/NOD must follow the capped softmax's chain rule
    model._tunesift_head_checked = True  # Llama's forward does not cap: the reference applies the cap itself
    lm = SimpleNamespace(model=model, tokenizer=tok)
    ours, ref = closed_and_reference(lm, DonodParams(0.5, "mean"), sequences(lm))
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    model.config.final_logit_softcapping = None
    plain, _ = closed_and_reference(lm, DonodParams(0.5, "mean"), sequences(lm))
    assert np.abs(plain - ours).max() > 1e-3  # the cap really changes the numbers


def test_batching_does_not_change_scores(tiny_lm):
    seqs = sequences(tiny_lm)
    one = gradient_stats(tiny_lm.model, seqs, pad_id=tiny_lm.tokenizer.pad_token_id, token_budget=1)
    big = gradient_stats(tiny_lm.model, seqs, pad_id=tiny_lm.tokenizer.pad_token_id, token_budget=10_000)
    np.testing.assert_allclose(one, big, rtol=1e-5)
    assert [int(t) for t in one[:, 2]] == [sum(m) for _, m in seqs]


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 50, 7, 3, 40, 41, 8]
    batches = plan_batches(lengths, token_budget=90)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 90 or len(b) == 1


@pytest.mark.parametrize("reduction", ["sqrt", "mean"])  # the default and the paper's SFT reading
def test_wrong_answer_gets_lower_don_and_higher_nod(tiny_lm, reduction):
    """After a few steps of fitting "x -> y" pairs, a mismatched answer looks noisy: low DON, high NOD."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_lm.model.config)
    model.load_state_dict(tiny_lm.model.state_dict())
    r = Renderer(tiny_lm.tokenizer, turn_format(tiny_lm.tokenizer))
    good = [r.sequence(SimpleNamespace(id="g", line=1, prompt=p, response=a, context=())) for p, a in PAIRS[:4]]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        for ids, mask in good:
            labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    bad = r.sequence(SimpleNamespace(id="b", line=2, prompt=PAIRS[0][0], response=PAIRS[3][1], context=()))
    stats = gradient_stats(model, good + [bad], pad_id=tiny_lm.tokenizer.pad_token_id)
    dn = don_nod_from_stats(stats, lm_head_norm_sq(model), DonodParams(reduction=reduction))
    assert dn[-1, 0] < dn[:-1, 0].min() and dn[-1, 1] > dn[:-1, 1].max()
    assert topsis(dn, (0.5, 0.5), [True, False]).argmin() == len(good)


def test_defaults_are_the_noise_bench_choice_everywhere():
    """eta 1e-3 with sqrt reduction and TOPSIS 0.5/0.5 (docs/results.md, noise benchmark): the
    library, the pipeline's Options and the CLI must agree, or `select()` and `tunesift select`
    would rank differently."""
    import inspect

    from tunesift import cli
    from tunesift.pipeline import Options

    p = DonodParams()
    assert (p.eta, p.reduction) == (1e-3, "sqrt")
    o = Options()
    assert (o.eta, o.reduction, tuple(o.weights)) == (p.eta, p.reduction, (0.5, 0.5))
    sig = inspect.signature(cli.select).parameters
    assert (sig["eta"].default.default, sig["reduction"].default.default, sig["weights"].default.default) \
        == (p.eta, p.reduction, "0.5,0.5")


def test_weights_1_0_rank_as_don_alone(tiny_lm):
    """`--weights 1,0 --reduction sum` is documented as "DON alone, sum" (the bench's strongest
    variant): TOPSIS with a zero NOD weight must order records exactly by DON, highest first."""
    stats = gradient_stats(tiny_lm.model, sequences(tiny_lm), pad_id=tiny_lm.tokenizer.pad_token_id)
    dn = don_nod_from_stats(stats, lm_head_norm_sq(tiny_lm.model), DonodParams(1e-3, "sum"))
    assert len(set(np.round(dn[:, 0], 15))) == len(dn)  # distinct DON values, so the order is defined
    c = topsis(dn, (1.0, 0.0), [True, False])
    assert list(np.argsort(-c, kind="stable")) == list(np.argsort(-dn[:, 0], kind="stable"))


def test_params_validation():
    with pytest.raises(OptionError, match="eta"):
        DonodParams(eta=0)
    with pytest.raises(OptionError, match="reduction"):
        DonodParams(reduction="max")


def test_topsis_hand_computed():
    # Columns normalise by sqrt(14); v = 0.5 x / sqrt(14). For row (2, 1):
    # d+ = |v_DON - max| = 0.5/sqrt(14) * 1 ; d- = 0.5/sqrt(14) * sqrt(1 + 4); C = sqrt5 / (1 + sqrt5)
    x = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    c = topsis(x, (0.5, 0.5), [True, False])
    np.testing.assert_allclose(c, [1 / (1 + np.sqrt(5)), np.sqrt(5) / (1 + np.sqrt(5)), 0.5])
    assert list(rank_desc(c)) == [3, 1, 2]


def test_topsis_keeps_a_criterion_of_extreme_magnitude():
    """Squares of 1e-170 underflow to 0 and of 1e170 overflow: the column used to drop out."""
    x = np.array([[1.0, 1.0], [3.0, 2.0], [2.0, 3.0]])
    want = topsis(x, (0.5, 0.5), [True, False])
    for scale in (1e-170, 1e170):
        np.testing.assert_allclose(topsis(x * [scale, 1.0], (0.5, 0.5), [True, False]), want, rtol=1e-12)


def test_topsis_weights_and_nan():
    x = np.array([[1.0, 1.0], [2.0, 5.0], [np.nan, 1.0], [3.0, 9.0]])
    only_don = topsis(x, (1.0, 0.0), [True, False])
    assert np.isnan(only_don[2]) and only_don[3] == 1.0 and only_don[0] == 0.0
    only_nod = topsis(x, (0.0, 1.0), [True, False])
    assert only_nod[0] == 1.0 and only_nod[3] == 0.0
    assert rank_desc(only_don)[2] == 4  # NaN ranks last
    with pytest.raises(OptionError):
        topsis(x, (-1.0, 1.0), [True, False])
    with pytest.raises(OptionError):
        topsis(x, (0.5,), [True, False])


def test_topsis_degenerate_column():
    c = topsis(np.array([[1.0, 0.0], [1.0, 0.0]]), (0.5, 0.5), [True, False])
    np.testing.assert_allclose(c, [0.5, 0.5])


@pytest.mark.slow
def test_closed_form_matches_autograd_on_default_model(default_lm):
    seqs = sequences(default_lm)[:3]
    ours, ref = closed_and_reference(default_lm, DonodParams(1e-3, "mean"), seqs)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


@pytest.mark.parametrize("kind", ["granite", "cohere_like"])
def test_scaled_logits_match_the_models_own_gradient(kind):
    """Models that scale logits (Granite: / logits_scaling, Cohere: * logit_scale): the closed form
    must follow the model's real output, checked against autograd through model(...).logits."""
    from transformers import GraniteConfig, GraniteForCausalLM

    tok = tiny.make_tokenizer()
    torch.manual_seed(4)
    cfg = GraniteConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                        logits_scaling=8.0 if kind == "granite" else 1.0)
    model = GraniteForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    if kind == "cohere_like":  # Granite's forward divides by logits_scaling; emulate a multiplier
        model.config.logits_scaling = 0.25
    lm = SimpleNamespace(model=model, tokenizer=tok)
    params = DonodParams(0.5, "mean")
    seqs = sequences(lm)
    stats = gradient_stats(model, seqs, pad_id=tok.pad_token_id)
    ours = don_nod_from_stats(stats, lm_head_norm_sq(model), params)
    truth = []
    for ids, mask in seqs:
        x = torch.tensor([ids])
        pos = torch.tensor([t for t in range(1, len(ids)) if mask[t]])
        logits = model(input_ids=x).logits[0, pos - 1]
        loss = torch.nn.functional.cross_entropy(logits.double(), x[0, pos])
        (g,) = torch.autograd.grad(loss, model.lm_head.weight)
        w = model.lm_head.weight.detach().double()
        w_new = w - params.eta * g.double()
        truth.append((float(((w_new - w) * (w_new + w)).sum() / (w_new.norm() + w.norm())),
                      float((w_new - w).norm())))
    np.testing.assert_allclose(ours, np.array(truth), rtol=1e-4)


def test_vocabulary_chunking_gives_the_same_terms(tiny_lm):
    """Large vocabularies are processed in chunks (two passes); the terms must not change."""
    from tunesift.scoring.donod import gradient_terms

    torch.manual_seed(0)
    h = torch.randn(7, 64)
    w = tiny_lm.model.get_output_embeddings().weight.detach()
    y = torch.randint(0, w.shape[0], (7,))
    whole = gradient_terms(h, w, y)
    for kw in (dict(chunk=64), dict(chunk=50, max_elems=0), dict(chunk=399, max_elems=0)):
        np.testing.assert_allclose(gradient_terms(h, w, y, **kw), whole, rtol=1e-10)
    capped = gradient_terms(h, w, y, softcap=3.0, scale=0.5)
    np.testing.assert_allclose(gradient_terms(h, w, y, softcap=3.0, scale=0.5, chunk=37, max_elems=0), capped,
                               rtol=1e-10)


def test_sqrt_reduction_is_the_geometric_mean_of_mean_and_sum(tiny_lm):
    """c = 1/sqrt(T) sits between mean (1/T) and sum (1): NOD_sqrt^2 = NOD_mean * NOD_sum exactly, and
    to first order in eta DON scales the same way (DON_sqrt^2 ~ DON_mean * DON_sum)."""
    stats = gradient_stats(tiny_lm.model, sequences(tiny_lm), pad_id=tiny_lm.tokenizer.pad_token_id, token_budget=64)
    w_sq = lm_head_norm_sq(tiny_lm.model)
    got = {r: don_nod_from_stats(stats, w_sq, DonodParams(1e-6, r)) for r in ("mean", "sum", "sqrt")}
    t = stats[:, 2]
    assert len(set(t)) > 1  # records of different lengths, so the three really differ
    np.testing.assert_allclose(got["sqrt"][:, 1] ** 2, got["mean"][:, 1] * got["sum"][:, 1], rtol=1e-12)
    np.testing.assert_allclose(got["sqrt"][:, 1], got["mean"][:, 1] * np.sqrt(t), rtol=1e-12)
    np.testing.assert_allclose(got["sqrt"][:, 0], got["mean"][:, 0] * np.sqrt(t), rtol=1e-4)
    with pytest.raises(OptionError):
        DonodParams(1e-3, "max")


def test_the_float64_head_copy_is_released_and_follows_in_place_changes(tiny_dir, tmp_path):
    import tunesift
    import tunesift.scoring.donod as donod
    from tunesift.models import load_lm

    lm = load_lm(str(tiny_dir), device="cpu", dtype="float32")
    rows = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(4)]
    tunesift.select(rows, method="donod", budget=2, lm=lm, cache_dir=str(tmp_path / "c"))
    assert donod._W64 == {}  # not held past the run (it pinned the head: 226 MB on SmolLM2)
    head = lm.model.get_output_embeddings()
    first = donod._float64_weight(head)
    assert donod._float64_weight(head) is first  # reused across batches
    with torch.no_grad():
        head.weight.mul_(2.0)  # changed in place: same tensor object
    again = donod._float64_weight(head)
    torch.testing.assert_close(again, 2.0 * first)
    donod.release_head_copy()
    w = head.weight.detach().double()
    assert lm_head_norm_sq(lm.model, chunk=7) == pytest.approx(float((w ** 2).sum()), rel=1e-12)


def test_a_model_that_transforms_its_logits_another_way_is_refused(tiny_lm):
    """Only soft-capping and Cohere/Granite scaling were read from the config: a model that scales
    its logits another way (FalconH1's lm_head_multiplier) got DON and NOD of the wrong softmax,
    silently. The model's own logits are now compared with the closed form's, once per model."""
    import copy

    model = copy.deepcopy(tiny_lm.model)
    model._tunesift_head_checked = False  # the shared fixture may have been checked by an earlier test
    seqs = sequences(tiny_lm)
    gradient_stats(model, seqs[:2], pad_id=tiny_lm.tokenizer.pad_token_id)  # the plain head passes
    assert model._tunesift_head_checked
    odd = copy.deepcopy(model)
    odd._tunesift_head_checked = False
    real = odd.forward

    def multiplied(*a, **k):  # as FalconH1: logits = lm_head(h) * lm_head_multiplier
        out = real(*a, **k)
        out.logits = out.logits * 0.25
        return out

    odd.forward = multiplied
    with pytest.raises(OptionError, match="logits are not the LM head's output"):
        gradient_stats(odd, seqs[:2], pad_id=tiny_lm.tokenizer.pad_token_id)
    with pytest.raises(TunesiftError, match="at least one scored response token"):
        don_nod(0.0, 0.0, 0, 1.0, DonodParams(1e-3, "sqrt"))


def test_the_check_follows_a_real_soft_cap_and_catches_a_claimed_one(tiny_lm):
    import copy

    seqs = sequences(tiny_lm)
    capped = copy.deepcopy(tiny_lm.model)
    capped._tunesift_head_checked = False
    capped.config.final_logit_softcapping = 2.0
    real = capped.forward

    def soft_capped(*a, **k):  # as Gemma 2: logits = c tanh(z / c)
        out = real(*a, **k)
        out.logits = 2.0 * torch.tanh(out.logits / 2.0)
        return out

    capped.forward = soft_capped
    check_output_transform(capped, *seqs[0])  # the closed form's transform: accepted
    claimed = copy.deepcopy(tiny_lm.model)
    claimed._tunesift_head_checked = False
    claimed.config.final_logit_softcapping = 2.0  # the config says so, the forward does not cap
    with pytest.raises(OptionError, match="logits are not the LM head's output"):
        check_output_transform(claimed, *seqs[0])
