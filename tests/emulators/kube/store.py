"""The cluster's state: every object by (kind, namespace, name), one global ``resourceVersion`` counter
bumped only by real changes, the seeded randomness uids and generated names come from, and the few
cluster-wide facts (the node pods land on, the default StorageClass, the address pools)."""

from __future__ import annotations

import copy
import itertools
import random
import threading
import time
import uuid

from .kinds import ResourceType
from .objects import SAFE_ALPHABET, controller_uid


class Store:
    def __init__(self, *, seed: int = 0, node_name: str = "gke-emulator-default-pool-1a2b3c4d-x0x0",
                 default_storage_class: str = "standard-rwo"):
        self.lock = threading.RLock()  # the HTTP handlers, the controllers and the tests all take it
        self.objects: dict[tuple, dict] = {}
        self.removed_at: dict[tuple, float] = {}  # key → time.time() it left the store
        self.rv = 1000
        self.node_name = node_name
        self.default_storage_class = default_storage_class
        self.ip_seq = itertools.count(10)  # cluster IPs, pod IPs and load balancer IPs
        self.node_port_seq = itertools.count(30080)
        self.event_seq = itertools.count(1)
        self._rng = random.Random(seed)

    @staticmethod
    def key(rt: ResourceType, namespace: str | None, name: str) -> tuple:
        return (rt.kind, (namespace or "") if rt.namespaced else "", name)

    def uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def suffix(self, n: int = 5) -> str:
        """A generated name's random suffix, in Kubernetes' alphabet."""
        return "".join(self._rng.choice(SAFE_ALPHABET) for _ in range(n))

    def put(self, key: tuple, obj: dict) -> dict:
        """Store ``obj`` under ``key`` with the next resourceVersion."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        return obj

    def remove(self, key: tuple) -> dict | None:
        """Take the object out; returns it as the DELETED answer shows it (next resourceVersion)."""
        obj = self.objects.pop(key, None)
        if obj is not None:
            self.removed_at[key] = time.time()
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    def set(self, key: tuple, new: dict) -> bool:
        """Controller write: store ``new`` if it differs from the stored object (resourceVersion aside)."""
        old = self.objects.get(key)
        if old is None:
            return False
        cmp_new = dict(new, metadata={k: v for k, v in new["metadata"].items() if k != "resourceVersion"})
        cmp_old = dict(old, metadata={k: v for k, v in old["metadata"].items() if k != "resourceVersion"})
        if cmp_new == cmp_old:
            return False
        self.put(key, new)
        return True

    def of_kind(self, kind: str) -> list[tuple]:
        """The keys of every stored object of ``kind`` (a snapshot: safe to change the store meanwhile)."""
        return [k for k in self.objects if k[0] == kind]

    def owned(self, kind: str, namespace: str, owner_uid: str) -> list[tuple[tuple, dict]]:
        """(key, object) of ``kind`` in ``namespace`` whose controller is ``owner_uid``, by name."""
        return [(k, o) for k, o in sorted(self.objects.items())
                if k[0] == kind and k[1] == namespace and controller_uid(o) == owner_uid]
