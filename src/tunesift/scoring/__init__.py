"""Scoring kernels: DELIFT utility (``utility``), teacher-forced log-probs (``logprobs``),
sentence embeddings (``embedding``) and DONOD (``donod``).

Import the submodules directly; this package imports nothing so that loading one scorer does
not pull in the others' dependencies.
"""
