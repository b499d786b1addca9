"""Spot capacity in the emulated cluster, with GKE's and Kubernetes' semantics (for the spot profiles):

* :class:`SpotCluster` plays GKE's autoscaler for pods that select a ComputeClass: a pending pod gets a
  new node from the class's first priority whose pool has capacity in a zone its topology spread
  allows (a pool's taints must be tolerated); spot capacity can be taken away per pool and zone, and
  the next priority is used. :meth:`SpotCluster.preempt` reclaims a spot node: graceful node shutdown
  marks its pod terminating at once (its endpoint leaves the Service), runs the preStop hook, stops
  the container at the end of the hook, and the node is gone when the pod's grace period (at most
  15 s on a preempted spot VM) ends.
* Each scheduled pod's container is a loopback fake vLLM, listening until its container stops.
* :class:`ServiceProxy` is kube-proxy for one Service: each request goes to a Ready, not terminating
  endpoint, as programmed ``propagation_s`` (manifest seconds) after the endpoints change. Given the
  Service's name, it is also that name in cluster DNS for the pods of Jobs (``jobs.JobPods.route_service``).
* :func:`evict` is the Eviction API (``POST pods/NAME/eviction``), refusing with 429 what would break
  a PodDisruptionBudget, as the API server does.

Manifest seconds run ``scale`` times faster here. Nothing opens a socket to anything but 127.0.0.1.
"""

from __future__ import annotations

import copy
import http.client
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import ApiError
from .kinds import BY_KIND
from .objects import is_ready, labels, now, terminating
from .selectors import match_selector_object

ZONE_LABEL = "topology.kubernetes.io/zone"
CLASS_LABEL = "cloud.google.com/compute-class"
SHUTDOWN_FINALIZER = "emulator.test/graceful-node-shutdown"  # holds the pod while its container stops
SPOT_GRACE_LIMIT_S = 15  # what a preempted spot VM gives non-system pods
_EFFECT = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


def _tolerates(pod: dict, taint: dict) -> bool:
    for t in (pod.get("spec") or {}).get("tolerations") or []:
        if t.get("effect") not in (None, "", taint["effect"]) or t.get("key") not in (None, taint["key"]):
            continue
        if t.get("operator") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


