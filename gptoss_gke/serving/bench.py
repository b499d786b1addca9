"""The benchmark: the L4 tutorial's three tests, measured the same way every time.

Two ways to run it:
- ``Bench`` (default): from this machine through a port-forward to a Ready pod, with the streaming
  client in ``serving/client.py``. Each request reports TTFT, inter-token latencies, TPOT and
  output tokens/s; each test reports the means over its successful requests, beside the figures the
  tutorial published for one L4. A failed request is listed with its error and left out of the means.
- ``BenchJob`` (``--in-cluster``): ``vllm bench serve`` as a Kubernetes Job on the default node pool
  (no accelerator, no toleration: unlike the tutorial's bench Pod it can be scheduled), same image
  as the server, talking to the Service; its summary is read back from the pod log.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import KubeCheck, KubeStep


@dataclass(frozen=True)
class BenchTest:
    name: str
    description: str
    prompt: str
    max_tokens: int
    parallel: int = 1
    # What the L4 tutorial (gpt-oss-20b on one L4 with vLLM 0.12) published for this test.
    tutorial: dict[str, Any] = field(default_factory=dict)


SHORT_PROMPT = "Write a detailed technical explanation of how Kubernetes scheduling works."
LONG_PROMPT = "word " * 8000 + "Summarize the above."
PARALLEL_PROMPT = "Explain distributed systems consistency models in detail."

TUTORIAL_TESTS = (
    BenchTest("short", "short prompt → 500 tokens", SHORT_PROMPT, 500,
              tutorial={"tokens_per_s": 52.0, "ttft_s": 0.237, "prompt_tokens": 94}),
    BenchTest("long", "~8,000-token prompt → 200 tokens", LONG_PROMPT, 200,
              tutorial={"tokens_per_s": 53.0, "ttft_s": 1.47, "prompt_tokens": 8076}),
    BenchTest("parallel", "3 parallel requests → 500 tokens each", PARALLEL_PROMPT, 500, parallel=3,
              tutorial={"tokens_per_s": 32.0, "ttft_s": 0.410, "prompt_tokens": 77}),
)

TUTORIAL_NOTE = ("tutorial figures: the L4 tutorial (gpt-oss-20b on one L4 with vLLM 0.12); its tok/s is output tokens / "
                 "wall time of the request (`time curl`), which is our tok/s column")


def run_test(ep, kind: str, model: str, test: BenchTest, *, ignore_eos: bool = True) -> dict[str, Any]:
    """Run one test (its requests at once when parallel > 1) and return its JSON record."""
    from gptoss_gke.serving.client import request, summarize

    extra = {"ignore_eos": True} if ignore_eos else {}
    start = threading.Barrier(test.parallel) if test.parallel > 1 else None

    def one(_: int):
        if start is not None:
            start.wait(timeout=30)
        return request(ep, kind, model, test.prompt, test.max_tokens, **extra)

    began = time.perf_counter()
    if test.parallel > 1:
        with ThreadPoolExecutor(max_workers=test.parallel, thread_name_prefix=f"bench-{test.name}") as pool:
            results = list(pool.map(one, range(test.parallel)))
    else:
        results = [one(0)]
    wall = time.perf_counter() - began
    return {
        "name": test.name,
        "description": test.description,
        "max_tokens": test.max_tokens,
        "parallel": test.parallel,
        "prompt_chars": len(test.prompt),
        "requests": [r.to_json() for r in results],
        "aggregate": summarize(results, wall),
        "tutorial_l4": dict(test.tutorial),
    }


def _ms(v: float | None) -> str:
    return f"{v * 1000:.1f} ms" if v is not None else "-"


def _s(v: float | None) -> str:
    return f"{v:.3f} s" if v is not None else "-"


def _rate(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def _tutorial_ttft(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"~{v:.2f} s"


def format_table(tests: list[dict[str, Any]]) -> list[str]:
    """The results beside the tutorial's L4 figures, one line per test, then any failed request."""
    head = (f"{'test':<9} {'req':>3} {'ok':>3} {'TTFT':>9} {'mean ITL':>10} {'TPOT':>9} {'tok/s':>7} "
            f"{'decode':>7} | {'L4 tok/s':>8} {'L4 TTFT':>9}")
    lines = [head, "-" * len(head)]
    failures = []
    for t in tests:
        a, tut = t["aggregate"], t.get("tutorial_l4") or {}
        lines.append(f"{t['name']:<9} {a['requests']:>3} {a['succeeded']:>3} {_s(a['ttft_s']):>9} "
                     f"{_ms(a['mean_itl_s']):>10} {_ms(a['tpot_s']):>9} {_rate(a['tokens_per_s']):>7} "
                     f"{_rate(a['decode_tokens_per_s']):>7} | {_rate(tut.get('tokens_per_s')):>8} "
                     f"{_tutorial_ttft(tut.get('ttft_s')):>9}")
        for i, r in enumerate(t["requests"]):
            if not r["ok"]:
                failures.append(f"failed: {t['name']} request {i + 1}/{len(t['requests'])}: {r['error']} "
                                f"(left out of the means)")
    return lines + failures


