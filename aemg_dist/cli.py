"""The `aemg` command line. Every command says where it wrote its outputs and exits
non-zero with a one-line reason on bad input."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from aemg_dist import jobs
from aemg_dist.artifacts import run_export
from aemg_dist.commands import CommandError, format_table, subcommand
from aemg_dist.config import ConfigError, load_config, shipped_configs

DEFAULT_DATA_ROOT = "../shared/data"
T = TypeVar("T")
DEMO_HELD_OUT = ("synth_myo/s01", "synth_myo/s02", "synth_myo/s03")  # the demo's LOSO folds
# masked token modeling stays at the code entropy (no context learned) for the first few hundred steps on the
# demo corpus; by 1000 steps it predicts ~45 % of masked codes and the encoder's features help downstream
DEMO_PRETRAIN_STEPS = 1000
DEMO_EVALUATION = "evaluate/demo.yaml"  # among the shipped configs
DEMO_PRETRAIN = "pretrain/tiny.yaml"


EXIT_USAGE, EXIT_DATA, EXIT_RUNTIME = 2, 3, 4  # see `exit_status`; 1: finished, but found bad inputs (reported)
EXIT_HELP = """exit status:
  0  done
  1  done, but some inputs were bad and are reported (prepare: recordings left out; corpus check: problems)
  2  usage or config error: a bad option, config value, manifest or path; nothing was started or written
  3  data error: an input file cannot be used (a source file, a corpus, a token folder, a checkpoint)
  4  runtime failure: the run itself failed (a crashed worker, a full disk); the last line says why
130  interrupted
Errors are one line naming the culprit; --debug also prints the traceback."""


# ---------------------------------------------------------------- prepare / corpus

def _source_jobs(args: argparse.Namespace) -> list:
    """Jobs for `--source synthetic`, a dataset name, a data folder or `--manifest`."""
    if args.source == "synthetic" and not args.manifest:
        from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

        return synthetic_jobs(SyntheticConfig(seed=args.seed, scale=args.scale, subjects=args.subjects))
    from preprocessing.manifest import DatasetManifest, manifest_jobs, resolve_source

    if args.manifest:
        manifest = DatasetManifest.from_yaml(args.manifest)
        root = args.source or os.environ.get("AEMG_DATA", DEFAULT_DATA_ROOT)
        return manifest_jobs(manifest, root)
    if not args.source:
        raise CommandError("give --source (synthetic, a dataset name or a data folder) or --manifest")
    jobs = []
    for manifest, root in resolve_source(args.source):
        jobs.extend(manifest_jobs(manifest, root))
    return jobs


def cmd_prepare(args: argparse.Namespace) -> int:
    from aemg_dist import storage
    from preprocessing.harmonize import HarmonizeConfig
    from preprocessing.prepare import PREPARE_CONFIG, prepare

    overrides = list(args.overrides) + ([f"target_fs={args.target_fs}"] if args.target_fs else [])
    config = load_config(HarmonizeConfig, args.config, overrides)
    jobs = _source_jobs(args)
    print(f"preparing {len(jobs)} recordings into {args.out}", flush=True)
    report = prepare(jobs, args.out, config, workers=args.workers, address=args.address, progress=not args.quiet)
    print(report.summary())
    print(f"wrote {report.out} (resolved config: {storage.join(report.out, PREPARE_CONFIG)})")
    return 0 if report.ok else 1


def cmd_corpus(args: argparse.Namespace) -> int:
    from preprocessing.corpus import Corpus, check_corpus, corpus_summary

    if args.action == "info":
        corpus = Corpus(args.corpus)
        rows = corpus_summary(corpus)
        print(format_table(rows))
        hours = sum(r["hours"] for r in rows)
        print(f"{len(corpus)} recordings, {hours:.2f} h of EMG at {corpus.harmonize_config().get('target_fs')} Hz in {args.corpus}")
        return 0
    problems = check_corpus(args.corpus)
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"{args.corpus}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def cmd_tokenize(args: argparse.Namespace) -> int:
    from aemg_dist.artifacts import TokenizeConfig
    from aemg_dist.data import tokenize_corpus

    config = load_config(TokenizeConfig, args.config, args.overrides)
    report = tokenize_corpus(args.corpus, args.out, config, workers=args.workers, address=args.address,
                             progress=not args.quiet)
    print(report.summary())
    print(f"wrote {args.out} (manifest: tokens.json, resolved config: tokenize.yaml)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if args.what == "prototypes":
        return _plot_prototypes(args)
    from aemg_dist.artifacts import TokenizeConfig
    from aemg_dist.plots import plot_events
    from preprocessing.corpus import Corpus

    if not args.corpus:
        raise CommandError("plot events needs --corpus CORPUS.zarr")
    config = load_config(TokenizeConfig, args.config, args.overrides)
    key = args.key or Corpus(args.corpus).keys()[0]
    if key not in Corpus(args.corpus):
        raise CommandError(f"{key!r} is not a recording of {args.corpus} (see `aemg corpus info`)")
    out = args.out or f"events_{key.replace('/', '_')}.png"
    path = plot_events(args.corpus, key, out, start_s=args.start, duration_s=args.duration,
                       ev_cfg=config.events, tok_cfg=config.tokens)
    print(f"wrote {path}")
    return 0


def _plot_prototypes(args: argparse.Namespace) -> int:
    from aemg_dist.prototypes import codebook_prototypes, plot_prototypes, write_prototypes_csv

    if not args.checkpoint or not args.tokens:
        raise CommandError("plot prototypes needs --checkpoint RUN (or its export/) and --tokens TOKENS/")
    export = run_export(args.checkpoint)
    try:
        protos = codebook_prototypes(export, args.tokens, max_windows=args.windows)
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(str(err)) from None
    out = Path(args.out or "prototypes.png")
    png = plot_prototypes(protos, out, top=args.top)
    table = write_prototypes_csv(protos, out.with_suffix(".csv"))
    used = int((protos.counts > 0).sum())
    print(f"{used} of {protos.counts.size} codes used by {int(protos.counts.sum())} tokens of {protos.n_windows} windows")
    print(f"wrote {png} and {table}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from aemg_dist.train import load_pretrain_config, pretrain

    overrides = list(args.overrides) + (["dist.ray=false"] if args.no_ray else [])
    config = load_pretrain_config(args.config, overrides)
    result = pretrain(config)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result.final.items() if k in ("loss", "val_loss", "codebook_usage", "perplexity", "mtm_accuracy"))
    print(f"pretrained {result.steps} steps ({shown})")
    print(f"wrote {result.out} (config.yaml, metrics.csv, loss.png, codebook.png, export/ for evaluation)")
    return 0


def _evaluate_config(args: argparse.Namespace, methods: Sequence[str]) -> Any:
    """EvaluateConfig from --config < the command's options < key=value overrides."""
    from aemg_dist.evaluation.runner import EvaluateConfig

    options = [f"corpus={args.corpus}", f"out={args.out}", f"protocol={args.protocol}", f"workers={args.workers}",
               f"methods=[{','.join(args.methods.split(',') if args.methods else methods)}]"]
    if getattr(args, "checkpoint", None):
        options.append(f"checkpoints=[{','.join(args.checkpoint)}]")
    for name in ("budgets", "seeds", "datasets", "subjects"):
        if getattr(args, name):
            options.append(f"{name}=[{getattr(args, name)}]")
    if args.max_folds is not None:
        options.append(f"max_folds={args.max_folds}")
    for name in ("normalization", "splits", "role"):  # aemg demo has no such options
        if getattr(args, name, None):
            options.append(f"{name}={getattr(args, name)}")
    if args.address:
        options.append(f"address={args.address}")
    return load_config(EvaluateConfig, args.config, [*options, *args.overrides])


