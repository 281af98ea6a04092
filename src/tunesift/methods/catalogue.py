"""The registry entries, one per method, in the order the CLI and docs list them."""

from __future__ import annotations

from ..errors import OptionError
from .delift import donod_delift_pick, run_delift, run_delift_se
from .less import run_less
from .per_record import run_baseline, run_donod
from .rds import run_rds
from .registry import RAY_OPTIONS, REGISTRY, STAGES, Method, RankedHint, register
from .sampling import run_balanced_random, run_random

LM = ("model", "device", "dtype", "template", "max_length", "token_budget")
DONOD_OPTIONS = ("eta", "reduction", "weights")
DELIFT_SETS = {"task": "target", "continual": "existing"}
LOSS_WORDS = ("easiest", "easier", "hardest", "harder")
# 2 (session 16): a kNN kernel is min-max scaled with harmful pairs at 0, the value of the pairs it
# does not hold (methods.delift.clipping); revision 1 put them at the most harmful scored pair's value
DELIFT_REVISION = 2

register(Method(
    "random", "a seeded uniform sample, the baseline", run_random,
    options=("method", "budget", "seed", "within")))
register(Method(
    "donod", "DON and NOD of the LM head after one simulated SGD step, ranked by TOPSIS", run_donod,
    needs_lm=True, block_kind="donod", options=("method", "budget", *LM, *DONOD_OPTIONS, *RAY_OPTIONS),
    columns=("don", "nod", "closeness", "n_tokens")))
register(Method(
    "delift", "pairwise in-context utility kernel, then FL / FLMI / FLCG", run_delift, needs_lm=True,
    in_context=True, stages=STAGES, second_set=DELIFT_SETS, greedy=True,
    options=("method", "budget", "seed", *LM, "stage", "distance", "knn", "ann", "utility", "label_fraction",
             "labels", "clip_negative", "scale", "keep_diagonal", "mi_eta", "mi_form", "nu", "optimizer", "epsilon",
             *RAY_OPTIONS),
    columns=("order", "gain", "helped_by", "helpfulness"), revision=DELIFT_REVISION))
register(Method(
    "delift-se", "the DELIFT objectives on a sentence-embedding kernel", run_delift_se, stages=STAGES,
    second_set=DELIFT_SETS, greedy=True, embeds=True,
    options=("method", "budget", "seed", "device", "dtype", "stage", "knn", "ann", "partitions", "local_budget",
             "mi_eta", "mi_form", "nu", "optimizer", "epsilon", *RAY_OPTIONS),
    columns=("order", "gain")))
register(Method(
    "donod+delift", "DONOD cuts the worst records, DELIFT selects from the rest", donod_delift_pick, needs_lm=True,
    stages=STAGES, second_set=DELIFT_SETS, block_kind="donod", in_context=True, greedy=True,
    options=("method", "budget", "seed", *LM, "prefilter", *DONOD_OPTIONS, "stage", "distance", "knn", "ann",
             "utility", "label_fraction", "labels", "clip_negative", "scale", "keep_diagonal", "mi_eta", "mi_form", "nu",
             "optimizer", "epsilon", *RAY_OPTIONS),
    columns=("don", "nod", "closeness", "n_tokens", "prefiltered", "order", "gain", "helped_by", "helpfulness"),
    revision=DELIFT_REVISION))


def _ranked(name: str, summary: str, run, hint: RankedHint, *, ray: bool = True, **kw) -> None:
    """A method that keeps the top of one score column; ``ray``: it scores through the per-record
    block scorer, which runs on Ray workers with ``--backend ray``."""
    register(Method(name, summary, run, needs_lm=True,
                    options=("method", "budget", *LM, *hint.options, *(RAY_OPTIONS if ray else ())),
                    columns=hint.columns, ranked=hint, **kw))


_ranked("ifd", "Instruction-Following Difficulty (Cherry LLM / Superfiltering)", lambda job: run_baseline(job, "ifd"),
        RankedHint("ifd", "IFD", True,
                   "Instruction-Following Difficulty: the response loss with the prompt divided by the loss "
                   "without it. Below 1 the prompt helps predict the response; IFD keeps the highest IFD below 1 "
                   "and drops IFD >= 1 first.", ("ifd", "loss", "loss_alone", "n_tokens")),
        block_kind="ifd")
_ranked("loss", "the response loss given the prompt (easiest first)", lambda job: run_baseline(job, "loss"),
        RankedHint("loss", "loss", False,
                   "The mean negative log-likelihood of the response tokens given the prompt (nats per token): "
                   "low means the model already predicts the response well.",
                   ("loss", "perplexity", "n_tokens"), ("keep",), words=LOSS_WORDS))
_ranked("perplexity", "exp(loss): ranks as the loss", lambda job: run_baseline(job, "loss"),
        RankedHint("perplexity", "perplexity", False,
                   "exp(loss), the response's per-token perplexity given the prompt: it ranks exactly like the "
                   "loss.", ("perplexity", "loss", "n_tokens"), ("keep",), words=LOSS_WORDS, log=True))
_ranked("selectit", "the model rates each record (SelectIT)", lambda job: run_baseline(job, "selectit"),
        RankedHint("selectit", "selectit", True,
                   "The model's own rating of the record (1 to 5, weighted by how sure it is) averaged over the "
                   "rating prompts, divided by 1 + alpha times their spread.",
                   ("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"), ("selectit_alpha",)),
        block_kind="selectit")
_ranked("less", "LoRA gradient features matched to the target set (LESS)", run_less,
        RankedHint("less", "LESS", True,
                   "The cosine between the record's training update (Adam direction of its LoRA gradient after a "
                   "short warm-up, randomly projected) and the target set's gradient: higher means training on it "
                   "should lower the target loss more.", ("less",), ("seed", "stage", "less_dim"),
                   optional=("less_grad_norm", "less_warmup")),
        stages=("task",), second_set={"task": "target"}, ray=False)
register(Method(
    "balanced-random", "random with an equal share per value of a field (--by)", run_balanced_random,
    options=("method", "budget", "seed", "by"), columns=("group",), required=("by",)))
register(Method(
    "rds", "RDS+: weighted-mean hidden states, round-robin cosine to the target (pool centroid without one)",
    run_rds, needs_lm=True, stages=("instruction", "task"), second_set={"task": "target"},
    options=("method", "budget", *LM, "stage"), columns=("rds",)))


def get_method(name: str) -> Method:
    """The registry entry of ``name``; an unknown name is a one-line OptionError."""
    if name not in REGISTRY:
        raise OptionError(f"unknown method '{name}': use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """Every registered method, in the order the CLI and docs list them."""
    return tuple(REGISTRY)
