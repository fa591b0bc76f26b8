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
