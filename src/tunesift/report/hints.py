"""What the report knows about each method, in one table keyed by method name.

For every method: the score columns it writes, the options that matter for it (the rest are
shown folded away), whether its kept records are greedy picks, and for the methods that keep the
top ``budget`` records of one score column (:class:`RankedHint`) how to plot and explain that
score. Constants are imported from the scoring modules, never copied. (The method registry of
issue 13 will absorb this table.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring.baselines import DEFAULT_PROMPTS

__all__ = ["GREEDY", "RANKED", "RELEVANT", "SCORE_COLUMNS", "SELECTIT_PROMPTS", "STAGE_ONLY", "RankedHint"]

SELECTIT_PROMPTS = len(DEFAULT_PROMPTS)  # rating prompts per record ("over 5 prompts")


@dataclass(frozen=True)
class RankedHint:
    """A method that keeps the top ``budget`` records of one score column.

    Adding a method here is all the report needs for it: its options, score columns, the
    histogram of the score kept vs dropped with the cut, the why line and the dropped list.
    """

    column: str  # the ranking score (a scores.parquet column)
    label: str  # its name in the why lines
    higher_first: bool  # direction; keep="hardest" flips it for methods with the "keep" option
    meaning: str  # what the score measures, one sentence for the plot caption
    columns: tuple[str, ...]  # every score column shown, the ranking one first
    options: tuple[str, ...] = ()  # the method's own options (after the model's)
    optional: tuple[str, ...] = ()  # further columns shown when scores.parquet has them
    words: tuple[str, str, str, str] = ("lowest", "lower", "highest", "higher")  # superlatives, comparatives
    log: bool = False  # plot on a log axis when the values span decades


_LOSS_WORDS = ("easiest", "easier", "hardest", "harder")
RANKED = {
    "loss": RankedHint("loss", "loss", False,
                       "The mean negative log-likelihood of the response tokens given the prompt (nats per "
                       "token): low means the model already predicts the response well.",
                       ("loss", "perplexity", "n_tokens"), ("keep",), words=_LOSS_WORDS),
    "perplexity": RankedHint("perplexity", "perplexity", False,
                             "exp(loss), the response's per-token perplexity given the prompt: it ranks "
                             "exactly like the loss.", ("perplexity", "loss", "n_tokens"), ("keep",),
                             words=_LOSS_WORDS, log=True),
    "ifd": RankedHint("ifd", "IFD", True,
                      "Instruction-Following Difficulty: the response loss with the prompt divided by the "
                      "loss without it. Below 1 the prompt helps predict the response; IFD keeps the "
                      "highest IFD below 1 and drops IFD >= 1 first.",
                      ("ifd", "loss", "loss_alone", "n_tokens")),
    "selectit": RankedHint("selectit", "selectit", True,
                           "The model's own rating of the record (1 to 5, weighted by how sure it is) "
                           "averaged over the rating prompts, divided by 1 + alpha times their spread.",
                           ("selectit", "selectit_mean", "selectit_std", "selectit_digit_mass"),
                           ("selectit_alpha",)),
    "less": RankedHint("less", "LESS", True,
                       "The cosine between the record's training update (Adam direction of its LoRA "
                       "gradient after a short warm-up, randomly projected) and the target set's "
                       "gradient: higher means training on it should lower the target loss more.",
                       ("less",), ("seed", "stage", "less_dim"), optional=("less_grad_norm", "less_warmup")),
}

_LM_OPTIONS = ("model", "device", "dtype", "template", "max_length", "token_budget")

# Options that matter for each method (the rest are shown folded away).
RELEVANT = {
    "random": ("method", "budget", "seed"),
    "donod": ("method", "budget", "model", "device", "dtype", "template", "max_length", "token_budget",
              "eta", "reduction", "weights"),
    "delift": ("method", "budget", "seed", "model", "device", "dtype", "template", "max_length",
               "token_budget", "stage", "distance", "knn", "clip_negative", "keep_diagonal", "mi_eta",
               "mi_form", "nu", "optimizer", "epsilon"),
    "delift-se": ("method", "budget", "seed", "device", "stage", "knn", "mi_eta", "mi_form", "nu",
                  "optimizer", "epsilon"),
    "donod+delift": ("method", "budget", "seed", *_LM_OPTIONS, "prefilter", "eta", "reduction", "weights",
                     "stage", "distance", "knn", "clip_negative", "keep_diagonal", "mi_eta", "mi_form", "nu",
                     "optimizer", "epsilon"),
    **{m: ("method", "budget", *_LM_OPTIONS, *r.options) for m, r in RANKED.items()},
}
STAGE_ONLY = {"mi_eta": "task", "mi_form": "task", "nu": "continual"}  # options used by one stage only
GREEDY = ("delift", "delift-se", "donod+delift")  # methods whose kept records are greedy picks

# The scores.parquet columns each method must have (and the report shows, in this order).
SCORE_COLUMNS = {
    "random": (),
    "donod": ("don", "nod", "closeness", "n_tokens"),
    "delift": ("order", "gain", "helped_by", "helpfulness"),
    "delift-se": ("order", "gain"),
    "donod+delift": ("don", "nod", "closeness", "n_tokens", "prefiltered", "order", "gain", "helped_by",
                     "helpfulness"),
    **{m: r.columns for m, r in RANKED.items()},
}
