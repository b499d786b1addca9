"""The smoke test: is the endpoint up, serving the right model, answering, and closed without the key?

Two routes to vLLM, the same checks (:mod:`gptoss_gke.serving.smoke_checks`) on either:

* ``via="service"``: a Job in the namespace (``manifests/smoke/job.yaml``) whose pod calls the Service by
  its cluster DNS name, so kube-proxy picks a Ready, not terminating endpoint for each connection: what a
  client in the cluster gets. With several replicas it sends 2 generations per replica, so more than one
  endpoint is likely to answer, and reports how many answered. The pod runs this checkout's checks
  (``k8s/podcode.py``) and writes one JSON line per result; this run prints them as they come, then deletes
  the Job (its ConfigMap goes with it). Costs a small CPU pod (no accelerator node is woken).
* ``via="pod"``: a port-forward from here to one Ready pod. No pod to schedule or image to pull, but it
  sees that pod only, not what the Service does.

The default (:func:`default_via`): the spot profiles go through the Service (several replicas, where the
Service's routing is what clients depend on); a single on-demand replica goes through the port-forward (its
only endpoint is the pod it checks, and the check needs no CPU node, which may be scaled to zero).
``inv smoke --via=`` picks either.

The API key comes from the Secret: here it is registered with the redactor as it is read and travels in
the Authorization header only; the Job's pod gets it through ``secretKeyRef``. It never reaches the
ConfigMap, the Job, a log line, the output or the report.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import Interrupted, StepError
from gptoss_gke.k8s.client import KubeCheck
from gptoss_gke.serving.smoke_checks import (CHAT_MAX_TOKENS, COMPLETION_MAX_TOKENS, COMPLETION_PROMPT, NO_ANSWER,
                                             CheckFailed, SmokeSpec, lines, measured, run_checks)

__all__ = ["NO_ANSWER", "Smoke", "VIAS", "default_via"]

VIA_SERVICE, VIA_POD = "service", "pod"
VIAS = (VIA_SERVICE, VIA_POD)
GENERATIONS_PER_REPLICA = 2  # through a Service: enough requests that more than one endpoint likely answers
JOB_TTL_S = 3600  # a Job this run could not delete (interrupted) removes itself an hour after it ended
START_BUDGET_S = 600  # a CPU node scaled up from zero and the tools image pulled
COMPONENT = {"app.kubernetes.io/name": "gptoss-smoke", "app.kubernetes.io/component": "smoke-test"}
# Waiting reasons a pod does not recover from by waiting: said at once, with the fix.
_STUCK = {
    "ErrImagePull": "the tools image cannot be pulled",
    "ImagePullBackOff": "the tools image cannot be pulled",
    "InvalidImageName": "the tools image reference is invalid",
    "CreateContainerConfigError": "the pod's configuration refers to something missing (the API-key Secret?)",
}


def default_via(settings, target_name: str) -> str:
    from gptoss_gke.profiles import is_spot

    return VIA_SERVICE if is_spot(settings, target_name) else VIA_POD


def _tunnel_errors(tunnel) -> str:
    return f" (port-forward: {'; '.join(tunnel.errors)})" if tunnel.errors else ""


class Smoke(KubeCheck):  # Kubernetes errors in words (see k8s.client.explain)
    """Nothing on the server stays changed: a pass is `ok`, a miss is `failed` (the smoke Job, if any, is
    deleted either way), and a dry-run only shows what would be checked and created. The probe runs at the
    step's turn, once the rollout before it is ready."""

    section = "smoke"

    def __init__(self, settings, target_name: str, *, via: str | None = None, health_timeout_s: float = 90.0,
                 request_timeout_s: float = 120.0, local_port: int = 0):
        from gptoss_gke.k8s.manifests import workload_name

        self.target = settings.target(target_name)
        self.via = via or default_via(settings, target_name)
        if self.via not in VIAS:
            raise ValueError(f"via must be one of {VIAS}, not {self.via!r}")
        self.health_timeout_s = health_timeout_s
        self.request_timeout_s = request_timeout_s
        self.local_port = local_port
        self.service = workload_name(self.target)
        replicas = settings.target_settings(target_name).replicas
        self.generations = GENERATIONS_PER_REPLICA * replicas if self.via == VIA_SERVICE and replicas > 1 else 1
        # Named per run: two runs (or a leftover from an interrupted one) never meet.
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.job = f"smoke-{self.target.name}-{stamp}-{secrets.token_hex(2)}"
        self.deadline_s = int(START_BUDGET_S + health_timeout_s + (self.generations + 2) * request_timeout_s)
        route = f" through Service {settings.kube.namespace}/{self.service}" if self.via == VIA_SERVICE else ""
        self.name = f"{self.target.name} endpoint ({self.target.model_id}){route}"
        self.key = f"smoke.{target_name}"
        self.measured: dict[str, Any] = {}

    def probe(self, ctx, current) -> dict[str, Any]:
        self.measured = {"via": self.via}
        self.run(ctx)
        return self.measured

    def verdict(self, ctx, m) -> Plan:
        rate = f", {m['tokens_per_s']:.1f} tok/s" if m.get("tokens_per_s") else ""
        ttft = f", TTFT {m['ttft_s']:.3f} s" if m.get("ttft_s") is not None else ""
        if self.via == VIA_SERVICE:
            route = (f"through Service {ctx.settings.kube.namespace}/{self.service} ({m.get('requests_answered')} of "
                     f"{m.get('requests')} requests answered)")
        else:
            route = "through the port-forward"
        return noop(f"{self.target.model_id} answered {route}{ttft}{rate}; 401 without the key", smoke=m)

    def _checks(self) -> list[str]:
        t = self.target
        if t.smoke == "chat":
            gen = f"POST /v1/chat/completions (streaming, max_tokens {CHAT_MAX_TOKENS}): answer, reasoning, TTFT, tok/s"
        else:
            gen = (f"POST /v1/completions {COMPLETION_PROMPT!r} (streaming, max_tokens {COMPLETION_MAX_TOKENS}, "
                   f"temperature 0): answer, TTFT, tok/s")
        if self.generations > 1:
            gen += f", {self.generations} times (2 per replica), each must answer"
        return ["GET /health → 200", f"GET /v1/models with the key → serves {t.model_id}", gen,
                "GET /v1/models without the key → 401"]

    def preview(self, ctx) -> Plan:
        import yaml

        t = self.target
        ns = ctx.settings.kube.namespace
        if self.via == VIA_POD:
            detail = [f"port-forward 127.0.0.1 → a Ready pod of {t.name}, port {t.port}", *self._checks()]
            return Plan([Change("smoke-test the endpoint through a port-forward", "update", detail=detail)],
                        facts={"smoke": {"via": self.via}})
        url = self._url(ctx, t.service_port or t.port)  # the Service deploy creates (read from it when run)
        objects = self._objects(ctx, url)
        [job] = [o for o in objects if o["kind"] == "Job"]
        detail = [f"from a pod of Job {ns}/{job['metadata']['name']} (CPU node), to {url}:",
                  *self._checks(),
                  f"create ConfigMap {ns}/{self.job}-code: this checkout (sha256 checked in the pod) and the checks' "
                  f"request (no secret)",
                  f"create Job {ns}/{self.job}, deleted with its ConfigMap once its log is read:",
                  *("+ " + ln for ln in yaml.safe_dump(_shown(job), sort_keys=False).splitlines())]
        return Plan([Change(f"smoke-test the endpoint through Service {ns}/{self.service} from a Job in the cluster",
                            "update", detail=detail)], facts={"smoke": {"via": self.via}})

    def run(self, ctx) -> None:
        if self.via == VIA_SERVICE:
            self._through_service(ctx)
        else:
            self._through_pod(ctx)

    # ---- via="pod": a port-forward to one Ready pod ----

    def _through_pod(self, ctx) -> None:
        from gptoss_gke.k8s.portforward import port_forward_tunnel
        from gptoss_gke.k8s.secret import read_api_key
        from gptoss_gke.serving.client import Endpoint

        t = self.target
        p = ctx.printer
        ns = ctx.settings.kube.namespace
        key = read_api_key(ctx)  # registered with the redactor before anything can print it
        with port_forward_tunnel(ctx, t, local_port=self.local_port) as tunnel:
            base = f"http://127.0.0.1:{tunnel.port}"
            p.line(f"  tunnel: {base} → pod {ns}/{tunnel.pod}:{t.port}")
            self.measured["pod"] = tunnel.pod
            spec = self._spec(ctx, t.port, route=f"the port-forward to pod {tunnel.pod}",
                              server_logs=f"kubectl logs -n {ns} {tunnel.pod} -c vllm")
            records: list[dict] = []

            def emit(rec: dict) -> None:
                records.append(rec)
                for line in lines(rec):
                    p.line(line)

            try:
                run_checks(Endpoint(base, key, timeout=self.request_timeout_s), spec, emit, ctx.sleep)
            except CheckFailed as failed:
                raise StepError(failed.problem + _tunnel_errors(tunnel), failed.fix) from None
            finally:
                self.measured.update(measured(records))

    def _spec(self, ctx, port: int, *, route: str, server_logs: str) -> SmokeSpec:
        s = ctx.settings
        return SmokeSpec(target=self.target.name, model_id=self.target.model_id, kind=self.target.smoke, port=port,
                         route=route, server_logs=server_logs,
                         api_key_secret=f"{s.kube.namespace}/{s.kube.api_key_secret}",
                         generations=self.generations, health_timeout_s=self.health_timeout_s)

    # ---- via="service": a Job whose pod is a client of the Service ----

    def _url(self, ctx, port: int) -> str:
        return f"http://{self.service}.{ctx.settings.kube.namespace}.svc.cluster.local:{port}"

    def _service_port(self, ctx) -> int:
        from kubernetes.dynamic.exceptions import NotFoundError

        from gptoss_gke.k8s.client import kube

        ns = ctx.settings.kube.namespace
        try:
            svc = kube(ctx).resource("v1", "Service").get(name=self.service, namespace=ns).to_dict()
        except NotFoundError:
            raise StepError(f"Service {ns}/{self.service} not found: nothing to smoke-test through",
                            f"run `inv deploy --target={self.target.name}` first") from None
        ports = svc["spec"].get("ports") or []
        return next((p["port"] for p in ports if p.get("name") == "http"), ports[0]["port"] if ports else
                    self.target.service_port or self.target.port)

    def _objects(self, ctx, url: str) -> list[dict]:
        from gptoss_gke.images import tools_image
        from gptoss_gke.k8s.manifests import object_labels, render_template
        from gptoss_gke.k8s.podcode import BOOTSTRAP, code_configmap
        from gptoss_gke.serving.smoke_pod import KEY_VARIABLE, URL_VARIABLE

        s = ctx.settings
        ns = s.kube.namespace
        labels = {**object_labels(s, self.target), **COMPONENT}
        port = int(url.rsplit(":", 1)[1])
        spec = self._spec(ctx, port, route=f"Service {ns}/{self.service}",
                          server_logs=f"kubectl logs -n {ns} -l app.kubernetes.io/instance={self.service} -c vllm "
                                      f"--prefix")
        request = {"task": "smoke", "smoke": spec.to_json(), "request_timeout_s": self.request_timeout_s}
        objects, env = code_configmap(s, name=f"{self.job}-code", labels=labels, request=request, requirements=[],
                                      main="gptoss_gke.serving.smoke_pod", modules=[])
        # The URL goes in the environment (not the ConfigMap): it is what the pod's resolver is asked about.
        env += [{"name": URL_VARIABLE, "value": url},
                {"name": KEY_VARIABLE, "valueFrom": {"secretKeyRef": {"name": s.kube.api_key_secret,
                                                                       "key": "VLLM_API_KEY"}}}]
        objects += render_template("smoke/job.yaml", {
            "name": self.job, "namespace": ns, "labels": labels, "deadline_s": self.deadline_s, "ttl_s": JOB_TTL_S,
            "image": tools_image(ctx), "bootstrap": BOOTSTRAP, "env": env, "code_configmap": f"{self.job}-code"})
        return objects

    def _through_service(self, ctx) -> None:
        from gptoss_gke.k8s.jobs import apply_owned_by_job
        from gptoss_gke.k8s.objects import KubeObject
        from gptoss_gke.k8s.secret import read_api_key

        ns = ctx.settings.kube.namespace
        url = self._url(ctx, self._service_port(ctx))
        # The pod reads the key itself (secretKeyRef); reading it here first says a missing Secret in words
        # before any pod waits on it, and lets the redactor know the key should a log line ever carry it.
        read_api_key(ctx)
        objects = self._objects(ctx, url)
        self.measured["job"] = self.job
        try:
            for obj in objects:
                KubeObject(obj)._apply(ctx)
            # The code belongs to the Job: it goes when the Job goes (Kubernetes' garbage collector).
            apply_owned_by_job(ctx, self.job, [o for o in objects if o["kind"] == "ConfigMap"])
            ctx.printer.line(f"  Job {ns}/{self.job}: {self.generations} generation(s) to {url}")
            records, state, pod, why = self._follow(ctx)
        except Interrupted:
            # Deleting it would be a new write: said instead. It ends by its deadline and removes itself.
            ctx.printer.line(f"    interrupted: Job {ns}/{self.job} stays until it ends (at most {self.deadline_s}s) "
                             f"and removes itself {JOB_TTL_S // 60} min later; `kubectl -n {ns} delete job "
                             f"{self.job}` removes it now (`kubectl -n {ns} delete configmap {self.job}-code` "
                             f"too, if the Job was not made yet)")
            raise
        except BaseException:
            try:
                self._delete(ctx)
            except Exception:  # noqa: BLE001 - the first failure is the one to report; say what may be left
                ctx.printer.line(f"    could not delete Job {ns}/{self.job}: `kubectl -n {ns} delete job {self.job}` "
                                 f"(teardown deletes it too)")
            raise
        tail = _readable(self._log(ctx, pod))[-8:] if pod else []
        self._delete(ctx)
        self.measured.update(measured(records))
        self._verdict_of_job(ctx, records, why or state, pod, tail)

    def _follow(self, ctx) -> tuple[list[dict], str, dict | None, str | None]:
        """Until the Job ends: the pod's state when it changes, each result line as it comes. Returns the
        records, the Job's state, its pod, and why it stopped when it failed."""
        from kubernetes.dynamic.exceptions import NotFoundError

        from gptoss_gke.k8s.client import kube
        from gptoss_gke.k8s.jobs import job_pods, job_state

        ns = ctx.settings.kube.namespace
        k = kube(ctx)
        started = time.monotonic()
        shown = None
        records: list[dict] = []
        while True:
            try:
                job = k.resource("batch/v1", "Job").get(name=self.job, namespace=ns).to_dict()
            except NotFoundError:
                raise StepError(f"Job {ns}/{self.job} disappeared during the smoke test",
                                f"someone deleted it; re-run `inv smoke --target={self.target.name}`") from None
            pods = job_pods(ctx, self.job)
            pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "") if pods else None
            line = _pod_line(pod)
            if line != shown:
                ctx.printer.line(line, "dim")
                shown = line
            if pod:
                for rec in _records(self._log(ctx, pod))[len(records):]:
                    records.append(rec)
                    for text in lines(rec):
                        ctx.printer.line(text)
            state = job_state(job)
            stuck = _stuck(pod)
            if stuck:
                return records, "failed", pod, stuck
            if state != "running":
                return records, state, pod, _job_failure(job) if state == "failed" else None
            if time.monotonic() - started > self.deadline_s + 60:
                return records, "running", pod, f"still running after {self.deadline_s + 60}s"
            ctx.sleep(min(ctx.settings.kube.poll_interval_s, 2.0))

    def _log(self, ctx, pod: dict) -> list[str]:
        from gptoss_gke.k8s.jobs import job_pod_log

        return job_pod_log(ctx, pod, container="smoke")

    def _delete(self, ctx) -> None:
        """The Job and its pod, and the code ConfigMap (its garbage collection would too, a little later)."""
        from kubernetes.dynamic.exceptions import NotFoundError

        from gptoss_gke.k8s.client import kube

        ns = ctx.settings.kube.namespace
        for api_version, kind, name in (("batch/v1", "Job", self.job), ("v1", "ConfigMap", f"{self.job}-code")):
            try:
                kube(ctx).resource(api_version, kind).delete(name=name, namespace=ns,
                                                             body={"propagationPolicy": "Background"})
            except NotFoundError:
                pass

    def _verdict_of_job(self, ctx, records: list[dict], state: str, pod: dict | None, tail: list[str]) -> None:
        """``state``: "complete", or why the Job did not complete."""
        ns = ctx.settings.kube.namespace
        failed = next((r for r in records if not r.get("ok") and r.get("problem")), None)
        if state == "complete" and failed is None and any(r.get("check") == "without_key" for r in records):
            return
        shown = "".join(f"\n    {ln[:300]}" for ln in tail) or "\n    (empty)"
        log = f"\n    --- Job {ns}/{self.job}, last log lines ---{shown}"
        if failed:
            problem, fix = failed["problem"], failed["fix"]
            if failed.get("check") in ("health", "generate"):
                problem, fix = self._no_endpoints(ctx) or (problem, fix)
            raise StepError(problem + log, fix)
        why = _stuck(pod) or (state if state != "complete" else None) or _pod_end(pod) or "no result in its log"
        raise StepError(f"the smoke Job {ns}/{self.job} did not finish its checks: {why}{log}",
                        f"`kubectl -n {ns} describe pod -l job-name={self.job}` while it runs (re-run `inv smoke "
                        f"--target={self.target.name} --via=service`); `--via=pod` checks one pod through a "
                        f"port-forward instead")

    def _no_endpoints(self, ctx) -> tuple[str, str] | None:
        """When the Service routes nowhere, that is the problem to name (not the connection error it causes)."""
        from gptoss_gke.k8s.endpoints import ServiceEndpoints

        found = ServiceEndpoints(ctx.settings, self.target.name)._read(ctx)
        if found["ready"]:
            return None
        ns = ctx.settings.kube.namespace
        return (f"Service {ns}/{self.service} has no Ready endpoint: nothing answers its clients",
                f"`kubectl get pods -n {ns} -l app.kubernetes.io/instance={self.service}` shows why no replica is "
                f"Ready (`inv status --target={self.target.name}`: its startup); re-run `inv smoke "
                f"--target={self.target.name}` once one is")


