"""Small facts about stored objects (labels, ownership, readiness, termination) and the server's clock."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated name suffixes and hashes


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_hash(data: Any, n: int = 10) -> str:
    """A stable short hash in Kubernetes' alphabet (pod-template-hash, controller revisions)."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:n])


def meta(obj: dict) -> dict:
    m = obj.get("metadata")
    if m is None:
        m = obj["metadata"] = {}
    return m


def labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def dig(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def is_ready(pod: dict) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def terminating(obj: dict) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def controller_uid(obj: dict) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None
