"""Label selectors: the query-string form (``a=b,c!=d,e,!f,g in (h,i),j notin (k)``) and the
``LabelSelector`` object (``matchLabels`` + ``matchExpressions``) workloads carry."""

from __future__ import annotations

import re

LABEL_KEY = re.compile(r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _split_top(s: str) -> list[str]:
    """Split on the commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(selector: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``a=b,c!=d,e,!f,g in (h,i),j notin (k)`` → [(key, op, values)]; raises ValueError."""
    reqs = []
    for part in _split_top(selector or ""):
        m = re.fullmatch(r"(\S+?)\s+(in|notin)\s*\((.*)\)", part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise ValueError("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty")
            key, op = m.group(1), m.group(2)
        else:
            m = re.fullmatch(r"([^\s!=<>()]+)\s*(==|=|!=)\s*([^\s,()=!]*)", part)
            if m:
                key, op, values = m.group(1), {"==": "=", "=": "=", "!=": "!="}[m.group(2)], (m.group(3),)
            else:
                m = re.fullmatch(r"(!?)\s*([^\s!=<>()]+)", part)
                if not m:
                    raise ValueError(f"unable to parse requirement: found '{part}', expected: identifier")
                key, op, values = m.group(2), ("!" if m.group(1) else "exists"), ()
        if not LABEL_KEY.match(key):
            raise ValueError(f"unable to parse requirement: invalid label key \"{key}\"")
        for v in values:
            if len(v) > 63 or not LABEL_VALUE.match(v):
                raise ValueError(f"unable to parse requirement: invalid label value: \"{v}\"")
        reqs.append((key, op, values))
    return reqs


def match_label_selector(reqs: list, labels: dict) -> bool:
    for key, op, values in reqs:
        has = key in labels
        val = labels.get(key)
        if op == "=" and not (has and val == values[0]):
            return False
        if op == "!=" and has and val == values[0]:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
        if op == "in" and not (has and val in values):
            return False
        if op == "notin" and has and val in values:
            return False
    return True


def match_selector_object(selector: dict | None, labels: dict) -> bool:
    """A ``LabelSelector`` object (matchLabels + matchExpressions). An empty selector matches everything."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
