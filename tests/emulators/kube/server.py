"""The HTTP side of the Kubernetes API emulator: one aiohttp server on 127.0.0.1 (ephemeral port,
background thread) that authenticates, records, routes and answers requests, plus what tests use to set
up and inspect the cluster (seed objects, script pods, inject faults, read the request log)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from aiohttp import web

from tests.emulators.aioserver import LOOPBACK, LoopbackAioServer

from .api import Api, parse_body
from .cloud import Cloud
from .controllers import Controllers
from .defaults import apply_defaults
from .discovery import GIT_VERSION, discovery_document
from .errors import REASONS, ApiError, bad_request, method_not_allowed, not_emulated
from .events import find_involved, record_event
from .kinds import BY_GVR, BY_KIND, ResourceType, resolve_kind
from .kubelet import Kubelet
from .objects import labels, meta, now
from .portforward import PortForwards
from .selectors import match_label_selector, parse_label_selector
from .store import Store

_FAULT_MESSAGES = {429: "Too many requests, please try again later.",
                   500: "Internal error occurred: etcdserver: leader changed",
                   503: "the server is currently unable to handle the request",
                   504: "the server was unable to return a response in the time allotted"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    content_type: str
    body: Any = None
    status: int = 0
    user_agent: str = ""
    time: float = 0.0

    @property
    def dry_run(self) -> bool:
        return "dryRun" in self.query

    @property
    def field_manager(self) -> str | None:
        return self.query.get("fieldManager")


@dataclass
class _Fault:
    method: str | None
    regex: Any
    status: int | None  # None: after the delay, answered as usual
    remaining: int
    message: str
    headers: dict
    dry_run: bool | None
    reset: bool
    delay_s: float = 0.0


class KubeEmulator(LoopbackAioServer):
    """A Kubernetes API server on 127.0.0.1 with a tiny controller. See the package docstring."""

    thread_label = "kube-emulator"

    def __init__(self):
        self.store = Store()
        self.kubelet = Kubelet(self.store)
        self.cloud = Cloud(self.store)
        self.controllers = Controllers(self.store, self.kubelet, self.cloud)
        self.api = Api(self.store)
        self.port_forwards = PortForwards()
        self.auto_tick = True  # run the controllers before every read
        self.tokens: set[str] | None = None  # None: any non-empty bearer token
        self.git_version = GIT_VERSION
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # tracebacks of emulator bugs (answered as 500 InternalError)
        self._faults: list[_Fault] = []
        self._runner: web.AppRunner | None = None
        self._long_running: set = set()  # port-forward handlers and stalled answers, cancelled on stop()
        self.kubeconfig_path: str | None = None
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._bootstrap_namespace(ns)

    # ---- what tests read and set -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ticks(self) -> int:
        return self.controllers.ticks

    @property
    def removed_at(self) -> dict[tuple, float]:
        """(kind, namespace, name) → time.time() it left the store."""
        return self.store.removed_at

    @property
    def cloud_cleanup_ticks(self) -> int:
        """How many ticks a load balancer or disk takes to go before its object's finalizer is released."""
        return self.cloud.cleanup_ticks

    @cloud_cleanup_ticks.setter
    def cloud_cleanup_ticks(self, value: int) -> None:
        self.cloud.cleanup_ticks = value

    @property
    def cloud_cleanup_s(self) -> float:
        """... and at least how many seconds."""
        return self.cloud.cleanup_s

    @cloud_cleanup_s.setter
    def cloud_cleanup_s(self, value: float) -> None:
        self.cloud.cleanup_s = value

    def write_kubeconfig(self, path: str | Path, context: str = "test", *, namespace: str = "default",
                         token: str = "emulator-token", cluster: str | None = None, merge: bool = False) -> str:
        """Write (or with ``merge=True`` add to) a kubeconfig whose ``context`` reaches this emulator."""
        path = Path(path)
        cluster = cluster or f"{context}-cluster"
        user = f"{context}-user"
        cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {}, "clusters": [], "users": [],
               "contexts": []}
        if merge and path.exists():
            cfg = yaml.safe_load(path.read_text()) or cfg
            for section in ("clusters", "users", "contexts"):
                cfg[section] = [e for e in cfg.get(section) or [] if e.get("name") not in (cluster, user, context)]
        for section in ("clusters", "users", "contexts"):
            cfg.setdefault(section, [])
        cfg["clusters"].append({"name": cluster, "cluster": {"server": self.url}})
        cfg["users"].append({"name": user, "user": {"token": token}})
        cfg["contexts"].append({"name": context, "context": {"cluster": cluster, "user": user,
                                                             "namespace": namespace}})
        cfg["current-context"] = context
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.kubeconfig_path = str(path)
        return str(path)

    def objects(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        rt = resolve_kind(kind)
        reqs = parse_label_selector(label_selector) if label_selector else []
        with self.store.lock:
            return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.store.objects.items())
                    if k == rt.kind and (namespace is None or ns == namespace)
                    and match_label_selector(reqs, labels(o))]

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        rt = resolve_kind(kind)
        with self.store.lock:
            obj = self.store.objects.get(self.store.key(rt, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def seed(self, obj: dict, *, manage_pod: bool = False) -> dict:
        """Store an object as pre-existing cluster state (no request logged). Missing namespaces are created.
        Seeded pods keep their status unless ``manage_pod`` (then a scenario drives them)."""
        obj = copy.deepcopy(obj)
        rt = resolve_kind(obj.get("kind", ""))
        with self.store.lock:
            m = meta(obj)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            if rt.namespaced:
                m.setdefault("namespace", "default")
                if ("Namespace", "", m["namespace"]) not in self.store.objects:
                    self._bootstrap_namespace(m["namespace"])
            else:
                m.pop("namespace", None)
            m.setdefault("uid", self.store.uid())
            m.setdefault("creationTimestamp", now())
            if rt.has_generation:
                m.setdefault("generation", 1)
            had_status = "status" in obj
            apply_defaults(rt, obj, self.store)
            if rt.kind == "Pod" and not had_status:
                obj.pop("status", None)
            self.store.put(self.store.key(rt, m.get("namespace"), m["name"]), obj)
            if rt.kind == "Pod" and not manage_pod:
                self.kubelet.leave_alone(obj)
            return copy.deepcopy(obj)

    def remove(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete an object behind the API's back (as another actor would), without GC or logging."""
        rt = resolve_kind(kind)
        with self.store.lock:
            return self.store.remove(self.store.key(rt, namespace, name)) is not None

    def writes(self) -> list[RecordedRequest]:
        with self.store.lock:
            return [r for r in self.requests if r.method != "GET" and not r.dry_run]

    def clear_log(self) -> None:
        with self.store.lock:
            self.requests.clear()

    def script_pods(self, target: str, scenario: str, **params) -> None:
        """Drive pods matching ``target`` (a label selector such as ``app=vllm``, a pod name, or a workload
        name: pods owned by it or named ``<target>-...``) through ``scenario`` (see :data:`SCENARIOS`).
        The latest matching script wins; ticks count from when it starts applying to a pod."""
        with self.store.lock:
            self.kubelet.script_pods(target, scenario, **params)

    def clear_scripts(self) -> None:
        with self.store.lock:
            self.kubelet.clear_scripts()

    def set_logs(self, target: str, lines: list[str] | str, *, container: str | None = None,
                 previous: bool = False) -> None:
        """Logs served for pods matching ``target`` (pod name, workload name/prefix or label selector)."""
        if isinstance(lines, str):
            lines = lines.splitlines()
        with self.store.lock:
            self.kubelet.set_logs(target, lines, container, previous)

    def set_port_forward_target(self, target: str, port: int, addr: tuple[str, int]) -> None:
        """Port-forwards to ``port`` of pods named ``target`` (or starting with it) relay to ``addr``,
        which must be ``("127.0.0.1", port)``."""
        with self.store.lock:
            self.port_forwards.set_target(target, port, addr)

    def add_event(self, namespace: str, involved_object: dict | str, type: str, reason: str, message: str, *,
                  source: str = "kubelet", count: int = 1) -> dict:
        """Record an Event. ``involved_object``: an object dict, ``{"kind", "name"}``, or a name (looked up in
        the namespace, pods first)."""
        with self.store.lock:
            obj = find_involved(self.store, namespace, involved_object)
            return copy.deepcopy(record_event(self.store, obj, type, reason, message, source, count=count))

    def inject(self, method: str | None, path_regex: str, status: int | None, times: int = 1, *,
               retry_after: float | None = None, message: str | None = None, dry_run: bool | None = None,
               reset: bool = False, delay_s: float = 0.0) -> None:
        """Answer the next ``times`` requests whose method matches (None: any) and whose path matches
        ``path_regex`` (re.search) with ``status`` and a Status body, before they take effect, as an
        overloaded or restarting API server does (``retry_after``: the Retry-After header, seconds).
        ``dry_run``: only requests with (True) or without (False) ``dryRun``. ``reset``: drop the
        connection instead of answering. ``delay_s``: hold the request that long first, as a stalled
        control plane does (a client with a shorter read timeout gives up: a timeout); with ``status``
        None it is then answered as usual."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self.store.lock:
            self._faults.append(_Fault(method.upper() if method else None, re.compile(path_regex), status, times,
                                       message or _FAULT_MESSAGES.get(status, "injected fault"), headers,
                                       dry_run, reset, delay_s))

    def faults_left(self) -> int:
        with self.store.lock:
            return sum(f.remaining for f in self._faults)

    def tick(self, n: int = 1) -> None:
        """Run the controllers ``n`` times."""
        with self.store.lock:
            for _ in range(n):
                self.controllers.tick()

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def stop(self) -> None:
        super().stop()
        self.controllers.jobs.stop()  # the processes of Job pods still running

    async def _astop(self) -> None:
        for task in list(self._long_running):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()

    def _bootstrap_namespace(self, name: str) -> None:
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "uid": self.store.uid(), "creationTimestamp": now()}}
        apply_defaults(BY_KIND["Namespace"], obj, self.store)
        obj["status"] = {"phase": "Active"}
        self.store.put(("Namespace", "", name), obj)

    # ---- HTTP ------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        raw = await request.read() if request.can_read_body else b""
        ctype = request.headers.get("Content-Type", "")
        rec = RecordedRequest(request.method, request.path, query, ctype.split(";")[0].strip(),
                              user_agent=request.headers.get("User-Agent", ""), time=time.time())
        try:
            rec.body = parse_body(raw, ctype) if raw else None
        except ApiError:
            rec.body = raw.decode("utf-8", "replace")
        with self.store.lock:
            self.requests.append(rec)
        try:
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not token or (self.tokens is not None and token not in self.tokens):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            fault = self._take_fault(request.method, request.path, query)
            if fault is not None and fault.delay_s:
                task = asyncio.current_task()
                self._long_running.add(task)  # stop() does not wait for a stalled answer
                try:
                    await asyncio.sleep(fault.delay_s)
                finally:
                    self._long_running.discard(task)
            if fault is not None and fault.status is not None:
                rec.status = fault.status
                if fault.reset:  # the connection drops before any answer (a control-plane blip)
                    request.transport.close()
                    return web.Response(status=fault.status)
                body = ApiError(fault.status, fault.message, REASONS.get(fault.status)).status()
                return web.Response(status=fault.status, body=json.dumps(body).encode(),
                                    content_type="application/json", headers=fault.headers)
            if request.method == "GET" and query.get("watch") in ("true", "1"):
                raise not_emulated("watch")
            if request.method == "GET" and request.path.endswith("/portforward"):
                task = asyncio.current_task()
                self._long_running.add(task)
                try:
                    return await self._portforward(request, rec, query)
                finally:
                    self._long_running.discard(task)
            with self.store.lock:
                status, payload = self._dispatch(request.method, request.path, query, request.headers, raw, ctype)
        except ApiError as exc:
            status, payload = exc.code, exc.status()
        except Exception as exc:  # pragma: no cover - an emulator bug: answer like the server would
            self.errors.append(traceback.format_exc())
            status, payload = 500, ApiError(500, f"emulator error: {exc!r}").status()
        rec.status = status
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, content_type="text/plain")
        return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")

    def _take_fault(self, method: str, path: str, query: dict) -> _Fault | None:
        with self.store.lock:
            for f in self._faults:
                if f.remaining <= 0 or (f.method and f.method != method) or not f.regex.search(path):
                    continue
                if f.dry_run is not None and f.dry_run != ("dryRun" in query):
                    continue
                f.remaining -= 1
                return f
        return None

    @staticmethod
    def _route(path: str) -> tuple[ResourceType, str | None, str | None, str | None]:
        """``/api/v1/namespaces/NS/pods/NAME/log`` → (type, namespace, name, subresource)."""
        parts = [p for p in path.split("/") if p]
        not_found = ApiError(404, "the server could not find the requested resource", "NotFound", {})
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and not (group == "" and rest[2] in ("status", "finalize")):
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise not_found
        rt = BY_GVR.get((group, version, rest[0]))
        if rt is None or (ns is not None and not rt.namespaced):
            raise not_found
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub and not ((sub == "status" and rt.has_status) or sub in (s[0] for s in rt.extra_subresources)):
            raise not_found
        if rt.namespaced and name is not None and ns is None:
            raise not_found
        return rt, ns, name, sub

    def _dispatch(self, method: str, path: str, query: dict, headers, raw: bytes, ctype: str):
        doc = discovery_document(path, git_version=self.git_version, address=f"{LOOPBACK}:{self.port}")
        if doc is not None:
            if method != "GET":
                raise method_not_allowed()
            return 200, doc
        rt, ns, name, sub = self._route(path)
        if self.auto_tick and method == "GET":
            self.controllers.tick()
        dry = query.get("dryRun")
        if dry is not None and dry != "All":
            raise bad_request(f'Invalid dry run value: "{dry}"; supported values: "All"')
        dry = dry == "All"
        if method == "GET":
            if name is None:
                return 200, self.api.list(rt, ns, query)
            if sub == "log":
                return 200, self.kubelet.pod_logs(ns, name, query)
            return 200, copy.deepcopy(self.api.get(rt, ns, name))
        if method == "POST" and sub == "eviction":  # the PodDisruptionBudget-honouring delete
            from .chaos import evict

            return evict(self.store, self.api, ns, name, parse_body(raw, ctype) if raw else {}, dry)
        if sub is not None:
            raise not_emulated(f"{method} on the {sub} subresource")
        if method == "POST":
            if name is not None:
                raise method_not_allowed()
            manager = query.get("fieldManager") or (headers.get("User-Agent") or "unknown").split("/")[0]
            return self.api.create(rt, ns, parse_body(raw, ctype), manager, dry)
        if method == "PATCH" and name is not None:
            return self.api.patch(rt, ns, name, raw, ctype, query, dry)
        if method == "DELETE":
            if name is None:
                raise not_emulated("deletecollection")
            return self.api.delete(rt, ns, name, query, parse_body(raw, ctype) if raw else {}, dry)
        if method == "PUT":
            raise not_emulated("PUT (update)")
        raise method_not_allowed()

    async def _portforward(self, request: web.Request, rec: RecordedRequest, query: dict) -> web.StreamResponse:
        try:
            with self.store.lock:
                rt, ns, name, sub = self._route(request.path)
                if self.auto_tick:
                    self.controllers.tick()
                pod = copy.deepcopy(self.api.get(rt, ns, name))
                phase = (pod.get("status") or {}).get("phase")
                if phase and phase != "Running":
                    raise bad_request(f"pod {name} is not running. Current status={phase}")
                try:
                    ports = [int(p) for p in query.get("ports", "").split(",") if p.strip()]
                except ValueError:
                    raise bad_request(f"invalid port {query.get('ports')!r}")
                if not ports:
                    raise bad_request('query parameter "port" is required')
                targets = {p: self.port_forwards.target(name, p) for p in ports}
        except ApiError as exc:
            rec.status = exc.code
            return web.json_response(exc.status(), status=exc.code)
        return await self.port_forwards.relay(request, rec, pod, ports, targets)
