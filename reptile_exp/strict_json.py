"""Every JSON the project writes and reads (summary.json, evaluation.json, metrics.jsonl, the scripts' reports).

JSON has no NaN or infinity, and strict parsers (jq, JavaScript) refuse Python's bare NaN: a float that is not finite
is written, at any depth, as the string "nan", "inf" or "-inf", and read back as that float.
"""

from __future__ import annotations

import json
import math
from typing import Any

NOT_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _written(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _written(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_written(v) for v in value]
    return value


def _read(value: Any) -> Any:
    if isinstance(value, str):
        return NOT_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _read(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_read(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`value` as strict JSON (json.dumps's keyword arguments, e.g. indent)."""
    return json.dumps(_written(value), allow_nan=False, **kwargs)


def loads(text: str) -> Any:
    """JSON text as written by dumps (or by older runs, with bare NaN), the non-finite floats as floats again."""
    return _read(json.loads(text))
