"""The HTML report: sections, embedded PNGs, escaping, retention numbers, CLI, and a real render in
headless Chromium (Debian's package; `make test` installs it)."""

import base64
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tunesift.cli import main
from tunesift.demodata import write_demo
from tunesift.errors import TunesiftError
from tunesift.outputs import write_selection
from tunesift.pipeline import Options, Selection, select
from tunesift.records import read_records
from tunesift.report import render_report, write_report

CHROMIUM = "/usr/bin/chromium"
PNG = b"\x89PNG\r\n\x1a\n"
NASTY = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "demo.jsonl"
    write_demo(path, n=40, corrupt=0.2, seed=1)
    return path


def _write(sel, out, data):
    return write_selection(sel, out, inputs={"data": {"path": str(data)}})


@pytest.fixture(scope="module")
def donod_out(demo, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("donod")
    sel = select(str(demo), method="donod", budget=0.3, lm=tiny_lm, cache_dir=str(root / "cache"))
    return _write(sel, root / "out", demo)


@pytest.fixture(scope="module")
def delift_out(demo, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("delift")
    rows = [json.loads(line) for line in open(demo, encoding="utf-8")][:20]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sel = select(str(data), method="delift", budget=6, lm=tiny_lm, cache_dir=str(root / "cache"))
    return _write(sel, root / "out", data)


@pytest.fixture(scope="module")
def nasty(tmp_path_factory):
    """Rows whose every text, id and category carries markup, and the random selection's folder."""
    root = tmp_path_factory.mktemp("nasty")
    rows = [{"id": f"r<{i}>", "instruction": f"{NASTY} {i}", "output": f"</td>{NASTY}",
             "source": ["<b>web</b>", "books & more", "web"][i % 3]} for i in range(12)]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sel = select(str(data), method="random", budget=0.5, seed=3)
    return rows, data, _write(sel, root / "out", data)


def images(page: str) -> list[Image.Image]:
    """Every <img> of the page, each checked to be a decodable PNG data URI."""
    tags = re.findall(r"<img\b[^>]*>", page)
    out = []
    for tag in tags:
        src = re.search(r'src="([^"]*)"', tag).group(1)
        assert src.startswith("data:image/png;base64,"), src[:60]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(PNG)
        img = Image.open(io.BytesIO(raw))
        img.load()
        assert img.width > 100 and img.height > 100
        out.append(img)
    return out


def self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|link|iframe)\b", page, re.I)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page, re.I)


def sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)"', page))


def retention_rows(page: str) -> dict[str, tuple[int, int]]:
    rows = re.findall(r'data-category="([^"]*)" data-input="(\d+)" data-kept="(\d+)"', page)
    import html

    return {html.unescape(c): (int(n), int(k)) for c, n, k in rows}


def expected_retention(data: Path, out: Path, field) -> dict[str, tuple[int, int]]:
    kept = dict(zip(*[pq.read_table(out / "scores.parquet").column(c).to_pylist() for c in ("id", "kept")]))
    n, k = Counter(), Counter()
    for rec in read_records(data):
        cat = field(rec.row)
        n[cat] += 1
        k[cat] += kept[rec.id]
    return {c: (n[c], k[c]) for c in n}


def run(args, capsys):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# ----------------------------------------------------------------------------- content


def test_donod_report(donod_out, demo):
    page = write_report(donod_out, by="meta.family").read_text(encoding="utf-8")
    self_contained(page)
    assert sections(page) == {"summary", "plots", "retention", "kept", "dropped"}
    assert "DON against NOD" in page and "Closeness" in page
    assert len(images(page)) == 3  # scatter, closeness, retention bars
    assert "Kept: the 10 first-ranked of 12" in page and "Dropped: 10 of 28" in page
    assert re.search(r"rank 1 of 40: \w+ DON \(\d+\w\w pct\)", page)
    assert page.count('<tr data-id="') == 20
    m = json.loads((donod_out / "manifest.json").read_text())
    assert m["model"]["fingerprint"] in page and "eta" in page
    got = retention_rows(page)
    assert got == expected_retention(demo, donod_out, lambda r: r["meta"]["family"])
    assert sum(n for n, _ in got.values()) == 40 and sum(k for _, k in got.values()) == 12


def test_delift_report(delift_out):
    page = render_report(delift_out)
    self_contained(page)
    assert sections(page) == {"summary", "plots", "kept", "dropped"}
    assert len(images(page)) == 3  # gain curve, helped_by, helpfulness
    assert "instruction" in page and "objective" in page
    assert "picked #1: covers gain" in page and "not picked: its best coverage" in page
    assert "Kept: the 6 first picks of 6" in page and "Dropped: 10 of 14" in page
    # kept rows are listed in pick order
    scores = pq.read_table(delift_out / "scores.parquet").to_pandas()
    first = scores.sort_values("rank").id.iloc[0]
    assert re.findall(r'<tr data-id="([^"]+)"', page)[0] == first


def test_delift_se_and_random_pages(nasty, tmp_path):
    rows, data, out = nasty
    from tunesift.records import records_from_rows

    recs = records_from_rows(rows)
    order = np.array([4, 0, 7])
    kept = np.zeros(12, bool)
    kept[order] = True
    pos = np.full(12, -1)
    pos[order] = [1, 2, 3]
    gain = np.full(12, np.nan)
    gain[order] = [3.0, 1.5, 0.25]
    sel = Selection("delift-se", recs, kept, {"order": pos, "gain": gain}, order,
                    Options(method="delift-se", budget=3), 3, extra={"objective": 4.75})
    se = _write(sel, tmp_path / "se", data)
    page = render_report(se, by="source")
    assert len(images(page)) == 2  # gain curve, retention
    assert "delift-se · instruction" in page and "no model" in page
    assert "picked #3: covers gain 0.25 of the pool (5.3% of the objective)" in page
    assert retention_rows(page) == {"<b>web</b>": (4, 1), "books & more": (4, 2), "web": (4, 0)}

    page = render_report(out)  # random
    assert "no scores to plot" in page and images(page) == []
    assert "drawn #1 by the seeded sample (seed 3)" in page and "not drawn: position 12 of 12" in page