class Bench(KubeCheck):  # Kubernetes errors in words (see k8s.client.explain)
    """The three tests through a port-forward. Measuring changes nothing on the server: results are `ok`,
    a failed request fails the step, a dry-run shows the plan."""

    section = "bench"

    def __init__(self, settings, target_name: str, *, tests: tuple[BenchTest, ...] = TUTORIAL_TESTS,
                 ignore_eos: bool = True, local_port: int = 0, request_timeout_s: float = 600.0):
        self.target = settings.target(target_name)
        self.tests = tests
        self.ignore_eos = ignore_eos
        self.local_port = local_port
        self.request_timeout_s = request_timeout_s
        self.kind = "chat" if self.target.smoke == "chat" else "completion"
        self.name = f"{self.target.name} benchmark ({self.target.model_id}) through a port-forward"
        self.key = f"bench.{target_name}"
        self.doc: dict[str, Any] = {}

    def probe(self, ctx, current) -> dict[str, Any]:
        self.doc = {}
        self.run(ctx)
        return self.doc

    def verdict(self, ctx, doc) -> Plan:
        return noop(f"measured {len(doc['tests'])} tests against {self.target.model_id} (table above)", bench=doc)

    def preview(self, ctx) -> Plan:
        path = "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"
        detail = [f"port-forward 127.0.0.1 → a Ready pod of {self.target.name}, port {self.target.port}"]
        detail += [f"{t.name}: {t.description} (POST {path}, streaming"
                   f"{', ignore_eos' if self.ignore_eos else ''})" for t in self.tests]
        return Plan([Change(f"run {len(self.tests)} benchmark tests through a port-forward", "update", detail=detail)],
                    facts={"bench": {}})

    def run(self, ctx) -> None:
        from gptoss_gke.k8s.portforward import port_forward_tunnel
        from gptoss_gke.k8s.secret import read_api_key
        from gptoss_gke.serving.client import Endpoint, describe_connection_error

        t = self.target
        p = ctx.printer
        key = read_api_key(ctx)
        self.doc.update({"target": t.name, "model": t.model_id, "via": "port-forward", "endpoint": self.kind,
                         "ignore_eos": self.ignore_eos, "note": TUTORIAL_NOTE, "tests": []})
        with port_forward_tunnel(ctx, t, local_port=self.local_port) as tunnel:
            ep = Endpoint(f"http://127.0.0.1:{tunnel.port}", key, timeout=self.request_timeout_s)
            self.doc["pod"] = tunnel.pod
            p.line(f"  tunnel: 127.0.0.1:{tunnel.port} → pod {ctx.settings.kube.namespace}/{tunnel.pod}:{t.port}")
            try:
                status, _ = ep.get("/health", timeout=10)
            except Exception as exc:  # noqa: BLE001
                status, _ = None, describe_connection_error(exc)
            if status != 200:
                raise StepError(f"the endpoint is not healthy (GET /health: {status or _})",
                                f"run `inv smoke --target={t.name}` for the details")
            for test in self.tests:
                p.line(f"  {test.name}: {test.description} ...")
                self.doc["tests"].append(run_test(ep, self.kind, t.model_id, test, ignore_eos=self.ignore_eos))
        for line in format_table(self.doc["tests"]):
            p.line(f"  {line}")
        p.line(f"  ({TUTORIAL_NOTE})", "dim")
        failed = sum(x["aggregate"]["failed"] for x in self.doc["tests"])
        total = sum(x["aggregate"]["requests"] for x in self.doc["tests"])
        if failed:
            raise StepError(f"{failed} of {total} benchmark requests failed; the figures above leave them out",
                            "see the errors listed under the table; re-run `inv bench` once the endpoint is healthy",
                            facts={"bench": self.doc})


