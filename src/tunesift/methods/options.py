"""Every option of a selection, declared once.

Each field of :class:`Options` carries its CLI help, the check of its value and the group (method)
that reads it in ``field.metadata``; the ``select`` command's flags, docs/options.md (generated
from the CLI), the manifest (``options_dict``) and the report's option table are all derived from
these declarations, so an option is added in one place. Checks that relate two options (a stage a
method does not support, GreeDi partitions on the wrong method) are made by the method's registry
entry (:mod:`tunesift.methods.registry`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import OptionError
from ..render import TEMPLATES
from ..scoring.donod import REDUCTIONS
from ..scoring.embedding import ANN_METHODS
from .registry import STAGES

Check = Callable[[Any], "str | None"]  # the error message, or None when the value is fine

DISTANCES = ("rmse", "pmi")


def one_of(what: str, choices: tuple[str, ...], use: str | None = None) -> Check:
    return lambda v: None if v in choices else f"unknown {what} '{v}': use {use or ', '.join(choices)}"


def at_least(name: str, low: int, note: str = "") -> Check:
    return lambda v: None if v >= low else f"{name} must be at least {low}{note}, got {v}"


def finite_at_least_zero(name: str) -> Check:
    return lambda v: None if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 else \
        f"{name} must be a finite number >= 0, got {v}"


def _seed(v) -> str | None:
    ok = not isinstance(v, bool) and isinstance(v, int) and v >= 0  # numpy integers: made int by __post_init__
    return None if ok else f"seed must be an integer >= 0, got {v!r}"


def _records(flag: str) -> Check:
    return lambda v: None if v is None or (not isinstance(v, bool) and isinstance(v, int) and v >= 1) else \
        f"--{flag} must be a whole number of records, at least 1; got {v!r}"


def parse_weights(text: str) -> tuple[float, ...]:
    """``--weights a,b`` as numbers (their range: :func:`weights_problem`); a one-line OptionError
    for text that is not numbers."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise OptionError(f"weights must be two numbers like 0.5,0.5, got '{text}'") from None


def weights_problem(w) -> str | None:
    ok = (len(w) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in w)
          and min(w) >= 0 and sum(w) > 0)
    return None if ok else f"weights must be two finite non-negative numbers, not both 0, got {','.join(map(str, w))}"


def _device(v: str) -> str | None:
    ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else f"unknown device '{v}': use auto, cpu, cuda or cuda:N"


def _method(v: str) -> str | None:
    """Why ``v`` names no method (the registry's message), or None."""
    from .catalogue import get_method

    try:
        get_method(v)
    except OptionError as exc:
        return str(exc)
    return None


def _eta(v) -> str | None:
    return None if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else f"eta must be a positive number, got {v}"


def _within(value: str | None) -> str | None:
    """Why ``--within`` is malformed (it must read FIELD=VALUE with a field name), or None."""
    if value is None:
        return None
    name, eq, _ = value.partition("=")
    if not eq or not name.strip():
        return f"within must read FIELD=VALUE (e.g. meta.source=gsm8k), got '{value}'"
    return None


_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text",
          "tuple[float, float]": "a pair of numbers"}


