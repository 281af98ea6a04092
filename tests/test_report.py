"""The HTML report: sections, embedded PNGs, escaping, retention numbers, CLI, and a real render in
headless Chromium (Debian's package; `make test` installs it)."""

import base64
import hashlib
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
from tunesift.errors import TunesiftError
from tunesift.io.records import read_records
from tunesift.outputs import write_selection
from tunesift.pipeline import Options, Selection, select
from tunesift.report import render_report, write_report
from tunesift_demo import write_demo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package, or a snap on PATH
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


def _first_20(demo, root):
    """The first 20 demo records as their own input file (DELIFT's kernel is quadratic)."""
    rows = [json.loads(line) for line in open(demo, encoding="utf-8")][:20]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def delift_out(demo, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("delift")
    data = _first_20(demo, root)
    sel = select(str(data), method="delift", budget=6, lm=tiny_lm, cache_dir=str(root / "cache"))
    return _write(sel, root / "out", data)


@pytest.fixture(scope="module")
def donod_delift_out(demo, tiny_lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("donod_delift")
    data = _first_20(demo, root)
    sel = select(str(data), method="donod+delift", budget=6, prefilter=0.7, lm=tiny_lm,
                 cache_dir=str(root / "cache"))
    return _write(sel, root / "out", data)


@pytest.fixture(scope="module")
def ranked_outs(demo, tiny_lm, tiny_dir, tmp_path_factory):
    """The baselines on the demo set: loss (keep easiest), perplexity (keep hardest), selectit
    through the API, ifd through the command line with --report."""
    root = tmp_path_factory.mktemp("ranked")
    outs = {}
    for method, kw in (("loss", {}), ("perplexity", {"keep": "hardest"}), ("selectit", {})):
        sel = select(str(demo), method=method, budget=0.3, lm=tiny_lm, cache_dir=str(root / "cache"), **kw)
        outs[method] = _write(sel, root / method, demo)
    code = main(["select", str(demo), "--method", "ifd", "--budget", "0.3", "--model", str(tiny_dir),
                 "--device", "cpu", "--dtype", "float32", "--cache-dir", str(root / "cache"),
                 "--out", str(root / "ifd"), "--quiet", "--report"])
    assert code == 0
    outs["ifd"] = root / "ifd"
    return outs


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
    # why lines say what the scores show (ranks, percentiles, the cut), no diagnosis
    whys = why_lines(page)
    scores = pq.read_table(donod_out / "scores.parquet").to_pandas().sort_values("rank")
    cut = scores.closeness.iloc[11]
    for w in whys[:10]:
        assert re.fullmatch(r"rank \d+ of 40: \w+ DON \(\d+\w\w pct\), \w+ NOD \(\d+\w\w pct\); "
                            r"closeness \S+ \(\d+\w\w pct\)", w), w
    for w in whys[10:]:
        assert re.fullmatch(r"rank \d+ of 40 \(cut at 12\): \w+ DON \(\d+\w\w pct\), \w+ NOD \(\d+\w\w pct\); "
                            rf"closeness \S+ \(\d+\w\w pct\), below the last kept \({cut:.4g}\)", w), w
    for claim in ("typical", "mismatched", "noisy", "hard-to-learn", "strengthens"):
        assert claim not in " ".join(whys)
    assert "typical of answers that do not match" not in page  # nor in the plot captions
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
    assert "picked #1: covers gain" in page and "not picked: covered by kept record" in page
    assert "Kept: the 6 first picks of 6" in page and "Dropped: 10 of 14" in page
    # kept rows are listed in pick order
    scores = pq.read_table(delift_out / "scores.parquet").to_pandas()
    first = scores.sort_values("rank").id.iloc[0]
    assert re.findall(r'<tr data-id="([^"]+)"', page)[0] == first
    # each dropped record names the kept record that covers it best, and by how much; or says that
    # none does (a kNN kernel's harmful and unscored pairs are 0)
    s = scores.set_index("id")
    whys = dict(zip(row_ids(page), why_lines(page)))
    named = 0
    for rid in row_ids(page)[6:]:
        by, cov = s.covered_by[rid], s.coverage[rid]
        if not isinstance(by, str):
            assert cov == 0 and whys[rid].startswith("not picked: no kept record covers it (similarity 0"), whys[rid]
            continue
        named += 1
        assert s.kept[by] and not s.kept[rid]
        pick = int(s.order[by])
        assert re.fullmatch(rf"not picked: covered by kept record {by} \(pick #{pick}\) at similarity "
                            rf"{cov:.4g}, \d+\w\w pct of the not picked; helpfulness \S+, \d+\w\w pct", whys[rid]), whys[rid]
    assert named >= 5
    assert "order -1" not in page and "gain —" not in page  # no placeholders for scores a record lacks


def test_delift_se_and_random_pages(nasty, tmp_path):
    rows, data, out = nasty
    from tunesift.io.records import records_from_rows

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


def why_lines(page: str) -> list[str]:
    import html

    return [html.unescape(w) for w in re.findall(r'<td class="why">([^<]*)</td>', page)]


def row_ids(page: str) -> list[str]:
    import html

    return [html.unescape(i) for i in re.findall(r'<tr data-id="([^"]+)"', page)]


def relevant_options(page: str) -> str:
    """The options table shown unfolded (the ones the method used)."""
    start = page.index("<h3>Options</h3>")
    end = page.find("options this run did not use", start)
    return page[start:end if end > 0 else None]


RANKED = {  # method: (header, plot titles, a kept why line, a dropped why line)
    "loss": ("loss · keep easiest", ("loss: kept vs dropped", "loss against length"),
             r"rank 1 of 40: loss [\d.]+ \(\d+\w\w pct\), among the easiest",
             r"rank 40 of 40 \(cut at 12\): loss [\d.]+ \(\d+\w\w pct\), harder than the kept \(cut at [\d.]+\)"),
    "perplexity": ("perplexity · keep hardest", ("perplexity: kept vs dropped", "perplexity against length"),
                   r"rank 1 of 40: perplexity [\d.]+ \(\d+\w\w pct\), among the hardest",
                   r"rank 40 of 40 \(cut at 12\): perplexity [\d.]+ \(\d+\w\w pct\), easier than the kept"),
    "ifd": ("ifd", ("IFD: kept vs dropped", "Loss with and without the prompt"),
            r"rank 1 of 40: IFD 0\.\d+, the prompt helps but the response is still hard to predict",
            r"dropped first: IFD 1\.\d+ >= 1, the prompt does not help predict the response"),
    "selectit": ("selectit", ("selectit: kept vs dropped", "Rating: mean against spread"),
                 r"rank 1 of 40: self-rating score [\d.]+ of 5 on average over 5 prompts \(std [\d.]+\): selectit [\d.]+ "
                 r"\(\d+\w\w pct\)",
                 r"rank 40 of 40 \(cut at 12\): self-rating score [\d.]+ of 5 on average over 5 prompts \(std [\d.]+\): "
                 r"selectit [\d.]+ \(\d+\w\w pct\), lower than the kept \(cut at [\d.]+\)"),
}


@pytest.mark.parametrize("method", list(RANKED))
def test_ranked_baseline_reports(ranked_outs, demo, method):
    out = ranked_outs[method]
    header, titles, kept_why, dropped_why = RANKED[method]
    if method == "ifd":  # written by select --report
        assert (out / "report.html").is_file()
    page = write_report(out, by="meta.family").read_text(encoding="utf-8")
    self_contained(page)
    assert sections(page) == {"summary", "plots", "retention", "kept", "dropped"}
    assert len(images(page)) == 3  # score histogram, one scatter, retention bars
    for title in titles:
        assert f'alt="{title}"' in page
    assert "dashed cut" in page  # the histogram shows the cut at the budget
    assert f"<b>{header}</b>" in page
    assert "Kept: the 10 first-ranked of 12" in page and "Dropped: 10 of 28, lowest-ranked" in page
    whys = why_lines(page)
    assert len(whys) == 20
    assert re.fullmatch(kept_why, whys[0]), whys[0]
    assert re.search(dropped_why, page.replace("&gt;", ">").replace("&#x27;", "'")), whys[10:]
    score = {"loss": "loss", "perplexity": "perplexity", "ifd": "IFD", "selectit": "selectit"}[method]
    assert all(score in w for w in whys)
    # kept rows in rank order, dropped rows from the last-ranked up
    scores = pq.read_table(out / "scores.parquet").to_pandas().sort_values("rank")
    ids = row_ids(page)
    assert ids[:10] == scores.id.iloc[:10].tolist()
    assert ids[10:] == scores.id.iloc[::-1].iloc[:10].tolist()
    first = re.search(r'<td class="scores">(.*?)</td>', page).group(1)
    assert first.startswith(score.lower() + " ")  # the ranking score is listed first
    shown = relevant_options(page)
    assert ("<td>keep</td>" in shown) == (method in ("loss", "perplexity"))
    assert ("<td>selectit_alpha</td>" in shown) == (method == "selectit")
    assert "<td>model</td>" in shown and "<td>eta</td>" not in shown
    if method == "ifd":
        assert "dotted IFD = 1 line" in page
        ifd = scores.set_index("id").ifd
        assert all(ifd[i] >= 1 for i, w in zip(ids[10:], whys[10:]) if w.startswith("dropped first"))
    if method == "selectit":
        assert "of the model&#x27;s next-token probability went to the digits" in page


def test_selectit_prompt_count():
    from tunesift.report import SELECTIT_PROMPTS
    from tunesift.scoring.baselines import DEFAULT_PROMPTS

    assert SELECTIT_PROMPTS == len(DEFAULT_PROMPTS)  # the report's "over 5 prompts"


def test_ranked_edge_cases(nasty, tmp_path):
    """IFD with fewer records below 1 than the budget, an infinite and a missing IFD; and a ranked
    method the report knows only from its table entry (LESS)."""
    from tunesift.io.records import records_from_rows
    from tunesift.scoring.baselines import ifd_order

    rows, data, _ = nasty
    recs = records_from_rows(rows)[:8]
    sub = tmp_path / "rows.jsonl"
    sub.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]), encoding="utf-8")
    ifd = np.array([0.2, 0.5, 0.9, 1.2, np.inf, np.nan, 0.95, 1.05])
    order = ifd_order(ifd)
    kept = np.zeros(8, bool)
    kept[order[:5]] = True
    cols = {"ifd": ifd, "loss": ifd * 2, "loss_alone": np.full(8, 2.0), "n_tokens": np.arange(1, 9)}
    sel = Selection("ifd", recs, kept, cols, order, Options(method="ifd", budget=5), 5)
    page = render_report(_write(sel, tmp_path / "ifd", sub))
    self_contained(page)
    assert len(images(page)) == 2
    whys = dict(zip(row_ids(page), why_lines(page)))
    assert whys["r<7>"] == ("rank 5 of 8: IFD 1.05 >= 1, kept only because just 4 records have IFD < 1, "
                            "fewer than the budget of 5")
    assert whys["r<0>"] == ("rank 4 of 8: IFD 0.2 < 1, the prompt helps predict the response (all 4 records "
                            "with IFD < 1 fit the budget)")
    assert whys["r<4>"] == "dropped first: IFD inf >= 1, the prompt does not help predict the response"
    assert whys["r<5>"] == "rank 8 of 8 (cut at 5): no IFD score, ranked last"
    assert "ifd inf" in page and "Only 4 records have IFD &lt; 1" in page

    less = np.array([0.1, 0.7, 0.3, np.nan, 0.9, 0.3, 0.5, 0.2])
    order = np.argsort(np.where(np.isnan(less), np.inf, -less), kind="stable")
    kept = np.zeros(8, bool)
    kept[order[:3]] = True
    sel = Selection("less", recs, kept, {"less": less}, order, Options(method="less", budget=3), 3)
    page = render_report(_write(sel, tmp_path / "less", sub))
    self_contained(page)
    assert len(images(page)) == 1 and 'alt="LESS: kept vs dropped"' in page
    whys = dict(zip(row_ids(page), why_lines(page)))
    assert whys["r<4>"] == "rank 1 of 8: LESS 0.9 (93rd pct), among the highest"
    assert whys["r<2>"] == "rank 4 of 8 (cut at 3): LESS 0.3 (43rd pct), lower than the kept (cut at 0.5)"
    assert whys["r<3>"] == "rank 8 of 8 (cut at 3): no LESS score, ranked last"
    assert "Dropped: 5 of 5, lowest-ranked (lowest LESS)" in page


