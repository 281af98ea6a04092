"""Execution backends for the per-record block scorers (``blocks.BLOCK_SCORERS``).

:mod:`.blocks` holds what every backend shares: scoring one block with per-record error rows
(:func:`~tunesift.backends.blocks.score_block_checked`) and the on-disk format of a block in the
content-addressed cache (:func:`~tunesift.backends.blocks.put_block`,
:func:`~tunesift.backends.blocks.get_block`). :mod:`.ray_backend` runs blocks on a Ray cluster
(optional extra ``tunesift[ray]``); it is imported only when asked for.
"""

from .blocks import BlockResult, get_block, put_block, record_errors, score_block_checked

__all__ = ["BlockResult", "get_block", "put_block", "record_errors", "score_block_checked"]
