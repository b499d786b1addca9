"""The scheduler and the kubelet of the emulated node: pods are placed on the one node, then follow a
scenario (:mod:`.scenarios`) chosen per pod by :meth:`Kubelet.script_pods`, their status rendered as a
kubelet reports it and their events recorded once each; their logs are what :meth:`Kubelet.set_logs` says."""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import itertools
import time

from .defaults import qos_class
from .errors import bad_request, not_found
from .events import record_event
from .kinds import BY_KIND
from .objects import labels, now, terminating
from .scenarios import SCENARIOS, PodView, first_container
from .selectors import match_label_selector, parse_label_selector
from .store import Store


class Kubelet:
    def __init__(self, store: Store):
        self.store = store
        self.default_scenario: tuple[str, dict] = ("ready", {})
        self.job_scenario: tuple[str, dict] = ("succeeded", {})  # pods of Jobs run to completion
        self._scripts: list[tuple] = []  # (target, scenario, params, id)
        self._script_ids = itertools.count(1)
        self._states: dict[str, dict] = {}  # pod uid → how far it is in its scenario
        self._left_alone: set[str] = set()  # uids of seeded pods that keep the status they were given
        self._logs: list[tuple] = []  # (target, container, previous, lines)

    # ---- what the tests say -----------------------------------------------------------------------------

    def script_pods(self, target: str, scenario: str, **params) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {sorted(SCENARIOS)}")
        self._scripts.append((target, scenario, dict(params), next(self._script_ids)))

    def clear_scripts(self) -> None:
        self._scripts.clear()

    def leave_alone(self, pod: dict) -> None:
        """A seeded pod with its own status: no scenario drives it."""
        self._left_alone.add(pod["metadata"]["uid"])

    def set_logs(self, target: str, lines: list[str], container: str | None, previous: bool) -> None:
        self._logs.append((target, container, previous, list(lines)))

    def live_logs(self, pod_name: str, lines: list[str]) -> None:
        """A pod whose log is ``lines`` as its process writes them (.jobs keeps the list current)."""
        self._logs.append((pod_name, None, False, lines))

    def matches_target(self, target: str, pod: dict) -> bool:
        """``target``: a label selector (``app=vllm``), a pod name, or a workload name (pods it owns, or named
        ``<target>-...``)."""
        name = pod["metadata"]["name"]
        if any(ch in target for ch in "=!") or " in " in target or " notin " in target:
            try:
                return match_label_selector(parse_label_selector(target), labels(pod))
            except ValueError:
                return False
        if name == target or name.startswith(target + "-"):
            return True
        return target in self._owner_names(pod)

    def _owner_names(self, obj: dict) -> set[str]:
        names, seen = set(), 0
        cur = obj
        while cur is not None and seen < 4:
            seen += 1
            nxt = None
            for ref in cur["metadata"].get("ownerReferences") or []:
                names.add(ref.get("name"))
                rt = BY_KIND.get(ref.get("kind"))
                if rt:
                    nxt = self.store.objects.get(self.store.key(rt, cur["metadata"].get("namespace"), ref.get("name")))
            cur = nxt
        return names

    # ---- logs -------------------------------------------------------------------------------------------

    def _find_logs(self, pod: dict, container: str, previous: bool) -> list[str] | None:
        for target, c, prev, lines in reversed(self._logs):
            if prev == previous and (c is None or c == container) and self.matches_target(target, pod):
                return lines
        return None

    def pod_logs(self, ns: str, name: str, query: dict) -> str:
        """``GET .../pods/NAME/log``: ``container``, ``tailLines``, ``previous``, ``timestamps``, ``limitBytes``."""
        pod = self.store.objects.get(("Pod", ns, name))
        if pod is None:
            raise not_found(BY_KIND["Pod"], name)
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in spec.get("containers") or []]
        all_names = names + [c.get("name") for c in spec.get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                raise bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                  f"[{' '.join(names)}]")
            container = names[0]
        elif container not in all_names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        previous = query.get("previous") in ("true", "1")
        lines = self._find_logs(pod, container, previous)
        scripted = (self._states.get(pod["metadata"].get("uid")) or {}).get("logs")
        if scripted is not None and not previous and lines is None:
            lines = [text for _, text in scripted]
            stamps = [stamp for stamp, _ in scripted]
        else:
            stamps = None
        cs = next((s for s in (pod.get("status") or {}).get("containerStatuses") or []
                   if s.get("name") == container), None)
        if previous:
            if lines is None:
                raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        elif cs is not None:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and not cs.get("restartCount") and not cs.get("lastState"):
                raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                                  f'{waiting.get("reason", "ContainerCreating")}')
        lines = list(lines or [])
        if query.get("timestamps") in ("true", "1"):
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
            lines = [f"{stamps[i] if stamps else stamp} {line}" for i, line in enumerate(lines)]
        if query.get("tailLines") not in (None, ""):
            n = int(query["tailLines"])
            lines = lines[-n:] if n > 0 else []
        text = "".join(line + "\n" for line in lines)
        if query.get("limitBytes"):
            text = text.encode()[: int(query["limitBytes"])].decode("utf-8", "ignore")
        return text

    # ---- each tick --------------------------------------------------------------------------------------

    def advance_pods(self) -> None:
        live = {o["metadata"].get("uid") for k, o in self.store.objects.items() if k[0] == "Pod"}
        for uid in [u for u in self._states if u not in live]:
            del self._states[uid]
        self._left_alone &= live
        for key in self.store.of_kind("Pod"):
            if key in self.store.objects:
                self._advance(key)

    def _script_for(self, pod: dict) -> tuple:
        for target, scenario, params, sid in reversed(self._scripts):
            if self.matches_target(target, pod):
                return sid, scenario, params
        owner_kinds = {r.get("kind") for r in pod["metadata"].get("ownerReferences") or []}
        if "Job" in owner_kinds:
            return ("job-default",) + self.job_scenario
        return ("default",) + self.default_scenario

    def _advance(self, key: tuple) -> None:
        pod = self.store.objects[key]
        uid = pod["metadata"]["uid"]
        if uid in self._left_alone or terminating(pod):
            return
        st = self._states.setdefault(uid, {"age": -1, "sid": None, "since": 0, "since_t": time.monotonic(),
                                           "emitted": set(), "times": {}})
        st["age"] += 1
        sid, scenario, params = self._script_for(pod)
        if st["sid"] != sid:
            st["sid"], st["since"], st["since_t"] = sid, st["age"], time.monotonic()
        view = SCENARIOS[scenario](pod, st["age"] - st["since"], time.monotonic() - st["since_t"], params)
        st["clock"] = view.clock  # a scripted startup's own time; stamps below use it
        if view.logs is not None:
            st["logs"] = view.logs
        new = copy.deepcopy(pod)
        node = self.store.node_name
        if view.scheduled and not new["spec"].get("nodeName"):
            new["spec"]["nodeName"] = node
            record_event(self.store, pod, "Normal", "Scheduled", f"Successfully assigned {key[1]}/{key[2]} to {node}",
                         "default-scheduler", at=view.clock)
        new["status"] = self._render_status(new, view, st, params)
        self.store.set(key, new)
        for typ, reason, message, source, *when in view.events:
            sig = (typ, reason, message)
            if sig not in st["emitted"]:
                st["emitted"].add(sig)
                at, about = (when + [None, None])[:2]
                subject = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "uid": ""}} \
                    if about == "node" else self.store.objects[key]
                record_event(self.store, subject, typ, reason, message, source, at=at)

    @staticmethod
    def _stamp(st: dict, name: str) -> str:
        return st["times"].setdefault(name, st.get("clock") or now())

    def _render_status(self, pod: dict, v: PodView, st: dict, params: dict) -> dict:
        old = pod.get("status") or {}
        containers = (pod.get("spec") or {}).get("containers") or []
        target = first_container(pod, params).get("name")
        finished = v.phase in ("Succeeded", "Failed")
        cstatuses, all_ready, any_started = [], True, False
        for c in containers:
            cname = c.get("name")
            mine = cname == target
            cs = {"name": cname, "image": c.get("image", ""), "imageID": "", "ready": False,
                  "restartCount": v.restarts if mine else 0, "started": False, "state": {}, "lastState": {}}
            if finished:
                reason, code = v.terminated if (mine and v.terminated) else ("Completed", 0)
                cs["state"] = {"terminated": {"exitCode": code, "reason": reason,
                                              "startedAt": self._stamp(st, f"{cname}:started"),
                                              "finishedAt": self._stamp(st, f"{cname}:finished"),
                                              "containerID": self._cid(pod, cname)}}
            elif mine and v.waiting:
                reason, message = v.waiting
                cs["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
            elif (mine and v.running) or (not mine and v.others_running):
                cs["state"] = {"running": {"startedAt": self._stamp(st, f"{cname}:started")}}
                cs["started"] = True
                cs["ready"] = v.ready if (mine or v.others_ready is None) else v.others_ready
            else:
                cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
            ran = cs["started"] or finished or (mine and v.restarts > 0)
            any_started = any_started or ran
            if ran:
                image = c.get("image", "")
                cs["imageID"] = f"{image.split('@')[0].rsplit(':', 1)[0]}@sha256:" + \
                    hashlib.sha256(image.encode()).hexdigest()
                cs["containerID"] = self._cid(pod, cname)
            if mine and v.last_terminated:
                reason, code = v.last_terminated
                cs["lastState"] = {"terminated": {"exitCode": code, "reason": reason,
                                                  "startedAt": self._stamp(st, f"{cname}:started"),
                                                  "finishedAt": self._stamp(st, f"{cname}:finished"),
                                                  "containerID": self._cid(pod, cname)}}
            all_ready = all_ready and cs["ready"]
            cstatuses.append(cs)
        sandbox = v.sandbox if v.sandbox is not None else any_started
        not_ready = [cs["name"] for cs in cstatuses if not cs["ready"]]
        conds = []
        if v.scheduled:
            conds.append(("PodReadyToStartContainers", sandbox, None, None))
            conds.append(("Initialized", v.initialized, None if v.initialized else "ContainersNotInitialized",
                          None))
            if finished:
                conds.append(("Ready", False, "PodCompleted", None))
                conds.append(("ContainersReady", False, "PodCompleted", None))
            else:
                msg = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else None
                conds.append(("Ready", not not_ready, "ContainersNotReady" if not_ready else None, msg))
                conds.append(("ContainersReady", not not_ready, "ContainersNotReady" if not_ready else None, msg))
            conds.append(("PodScheduled", True, None, None))
        else:
            conds.append(("PodScheduled", False, "Unschedulable", v.unschedulable_message))
        old_conds = {c.get("type"): c for c in old.get("conditions") or []}
        status: dict = {"phase": v.phase, "conditions": []}
        for typ, ok, reason, message in conds:
            s = "True" if ok else "False"
            prev = old_conds.get(typ)
            c = {"type": typ, "status": s}
            if typ != "PodReadyToStartContainers":
                c["lastProbeTime"] = None
            c["lastTransitionTime"] = prev["lastTransitionTime"] if prev and prev.get("status") == s \
                else st.get("clock") or now()
            if reason:
                c["reason"] = reason
            if message:
                c["message"] = message
            status["conditions"].append(c)
        if v.scheduled:
            status["hostIP"] = "10.128.0.2"
            status["hostIPs"] = [{"ip": "10.128.0.2"}]
            if sandbox:
                if "podIP" not in st["times"]:
                    st["times"]["podIP"] = f"10.8.0.{next(self.store.ip_seq) % 250 + 2}"
                status["podIP"] = st["times"]["podIP"]
                status["podIPs"] = [{"ip": status["podIP"]}]
            status["startTime"] = self._stamp(st, "startTime")
            status["containerStatuses"] = cstatuses
        status["qosClass"] = qos_class(pod)
        status.update(v.extra_status)
        return status

    @staticmethod
    def _cid(pod: dict, cname: str) -> str:
        return "containerd://" + hashlib.sha256(f"{pod['metadata']['uid']}/{cname}".encode()).hexdigest()
