"""The "why" line of each record shown, and which records are shown.

:class:`Why` turns a record's scores into one sentence that says only what the scores show
(ranks, percentiles, gains), per method. :func:`kept_order` and :func:`dropped_order` choose the
records listed in the kept and dropped tables.
"""

from __future__ import annotations

import numpy as np

from .derived import cut_value, higher_first, prefilter
from .fmt import clip, fmt, fmt_apart, ordinal, percentiles
from .hints import GREEDY, RANKED, SELECTIT_PROMPTS
from .read import Output

__all__ = ["TOP", "Why", "dropped_order", "kept_order"]

TOP = 10  # records shown per table


class Why:
    """One-line explanations of why a record was kept or dropped, from its scores."""

    def __init__(self, res: Output):
        self.res, c = res, res.cols
        self.n, self.k = res.n - int(res.unscored.sum()), res.k  # ranks are among the scored records
        self.opts = res.manifest.get("options") or {}
        parts = self.opts.get("partitions")
        self.greedi = isinstance(parts, int) and not isinstance(parts, bool) and parts > 1  # GreeDi picks
        self.seed = self.opts.get("seed")
        if "don" in c and "nod" in c:
            self.pd, self.pn = percentiles(c["don"]), percentiles(c["nod"])
        if res.method == "donod":
            self.pc = percentiles(c["closeness"])
            self.close_cut = cut_value(res, c["closeness"])
        self.cover = self._coverage_percentiles(res)
        self._pos: dict[str, int] | None = None  # id -> row, built when a covering record is named
        if res.method in GREEDY:
            g = c["gain"][c["order"] > 0]
            self.total = float(np.nansum(g))
            self.min_gain = float(np.nanmin(g)) if g.size else float("nan")
        if "helpfulness" in c:
            self.ph = percentiles(c["helpfulness"])
        if res.method == "donod+delift":
            from ..selection.topsis import rank_desc

            self.pre, _ = prefilter(res)
            self.m = int(self.pre.sum())
            self.crank = rank_desc(c["closeness"])
        if res.method in RANKED:
            self.spec = RANKED[res.method]
            self.x = c[self.spec.column]
            self.px = percentiles(self.x)
            self.hi = higher_first(res)
            self.cut = cut_value(res, self.x)

    def __call__(self, i: int) -> str:
        if self.res.errors and self.res.errors[i] is not None:
            return f"not scored: {clip(self.res.errors[i], 160)}"
        name = "_" + self.res.method.replace("-", "_").replace("+", "_")
        if self.res.method in RANKED and not hasattr(self, name):
            name = "_ranked"
        if not hasattr(self, name):  # a method without its own wording: its rank and the cut
            return self._head(i) + ("kept" if self.res.kept[i] else "not kept")
        return getattr(self, name)(i)

    def _random(self, i: int) -> str:
        r = int(self.res.cols["rank"][i])
        within = self.res.cols.get("within")
        if within is not None and self.opts.get("within"):  # matches first, in the permutation's order
            if not within[i]:
                how = "drawn after every match" if self.res.kept[i] else "not drawn"
                return (f"{how}: outside --within {self.opts['within']}, whose {int(np.nansum(within))} matching "
                        f"records come first (position {r} of {self.n})")
            if self.res.kept[i]:
                return f"drawn #{r} among the records matching --within {self.opts['within']} (seed {self.seed})"
            return (f"not drawn: matches --within {self.opts['within']}, position {r} of {self.n} in the seeded "
                    f"order, past the budget of {self.k}")
        if self.res.kept[i]:
            return f"drawn #{r} by the seeded sample (seed {self.seed})"
        return f"not drawn: position {r} of {self.n} in the seeded permutation, past the budget of {self.k}"

    def _don_nod(self, i: int) -> tuple[str, str]:
        don, pd, pn = self.res.cols["don"][i], self.pd[i], self.pn[i]
        if don < 0:
            d = f"negative DON ({ordinal(pd)} pct)"
        else:
            d = f"{'high' if pd >= 67 else 'low' if pd < 33 else 'middling'} DON ({ordinal(pd)} pct)"
        nd = f"{'high' if pn >= 67 else 'low' if pn < 33 else 'middling'} NOD ({ordinal(pn)} pct)"
        return d, nd

    def _donod(self, i: int) -> str:
        """Rank, DON and NOD percentiles and the closeness against the cut: what the scores show,
        no diagnosis (a low DON or a high NOD is not by itself proof of a bad record)."""
        c = self.res.cols
        d, nd = self._don_nod(i)
        r = int(c["rank"][i])
        close = c["closeness"][i]
        line = f"rank {r} of {self.n}: " if self.res.kept[i] else f"rank {r} of {self.n} (cut at {self.k}): "
        if self.res.kept[i] or not np.isfinite(self.close_cut):
            return line + f"{d}, {nd}; closeness {fmt(close)} ({ordinal(self.pc[i])} pct)"
        mine, cut = fmt_apart(close, self.close_cut)
        line += f"{d}, {nd}; closeness {mine} ({ordinal(self.pc[i])} pct)"
        if close == self.close_cut:  # duplicates score alike: one kept, the other after it
            return line + f", tied with the last kept ({cut}), ranked after it in input order"
        return line + f", below the last kept ({cut})"

    def _picked(self, i: int) -> str:
        c = self.res.cols
        o, g = int(c["order"][i]), float(c["gain"][i])
        share = f" ({100 * g / self.total:.1f}% of the objective)" if self.total else ""
        if self.greedi:  # gains on the union of the parts' picks
            return f"picked #{o}: gain {fmt(g)} on the union of the partitions' picks{share}"
        what = {"task": "toward the target set", "continual": "beyond the existing data"}.get(self.opts.get("stage"),
                                                                                          "of the pool")
        return f"picked #{o}: covers gain {fmt(g)} {what}{share}"

    @staticmethod
    def _coverage_percentiles(res: Output) -> np.ndarray | None:
        """Percentile of each not-picked record's coverage among the not-picked ones (None when the
        output has no covered_by / coverage columns)."""
        if not res.covered_by or "coverage" not in res.cols:
            return None
        cov = np.where(res.kept, np.nan, res.cols["coverage"])
        return percentiles(cov)

    def _covered(self, i: int) -> str | None:
        """Which kept record covers record ``i`` and by how much, or None when not recorded."""
        if self.cover is None:
            return None
        c = self.res.cols
        by, cov = self.res.covered_by[i], c["coverage"][i]
        if not np.isfinite(cov):
            return None
        if by is None:
            return ("no kept record covers it (similarity 0 to every pick: none of them helps it, or none "
                    "was among its scored examples)")
        if self._pos is None:
            self._pos = {rid: j for j, rid in enumerate(self.res.ids)}
        j = self._pos.get(by, -1)
        pick = f" (pick #{int(c['order'][j])})" if j >= 0 and c["order"][j] > 0 else ""
        return (f"covered by kept record {by}{pick} at similarity {fmt(cov)}, "
                f"{ordinal(self.cover[i])} pct of the not picked")

    def _not_picked(self, i: int, among: str = "") -> str:
        c = self.res.cols
        covered = self._covered(i)
        if covered is None:  # an output without covered_by (older, or GreeDi): the old sentence
            line = f"not picked: its best coverage was already provided by the {self.k} picks"
            if "helpfulness" in c:
                h = c["helpfulness"][i]
                line += (f" (helpfulness {fmt(h)}, {ordinal(self.ph[i])} pct{among})" if np.isfinite(h)
                         else " (never scored as an example)")
            return line
        line = "not picked: " + covered
        if "helpfulness" in c:
            h = c["helpfulness"][i]
            line += (f"; helpfulness {fmt(h)}, {ordinal(self.ph[i])} pct{among}" if np.isfinite(h)
                     else "; never scored as an example")
        return line

    def _delift(self, i: int) -> str:
        if self.res.kept[i]:
            line = self._picked(i)
            if (int(self.res.cols["order"][i]) == 1 and self.opts.get("stage", "instruction") == "instruction"
                    and self.opts.get("optimizer", "lazy") != "stochastic" and not self.greedi):
                line += ", the record that best represents the others on its own"  # the whole greedy's first
            return line
        return self._not_picked(i)

    _delift_se = _delift

    def _donod_delift(self, i: int) -> str:
        where = f"closeness rank {int(self.crank[i])} of {self.n}"
        if not self.pre[i]:
            d, nd = self._don_nod(i)
            return f"cut by DONOD's prefilter ({where}; the top {self.m} went on to DELIFT): {d}, {nd}"
        if self.res.kept[i]:
            return f"{self._picked(i)}; passed DONOD at {where}"
        return f"passed DONOD at {where}, then {self._not_picked(i, f' of the {self.m} passed')}"

    def _head(self, i: int) -> str:
        r = self.res.cols["rank"][i]
        if not np.isfinite(r):
            return "not ranked: "
        cut = "" if self.res.kept[i] else f" (cut at {self.k})"
        return f"rank {int(r)} of {self.n}{cut}: "

    def _versus_cut(self, i: int) -> str:
        """How a dropped record's score compares with the cut."""
        if self.x[i] == self.cut:
            return f"tied with the cut ({fmt(self.cut)}), ranked after it in input order"
        low_cmp, high_cmp = self.spec.words[1], self.spec.words[3]
        return f"{low_cmp if self.hi else high_cmp} than the kept (cut at {fmt_apart(self.x[i], self.cut)[1]})"

    def _ranked(self, i: int) -> str:
        spec, v = self.spec, self.x[i]
        if np.isnan(v):
            return self._head(i) + f"no {spec.label} score, ranked last"
        shown = fmt(v) if self.res.kept[i] else fmt_apart(v, self.cut)[0]
        line = self._head(i) + f"{spec.label} {shown} ({ordinal(self.px[i])} pct), "
        if self.res.kept[i]:
            return line + f"among the {spec.words[2] if self.hi else spec.words[0]}"
        return line + self._versus_cut(i)

    def _ifd(self, i: int) -> str:
        v = self.x[i]
        if np.isnan(v):
            return self._head(i) + "no IFD score, ranked last"
        val = "inf" if np.isinf(v) else fmt_apart(v, 1.0)[0]  # never "IFD 1 < 1"
        below = int((self.x < 1).sum())
        if v >= 1:
            if self.res.kept[i]:
                return (self._head(i) + f"IFD {val} >= 1, kept only because just {below} records have "
                        f"IFD < 1, fewer than the budget of {self.k}")
            return f"dropped first: IFD {val} >= 1, the prompt does not help predict the response"
        if self.res.kept[i]:
            if below > self.k:
                return self._head(i) + f"IFD {val}, the prompt helps but the response is still hard to predict"
            return (self._head(i) + f"IFD {val} < 1, the prompt helps predict the response (all {below} "
                    "records with IFD < 1 fit the budget)")
        mine, cut = fmt_apart(v, self.cut)
        if v == self.cut:
            return self._head(i) + f"IFD {mine}, tied with the cut, ranked after it in input order"
        return (self._head(i) + f"IFD {mine}, below the cut ({cut}): the prompt makes the "
                "response easy to predict, less left to learn than in the kept")

    def _selectit(self, i: int) -> str:
        c = self.res.cols
        v, mean, std = self.x[i], c["selectit_mean"][i], c["selectit_std"][i]
        if np.isnan(v):
            return self._head(i) + "no rating, ranked last"
        # the mean of SelectIT's token-level scores, 0-5 (certainty-weighted), not a 1-5 rating
        line = (self._head(i) + f"self-rating score {mean:.2f} of 5 on average over {SELECTIT_PROMPTS} prompts "
                f"(std {std:.2f}): selectit {fmt(v)} ({ordinal(self.px[i])} pct)")
        return line if self.res.kept[i] else line + ", " + self._versus_cut(i)