def test_escaping(nasty):
    rows, data, out = nasty
    page = render_report(out, by="source")
    self_contained(page)  # no <script> at all: every text from the data is escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "&lt;/td&gt;" in page and "</td><script" not in page
    assert 'data-id="r&lt;0&gt;"' in page and "<b>web</b>" not in page
    assert retention_rows(page) == expected_retention(data, out, lambda r: r["source"])


def test_truncation(nasty, tmp_path):
    _, data, out = nasty
    rows = [{"instruction": "x" * 500 + str(i), "output": "y" * 300} for i in range(4)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = render_report(_write(select(str(path), method="random", budget=2), tmp_path / "o", path))
    assert "x" * 199 + "…" in page and "x" * 200 not in page and "y" * 199 + "…" in page


# ----------------------------------------------------------------------------- input and errors


def test_input_missing(nasty, tmp_path):
    _, data, out = nasty
    moved = tmp_path / "out"
    shutil.copytree(out, moved)
    m = json.loads((moved / "manifest.json").read_text())
    m["inputs"]["data"]["path"] = str(tmp_path / "gone.jsonl")
    (moved / "manifest.json").write_text(json.dumps(m))
    page = render_report(moved)  # without --by the input is optional
    assert "dropped records are shown without their text" in page and "gone.jsonl" in page
    assert page.count("(input not available)") == 6
    with pytest.raises(TunesiftError, match=r"^--by source needs the dropped rows .*gone.jsonl.*--data FILE$"):
        render_report(moved, by="source")
    assert retention_rows(render_report(moved, by="source", data=data))  # --data fixes it
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "zz", "instruction": "a", "output": "b"}) + "\n")
    with pytest.raises(TunesiftError, match=r"other.jsonl: does not match .*scores.parquet: 6 of the 6"):
        render_report(moved, by="source", data=other)
    with pytest.raises(TunesiftError, match=r"no record has the field 'meta.family'"):
        render_report(moved, by="meta.family", data=data)


@pytest.mark.parametrize("damage, message", [
    (lambda o: shutil.rmtree(o), r"no such output folder"),
    (lambda o: (o / "manifest.json").unlink(), r"manifest.json: missing"),
    (lambda o: (o / "scores.parquet").write_bytes(b"not parquet"), r"scores.parquet: cannot read scores"),
    (lambda o: (o / "manifest.json").write_text("{"), r"manifest.json:1: invalid JSON"),
    (lambda o: (o / "selected.jsonl").write_text("{}\n"), r"selected.jsonl: 1 rows, but scores.parquet marks 6"),
])
def test_errors(nasty, tmp_path, capsys, damage, message):
    out = tmp_path / "out"
    shutil.copytree(nasty[2], out)
    damage(out)
    with pytest.raises(TunesiftError, match=message):
        write_report(out)
    code, stdout, err = run(["report", out], capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("tunesift: error: ") and re.search(message, err)
    assert not (out / "report.html").exists()


# ----------------------------------------------------------------------------- CLI


def test_cli(nasty, demo, tmp_path, capsys):
    _, data, out = nasty
    code, stdout, err = run(["report", out, "--by", "source"], capsys)
    assert code == 0, err
    assert stdout.strip() == str(out / "report.html") and (out / "report.html").is_file()
    code, _, err = run(["select", demo, "--method", "random", "--budget", "0.25", "--out", tmp_path / "r",
                        "--quiet", "--report"], capsys)
    assert code == 0, err
    assert "Kept: the 10 first-ranked of 10" in (tmp_path / "r" / "report.html").read_text()
    code, _, err = run(["select", demo, "--method", "random", "--out", tmp_path / "n", "--quiet"], capsys)
    assert code == 0 and not (tmp_path / "n" / "report.html").exists()


# ----------------------------------------------------------------------------- Chromium


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test`, which installs Debian's chromium package")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_chromium_renders(donod_out, tmp_path):
    page = write_report(donod_out, by="meta.family").read_text(encoding="utf-8")
    n_img = len(images(page))
    # A test copy that reports each image's decoded width in the title once the page has loaded.
    probe = page.replace("</body>", "<script>addEventListener('load', () => { document.title = 'IMG:' + "
                         "[...document.images].map(i => i.complete ? i.naturalWidth : -1).join(','); "
                         "});</script></body>")
    copy = tmp_path / "probe.html"
    copy.write_text(probe, encoding="utf-8")
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", copy.as_uri()], tmp_path).stdout
    widths = re.search(r"<title>IMG:([-\d,]*)</title>", dom)
    assert widths, dom[:500]
    widths = [int(w) for w in widths.group(1).split(",")]
    assert len(widths) == n_img == 3 and min(widths) > 100
    for name in ("summary", "plots", "retention", "kept", "dropped"):
        assert f'<section id="{name}">' in dom
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars",
              (donod_out / "report.html").as_uri()], tmp_path)
    assert shot.read_bytes().startswith(PNG)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # not blank
    kept_blue = np.abs(img - [0x1F, 0x77, 0xB4]).sum(axis=2) < 30
    dropped_orange = np.abs(img - [0xFF, 0x7F, 0x0E]).sum(axis=2) < 30
    assert kept_blue.sum() > 500 and dropped_orange.sum() > 500  # the plots were drawn on screen
