"""Hydra's instantiate for the config groups, with our own one-line errors unwrapped from Hydra's."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig

from .errors import ReptileExpError


def instantiate(node: DictConfig, *args):
    """hydra.utils.instantiate, re-raising a ReptileExpError the target raised as itself (not wrapped)."""
    try:
        return hydra_instantiate(node, *args)
    except InstantiationException as e:
        if isinstance(e.__cause__, ReptileExpError):
            raise e.__cause__ from None
        raise
