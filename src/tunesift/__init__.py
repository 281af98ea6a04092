"""tunesift: model-aware data selection for instruction fine-tuning (DELIFT, DONOD).

>>> from tunesift import select
>>> sel = select("data.jsonl", method="donod", budget=0.3)
>>> sel.subset        # kept rows, untouched, in input order
>>> sel.to_pandas()   # one row per input record with its scores and kept flag
"""

from .version import __version__


def select(data, **options):
    """Select the records worth training on; see :func:`tunesift.pipeline.select`."""
    from .pipeline import select as _select

    return _select(data, **options)


__all__ = ["select", "__version__"]
