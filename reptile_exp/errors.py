"""The errors a user can fix: the ground floor every other module builds on.

The entry point (train.py, through cli.py) prints a ReptileExpError as one line, without a traceback.
"""

from __future__ import annotations

from typing import Any

from omegaconf import ListConfig, OmegaConf


class ReptileExpError(Exception):
    """An error the user can fix; the entry point prints it as one line, without a traceback."""


class Diverged(ReptileExpError):
    """A loss, phi or an evaluation's metric that is not finite."""


class ConfigError(ReptileExpError, ValueError):
    """A config value out of range or inconsistent with another."""


def fail(key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError naming the key, its value and what is allowed."""
    value = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def first_line(e: Exception) -> str:
    """An exception's first line (its type's name when it has no message): what a one-line error quotes."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
