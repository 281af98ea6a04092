"""tunesift: model-aware data selection for instruction fine-tuning (DELIFT, DONOD).

>>> import tunesift
>>> sel = tunesift.select(df, method="donod", budget=0.3)   # a path, list of dicts, DataFrame or Dataset
>>> sel.subset          # the kept rows, in input order, in the input's type
>>> sel.indices, sel.mask
>>> sel.scores()        # one row per record: its scores, rank and kept flag (sel.table(): Arrow)
>>> sel.save("out/")    # the files `tunesift select --out out/` writes

``select`` and ``Selection`` live in :mod:`tunesift.api`; they are imported on first use, so
that ``import tunesift`` stays light (docs/python.md).
"""

from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .api import Selection, select

__all__ = ["Selection", "select", "__version__"]


def __getattr__(name: str):
    if name in ("select", "Selection"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunesift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"select", "Selection"})
