"""The synthetic demo: data with planted bad records, and the ``make demo`` walk-through.

Kept out of the library package ``tunesift`` (it is example data, not selection code) but
installed beside it, so ``tunesift demo-data`` and ``make demo`` work from any install:

* :mod:`tunesift_demo.data`: :func:`generate_demo` / :func:`write_demo`, the demo set;
* ``python -m tunesift_demo`` (:mod:`tunesift_demo.__main__`): what ``make demo`` runs.
"""

from tunesift_demo.data import FAMILIES, generate_demo, write_demo

__all__ = ["FAMILIES", "generate_demo", "write_demo"]
