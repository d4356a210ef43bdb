"""Hydra's instantiate for the config groups, with our own one-line errors unwrapped from Hydra's."""

from __future__ import annotations

import logging
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig

from .errors import ConfigError, ReptileExpError


def instantiate(node: DictConfig, *args, **kwargs):
    """hydra.utils.instantiate, re-raising a ReptileExpError the target raised as itself (not wrapped), and a _target_
    that does not import or does not take the group's keys as ConfigError (target_error)."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ReptileExpError):
            raise e.__cause__ from None
        if isinstance(e.__cause__, (ImportError, TypeError)):
            raise ConfigError(target_error(e)) from None
        raise


def target_error(e: InstantiationException) -> str:
    """The one line of a _target_ that does not import or does not take its keys: Hydra's words (without its
    HYDRA_FULL_ERROR hint) and the fix."""
    reason = " ".join(str(e).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "").split())
    return f"{reason}; check the _target_ and keys of that config group"


def locate(target: str) -> Any:
    """The object a _target_ names (hydra.utils.get_object) without Hydra's ERROR lines when it is missing: the
    caller's one-line error says it, so a bad target gives no more than that line (ImportError as get_object)."""
    hydra_log = logging.getLogger("hydra.utils")
    disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return get_object(target)
    finally:
        hydra_log.disabled = disabled


def parameter_count(node: DictConfig) -> int | None:
    """The parameters of the module `node` builds, counted on the meta device (shapes only: no memory, milliseconds;
    a forward pass there would cost seconds of imports); None where it cannot be built there."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in instantiate(node).parameters())
    except Exception:  # noqa: BLE001 - the real build says why
        return None