@pytest.mark.parametrize("method", ["loss", "donod+delift"])
def test_error_rows(demo, tiny_lm, tmp_path, method):
    """select --on-error skip: a record that cannot be scored is listed last among the dropped,
    with its reason, and counted at the top; ranks and plots cover the scored records."""
    rows = [json.loads(line) for line in open(demo, encoding="utf-8")][:8]
    rows.insert(3, {"id": "long", "instruction": "Repeat.", "output": "word " * 200})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sel = select(str(data), method=method, budget=3, max_length=96, on_error="skip", lm=tiny_lm,
                 cache_dir=str(tmp_path / "cache"))
    page = render_report(_write(sel, tmp_path / "out", data))
    self_contained(page)
    assert len(images(page)) == (2 if method == "loss" else 5)
    assert "1 record(s) could not be scored and were never kept" in page
    assert "<span>not scored</span><b>1</b>" in page
    ids, whys = row_ids(page), why_lines(page)
    assert ids[-1] == "long" and re.fullmatch(r"not scored: record long \(line 4\): response of \d+ tokens .*",
                                              whys[-1]), whys[-1]
    assert re.search(r"Dropped: 6 of 6, .*, then 1 that could not be scored</h2>", page)
    assert not any("of 9" in w for w in whys)  # ranks are among the 8 scored records
    assert any("of 8" in w for w in whys)


