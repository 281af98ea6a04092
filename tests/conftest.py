import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
def default_lm():
    """The real default model (SmolLM2-135M-Instruct), converted once into the cache."""
    from tunesift.models import load_lm

    return load_lm("default", device="cpu", dtype="float32")