def _record(line: str) -> dict | None:
    from gptoss_gke.serving.smoke_pod import RECORD_KEY

    if f'"{RECORD_KEY}"' not in line:
        return None
    try:
        rec = json.loads(line[line.index("{"):])[RECORD_KEY]
    except (ValueError, KeyError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None


def _records(log: list[str]) -> list[dict]:
    return [rec for rec in map(_record, log) if rec is not None]


def _readable(log: list[str]) -> list[str]:
    """The pod's log as a person reads it: a result line as its check and outcome, other lines as they are."""
    out = []
    for line in log:
        rec = _record(line)
        if rec is None:
            out.append(line)
        elif rec.get("ok"):
            out.append(f"[{rec.get('check')}] ok")
        else:
            out.append(f"[{rec.get('check')}] failed: {rec.get('problem') or rec.get('error')}")
    return out


def _container_state(pod: dict | None) -> dict:
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        return cs.get("state") or {}
    return {}


def _job_failure(job: dict) -> str:
    from gptoss_gke.k8s.jobs import failed_condition

    c = failed_condition(job)
    return f"the Job failed ({c.get('reason') or 'no reason'}: {c.get('message') or '-'})" if c else "the Job failed"


def _stuck(pod: dict | None) -> str | None:
    waiting = _container_state(pod).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in _STUCK:
        return f"{reason}: {_STUCK[reason]}" + (f" ({waiting['message']})" if waiting.get("message") else "")
    return None


def _pod_end(pod: dict | None) -> str | None:
    term = _container_state(pod).get("terminated") or {}
    if term:
        return f"its container ended with exit code {term.get('exitCode')} ({term.get('reason') or 'no reason'})"
    return None


def _pod_line(pod: dict | None) -> str:
    if pod is None:
        return "    waiting for the Job's pod"
    status = pod.get("status") or {}
    why = next((f" ({c.get('reason')}: {c.get('message')})" for c in status.get("conditions") or []
                if c.get("type") == "PodScheduled" and c.get("status") == "False"), "")
    waiting = (_container_state(pod).get("waiting") or {}).get("reason")
    phase = status.get("phase") or "Pending"
    return f"    pod {pod['metadata']['name']}: {phase}" + (f" ({waiting})" if waiting else why)


def _shown(job: dict) -> dict:
    """The Job as the dry-run shows it: the bootstrap program by name, not its 20 lines."""
    import copy

    shown = copy.deepcopy(job)
    container = shown["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ["(gptoss_gke.k8s.podcode.BOOTSTRAP)"]
    return shown
