"""Paired difference between two evaluations of the same folds (e.g. strict vs transductive statistics).

    python benchmarks/compare_runs.py RUN_A RUN_B [--methods m1,m2] [--out table.md]

Rows of RUN_A/trials.jsonl and RUN_B/trials.jsonl are paired by (method, dataset, held-out subject,
budget, seed); only pairs present in both count. Per method and budget: mean balanced accuracy of A
and B over the paired held-out subjects (seeds averaged per subject, datasets pooled), A - B, how
often A is higher, and the Wilcoxon signed-rank p over subjects; then the same per dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon


def subject_means(run: Path) -> dict[tuple[str, str, str, float], float]:
    """{(method, dataset, subject, budget): balanced accuracy averaged over the run's seeds}."""
    values: dict[tuple, dict[int, float]] = {}
    for line in (run / "trials.jsonl").read_text().splitlines():
        for r in json.loads(line)["trials"]:
            key = (r["method"], r["dataset"], r["subject"], float(r["budget"]))
            values.setdefault(key, {})[int(r["seed"])] = float(r["balanced_accuracy"])
    return values


def compare(a: Path, b: Path, methods: list[str] | None = None) -> list[dict]:
    """One row per (method, dataset or "all", budget): paired over the subjects (and seeds) both runs hold."""
    first, second = subject_means(a), subject_means(b)
    pairs: dict[tuple[str, str, float], list[tuple[float, float]]] = {}
    for key in sorted(set(first) & set(second)):
        method, dataset, _, budget = key
        if methods and method not in methods:
            continue
        seeds = sorted(set(first[key]) & set(second[key]))  # the same calibration draws on both sides
        if not seeds:
            continue
        pair = (float(np.mean([first[key][s] for s in seeds])), float(np.mean([second[key][s] for s in seeds])))
        pairs.setdefault((method, dataset, budget), []).append(pair)
        pairs.setdefault((method, "all", budget), []).append(pair)
    rows = []
    for (method, dataset, budget), values in sorted(pairs.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all",
                                                                                    kv[0][1], kv[0][2])):
        x, y = np.array(values).T
        p = float(wilcoxon(x, y).pvalue) if np.any(x != y) else float("nan")
        rows.append({"method": method, "dataset": dataset, "budget": budget, "n": x.size, "a": x.mean(),
                     "b": y.mean(), "difference": (x - y).mean(), "a_higher": int((x > y).sum()), "p": p})
    return rows


def markdown(rows: list[dict], a: str, b: str) -> str:
    lines = [f"| method | dataset | budget | subjects | {a} | {b} | difference | {a} higher | p (Wilcoxon) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['dataset']} | {r['budget']:g} % | {r['n']} | {r['a']:.3f} | {r['b']:.3f} | "
              f"{r['difference']:+.3f} | {r['a_higher']}/{r['n']} | {r['p']:.2g} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="an `aemg evaluate` output folder")
    parser.add_argument("b", type=Path, help="another one, on (some of) the same folds")
    parser.add_argument("--methods", help="comma-separated methods (default: all)")
    parser.add_argument("--datasets", action="store_true", help="also print the per-dataset rows")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    rows = compare(args.a, args.b, args.methods.split(",") if args.methods else None)
    if not args.datasets:
        rows = [r for r in rows if r["dataset"] == "all"]
    table = markdown(rows, args.a.name, args.b.name)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
