"""How Google's JSON APIs render messages: proto3 JSON (fields holding a default value are omitted, except
inside map fields such as labels; hidden ``_keys`` are the emulator's own), RFC 3339 timestamps, and the
deep merge used to build stored resources from defaults and request bodies."""

from __future__ import annotations

import copy
import datetime as _dt
from typing import Any

MAP_FIELDS = frozenset({"labels", "resourceLabels", "metadata", "resourceManagerTags"})


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def deep_merge(dst: dict, src: dict) -> dict:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and key not in MAP_FIELDS:
            deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def prune(value: Any, in_map: bool = False) -> Any:
    """Render like proto3 JSON: drop default scalars (not inside maps) and hidden ``_keys``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not in_map and key.startswith("_"):
                continue
            if in_map:
                out[key] = copy.deepcopy(item)
                continue
            pruned = prune(item, in_map=key in MAP_FIELDS)
            if _is_default(pruned) and not isinstance(pruned, dict):
                continue
            if isinstance(pruned, dict) and not pruned and key in MAP_FIELDS:
                continue
            out[key] = pruned
        return out
    if isinstance(value, list):
        return [prune(item) for item in value]
    return value


def _is_default(value: Any) -> bool:
    if value is None or value is False or value == "" or value == []:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return True
    if isinstance(value, str) and value.endswith("_UNSPECIFIED"):
        return True
    return False