# ---------------------------------------------------------------------------------------------
# In-cluster: `vllm bench serve` as a Job

JOB_TEMPLATE = "bench/job.yaml"
_SUMMARY_START = re.compile(r"=+\s*Serving Benchmark Result\s*=+")


def job_name(target) -> str:
    return f"gptoss-{target.name}-bench"


def bench_serve_args(*, base_url: str, model: str, num_prompts: int, concurrency: int, input_len: int,
                     output_len: int) -> list[str]:
    """Arguments of `vllm bench serve` (vLLM 0.12): random prompts against /v1/completions."""
    return [
        "bench", "serve",
        "--backend=vllm",
        f"--base-url={base_url}",
        "--endpoint=/v1/completions",
        f"--model={model}",
        "--dataset-name=random",
        f"--random-input-len={input_len}",
        f"--random-output-len={output_len}",
        f"--num-prompts={num_prompts}",
        f"--max-concurrency={concurrency}",
        "--ignore-eos",
        "--percentile-metrics=ttft,tpot,itl,e2el",
    ]


def _key(label: str) -> str:
    label = label.strip().lower()
    for unit, word in (("(tok/s)", "tok_s"), ("(req/s)", "req_s"), ("(ms)", "ms"), ("(s)", "s")):
        label = label.replace(unit, word)
    return re.sub(r"[^a-z0-9]+", "_", label).strip("_")


def parse_bench_summary(log: str) -> dict[str, Any]:
    """The "Serving Benchmark Result" block of `vllm bench serve` as {snake_case_key: number}."""
    lines = log.splitlines()
    start = next((i for i, ln in enumerate(lines) if _SUMMARY_START.search(ln)), None)
    if start is None:
        return {}
    out: dict[str, Any] = {}
    for ln in lines[start + 1:]:
        s = ln.strip()
        if s and set(s) == {"="}:
            break
        if ":" not in s or s.startswith("-"):
            continue
        label, _, value = s.rpartition(":")
        value = value.strip()
        try:
            num: Any = int(value)
        except ValueError:
            try:
                num = float(value)
            except ValueError:
                num = value
        out[_key(label)] = num
    return out


def render_job(settings, target, *, image: str, base_url: str, num_prompts: int, concurrency: int,
               input_len: int, output_len: int, deadline_s: int) -> dict:
    from gptoss_gke.k8s.manifests import ownership, render_template

    labels = {**ownership(settings, target), "app.kubernetes.io/name": "vllm-bench",
              "app.kubernetes.io/instance": job_name(target)}
    values = {
        "name": job_name(target),
        "namespace": settings.kube.namespace,
        "labels": labels,
        "image": image,
        "api_key_secret": settings.kube.api_key_secret,
        "deadline_s": deadline_s,
        "bench_args": bench_serve_args(base_url=base_url, model=target.model_id, num_prompts=num_prompts,
                                       concurrency=concurrency, input_len=input_len, output_len=output_len),
    }
    [job] = render_template(JOB_TEMPLATE, values)
    return job


