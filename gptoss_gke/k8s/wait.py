"""Waiting for a rollout, in plain words, with events turned into hints.

`diagnose` is a pure function of what the API shows (pods, events, log tail), so every hint is
testable; `Rollout` polls it until ready, a fatal hint, or the target's load budget runs out.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from gptoss_gke.core.report import format_duration
from gptoss_gke.core.retry import is_transient_exception, short_reason
from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp.cluster import price_words
from gptoss_gke.k8s.client import KubeCheck, KubeStep, kube
from gptoss_gke.k8s.manifests import selector, workload_name
from gptoss_gke.k8s.timeline import (TITLES, chart, last_startup_annotation, pod_log, read_pod_timeline,
                                     split_log_line, startup_timeline, summary)


@dataclass
class Diagnosis:
    phase: str  # plain words: "waiting for a node (scale-up triggered)", "loading weights", ...
    hint: str | None = None
    fatal: bool = False
    fix: str | None = None


# vLLM log lines → what the server is doing (newest match wins).
_LOG_PHASES = [
    (re.compile(r"Application startup complete"), "ready, passing health checks"),
    (re.compile(r"GPU KV cache size|KV cache|Capturing CUDA graph|torch\.compile|[Cc]ompil"), "compiling"),
    (re.compile(r"Loading weights|Loading safetensors|Model loading took|load_format|runai", re.I), "loading weights"),
    (re.compile(r"Resolved architecture|Initializing|Starting vLLM", re.I), "starting vLLM"),
]


def _event_text(events: list[dict]) -> str:
    return "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in events)


def diagnose(target, pool_name: str, pods: list[dict], events: list[dict], log_tail: list[str]) -> Diagnosis:
    resource = target.node_pool.accelerator_resource
    text = _event_text(events)
    if not pods:
        return Diagnosis("waiting for the controller to create the pod")
    for pod in pods:
        status = pod.get("status") or {}
        for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            last = (cs.get("lastState") or {}).get("terminated") or {}
            reason = waiting.get("reason", "")
            if last.get("reason") == "OOMKilled":
                return Diagnosis("crashed", f"container {cs.get('name')} was OOMKilled", True,
                                 "lower max_model_len or max-num-seqs, or raise the memory limit in the manifest")
            if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                return Diagnosis("pulling the image failed", f"{reason}: {waiting.get('message', '')}".strip(), True,
                                 "run `inv mirror-image --target=...` and check the nodes' service account can read "
                                 "Artifact Registry (roles/artifactregistry.reader)")
            if reason == "CrashLoopBackOff":
                tail = "\n    ".join(log_tail[-10:]) or "(no log lines)"
                return Diagnosis("crashing", f"container {cs.get('name')} keeps exiting "
                                 f"(exit code {last.get('exitCode', '?')}, {cs.get('restartCount', 0)} restarts); "
                                 f"last log lines:\n    {tail}", True,
                                 "read the log lines above; `kubectl logs -p` shows the previous run")
    if re.search(r"PermissionDenied|storage\.objects\.(list|get)|403", text) and re.search(r"gcsfuse|GCS|bucket", text, re.I):
        return Diagnosis("mounting the weights bucket failed", "GCS FUSE was denied access to the bucket", True,
                         "run `inv stage-model --target=...`: it grants roles/storage.objectViewer on the bucket to "
                         "the pods' service account (Workload Identity); check workload identity on the cluster")
    pending = [p for p in pods if (p.get("status") or {}).get("phase") == "Pending"
               and not any(c.get("type") == "PodScheduled" and c.get("status") == "True"
                           for c in (p.get("status") or {}).get("conditions") or [])]
    if pending:
        if re.search(r"NotTriggerScaleUp", text):
            return Diagnosis("waiting for a node", "the cluster autoscaler will not add a node: "
                             + _last(events, "NotTriggerScaleUp"), False,
                             f"check node pool {pool_name} exists (inv setup-cluster), its max_nodes, accelerator "
                             f"quota in the region, and any reservation; or try another zone (node_locations)")
        if re.search(r"ZONE_RESOURCE_POOL_EXHAUSTED|stockout|out of resources|FailedScaleUp", text, re.I):
            return Diagnosis("waiting for a node", "the zone has no capacity for this accelerator right now "
                             "(stockout): " + _last(events, "FailedScaleUp"), False,
                             "wait, use a reservation (node_pool.reservation), or another zone (node_locations)")
        if re.search(r"[Rr]eservation", text):
            return Diagnosis("waiting for a node", "the reservation cannot provide a node: " + text[-300:], False,
                             "check the reservation's name, zone, machine type and free capacity")
        if "TriggeredScaleUp" in text:
            return Diagnosis("waiting for a node (scale-up triggered)")
        if resource and f"Insufficient {resource}" in text:
            return Diagnosis("waiting for a node", f"no node with free {resource} yet; the autoscaler adds one "
                             f"from pool {pool_name} (a few minutes)")
        if "didn't match Pod's node affinity/selector" in text or "node(s) didn't match" in text:
            return Diagnosis("waiting for a node", "no node matches the pod's node selector", False,
                             f"run `inv setup-cluster --target={target.name}` (node pool {pool_name})")
        return Diagnosis("waiting for a node")
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ContainerCreating", "PodInitializing"):
                return Diagnosis("pulling the image / starting containers")
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if (cs.get("state") or {}).get("running"):
                return Diagnosis("downloading weights into the model cache (init container)")
    for line in reversed(log_tail):
        for pattern, words in _LOG_PHASES:
            if pattern.search(line):
                return Diagnosis(words)
    return Diagnosis("starting")


def _last(events: list[dict], reason: str) -> str:
    for e in reversed(events):
        if e.get("reason") == reason:
            return e.get("message", "")
    return ""


def ready(workload: dict | None) -> bool:
    if not workload:
        return False
    spec, status, meta = workload.get("spec", {}), workload.get("status") or {}, workload.get("metadata", {})
    want = spec.get("replicas", 1)
    return (status.get("observedGeneration", 0) >= meta.get("generation", 1)
            and status.get("readyReplicas", 0) >= want
            and status.get("updatedReplicas", want) >= want)


LAST_STARTUP = "gptoss-gke/last-startup"  # annotation on the workload: the last measured start


def last_startup(workload: dict | None) -> dict | None:
    import json

    raw = ((workload or {}).get("metadata", {}).get("annotations") or {}).get(LAST_STARTUP)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def rollout_budget(target, explicit: bool, last: dict | None) -> float:
    """How long to wait. The catalogue's first-start budget (``load_budget_s``) is the floor; a measured
    start that took longer raises it to twice that start (a cold node, image and cache can all be slower
    at once). An explicit ``load_timeout_s`` is used as given."""
    if explicit or not last or not last.get("total_s"):
        return float(target.load_budget_s)
    return max(float(target.load_budget_s), 2 * float(last["total_s"]))


PROBE_PERIOD_S = 10  # the workloads' startupProbe.periodSeconds
PROBE_MIN_FAILURES = 6  # never under a minute of startup


def startup_probe_failures(target, explicit: bool, last: dict | None) -> int:
    """The startupProbe's failureThreshold: how long a starting vLLM may take before the kubelet restarts it.

    Without a measured start (or with an explicit ``load_timeout_s``) it covers the catalogue's whole load
    budget. Once a start was measured, twice the slowest container-started → Ready seen on this workload,
    never more than the catalogue's budget: a load that hangs is restarted after that, not after an hour."""
    budget = max(PROBE_MIN_FAILURES, math.ceil(target.load_budget_s / PROBE_PERIOD_S))
    window = (last or {}).get("slowest_probe_window_s")
    if explicit or not isinstance(window, (int, float)) or window <= 0:
        return budget
    return min(budget, max(PROBE_MIN_FAILURES, math.ceil(2 * window / PROBE_PERIOD_S)))


