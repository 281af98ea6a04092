"""``tunesift kernel``: compute DELIFT's utility kernel and write it for inspection and reuse.

Rows are targets (the pool), columns are in-context examples (the pool again, or ``--examples``).
The folder holds::

    utility.npy      dense (n_t, n_e) float64 UF, NaN where not computed (the excluded diagonal)
    utility.npz      or, with --knn, the scipy CSR (n_t, n_e) of UF on the kNN pattern
    labelled.npz     --utility learned: CSR bool (n_t, n_e), True where the value is exact
    base.npy         (n_t,) the targets' no-example distance d0 (UF = d0 - d(example))
    rows.txt         target ids, one per line (a JSON string if the id holds a line break); cols.txt:
                     example ids
    kernel.json      options, shape, pairs, the surrogate's fidelity, versions, the inputs read
                     (``inputs``: each file's path and SHA-256 as read; ``fields``: the field map),
                     and the SHA-256 of every other file (``files``: a rerun into the folder replaces it only when
                     they still match)

``np.load("utility.npy")`` / ``scipy.sparse.load_npz("utility.npz")`` read it back. The kernel is
the same one ``select --method delift`` computes with the same options (and shares its cache).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import OptionError
from .folders import digests, publish
from .io.json_values import json_line, utf8_text
from .methods.catalogue import get_method
from .methods.options import Options, options_dict
from .methods.utility_kernels import knn_candidates, one_kernel, twin_groups
from .outputs import check_cache, check_output_folder
from .pipeline import as_records, describe_model, type_label, versions, with_token_budget
from .render import renderer_for
from .scoring.kernel_job import is_same

log = logging.getLogger("tunesift")

KERNEL_FILES = frozenset({"utility.npy", "utility.npz", "labelled.npz", "base.npy", "rows.txt", "cols.txt",
                          "kernel.json"})
KERNEL_OPTIONS = ("model", "device", "dtype", "template", "max_length", "token_budget", "cache_dir", "distance",
                  "knn", "utility", "label_fraction", "labels", "keep_diagonal", "seed", "ann")


def export_kernel(data, out: str | Path, *, examples=None, fields=None, lm=None, progress=None,
                  input_paths: list[str | Path] = (), **options) -> Path:
    """Compute the UF kernel of ``data`` (targets) x ``examples`` (default: ``data``) and write it
    to ``out`` as one unit (see the module docstring). ``options``: the kernel's options
    (:data:`KERNEL_OPTIONS`). Returns the folder."""
    unknown = sorted(set(options) - set(KERNEL_OPTIONS))
    if unknown:
        raise OptionError(f"tunesift kernel does not take {', '.join(unknown)}")
    opt = Options(method="delift", **options)
    opt.validate()
    get_method("delift").warn_unread(opt)  # e.g. --label-fraction without --utility learned
    folder = check_output_folder(out, list(input_paths), own=KERNEL_FILES, manifest="kernel.json", unlisted={})
    check_cache(out, opt.cache_dir)  # before the model loads
    # source "<data>": no "--on-error skip" hint, an option kernel does not have
    sums: dict[str, dict] = {"data": {}, "examples": {}}  # each file's sha256, taken as it was read
    targets = as_records(data, fields, source="<data>", digest=sums["data"])
    cols = targets if examples is None else as_records(examples, fields, source="<examples>",
                                                        digest=sums["examples"])
    # the pool given again as --examples is the pool: its diagonal and repeats are left out alike
    # (the same records in the same order, not ids alone: two files numbered 0..n-1 share their ids)
    same = examples is None or is_same(targets, cols)
    if same:
        cols = targets
    elif opt.keep_diagonal:
        log.warning("--keep-diagonal is read only when the examples are the pool itself; --examples holds "
                    "other records, whose pairs are all scored anyway")
    if lm is None:
        from .models import load_lm

        lm = load_lm(opt.model, device=opt.device, dtype=opt.dtype)
    renderer = renderer_for(lm, opt.template, opt.max_length)
    opt = with_token_budget(opt, lm)
    e_t = e_e = None
    if opt.knn or opt.utility == "learned":
        from .scoring.embedding import embed_precision, embed_records

        precision = embed_precision(opt.dtype, opt.device)
        e_t = embed_records(targets, cache_dir=opt.cache_dir, device=opt.device, precision=precision)
        e_e = e_t if same else embed_records(cols, cache_dir=opt.cache_dir, device=opt.device, precision=precision)
    # repeated records are left out as select leaves them out (their pairs would copy the answer)
    twins = twin_groups(targets) if same and not opt.keep_diagonal else None
    pattern = knn_candidates(e_t, e_e, opt, same=same, twins=twins)
    kern = one_kernel(lm, renderer, targets, cols, opt, same=same, pattern=pattern, e_t=e_t, e_e=e_e,
                      progress=progress, label="pool x pool" if same else "pool x examples", twins=twins)
    meta = {"tool": "tunesift", "kind": "delift-utility", "rows": "targets", "cols": "in-context examples",
            "shape": list(np.shape(kern.values)), "sparse": sp.issparse(kern.values),
            "pairs": int(kern.values.nnz) if sp.issparse(kern.values) else int(np.isfinite(kern.values).sum()),
            "options": {k: v for k, v in options_dict(opt).items() if k in KERNEL_OPTIONS},
            # what the rows and columns were read from: rows.txt/cols.txt hold ids, which another
            # file numbered the same way shares
            "inputs": {name: _input(given, sums[name]) for name, given in (("data", data), ("examples", examples))
                       if given is not None},
            "fields": {k: v for k, v in vars(fields).items() if v is not None} if fields is not None else {},
            "model": describe_model(lm), "template": renderer.fmt.name,
            "surrogate": kern.report, "versions": versions()}
    def fill(tmp: Path) -> None:
        if sp.issparse(kern.values):
            sp.save_npz(tmp / "utility.npz", kern.values.tocsr())
        else:
            np.save(tmp / "utility.npy", np.asarray(kern.values, dtype=np.float64))
        if kern.labelled is not None:
            sp.save_npz(tmp / "labelled.npz", kern.labelled.tocsr())
        np.save(tmp / "base.npy", np.asarray(kern.base, dtype=np.float64))
        (tmp / "rows.txt").write_text(id_lines(targets), encoding="utf-8")
        (tmp / "cols.txt").write_text(id_lines(cols), encoding="utf-8")
        meta["files"] = digests(tmp)  # a rerun replaces only these
        (tmp / "kernel.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")

    # checked again at write time: a file added to OUT while the kernel was computed is not ours to remove
    folder = check_output_folder(out, list(input_paths), own=KERNEL_FILES, manifest="kernel.json", unlisted={})
    publish(folder, fill, "the kernel", out)
    return folder


def _input(given, digest: dict) -> dict:
    """kernel.json's ``inputs`` entry of one set: a file's absolute path and SHA-256, or what kind
    of rows were given in memory."""
    if isinstance(given, (str, Path)):
        return {"path": str(Path(given).resolve()), "sha256": digest.get("sha256")}
    return {"in_memory": type_label(given)}


LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines splits at


def id_lines(records) -> str:
    """One id per line; an id holding a line break of any kind, starting with a quote, or not valid
    Unicode (a lone surrogate, which UTF-8 cannot hold) is written as a JSON string
    (:func:`~tunesift.io.json_values.json_line`: one line, UTF-8), so every line is one id."""
    out = []
    for r in records:
        rid = str(r.id)
        plain = rid == utf8_text(rid) and not rid.startswith('"') and not LINE_BREAKS.intersection(rid)
        out.append(rid if plain else json_line(rid))
    return "".join(x + "\n" for x in out)
