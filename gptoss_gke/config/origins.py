"""Where each setting came from (file and line, variable, flag) and how a problem with it is said."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptoss_gke.errors import Problem

README = "env/README.md documents every key"


@dataclass
class Layers:
    data: dict = field(default_factory=dict)
    origin: dict[tuple, str] = field(default_factory=dict)  # key path → "env/dev.yaml:12" etc.

    def merge(self, path: tuple, value: Any, origin: str) -> None:
        node = self.data
        for key in path[:-1]:
            nxt = node.get(key)
            if not isinstance(nxt, dict):
                nxt = node[key] = {}
            node = nxt
        node[path[-1]] = value
        self.origin[path] = origin

    def merge_tree(self, tree: dict, origin_of, prefix: tuple = ()) -> None:
        for key, value in tree.items():
            path = prefix + (key,)
            if isinstance(value, dict) and value and not _is_leaf_mapping(path):
                self.origin[path] = origin_of(path)
                self.merge_tree(value, origin_of, path)
            else:
                self.merge(path, value, origin_of(path))

    def where(self, loc: tuple) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.origin:
                return self.origin[loc[:n]]
        return "defaults"


def _is_leaf_mapping(path: tuple) -> bool:
    """Mappings that are values (labels, prices) replace as a whole rather than merge key by key."""
    return path[-1] in ("labels",) or (len(path) == 2 and path[0] == "prices")


def quote(value: Any) -> str:
    """A value shown in a message: short, and never something shaped like a credential."""
    from gptoss_gke.core.redact import Redactor

    text = value if isinstance(value, str) else repr(value)
    if Redactor()(text) != text:
        return "(value not shown: it looks like a credential)"
    return repr(text if len(text) <= 80 else text[:77] + "...")


def problem_at(layers: Layers, loc: tuple, message: str, allowed: str = "", fix: str = "") -> Problem:
    where = layers.where(loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    return Problem(where, key, message, allowed, fix or _fix_at(where, key))


def _fix_at(where: str, key: str) -> str:
    if where.startswith("environment variable "):
        return f"change or unset {where.removeprefix('environment variable ')}"
    if where.startswith("flag --set"):
        return f"change --set {key}=..."
    if where == "defaults":
        return f"set {key} in the environment file ({README})"
    return f"edit {key} at {where} ({README})"