def _run_evaluation(args: argparse.Namespace, methods: Sequence[str]) -> int:
    from aemg_dist.evaluation.report import aggregate
    from aemg_dist.evaluation.runner import evaluate

    result = evaluate(_evaluate_config(args, methods), progress=not args.quiet)
    table = [{"method": a["method"], "dataset": a["dataset"], "budget %": f"{a['budget']:g}",
              "balanced_acc": f"{a['mean']:.3f} ± {a['std']:.3f}", "subjects": a["n"]} for a in aggregate(result.rows)]
    print(format_table(table))
    print(f"{len(result.rows)} trials; {result.folds_run} fold(s) evaluated now in {result.seconds:.0f} s")
    print(f"wrote {result.out} (summary.csv, report.md, low_label.png, confusion_*.png, trials.jsonl, evaluate.yaml)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from aemg_dist.evaluation.methods import AEMG_METHODS, BASELINE_METHODS

    return _run_evaluation(args, [*AEMG_METHODS, *BASELINE_METHODS])


def cmd_report(args: argparse.Namespace) -> int:
    from aemg_dist.evaluation.runner import combine

    result = combine(args.runs, args.out)
    print(f"{len(result.rows)} trials of {len({r['method'] for r in result.rows})} methods from {len(args.runs)} runs")
    print(f"wrote {result.out} (report.md, summary.csv, paired.csv, plots, sources.json)")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from aemg_dist.evaluation.methods import BASELINE_METHODS

    return _run_evaluation(args, BASELINE_METHODS)


def cmd_scaling(args: argparse.Namespace) -> int:
    from tuning.scaling import fit_runs, plot_fit

    if args.action == "run":
        return _scaling_run(args)
    if not args.runs or not args.out:
        raise CommandError(f"scaling {args.action} needs --runs RUNS.csv and --out FOLDER")
    if args.action == "plot":
        if not args.fit:
            raise CommandError("scaling plot needs --fit OUT/fit.json (written by `aemg scaling fit`)")
        paths = plot_fit(args.fit, args.runs, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}")
        return 0
    try:
        budgets = [float(b) for b in args.flops.split(",")] if args.flops else None
        result = fit_runs(args.runs, args.out, group_column=args.group, n_boot=args.n_boot, seed=args.seed,
                          flop_budgets=budgets)
    except ValueError as err:  # a bad runs table or option: one line, not a traceback
        raise CommandError(str(err)) from None
    _print_law(result)
    print(f"wrote {args.out} (fit.json, fit.md, loss_vs_N.png, loss_vs_D.png, isoflop.png)")
    return 0


def _print_law(result: dict) -> None:
    law = result["point"]
    print(format_table([{"parameter": p, "fit": f"{getattr(law, p):.4g}",
                         "95% interval": f"[{result['ci'][p][0]:.4g}, {result['ci'][p][1]:.4g}]"}
                        for p in ("E", "A", "alpha", "B", "beta")]))


def _tune_driver(command: str, run: Callable[[], T]) -> T | None:
    """run() of `aemg sweep` or `aemg scaling run`: None when interrupted (the message says to --resume). Failed
    trials (SweepError) are a runtime failure, reported by `main` in one line."""
    from tuning.trials import SweepInterrupted

    try:
        return run()
    except SweepInterrupted as err:
        print(f"{command}: {err}", file=sys.stderr)
        return None


def _scaling_run(args: argparse.Namespace) -> int:
    from tuning.scaling import load_scaling_config, scaling_run

    if not args.config:
        raise CommandError("scaling run needs --config (a ScalingRunConfig YAML, e.g. configs/scaling/tiny.yaml)")
    result = _tune_driver("aemg scaling run", lambda: scaling_run(load_scaling_config(args.config, args.overrides),
                                                                  resume=args.resume, progress=not args.quiet))
    if result is None:
        return 130
    print(format_table([{"run": r["run"], "N": f"{r['N']:.3g}", "D": f"{r['D']:.3g}", "FLOPs": f"{r['flops']:.3g}",
                         "loss": f"{r['loss']:.4f}"} for r in result.runs]))
    if result.fit:
        _print_law(result.fit)
    print(f"{len(result.runs)} runs in {result.seconds:.0f} s; wrote {result.out} (runs.csv, report.md"
          f"{', fit/' if result.fit else ''}{', downstream.csv, downstream.png' if result.downstream else ''}, "
          "pretrain/, tune/)")
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    from aemg_dist.evaluation.runner import exclusion_groups
    from aemg_dist.evaluation.splits import fold_role, load_splits
    from preprocessing.corpus import Corpus

    if bool(args.splits) != bool(args.role):
        raise CommandError("--splits and --role go together")
    chosen = args.datasets.split(",") if args.datasets else None
    entries = [e for e in Corpus(args.corpus).entries if not chosen or e.dataset in chosen]
    subjects: dict[str, list[str]] = {}
    if args.splits:
        splits = load_splits(args.splits)
        single = {d for d in {e.dataset for e in entries} if len({e.subject for e in entries if e.dataset == d}) == 1}
        # a fold holds out a subject, or a session of a single-subject dataset: a subject whose folds have the role
        entries = [e for e in entries if fold_role(splits, e.dataset, e.session if e.dataset in single else e.subject)
                   == args.role]
    for entry in entries:
        subjects.setdefault(entry.dataset, []).append(entry.subject)
    if not subjects:
        raise CommandError(f"{args.corpus} has no recordings of {chosen}")
    groups = exclusion_groups(subjects, args.groups)
    if args.group is not None:
        if not 0 <= args.group < len(groups):
            raise CommandError(f"--group must be in 0..{len(groups) - 1}")
        print(f"data.exclude_subjects=[{','.join(groups[args.group])}]")
        return 0
    for i, group in enumerate(groups):
        print(f"group {i} ({len(group)} subjects): data.exclude_subjects=[{','.join(group)}]")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from aemg_dist.evaluation.splits import make_splits, write_splits
    from aemg_dist.validate import require_output
    from preprocessing.corpus import Corpus

    if Path(args.out).exists() and not args.force:
        raise CommandError(f"{args.out} exists: a splits file is the record of which subjects are for development; "
                           "keep it, or pass --force to draw a new one")
    require_output(args.out, "--out", kind="file")
    chosen = args.datasets.split(",") if args.datasets else None
    units: dict[str, dict[str, set[str]]] = {}
    for entry in Corpus(args.corpus).entries:
        if not chosen or entry.dataset in chosen:
            units.setdefault(entry.dataset, {}).setdefault(entry.subject, set()).add(entry.session)
    if not units:
        raise CommandError(f"{args.corpus} has no recordings of {chosen}")
    # the held-out units of LOSO: subjects, or the sessions of a single-subject dataset (as the folds are made)
    held_out = {d: sorted(next(iter(s.values()))) if len(s) == 1 else sorted(s) for d, s in units.items()}
    try:
        splits = make_splits(held_out, args.fraction, args.seed)
    except ValueError as err:
        raise CommandError(str(err)) from None
    header = (f"# Development subjects (sessions for single-subject datasets) per dataset: every choice is made on\n"
              f"# them, numbers are reported on the others. Drawn by `aemg splits --fraction {args.fraction:g} "
              f"--seed {args.seed}`.")
    write_splits(splits, args.out, header)
    for dataset, dev in splits.items():
        print(f"{dataset}: {len(dev)} development, {len(held_out[dataset]) - len(dev)} test")
    print(f"wrote {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tuning.sweep import load_sweep_config, sweep

    result = _tune_driver("aemg sweep", lambda: sweep(load_sweep_config(args.config, args.overrides),
                                                      resume=args.resume, progress=not args.quiet))
    if result is None:
        return 130
    shown = [{"configuration": c["configuration"], "method": c["method"], "dataset": c["dataset"],
              "budget %": f"{c['budget']:g}", "balanced_acc": f"{c['mean']:.3f} ± {c['std']:.3f}",
              "95% CI": f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]", "subjects": c["n"]}
             for c in result.cells if c["metric"] == "balanced_accuracy"]
    print(format_table(shown))
    if result.stopped_early:
        print(f"stopped early by ASHA (not evaluated): {', '.join(result.stopped_early)}")
    print(f"swept {len({c['configuration'] for c in result.cells})} configurations, {len(result.rows)} trial rows "
          f"in {result.seconds:.0f} s")
    print(f"wrote {result.out} (summary.csv, aggregate.csv, report.md, heatmap_*.png, budget_*.png, codebook.png, "
          "pretrain/, trials/, tune/, executions.jsonl, sweep.yaml)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from aemg_dist.artifacts import TokenizeConfig
    from aemg_dist.data import tokenize_corpus
    from aemg_dist.train import load_pretrain_config, pretrain
    from preprocessing.corpus import Corpus, check_corpus, corpus_summary
    from preprocessing.harmonize import HarmonizeConfig
    from preprocessing.prepare import prepare
    from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

    out = Path(args.out)
    corpus_path, tokens_path = out / "corpus.zarr", out / "tokens"
    config = HarmonizeConfig()
    print(f"[1/4] prepare: synthetic ({args.scale}, seed {args.seed}) -> {corpus_path}", flush=True)
    report = prepare(synthetic_jobs(SyntheticConfig(seed=args.seed, scale=args.scale, subjects=args.subjects)),
                     corpus_path, config, workers=args.workers, progress=not args.quiet)
    print(report.summary())
    problems = check_corpus(corpus_path)
    if problems or not report.ok:
        raise CommandError(f"demo corpus has problems: {(problems or report.failed)[:3]}")
    print(format_table(corpus_summary(Corpus(corpus_path))))

    print(f"[2/4] tokenize: {corpus_path} -> {tokens_path}", flush=True)
    shutil.rmtree(tokens_path, ignore_errors=True)  # tokens and models are cheap to remake; the corpus is kept
    print(tokenize_corpus(corpus_path, tokens_path, TokenizeConfig(), workers=args.workers,
                          progress=not args.quiet).summary())

    pretrain_path = out / "pretrain"
    shutil.rmtree(pretrain_path, ignore_errors=True)
    where = "in this process" if args.workers == 1 else "on Ray Train + DeepSpeed, 2 workers"
    # the evaluated subjects are left out of pretraining, so no fold's held-out subject was ever seen
    print(f"[3/4] pretrain: tiny model {where}, without the held-out subjects {list(DEMO_HELD_OUT)} "
          f"-> {pretrain_path}", flush=True)
    config = load_pretrain_config(shipped_configs() / DEMO_PRETRAIN, [
        f"data.tokens={tokens_path}", f"run.out={pretrain_path}", f"run.seed={args.seed}",
        f"data.exclude_subjects=[{','.join(DEMO_HELD_OUT)}]", f"optim.max_steps={DEMO_PRETRAIN_STEPS}",
        "run.checkpoint_every=250", "run.val_every=250", *(["dist.ray=false"] if args.workers == 1 else [])])
    result = pretrain(config)
    print(f"pretrained {result.steps} steps: " + ", ".join(
        f"{k}={result.final[k]:.3g}" for k in ("loss", "val_loss", "codebook_usage", "perplexity", "mtm_accuracy")
        if k in result.final))

    results_path = out / "results"
    shutil.rmtree(results_path, ignore_errors=True)
    print(f"[4/4] evaluate: LOSO on {list(DEMO_HELD_OUT)}, budgets 0/10/100 %, AEMG and every baseline "
          f"-> {results_path}", flush=True)
    cmd_evaluate(_demo_evaluation_args(args, pretrain_path, corpus_path, results_path))
    print(f"demo outputs in {out}: corpus.zarr, tokens/, pretrain/ (loss.png, codebook.png, export/), "
          f"results/ (report.md, summary.csv, low_label.png)")
    return 0


def _demo_evaluation_args(args: argparse.Namespace, pretrain_path: Path, corpus_path: Path,
                          results_path: Path) -> argparse.Namespace:
    """The demo's step 4 as `aemg evaluate` options: LOSO of the held-out subjects at 0/10/100 %."""
    args.checkpoint, args.corpus, args.out, args.protocol = [str(pretrain_path)], str(corpus_path), str(results_path), "loso"
    args.budgets, args.subjects, args.config = "0,10,100", ",".join(DEMO_HELD_OUT), str(shipped_configs() / DEMO_EVALUATION)
    args.seeds = args.datasets = args.methods = args.max_folds = None
    args.overrides = []
    return args


def cmd_finetune(args: argparse.Namespace) -> int:
    from aemg_dist.finetune import PersonalConfig, finetune_personal, summary

    options = [f"pretrained={args.pretrained}", f"subject={args.subject}", f"out={args.out}",
               f"workers={args.workers}", *(f"{k}={v}" for k, v in (("corpus", args.corpus), ("manifest", args.manifest),
                                                                      ("data_root", args.source), ("work", args.work))
                                            if v)]
    config = load_config(PersonalConfig, args.config, [*options, *args.overrides])
    try:
        result = finetune_personal(config, progress=not args.quiet)
    except ValueError as err:  # no labeled windows of the subject, a model that does not fit its tokens, ...
        raise CommandError(str(err)) from None
    print(summary(result))
    print(f"wrote {result.out} (model.safetensors, config.json: weights, classes, harmonization, token settings and "
          f"the calibration statistics) in {result.seconds:.0f} s")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import yaml

    from aemg_dist import predict
    from aemg_dist.decoder import Decoder

    try:
        decoder = Decoder.load(args.model)
        dtype_ok = args.dtype == predict.TEXT or np.dtype(args.dtype).kind in "iuf"
    except (ValueError, TypeError) as err:
        raise CommandError(str(err)) from None
    if not dtype_ok:
        raise CommandError(f"--dtype {args.dtype!r} is not a numeric sample type or 'text'")
    if args.stream or args.listen:
        out = sys.stdout if args.out in (None, "-") else open(args.out, "w", newline="")
        try:
            with (predict.listening(args.listen) if args.listen else _stdin_bytes()) as source:
                n = predict.stream_to_csv(decoder, source, out, dtype=args.dtype, source_fs=args.fs)
        finally:
            if out is not sys.stdout:
                out.close()
        print(f"{n} decisions written to {args.out or 'standard output'}", file=sys.stderr)
        return 0
    if args.corpus and args.key:
        decisions = predict.decisions_of_corpus_key(decoder, args.corpus, args.key)
    elif args.manifest and args.key:
        raw = predict.manifest_recording(args.manifest, args.key, args.source)
        decisions = predict.decisions_of_recording(decoder, raw, zero_phase=args.zero_phase)
    elif args.file and args.reader:
        raw = predict.file_recording(decoder, args.file, yaml.safe_load(args.reader))
        decisions = predict.decisions_of_recording(decoder, raw, zero_phase=args.zero_phase)
    else:
        raise CommandError("give --corpus C --key K, --manifest M --key K, --file F --reader SPEC, or --stream")
    if not args.out:
        raise CommandError("give --out PREDICTIONS.csv (or - for standard output)")
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    try:
        predict.write_csv(out, decoder, decisions)
    finally:
        if out is not sys.stdout:
            out.close()
    counts = np.bincount(decisions.labels, minlength=len(decoder.config.class_ids)) if decisions.labels.size else []
    print(", ".join(f"{name}: {int(c)}" for name, c in zip(decoder.config.class_names, counts)) or "no window",
          file=sys.stderr if args.out == "-" else sys.stdout)
    print(f"wrote {args.out} ({decisions.end_s.size} decisions)", file=sys.stderr if args.out == "-" else sys.stdout)
    return 0


@contextlib.contextmanager
def _stdin_bytes():
    yield sys.stdin.buffer


# ---------------------------------------------------------------- parser

def _add_synthetic_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="demo", choices=["tiny", "demo", "full", "large"],
                   help="synthetic corpus size: tiny (tests, 3 min of EMG), demo (1 h), full (23 h), large (scale "
                        "tests: 105 h, 256 subjects, hours on 2 cores)")
    p.add_argument("--subjects", type=int, default=None,
                   help="synthetic subjects per simulated device instead of the scale's (same protocol), e.g. a "
                        "slice of --scale large")
    p.add_argument("--seed", type=int, default=0, help="synthetic generator seed")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0,
                   help="1 = run in this process; 0 = Ray tasks on all local CPUs (default); N = local Ray with N CPUs")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_evaluation_options(p: argparse.ArgumentParser, default_methods: str) -> None:
    p.add_argument("--corpus", required=True, help="CORPUS.zarr made by `aemg prepare` (a folder or a URI)")
    p.add_argument("--out", required=True, help="results folder or URI (s3://bucket/results)")
    p.add_argument("--protocol", default="loso", choices=["loso"], help="evaluation protocol (default loso)")
    p.add_argument("--budgets", help="calibration budgets in %% (default 0,1,5,10,100)")
    p.add_argument("--seeds", help="calibration draws, e.g. 0,1,2 (default 0)")
    p.add_argument("--methods", help=f"comma-separated methods (default: {default_methods})")
    p.add_argument("--datasets", help="comma-separated datasets (default: all)")
    p.add_argument("--subjects", help="held-out subjects as dataset/subject, comma-separated (default: all)")
    p.add_argument("--max-folds", type=int, default=None, help="at most N evenly spaced folds per dataset")
    p.add_argument("--normalization", choices=["strict", "transductive"],
                   help="strict (default): the held-out subject's statistics come from its calibration windows "
                        "(at 0 %%: an unlabeled warm-up) only; transductive: from its whole recordings, test "
                        "windows included (labelled as such in the report)")
    p.add_argument("--splits", help="YAML of development subjects per dataset (`aemg splits`); the others are test "
                                    "subjects")
    p.add_argument("--role", choices=["development", "test", "all"],
                   help="with --splits: run the development folds (for choices) or the test folds (for reporting)")
    p.add_argument("--config", help="YAML with an EvaluateConfig (train.*, windows.*, test_percent, ...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.base_steps=500 require_unseen=false")
    _add_runtime_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aemg",
        description="AEMG-dist: harmonize sEMG corpora, tokenize contraction events, pretrain and evaluate "
                    "neuromuscular token models on Ray.",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data through the whole pipeline (no downloads)",
                       description="Generate the built-in synthetic corpus and run the pipeline on it.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    _add_synthetic_options(p)
    _add_runtime_options(p)
    p.set_defaults(func=cmd_demo)

    p = subcommand(
        sub, "prepare", "source datasets -> harmonized Zarr corpus",
        "Read datasets through their manifests (or the synthetic generator), harmonize them (filter, notch, "
        "resample, robust z-score, quality flags, electrode positions) and write one Zarr corpus. Re-running "
        "skips recordings that are already complete.",
        ["aemg prepare --source ../shared/data --out corpus.zarr",
         "aemg prepare --source 3dc --out corpus.zarr target_fs=2000",
         "aemg prepare --manifest my_dataset.yaml --source /data --out corpus.zarr",
         "aemg prepare --source synthetic --scale tiny --out synth.zarr",
         "aemg prepare --source synthetic --scale large --out large.zarr"])
    p.add_argument("--source", help="'synthetic', a shipped dataset name (3dc, coteallard, ...), or a folder "
                                    "holding dataset folders (e.g. ../shared/data); with --manifest: the data root")
    p.add_argument("--manifest", help="a dataset manifest YAML (see README: adding a dataset)")
    p.add_argument("--out", required=True, help="corpus path (CORPUS.zarr), a folder or a URI (s3://bucket/corpus.zarr)")
    p.add_argument("--target-fs", type=float, default=None, help="common sample rate in Hz (default 1000)")
    p.add_argument("--config", help="YAML with harmonization settings (HarmonizeConfig)")
    _add_synthetic_options(p)
    p.add_argument("overrides", nargs="*", help="harmonization overrides key=value (e.g. highpass_hz=10)")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_prepare)

    p = subcommand(
        sub, "tokenize", "corpus -> contraction events -> token shards (Parquet), on Ray Data",
        "Detect contraction events per window and turn them into neuromuscular tokens: one Parquet row per "
        "window (pretraining chunks by default, or labeled classification windows), plus tokens.json (files, "
        "counts, feature names) and the resolved tokenize.yaml.",
        ["aemg tokenize --corpus corpus.zarr --out tokens/",
         "aemg tokenize --corpus corpus.zarr --out windows/ windows.kind=labeled windows.length_s=0.5 "
         "windows.stride_s=0.25 windows.margin_s=0.25",
         "aemg tokenize --corpus corpus.zarr --out tokens/ events.envelope=tkeo tokens.include_quiet=false"])
    p.add_argument("--corpus", required=True, help="CORPUS.zarr made by `aemg prepare`")
    p.add_argument("--out", required=True, help="output folder for the token shards; the same --out again finishes an interrupted run")
    p.add_argument("--config", help="YAML with a TokenizeConfig (events, tokens, windows, shard_s)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. events.high=2.5 windows.kind=labeled")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_tokenize)

    p = subcommand(
        sub, "pretrain", "token shards -> pretrained model (Ray Train + DeepSpeed)",
        "Self-supervised pretraining of the conditioned Transformer: VQ reconstruction of the tokens (a codebook "
        "of contraction prototypes) and masked token modeling, on Ray Train workers with DeepSpeed ZeRO. A run "
        "started again with the same run.out resumes from its latest checkpoint.",
        ["aemg pretrain --config configs/pretrain/tiny.yaml data.tokens=runs/demo/tokens",
         "aemg pretrain --config configs/pretrain/tiny.yaml dist.zero_stage=2 model.codebook_size=256",
         "aemg pretrain --config configs/pretrain/tiny.yaml --no-ray optim.max_steps=50"])
    p.add_argument("--config", help="YAML with a PretrainConfig (preset, model, data, optim, run, dist)")
    p.add_argument("--no-ray", action="store_true",
                   help="run the same loop in this process with plain torch, without Ray/DeepSpeed (on the GPU if "
                        "torch sees one, bf16 autocast there by default)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. preset=small optim.max_steps=1000")
    p.set_defaults(func=cmd_pretrain)

    evaluation_help = (
        "Leave-one-subject-out evaluation on labeled windows (leave-one-session-out for a single-subject dataset): "
        "each method learns from the other subjects, then adapts with a calibration budget (% of the held-out "
        "subject's calibration pool in labeled time) and is scored on the same test repetitions at every budget. "
        "The held-out subject's normalization, noise floor and channels come from its calibration windows only "
        "(strict statistics; at 0 % an unlabeled warm-up). With --splits, --role picks development folds (for "
        "choices) or test folds (for reporting). Writes summary.csv, report.md (mean ± std and 95 % CI, paired "
        "Wilcoxon tests against the same model from scratch and every baseline), low_label.png and confusion "
        "matrices. Finished folds are kept in trials.jsonl: re-running the same command resumes.")
    p = subcommand(
        sub, "evaluate", "pretrained checkpoint(s) -> LOSO x calibration budgets, with the baselines",
        evaluation_help + " By default a fold is only scored with a checkpoint whose lineage never trained on the "
        "held-out subject: the subjects of its token folder's manifest minus its exclusions, following "
        "run.init_from; give several --checkpoint runs that together leave out every held-out subject.",
        ["aemg evaluate --checkpoint runs/pt --corpus corpus.zarr --protocol loso --budgets 0,1,5,10,100 --out results/",
         "aemg evaluate --checkpoint runs/pt-a --checkpoint runs/pt-b --corpus corpus.zarr --seeds 0,1,2 --out results/",
         "aemg evaluate --checkpoint runs/pt --corpus corpus.zarr --methods aemg_probe,td_lda --datasets 3dc "
         "--out results/ train.base_steps=500"])
    p.add_argument("--checkpoint", action="append", required=True,
                   help="an `aemg pretrain` run folder or URI (or its export/); repeat for several")
    _add_evaluation_options(p, "aemg_finetune,aemg_probe and every baseline")
    p.set_defaults(func=cmd_evaluate)

    p = subcommand(
        sub, "baselines", "the baselines alone (no pretrained checkpoint) -> LOSO x calibration budgets",
        evaluation_help + " Methods: aemg_scratch (the AEMG architecture from scratch), td_lda, cnn, transformer, "
        "simclr, mae.",
        ["aemg baselines --corpus corpus.zarr --protocol loso --out results/",
         "aemg baselines --corpus corpus.zarr --methods td_lda,cnn --budgets 0,10,100 --max-folds 5 --out results/"])
    _add_evaluation_options(p, "every baseline")
    p.set_defaults(func=cmd_baselines)

    p = subcommand(
        sub, "report", "one report over several evaluations of the same folds",
        "Combine the trials of `aemg evaluate` / `aemg baselines` outputs made with the same protocol (corpus, "
        "windows, budgets, seeds, normalization, splits), e.g. a new checkpoint's AEMG methods against baselines "
        "measured once, into one report.md, summary.csv and paired tables. Settings that decide the folds must "
        "match; each method must come from one run.",
        ["aemg report runs/baselines runs/aemg-v2 --out runs/report-v2"])
    p.add_argument("runs", nargs="+", help="evaluation output folders")
    p.add_argument("--out", required=True, help="folder for the combined report")
    p.set_defaults(func=cmd_report)

    p = subcommand(
        sub, "splits", "development / test subjects per dataset (where choices are made / numbers reported)",
        "Draw, once, the development subjects of every dataset (sessions for a single-subject dataset) and write "
        "them to a YAML file. Give it to `aemg evaluate --splits FILE --role development` to make choices and "
        "`--role test` to report; `aemg sweep` selects its configuration on the development folds.",
        ["aemg splits --corpus corpus.zarr --out configs/splits/mine.yaml",
         "aemg splits --corpus corpus.zarr --out splits.yaml --fraction 0.3 --seed 1 --datasets 3dc,ciil"])
    p.add_argument("--corpus", required=True, help="CORPUS.zarr")
    p.add_argument("--out", required=True, help="the splits YAML to write (refused if it exists, unless --force)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of each dataset's subjects for development "
                                                                "(default 0.25; at least one, never all)")
    p.add_argument("--seed", type=int, default=0, help="draw seed (default 0)")
    p.add_argument("--datasets", help="comma-separated datasets (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_splits)

    p = subcommand(
        sub, "folds", "held-out subject groups for LOSO-clean pretraining",
        "Split every dataset's subjects into N disjoint groups and print, per group, the pretraining override "
        "that leaves it out. Pretraining once per group and giving all runs to `aemg evaluate` scores every "
        "LOSO fold with a model that never saw its held-out subject, at N pretrainings instead of one per fold.",
        ["aemg folds --corpus corpus.zarr --groups 2",
         'aemg pretrain --config configs/pretrain/tiny.yaml run.out=runs/pt-g0 '
         '"$(aemg folds --corpus corpus.zarr --groups 2 --group 0)"'])
    p.add_argument("--corpus", required=True, help="CORPUS.zarr")
    p.add_argument("--groups", type=int, default=2, help="number of groups (default 2)")
    p.add_argument("--group", type=int, default=None, help="print only this group's override (0-based)")
    p.add_argument("--datasets", help="comma-separated datasets (default: all)")
    p.add_argument("--splits", help="with --role: group only the subjects of that role in this splits file")
    p.add_argument("--role", choices=["development", "test"], help="with --splits: development or test subjects")
    p.set_defaults(func=cmd_folds)

    p = subcommand(
        sub, "sweep", "grid of pretraining configurations x LOSO folds x budgets, on Ray Tune",
        "Pretrain one model per grid configuration (e.g. codebook size x mask ratio; each a Ray Train job run "
        "as a Tune trial, optionally stopped early by ASHA), then score each with one Tune trial per (LOSO fold, "
        "calibration budget), the folds in parallel across the cluster. Every pretraining leaves out the evaluated "
        "subjects (pretrain_groups=N: N runs per configuration, each without one group). Writes summary.csv, "
        "aggregate.csv (mean, std, 95 % CI per configuration), report.md, heatmap_*.png, budget_*.png and "
        "codebook.png. An interrupted sweep continues with --resume; finished trials are not run again.",
        ["aemg sweep --config configs/sweep/tiny.yaml",
         "aemg sweep --config configs/sweep/tiny.yaml --resume",
         "aemg sweep --config configs/sweep/real.yaml out=runs/sweep-g3 pretrain_groups=3 "
         "max_concurrent.evaluate=8",
         "aemg sweep --config configs/sweep/real.yaml out=runs/sweep-k256 grid.model.codebook_size=[256] "
         "asha.enabled=true asha.grace_period=200"])
    p.add_argument("--config", required=True, help="YAML with a SweepConfig (see configs/sweep/ and tuning/sweep.py)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in its out folder (Tune restore): only unfinished trials run")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out=runs/sweep2 evaluation.budgets=[0,10]")
    p.set_defaults(func=cmd_sweep)

    p = subcommand(
        sub, "scaling", "pretraining runs over model sizes x token budgets, and the scaling law L(N, D) fitted to them",
        "run: pretrain every model size x token budget (x seed) of a ScalingRunConfig YAML as Ray Tune trials (each a "
        "Ray Train job), write runs.csv (N non-embedding parameters, D tokens seen, the preset's real FLOPs, the final "
        "held-out loss) and fit it; with evaluate=true also score every run LOSO and relate accuracy to scale "
        "(downstream.csv, downstream.png, report.md). --resume continues an interrupted run. "
        "fit: L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3: Huber loss on log-loss, L-BFGS-B from a "
        "screened grid of starts) to a CSV of runs with columns N (parameters), D (tokens) and loss, with "
        "bootstrap 95 % intervals (whole --group values resampled) and the compute-optimal N and D for FLOP "
        "budgets; writes fit.json, fit.md and loss_vs_N.png, loss_vs_D.png, isoflop.png. plot: redraw a saved fit.",
        ["aemg scaling run --config configs/scaling/tiny.yaml",
         "aemg scaling run --config configs/scaling/real.yaml --resume",
         "aemg scaling run --config configs/scaling/real.yaml out=runs/scaling-3seeds seeds=[0,1,2]",
         "aemg scaling fit --runs runs.csv --out scaling/ --group seed --flops 1e15,1e16,1e17",
         "aemg scaling plot --fit scaling/fit.json --runs runs.csv --out scaling/"])
    p.add_argument("action", choices=["run", "fit", "plot"])
    p.add_argument("--config", help="run: YAML with a ScalingRunConfig (see configs/scaling/ and tuning/scaling.py)")
    p.add_argument("--resume", action="store_true", help="run: continue in its out folder; finished runs are kept")
    p.add_argument("--quiet", action="store_true", help="run: no progress output")
    p.add_argument("--runs", help="fit, plot: CSV with one row per run: N, D, loss (and the --group column)")
    p.add_argument("--out", help="fit, plot: output folder")
    p.add_argument("--fit", help="plot: the fit.json written by `aemg scaling fit`")
    p.add_argument("--group", help="fit: column whose values are resampled whole by the bootstrap (default: runs)")
    p.add_argument("--n-boot", type=int, default=200, help="fit: bootstrap resamples (default 200)")
    p.add_argument("--seed", type=int, default=0, help="fit: bootstrap and start-grid seed (default 0)")
    p.add_argument("--flops", help="fit: comma-separated FLOP budgets for the compute-optimal table (default: "
                                   "three spanning the runs)")
    p.add_argument("overrides", nargs="*", help="run: key=value overrides, e.g. out=runs/scaling2 steps=[100,200]")
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("plot", help="draw a recording's events and tokens, or a model's codebook prototypes",
                       description="events: one panel per channel with the harmonized signal, its envelope, the noise "
                                   "floor thresholds, detected events and token groups (recruitment ranks), under the "
                                   "labeled segments; to check the detector by eye. prototypes: what the codebook of "
                                   "a pretrained model learned: per code (most used first) the envelope shape over the "
                                   "event, band powers, share of active tokens, amplitude, duration and use, over a "
                                   "sample of token windows; also writes a CSV of every code.",
                       epilog="examples:\n  aemg plot events --corpus corpus.zarr --key 3dc/Participant1/train\n"
                              "  aemg plot prototypes --checkpoint runs/pt --tokens runs/tokens --out prototypes.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["events", "prototypes"])
    p.add_argument("--corpus", help="events: CORPUS.zarr")
    p.add_argument("--key", help="events: recording dataset/subject/session (default: the first one)")
    p.add_argument("--start", type=float, default=0.0, help="events: start time in s (default 0)")
    p.add_argument("--duration", type=float, default=20.0, help="events: seconds to draw (default 20)")
    p.add_argument("--checkpoint", help="prototypes: an `aemg pretrain` run folder (or its export/)")
    p.add_argument("--tokens", help="prototypes: a token folder (`aemg tokenize` output) to assign codes over")
    p.add_argument("--windows", type=int, default=4000, help="prototypes: windows sampled (default 4000)")
    p.add_argument("--top", type=int, default=24, help="prototypes: codes drawn, most used first (default 24)")
    p.add_argument("--out", help="PNG path (default events_<key>.png / prototypes.png)")
    p.add_argument("--config", help="events: YAML with a TokenizeConfig (its events and tokens sections are used)")
    p.add_argument("overrides", nargs="*", help="events: key=value overrides, e.g. events.high=2.5")
    p.set_defaults(func=cmd_plot)

    p = subcommand(
        sub, "finetune", "pretrained model + one person's labeled recordings -> a personal decoder folder",
        "Calibrate a pretrained encoder to one subject with the evaluation's recipe: labeled windows tokenized as in "
        "pretraining, a held-out slice of each label's repetitions kept aside, normalization, noise floor and usable "
        "channels from the calibration windows only, LP-FT (a source model on the dataset's other subjects in the "
        "corpus, adapted to the calibration windows; or the person alone). Prints the held-out slice's balanced "
        "accuracy and confusion matrix and writes one self-contained model folder (safetensors weights, config.json "
        "with classes, harmonization, token settings and the statistics), loadable without pickle. A --manifest's "
        "recordings of the subject are prepared first.",
        ["aemg finetune --pretrained runs/pt --manifest mylab.yaml --source /data --subject mylab/07 --out me/",
         "aemg finetune --pretrained runs/pt --corpus corpus.zarr --subject synth_hdgrid/s01 --out grid-s01/ "
         "train.base_steps=200 other_subjects=false"])
    p.add_argument("--pretrained", required=True, help="an `aemg pretrain` run folder (or its export/)")
    p.add_argument("--subject", required=True, help="dataset/subject to calibrate to")
    p.add_argument("--corpus", help="a prepared corpus holding the subject")
    p.add_argument("--manifest", help="a dataset manifest (instead of --corpus)")
    p.add_argument("--source", help="with --manifest: the data root holding the dataset's folder")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--work", help="keep the prepared corpus and windows here (default: a temporary folder)")
    p.add_argument("--config", help="YAML with a PersonalConfig (train.*, windows.*, test_percent, ...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.base_steps=200 test_percent=25")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_finetune, workers=1)

    p = subcommand(
        sub, "predict", "personal decoder + a recording or a live stream -> per-window labels and probabilities (CSV)",
        "Decode a recording (a corpus key, a manifest's recording, or one file with an inline reader spec) or a live "
        "stream of raw samples (standard input, or a socket bound to 127.0.0.1) into one CSV row per hop: window end, "
        "label, label name, one probability per class. Raw input goes through causal processing (filters that never "
        "look ahead, the decoder's calibration statistics, online event detection), so a file gives the decisions "
        "its live stream would; --zero-phase filters a raw recording as harmonization does instead.",
        ["aemg predict --model me/ --manifest mylab.yaml --source /data --key mylab/07/day3 --out day3.csv",
         "aemg predict --model me/ --file S1_E1_A1.mat --reader '{kind: mat, emg: emg}' --out s1.csv",
         "aemg predict --model grid-s01/ --corpus corpus.zarr --key synth_hdgrid/s01/session1 --out - ",
         "my_amplifier | aemg predict --model me/ --stream --dtype int16 > decisions.csv"])
    p.add_argument("--model", required=True, help="a model folder written by `aemg finetune`")
    p.add_argument("--corpus", help="a corpus, with --key")
    p.add_argument("--manifest", help="a dataset manifest, with --key (and --source for its data root)")
    p.add_argument("--source", help="with --manifest: the data root holding the dataset's folder")
    p.add_argument("--key", help="the recording dataset/subject/session")
    p.add_argument("--file", help="one source file, with --reader")
    p.add_argument("--reader", help="with --file: a reader spec in YAML, e.g. '{kind: hdf5, emg: /emg}'")
    p.add_argument("--zero-phase", action="store_true",
                   help="raw input: harmonization's zero-phase filters instead of the causal path")
    p.add_argument("--stream", action="store_true", help="read raw samples from standard input until it ends")
    p.add_argument("--listen", type=int, metavar="PORT", help="read raw samples from the first client of "
                                                               "127.0.0.1:PORT instead of standard input")
    p.add_argument("--dtype", default="float32", help="stream sample type: a numpy dtype of interleaved binary "
                                                      "frames (default float32) or 'text' (one sample per line)")
    p.add_argument("--fs", type=float, help="stream rate in Hz (default: the decoder's device rate)")
    p.add_argument("--out", help="CSV to write, '-' for standard output (the default with --stream)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("corpus", help="inspect or validate a corpus",
                       description="info: datasets, subjects, sessions, hours, channels, source rates. "
                                   "check: validate every recording (non-zero exit on problems).")
    p.add_argument("action", choices=["info", "check"])
    p.add_argument("corpus", help="CORPUS.zarr")
    p.set_defaults(func=cmd_corpus)
    jobs.add_commands(sub)  # aemg submit / aemg jobs
    for command in sub.choices.values():  # `aemg CMD ... --debug` as well as `aemg --debug CMD ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print the traceback of a failure")
        command.epilog = f"{command.epilog}\n\n{EXIT_HELP}" if command.epilog else EXIT_HELP
        if command.formatter_class is not argparse.RawDescriptionHelpFormatter and command.description:
            command.description = textwrap.fill(command.description, width=100)  # raw keeps the epilog's lines
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def exit_status(err: BaseException) -> tuple[int, str]:
    """(exit status, label) of a failure: EXIT_USAGE for a bad command line, config, manifest or path; EXIT_DATA
    for input files whose content cannot be used (source files, a corpus, a checkpoint); EXIT_RUNTIME for
    anything else (a failure of the run itself, not of what it was given)."""
    from aemg_dist.model.export import CheckpointError
    from preprocessing.corpus import CorpusError
    from preprocessing.errors import DataError, ManifestError

    if isinstance(err, (CommandError, ConfigError, ManifestError, FileNotFoundError, FileExistsError,
                        NotADirectoryError, IsADirectoryError)):
        return EXIT_USAGE, "error"
    if isinstance(err, (DataError, CorpusError, CheckpointError)):
        return EXIT_DATA, "data error"
    return EXIT_RUNTIME, "failed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (argparse alone takes them only in one run)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], int] = args.func
    from preprocessing.errors import first_line

    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"aemg {args.command}: interrupted; complete recordings are kept, re-run to finish", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure ends in one line and its exit status
        if args.debug:
            traceback.print_exc()
        # a Ray task's error by its cause: Ray's own text holds the remote traceback
        cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
        status, label = exit_status(cause)
        message = first_line(cause)
        if status == EXIT_RUNTIME:
            message = f"{type(cause).__name__}: {message}" + ("" if args.debug else
                                                               " (run again with --debug for the traceback)")
        print(f"aemg {args.command}: {label}: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":  # `python -m aemg_dist.cli` (how `aemg submit` runs a checkout)
    sys.exit(main())