class SpotCluster:
    """``pools``: GKE node pools as the GKE API describes them (``name``, ``locations``, ``config.spot``,
    ``config.labels``, ``config.taints``, ``autoscaling.maxNodeCount`` per zone)."""

    def __init__(self, emulator, pools: list[dict], backend_factory, *, scale: float = 0.05,
                 node_start_s: float = 20.0, ready_ticks: int = 3):
        self.emu, self.store = emulator, emulator.store
        self.pools = {p["name"]: p for p in pools}
        self.backend_factory = backend_factory
        self.scale, self.node_start_s, self.ready_ticks = scale, node_start_s, ready_ticks
        self.unavailable: set[tuple[str, str]] = set()  # (pool, zone) without capacity ("stockout")
        self.backends: dict[str, object] = {}  # pod name → its container (a fake vLLM)
        self.placements: list[tuple[str, str, str]] = []  # (pod, pool, zone), in order
        self._timers: list[tuple[float, object]] = []
        self._timers_lock = threading.Lock()
        self._provisioning: dict[str, str] = {}  # pods whose node is being created → its zone
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        emulator.kubelet.default_scenario = ("unschedulable", {"message": "0/0 nodes are available"})

    # ---- the loop ---------------------------------------------------------------------------------------
    def start(self) -> "SpotCluster":
        self._thread = threading.Thread(target=self._run, name="spot-cluster", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        for backend in list(self.backends.values()):
            backend.stop()
        self.backends.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            time.sleep(0.01)

    def step(self) -> None:
        with self._timers_lock:
            t = time.monotonic()
            due = [fn for at, fn in self._timers if at <= t]
            self._timers = [(at, fn) for at, fn in self._timers if at > t]
        for fn in due:
            fn()
        self.emu.tick()
        with self.store.lock:
            pending = [(k, p) for k, p in self.store.objects.items() if k[0] == "Pod" and not terminating(p)
                       and not (p.get("spec") or {}).get("nodeName") and k[2] not in self._provisioning]
        for key, pod in pending:
            self._scale_up(key, pod)

    def _later(self, seconds: float, fn) -> None:
        with self._timers_lock:
            self._timers.append((time.monotonic() + seconds * self.scale, fn))

    # ---- the autoscaler, as GKE's for a ComputeClass ----------------------------------------------------
    def _zones_allowed(self, pod: dict, zones: list[str]) -> list[str]:
        """Zones where the pod may go under its zone spread constraints (DoNotSchedule, maxSkew)."""
        allowed = list(zones)
        for c in (pod.get("spec") or {}).get("topologySpreadConstraints") or []:
            if c.get("topologyKey") != ZONE_LABEL or c.get("whenUnsatisfiable") != "DoNotSchedule":
                continue
            counts = {z: 0 for z in zones}
            for k, other in self.store.objects.items():
                node = (other.get("spec") or {}).get("nodeName")
                if k[0] != "Pod" or terminating(other) or not node or other is pod:
                    continue
                if match_selector_object(c.get("labelSelector") or {}, labels(other)):
                    zone = labels(self.store.objects.get(("Node", "", node)) or {}).get(ZONE_LABEL)
                    if zone in counts:
                        counts[zone] += 1
            # Pods whose node is on its way count where it will be (the autoscaler plans them together).
            for pod_name, zone in self._provisioning.items():
                if zone in counts:
                    counts[zone] += 1
            low = min(counts.values())
            allowed = [z for z in allowed if counts[z] + 1 - low <= int(c.get("maxSkew", 1))]
        return allowed

    def _scale_up(self, key: tuple, pod: dict) -> None:
        cls_name = ((pod.get("spec") or {}).get("nodeSelector") or {}).get(CLASS_LABEL)
        cls = self.store.objects.get(("ComputeClass", "", cls_name)) if cls_name else None
        if cls is None:
            return  # no class: nothing of ours scales up for it (stays Pending)
        for priority in cls["spec"].get("priorities") or []:
            for name in priority.get("nodepools") or []:
                pool = self.pools.get(name)
                if pool is None or (pool.get("config") or {}).get("labels", {}).get(CLASS_LABEL) != cls_name:
                    continue  # GKE uses only pools labelled for the class
                taints = [{"key": t["key"], "value": t.get("value", ""), "effect": _EFFECT.get(t["effect"], t["effect"])}
                          for t in (pool.get("config") or {}).get("taints") or []]
                if not all(_tolerates(pod, t) for t in taints):
                    continue
                for zone in self._zones_allowed(pod, pool.get("locations") or []):
                    if (name, zone) in self.unavailable or self._nodes_in(name, zone) >= \
                            int((pool.get("autoscaling") or {}).get("maxNodeCount", 1)):
                        continue
                    self._provisioning[key[2]] = zone
                    self.placements.append((key[2], name, zone))
                    self._later(self.node_start_s, lambda k=key, p=pool, z=zone: self._bind(k, p, z))
                    return
        # DoNotScaleUp: nothing fits; the pod waits for capacity.

    def _nodes_in(self, pool: str, zone: str) -> int:
        return sum(1 for k, n in self.store.objects.items() if k[0] == "Node" and not terminating(n)
                   and labels(n).get("cloud.google.com/gke-nodepool") == pool and labels(n).get(ZONE_LABEL) == zone)

    def _bind(self, key: tuple, pool: dict, zone: str) -> None:
        self._provisioning.pop(key[2], None)
        cfg = pool.get("config") or {}
        node_name = f"gke-{pool['name']}-{zone[-1]}-{next(self._seq):04d}"
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node_name, "creationTimestamp": now(),
                             "labels": {**(cfg.get("labels") or {}), ZONE_LABEL: zone,
                                        "cloud.google.com/gke-nodepool": pool["name"],
                                        **({"cloud.google.com/gke-spot": "true"} if cfg.get("spot") else {})}},
                "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        with self.store.lock:
            pod = self.store.objects.get(key)
            if pod is None or terminating(pod):
                return
            node["metadata"]["uid"] = self.store.uid()
            self.store.put(("Node", "", node_name), node)
            n = copy.deepcopy(pod)
            n["spec"]["nodeName"] = node_name
            self.store.set(key, n)
            self.emu.kubelet.script_pods(key[2], "ready", ticks=self.ready_ticks)
        self.backends[key[2]] = self.backend_factory()

    # ---- what the cloud does to spot VMs ------------------------------------------------------------------
    def node_of(self, pod_name: str) -> str | None:
        pod = next((p for k, p in self.store.objects.items() if k[0] == "Pod" and k[2] == pod_name), None)
        return (pod or {}).get("spec", {}).get("nodeName")

    def preempt(self, node_name: str) -> str:
        """Reclaim a spot node; returns the pod it ran."""
        with self.store.lock:
            node = self.store.objects[("Node", "", node_name)]
            assert labels(node).get("cloud.google.com/gke-spot") == "true", f"{node_name} is not a spot node"
            key, pod = next((k, p) for k, p in self.store.objects.items()
                            if k[0] == "Pod" and (p.get("spec") or {}).get("nodeName") == node_name)
            grace = min(int((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)), SPOT_GRACE_LIMIT_S)
            n = copy.deepcopy(pod)
            n["metadata"]["deletionTimestamp"] = now()
            n["metadata"]["deletionGracePeriodSeconds"] = grace
            n["metadata"].setdefault("finalizers", []).append(SHUTDOWN_FINALIZER)
            self.store.set(key, n)
        hook = (((pod["spec"]["containers"][0].get("lifecycle") or {}).get("preStop") or {}).get("exec") or {})
        command = hook.get("command") or []
        sleep = float(command[1]) if command[:1] == ["sleep"] else 0.0
        # The container gets SIGTERM when the hook ends (or the grace runs out): vLLM stops listening.
        self._later(min(sleep, grace), lambda name=key[2]: self._stop_container(name))
        self._later(grace, lambda k=key, node=node_name: self._node_gone(k, node))
        return key[2]

    def _stop_container(self, pod_name: str) -> None:
        backend = self.backends.pop(pod_name, None)
        if backend is not None:
            backend.stop()

    def _node_gone(self, key: tuple, node_name: str) -> None:
        self._stop_container(key[2])
        with self.store.lock:
            pod = self.store.objects.get(key)
            if pod is not None:
                self.store.remove(key)
            self.store.remove(("Node", "", node_name))

    def ready_pods(self, selector: dict) -> list[dict]:
        with self.store.lock:
            return [copy.deepcopy(p) for k, p in self.store.objects.items() if k[0] == "Pod" and is_ready(p)
                    and not terminating(p) and match_selector_object(selector, labels(p))]