class Rollout(KubeStep):
    """Polls until ready. Every read goes through the run's retry policy (the client's requests do),
    so a control-plane blip (a 503, a 429 with Retry-After, a reset) during an hour-long TPU load is
    waited out, not fatal; an outage longer than the retries is shown and waited out within the budget.

    Once ready, the pod's startup timeline (:mod:`gptoss_gke.k8s.timeline`) is printed, reported and
    remembered on the workload (``gptoss-gke/last-startup``), where the next rollout's budget reads it."""

    section = "rollout"
    verify = True  # the wait verifies; observing again afterwards puts the timeline into the report
    observe_early = False

    def __init__(self, settings, target_name: str):
        from gptoss_gke.profiles import pools

        self.target = settings.target(target_name)
        self.pools = pools(settings, target_name)  # the capacity profile's, in the order GKE prefers them
        self.kind = "StatefulSet" if self.target.weights == "pvc" else "Deployment"
        self.workload = workload_name(self.target)
        self.explicit_budget = settings.target_settings(target_name).load_timeout_s is not None
        self.budget = self.target.load_budget_s
        self.name = f"{self.kind} {settings.kube.namespace}/{self.workload} ready"
        self.key = f"rollout.{target_name}"

    def read_workload(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return kube(ctx).resource("apps/v1", self.kind).get(
                name=self.workload, namespace=ctx.settings.kube.namespace).to_dict()
        except NotFoundError:
            return None

    def read_pods(self, ctx) -> list[dict]:
        k = kube(ctx)
        label_selector = ",".join(f"{a}={b}" for a, b in selector(self.target).items())
        # sanitize_for_serialization gives the API's camelCase JSON, which diagnose() reads.
        return [k.api_client.sanitize_for_serialization(p)
                for p in k.core.list_namespaced_pod(ctx.settings.kube.namespace, label_selector=label_selector).items]

    def observe(self, ctx):
        workload = self.read_workload(ctx)
        state = {"workload": workload, "pool_nodes": None, "timeline": None}
        if ready(workload):
            pod = _newest_ready(self.read_pods(ctx))
            if pod is not None:
                state["timeline"] = read_pod_timeline(kube(ctx), ctx.settings.kube.namespace, pod)
        else:
            state["pool_nodes"] = pool_node_count(ctx, [p.shape.name for p in self.pools])
        return state

    def plan(self, ctx, current) -> Plan:
        current = current or {"workload": None, "pool_nodes": None, "timeline": None}
        workload, timeline = current["workload"], current["timeline"]
        if ready(workload):
            st = workload.get("status", {})
            said = f"; {summary(timeline)}" if timeline else ""
            facts = {"startup_timeline": timeline.to_json()} if timeline else {}
            return noop(f"{st.get('readyReplicas')}/{workload['spec'].get('replicas', 1)} ready "
                        f"(generation {workload['metadata'].get('generation')}){said}", **facts)
        budget = rollout_budget(self.target, self.explicit_budget, last_startup(workload))
        wake = ""
        if current["pool_nodes"] == 0:
            first = self.pools[0]  # the one GKE tries first (spot, for the spot profiles)
            names = ", ".join(p.shape.name for p in self.pools)
            wake = (f"node pool{'s' if len(self.pools) > 1 else ''} {names} from 0 nodes (a {first.shape.machine_type} "
                    f"node per replica, billed until the pool scales back to zero: "
                    f"{price_words(ctx.settings, first.shape.machine_type, spot=first.spot)})")
        return Plan([Change(("wake " + wake + ", then " if wake else "") + f"wait up to {format_duration(budget)} "
                            f"for {self.kind} {self.workload} to become ready", "update",
                            apply=lambda c: self.wait(c, budget, waking=wake))])

    def wait(self, ctx, budget: float | None = None, waking: str = "") -> None:
        s = ctx.settings
        ns = s.kube.namespace
        k = kube(ctx)
        budget = budget if budget is not None else float(self.budget)
        if waking:  # the pod's request is what wakes the pool: the autoscaler adds the node
            ctx.printer.line(f"  waking {waking}")
        started = time.monotonic()
        shown = None
        done_phases: set[str] = set()
        last = Diagnosis("starting")
        while True:
            try:
                workload = self.read_workload(ctx)
                if ready(workload):
                    ctx.printer.line(f"  ready after {format_duration(time.monotonic() - started)}")
                    self._record(ctx, workload)
                    return
                pods = self.read_pods(ctx)
                names = {p["metadata"]["name"] for p in pods} | {self.workload}
                events = [k.api_client.sanitize_for_serialization(e) for e in k.core.list_namespaced_event(ns).items]
                events = [e for e in events if (e.get("involvedObject") or {}).get("name") in names]
                tail = self.log_tail(ctx, pods)
                last = diagnose(self.target, self.target.node_pool.name, pods, events,
                                [split_log_line(line)[1] for line in tail])
                self._show_phases(ctx, pods, events, tail, done_phases)
            except Exception as exc:  # noqa: BLE001 - an outage longer than the retries: keep waiting
                if not is_transient_exception(exc):
                    raise
                # A control-plane upgrade can take the API away for minutes; the pods load on regardless.
                last = Diagnosis(last.phase, f"the Kubernetes API is not answering ({short_reason(exc)}); "
                                             f"still waiting", fix=last.fix)
            line = f"  phase: {last.phase}" + (f" ({last.hint})" if last.hint else "")
            if line != shown:
                ctx.printer.line(f"{line}  [{format_duration(time.monotonic() - started)}]")
                shown = line
            if last.fatal:
                raise StepError(f"{self.kind} {self.workload}: {last.hint}", last.fix)
            if time.monotonic() - started > budget:
                raise StepError(
                    f"timed out after {format_duration(budget)} waiting for {self.kind} {ns}/{self.workload} "
                    f"to become ready; it was {last.phase}" + (f": {last.hint}" if last.hint else ""),
                    last.fix or f"raise targets.{self.target.name}.load_timeout_s if the load is just slow; "
                    f"`inv deploy` again resumes waiting")
            ctx.sleep(s.kube.poll_interval_s)

    def _show_phases(self, ctx, pods, events, tail, done: set[str]) -> None:
        """Each phase once, as it ends: the wake-up, phase by phase, while it happens."""
        if not pods:
            return
        pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")  # the one being waited for
        mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == pod["metadata"]["name"]]
        for p in startup_timeline(pod, mine, tail).phases:
            if p.end and p.seconds is not None and p.name not in done and p.name != "ready":
                done.add(p.name)
                ctx.printer.line(f"  done: {TITLES[p.name]} in {format_duration(p.seconds)}"
                                 + (f" ({p.detail})" if p.detail else ""))

    def _record(self, ctx, workload: dict) -> None:
        """Print the ready pod's timeline and remember it on the workload for the next rollout's budget."""
        pod = _newest_ready(self.read_pods(ctx))
        if pod is None:
            return
        timeline = read_pod_timeline(kube(ctx), ctx.settings.kube.namespace, pod)
        for line in chart(timeline, self.target.startup_figures, self.target.startup_source):
            ctx.printer.line(f"  {line}")
        if timeline.total_s is None or (last_startup(workload) or {}).get("pod") == timeline.pod:
            return
        # Our own field manager, so the manifest's server-side apply neither owns nor removes it.
        ctx.interrupt.check("before: remembering the startup timeline on the workload")
        meta = workload["metadata"]
        kube(ctx).resource("apps/v1", self.kind).server_side_apply(
            body={"apiVersion": "apps/v1", "kind": self.kind,
                  "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                               "annotations": {LAST_STARTUP: last_startup_annotation(timeline, last_startup(workload))}}},
            name=meta["name"], namespace=meta["namespace"],
            field_manager=f"{ctx.settings.kube.field_manager}-startup", force_conflicts=True)

    def log_tail(self, ctx, pods: list[dict]) -> list[str]:
        for pod in pods:
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            return pod_log(kube(ctx), ctx.settings.kube.namespace, pod["metadata"]["name"], tail_lines=50)
        return []


class RolloutStatus(KubeCheck):
    """`inv status`: the running pod's startup timeline, or where a start is now (the phase, the pool's nodes,
    the phases done so far)."""

    section = "status"

    def __init__(self, settings, target_name: str):
        self.rollout = Rollout(settings, target_name)
        self.name = f"{self.rollout.kind} {settings.kube.namespace}/{self.rollout.workload}"
        self.key = f"status.{target_name}"

    def observe(self, ctx):
        return None  # everything is read at the check's turn, in one go

    def probe(self, ctx, current):
        r, k, ns = self.rollout, kube(ctx), ctx.settings.kube.namespace
        workload = r.read_workload(ctx)
        if workload is None:
            return {"workload": None}
        pods = r.read_pods(ctx)
        pod = _newest_ready(pods) if ready(workload) else \
            max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)
        found = {"workload": workload, "ready": ready(workload), "pod": pod, "timeline": None, "phase": None}
        if pod is not None:
            tail = r.log_tail(ctx, [pod])
            found["timeline"] = read_pod_timeline(k, ns, pod, log_lines=None if found["ready"] else tail)
        if not found["ready"]:
            events = [k.api_client.sanitize_for_serialization(e) for e in k.core.list_namespaced_event(ns).items]
            names = {p["metadata"]["name"] for p in pods} | {r.workload}
            events = [e for e in events if (e.get("involvedObject") or {}).get("name") in names]
            tail = r.log_tail(ctx, pods)
            found["phase"] = diagnose(r.target, r.target.node_pool.name, pods, events,
                                      [split_log_line(line)[1] for line in tail])
            found["pool_nodes"] = pool_node_count(ctx, [p.shape.name for p in r.pools])
        if found["timeline"] is not None:
            for line in chart(found["timeline"], r.target.startup_figures, r.target.startup_source):
                ctx.printer.line(f"  {line}")
        return found

    def verdict(self, ctx, found) -> Plan:
        r = self.rollout
        if found["workload"] is None:
            return noop(f"{r.kind} {r.workload} is not deployed (`inv deploy --target={r.target.name}` deploys it)")
        facts = {"startup_timeline": found["timeline"].to_json()} if found["timeline"] else {}
        if found["ready"]:
            return noop(f"ready; {summary(found['timeline'])}" if found["timeline"] else "ready", **facts)
        d = found["phase"]
        state = f"not ready: {d.phase}" + (f" ({d.hint})" if d.hint else "")
        if found["pool_nodes"] == 0:
            state += (f"; node pool{'s' if len(r.pools) > 1 else ''} {', '.join(p.shape.name for p in r.pools)} "
                      f"{'have' if len(r.pools) > 1 else 'has'} 0 nodes (scaled to zero: "
                      f"`inv deploy --target={r.target.name}` wakes it)")
        return noop(state, phase=d.phase, **facts)


def pool_node_count(ctx, pools: list[str]) -> int | None:
    """Nodes of ``pools`` now; None when listing nodes is not allowed (a namespace-scoped account): then
    the wake-up is not announced, and the wait goes on as before."""
    from kubernetes.client.exceptions import ApiException

    try:
        selector = f"cloud.google.com/gke-nodepool in ({','.join(pools)})"
        return len(kube(ctx).core.list_node(label_selector=selector).items)
    except ApiException as exc:
        if exc.status == 403:
            return None
        raise


def _newest_ready(pods: list[dict]) -> dict | None:
    ready_pods = [p for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                         for c in (p.get("status") or {}).get("conditions") or [])]
    return max(ready_pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)
