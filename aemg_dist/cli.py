"""The `aemg` command line. Every command says where it wrote its outputs and exits
non-zero with a one-line reason on bad input."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from aemg_dist.config import ConfigError, load_config, save_config

DEFAULT_DATA_ROOT = "../shared/data"


class CommandError(RuntimeError):
    """A failure the user can act on; printed as one line, exit status 2."""


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as an aligned plain-text table."""
    if not rows:
        return "(empty)"
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    header = list(rows[0].keys())
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cell, widths))) for cell in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- prepare / corpus

def _source_jobs(args: argparse.Namespace) -> list:
    """Jobs for `--source synthetic`, a dataset name, a data folder or `--manifest`."""
    if args.source == "synthetic" and not args.manifest:
        from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

        return synthetic_jobs(SyntheticConfig(seed=args.seed, scale=args.scale))
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
    from preprocessing.harmonize import HarmonizeConfig
    from preprocessing.prepare import prepare

    overrides = list(args.overrides) + ([f"target_fs={args.target_fs}"] if args.target_fs else [])
    config = load_config(HarmonizeConfig, args.config, overrides)
    jobs = _source_jobs(args)
    print(f"preparing {len(jobs)} recordings into {args.out}", flush=True)
    report = prepare(jobs, args.out, config, workers=args.workers, address=args.address, progress=not args.quiet)
    save_config(config, Path(args.out) / "prepare.yaml")
    print(report.summary())
    print(f"wrote {args.out} (resolved config: {Path(args.out) / 'prepare.yaml'})")
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
    from aemg_dist.data import TokenizeConfig, tokenize_corpus

    config = load_config(TokenizeConfig, args.config, args.overrides)
    report = tokenize_corpus(args.corpus, args.out, config, workers=args.workers, address=args.address,
                             progress=not args.quiet)
    print(report.summary())
    print(f"wrote {args.out} (manifest: tokens.json, resolved config: tokenize.yaml)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from aemg_dist.data import TokenizeConfig
    from aemg_dist.plots import plot_events
    from preprocessing.corpus import Corpus

    config = load_config(TokenizeConfig, args.config, args.overrides)
    key = args.key or Corpus(args.corpus).keys()[0]
    if key not in Corpus(args.corpus):
        raise CommandError(f"{key!r} is not a recording of {args.corpus} (see `aemg corpus info`)")
    out = args.out or f"events_{key.replace('/', '_')}.png"
    path = plot_events(args.corpus, key, out, start_s=args.start, duration_s=args.duration,
                       ev_cfg=config.events, tok_cfg=config.tokens)
    print(f"wrote {path}")
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


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from aemg_dist.data import TokenizeConfig, tokenize_corpus
    from aemg_dist.train import REPO_ROOT, load_pretrain_config, pretrain
    from preprocessing.corpus import Corpus, check_corpus, corpus_summary
    from preprocessing.harmonize import HarmonizeConfig
    from preprocessing.prepare import prepare
    from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

    out = Path(args.out)
    corpus_path, tokens_path = out / "corpus.zarr", out / "tokens"
    config = HarmonizeConfig()
    print(f"[1/3] prepare: synthetic ({args.scale}, seed {args.seed}) -> {corpus_path}", flush=True)
    report = prepare(synthetic_jobs(SyntheticConfig(seed=args.seed, scale=args.scale)), corpus_path, config,
                     workers=args.workers, progress=not args.quiet)
    save_config(config, corpus_path / "prepare.yaml")
    print(report.summary())
    problems = check_corpus(corpus_path)
    if problems or not report.ok:
        raise CommandError(f"demo corpus has problems: {(problems or report.failed)[:3]}")
    print(format_table(corpus_summary(Corpus(corpus_path))))

    print(f"[2/3] tokenize: {corpus_path} -> {tokens_path}", flush=True)
    shutil.rmtree(tokens_path, ignore_errors=True)  # tokens and models are cheap to remake; the corpus is kept
    print(tokenize_corpus(corpus_path, tokens_path, TokenizeConfig(), workers=args.workers,
                          progress=not args.quiet).summary())

    pretrain_path = out / "pretrain"
    shutil.rmtree(pretrain_path, ignore_errors=True)
    where = "in this process" if args.workers == 1 else "on Ray Train + DeepSpeed, 2 workers"
    print(f"[3/3] pretrain: tiny model {where} -> {pretrain_path}", flush=True)
    config = load_pretrain_config(REPO_ROOT / "configs" / "pretrain" / "tiny.yaml", [
        f"data.tokens={tokens_path}", f"run.out={pretrain_path}", f"run.seed={args.seed}",
        *(["dist.ray=false"] if args.workers == 1 else [])])
    result = pretrain(config)
    print(f"pretrained {result.steps} steps: " + ", ".join(
        f"{k}={result.final[k]:.3g}" for k in ("loss", "val_loss", "codebook_usage", "perplexity", "mtm_accuracy")
        if k in result.final))
    print(f"demo outputs in {out} (corpus.zarr, tokens/, pretrain/: loss.png, codebook.png, export/)")
    return 0


# ---------------------------------------------------------------- parser

def _add_synthetic_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="demo", choices=["tiny", "demo", "full"], help="synthetic corpus size")
    p.add_argument("--seed", type=int, default=0, help="synthetic generator seed")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=0,
                   help="1 = run in this process; 0 = Ray tasks on all local CPUs (default); N = local Ray with N CPUs")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _subcommand(sub: Any, name: str, help: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with worked examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aemg",
        description="AEMG-dist: harmonize sEMG corpora, tokenize contraction events, pretrain and evaluate "
                    "neuromuscular token models on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic data through the whole pipeline (no downloads)",
                       description="Generate the built-in synthetic corpus and run the pipeline on it.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    _add_synthetic_options(p)
    _add_runtime_options(p)
    p.set_defaults(func=cmd_demo)

    p = _subcommand(
        sub, "prepare", "source datasets -> harmonized Zarr corpus",
        "Read datasets through their manifests (or the synthetic generator), harmonize them (filter, notch, "
        "resample, robust z-score, quality flags, electrode positions) and write one Zarr corpus. Re-running "
        "skips recordings that are already complete.",
        ["aemg prepare --source ../shared/data --out corpus.zarr",
         "aemg prepare --source 3dc --out corpus.zarr target_fs=2000",
         "aemg prepare --manifest my_dataset.yaml --source /data --out corpus.zarr",
         "aemg prepare --source synthetic --scale tiny --out synth.zarr"])
    p.add_argument("--source", help="'synthetic', a shipped dataset name (3dc, coteallard, ...), or a folder "
                                    "holding dataset folders (e.g. ../shared/data); with --manifest: the data root")
    p.add_argument("--manifest", help="a dataset manifest YAML (see README: adding a dataset)")
    p.add_argument("--out", required=True, help="corpus path (CORPUS.zarr)")
    p.add_argument("--target-fs", type=float, default=None, help="common sample rate in Hz (default 1000)")
    p.add_argument("--config", help="YAML with harmonization settings (HarmonizeConfig)")
    _add_synthetic_options(p)
    p.add_argument("overrides", nargs="*", help="harmonization overrides key=value (e.g. highpass_hz=10)")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_prepare)

    p = _subcommand(
        sub, "tokenize", "corpus -> contraction events -> token shards (Parquet), on Ray Data",
        "Detect contraction events per window and turn them into neuromuscular tokens: one Parquet row per "
        "window (pretraining chunks by default, or labeled classification windows), plus tokens.json (files, "
        "counts, feature names) and the resolved tokenize.yaml.",
        ["aemg tokenize --corpus corpus.zarr --out tokens/",
         "aemg tokenize --corpus corpus.zarr --out windows/ windows.kind=labeled windows.length_s=0.5 "
         "windows.stride_s=0.25 windows.margin_s=0.25",
         "aemg tokenize --corpus corpus.zarr --out tokens/ events.envelope=tkeo tokens.include_quiet=false"])
    p.add_argument("--corpus", required=True, help="CORPUS.zarr made by `aemg prepare`")
    p.add_argument("--out", required=True, help="output folder for the token shards (must not hold shards yet)")
    p.add_argument("--config", help="YAML with a TokenizeConfig (events, tokens, windows, shard_s)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. events.high=2.5 windows.kind=labeled")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_tokenize)

    p = _subcommand(
        sub, "pretrain", "token shards -> pretrained model (Ray Train + DeepSpeed)",
        "Self-supervised pretraining of the conditioned Transformer: VQ reconstruction of the tokens (a codebook "
        "of contraction prototypes) and masked token modeling, on Ray Train workers with DeepSpeed ZeRO. A run "
        "started again with the same run.out resumes from its latest checkpoint.",
        ["aemg pretrain --config configs/pretrain/tiny.yaml data.tokens=runs/demo/tokens",
         "aemg pretrain --config configs/pretrain/tiny.yaml dist.zero_stage=2 model.codebook_size=256",
         "aemg pretrain --config configs/pretrain/tiny.yaml --no-ray optim.max_steps=50"])
    p.add_argument("--config", help="YAML with a PretrainConfig (preset, model, data, optim, run, dist)")
    p.add_argument("--no-ray", action="store_true", help="run the same loop in this process, without Ray/DeepSpeed")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. preset=small optim.max_steps=1000")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("plot", help="draw a recording's signal, envelope, thresholds, events and token groups",
                       description="events: one panel per channel with the harmonized signal, its envelope, the noise "
                                   "floor thresholds, detected events and token groups (recruitment ranks), under the "
                                   "labeled segments; to check the detector by eye.")
    p.add_argument("what", choices=["events"])
    p.add_argument("--corpus", required=True, help="CORPUS.zarr")
    p.add_argument("--key", help="recording dataset/subject/session (default: the first one)")
    p.add_argument("--start", type=float, default=0.0, help="start time in s (default 0)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds to draw (default 20)")
    p.add_argument("--out", help="PNG path (default events_<key>.png)")
    p.add_argument("--config", help="YAML with a TokenizeConfig (its events and tokens sections are used)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. events.high=2.5")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("corpus", help="inspect or validate a corpus",
                       description="info: datasets, subjects, sessions, hours, channels, source rates. "
                                   "check: validate every recording (non-zero exit on problems).")
    p.add_argument("action", choices=["info", "check"])
    p.add_argument("corpus", help="CORPUS.zarr")
    p.set_defaults(func=cmd_corpus)
    __import__("aemg_dist.jobs").jobs.add_commands(sub)  # aemg submit / aemg jobs (imports cli: a late import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (argparse alone takes them only in one run)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], int] = args.func
    from preprocessing.corpus import CorpusError
    from preprocessing.errors import DataError, ManifestError

    try:
        return func(args)
    except (CommandError, ConfigError, CorpusError, DataError, ManifestError, FileNotFoundError,
            FileExistsError) as err:
        print(f"aemg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aemg {args.command}: interrupted; complete recordings are kept, re-run to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