class ServiceProxy:
    """kube-proxy for one Service selector: requests go round-robin to the endpoints it last saw Ready."""

    def __init__(self, cluster: SpotCluster, selector: dict, *, propagation_s: float = 2.0,
                 service: tuple[str, str, int] | None = None):
        self.cluster, self.selector = cluster, selector
        self.propagation_s = propagation_s
        self.service = service  # (name, namespace, port): what pods of Jobs call it by
        self.routed: list[tuple[float, str, str | None]] = []  # (when, path, endpoint pod or None), in order
        self.programs: list[tuple[float, list[str]]] = []  # (when, the endpoints) each time they changed
        self._programmed: list[str] = []
        self._pending: list[tuple[float, list[str]]] = []
        self._rr = itertools.count()
        self.least_endpoints: int | None = None  # the fewest Ready endpoints the Service ever had once serving
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy._forward(self, "GET")

            def do_POST(self):
                proxy._forward(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="service-proxy", daemon=True)
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._program, name="endpoints", daemon=True)

    def start(self) -> "ServiceProxy":
        self._thread.start()
        self._watch.start()
        if self.service:
            self.cluster.emu.controllers.jobs.route_service(*self.service, self.port)
        return self

    def stop(self) -> None:
        if self.service:
            self.cluster.emu.controllers.jobs.unroute_service(*self.service)
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _program(self) -> None:
        """Endpoints as the EndpointSlice controller sees them, applied ``propagation_s`` later."""
        while not self._stop.is_set():
            ready = sorted(p["metadata"]["name"] for p in self.cluster.ready_pods(self.selector))
            if self._programmed:
                self.least_endpoints = len(ready) if self.least_endpoints is None else min(self.least_endpoints,
                                                                                           len(ready))
            self._pending.append((time.monotonic() + self.propagation_s * self.cluster.scale, ready))
            while self._pending and self._pending[0][0] <= time.monotonic():
                endpoints = self._pending.pop(0)[1]
                if endpoints != self._programmed:
                    self.programs.append((time.monotonic(), endpoints))
                self._programmed = endpoints
            time.sleep(0.005)

    def _forward(self, handler, method: str) -> None:
        endpoints = list(self._programmed)
        chosen = endpoints[next(self._rr) % len(endpoints)] if endpoints else None
        self.routed.append((time.monotonic(), handler.path, chosen))
        backend = self.cluster.backends.get(chosen) if chosen else None
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) if method == "POST" else None
        status, data = 503, b"no endpoints"
        if backend is not None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=10)
                headers = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "content-type")}
                conn.request(method, handler.path, body=body, headers=headers)
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
                conn.close()
            except OSError as exc:  # the container is gone: the client sees the connection fail
                status, data = 502, f"upstream: {exc}".encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def evict(store, api, ns: str, name: str, body: dict | None, dry: bool) -> tuple[int, dict]:
    """``POST /api/v1/namespaces/NS/pods/NAME/eviction``: delete the pod unless a PodDisruptionBudget
    selecting it has no disruption left (429, as the API server answers)."""
    rt = BY_KIND["Pod"]
    pod = api.get(rt, ns, name)
    if terminating(pod):
        return 201, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
    for k, pdb in store.objects.items():
        if k[0] != "PodDisruptionBudget" or k[1] != ns:
            continue
        selector = (pdb.get("spec") or {}).get("selector") or {}
        if not match_selector_object(selector, labels(pod)):
            continue
        healthy = [p for pk, p in store.objects.items() if pk[0] == "Pod" and pk[1] == ns and is_ready(p)
                   and not terminating(p) and match_selector_object(selector, labels(p))]
        allowed = len(healthy) - int((pdb.get("spec") or {}).get("minAvailable", 0))
        if is_ready(pod) and allowed <= 0:
            raise ApiError(429, "Cannot evict pod as it would violate the pod's disruption budget.",
                           "TooManyRequests", {"causes": [{"reason": "DisruptionBudget", "message":
                               f"The disruption budget {k[2]} needs {pdb['spec'].get('minAvailable')} healthy pods "
                               f"and has {len(healthy)} currently"}]})
    if not dry:
        api.delete(rt, ns, name, {}, (body or {}).get("deleteOptions") or {}, dry)
    return 201, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