def type_problem(name: str, value: Any, annotation: str) -> str | None:
    """Why ``value`` does not have the field's declared type (``annotation``, e.g. ``int | None``),
    or None. The CLI parses its flags to these types; the Python API and recipes pass values as
    given, so a knn of "5" or a clip_negative of "no" is a one-line OptionError, not a TypeError
    or a silently truthy string. An int is a float's value too; a bool is no number."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        return None if "None" in kinds else f"{name} must be {_KINDS.get(kinds[0], kinds[0])}, got None"
    for kind in kinds:
        if kind == "bool" and isinstance(value, bool):
            return None
        if isinstance(value, bool):
            continue
        if (kind == "int" and isinstance(value, int)) or (kind == "float" and isinstance(value, (int, float))) \
                or (kind == "str" and isinstance(value, str)):
            return None
        if kind.startswith("tuple[") and isinstance(value, (tuple, list)) and len(value) == kind.count(",") + 1:
            return None
    want = " or ".join(_KINDS.get(k, k) for k in kinds if k != "None")
    return f"{name} must be {want}, got {value!r}"


def field_problem(name: str, value: Any, *, cli: bool = False) -> str | None:
    """Why ``value`` is not a valid value of option ``name`` on its own (its type, then its own
    check), or None; None too for a name that is no option. What :meth:`Options.validate` checks
    field by field, for callers that know where the value came from (a recipe's file and line).
    ``cli``: ``value`` is the flag's parsed value, checked only where that is the field's own
    type (not ``weights``' ``a,b`` text or ``cache_dir``'s path)."""
    f = {f.name: f for f in fields(Options)}.get(name)
    if f is None or name == "budget" or (cli and f.metadata.get("cli")):  # the budget: parse_budget's
        return None
    check = f.metadata.get("check")
    return type_problem(name.replace("_", "-"), value, str(f.type)) or (check(value) if check else None)


def opt(default, help: str, *, group: str = "general", check: Check | None = None, cli: str | None = None):
    """A dataclass field holding its own documentation and check. ``cli``: how the flag is
    written when it is not the field's own type (``budget``: text; ``weights``: ``a,b``)."""
    return field(default=default, metadata={"help": help, "group": group, "check": check, "cli": cli})


@dataclass
class Options:
    """Every option of a selection. Defaults are the documented ones (docs/options.md)."""

    method: str = opt("donod", "The selection method (see the table in docs/methods.md).", check=_method)
    budget: float | int | str = opt(0.3, "Fraction in (0, 1] (e.g. 0.3, 1.0) or a count (e.g. 300).", cli="text")
    seed: int = opt(0, "Seed for random and balanced-random selection, stochastic greedy, --sample, LESS's warm-up "
                    "(its sample and training) and projection, the labelled pairs of --utility learned, the "
                    "IVF kNN index (--ann) and GreeDi's partitions.", check=_seed)
    # the part of the input selected from (io.records.read_records documents both)
    limit: int | None = opt(None, "Select from the first N records only; the rest of the input is not read.",
                            group="input", check=_records("limit"))
    sample: int | None = opt(None, "Select from a seeded random sample of N records (--seed), in input order.",
                             group="input", check=_records("sample"))
    # the model
    model: str = opt("default", "default (SmolLM2-135M-Instruct), gemma3-270m, a model folder, a LoRA adapter "
                     "folder from tunesift finetune (merged into its base), a .gguf or an HF id in the local "
                     "cache.", group="model")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N", group="model", check=_device)
    dtype: str = opt("auto", "auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16 | float16; "
                     "DELIFT's sentence encoder runs in bf16 too when the model does", group="model",
                     check=one_of("dtype", ("auto", "float32", "bfloat16", "float16"),
                                  "auto, float32, bfloat16 or float16"))
    template: str = opt("auto", "auto | chat | plain | paper (the DELIFT reference code's prompt format): how "
                        "records are rendered for the model; auto: the one a tunesift finetune model was trained with, "
                        "else chat where the tokenizer has a chat template.", group="model",
                        check=one_of("template", TEMPLATES, "auto, chat, plain or paper"))
    max_length: int = opt(2048, "Longest scored sequence in tokens; prompts/examples are cut, responses never.",
                          group="model", check=at_least("max-length", 8, " tokens"))
    token_budget: int = opt(0, "Padded tokens per forward batch; 0: sized to the device's free memory (4096 on a "
                            "CPU).", group="model",
                            check=lambda v: None if v >= 0 else f"token budget must be >= 0 (0 = auto), got {v}")
    cache_dir: str | None = opt(None, "Score cache (default ~/.cache/tunesift/scores); reruns resume from it.",
                                group="model", cli="path")
    # DONOD
    eta: float = opt(1e-3, "DONOD: SGD step of the simulated update.", group="donod", check=_eta)
    reduction: str = opt("sqrt", "DONOD: token reduction of the loss, sqrt (1/sqrt(T), ours, the default) | mean "
                         "(1/T) | sum (1). DON alone with sum: --weights 1,0 --reduction sum (docs/methods.md).",
                         group="donod", check=lambda v: None if v in REDUCTIONS else
                         f"reduction must be one of {', '.join(REDUCTIONS)}, got '{v}'")
    weights: tuple[float, float] = opt((0.5, 0.5), "DONOD: TOPSIS weights of DON,NOD.", group="donod",
                                       check=weights_problem, cli="pair")
    # DELIFT
    stage: str = opt("instruction", "DELIFT: instruction | task | continual.", group="delift",
                     check=one_of("stage", STAGES))
    distance: str = opt("rmse", "DELIFT: rmse (the paper's) | pmi (mean log-prob gain).", group="delift",
                        check=one_of("distance", DISTANCES, "rmse or pmi"))
    knn: int = opt(16, "DELIFT: score only the k nearest candidates per record (0 = all pairs, n^2: hours past a "
                   "few hundred records on a CPU).", group="delift",
                   check=lambda v: None if v >= 0 else f"knn must be >= 0 (0 = dense kernel), got {v}")
    utility: str = opt("exact", "DELIFT: exact (every candidate pair scored by the model) | learned (a share of the "
                       "pairs scored, the rest predicted: --label-fraction; docs/methods.md).", group="delift",
                       check=one_of("utility", ("exact", "learned"), "exact or learned"))
    label_fraction: float = opt(0.1, "DELIFT --utility learned: share of the candidate pairs scored exactly.",
                                group="delift", check=lambda v: None if isinstance(v, (int, float)) and 0 < v <= 1
                                else f"label-fraction must be a fraction in (0, 1], got {v}")
    labels: str = opt("nearest", "DELIFT --utility learned: which candidate pairs are scored: nearest (each target's "
                      "most similar candidates, round by round; every labelled target pays its no-example pass) | rows "
                      "(all candidates of sampled targets: ~k times fewer no-example passes, for tiny label fractions "
                      "on big pools).", group="delift", check=one_of("labels", ("nearest", "rows"), "nearest or rows"))
    clip_negative: bool = opt(False, "DELIFT: scale max(UF, 0) / max, harmful examples at 0 like no example "
                                     "(always so on a kNN kernel; this sets it for a dense one).", group="delift")
    scale: str = opt("joint", "DELIFT: min-max scaling of the stage's kernels, joint (one scale for all, so FLCG/FLMI "
                     "compare like numbers) | separate (each kernel its own, as the reference code).",
                     group="delift", check=one_of("scale", ("joint", "separate"), "joint or separate"))
    keep_diagonal: bool = opt(False, "DELIFT: let a record count as its own example.", group="delift")
    mi_eta: float = opt(1.0, "DELIFT task stage: FLMI eta.", group="delift", check=finite_at_least_zero("mi-eta"))
    mi_form: str = opt("min", "DELIFT task stage: min (submodlib FL1MI) | additive (paper).", group="delift",
                       check=one_of("FLMI form", ("min", "additive"), "min or additive"))
    nu: float = opt(1.0, "DELIFT continual stage: FLCG nu.", group="delift", check=finite_at_least_zero("nu"))
    optimizer: str = opt("lazy", "naive | lazy | stochastic greedy.", group="delift",
                         check=one_of("optimizer", ("naive", "lazy", "stochastic"), "naive, lazy or stochastic"))
    epsilon: float = opt(0.01, "Stochastic greedy: sample size n/k * log(1/epsilon) per step.", group="delift",
                         check=lambda v: None if 0 < v < 1 else f"epsilon must be in (0, 1), got {v}")
    prefilter: float = opt(0.7, "donod+delift: share of the pool DONOD lets through to DELIFT.", group="delift",
                           check=lambda v: None if isinstance(v, (int, float)) and 0 < v <= 1 else
                           f"prefilter must be a fraction in (0, 1], got {v}")
    ann: str = opt("auto", "kNN search for --knn: auto (exact up to 10^9 pairs, then ivf) | exact | ivf | "
                   "ivf-faiss | hnsw. ivf, ivf-faiss, hnsw and auto past 10^9 pairs need faiss: tunesift's "
                   "scale extra, or pip install 'faiss-cpu>=1.8'.",  # no [ ]: rich help reads them as markup
                   group="delift", check=one_of("ann", ANN_METHODS))
    partitions: int = opt(1, "delift-se instruction stage: GreeDi over this many random partitions, each part's "
                          "kernel on its own, then a merge round over the union of their picks.", group="delift",
                          check=at_least("partitions", 1))
    local_budget: int | None = opt(None, "GreeDi (--partitions): records each part keeps for the merge round "
                                   "(default the budget; smaller keeps the merge kernel small and loses more of the full greedy's gain).",
                                   group="delift", check=_records("local-budget"))
    # execution: local, or scoring, DELIFT kernels and embeddings on Ray workers (docs/ray.md)
    backend: str = opt("local", "local | ray: compute scores, DELIFT kernels and embeddings on Ray workers "
                       "(docs/ray.md).", group="execution", check=one_of("backend", ("local", "ray"), "local or ray"))
    ray_address: str | None = opt(None, "Ray cluster to join (e.g. ray://head:10001); default a local instance.",
                                  group="execution")
    ray_workers: int = opt(2, "Ray: model workers (actors), each loads the model once.", group="execution",
                           check=at_least("ray-workers", 1))
    ray_gpus: float | None = opt(None, "Ray: GPUs per worker (default: share the cluster's GPUs, at most 1).",
                                 group="execution",
                                 check=lambda v: None if v is None or (math.isfinite(v) and v >= 0) else
                                 f"ray-gpus must be >= 0, got {v}" if v < 0 else
                                 f"ray-gpus must be a finite number >= 0, got {v}")
    on_error: str = opt("fail", "A record that cannot be used (an empty or unreadable field, a response longer than "
                        "--max-length): fail (exit 2, every such record listed, nothing written) | skip (an error "
                        "row, never kept).", group="execution",
                        check=one_of("on-error", ("fail", "skip"), "fail or skip"))
    # baselines
    keep: str = opt("easiest", "loss/perplexity: keep the easiest (lowest) or the hardest records.",
                    group="baselines", check=one_of("keep", ("easiest", "hardest"), "easiest or hardest"))
    selectit_alpha: float = opt(0.2, "selectit: uncertainty weight, mean / (1 + alpha * std).", group="baselines",
                                check=lambda v: None if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                else f"selectit-alpha must be a finite number >= 0, got {v}"
                                if isinstance(v, (int, float)) and v >= 0 else
                                f"selectit-alpha must be a number >= 0, got {v}")
    less_dim: int = opt(8192, "less: random-projection dimension of the gradient features.", group="baselines",
                        check=lambda v: None if v >= 8 and v % 8 == 0 else
                        f"less-dim must be a positive multiple of 8 (the projection's sign bits come in bytes), "
                        f"got {v}")
    by: str | None = opt(None, "balanced-random: the field whose values get equal shares (e.g. meta.source).",
                         group="baselines")
    within: str | None = opt(None, "random: sample only records whose field has this value, FIELD=VALUE (e.g. "
                             "meta.source=gsm8k).", group="baselines", check=_within)

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):  # the command line's spelling, "0.5,0.5", from Python too
            self.weights = parse_weights(self.weights)
        for f in fields(self):  # numpy scalars (a seed or budget computed with numpy) as Python numbers
            v = getattr(self, f.name)
            if isinstance(v, os.PathLike) and "str" in str(f.type):  # a Path for --model or --cache-dir
                setattr(self, f.name, os.fspath(v))
            elif isinstance(v, numbers.Integral) and not isinstance(v, (bool, int)):
                setattr(self, f.name, int(v))
            elif isinstance(v, numbers.Real) and not isinstance(v, (bool, int, float)):
                setattr(self, f.name, float(v))

    def validate(self) -> None:
        """Every field's own check, then the method's (:meth:`Method.check`): raises OptionError."""
        from .catalogue import get_method

        method = get_method(self.method)  # an unknown method is the first error
        for f in fields(self):
            why = field_problem(f.name, getattr(self, f.name))
            if why:
                raise OptionError(why)
        parse_budget(self.budget)
        if self.utility == "learned" and self.keep_diagonal and "utility" in method.options:
            raise OptionError("--keep-diagonal cannot be combined with --utility learned: each record's own pair "
                              "ranks first among its nearest, so the labels would go to the self-pairs (its own "
                              "answer as its example) and teach the surrogate nothing about the other pairs; use "
                              "--utility exact with --keep-diagonal")
        if self.stage == "task" and self.mi_form == "min" and self.mi_eta == 0 and "mi_eta" in method.options:
            raise OptionError("--mi-eta 0 with --mi-form min caps every record's gain at 0, so the pick would be "
                              "the first records of the file; use a positive --mi-eta (default 1)")
        if self.limit is not None and self.sample is not None:
            raise OptionError("--limit and --sample cannot be combined: --limit N reads the first N records, "
                              "--sample N a seeded random N of all of them; give one")
        method.check(self)


