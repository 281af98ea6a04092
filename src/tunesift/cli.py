"""The ``tunesift`` command line: a thin shell over :mod:`tunesift.pipeline`.

Every user error is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402

from .errors import OptionError, RecordTooLong, TunesiftError  # noqa: E402
from .recipe import load_recipe  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Select the instruction-tuning records worth training on (DELIFT, DONOD).")


def _progress(quiet: bool):
    """A rich progress bar factory on stderr: progress(label, total) -> advance(n); None with --quiet."""
    from .progress import progress_bars

    return progress_bars(not quiet)


def _setup_logging(quiet: bool) -> None:
    """What is happening goes to stderr (INFO) unless --quiet; warnings always."""
    import logging

    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("tunesift")
    logger.handlers[:] = [RichHandler(console=Console(stderr=True), show_path=False, show_time=False)]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _input_info(path: str | None, sha256: str | None = None) -> dict | None:
    """Path and checksum of an input; ``sha256``: the checksum taken as it was read (select)."""
    if path is None:
        return None
    from .io.files import input_checksum

    return {"path": str(Path(path).resolve()), "sha256": sha256 or input_checksum(path)}


def _path_or_none(model: str | None) -> str | None:
    """``--model`` when it names an existing file or folder (an input the output must not touch), else None
    (an alias such as ``default`` or a cached Hugging Face id)."""
    return model if model and os.path.lexists(model) else None


def _help(name: str) -> str:
    """The help text an option declares in :class:`~tunesift.methods.options.Options` (one place)."""
    from .methods.options import Options

    return Options.__dataclass_fields__[name].metadata["help"]


def _default(name: str):
    from .methods.options import Options

    return Options.__dataclass_fields__[name].default



class Shared:
    """Options that ``select`` and ``kernel`` both take, declared once (help from :class:`Options`)."""

    model = Annotated[str, typer.Option(help=_help("model"))]
    device = Annotated[str, typer.Option(help=_help("device"))]
    dtype = Annotated[str, typer.Option(help=_help("dtype"))]
    template = Annotated[str, typer.Option(help=_help("template"))]
    max_length = Annotated[int, typer.Option(help=_help("max_length"))]
    token_budget = Annotated[int, typer.Option(help=_help("token_budget"))]
    distance = Annotated[str, typer.Option(help=_help("distance"))]
    knn = Annotated[int, typer.Option(help=_help("knn"))]
    utility = Annotated[str, typer.Option(help=_help("utility"))]
    label_fraction = Annotated[float, typer.Option(help=_help("label_fraction"))]
    labels = Annotated[str, typer.Option(help=_help("labels"))]
    keep_diagonal = Annotated[bool, typer.Option(help=_help("keep_diagonal"))]
    ann = Annotated[str, typer.Option(help=_help("ann"))]
    prompt_field = Annotated[str | None, typer.Option(help="Field(s) holding the prompt, comma-separated to join.")]
    response_field = Annotated[str | None, typer.Option(help="Field holding the response.")]
    messages_field = Annotated[str | None, typer.Option(help="Field holding a chat message list.")]
    id_field = Annotated[str | None, typer.Option(help="Field holding a unique record id (default: 'id' when the "
                                                        "first record has one); none: ids from the content.")]
    config = Annotated[Path | None, typer.Option("--config", is_eager=True, callback=load_recipe,
                                                 help="YAML recipe holding any of these options; flags override it.")]


@app.command()
def select(
    data: Path = typer.Argument(None, help="Input file: JSONL, JSON array, CSV, Parquet or a saved HF dataset folder."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (selected.jsonl, scores.parquet, manifest.json)."),
    method: str = typer.Option(_default("method"), help=_help("method")),
    budget: str = typer.Option("0.3", help="Fraction in (0, 1] (e.g. 0.3, 1.0) or a count (e.g. 300)."),
    seed: int = typer.Option(_default("seed"), help=_help("seed")),
    limit: int | None = typer.Option(_default("limit"), help=_help("limit")),
    sample: int | None = typer.Option(_default("sample"), help=_help("sample")),
    model: Shared.model = _default("model"),
    device: Shared.device = _default("device"),
    dtype: Shared.dtype = _default("dtype"),
    template: Shared.template = _default("template"),
    max_length: Shared.max_length = _default("max_length"),
    token_budget: Shared.token_budget = _default("token_budget"),
    cache_dir: Path | None = typer.Option(None, help="Score cache (default ~/.cache/tunesift/scores); reruns resume from it."),
    eta: float = typer.Option(_default("eta"), help=_help("eta")),
    reduction: str = typer.Option(_default("reduction"), help=_help("reduction")),
    weights: str = typer.Option("0.5,0.5", help="DONOD: TOPSIS weights of DON,NOD."),
    stage: str = typer.Option(_default("stage"), help=_help("stage")),
    target: Path | None = typer.Option(None, help="DELIFT task stage: the target set."),
    existing: Path | None = typer.Option(None, help="DELIFT continual stage: data already trained on."),
    distance: Shared.distance = _default("distance"),
    knn: Shared.knn = _default("knn"),
    utility: Shared.utility = _default("utility"),
    label_fraction: Shared.label_fraction = _default("label_fraction"),
    labels: Shared.labels = _default("labels"),
    clip_negative: bool = typer.Option(_default("clip_negative"), help=_help("clip_negative")),
    scale: str = typer.Option(_default("scale"), help=_help("scale")),
    keep_diagonal: Shared.keep_diagonal = _default("keep_diagonal"),
    mi_eta: float = typer.Option(_default("mi_eta"), help=_help("mi_eta")),
    mi_form: str = typer.Option(_default("mi_form"), help=_help("mi_form")),
    nu: float = typer.Option(_default("nu"), help=_help("nu")),
    optimizer: str = typer.Option(_default("optimizer"), help=_help("optimizer")),
    epsilon: float = typer.Option(_default("epsilon"), help=_help("epsilon")),
    prefilter: float = typer.Option(_default("prefilter"), help=_help("prefilter")),
    backend: str = typer.Option(_default("backend"), help=_help("backend")),
    ray_address: str | None = typer.Option(_default("ray_address"), help=_help("ray_address")),
    ray_workers: int = typer.Option(_default("ray_workers"), help=_help("ray_workers")),
    ray_gpus: float | None = typer.Option(_default("ray_gpus"), help=_help("ray_gpus")),
    on_error: str = typer.Option(_default("on_error"), help=_help("on_error")),
    out_format: str = typer.Option("jsonl", help="Kept records as jsonl (selected.jsonl) | parquet "
                                   "(selected.parquet, native types) | hf (selected/, datasets save_to_disk)."),
    keep: str = typer.Option(_default("keep"), help=_help("keep")),
    selectit_alpha: float = typer.Option(_default("selectit_alpha"), help=_help("selectit_alpha")),
    ann: Shared.ann = _default("ann"),
    partitions: int = typer.Option(_default("partitions"), help=_help("partitions")),
    local_budget: int | None = typer.Option(_default("local_budget"), help=_help("local_budget")),
    less_dim: int = typer.Option(_default("less_dim"), help=_help("less_dim")),
    by: str | None = typer.Option(_default("by"), help=_help("by")),
    within: str | None = typer.Option(_default("within"), help=_help("within")),
    prompt_field: Shared.prompt_field = None,
    response_field: Shared.response_field = None,
    messages_field: Shared.messages_field = None,
    id_field: Shared.id_field = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    report: bool = typer.Option(False, "--report/--no-report",
                                help="Also write OUT/report.html (see tunesift report)."),
    config: Shared.config = None,
) -> None:
    """Score every record and write the subset worth training on."""
    from .io.schema import FieldMap
    from .methods.catalogue import get_method
    from .methods.options import Options, parse_weights
    from .outputs import check_output_folder, check_save, save_selection
    from .pipeline import select as run_select
    from .row_values import check_rows_writable

    if data is None or out is None:
        raise TunesiftError("select needs the input DATA and --out (on the command line or in --config)")
    w = parse_weights(weights)
    check_save(out_format, report)
    fields = FieldMap(prompt=prompt_field, response=response_field, messages=messages_field, id=id_field)
    opts = dict(method=method, budget=budget, seed=seed, limit=limit, sample=sample, model=model, device=device, dtype=dtype,
                template=template, max_length=max_length, token_budget=token_budget,
                cache_dir=str(cache_dir) if cache_dir else None, eta=eta, reduction=reduction, weights=w,
                stage=stage, distance=distance, knn=knn, utility=utility, label_fraction=label_fraction,
                labels=labels, clip_negative=clip_negative, scale=scale,
                keep_diagonal=keep_diagonal, mi_eta=mi_eta, mi_form=mi_form, nu=nu, optimizer=optimizer, epsilon=epsilon,
                prefilter=prefilter, keep=keep, selectit_alpha=selectit_alpha, less_dim=less_dim, by=by, within=within, ann=ann, partitions=partitions, local_budget=local_budget, on_error=on_error,
                backend=backend, ray_address=ray_address, ray_workers=ray_workers, ray_gpus=ray_gpus)
    # every check that needs no data comes before any reading or scoring
    opt = Options(**opts)
    opt.validate()
    input_paths = [p for p in (data, target, existing, config) if p is not None]
    check_output_folder(out, input_paths)
    if get_method(method).uses_cache():  # here too: a bad --cache-dir is the only line printed
        from .outputs import check_cache

        check_cache(out, cache_dir)
    _setup_logging(quiet)
    get_method(method).warn_unread(opt)
    with _progress(quiet) as prog:
        sel = run_select(str(data), target=str(target) if target else None,
                         existing=str(existing) if existing else None, fields=fields, progress=prog,
                         check_rows=partial(check_rows_writable, out_format=out_format), **opts)
    save_selection(sel, out, out_format=out_format, report=report, guard=[config] if config else [])
    if not quiet:
        from .outputs import SELECTED

        n, kept = len(sel.records), int(sel.kept.sum())
        typer.echo(f"{sel.method}: kept {kept} of {n} records -> {out}/{SELECTED[out_format]} "
                   f"(scores: {out}/scores.parquet, {sel.timings.get('total_s', 0):.1f} s)", err=True)
        if report:
            typer.echo(f"report: {out / 'report.html'}", err=True)


@app.command()
def kernel(
    data: Path = typer.Argument(None, help="Targets (rows): any input format."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (utility.npy or utility.npz, rows.txt, "
                             "cols.txt, base.npy, kernel.json; labelled.npz with --utility learned)."),
    examples: Path | None = typer.Option(None, help="In-context examples (columns); default: DATA itself."),
    model: Shared.model = _default("model"),
    device: Shared.device = _default("device"),
    dtype: Shared.dtype = _default("dtype"),
    template: Shared.template = _default("template"),
    max_length: Shared.max_length = _default("max_length"),
    token_budget: Shared.token_budget = _default("token_budget"),
    cache_dir: Path | None = typer.Option(None, help="Score cache (shared with select); reruns resume from it."),
    distance: Shared.distance = _default("distance"),
    knn: Shared.knn = _default("knn"),
    utility: Shared.utility = _default("utility"),
    label_fraction: Shared.label_fraction = _default("label_fraction"),
    labels: Shared.labels = _default("labels"),
    keep_diagonal: Shared.keep_diagonal = _default("keep_diagonal"),
    seed: int = typer.Option(_default("seed"), help="Seed of the labelled pairs (--utility learned) and of the IVF index's training sample (--ann ivf)."),
    ann: Shared.ann = _default("ann"),
    prompt_field: Shared.prompt_field = None,
    response_field: Shared.response_field = None,
    messages_field: Shared.messages_field = None,
    id_field: Shared.id_field = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    config: Shared.config = None,
) -> None:
    """Compute DELIFT's utility kernel (rows: targets, columns: examples) and write it as files."""
    from .io.schema import FieldMap
    from .kernel_export import export_kernel
    from .methods.delift import pair_progress

    if data is None or out is None:
        raise TunesiftError("kernel needs the input DATA and --out (on the command line or in --config)")
    fields = FieldMap.given(prompt_field, response_field, messages_field, id_field)
    opts = dict(model=model, device=device, dtype=dtype, template=template, max_length=max_length,
                token_budget=token_budget, cache_dir=str(cache_dir) if cache_dir else None, distance=distance,
                knn=knn, utility=utility, label_fraction=label_fraction, labels=labels, keep_diagonal=keep_diagonal,
                seed=seed,
                ann=ann)
    _setup_logging(quiet)
    with _progress(quiet) as prog:
        progress = (lambda label: pair_progress(prog, label)) if prog else None
        folder = export_kernel(str(data), out, examples=str(examples) if examples else None, progress=progress,
                               fields=fields, input_paths=[p for p in (data, examples, config) if p is not None],
                               **opts)
    if not quiet:
        meta = (folder / "kernel.json").read_text(encoding="utf-8")
        import json

        m = json.loads(meta)
        typer.echo(f"kernel {m['shape'][0]} x {m['shape'][1]}, {m['pairs']} pairs -> {folder}", err=True)


