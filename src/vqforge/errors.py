"""Errors that reach users. Each message names what is wrong and how to fix it."""

from __future__ import annotations


class VQForgeError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(VQForgeError):
    """A config value is missing, unknown, of the wrong type, out of range or contradictory."""

    def __init__(self, path: str, problem: str, fix: str | None = None):
        self.path = path
        self.problem = problem
        self.fix = fix
        msg = f"{path}: {problem}" if path else problem
        if fix:
            msg += f"\n  fix: {fix}"
        super().__init__(msg)


class CheckpointError(VQForgeError):
    """A checkpoint file is unreadable, unsafe, or does not match the model."""


class DataError(VQForgeError):
    """Training or evaluation data cannot be read."""


class TrainingError(VQForgeError):
    """Training cannot continue (e.g. too many non-finite steps in a row)."""
