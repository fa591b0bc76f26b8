"""How long each method should train on the source subjects, chosen on development folds (issue 14).

    python benchmarks/source_length.py 300=runs/ablate/dev-baselines-base300-s012 \\
        1000=runs/ablate/dev-baselines-base1000-s012 [--budgets 0,1,10,100] [--out table.md]

Each argument is STEPS=FOLDER: an `aemg evaluate`/`aemg baselines` output on the same development folds, seeds and
budgets, every neural method in it trained STEPS steps on the source subjects (`train.base_steps`). A length run
in parts (e.g. two methods at a time) is given as STEPS=FOLDER once per part; a method in two parts is refused.
For every method that has a source length (its trials record `source_steps`) and every run, the table gives its mean
balanced accuracy per budget (over the held-out subjects, seeds averaged), their mean, and how well its source
model fits the source windows (`source_accuracy`, mean over trials). The rule is the one the AEMG arms were chosen
by: each method takes the length with the highest mean over the budgets (ties: the shorter). The last line is
those choices as `train.source_steps.<method>=<steps>` overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablation_table import mean_level, rows_of  # noqa: E402

from aemg_dist.evaluation.report import per_subject  # noqa: E402


def by_length(runs: dict[int, list[dict]], budgets: tuple[float, ...]) -> dict[str, dict[int, dict]]:
    """method -> steps -> {"levels": per budget, "mean": over the budgets, "fit": mean source accuracy}, for the
    methods trained on the source subjects (source_steps recorded) in every run."""
    table: dict[str, dict[int, dict]] = {}
    for steps, rows in runs.items():
        cells = per_subject(rows, "balanced_accuracy")
        for method in sorted({r["method"] for r in rows if r.get("source_steps") is not None}):
            recorded = {r["source_steps"] for r in rows if r["method"] == method}
            if recorded != {steps}:
                raise ValueError(f"the run labelled {steps} trained {method} for {sorted(recorded)} source steps")
            levels = [mean_level(cells, method, b) for b in budgets]
            fits = [r["source_accuracy"] for r in rows if r["method"] == method and r.get("source_accuracy") is not None]
            table.setdefault(method, {})[steps] = {"levels": levels, "mean": float(np.mean(levels)),
                                                   "fit": float(np.mean(fits)) if fits else float("nan")}
    return table


def parts_of(folders: list[Path]) -> list[dict]:
    """The trials of one length's folders together; a method trained on the source in two of them is refused (which
    would count?)."""
    def trained(rows: list[dict]) -> set[str]:
        return {r["method"] for r in rows if r.get("source_steps") is not None}

    rows: list[dict] = []
    for folder in folders:
        own = rows_of(folder)
        twice = sorted(trained(own) & trained(rows))
        if twice:
            raise ValueError(f"{folder} has trials of {', '.join(twice)} that another folder of its length has too")
        rows += own
    return rows


def chosen(lengths: dict[int, dict]) -> int:
    """The length with the highest mean over the budgets; the shorter one of a tie (equal to 1e-9: float sums of
    the same levels in another order differ in the last bits)."""
    return max(sorted(lengths), key=lambda steps: (round(lengths[steps]["mean"], 9), -steps))


def markdown(table: dict[str, dict[int, dict]], budgets: tuple[float, ...]) -> str:
    head = "".join(f" {b:g} % |" for b in budgets)
    lines = [f"| method | source steps |{head} mean of these budgets | source fit |",
             "|---|---|" + "---|" * (len(budgets) + 2)]
    for method, lengths in table.items():
        best = chosen(lengths)
        for steps in sorted(lengths):
            cell = lengths[steps]
            mean = f"**{cell['mean']:.3f}**" if steps == best else f"{cell['mean']:.3f}"
            levels = "".join(f" {v:.3f} |" for v in cell["levels"])
            lines.append(f"| {method} | {steps} |{levels} {mean} | {cell['fit']:.3f} |")
    choices = " ".join(f"train.source_steps.{method}={chosen(lengths)}" for method, lengths in table.items())
    return "\n".join(lines) + f"\n\nchosen: {choices}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="STEPS=FOLDER: the same development evaluation at STEPS source steps")
    parser.add_argument("--budgets", default="0,1,10,100", help="budgets (%%) the mean is taken over")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    folders: dict[int, list[Path]] = {}
    for spec in args.runs:
        steps, _, folder = spec.partition("=")
        if not steps.isdigit() or not folder:
            parser.error(f"expected STEPS=FOLDER, got {spec!r}")
        folders.setdefault(int(steps), []).append(Path(folder))
    runs = {steps: parts_of(parts) for steps, parts in folders.items()}
    budgets = tuple(float(b) for b in args.budgets.split(","))
    text = markdown(by_length(runs, budgets), budgets)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
