"""Long-running operations of every emulated API: GKE's ``Operation`` (``status`` RUNNING/DONE,
``statusMessage``), Artifact Registry's and Service Usage's ``google.longrunning.Operation`` (``done``,
``error``, ``response``). Each answers RUNNING to ``polls`` polls, then completes; a held one stays RUNNING
until released; a failed one ends DONE with ``error``."""

from __future__ import annotations

import copy
import re
import threading
from typing import Any, Callable

from .proto import now

RPC_CODES = {  # google.rpc.Code numbers for operation errors
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14,
}


class OpFailure:
    def __init__(self, method, path_regex, message, code):
        self.method = method.upper() if method else None
        self.regex = re.compile(path_regex)
        self.message = message
        self.code = code


class OperationHold:
    """Operations started by matching mutating requests stay RUNNING until :meth:`release` (a slow
    operation, as a real node-pool delete takes minutes). ``started`` is set when one was started."""

    def __init__(self, method, path_regex):
        self.method = method.upper() if method else None
        self.regex = re.compile(path_regex)
        self.started = threading.Event()
        self.released = threading.Event()

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and bool(self.regex.search(path))

    def release(self) -> None:
        self.released.set()


class Operation:
    """One long-running operation of any of the emulated APIs."""

    def __init__(self, kind: str, name: str, polls: int, *, project: str, location: str | None,
                 op_type: str = "", target: str = "", cluster_key=None, self_link: str = "",
                 on_success: Callable[[], Any] | None = None,
                 on_failure: Callable[[dict], Any] | None = None, metadata: dict | None = None):
        self.kind = kind  # "container" | "lro" (Artifact Registry) | "serviceusage"
        self.self_link = self_link  # GKE operations only
        self.name = name  # the path under /v1/ that GETs it
        self.short_name = name.rsplit("/", 1)[-1]
        self.polls_left = polls
        self.project = project
        self.location = location
        self.op_type = op_type
        self.target = target
        self.cluster_key = cluster_key
        self.on_success = on_success
        self.on_failure = on_failure
        self.metadata = metadata or {}
        self.hold: OperationHold | None = None
        self.error: dict | None = None
        self.done = False
        self.response: Any = None
        self.start_time = now()
        self.end_time: str | None = None
        self.polls = 0

    def complete(self) -> None:
        self.done = True
        self.end_time = now()
        if self.error:
            if self.on_failure:
                self.on_failure(self.error)
        elif self.on_success:
            self.response = self.on_success()

    def poll(self) -> "Operation":
        """One GET of the operation: RUNNING while polls are left (or it is held), then it completes."""
        self.polls += 1
        if not self.done and self.hold is not None and not self.hold.released.is_set():
            return self  # held: RUNNING until the test releases it
        if not self.done:
            if self.polls_left > 0:
                self.polls_left -= 1
            else:
                self.complete()
        return self

    def render(self) -> dict:
        if self.kind == "container":
            out = {
                "name": self.short_name,
                "zone": self.location,
                "operationType": self.op_type,
                "status": "DONE" if self.done else "RUNNING",
                "selfLink": self.self_link,
                "targetLink": self.target,
                "startTime": self.start_time,
            }
            if self.done:
                out["endTime"] = self.end_time
            if self.done and self.error:
                out["statusMessage"] = self.error["message"]
                out["error"] = dict(self.error)
            return out
        out = {"name": self.name, "metadata": copy.deepcopy(self.metadata)}
        if self.done:
            out["done"] = True
            if self.error:
                out["error"] = dict(self.error)
            elif self.response is not None:
                out["response"] = copy.deepcopy(self.response)
        return out