def dropped_order(res: Output) -> tuple[np.ndarray, str]:
    """The dropped records shown (at most TOP) and how they were chosen; error rows come last."""
    idx, what = _dropped_scored(res)
    bad = np.flatnonzero(res.unscored)
    if bad.size and len(idx) < TOP:
        bad = bad[:TOP - len(idx)]
        idx = np.concatenate([idx, bad]).astype(int)
        what += f", then {len(bad)} that could not be scored"
    return idx, what


def _dropped_scored(res: Output) -> tuple[np.ndarray, str]:
    idx = np.flatnonzero(~res.kept & ~res.unscored)
    c = res.cols
    if res.method in ("random", "donod") or res.method in RANKED:
        idx = idx[np.argsort(-c["rank"][idx], kind="stable")]
        if res.method == "random":
            what = "last in the seeded permutation"
        elif res.method == "donod":
            what = "lowest-ranked (lowest closeness)"
        elif res.method == "ifd":
            above = int((c["ifd"][idx[:TOP]] >= 1).sum())
            what = ("lowest-ranked: IFD >= 1 (dropped first), the highest first" if above == len(idx[:TOP])
                    else "lowest-ranked: IFD >= 1 first, then the lowest IFD below 1" if above
                    else "lowest-ranked (lowest IFD)")
        else:
            spec = RANKED[res.method]
            what = f"lowest-ranked ({'lowest' if higher_first(res) else 'highest'} {spec.label})"
        return idx[:TOP], what
    if res.method == "donod+delift":
        pre, _ = prefilter(res)
        cut = idx[~pre[idx]]
        cut = cut[np.argsort(np.nan_to_num(c["closeness"][cut], nan=np.inf), kind="stable")]
        passed = idx[pre[idx]]
        h = c["helpfulness"][passed] if "helpfulness" in c else np.full(len(passed), np.nan)
        passed = passed[np.argsort(np.where(np.isfinite(h), -h, np.inf), kind="stable")]
        n_cut = min(len(cut), max(TOP // 2, TOP - len(passed)))
        n_passed = min(len(passed), TOP - n_cut)
        parts = ([f"{n_cut} cut by DONOD (lowest closeness first)"] if n_cut else []) + \
            ([f"{n_passed} that passed it but DELIFT did not pick (most helpful first)"] if n_passed else [])
        what = " and ".join(parts) or "none"
        return np.concatenate([cut[:n_cut], passed[:n_passed]]).astype(int), what
    if "helpfulness" in c:
        h = c["helpfulness"][idx]
        idx = idx[np.argsort(np.where(np.isfinite(h), -h, np.inf), kind="stable")]
        return idx[:TOP], "most helpful on average, yet not picked (redundant with the picks)"
    if "rank" in c and len(idx) and np.isfinite(c["rank"][idx]).all() and (c["rank"][idx] > 0).all():
        # a method that ranks every record (rds): the ones nearest the cut are not what was dropped
        # first; the lowest-ranked are
        idx = idx[np.argsort(-c["rank"][idx], kind="stable")]
        return idx[:TOP], "last in the seeded draw" if res.method == "balanced-random" else "lowest-ranked"
    if "coverage" in c and np.isfinite(c["coverage"][idx]).any():  # delift-se: how well the picks cover each
        cov = c["coverage"][idx]
        idx = idx[np.argsort(np.where(np.isfinite(cov), -cov, np.inf), kind="stable")]
        return idx[:TOP], "best covered by the picks first (the most redundant with them)"
    return idx[:TOP], "first in input order (no per-record score for records not picked)"


def kept_order(res: Output) -> np.ndarray:
    idx = np.flatnonzero(res.kept)
    return idx[np.argsort(res.cols["rank"][idx], kind="stable")][:TOP]
