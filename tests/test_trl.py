"""A selection trains as it is: TRL's SFTTrainer runs a few steps on selected.jsonl (docs/trainers.md).

Needs the optional extra ``train`` (``pip install -e ".[train]"``, trl); skipped without it.
"""

from __future__ import annotations

import json
import math

import pytest

from tunesift.cli import main

trl = pytest.importorskip("trl")

ROWS = [
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": f"What is {i} + {i}?"},
                  {"role": "assistant", "content": f"The answer is {2 * i}."}]}
    for i in range(16)
]


def test_sft_trainer_trains_a_few_steps_on_a_selection(tmp_path, tiny_dir):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    out = tmp_path / "sel"
    assert main(["select", str(data), "--method", "random", "--budget", "8", "--out", str(out), "-q"]) == 0

    ds = load_dataset("json", data_files=str(out / "selected.jsonl"), split="train",
                      cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == 8 and ds.column_names == ["messages"]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        max_length=128, dataloader_num_workers=0, seed=0,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()

    assert trainer.state.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses), losses
    assert math.isfinite(result.training_loss)
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight.detach())  # it learned
