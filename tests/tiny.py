"""Tiny randomly initialised models and tokenizers for exact-numerics tests (no network, seconds)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "What is 2 + 2? The answer is 4.", "The capital of France is Paris.",
    "Write a short poem about the sea.", "Convert hello world to upper case: HELLO WORLD",
    "Sort the numbers 5, 3, 9: 3, 5, 9.", "Is this review positive or negative? I loved it.",
    "Translate seven into digits: 7", "Name the opposite of hot: cold.", "café naïve résumé 東京 🙂",
    "  leading spaces, trailing spaces   ", "numbers 1234567890 and symbols !@#$%^&*()",
] * 20


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                  pad_token="<|endoftext|>", bos_token="<|im_start|>" if chat else None)
    if chat:
        tok.chat_template = CHATML
    return tok


def make_model(vocab_size: int, *, tied: bool = True, seed: int = 0, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=tied, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    # Larger-than-default init so probabilities are far from uniform and numerics are exercised.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def save_tiny(folder: Path, *, chat: bool = True, tied: bool = True, seed: int = 0, layers: int = 2,
              hidden: int = 64) -> Path:
    """Write a tiny model + tokenizer folder that ``--model FOLDER`` loads."""
    tok = make_tokenizer(chat)
    model = make_model(len(tok), tied=tied, seed=seed, layers=layers, hidden=hidden)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def rec(i: int, prompt: str, response: str, context=()) -> SimpleNamespace:
    """A minimal record (the attributes the renderer and scorers read)."""
    return SimpleNamespace(id=f"r{i}", prompt=prompt, response=response, context=tuple(context), line=i + 1)


def assert_close_across_runs(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Floats computed apart (other thread counts, processes, devices, batch shapes) agree to a
    float32 tolerance, never bit for bit: MKL/oneDNN pick kernels by CPU (AVX-512/AMX or not),
    thread count and shape, and reorder sums, so the last 2-3 digits move (7.76262269 vs
    7.76262256 between a 1-thread Ray worker and a 2-thread driver on an AMD EPYC)."""
    import numpy as np

    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)
