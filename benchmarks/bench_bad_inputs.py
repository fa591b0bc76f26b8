"""Count how a checkout meets the bad-input matrix (tests/bad_inputs.py): every case in its own process, with a
time limit, classified as a clear error, a traceback, a hang, silent bad data, a half-written output or unclear
(another exit status or a message that does not name the culprit).

    python benchmarks/bench_bad_inputs.py                                   # this checkout
    python benchmarks/bench_bad_inputs.py --checkout runs/old --out benchmarks/out/bad_inputs_old.json

--checkout runs the matrix of this checkout against another one's code (e.g. a `git archive` of an older commit):
its world (dataset, corpus, tokens, run) is built with that code too. Each case takes a few seconds (a Python
start); the whole matrix some minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
KINDS = ("clear", "traceback", "hang", "silent", "half-written", "unclear")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(HERE), help="the code to test (default: this checkout)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before a case counts as a hang")
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--out", help="write every case's outcome to this JSON file")
    args = parser.parse_args()
    checkout = Path(args.checkout).resolve()
    if os.environ.get("AEMG_MATRIX_CHILD") != "1":  # import the checkout's code, the matrix from this one
        env = {**os.environ, "AEMG_MATRIX_CHILD": "1", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(checkout), str(HERE / "tests")])}
        return subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode

    from bad_inputs import CASES, build_world, holding, outcome, read_only_supported, run_subprocess, tree_state

    root = Path(tempfile.mkdtemp(prefix="aemg-matrix-"))
    world = build_world(root / "world")
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        os.environ.pop(variable, None)
    results = {}
    for name in sorted(n for n in CASES if not args.only or args.only in n):
        scratch = root / name.replace(":", "-")
        scratch.mkdir()
        expect = CASES[name](world, scratch)
        if expect.read_only and not read_only_supported():
            continue
        before = {path: tree_state(path) for path in expect.untouched}
        started = time.perf_counter()
        with holding(expect.held):
            code, out, err = run_subprocess(expect.argv, expect.read_only, args.limit, checkout)
        seconds = time.perf_counter() - started
        kind = outcome(expect, code, out, err, seconds, args.limit, before)
        results[name] = {"outcome": kind, "status": code, "expected": expect.code, "seconds": round(seconds, 1),
                         "last_line": (err.strip().splitlines() or out.strip().splitlines() or [""])[-1][:300]}
        print(f"{kind:13s} {code:3d} (want {expect.code}) {seconds:5.1f} s  {name}", flush=True)
    counts = Counter(r["outcome"] for r in results.values())
    print(f"\n{len(results)} cases tried: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in KINDS))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"checkout": str(checkout), "counts": {k: counts.get(k, 0) for k in KINDS},
                                              "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