@app.command()
def finetune(
    data: Path = typer.Argument(None, help="Training records (any input format; e.g. OUT/selected.jsonl)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for the adapter (LoRA) or model (full)."),
    model: str = typer.Option("default", help="Base model: default, gemma3-270m, a folder (a model, or an earlier finetune's LoRA adapter), a .gguf or a cached HF id."),
    mode: str = typer.Option("lora", help="lora | full"),
    epochs: int = typer.Option(2, help="Passes over the data."),
    lr: float | None = typer.Option(None, help="Learning rate (default 2e-4 LoRA, 2e-5 full)."),
    batch_size: int = typer.Option(8, help="Records per optimizer step."),
    max_length: int = typer.Option(1024, help="Longest training sequence in tokens (prompts cut from the left)."),
    lora_r: int = typer.Option(16, help="LoRA rank."),
    lora_alpha: int = typer.Option(32, help="LoRA alpha."),
    lora_dropout: float = typer.Option(0.05, help="LoRA dropout."),
    prompt_field: Shared.prompt_field = None,
    response_field: Shared.response_field = None,
    messages_field: Shared.messages_field = None,
    id_field: Shared.id_field = None,
    seed: int = typer.Option(0, help="Seed of LoRA init, dropout and data order."),
    autocast: str = typer.Option("none", help="none | bfloat16 (mixed precision, faster on AMX CPUs and GPUs; slower on CPUs without AVX512-BF16 or AMX, e.g. AMD EPYC)."),
    template: str = typer.Option("auto", help="auto | chat | plain | paper (use the same as for selection)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    config: Path | None = typer.Option(None, "--config", is_eager=True, callback=load_recipe,
                                       help="YAML file holding any of these options; flags override it."),
) -> None:
    """Fine-tune a model on records (LoRA by default), loss on response tokens only."""
    from .finetune import TRAIN_META, TrainConfig, save, trained_by_tunesift
    from .finetune import finetune as run_finetune
    from .io.records import read_records
    from .io.schema import FieldMap
    from .models import load_lm
    from .outputs import check_output_folder, selection_fields

    if data is None or out is None:
        raise TunesiftError("finetune needs the training DATA and --out")
    # before training: writable, no input inside, and replaced only if an unchanged earlier model
    # --model as a folder is an input too: training into it would replace the base it loads, and
    # so are the adapters it stacks on (a LoRA folder loads the bases its tunesift_train.json records)
    from .models import adapter_chain

    inputs = [data, _path_or_none(model), *(adapter_chain(model) if model else [])]
    check_output_folder(out, inputs, own=None, manifest=TRAIN_META, unlisted={}, ours=trained_by_tunesift)
    cfg = TrainConfig(mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                      lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, seed=seed,
                      autocast=autocast, template=template)
    cfg.validate()
    _setup_logging(quiet)
    read: dict = {}
    # a selection is read back with the field map select read its input with (manifest.json)
    given = FieldMap.given(prompt_field, response_field, messages_field, id_field)
    saved = selection_fields(data)
    fields = given if saved is None else FieldMap(**{**vars(saved), **{k: v for k, v in vars(given or saved).items()
                                                                       if v is not None}})
    if saved is not None:  # flags given win one by one; the rest as select read the input
        logging.getLogger("tunesift").info("reading %s with the fields select used, flags over them (%s)", data,
                                           ", ".join(f"{k} {v}" for k, v in vars(fields).items() if v is not None))
    records = read_records(data, fields, digest=read)
    lm = load_lm(model, device=device)
    with _progress(quiet) as prog:
        bar = prog("fine-tuning", len(records) * cfg.epochs) if prog else None
        try:
            res = run_finetune(lm, records, cfg, progress=bar)
        except RecordTooLong as exc:  # the message names the record; the file is known here
            raise exc.in_file(data) from None
    save(res, lm, out, {"data": _input_info(str(data), read.get("sha256"))})  # the checksum as it was read
    if not quiet:
        typer.echo(f"{cfg.mode}: {len(records)} records x {cfg.epochs} epochs, loss {res.losses[0]:.3f} -> "
                   f"{res.losses[-1]:.3f} in {res.seconds:.1f} s -> {out}", err=True)


