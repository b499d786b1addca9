"""Smoke test and port-forward: the real kubernetes client against the kube emulator, whose
port-forward relays to the fake vLLM server. Everything listens on 127.0.0.1 and stops with the test."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import invoke
import pytest

from gptoss_gke.config import Settings
from gptoss_gke.core import Context, Redactor, Runner
from gptoss_gke.core.report import Printer, write_report
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.shell import Shell
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.manifests import selector
from gptoss_gke.k8s.portforward import port_forward, port_forward_tunnel
from gptoss_gke.serving.client import Endpoint, request
from gptoss_gke.serving.smoke import NO_ANSWER, Smoke
from tests.conftest import run_inv
from tests.envfiles import PROJECT, kube, write_env

NAMESPACE = "gptoss"
POD = "gptoss-l4-0"


@dataclass
class World:
    emu: object
    fake: object
    key: str
    settings: Settings
    tmp: Path


def make_world(emu, fake, tmp: Path, *, pod_ready: bool = True) -> World:
    """A namespace with the API-key Secret and one pod of target l4 whose port 8000 reaches the fake."""
    key = "sk-smoke-" + secrets.token_urlsafe(24)
    fake.api_key = key
    settings = Settings(project="test-project",
                        kube={"kubeconfig": emu.kubeconfig_path, "context": "test", "poll_interval_s": 0.05})
    target = settings.target("l4")
    emu.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": settings.kube.api_key_secret, "namespace": NAMESPACE},
              "data": {"VLLM_API_KEY": base64.b64encode(key.encode()).decode()}})
    status = ({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]} if pod_ready
              else {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]})
    emu.seed({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": POD, "namespace": NAMESPACE, "labels": selector(target)},
              "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.12.0"}]},
              "status": status})
    emu.set_port_forward_target(POD, target.port, ("127.0.0.1", fake.port))
    return World(emu, fake, key, settings, tmp)


def make_ctx(settings: Settings, *, dry_run: bool = False):
    redactor = Redactor()
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=RetryPolicy(2, 0.01, 0.02), emit=printer.line)
    return Context(settings, shell, printer, redactor, dry_run=dry_run, interactive=False), out


def run_steps(world: World, steps, *, dry_run: bool = False):
    ctx, out = make_ctx(world.settings, dry_run=dry_run)
    results = Runner(ctx).run(steps)
    report = world.tmp / "report.json"
    write_report(str(report), results, ctx.redact, task="test", dry_run=dry_run)
    return results, out.getvalue(), report.read_text()


def inv_env(world: World) -> dict[str, str]:
    """Environment for an `inv` subprocess whose env file points at the emulator's kubeconfig."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTOSS_", "HF_", "KUBECONFIG"))}
    env.update(GPTOSS_ENV_DIR=write_env(world.tmp, {"project": PROJECT}, kube(world.emu, poll_interval_s=0.05),
                                        name="emu"), GPTOSS_ENV="emu", NO_COLOR="1", HOME=str(world.tmp))
    return env


@pytest.fixture
def world(kube_emulator, fake_vllm, tmp_path):
    return make_world(kube_emulator, fake_vllm, tmp_path)


# ---- smoke: success ----------------------------------------------------------------------------------


