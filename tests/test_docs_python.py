"""docs/python.md is a notebook: its ```python cells run top to bottom in one namespace, in an empty
folder, with the tiny random model standing in for the default one (load_lm is patched)."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "python.md"


def cells() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_python_doc_runs_as_a_notebook(tiny_lm, tmp_path, monkeypatch, capsys):
    import tunesift
    import tunesift.models

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNESIFT_HOME", str(tmp_path / "home"))  # the score cache stays in tmp_path
    asked = []

    def load_tiny(name="default", **kw):
        asked.append(name)
        return tiny_lm

    monkeypatch.setattr(tunesift.models, "load_lm", load_tiny)
    code = cells()
    assert len(code) >= 10
    ns: dict = {"__name__": "__docs__"}
    for i, cell in enumerate(code, 1):
        try:
            exec(compile(cell, f"docs/python.md cell {i}", "exec"), ns)
        except Exception as exc:
            pytest.fail(f"docs/python.md cell {i} ({cell.splitlines()[0]!r}) raised {type(exc).__name__}: {exc}")
    assert asked and set(asked) == {"default"}  # the doc's calls loaded the default model (here: tiny)
    assert isinstance(ns["sel"], tunesift.Selection)
    out = tmp_path / "out" / "donod"
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "manifest.json", "report.html",
                                                     "scores.parquet", "selected.jsonl"]
    printed = capsys.readouterr().out
    assert "budget fraction must be in (0, 1], got 1.5" in printed and "of the kept" in printed
