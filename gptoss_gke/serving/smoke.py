"""The smoke test: is the endpoint up, serving the right model, answering, and closed without the key?

Everything goes through a port-forward to a Ready pod, so it works for a ClusterIP Service with
nothing exposed. The API key comes from the Secret (registered with the redactor as it is read):
it travels in the Authorization header only and never reaches the output or the report.
"""

from __future__ import annotations

import time
from typing import Any

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import KubeCheck

CHAT_PROMPT = "In one sentence: what does a Kubernetes Service do?"
CHAT_MAX_TOKENS = 64
# The Ironwood tutorial's completion check (gpt-oss-120b on TPU v7 with vLLM's TPU image).
COMPLETION_PROMPT = "San Francisco is a"
COMPLETION_MAX_TOKENS = 7
NO_ANSWER = "(no final answer yet: the model spent its tokens reasoning; raise max_tokens)"
SHOWN_CHARS = 400


def _short(text: str, limit: int = SHOWN_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tunnel_errors(tunnel) -> str:
    return f" (port-forward: {'; '.join(tunnel.errors)})" if tunnel.errors else ""


class Smoke(KubeCheck):  # Kubernetes errors in words (see k8s.client.explain)
    """Nothing on the server changes: a pass is `ok`, a miss is `failed`, and a dry-run only shows what
    would be checked. The probe runs at the step's turn, once the rollout before it is ready."""

    section = "smoke"

    def __init__(self, settings, target_name: str, *, health_timeout_s: float = 90.0,
                 request_timeout_s: float = 120.0, local_port: int = 0):
        self.target = settings.target(target_name)
        self.health_timeout_s = health_timeout_s
        self.request_timeout_s = request_timeout_s
        self.local_port = local_port
        self.name = f"{self.target.name} endpoint ({self.target.model_id})"
        self.key = f"smoke.{target_name}"
        self.measured: dict[str, Any] = {}

    def probe(self, ctx, current) -> dict[str, Any]:
        self.measured = {}
        self.run(ctx)
        return self.measured

    def verdict(self, ctx, m) -> Plan:
        rate = f", {m['tokens_per_s']:.1f} tok/s" if m.get("tokens_per_s") else ""
        ttft = f", TTFT {m['ttft_s']:.3f} s" if m.get("ttft_s") is not None else ""
        return noop(f"{self.target.model_id} answered through the port-forward{ttft}{rate}; "
                    f"401 without the key", smoke=m)

    def preview(self, ctx) -> Plan:
        t = self.target
        if t.smoke == "chat":
            gen = f"POST /v1/chat/completions (streaming, max_tokens {CHAT_MAX_TOKENS}): answer, reasoning, TTFT, tok/s"
        else:
            gen = (f"POST /v1/completions {COMPLETION_PROMPT!r} (streaming, max_tokens {COMPLETION_MAX_TOKENS}, "
                   f"temperature 0): answer, TTFT, tok/s")
        detail = [
            f"port-forward 127.0.0.1 → a Ready pod of {t.name}, port {t.port}",
            "GET /health → 200",
            f"GET /v1/models with the key → serves {t.model_id}",
            gen,
            "GET /v1/models without the key → 401",
        ]
        return Plan([Change("smoke-test the endpoint through a port-forward", "update", detail=detail)],
                    facts={"smoke": {}})

    # ---- the checks ----

    def run(self, ctx) -> None:
        from gptoss_gke.k8s.portforward import port_forward_tunnel
        from gptoss_gke.k8s.secret import read_api_key
        from gptoss_gke.serving.client import Endpoint

        t = self.target
        p = ctx.printer
        key = read_api_key(ctx)  # registered with the redactor before anything can print it
        with port_forward_tunnel(ctx, t, local_port=self.local_port) as tunnel:
            base = f"http://127.0.0.1:{tunnel.port}"
            p.line(f"  tunnel: {base} → pod {ctx.settings.kube.namespace}/{tunnel.pod}:{t.port}")
            self.measured["pod"] = tunnel.pod
            ep = Endpoint(base, key, timeout=self.request_timeout_s)
            self._health(ctx, ep, tunnel)
            self._model(ctx, ep, tunnel)
            self._generate(ctx, ep, tunnel)
            self._without_key(ctx, ep, tunnel)

    def _health(self, ctx, ep, tunnel) -> None:
        from gptoss_gke.serving.client import describe_connection_error

        started = time.monotonic()
        deadline = started + self.health_timeout_s
        last = "no answer"
        while True:
            try:
                status, _ = ep.with_key(None).get("/health", timeout=min(10.0, self.health_timeout_s))
                if status == 200:
                    took = time.monotonic() - started
                    self.measured["health_s"] = round(took, 3)
                    ctx.printer.line(f"  health: 200 after {took:.1f}s")
                    return
                last = f"HTTP {status}"
            except Exception as exc:  # noqa: BLE001 - connection trouble is what we are waiting out
                last = describe_connection_error(exc)
            if time.monotonic() + 1.0 > deadline:
                break
            ctx.sleep(1.0)
        raise StepError(
            f"GET /health did not answer 200 within {self.health_timeout_s:.0f}s through the port-forward to pod "
            f"{tunnel.pod} (last: {last}){_tunnel_errors(tunnel)}",
            f"the pod is Ready but vLLM does not answer on port {self.target.port}: read its log "
            f"(kubectl logs -n {ctx.settings.kube.namespace} {tunnel.pod} -c vllm), then re-run "
            f"`inv smoke --target={self.target.name}`")

    def _model(self, ctx, ep, tunnel) -> None:
        from gptoss_gke.serving.client import describe_connection_error

        t = self.target
        s = ctx.settings
        try:
            status, body = ep.get("/v1/models")
        except Exception as exc:  # noqa: BLE001
            raise StepError(f"GET /v1/models failed: {describe_connection_error(exc)}{_tunnel_errors(tunnel)}",
                            f"re-run `inv smoke --target={t.name}`; if it persists, check the pod's log") from None
        if status == 401:
            raise StepError(f"the endpoint refused the API key from Secret {s.kube.namespace}/{s.kube.api_key_secret} "
                            f"(HTTP 401)",
                            "the pod runs with another key (the Secret changed after it started): restart it "
                            f"(kubectl rollout restart -n {s.kube.namespace} ...) or re-run `inv deploy "
                            f"--target={t.name}`")
        if status != 200:
            raise StepError(f"GET /v1/models answered HTTP {status}: {str(body)[:300]}",
                            "read the pod's log for the cause")
        models = (body.get("data") or []) if isinstance(body, dict) else []
        ids = [m.get("id") for m in models if isinstance(m, dict)]
        if t.model_id not in ids:
            served = ", ".join(str(i) for i in ids) or "no model"
            raise StepError(f"the endpoint serves {served} but target {t.name} expects {t.model_id}",
                            f"the server's --served-model-name must be {t.model_id}: re-run `inv deploy "
                            f"--target={t.name}` (check targets.{t.name}.vllm_extra_args)")
        entry = next(m for m in models if m.get("id") == t.model_id)
        self.measured["model"] = t.model_id
        extra = f" (max_model_len {entry['max_model_len']})" if entry.get("max_model_len") else ""
        ctx.printer.line(f"  model: {t.model_id}{extra}")

    def _generate(self, ctx, ep, tunnel) -> None:
        from gptoss_gke.serving.client import request

        t = self.target
        p = ctx.printer
        if t.smoke == "chat":
            r = request(ep, "chat", t.model_id, CHAT_PROMPT, CHAT_MAX_TOKENS, reasoning_effort="low")
            path = "/v1/chat/completions"
        else:
            r = request(ep, "completion", t.model_id, COMPLETION_PROMPT, COMPLETION_MAX_TOKENS, temperature=0)
            path = "/v1/completions"
        if not r.ok:
            raise StepError(f"POST {path} failed: {r.error}{_tunnel_errors(tunnel)}",
                            "read the pod's log for the cause; re-run `inv smoke` once it is fixed")
        if t.smoke == "chat":
            p.line(f"  prompt: {CHAT_PROMPT}")
            p.line(f"  answer: {_short(r.content) if r.content else NO_ANSWER}")
            p.line(f"  reasoning: {_short(r.reasoning) if r.reasoning else '(none)'}")
        else:
            p.line(f"  prompt: {COMPLETION_PROMPT!r}")
            p.line(f"  answer: {COMPLETION_PROMPT}{r.content or ''}" if r.content else f"  answer: {NO_ANSWER}")
        rate = f"{r.tokens_per_s:.1f} tok/s" if r.tokens_per_s else "n/a tok/s"
        p.line(f"  TTFT {r.ttft_s:.3f} s, {rate}, {r.output_tokens} tokens"
               + (f" (finish: {r.finish_reason})" if r.finish_reason else ""))
        self.measured.update({
            "ttft_s": round(r.ttft_s, 4) if r.ttft_s is not None else None,
            "tokens_per_s": round(r.tokens_per_s, 2) if r.tokens_per_s else None,
            "output_tokens": r.output_tokens,
            "answered": bool(r.content),
            "reasoning": bool(r.reasoning),
            "finish_reason": r.finish_reason,
        })

    def _without_key(self, ctx, ep, tunnel) -> None:
        from gptoss_gke.serving.client import describe_connection_error

        t = self.target
        s = ctx.settings
        try:
            status, _ = ep.with_key(None).get("/v1/models")
        except Exception as exc:  # noqa: BLE001
            raise StepError(f"GET /v1/models without the key failed: {describe_connection_error(exc)}"
                            f"{_tunnel_errors(tunnel)}", f"re-run `inv smoke --target={t.name}`") from None
        self.measured["without_key_status"] = status
        if status == 200:
            raise StepError("the endpoint answers without the API key: VLLM_API_KEY not set in the pod",
                            f"the container must get VLLM_API_KEY from Secret {s.kube.namespace}/"
                            f"{s.kube.api_key_secret}: re-run `inv deploy --target={t.name}`")
        if status != 401:
            raise StepError(f"GET /v1/models without the key answered HTTP {status}, expected 401",
                            "check what sits in front of vLLM in the pod")
        ctx.printer.line("  without the key: 401 (as expected)")