def option_fields() -> list:
    """The declared fields (name, type, default, metadata) in declaration order."""
    return list(fields(Options))


def options_dict(opt: Options) -> dict:
    """The options as JSON-ready values (the manifest's ``options``); the budget as parsed (0.3 or
    300, however it was written)."""
    d = asdict(opt)
    d["weights"] = list(opt.weights)
    d["budget"] = parse_budget(opt.budget)
    return d


def parse_budget(budget: float | int | str) -> float | int:
    """A fraction in (0, 1] (written with a decimal point, e.g. 0.3 or 1.0) or a count >= 1."""
    shown = isinstance(budget, str)
    if isinstance(budget, str):
        text = budget.strip()
        try:
            budget = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise OptionError(f"budget must be a fraction in (0, 1] or a count, got '{text}'") from None
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        budget = int(budget)  # numpy integers too
    elif isinstance(budget, numbers.Real) and not isinstance(budget, bool):
        budget = float(budget)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise OptionError(f"budget must be a fraction in (0, 1] or a count, got {budget!r}")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            hint = ""
            if budget > 1 and budget == int(budget):
                hint = f"; a count is written as a whole number, e.g. {int(budget)}"
            raise OptionError(f"budget fraction must be in (0, 1], got {text if shown else budget}{hint}")
        return budget
    if budget < 1:
        raise OptionError(f"budget count must be at least 1, got {budget}")
    return budget


def resolve_budget(budget: float | int | str, n: int) -> int:
    """Number of records to keep out of ``n``: round(fraction * n) (at least 1) or the count."""
    b = parse_budget(budget)
    if isinstance(b, float):
        return max(1, min(n, int(round(b * n))))
    if b > n:
        raise OptionError(f"budget {b} is larger than the {n} input records")
    return b