def test_inv_smoke_passes_prints_answer_and_reasoning_and_never_the_key(world):
    report = world.tmp / "smoke.json"
    proc = run_inv(["smoke", "--target=l4", f"--report={report}"], inv_env(world), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "answer: Hello! This answer comes from a fake gpt-oss model" in out
    assert "reasoning: We need to answer the user." in out
    assert "model: openai/gpt-oss-20b" in out
    assert "without the key: 401 (as expected)" in out
    assert "TTFT " in out and " tok/s" in out
    assert "RECAP ok=1 changed=0 skipped=0 failed=0" in out  # a passing smoke test changes nothing
    doc = json.loads(report.read_text())
    facts = doc["steps"][0]["facts"]["smoke"]
    assert facts["model"] == "openai/gpt-oss-20b"
    assert facts["ttft_s"] > 0 and facts["tokens_per_s"] > 0 and facts["output_tokens"] == 64
    assert facts["without_key_status"] == 401
    assert world.key not in out and world.key not in report.read_text()
    # The key did travel: authenticated requests matched it, the last one went without it.
    models = [r for r in world.fake.requests if r.path == "/v1/models"]
    assert [r.auth_ok for r in models] == [True, False] and not models[-1].auth_present
    [chat] = world.fake.completion_requests()
    assert chat.auth_ok and chat.body["stream"] is True and chat.body["stream_options"] == {"include_usage": True}


def test_smoke_with_no_final_answer_says_so(world):
    world.fake.content_null = True  # every token is reasoning: content stays null
    [r], out, _ = run_steps(world, [Smoke(world.settings, "l4")])
    assert r.status == "ok", out
    assert f"answer: {NO_ANSWER}" in out
    assert "reasoning: We need to answer the user." in out
    assert r.facts["smoke"]["answered"] is False


def test_completion_target_uses_the_tutorial_prompt(world):
    target = world.settings.target("ironwood")
    world.fake.model_id = target.model_id
    world.emu.seed({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "gptoss-ironwood-abc12", "namespace": NAMESPACE,
                                 "labels": selector(target)},
                    "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-tpu:nightly"}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    world.emu.set_port_forward_target("gptoss-ironwood-abc12", target.port, ("127.0.0.1", world.fake.port))
    [r], out, _ = run_steps(world, [Smoke(world.settings, "ironwood")])
    assert r.status == "ok", out
    [req] = world.fake.completion_requests()
    assert req.path == "/v1/completions"
    assert req.body["prompt"] == "San Francisco is a"
    assert req.body["max_tokens"] == 7 and req.body["temperature"] == 0
    assert "answer: San Francisco is aHello! This answer" in out  # prompt + completion, as sent


def test_dry_run_shows_the_checks_and_contacts_nothing(world):
    [r], out, _ = run_steps(world, [Smoke(world.settings, "l4")], dry_run=True)
    assert r.status == "ok" and r.reason == "would smoke-test the endpoint through a port-forward"  # a check
    assert "GET /v1/models without the key → 401" in out
    assert world.fake.requests == []
    assert not any("portforward" in q.path for q in world.emu.requests)


# ---- smoke: failures ---------------------------------------------------------------------------------


def test_endpoint_open_without_the_key_fails_the_smoke_test(world):
    world.fake.require_key = False
    [r], out, report = run_steps(world, [Smoke(world.settings, "l4")])
    assert r.status == "failed"
    assert r.error == "the endpoint answers without the API key: VLLM_API_KEY not set in the pod"
    assert "re-run `inv deploy --target=l4`" in r.fix
    assert world.key not in out and world.key not in report


def test_wrong_model_fails_naming_both_ids(world):
    world.fake.model_id = "openai/gpt-oss-120b"
    [r], out, _ = run_steps(world, [Smoke(world.settings, "l4")])
    assert r.status == "failed"
    assert r.error == "the endpoint serves openai/gpt-oss-120b but target l4 expects openai/gpt-oss-20b"
    assert world.fake.completion_requests() == []  # stopped before generating


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_health_never_ready_fails_clearly_within_its_bound(kube_emulator, tmp_path, mode):
    from tests.emulators.vllm import FakeVllm

    with FakeVllm(never_ready=True, not_ready_mode=mode) as fake:
        w = make_world(kube_emulator, fake, tmp_path)
        [r], out, _ = run_steps(w, [Smoke(w.settings, "l4", health_timeout_s=2)])
    assert r.status == "failed"
    assert r.error.startswith("GET /health did not answer 200 within 2s through the port-forward to pod gptoss-l4-0")
    if mode == "refuse":
        # Nothing listens in the pod: the tunnel's error channel says so, and the failure repeats it.
        assert "(port-forward: pod gptoss-l4-0 port 8000: error forwarding port 8000 to pod" in r.error
        assert "port-forward: pod gptoss-l4-0 port 8000: error forwarding port 8000" in out
    else:
        assert "(last: HTTP 503)" in r.error
    assert "kubectl logs -n gptoss gptoss-l4-0 -c vllm" in r.fix


def test_no_ready_pod_says_run_deploy(kube_emulator, fake_vllm, tmp_path):
    w = make_world(kube_emulator, fake_vllm, tmp_path, pod_ready=False)
    [r], _, _ = run_steps(w, [Smoke(w.settings, "l4")])
    assert r.status == "failed"
    assert r.error.startswith("no Ready pod of target l4 in namespace gptoss")
    assert "gptoss-l4-0 (Pending, not ready)" in r.error
    assert "run `inv deploy --target=l4`" in r.fix
    assert fake_vllm.requests == []


# ---- the port-forward itself -------------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_request_travels_through_the_tunnel_and_the_port_closes_after(world):
    ctx, _ = make_ctx(world.settings)
    target = world.settings.target("l4")
    with port_forward(ctx, target) as port:
        ep = Endpoint(f"http://127.0.0.1:{port}", world.key, timeout=10)
        assert ep.get("/health") == (200, None)
        status, body = ep.get("/v1/models")
        assert status == 200 and body["data"][0]["id"] == "openai/gpt-oss-20b"
        r = request(ep, "chat", target.model_id, "hi", 5)
        assert r.ok and r.output_tokens == 5, r.error
    assert [q.path for q in world.fake.requests] == ["/health", "/v1/models", "/v1/chat/completions"]
    assert sum("portforward" in q.path for q in world.emu.requests) == 3  # one tunnel per connection
    assert _refused(port)


def test_the_tunnel_closes_even_when_the_block_raises(world):
    ctx, _ = make_ctx(world.settings)
    with pytest.raises(RuntimeError, match="boom"):
        with port_forward(ctx, world.settings.target("l4")) as port:
            assert Endpoint(f"http://127.0.0.1:{port}", timeout=10).get("/health")[0] == 200
            raise RuntimeError("boom")
    assert _refused(port)


def test_a_given_local_port_is_used_and_a_busy_one_is_a_clear_error(world):
    ctx, _ = make_ctx(world.settings)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(StepError, match=rf"cannot listen on 127.0.0.1:{busy.getsockname()[1]}"):
            with port_forward(ctx, world.settings.target("l4"), local_port=busy.getsockname()[1]):
                pass
    finally:
        busy.close()


class _DroppingPod:
    """A 'pod' that answers one streamed token, then drops the connection mid-response."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            event = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(event), event))
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_a_dropped_tunnel_fails_the_request_with_a_message(kube_emulator, tmp_path):
    pod = _DroppingPod()
    try:
        w = make_world(kube_emulator, pod, tmp_path)
        ctx, _ = make_ctx(w.settings)
        with port_forward(ctx, w.settings.target("l4")) as port:
            r = request(Endpoint(f"http://127.0.0.1:{port}", w.key, timeout=15), "chat",
                        "openai/gpt-oss-20b", "hi", 50)
    finally:
        pod.close()
    assert not r.ok
    assert "tunnel dropped?" in r.error, r.error
    assert r.ttft_s is not None  # the one token that made it through was measured


def test_tunnel_to_a_port_nothing_listens_on_reports_the_error_channel(world):
    world.fake.stop()  # the pod's port is now closed
    ctx, out = make_ctx(world.settings)
    with port_forward_tunnel(ctx, world.settings.target("l4")) as tunnel:
        with pytest.raises(OSError):
            Endpoint(f"http://127.0.0.1:{tunnel.port}", timeout=10).get("/health")
        deadline = time.monotonic() + 5
        while not tunnel.errors and time.monotonic() < deadline:
            time.sleep(0.02)
    assert tunnel.errors and tunnel.errors[0].startswith(f"pod {POD} port 8000: error forwarding port 8000 to pod")
    assert "dial tcp4 127.0.0.1:8000: connect:" in tunnel.errors[0]  # the cause, kept from the message's tail
    assert f"port-forward: pod {POD} port 8000: error forwarding port 8000" in out.getvalue()


# ---- show-api-key and port-forward tasks -------------------------------------------------------------


def test_show_api_key_refuses_without_a_terminal_and_prints_with_force(world):
    env = inv_env(world)
    proc = run_inv(["show-api-key", "--target=l4"], env, timeout=60)
    assert proc.returncode == 1
    assert "standard output is not a terminal" in proc.stdout and world.key not in proc.stdout + proc.stderr
    report = world.tmp / "key.json"
    proc = run_inv(["show-api-key", "--target=l4", "--force", f"--report={report}"], env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"VLLM_API_KEY={world.key}" in proc.stdout
    assert world.key not in report.read_text()  # shown to the person, never written down


CURL_WRAPPER = """#!/bin/sh
# Record the exact argv curl was started with (what `ps` shows every user), then run the real curl.
printf '%s\\n' "$*" >> "{log}"
exec "{real}" "$@"
"""


def test_inv_port_forward_curl_hint_works_with_the_key_never_on_a_command_line(world):
    import signal
    import subprocess

    from tests.conftest import INV, REPO, require_tool

    real_curl = require_tool("curl", "apt-get install -y curl")
    bindir = world.tmp / "bin"
    bindir.mkdir()
    argv_log = world.tmp / "curl-argv.log"
    (bindir / "curl").write_text(CURL_WRAPPER.format(log=argv_log, real=real_curl))
    (bindir / "curl").chmod(0o755)
    proc = subprocess.Popen([INV, "port-forward", "--target=l4", "--local-port=0"], cwd=REPO, env=inv_env(world),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "show-api-key" in line:  # the last line of the hint
                break
        url = next(ln for ln in lines if "forwarding http://127.0.0.1:" in ln).split("forwarding ")[1].split()[0]
        hint = next(ln for ln in lines if "curl -s " in ln).strip()
        # Run the printed line as a person would, in bash, with the key in a shell variable.
        used = subprocess.run(["bash", "-c", hint], env={"PATH": f"{bindir}:{os.environ['PATH']}",
                                                        "VLLM_API_KEY": world.key},
                              capture_output=True, text=True, timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C is how a port-forward ends
        proc.wait(timeout=30)  # (not communicate(timeout=...): it would skip what the line reader buffered)
        rest = proc.stdout.read()
        proc.stdout.close()
    out = "".join(lines) + rest
    assert used.returncode == 0, used.stderr
    assert [m["id"] for m in json.loads(used.stdout)["data"]] == ["openai/gpt-oss-20b"]  # the key was accepted
    started = argv_log.read_text()
    assert "/v1/models" in started and world.key not in started and "Bearer" not in started
    assert f"| curl -s {url}/v1/models -H @-" in hint and "$VLLM_API_KEY" in hint
    assert proc.returncode == 0 and "tunnel closed" in out and "RECAP ok=1 changed=0" in out
    assert world.key not in out
    assert _refused(int(url.rsplit(":", 1)[1]))


def test_a_reset_in_the_client_librarys_port_forward_thread_is_no_traceback_and_other_errors_still_are():
    """kubernetes.stream's proxy thread dies with ConnectionResetError when a tunnelled connection is reset
    (seen in a full run as "Exception in thread Kubernetes port forward proxy: 8000" and its traceback)."""
    import threading

    from gptoss_gke.k8s import portforward

    seen: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(f"{args.thread.name}: {args.exc_type.__name__}")
    try:
        portforward._quiet_proxy_resets()
        portforward._quiet_proxy_resets()  # once is enough: a second call does not wrap again

        def boom(exc):
            raise exc

        for name, exc in (("Kubernetes port forward proxy: 8000", ConnectionResetError(104, "reset")),
                          ("Kubernetes port forward proxy: 8000", ValueError("a real bug")),
                          ("some other thread", ConnectionResetError(104, "reset"))):
            t = threading.Thread(target=boom, args=(exc,), name=name)
            t.start()
            t.join()
    finally:
        threading.excepthook = previous
    assert seen == ["Kubernetes port forward proxy: 8000: ValueError", "some other thread: ConnectionResetError"]


# ---- through the Service: the smoke Job -----------------------------------------------------------------

SPOT = ("--set", "targets.l4.capacity=spot-with-fallback", "--set", "models.bucket=test-project-models")


def test_the_smoke_job_is_hardened_schema_valid_cpu_only_and_gets_the_key_only_by_reference():
    import kubernetes_validate

    from gptoss_gke.images import TOOLS
    from tests.conftest import in_process

    s = Settings(project="test-project", models={"bucket": "test-project-models"},
                 targets={"l4": {"capacity": "spot-with-fallback"}})
    ctx, _ = in_process(s)
    # What images.tools_image pins once the tools image is mirrored (tests/test_images.py mirrors it for real).
    pinned = "us-central1-docker.pkg.dev/test-project/gptoss/library/python@sha256:" + "b" * 64
    ctx.fact(f"image.{TOOLS}", lambda: pinned)
    step = Smoke(s, "l4")
    assert step.via == "service" and step.generations == 4  # 2 replicas, 2 requests each
    assert Smoke(s, "l4", via="pod").generations == 1
    assert Smoke(Settings(project="test-project"), "l4").via == "pod"  # one on-demand replica: the port-forward
    objects = step._objects(ctx, step._url(ctx, 80))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.34.0", strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gptoss-gke"  # teardown's to delete
    cm, job = objects
    spec = job["spec"]
    assert job["metadata"]["name"].startswith("smoke-l4-") and spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod["automountServiceAccountToken"]
    [c] = pod["containers"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    # CPU nodes only: no accelerator asked for, none tolerated, accelerator nodes excluded.
    assert "tolerations" not in pod and "nvidia.com/gpu" not in str(c["resources"])
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {(e["key"], e["operator"]) for e in terms[0]["matchExpressions"]} == {
        ("cloud.google.com/gke-accelerator", "DoesNotExist"),
        ("cloud.google.com/gke-tpu-accelerator", "DoesNotExist")}
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_API_KEY"] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "vllm-api-key", "key": "VLLM_API_KEY"}}}
    assert env["GPTOSS_SMOKE_URL"]["value"] == "http://gptoss-l4.gptoss.svc.cluster.local:80"
    assert env["GPTOSS_MAIN"]["value"] == "gptoss_gke.serving.smoke_pod" and env["GPTOSS_MODULES"]["value"] == ""
    assert c["image"] == pinned  # images.tools_image: the staging Job's image, pinned by digest
    request = json.loads(cm["data"]["request.json"])
    assert set(request) == {"task", "smoke", "request_timeout_s", "code"}  # what to check, never the key
    assert request["smoke"]["generations"] == 4 and request["smoke"]["api_key_secret"] == "gptoss/vllm-api-key"


def test_dry_run_shows_the_smoke_job_it_would_create_and_the_via_flag_picks_the_route(offline_env):
    proc = run_inv(["smoke", "--target=l4", "--dry-run", *SPOT], offline_env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "would smoke-test the endpoint through Service gptoss/gptoss-l4 from a Job in the cluster" in out
    assert "to http://gptoss-l4.gptoss.svc.cluster.local:80:" in out
    assert "4 times (2 per replica), each must answer" in out
    assert "+ kind: Job" in out and "secretKeyRef:" in out and "ttlSecondsAfterFinished:" in out
    pod = run_inv(["smoke", "--target=l4", "--dry-run", "--via=pod", *SPOT], offline_env)
    assert pod.returncode == 0, pod.stdout + pod.stderr
    assert "would smoke-test the endpoint through a port-forward" in pod.stdout and "kind: Job" not in pod.stdout
    bad = run_inv(["smoke", "--target=l4", "--dry-run", "--via=proxy"], offline_env)
    assert bad.returncode != 0 and "service, pod" in bad.stdout + bad.stderr
