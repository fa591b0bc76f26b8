"""Errors raised for bad input: they always name the file (or recording) and the problem."""

from __future__ import annotations


class DataError(ValueError):
    """A source file or recording cannot be used as it is."""

    def __init__(self, where: str, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class ManifestError(ValueError):
    """A dataset manifest is malformed or inconsistent."""


def first_line(err: BaseException) -> str:
    """An error's message as one line (the type's name when it has none), for one-line reports."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
