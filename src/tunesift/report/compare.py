"""Two selections of the same input side by side (``tunesift report A B``).

For outputs ``A`` and ``B`` (same record ids): how many records both kept, only one kept or both
dropped; the agreement (share of records with the same decision) and the overlap of the kept
sets next to what two random selections of those sizes would share on average
(``k_A * k_B / n``); and the records one kept and the other dropped, with both why lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TunesiftError
from .fmt import clip
from .read import Input, Output
from .why import TOP, Why

__all__ = ["comparison", "kept_agreement"]


def _label(res: Output) -> str:
    return f"{res.method} ({res.folder.name})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x else "—"  # NaN: neither selection keeps anything


def _sha(res: Output) -> str | None:
    inputs = res.manifest.get("inputs") or {}
    data = inputs.get("data") if isinstance(inputs, dict) else None
    return data.get("sha256") if isinstance(data, dict) else None


def kept_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Counts and agreement of two kept masks (n,) over the same records: ``both``, ``only_a``,
    ``only_b``, ``neither``, ``agreement`` = (both + neither) / n, ``jaccard`` = both / |A or B|,
    ``chance`` = k_A k_B / n (the expected ``both`` of two independent uniform random selections
    of those sizes)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    both, either = int((a & b).sum()), int((a | b).sum())
    return {"both": both, "only_a": int((a & ~b).sum()), "only_b": int((~a & b).sum()),
            "neither": n - either, "agreement": (n - either + both) / n if n else float("nan"),
            "jaccard": both / either if either else float("nan"),
            "chance": int(a.sum()) * int(b.sum()) / n if n else float("nan")}


def comparison(a: Output, b: Output, inp: Input) -> dict[str, Any]:
    """The comparison section's data for outputs ``a`` (the report's own) and ``b``; raises
    :class:`TunesiftError` when ``b`` is not a selection of the same records."""
    pos_b = {rid: j for j, rid in enumerate(b.ids)}
    missing = [rid for rid in a.ids if rid not in pos_b]
    if missing or len(b.ids) != len(a.ids):
        raise TunesiftError(
            f"{b.folder}: not a selection of the same input as {a.folder} ({len(b.ids)} records against "
            f"{len(a.ids)}" + (f"; record '{missing[0]}' is missing" if missing else "") + "); compare two "
            "outputs of one input file")
    to_b = np.array([pos_b[rid] for rid in a.ids], dtype=np.int64)  # a's row -> b's row
    kb = b.kept[to_b]  # b's decisions in a's row order
    stats = kept_agreement(a.kept, kb)
    notes = []
    if _sha(a) and _sha(b) and _sha(a) != _sha(b):
        notes.append("the two manifests record different input checksums (sha256): the input changed "
                     "between the selections, though the record ids are the same")
    why_a, why_b = Why(a), Why(b)

    def rows(mask: np.ndarray, rank: np.ndarray, a_kept: bool) -> list[dict[str, Any]]:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(rank[idx], kind="stable")][:TOP]
        out = []
        for i in idx:
            rid = a.ids[i]
            prompt = (inp.texts or {}).get(rid, (None, None))[0]
            wa, wb = why_a(int(i)), why_b(int(to_b[i]))
            out.append({"id": rid, "prompt": None if prompt is None else clip(prompt, 120),
                        "why_kept": wa if a_kept else wb, "why_dropped": wb if a_kept else wa})
        return out

    la, lb = _label(a), _label(b)
    return {
        "a": la, "b": lb, "notes": notes,
        "cards": [("A", la), ("B", lb), ("kept by both", str(stats["both"])),
                  ("only A kept", str(stats["only_a"])), ("only B kept", str(stats["only_b"])),
                  ("both dropped", str(stats["neither"])), ("same decision", _pct(stats["agreement"])),
                  ("kept overlap (Jaccard)", _pct(stats["jaccard"]))],
        "chance": (f"Two random selections of {a.k} and {b.k} of these {a.n} records would both keep "
                   f"{stats['chance']:.1f} records on average; these two both kept {stats['both']}."),
        "only_a": rows(a.kept & ~kb, a.cols["rank"], True),
        "only_b": rows(~a.kept & kb, b.cols["rank"][to_b], False),
        "n_only_a": stats["only_a"], "n_only_b": stats["only_b"],
    }