@app.command()
def evaluate(
    test: Path = typer.Option(..., "--test", help="Held-out records with reference responses."),
    model: str | None = typer.Option(None, help="Model to evaluate (default: the adapter's base, else 'default')."),
    adapter: Path | None = typer.Option(None, help="Output folder of tunesift finetune (LoRA adapter or model)."),
    metrics: str = typer.Option("auto", help="auto, or a comma list of loss, perplexity, rougeL, exact_match, cosine."),
    max_new_tokens: int = typer.Option(128, help="Generation length for the generative metrics."),
    generate_limit: int | None = typer.Option(None, help="Generate for the first N test records only."),
    limit: int | None = typer.Option(None, help="Use the first N test records only."),
    template: str = typer.Option("auto", help="auto | chat | plain | paper (as in training)."),
    max_length: int = typer.Option(1024, help="Longest scored sequence in tokens."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write metrics.json and predictions.jsonl here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate a (fine-tuned) model on held-out records: loss, perplexity, ROUGE-L, exact match, cosine."""
    import json

    from .evaluate import (
        EVAL_FILES,
        check_settings,
        parse_metrics,
        save_evaluation,
        written_by_evaluate,
    )
    from .evaluate import evaluate as run_evaluate
    from .io.records import read_records
    from .models import load_lm
    from .outputs import check_output_folder

    names = parse_metrics(metrics)
    if limit is not None and limit < 1:
        raise TunesiftError(f"limit must be at least 1, got {limit}")
    check_settings(names, template=template, max_length=max_length, max_new_tokens=max_new_tokens,
                   generate_limit=generate_limit)
    if out is not None:  # before any work: writable, and replaced only if an unchanged earlier evaluation
        check_output_folder(out, [test, adapter, _path_or_none(model)], own=EVAL_FILES, manifest="metrics.json",
                            unlisted={}, ours=written_by_evaluate)
    if adapter is not None:
        from .finetune import check_trained_folder

        check_trained_folder(adapter)  # before reading and logging: one line, nothing else
    _setup_logging(quiet)
    from .models import adapter_folder

    trained = adapter if adapter is not None else adapter_folder(model) if model else None
    if trained is not None:  # a finetune output (--adapter, or a LoRA folder as --model): its template
        from .finetune import evaluation_template

        template = evaluation_template(trained, template)
    read: dict = {}
    records = read_records(test, digest=read)
    records = records[:limit] if limit else records
    if adapter is not None:
        from .finetune import load_trained

        lm = load_trained(adapter, model=model, device=device)
    else:
        # float32, as a fine-tuned model is merged and saved: base and tuned compare at one precision
        lm = load_lm(model or "default", device=device, dtype="float32")
    with _progress(quiet) as prog:
        try:
            ev = run_evaluate(lm, records, metrics=names, template=template, max_length=max_length,
                              max_new_tokens=max_new_tokens, generate_limit=generate_limit, progress=prog)
        except RecordTooLong as exc:  # the message names the record; the file is known here
            raise exc.in_file(test) from None
    result = {"model": lm.source, "fingerprint": lm.fingerprint, "test": _input_info(str(test), read.get("sha256")),
              "records": len(records), "metrics": ev.metrics, "counts": ev.counts, "timings": ev.timings}
    if out is not None:  # again at write time: a file added to OUT during the run must not be swept away
        out = check_output_folder(out, [test, adapter, _path_or_none(model)], own=EVAL_FILES, manifest="metrics.json",
                                  unlisted={}, ours=written_by_evaluate)
        save_evaluation(out, records, ev, result)
    typer.echo(json.dumps(ev.metrics))


@app.command()
def bench(
    train: Path = typer.Option(None, "--train", help="The pool to select from."),
    test: Path = typer.Option(None, "--test", help="Held-out evaluation records."),
    out: Path = typer.Option(None, "--out", "-o", help="Bench folder (cells/, results.md/.csv/.json, plots)."),
    methods: str = typer.Option(",".join(("base", "random", "delift-se", "delift", "donod", "donod+delift", "full")),
                                help="Comma list of base, full and any select method (random, balanced-random, "
                                     "donod, delift, delift-se, donod+delift, rds, ifd, loss, perplexity, selectit, "
                                     "less)."),
    budget: str = typer.Option("0.3", help="Budget(s), comma-separated (several give a curve)."),
    seeds: int = typer.Option(3, help="Seeds per cell (selection and training)."),
    stage: str = typer.Option("instruction", help="DELIFT stage: instruction | task | continual."),
    target: Path | None = typer.Option(None, help="Task stage: the target set."),
    existing: Path | None = typer.Option(None, help="Continual stage: data already trained on."),
    train_with_existing: bool = typer.Option(True, help="Continual stage: fine-tune on existing + selection."),
    select_model: str = typer.Option("default", "--select-model", "--score-model",
                                     help="Model that scores the pool (a small one for Superfiltering)."),
    train_model: str = typer.Option("default", help="Model that is fine-tuned and evaluated."),
    knn: int | None = typer.Option(None, help="DELIFT: k nearest candidates per record (default 16, as select; "
                                              "0 = every pair, hours past a few hundred records on a CPU)."),
    by: str | None = typer.Option(None, help="balanced-random: the field whose values get equal shares "
                                             "(e.g. meta.source)."),
    distance: str = typer.Option("rmse", help="DELIFT: rmse | pmi."),
    select_dtype: str = typer.Option("auto", help="dtype of the selection model."),
    prefilter: float = typer.Option(0.7, help="donod+delift: share DONOD lets through."),
    eta: float = typer.Option(1e-3, help="DONOD eta."),
    mode: str = typer.Option("lora", help="Fine-tuning: lora | full"),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs (default 2; --quick 1)."),
    lr: float | None = typer.Option(None, help="Learning rate (default 2e-4 LoRA, 2e-5 full)."),
    batch_size: int = typer.Option(8, help="Records per optimizer step."),
    max_length: int = typer.Option(1024, help="Longest sequence in tokens (selection and training)."),
    lora_r: int = typer.Option(16, help="LoRA rank."),
    autocast: str = typer.Option("none", help="none | bfloat16 mixed precision for fine-tuning (faster with AMX; slower on CPUs without AVX512-BF16 or AMX)."),
    metrics: str = typer.Option("auto", help="auto or a comma list of metrics."),
    max_new_tokens: int | None = typer.Option(None, help="Generation length (default 128; --quick 32)."),
    generate_limit: int | None = typer.Option(None, help="Generate for the first N test records (default 100; --quick 16)."),
    train_limit: int | None = typer.Option(None, help="Use the first N pool records (--quick 120)."),
    test_limit: int | None = typer.Option(None, help="Use the first N records of the test set and of each further held-out set (--quick 40)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    cache_dir: Path | None = typer.Option(None, help="Score cache (default ~/.cache/tunesift/scores)."),
    quick: bool = typer.Option(False, "--quick", help="Smoke profile that finishes in minutes (see docs/bench.md)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    config: Path | None = typer.Option(None, "--config", is_eager=True, callback=load_recipe,
                                       help="YAML file holding any of these options; flags override it."),
) -> None:
    """Select, fine-tune and evaluate every method x budget x seed; write tables and plots."""
    from .bench import QUICK, BenchConfig, run_bench
    from .evaluate import parse_metrics

    if train is None or test is None or out is None:
        raise TunesiftError("bench needs --train, --test and --out")

    def pick(value, name, normal):
        return value if value is not None else (QUICK[name] if quick and name in QUICK else normal)

    from .finetune import TrainConfig

    tcfg = TrainConfig(mode=mode, epochs=pick(epochs, "epochs", 2), lr=lr, batch_size=batch_size,
                       max_length=max_length, lora_r=lora_r, autocast=autocast)
    tcfg.validate()
    sel_opts = {"distance": distance, "eta": eta, "prefilter": prefilter, "max_length": max_length,
                "dtype": select_dtype, "knn": pick(knn, "knn", _default("knn")),
                "cache_dir": str(cache_dir) if cache_dir else None}
    from .methods.options import Options

    Options(**sel_opts).validate()
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if by is not None and "balanced-random" not in names:
        raise OptionError("--by is read only by balanced-random, which --methods does not name")
    cfg = BenchConfig(train=str(train), test=str(test), methods=names,
                      method_options={"balanced-random": {"by": by}} if by is not None else {},
                      budgets=[b.strip() for b in budget.split(",") if b.strip()], seeds=seeds, stage=stage,
                      target=str(target) if target else None, existing=str(existing) if existing else None,
                      train_with_existing=train_with_existing, select_model=select_model, train_model=train_model,
                      select_options=sel_opts, training=tcfg, metrics=parse_metrics(metrics),
                      max_new_tokens=pick(max_new_tokens, "max_new_tokens", 128),
                      generate_limit=pick(generate_limit, "generate_limit", 100),
                      train_limit=pick(train_limit, "train_limit", None), test_limit=pick(test_limit, "test_limit", None),
                      device=device)
    from .methods.options import parse_budget

    cfg.budgets = [parse_budget(b) for b in cfg.budgets]
    _setup_logging(quiet)
    with _progress(quiet) as prog:
        rows = run_bench(cfg, out, progress=prog)
    from .bench_tables import markdown_table

    typer.echo(markdown_table(rows))


@app.command("report")
def report_cmd(
    out: Path = typer.Argument(..., help="Output folder of tunesift select (manifest.json, scores.parquet, ...)."),
    other: Path | None = typer.Argument(None, help="A second output folder of the same input: the page adds "
                                                   "a side-by-side comparison (agreement, what one kept "
                                                   "that the other dropped)."),
    by: str | None = typer.Option(None, help="Field of the input rows to show retention per category, "
                                             "e.g. source or meta.family (dotted for nested fields)."),
    data: Path | None = typer.Option(None, help="The input file, when not at the path the manifest records "
                                                "(needed with --by for the dropped rows)."),
) -> None:
    """Write OUT/report.html: one self-contained page explaining what was kept and why."""
    from .report import write_report

    typer.echo(str(write_report(out, by=by, data=data, compare=other)))


@app.command("demo-data")
def demo_data(
    out: Path = typer.Argument(..., help="JSONL file to write."),
    n: int = typer.Option(240, help="Number of records."),
    corrupt: float = typer.Option(0.2, help="Share of records whose response belongs to another prompt."),
    seed: int = typer.Option(0, help="Seed."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (by default an existing file "
                                                      "is never written over)."),
) -> None:
    """Write a synthetic instruction set with a known share of corrupted records (meta.corrupted)."""
    from tunesift_demo import write_demo

    if out.is_dir():
        raise TunesiftError(f"'{out}' is a folder: demo-data writes one JSONL file, e.g. {out / 'demo.jsonl'}")
    if (out.exists() or out.is_symlink()) and not force:
        raise TunesiftError(f"'{out}' exists: demo-data writes a new file (choose another name, or pass --force "
                            "to replace it)")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise TunesiftError(f"cannot write '{out}': '{parent}' is not a folder")
    if seed < 0:
        raise TunesiftError(f"seed must be an integer >= 0, got {seed}")
    try:
        write_demo(out, n=n, corrupt=corrupt, seed=seed)
    except OSError as exc:
        raise TunesiftError(f"cannot write '{out}': {exc.strerror or exc}") from None
    typer.echo(f"wrote {n} records to {out}", err=True)


INTERRUPTED = ("tunesift: interrupted by {name}: nothing half-written was kept (earlier outputs are unchanged; "
               "finished score-cache blocks and bench cells stay); rerun the same command to resume")


def _on_signal(signum, frame):
    from .errors import Interrupted

    raise Interrupted(signum)


INTERRUPTED_AFTER_SWAP = "tunesift: interrupted by {name} once the new outputs were in place: '{out}' holds them"


def _interrupted(signum: int, exc: BaseException | None = None) -> int:
    """Print the one line for an interrupted run; exit status 128 + signal (130 SIGINT, 143 SIGTERM).
    An interrupt that came right after an output folder was swapped in (``exc.swapped``, set by
    :mod:`tunesift.folders`) says where the new and the previous set are instead."""
    import signal

    name = signal.Signals(signum).name
    swapped = getattr(exc, "swapped", None)  # (output folder, where the previous set is kept or None: removed)
    if swapped:
        line = INTERRUPTED_AFTER_SWAP.format(name=name, out=swapped[0]) + (
            f", and the previous set is kept at '{swapped[1]}'" if swapped[1] else ", and the previous set was removed")
    else:
        line = INTERRUPTED.format(name=name)
    print(_escape_breaks(line), file=sys.stderr)
    return 128 + signum


def _escape_breaks(message: str) -> str:
    """The message on one line: a line break inside it (a file name holding one) as its escape."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app and turns user errors into one line + exit code 2, and
    SIGINT / SIGTERM into one line + exit code 130 / 143 (temporary files are cleaned up on the way)."""
    import signal

    from .errors import Interrupted
    from .signals import handlers_kept

    try:
        with handlers_kept(_on_signal):  # not the main thread: the handlers are left alone
            rv = app(args=argv, standalone_mode=False)
    except Interrupted as exc:
        return _interrupted(exc.signum, exc)
    except TunesiftError as exc:
        print(f"tunesift: error: {_escape_breaks(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(signal.SIGINT, exc)
    except Exception as exc:  # usage errors from click (vendored as typer._click in typer >= 0.29)
        try:
            from typer import _click as click
        except ImportError:  # older typer
            import click
        exceptions = click.exceptions
        if isinstance(exc, exceptions.ClickException):
            message = exc.format_message()
            if message.strip():  # `tunesift` alone prints its help, with nothing to add
                print(f"tunesift: error: {_escape_breaks(message)}", file=sys.stderr)
            return 2
        abort = getattr(exceptions, "Abort", None)
        if abort is not None and isinstance(exc, abort):
            return _interrupted(signal.SIGINT)
        raise
    if isinstance(rv, int) and rv:  # click/typer may report an abort as a return code
        if rv == 130:
            return _interrupted(signal.SIGINT)
        return rv
    return 0


def run() -> None:
    """setuptools console-script wrapper: exits with :func:`main`'s status."""
    sys.exit(main())
