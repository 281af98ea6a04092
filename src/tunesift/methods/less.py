"""LESS (docs/baselines.md): cosine of each record's Adam-preconditioned LoRA gradient (after a
short warm-up on 5% of the pool) to the target set's mean gradient; highest first."""

from __future__ import annotations

import numpy as np

from ..render import renderer_for
from .registry import Job, Picked


def run_less(job: Job) -> Picked:
    from ..scoring.less import less_scores

    opt = job.opt
    cols = less_scores(job.lm, job.records, job.other, dim=opt.less_dim, seed=opt.seed, cache_dir=opt.cache_dir,
                       token_budget=opt.token_budget, renderer=renderer_for(job.lm, opt.template, opt.max_length),
                       progress=job.progress)
    return Picked(cols, np.argsort(np.where(np.isnan(cols["less"]), np.inf, -cols["less"]), kind="stable"))
