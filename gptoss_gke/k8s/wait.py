"""Waiting for a rollout, in plain words, with events turned into hints.

`diagnose` is a pure function of what the API shows (pods, events, log tail), so every hint is
testable; `Rollout` polls it until ready, a fatal hint, or the target's load budget runs out.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from gptoss_gke.core.report import format_duration
from gptoss_gke.core.retry import is_transient_exception, short_reason
from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import KubeStep, kube
from gptoss_gke.k8s.manifests import selector, workload_name


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


class Rollout(KubeStep):
    """Polls until ready. Every read goes through the run's retry policy (the client's requests do),
    so a control-plane blip (a 503, a 429 with Retry-After, a reset) during an hour-long TPU load is
    waited out, not fatal; an outage longer than the retries is shown and waited out within the budget."""

    section = "rollout"
    verify = False  # waiting is the verification
    observe_early = False

    def __init__(self, settings, target_name: str):
        self.target = settings.target(target_name)
        self.kind = "StatefulSet" if self.target.weights == "pvc" else "Deployment"
        self.workload = workload_name(self.target)
        self.budget = self.target.load_budget_s
        self.name = f"{self.kind} {settings.kube.namespace}/{self.workload} ready"
        self.key = f"rollout.{target_name}"

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return kube(ctx).resource("apps/v1", self.kind).get(
                name=self.workload, namespace=ctx.settings.kube.namespace).to_dict()
        except NotFoundError:
            return None

    def plan(self, ctx, current) -> Plan:
        if ready(current):
            st = current.get("status", {})
            return noop(f"{st.get('readyReplicas')}/{current['spec'].get('replicas', 1)} ready "
                        f"(generation {current['metadata'].get('generation')})")
        return Plan([Change(f"wait up to {format_duration(self.budget)} for {self.kind} {self.workload} to become "
                            f"ready", "update", apply=self.wait)])

    def wait(self, ctx) -> None:
        s = ctx.settings
        ns = s.kube.namespace
        k = kube(ctx)
        label_selector = ",".join(f"{a}={b}" for a, b in selector(self.target).items())
        started = time.monotonic()
        shown = None
        last = Diagnosis("starting")
        while True:
            try:
                if ready(self.observe(ctx)):
                    ctx.printer.line(f"  ready after {format_duration(time.monotonic() - started)}")
                    return
                # sanitize_for_serialization gives the API's camelCase JSON, which diagnose() reads.
                pods = [k.api_client.sanitize_for_serialization(p)
                        for p in k.core.list_namespaced_pod(ns, label_selector=label_selector).items]
                names = {p["metadata"]["name"] for p in pods} | {self.workload}
                events = [k.api_client.sanitize_for_serialization(e) for e in k.core.list_namespaced_event(ns).items]
                events = [e for e in events if (e.get("involvedObject") or {}).get("name") in names]
                last = diagnose(self.target, self.target.node_pool.name, pods, events, self._log_tail(ctx, pods))
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
            if time.monotonic() - started > self.budget:
                raise StepError(
                    f"timed out after {format_duration(self.budget)} waiting for {self.kind} {ns}/{self.workload} "
                    f"to become ready; it was {last.phase}" + (f": {last.hint}" if last.hint else ""),
                    last.fix or f"raise targets.{self.target.name}.load_timeout_s if the load is just slow; "
                    f"`inv deploy` again resumes waiting")
            ctx.sleep(s.kube.poll_interval_s)

    def _log_tail(self, ctx, pods: list[dict]) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        for pod in pods:
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            try:
                text = kube(ctx).core.read_namespaced_pod_log(pod["metadata"]["name"], ctx.settings.kube.namespace,
                                                              container="vllm", tail_lines=50)
            except ApiException:
                return []
            return text.splitlines()
        return []
