"""Fine-tuning: response-only loss (exact against a plain reference), determinism, LoRA vs full,
save/load round trip, option checks."""

import logging

import numpy as np
import pytest
import torch

from tunesift.errors import OptionError, TunesiftError
from tunesift.finetune import (
    TrainConfig,
    finetune,
    length_grouped_batches,
    load_trained,
    merged,
    response_loss_sum,
    save,
)
from tunesift.io.records import records_from_rows
from tunesift.models import load_lm
from tunesift.render import Renderer, turn_format
from tunesift.scoring.logprobs import ResponseScorer
from tunesift.scoring.nll import response_nll

ROWS = [{"instruction": f"What is {i} plus {i}?", "output": f"The answer is {2 * i}."} for i in range(20)]


@pytest.fixture()
def fresh(tiny_dir):
    """A freshly loaded tiny model (fine-tuning changes the model in place)."""
    return load_lm(str(tiny_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def records():
    return records_from_rows(ROWS)


def renderer_of(lm):
    return Renderer(lm.tokenizer, turn_format(lm.tokenizer), max_length=256)


def test_length_grouped_batches_partition_the_records():
    lengths = list(np.random.default_rng(0).integers(5, 50, size=37))
    a = length_grouped_batches(lengths, 4, np.random.default_rng(3))
    b = length_grouped_batches(lengths, 4, np.random.default_rng(3))
    assert a == b
    flat = [i for batch in a for i in batch]
    assert sorted(flat) == list(range(37)) and all(1 <= len(x) <= 4 for x in a)
    assert a != length_grouped_batches(lengths, 4, np.random.default_rng(4))


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_plain_lm"])
def test_response_loss_matches_plain_cross_entropy(which, request, records):
    lm = request.getfixturevalue(which)
    rend = renderer_of(lm)
    seqs = [rend.sequence(r) for r in records[:5]]
    loss, n = response_loss_sum(ResponseScorer(lm), lm.model, seqs, lm.tokenizer.pad_token_id)
    ref, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in seqs:
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
            for t in range(1, len(ids)):
                if mask[t]:  # only response tokens; prompt and header never count
                    ref -= float(torch.log_softmax(logits[t - 1], -1)[ids[t]])
                    count += 1
    assert n == count == sum(sum(m) for _, m in seqs)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)


def test_lora_training_lowers_response_loss_and_is_seeded(tiny_dir, records):
    lms = [load_lm(str(tiny_dir), device="cpu", dtype="float32") for _ in range(3)]
    rend = renderer_of(lms[0])
    before, n_tok = response_nll(lms[0], rend, records)
    base_w = lms[0].model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=4, seed=7)
    runs = [finetune(lm, records, TrainConfig(**{**cfg.__dict__, "seed": s})) for lm, s in zip(lms, (7, 7, 8))]
    assert runs[0].losses == runs[1].losses  # same seed: identical run
    assert runs[0].losses != runs[2].losses
    assert runs[0].steps == 15 and len(runs[0].losses) == 15
    assert runs[0].tokens == 3 * int(n_tok.sum())
    # LoRA trains adapters only: the base weight under the adapter is untouched
    inner = runs[0].model.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(inner.base_layer.weight, base_w)
    trained = merged(lms[0], runs[0])
    after, _ = response_nll(trained, rend, records)
    assert after.sum() < 0.7 * before.sum()
    assert trained.fingerprint != lms[0].fingerprint


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_micro_batches_and_checkpointing_leave_the_training_unchanged(tiny_dir, records, mode, monkeypatch):
    """Memory bounds (token-budget micro-batches with accumulated gradients, recomputed layers,
    chunked head) must not change what is learned: same losses and weights as one plain batch,
    up to float summation order."""

    def run(**kw):
        lm = load_lm(str(tiny_dir), device="cpu", dtype="float32")
        cfg = TrainConfig(**{"mode": mode, "epochs": 2, "lr": 3e-3, "batch_size": 8, "seed": 3, "lora_dropout": 0.0,
                             **kw})
        res = finetune(lm, records, cfg)
        return res.losses, [p.detach().clone() for p in res.model.parameters()]

    plain_losses, plain_w = run(token_budget=1 << 20, checkpointing=False)
    # checkpointing alone is the same computation, recomputed (dropout's RNG replayed): bit for bit,
    # which lets a bench resume with it switched (bench._config_key)
    on = run(token_budget=1 << 20, checkpointing=True, lora_dropout=0.1)
    off = run(token_budget=1 << 20, checkpointing=False, lora_dropout=0.1)
    assert on[0] == off[0] and all(torch.equal(a, b) for a, b in zip(on[1], off[1]))
    lean_losses, lean_w = run(token_budget=32, checkpointing=True)  # a micro-batch per record or two
    np.testing.assert_allclose(lean_losses, plain_losses, rtol=1e-4)  # training magnifies rounding
    for a, b in zip(lean_w, plain_w):  # per tensor: Adam's first step is lr * sign(g), so a
        # gradient element near 0 may flip sign with rounding and move one weight by lr
        assert float((a - b).norm() / b.norm().clamp_min(1e-12)) < 1e-3
    assert len(lean_losses) == 6
    import tunesift.finetune as ft

    monkeypatch.setattr(ft, "HEAD_CHUNK", 5)  # many head chunks per micro-batch, each recomputed in backward
    chunked_losses, chunked_w = run(token_budget=1 << 20, checkpointing=True)
    np.testing.assert_allclose(chunked_losses, plain_losses, rtol=1e-4)
    for a, b in zip(chunked_w, plain_w):
        assert float((a - b).norm() / b.norm().clamp_min(1e-12)) < 1e-3


