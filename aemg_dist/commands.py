"""What every `aemg` command module shares: the error a user can act on, the subcommand parser with worked
examples, and plain-text tables. Below `cli` and `jobs` (which adds `aemg submit` / `aemg jobs` to cli's parser), so
neither imports the other's internals."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, Sequence


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


def subcommand(sub: Any, name: str, help: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with worked examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    description = textwrap.fill(description, width=100)  # raw formatting keeps the examples' lines, so wrap here
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
