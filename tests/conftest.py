import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the default score cache in a folder of this run, not ~/.cache (a read-only or shared home)
os.environ.setdefault("TUNESIFT_CACHE", __import__("tempfile").mkdtemp(prefix="tunesift-test-scores-"))

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny ChatML Llama (tied embeddings) saved as a model folder."""
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-chat"), chat=True, tied=True)


@pytest.fixture(scope="session")
def tiny_plain_dir(tmp_path_factory) -> Path:
    """A tiny Llama without a chat template and with an untied LM head."""
    return tiny.save_tiny(tmp_path_factory.mktemp("tiny-plain"), chat=False, tied=False, seed=1)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from tunesift.models import load_lm

    return load_lm(str(tiny_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_plain_lm(tiny_plain_dir):
    from tunesift.models import load_lm

    return load_lm(str(tiny_plain_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_gemma():
    """A tiny Gemma 3 with logit soft-capping and an 8-token sliding window (shorter than prefixes)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tunesift.models import LoadedModel

    tok = tiny.make_tokenizer(True)
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=8,
        final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention"],
        attn_implementation="sdpa",
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return LoadedModel(model, tok, "tiny-gemma", "tiny-gemma", "tiny-gemma", "cpu", "float32")


@pytest.fixture(scope="session")
def default_lm():
    """The real default model (SmolLM2-135M-Instruct), converted once into the cache."""
    from tunesift.models import load_lm

    return load_lm("default", device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def _tunesift_logger_as_it_was():
    """A CLI run installs a handler on the ``tunesift`` logger (and a test may set propagate):
    restored after each test, so no test's output depends on which ran before it."""
    import logging

    log = logging.getLogger("tunesift")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """No test may leave a stop signal (``tunesift.signals.STOPS``: SIGINT, SIGTERM) with another
    handler than it found (a leak made the folder-swap interrupt tests depend on test order): a
    leak is restored and fails its test."""
    import signal

    from tunesift.signals import STOPS as stops

    before = {s: signal.getsignal(s) for s in stops}
    yield
    after = {s: signal.getsignal(s) for s in stops}
    leaked = [s for s in stops if after[s] != before[s]]
    for s in leaked:
        signal.signal(s, before[s] if before[s] is not None else signal.SIG_DFL)
    assert not leaked, f"the test left {', '.join(signal.Signals(s).name for s in leaked)} with " \
                       f"{[after[s] for s in leaked]} instead of {[before[s] for s in leaked]}"