def colour_pixels(img: Image.Image, hex_colour: str, alpha: float = 1.0) -> int:
    """Pixels of ``img`` close to the colour (drawn with ``alpha`` over white)."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    want = alpha * rgb + (1 - alpha) * 255
    px = np.asarray(img.convert("RGB")).astype(float)
    return int((np.abs(px - want).sum(axis=2) < 24).sum())


def test_donod_delift_report(donod_delift_out):
    from tunesift.report import CUT_COLOR, DROPPED_COLOR, KEPT_COLOR

    page = render_report(donod_delift_out, by="meta.family")
    self_contained(page)
    assert sections(page) == {"summary", "plots", "retention", "kept", "dropped"}
    imgs = images(page)
    assert len(imgs) == 6  # DON/NOD, closeness, gain curve, helped_by, helpfulness, retention
    for title in ("DON against NOD, through both stages", "Closeness and the prefilter", "Greedy gain curve",
                  "Utility: helped_by", "Utility: helpfulness"):
        assert f'alt="{title}"' in page
    assert "The dashed curve is the prefilter cut" in page  # the TOPSIS contour was reproduced
    for colour in (CUT_COLOR, DROPPED_COLOR, KEPT_COLOR):  # three kinds of dots in the scatter
        assert colour_pixels(imgs[0], colour, 0.7) > 30, colour
    assert "<b>donod+delift · instruction</b>" in page and "<b>14 (option 0.7)</b>" in page
    assert "objective" in page
    shown = relevant_options(page)
    for name in ("prefilter", "eta", "weights", "stage", "distance"):
        assert f"<td>{name}</td>" in shown
    assert "Kept: the 6 first picks of 6" in page
    assert "Dropped: 10 of 14, 5 cut by DONOD (lowest closeness first) and 5 that passed it" in page
    scores = pq.read_table(donod_delift_out / "scores.parquet").to_pandas().set_index("id")
    ids, whys = row_ids(page), why_lines(page)
    assert ids[:6] == scores.sort_values("rank").index[:6].tolist()
    assert re.fullmatch(r"picked #1: covers gain [\d.]+ of the pool \([\d.]+% of the objective\); "
                        r"passed DONOD at closeness rank \d+ of 20", whys[0]), whys[0]
    cut, passed = ids[6:11], ids[11:]
    assert not scores.prefiltered[cut].any() and scores.prefiltered[passed].all()
    assert scores.closeness[cut].is_monotonic_increasing
    assert scores.closeness[cut].max() < scores.closeness[scores.prefiltered].min()
    for w in whys[6:11]:
        assert re.fullmatch(r"cut by DONOD's prefilter \(closeness rank (1[5-9]|20) of 20; the top 14 went on to "
                            r"DELIFT\): \w+ DON \(\d+\w\w pct\), \w+ NOD \(\d+\w\w pct\)", w), w
    for rid, w in zip(passed, whys[11:]):
        by = scores.covered_by[rid]
        assert by in ids[:6] or scores.kept[by]
        assert re.fullmatch(rf"passed DONOD at closeness rank ([1-9]|1[0-4]) of 20, then not picked: covered by "
                            rf"kept record {by} \(pick #\d\) at similarity [\d.]+, \d+\w\w pct of the not picked; "
                            r"helpfulness \S+, \d+\w\w pct of the 14 passed", w), w
    assert scores.covered_by[cut].isna().all()  # DONOD's cut records never reached DELIFT
    assert "prefiltered no" in page and "prefiltered yes" in page


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


def _edit_manifest(out, change):
    m = json.loads((out / "manifest.json").read_text())
    change(m)
    (out / "manifest.json").write_text(json.dumps(m))


def _older(out):  # an output from before the manifest listed checksums: its files are not checked
    _edit_manifest(out, lambda m: m.pop("files"))


def _scores(out, **columns):
    """Replace scores.parquet columns (an older output, so the checksum does not stop it first)."""
    import pyarrow as pa

    t = pq.read_table(out / "scores.parquet")
    for name, values in columns.items():
        t = t.set_column(t.column_names.index(name), name, pa.array(values))
    pq.write_table(t, out / "scores.parquet")
    _older(out)


@pytest.mark.parametrize("damage, message", [
    (lambda o: shutil.rmtree(o), r"no such output folder"),
    (lambda o: (shutil.rmtree(o), o.write_text("x")), r"out: not a folder"),
    (lambda o: (o / "manifest.json").unlink(), r"manifest.json: missing"),
    (lambda o: ((o / "manifest.json").unlink(), (o / "manifest.json").mkdir()), r"manifest.json: a folder"),
    (lambda o: (o / "scores.parquet").write_bytes(b"not parquet"), r"scores.parquet: changed since tunesift select"),
    (lambda o: ((o / "scores.parquet").write_bytes(b"not parquet"), _older(o)), r"scores.parquet: cannot read"),
    (lambda o: (o / "manifest.json").write_text("{"), r"manifest.json:1: invalid JSON"),
    (lambda o: (o / "selected.jsonl").write_text("{}\n"), r"selected.jsonl: changed since tunesift select"),
    (lambda o: ((o / "selected.jsonl").write_text("{}\n"), _older(o)),
     r"selected.jsonl: 1 rows, but scores.parquet marks 6"),
    (lambda o: (o / "selected.jsonl").write_text("{}\n{\n"), r"selected.jsonl: changed since tunesift select"),
    (lambda o: ((o / "selected.jsonl").write_text("{}\n\n{\n"), _older(o)), r"selected.jsonl:3: invalid JSON"),
    (lambda o: ((o / "selected.jsonl").write_bytes(b"{}\n\xff\n"), _older(o)), r"selected.jsonl:2: cannot read"),
    (lambda o: (o / "manifest.json").write_text('{"method": "random"}'), r"manifest.json: not a tunesift manifest"),
    (lambda o: _edit_manifest(o, lambda m: m.update(counts=[1])), r"field 'counts' must be a JSON object, got list"),
    (lambda o: _edit_manifest(o, lambda m: m.update(inputs="x")), r"field 'inputs' must be a JSON object"),
    (lambda o: _edit_manifest(o, lambda m: m["inputs"].update(data="x")), r"field 'inputs.data' must be"),
    (lambda o: _edit_manifest(o, lambda m: m["inputs"]["data"].update(path=5)), r"'inputs.data.path' must be a str"),
    (lambda o: _edit_manifest(o, lambda m: m.update(method=["random"])), r"field 'method': unknown method"),
    (lambda o: _edit_manifest(o, lambda m: m.update(options=[])), r"field 'options' must be a JSON object"),
    (lambda o: _edit_manifest(o, lambda m: m.update(versions=[])), r"field 'versions' must be a JSON object"),
    (lambda o: _scores(o, rank=[str(i) for i in range(12)]), r"column 'rank' must hold numbers, got string"),
    (lambda o: _scores(o, rank=[None] * 12), r"column 'rank' is null in row 0 .*a (kept|scored) record"),
    (lambda o: _scores(o, id=["a"] * 12), r"column 'id' repeats 'a' \(row 1\)"),
    (lambda o: _scores(o, id=[None] + [str(i) for i in range(11)]), r"column 'id' is null in row 0"),
    (lambda o: _scores(o, kept=[1] * 6 + [0] * 6), r"column 'kept' must be true or false"),
    (lambda o: _edit_manifest(o, lambda m: m["files"].pop("scores.parquet")),
     r"field 'files' lists no sha256 for scores.parquet"),  # dropping the key skipped the check
    (lambda o: _edit_manifest(o, lambda m: m.update(surrogate={"pool": {"spearman": "0.8"}})),
     r"field 'surrogate.pool.spearman' must be a number, got str"),
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


def test_what_the_report_reads_must_be_what_select_wrote(tmp_path, capsys):
    """Another selection's selected.jsonl, another file as --data, a report.html of the user's own:
    each is refused before anything is written, instead of a page that shows wrong texts or a lost page."""
    from tunesift.api import select as api_select

    data, other = tmp_path / "d.jsonl", tmp_path / "other.jsonl"
    write_demo(data, n=20, corrupt=0.2, seed=1)
    write_demo(other, n=20, corrupt=0.2, seed=3)  # the same ids, other rows
    a, b = tmp_path / "a", tmp_path / "b"
    api_select(str(data), method="random", budget=0.5, seed=0, out=a, progress=False)
    api_select(str(data), method="random", budget=0.5, seed=7, out=b, progress=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy(b / "selected.jsonl", mixed / "selected.jsonl")
    code, _, err = run(["report", mixed], capsys)
    assert code == 2 and "selected.jsonl: changed since tunesift select wrote it" in err
    code, _, err = run(["report", a, "--data", other], capsys)
    assert code == 2 and "not the input this selection read" in err and not (a / "report.html").exists()
    code, _, err = run(["report", a, "--data", tmp_path / "nosuch.jsonl"], capsys)
    assert code == 2 and "no such file" in err
    moved = tmp_path / "moved.jsonl"
    shutil.copy(data, moved)
    assert run(["report", a, "--data", moved], capsys)[0] == 0  # the same file, moved: fine
    (b / "report.html").write_text("my own notes")
    code, _, err = run(["report", b], capsys)
    assert code == 2 and "not a tunesift report" in err and (b / "report.html").read_text() == "my own notes"
    assert run(["report", a], capsys)[0] == 0  # tunesift's own earlier page is replaced
    from tunesift.store import umask

    assert oct((a / "report.html").stat().st_mode & 0o777) == oct(0o666 & ~umask())  # shared like a plain write
    (mixed / "manifest.json").write_text(json.dumps({**json.loads((a / "manifest.json").read_text()),
                                                     "files": {"selected.jsonl": None}}))
    code, _, err = run(["report", mixed], capsys)
    assert code == 2 and "field 'files.selected.jsonl' must be a sha256 string" in err


# ----------------------------------------------------------------------------- comparison


@pytest.fixture(scope="module")
def random_out(demo, tmp_path_factory):
    """A random selection of the same demo input as donod_out (12 of 40)."""
    root = tmp_path_factory.mktemp("random")
    return _write(select(str(demo), method="random", budget=0.3, seed=5), root / "out", demo)


def compare_cards(page: str) -> dict[str, str]:
    import html

    sec = page[page.index('<section id="compare">'):]
    sec = sec[:sec.index("</section>")]
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r'<div class="card"><span>([^<]*)</span><b>([^<]*)</b></div>', sec)}


def test_comparison_view(donod_out, random_out):
    page = render_report(donod_out, compare=random_out)
    self_contained(page)
    assert sections(page) == {"summary", "compare", "plots", "kept", "dropped"}
    a = pq.read_table(donod_out / "scores.parquet").to_pandas().set_index("id")
    b = pq.read_table(random_out / "scores.parquet").to_pandas().set_index("id").loc[a.index]
    both, only_a, only_b = int((a.kept & b.kept).sum()), int((a.kept & ~b.kept).sum()), int((~a.kept & b.kept).sum())
    cards = compare_cards(page)
    assert cards["A"] == "donod (out)" and cards["B"] == "random (out)"
    assert (cards["kept by both"], cards["only A kept"], cards["only B kept"]) == (str(both), str(only_a), str(only_b))
    assert cards["both dropped"] == str(40 - both - only_a - only_b)
    assert cards["same decision"] == f"{100 * (40 - only_a - only_b) / 40:.1f}%"
    assert cards["kept overlap (Jaccard)"] == f"{100 * both / (both + only_a + only_b):.1f}%"
    assert "would both keep 3.6 records on average" in page  # 12 * 12 / 40
    sec = page[page.index('<section id="compare">'):page.index('<section id="plots">')]
    ids = row_ids(sec)
    assert len(ids) == min(10, only_a) + min(10, only_b)
    first_a, first_b = ids[:min(10, only_a)], ids[min(10, only_a):]
    assert all(a.kept[i] and not b.kept[i] for i in first_a) and all(b.kept[i] and not a.kept[i] for i in first_b)
    assert first_a == a.loc[first_a].sort_values("rank").index.tolist()  # A's first-ranked first
    whys = why_lines(sec)  # per row: why the keeper kept it, why the other dropped it
    assert re.fullmatch(r"rank \d+ of 40: .*", whys[0]) and whys[1].startswith("not drawn: position")
    assert whys[2 * len(first_a)].startswith("drawn #") and "(cut at 12)" in whys[2 * len(first_a) + 1]


def test_comparison_cli_and_errors(donod_out, random_out, nasty, capsys):
    code, stdout, err = run(["report", donod_out, random_out], capsys)
    assert code == 0, err
    assert '<section id="compare">' in (donod_out / "report.html").read_text(encoding="utf-8")
    code, stdout, err = run(["report", donod_out, nasty[2]], capsys)  # another input
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "not a selection of the same input" in err and "12 records against 40" in err


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


def rendered_page(page: str, tmp: Path) -> tuple[list[int], int, str]:
    """Open a test copy of the page in Chromium (1,280 px wide) that reports each image's decoded
    width and the page's height in the title once it has loaded; (widths, height in px, the DOM
    Chromium ended with)."""
    probe = page.replace("</body>", "<script>addEventListener('load', () => { document.title = 'IMG:' + "
                         "[...document.images].map(i => i.complete ? i.naturalWidth : -1).join(',') + "
                         "';H:' + document.documentElement.scrollHeight; });</script></body>")
    copy = tmp / "probe.html"
    copy.write_text(probe, encoding="utf-8")
    dom = chromium(["--virtual-time-budget=5000", "--window-size=1280,800", "--hide-scrollbars", "--dump-dom",
                    copy.as_uri()], tmp).stdout
    found = re.search(r"<title>IMG:([-\d,]*);H:(\d+)</title>", dom)
    assert found, dom[:500]
    return [int(w) for w in found.group(1).split(",")], int(found.group(2)), dom


def test_chromium_renders(donod_out, tmp_path):
    page = write_report(donod_out, by="meta.family").read_text(encoding="utf-8")
    n_img = len(images(page))
    widths, height, dom = rendered_page(page, tmp_path)
    assert len(widths) == n_img == 3 and min(widths) > 100
    for name in ("summary", "plots", "retention", "kept", "dropped"):
        assert f'<section id="{name}">' in dom
    # the whole page in one screenshot, however the layout moves the plots down
    height = min(height, 8000)
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", f"--window-size=1280,{height}", "--hide-scrollbars",
              (donod_out / "report.html").as_uri()], tmp_path)
    assert shot.read_bytes().startswith(PNG)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (height, 1280)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # not blank
    kept_blue = np.abs(img - [0x1F, 0x77, 0xB4]).sum(axis=2) < 30
    dropped_orange = np.abs(img - [0xFF, 0x7F, 0x0E]).sum(axis=2) < 30
    assert kept_blue.sum() > 500 and dropped_orange.sum() > 500  # the plots were drawn on screen


def test_chromium_renders_donod_delift(donod_delift_out, tmp_path):
    page = write_report(donod_delift_out).read_text(encoding="utf-8")
    widths, _, dom = rendered_page(page, tmp_path)
    assert len(widths) == len(images(page)) == 5 and min(widths) > 100
    for name in ("summary", "plots", "kept", "dropped"):
        assert f'<section id="{name}">' in dom
    assert dom.count('<td class="why">cut by DONOD') == 5
    # the records DELIFT did not pick name the kept record that covers them
    scores = pq.read_table(donod_delift_out / "scores.parquet").to_pandas().set_index("id")
    shown = re.findall(r'<td class="why">passed DONOD [^<]*covered by kept record ([\w-]+) ', dom)
    assert len(shown) == 5 and all(scores.kept[i] for i in shown)


def test_chromium_renders_comparison(donod_out, random_out, tmp_path):
    page = render_report(donod_out, compare=random_out)
    widths, _, dom = rendered_page(page, tmp_path)
    assert len(widths) == 2 and min(widths) > 100
    assert '<section id="compare">' in dom and "only A kept" in dom
    sec = dom[dom.index('<section id="compare">'):dom.index('<section id="plots">')]
    assert sec.count("<tr data-id=") >= 2 and "why A kept it" in sec and "why B dropped it" in sec


def test_a_changed_input_never_lends_its_texts_to_this_selection(nasty, tmp_path):
    """The page noted the change, then showed the changed file's texts as the dropped records'."""
    rows, data, out = nasty
    moved = tmp_path / "out"
    shutil.copytree(out, moved)
    edited = tmp_path / "rows.jsonl"
    edited.write_text("".join(json.dumps({**r, "output": "EDITED LATER"}) + "\n" for r in rows), encoding="utf-8")
    from tunesift.io.files import input_checksum

    sha = input_checksum(data)  # what select records; the fixture's manifest leaves it out
    _edit_manifest(moved, lambda m: m["inputs"]["data"].update(path=str(edited), sha256=sha))
    page = render_report(moved)
    assert "changed since the selection" in page and "EDITED LATER" not in page
    assert page.count("(input not available)") == 6
    with pytest.raises(TunesiftError, match=r"changed since the selection .*--by needs the input"):
        render_report(moved, by="source")


def test_why_lines_never_round_a_value_onto_its_threshold():
    from tunesift.report.fmt import fmt, fmt_apart

    assert fmt(0.99996) == "1" and fmt_apart(0.99996, 1.0) == ("0.99996", "1")
    assert fmt_apart(0.60206, 0.602064) == ("0.60206", "0.602064")
    assert fmt_apart(0.5, 0.5) == ("0.5", "0.5") and fmt_apart(0.25, 0.75) == ("0.25", "0.75")


def test_a_whole_decimal_is_named_by_its_digits():
    """A Parquet decimal(p, 0) value 1 was named "1.0", so --within level=1 found nothing."""
    from decimal import Decimal

    from tunesift.rowfields import category

    assert category(Decimal("1")) == category(1) == "1" and category(Decimal("1E+2")) == "100"
    assert category(Decimal("1.50")) == category(1.5) == "1.5"  # Parquet's 1.50 is JSON's 1.5
    # JSON's 1e5000 (read as a Decimal) keeps its exponent: as an int it overflowed json.dumps
    assert category(Decimal("1E+5000")) == "1e+5000" != category(Decimal("1E+5001"))


def test_category_names_are_one_per_value():
    """"3" and 3, "null" and null, a literal "(missing)" and an absent field shared one row."""
    from decimal import Decimal

    from tunesift.rowfields import MISSING, category

    values = ["3", 3, "null", None, "true", True, "(missing)", MISSING, "web", '["a"]', ["a"],
              # a nested Decimal and the text of its digits, bytes and the text of their repr (str())
              {"a": Decimal("1.5")}, {"a": "1.5"}, [b"x"], ["b'x'"], "[" * 1000]
    names = [category(v) for v in values]  # "[" * 1000 raised RecursionError (a traceback)
    assert len(set(names)) == len(values) and category("web") == "web" and category(MISSING) == "(missing)"
    assert category({"b": 1, "a": Decimal("0.10000000000000000001")}) == '{"a": 0.10000000000000000001, "b": 1}'


def test_retention_plot_reads_dollar_signs_as_text_and_says_what_it_leaves_out():
    from tunesift.report.plots import retention_plot

    rows = [(f"$\\foo{i}$ cost $5", 10, 3) for i in range(35)]
    assert retention_plot(rows, 350, 105).startswith("data:image/png;base64,")  # a ValueError before


def test_rds_drops_are_listed_lowest_ranked_first(demo, tiny_lm, tmp_path):
    """rds ranks every record, yet the page listed its dropped records "first in input order"."""
    sel = select(str(demo), method="rds", budget=0.3, lm=tiny_lm, cache_dir=str(tmp_path / "cache"))
    page = render_report(_write(sel, tmp_path / "rds", demo))
    assert "lowest-ranked" in page and "first in input order" not in page
    shown = row_ids(page)[-10:]  # the dropped table comes last
    ranks = dict(zip(sel.scores()["id"], sel.scores()["rank"]))
    assert [ranks[i] for i in shown] == sorted((ranks[i] for i in shown), reverse=True)


def test_the_report_reads_the_input_as_the_selection_did(tmp_path, capsys):
    """The report re-read the input with the default rules: a record with a read defect kept out by
    --on-error skip, or a bad line past --limit, made every --by report fail; a custom field map
    was used for the dropped records only, so kept records showed another field."""
    rows = [{"question": f"Q{i}?", "answer": f"short {i}", "rationale": f"because {i}", "src": "a" if i % 2 else "b"}
            for i in range(8)]
    rows[2]["rationale"] = ""  # an empty response under --response-field rationale: an error row
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    out = tmp_path / "o"
    code = main(["select", str(data), "--method", "random", "--budget", "3", "--limit", "8", "--prompt-field",
                 "question", "--response-field", "rationale", "--on-error", "skip", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["report", str(out), "--by", "src"]) == 0, capsys.readouterr().err
    html = (out / "report.html").read_text(encoding="utf-8")
    kept = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    for r in kept:  # kept records show the mapped response, not 'answer'
        assert r["rationale"] in html
    assert "short " not in html  # no record is shown with the unmapped field
    # a hand-edited field map is a one-line error, not a traceback
    man = json.loads((out / "manifest.json").read_text())
    man["fields"] = {"prompt_field": "question"}
    (out / "manifest.json").write_text(json.dumps(man))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "field 'fields.prompt_field' is not a field mapping" in err and err.count("\n") == 1, err


def test_a_parquet_selection_is_named_as_such_and_a_cache_inside_the_output_is_refused(tmp_path, capsys):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "o"
    assert main(["select", str(data), "--method", "random", "--budget", "2", "--out-format", "parquet",
                 "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "written with --out-format parquet or hf; select again with --out-format jsonl" in err, err
    # a score cache inside the output folder would be swept away with it: refused before any work
    code = main(["select", str(data), "--method", "delift-se", "--budget", "2", "--out", str(tmp_path / "o2"),
                 "--cache-dir", str(tmp_path / "o2" / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "is inside the output folder" in err and "keep --cache-dir elsewhere" in err, err
    assert not (tmp_path / "o2").exists()


def test_what_the_page_says_follows_what_the_method_did(demo, tiny_lm, tmp_path):
    """A review found the page telling what the method did not do: "every record had the same
    chance" for balanced-random, random --within and rds (which ranks by a score); options the run
    read (--on-error skip) folded away as unused and --epsilon shown as used by lazy greedy."""
    import html

    def page_of(sel, name):
        return html.unescape(render_report(_write(sel, tmp_path / name, demo)))

    br = page_of(select(str(demo), method="balanced-random", by="meta.family", budget=8, seed=1), "br")
    assert "balanced-random has no scores to plot: each value of meta.family got an equal share" in br
    assert "every record had the same chance" not in br
    within = select(str(demo), method="random", within="meta.corrupted=true", budget=20, seed=1)
    page = page_of(within, "within")
    assert "records matching --within meta.corrupted=true were drawn first" in page
    assert "drawn after every match: outside --within meta.corrupted=true, whose 8 matching records come first" in page
    rds = page_of(select(str(demo), method="rds", budget=8, lm=tiny_lm, cache_dir=str(tmp_path / "c")), "rds")
    assert "RDS+ score." in rds and "cosine to the pool's centroid" in rds
    lazy = page_of(select(str(demo), method="delift-se", budget=8, epsilon=0.05, on_error="skip",
                          cache_dir=str(tmp_path / "c")), "se")
    used, unused = lazy.split("options this run did not use")[0], lazy.split("options this run did not use")[1]
    assert "on_error" in used and "epsilon" in unused.split("</details>")[0]


def test_an_infinite_ranked_score_is_shown_not_a_crash(demo, tiny_lm, tmp_path):
    """exp(loss) overflowing to inf made percentiles NaN and ordinal() raise: no page at all."""
    import html

    import pyarrow as pa

    sel = select(str(demo), method="perplexity", budget=0.3, lm=tiny_lm, cache_dir=str(tmp_path / "c"))
    out = _write(sel, tmp_path / "p", demo)
    table = pq.read_table(out / "scores.parquet")
    px = table.column("perplexity").to_numpy().copy()
    worst = int(np.argmax(px))  # the highest perplexity: dropped (the easiest are kept)
    px[worst] = np.inf
    table = table.set_column(table.column_names.index("perplexity"), "perplexity", pa.array(px))
    pq.write_table(table, out / "scores.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["scores.parquet"] = hashlib.sha256((out / "scores.parquet").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    page = html.unescape(render_report(out))
    assert "rank 40 of 40 (cut at 12): perplexity inf (99th pct), harder than the kept" in page