class BenchJob(KubeStep):  # Kubernetes errors in words (see k8s.client.explain)
    """`vllm bench serve` as a Job: it creates (and replaces) a Job in the cluster, so it is a change,
    not a check."""

    section = "bench"
    verify = False

    def __init__(self, settings, target_name: str, *, num_prompts: int = 30, concurrency: int = 3,
                 input_len: int = 1024, output_len: int = 500, deadline_s: int = 1800):
        self.target = settings.target(target_name)
        self.num_prompts = num_prompts
        self.concurrency = concurrency
        self.input_len = input_len
        self.output_len = output_len
        self.deadline_s = deadline_s
        self.job = job_name(self.target)
        self.key = f"bench.{target_name}.in-cluster"
        self.name = f"{self.target.name} benchmark in the cluster (Job {settings.kube.namespace}/{self.job})"
        self.doc: dict[str, Any] = {}

    def _workload_kind(self) -> str:
        return "StatefulSet" if self.target.weights == "pvc" else "Deployment"

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        from gptoss_gke.k8s.client import kube
        from gptoss_gke.k8s.manifests import workload_name

        ns = ctx.settings.kube.namespace
        name = workload_name(self.target)
        k = kube(ctx)
        try:
            workload = k.resource("apps/v1", self._workload_kind()).get(name=name, namespace=ns).to_dict()
        except NotFoundError:
            workload = None
        try:
            service = k.resource("v1", "Service").get(name=name, namespace=ns).to_dict()
        except NotFoundError:
            service = None
        image = None
        if workload:
            containers = workload["spec"]["template"]["spec"].get("containers") or []
            image = next((c.get("image") for c in containers if c.get("name") == "vllm"),
                         containers[0].get("image") if containers else None)
        port = None
        if service:
            ports = service["spec"].get("ports") or []
            first = ports[0].get("port") if ports else None
            port = next((p.get("port") for p in ports if p.get("name") == "http"), first)
        return {"image": image, "service": name if service else None, "port": port}

    def _manifest(self, ctx, current) -> dict:
        from gptoss_gke.k8s.manifests import workload_name

        s = ctx.settings
        current = current or {}
        svc = current.get("service") or workload_name(self.target)
        port = current.get("port") or self._manifest_port(s)
        return render_job(s, self.target, image=current.get("image") or "(the server's image, read at run time)",
                          base_url=f"http://{svc}.{s.kube.namespace}.svc:{port}", num_prompts=self.num_prompts,
                          concurrency=self.concurrency, input_len=self.input_len, output_len=self.output_len,
                          deadline_s=self.deadline_s)

    def _manifest_port(self, settings) -> int:
        """The Service port deploy would create (used when the Service could not be read)."""
        from gptoss_gke.k8s.manifests import render, workload_name

        try:
            objects = render(settings, self.target, image="-")
        except Exception:  # noqa: BLE001 - a setting deploy would insist on is missing: the plan still shows
            objects = []
        for obj in objects:
            if obj["kind"] == "Service" and obj["metadata"]["name"] == workload_name(self.target):
                return obj["spec"]["ports"][0]["port"]
        return self.target.port

    def plan(self, ctx, current) -> Plan:
        from gptoss_gke.k8s.manifests import workload_name

        s = ctx.settings
        if current is not None and not ctx.dry_run and (not current.get("image") or not current.get("service")):
            missing = [f"{self._workload_kind()} {workload_name(self.target)}"] if not current.get("image") else []
            missing += [f"Service {workload_name(self.target)}"] if not current.get("service") else []
            raise StepError(f"{' and '.join(missing)} not found in namespace {s.kube.namespace}: nothing to benchmark",
                            f"run `inv deploy --target={self.target.name}` first")
        job = self._manifest(ctx, current)
        detail = ["+ " + ln for ln in yaml.safe_dump(job, sort_keys=False).splitlines()] if ctx.dry_run else []
        self.doc = {}
        self._job_body = job
        return Plan([Change(f"run `vllm bench serve` as Job {s.kube.namespace}/{self.job} ({self.num_prompts} "
                            f"prompts, concurrency {self.concurrency}) and read its summary", "create",
                            apply=self.run, detail=detail)], facts={"bench": self.doc})

    # ---- running the Job ----

    def run(self, ctx) -> None:
        from gptoss_gke.k8s.client import kube

        s = ctx.settings
        ns = s.kube.namespace
        p = ctx.printer
        jobs = kube(ctx).resource("batch/v1", "Job")
        self._delete_previous(ctx, jobs)
        jobs.create(body=self._job_body, namespace=ns)
        p.line(f"  created Job {ns}/{self.job}; waiting up to {self.deadline_s // 60} min")
        pod = self._wait(ctx, jobs)
        log = kube(ctx).core.read_namespaced_pod_log(pod, ns, container="bench") if pod else ""
        summary = parse_bench_summary(log or "")
        self.doc.update({"target": self.target.name, "model": self.target.model_id, "via": "in-cluster Job",
                         "job": self.job, "pod": pod, "args": self._job_body["spec"]["template"]["spec"]
                         ["containers"][0]["args"], "summary": summary})
        if not summary:
            tail = "\n".join((log or "").splitlines()[-15:]) or "(empty log)"
            raise StepError(f"Job {self.job} finished but its log has no 'Serving Benchmark Result' block; last "
                            f"lines:\n{tail}", f"kubectl logs -n {ns} job/{self.job}")
        for label in ("successful_requests", "benchmark_duration_s", "output_token_throughput_tok_s",
                      "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "mean_itl_ms"):
            if label in summary:
                p.line(f"  {label}: {summary[label]}")

    def _delete_previous(self, ctx, jobs) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        ns = ctx.settings.kube.namespace
        try:
            jobs.get(name=self.job, namespace=ns)
        except NotFoundError:
            return
        ctx.printer.line(f"  deleting the previous Job {ns}/{self.job} (a Job's pod template cannot change)")
        jobs.delete(name=self.job, namespace=ns, body={"propagationPolicy": "Background"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                jobs.get(name=self.job, namespace=ns)
            except NotFoundError:
                return
            ctx.sleep(min(2.0, ctx.settings.kube.poll_interval_s))
        raise StepError(f"the previous Job {ns}/{self.job} is still being deleted after 2 min",
                        f"kubectl delete job -n {ns} {self.job}, then re-run")

    def _wait(self, ctx, jobs) -> str | None:
        from gptoss_gke.k8s.client import kube

        s = ctx.settings
        ns = s.kube.namespace
        started = time.monotonic()
        shown = None
        pod_name = None
        while True:
            job = jobs.get(name=self.job, namespace=ns).to_dict()
            status = job.get("status") or {}
            pods = kube(ctx).core.list_namespaced_pod(ns, label_selector=f"job-name={self.job}").items
            if pods:
                pod = sorted(pods, key=lambda x: x.metadata.creation_timestamp or 0)[-1]
                pod_name = pod.metadata.name
                phase = pod.status.phase if pod.status else "Pending"
                waiting = [cs.state.waiting.reason for cs in (pod.status.container_statuses or [])
                           if cs.state and cs.state.waiting and cs.state.waiting.reason]
                line = f"  pod {pod_name}: {phase}" + (f" ({', '.join(waiting)})" if waiting else "")
                if line != shown:
                    ctx.printer.line(line)
                    shown = line
            if status.get("succeeded"):
                return pod_name
            if status.get("failed"):
                tail = ""
                if pod_name:
                    try:
                        tail = kube(ctx).core.read_namespaced_pod_log(pod_name, ns, container="bench", tail_lines=15)
                    except Exception:  # noqa: BLE001 - the log is a courtesy here
                        tail = ""
                reason = next((c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Failed"),
                              "failed")
                raise StepError(f"Job {ns}/{self.job} failed ({reason}); last log lines:\n{tail or '(none)'}",
                                f"kubectl logs -n {ns} job/{self.job}; fix the cause and re-run `inv bench "
                                f"--target={self.target.name} --in-cluster`")
            if time.monotonic() - started > self.deadline_s + 120:
                raise StepError(f"timed out after {self.deadline_s + 120}s waiting for Job {ns}/{self.job}"
                                + (f"; {shown.strip()}" if shown else ""),
                                f"kubectl describe job -n {ns} {self.job}")
            ctx.sleep(s.kube.poll_interval_s)