def test_micro_batch_count_follows_the_token_budget(monkeypatch, fresh, records):
    import tunesift.finetune as ft

    calls = []
    real = ft.response_loss_sum
    monkeypatch.setattr(ft, "response_loss_sum", lambda sc, m, seqs, pad: calls.append(len(seqs)) or real(sc, m, seqs, pad))
    finetune(fresh, records[:8], TrainConfig(epochs=1, batch_size=8, token_budget=1 << 20))
    assert calls == [8]  # one micro-batch holds the whole batch
    calls.clear()
    again = load_lm(fresh.path, device="cpu", dtype="float32")  # fresh carries the first run's adapters
    width = max(len(s) for s, _ in (renderer_of(again).sequence(r) for r in records[:8]))
    finetune(again, records[:8], TrainConfig(epochs=1, batch_size=8, token_budget=2 * width))
    assert sum(calls) == 8 and max(calls) <= 2 and len(calls) >= 4


def test_heap_threshold_is_fixed_once(monkeypatch):
    import tunesift.heap as heap

    monkeypatch.setattr(heap, "_done", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert heap.bound_heap_growth() is False  # the user's own setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    import sys

    if sys.platform.startswith("linux"):
        assert heap.bound_heap_growth() is True
        assert heap.bound_heap_growth() is False  # already done


def test_kernel_caches_are_capped_unless_the_user_chose(monkeypatch):
    import os
    import subprocess
    import sys

    import tunesift.heap as heap

    for name in heap.KERNEL_CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "5")  # the user's own setting wins
    assert heap.bound_kernel_caches() == ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(heap.KERNEL_CACHE)
    assert os.environ["LRU_CACHE_CAPACITY"] == "5"
    assert heap.bound_kernel_caches() == []  # nothing left to set
    # importing the model loader sets both, in a fresh process (before any model runs)
    env = {k: v for k, v in os.environ.items() if k not in heap.KERNEL_CACHE_VARS}
    out = subprocess.run([sys.executable, "-c", "import os, tunesift.models; print(os.environ["
                          "'ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(heap.KERNEL_CACHE)] * 2


def test_full_finetuning_changes_every_weight(fresh, records):
    before = {name: p.detach().clone() for name, p in fresh.model.named_parameters()}
    res = finetune(fresh, records[:8], TrainConfig(mode="full", epochs=1, lr=1e-3, batch_size=4))
    after = dict(res.model.named_parameters())
    assert after.keys() == before.keys()
    unchanged = [name for name, w in before.items() if torch.equal(after[name].detach().to(w.dtype), w)]
    assert unchanged == []  # every matrix and norm, the (tied) embeddings too
    assert all(not p.requires_grad for p in res.model.parameters())  # left frozen for scoring


def test_bfloat16_weights_train_and_merge_in_float32(tiny_dir, records, tmp_path):
    """On bfloat16 weights (the GPU default) AdamW dropped most full fine-tuning updates, and a LoRA
    update added to bf16 weights was mostly rounded away: full mode trains float32 master weights
    and LoRA merges in float32, whichever dtype the model was loaded in."""
    full = load_lm(str(tiny_dir), device="cpu", dtype="bfloat16")
    w0 = full.model.model.layers[1].mlp.down_proj.weight.detach().float().clone()
    res = finetune(full, records[:8], TrainConfig(mode="full", epochs=1, lr=1e-5, batch_size=4, autocast="bfloat16"))
    w1 = res.model.model.layers[1].mlp.down_proj.weight
    assert w1.dtype == torch.float32 and full.dtype == "float32"
    assert (w1 != w0).float().mean() > 0.9  # in bf16 most of these tiny steps would not register

    def merged_weight(dtype):
        lm = load_lm(str(tiny_dir), device="cpu", dtype=dtype)
        res = finetune(lm, records[:8], TrainConfig(epochs=1, lr=3e-3, batch_size=4, seed=1))
        out = merged(lm, res)
        return out, out.model.model.layers[1].mlp.down_proj.weight

    def base_weight(dtype):
        return load_lm(str(tiny_dir), device="cpu", dtype=dtype).model.model.layers[1].mlp.down_proj.weight.float()

    _, ref = merged_weight("float32")
    lm16, got = merged_weight("bfloat16")
    assert lm16.dtype == "float32" and got.dtype == torch.float32
    # the update survives the merge (it was trained on a bf16 forward, so it is close, not equal)
    delta_ref, delta_got = ref - base_weight("float32"), got - base_weight("bfloat16")
    assert torch.nn.functional.cosine_similarity(delta_got.flatten(), delta_ref.flatten(), dim=0) > 0.9


def test_evaluation_renders_prompts_as_training_did(tmp_path, caplog):
    import json
    import logging

    from tunesift.finetune import TRAIN_META, evaluation_template

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / TRAIN_META).write_text(json.dumps({"tool": "tunesift", "config": {"template": "plain"}}))
    assert evaluation_template(folder, "auto") == "plain"
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        assert evaluation_template(folder, "chat") == "chat"
    assert "--template chat, but the model was trained with template plain" in caplog.text
    (folder / TRAIN_META).write_text(json.dumps({"config": {"template": "auto"}}))
    assert evaluation_template(folder, "auto") == "auto"
    # trained with auto: the template auto resolved to (recorded beside the config) is what counts
    (folder / TRAIN_META).write_text(json.dumps({"config": {"template": "auto"}, "template": "chat"}))
    assert evaluation_template(folder, "auto") == "chat"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        assert evaluation_template(folder, "plain") == "plain"
    assert "--template plain, but the model was trained with template chat" in caplog.text
    (folder / TRAIN_META).write_text("{")
    with pytest.raises(TunesiftError, match=f"{TRAIN_META}: cannot read"):
        evaluation_template(folder, "auto")


def test_save_and_load_round_trip(fresh, tiny_dir, records, tmp_path):
    rend = renderer_of(fresh)
    res = finetune(fresh, records, TrainConfig(epochs=1, lr=3e-3, batch_size=4))
    save(res, fresh, tmp_path / "adapter", {"note": "x"})
    expect, _ = response_nll(merged(fresh, res), rend, records)
    loaded = load_trained(tmp_path / "adapter")  # base model read from tunesift_train.json
    got, _ = response_nll(loaded, rend, records)
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert not any(p.name.startswith(".adapter") for p in tmp_path.iterdir())  # no temp folder left


def test_load_lm_takes_a_lora_adapter_folder(fresh, tiny_dir, records, tmp_path, monkeypatch):
    """load_lm (so select, score, kernel and evaluate's --model) loads the folder finetune wrote
    with LoRA merged into its base, as load_trained does; a run that trains on from it records the
    folder as its base, so the stacked adapter loads too."""
    import json

    from tunesift.models import (
        TRAIN_META,
        adapter_chain,
        check_model,
        load_adapter,
        load_tokenizer,
        source_fingerprint,
        train_meta,
    )

    rend = renderer_of(fresh)
    res = finetune(fresh, records, TrainConfig(epochs=1, lr=3e-3, batch_size=4))
    save(res, fresh, tmp_path / "a")
    expect, _ = response_nll(merged(fresh, res), rend, records)
    monkeypatch.chdir(tmp_path)
    lm = load_lm("a", device="cpu")  # a relative path: recorded absolute, so a stacked run loads from anywhere
    got, _ = response_nll(lm, rend, records)
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert lm.source == lm.path == str((tmp_path / "a").resolve()) and lm.dtype == "float32"
    assert lm.fingerprint == load_trained(tmp_path / "a").fingerprint == source_fingerprint(str(tmp_path / "a"))
    assert lm.fingerprint[:8] == fresh.fingerprint[:8]  # the base's, then the adapter's weights
    half = load_lm(str(tmp_path / "a"), device="cpu", dtype="bfloat16")
    assert half.dtype == "bfloat16" and next(half.model.parameters()).dtype == torch.bfloat16
    check_model(str(tmp_path / "a"))
    assert load_tokenizer(str(tmp_path / "a")).get_vocab() == fresh.tokenizer.get_vocab()
    # a second LoRA run on the merged model: its base is the first folder
    res2 = finetune(lm, records[:8], TrainConfig(epochs=1, lr=3e-3, batch_size=4, seed=1))
    save(res2, lm, tmp_path / "b")
    assert train_meta(tmp_path / "b")["base_model"] == str((tmp_path / "a").resolve())
    expect2, _ = response_nll(merged(lm, res2), rend, records)
    monkeypatch.chdir(tiny_dir)
    stacked = load_lm(str(tmp_path / "b"), device="cpu")
    got2, _ = response_nll(stacked, rend, records)
    np.testing.assert_allclose(got2, expect2, rtol=1e-5)
    assert np.abs(got2 - got).max() > 1e-4  # the second adapter changed the model
    assert adapter_chain(str(tmp_path / "b")) == [(tmp_path / "b").resolve(), (tmp_path / "a").resolve()]
    assert adapter_chain(str(tiny_dir)) == []
    # the same adapter weights on another base: another model, so another score-cache key
    assert load_adapter(tmp_path / "b", base=str(tiny_dir)).fingerprint not in (stacked.fingerprint, lm.fingerprint)
    # a chain that loops back (a's base rewritten to b, whose base is a) is one line, not a recursion
    looped = json.loads((tmp_path / "a" / TRAIN_META).read_text())
    (tmp_path / "a" / TRAIN_META).write_text(json.dumps({**looped, "base_model": str(tmp_path / "b")}))
    for load in (load_lm, check_model, adapter_chain):
        with pytest.raises(TunesiftError, match="its base models loop back to it"):
            load(str(tmp_path / "b"))
    (tmp_path / "a" / TRAIN_META).write_text(json.dumps(looped))
    # one-line errors, before the base is loaded
    meta = json.loads((tmp_path / "a" / TRAIN_META).read_text())
    (tmp_path / "a" / TRAIN_META).write_text(json.dumps({k: v for k, v in meta.items() if k != "base_model"}))
    for load in (load_lm, check_model):
        with pytest.raises(TunesiftError, match="a LoRA adapter whose base model is not recorded"):
            load(str(tmp_path / "a"))
    (tmp_path / "b" / "adapter_model.safetensors").unlink()
    for load in (load_lm, check_model):
        with pytest.raises(TunesiftError, match="an adapter without its weights"):
            load(str(tmp_path / "b"))


def test_full_model_save_and_load(fresh, records, tmp_path):
    rend = renderer_of(fresh)
    res = finetune(fresh, records[:8], TrainConfig(mode="full", epochs=1, lr=1e-3, batch_size=4))
    save(res, fresh, tmp_path / "model")
    expect, _ = response_nll(merged(fresh, res), rend, records)
    loaded = load_trained(tmp_path / "model")
    got, _ = response_nll(loaded, rend, records)
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    assert load_trained(tmp_path / "model", dtype="bfloat16").dtype == "bfloat16"


def test_a_full_model_loads_in_float32_where_auto_means_bfloat16(fresh, records, tmp_path, monkeypatch):
    """save() writes float32; on a GPU "auto" is bfloat16, which rounded the training's updates away."""
    import tunesift.models as models

    res = finetune(fresh, records[:4], TrainConfig(mode="full", epochs=1, lr=1e-3, batch_size=4))
    save(res, fresh, tmp_path / "model")
    real = models.resolve_dtype
    monkeypatch.setattr(models, "resolve_dtype", lambda d, dev: real("bfloat16" if d == "auto" else d, dev))
    loaded = load_trained(tmp_path / "model")
    assert loaded.dtype == "float32" and next(loaded.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("kw, message", [
    ({"mode": "qlora"}, "unknown fine-tuning mode"), ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch size"),
    ({"lr": -1.0}, "learning rate"), ({"lora_r": 0}, "LoRA rank"), ({"autocast": "fp8"}, "autocast"),
    ({"lora_dropout": 1.5}, "lora-dropout"), ({"seed": -1}, "seed"),
])
def test_bad_train_options(kw, message):
    with pytest.raises(OptionError, match=message):
        TrainConfig(**kw).validate()


def test_empty_training_set_and_bad_folders(fresh, tmp_path):
    with pytest.raises(TunesiftError, match="empty"):
        finetune(fresh, [])
    with pytest.raises(TunesiftError, match="not a fine-tuned model folder"):
        load_trained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunesiftError, match="neither a LoRA adapter"):
        load_trained(tmp_path / "empty")


def test_cut_prompts_are_counted_and_a_damaged_adapter_is_one_line(fresh, records, tmp_path, caplog):
    import json
    import logging

    from tunesift.finetune import TRAIN_META

    long = records_from_rows([{"instruction": "word " * 80, "output": "short."}] + ROWS[:3])
    rend = Renderer(fresh.tokenizer, turn_format(fresh.tokenizer), max_length=48)
    with caplog.at_level(logging.WARNING, logger="tunesift"):
        res = finetune(fresh, long, TrainConfig(epochs=1, lr=1e-3, batch_size=4), renderer=rend)
    assert res.extra["prompts_cut"] == 1 and "1 of 4 training records have prompts longer than max_length" in caplog.text
    save(res, fresh, tmp_path / "a")
    assert json.loads((tmp_path / "a" / TRAIN_META).read_text())["prompts_cut"] == 1
    # a truncated adapter_config.json: one line naming the folder, not peft's traceback
    (tmp_path / "a" / "adapter_config.json").write_text("{")
    with pytest.raises(TunesiftError, match=r"a: cannot load the adapter: "):
        load_trained(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with pytest.raises(TunesiftError, match="an adapter without its weights"):
        load_trained(tmp_path / "a")


def test_saving_over_a_file_is_refused_and_the_file_kept(fresh, records, tmp_path):
    from tunesift.evaluate import Evaluation, save_evaluation

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    res = finetune(fresh, records[:4], TrainConfig(epochs=1, batch_size=4))
    with pytest.raises(TunesiftError, match="exists and is not a folder"):
        save(res, fresh, notes)
    ev = Evaluation({"loss": 1.0}, {}, [None] * 4, {}, {})
    with pytest.raises(TunesiftError, match="exists and is not a folder"):
        save_evaluation(notes, records[:4], ev, {"metrics": ev.metrics})
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # an evaluation written before the checksums (no "files") is replaced: its entries are evaluate's
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text('{"tool": "tunesift", "metrics": {}, "records": 4, "fingerprint": "x"}')
    (old / "predictions.jsonl").write_text("")
    save_evaluation(old, records[:4], ev, {"metrics": ev.metrics})
    assert "files" in __import__("json").loads((old / "metrics.json").read_text())
    # a folder that is not an earlier evaluation is refused from Python too
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(OptionError, match="not an earlier tunesift output"):
        save_evaluation(tmp_path / "mine", records[:4], ev, {"metrics": ev.metrics})
    assert (tmp_path / "mine" / "keep.txt").read_text() == "x"


def test_a_model_without_files_to_hash_is_fingerprinted_by_its_weights(tiny_dir, fresh):
    """A Hub id whose snapshot cannot be found was fingerprinted by its name, so updated weights
    would reuse old scores from the cache."""
    from tunesift.models import weights_fingerprint

    other = load_lm(str(tiny_dir), device="cpu", dtype="float32")
    assert weights_fingerprint(fresh.model) == weights_fingerprint(other.model)  # the same weights
    with torch.no_grad():
        next(other.model.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(fresh.model) != weights_fingerprint(other.model)
    assert weights_fingerprint(fresh.model).startswith("weights-")


def test_a_second_run_on_a_model_with_unmerged_adapters_is_refused(fresh, records):
    """finetune() injects LoRA in place: a second call on the same model trained a new adapter
    beside the first one's (peft warned "modify a model with PEFT for a second time"), so the two
    picks a notebook compares were not trained from the same start."""
    from tunesift.errors import TunesiftError
    from tunesift.finetune import merged

    cfg = TrainConfig(epochs=1, batch_size=4)
    res = finetune(fresh, records[:4], cfg)
    with pytest.raises(TunesiftError, match="already carries the LoRA adapters of an earlier finetune"):
        finetune(fresh, records[:4], cfg)
    on_top = merged(fresh, res)  # merged: no adapter left, it trains on as any model
    assert len(finetune(on_top, records[:4], cfg).losses) == 1


def test_slow_bf16_is_told_from_the_cpu_flags():
    from tunesift.machine import slow_bf16

    assert slow_bf16(["avx2"], "x86_64") is True  # AMD EPYC with AVX2 only: bf16 emulated
    assert slow_bf16(["avx2", "avx512f"], "x86_64") is True  # AVX-512 without its BF16 extension
    assert slow_bf16(["avx2", "avx512f", "avx512_bf16"], "x86_64") is False
    assert slow_bf16(["avx2", "amx_bf16", "amx_tile"], "x86_64") is False
    assert slow_bf16([], "aarch64") is False  # not known off x86: no warning
    assert slow_bf16([], "x86_64") is False  # no flags read (no /proc/cpuinfo): not known either


@pytest.mark.parametrize("slow", [True, False])
def test_bfloat16_autocast_warns_where_the_cpu_emulates_it(fresh, records, monkeypatch, caplog, slow):
    monkeypatch.setattr("tunesift.machine.slow_bf16", lambda: slow)
    caplog.set_level(logging.WARNING, logger="tunesift")
    full = {"mode": "full", "epochs": 1, "batch_size": 4, "lr": 1e-5}  # full: the model trains twice
    finetune(fresh, records[:4], TrainConfig(**full, autocast="bfloat16"))
    assert ("a CPU without AVX512-BF16 or AMX" in caplog.text) is slow
    caplog.clear()
    finetune(fresh, records[:4], TrainConfig(**full))  # float32: nothing to say
    assert "AVX512-BF16" not in caplog.text
