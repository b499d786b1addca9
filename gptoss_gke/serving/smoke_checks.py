"""The smoke test's checks: health, the served model, generations, 401 without the key.

The same checks run here through a port-forward (``Smoke`` with ``via="pod"``) and in the smoke Job's
pod through the Service (``via="service"``, :mod:`gptoss_gke.serving.smoke_pod`), so this module uses the
standard library and :mod:`gptoss_gke.serving.client` only: the pod has nothing else.

Each check hands a record (a JSON-able dict, ``"check"`` names it) to ``emit``; :func:`lines` turns a
record into the lines the user reads and :func:`measured` the records into the report's facts, so a
record printed as a JSON line in the pod's log reads the same here as one emitted locally. A check that
fails raises :class:`CheckFailed` with the problem and the fix; the key never enters a record.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from gptoss_gke.serving.client import Endpoint, describe_connection_error, request

CHAT_PROMPT = "In one sentence: what does a Kubernetes Service do?"
CHAT_MAX_TOKENS = 64
# The Ironwood tutorial's completion check (gpt-oss-120b on TPU v7 with vLLM's TPU image).
COMPLETION_PROMPT = "San Francisco is a"
COMPLETION_MAX_TOKENS = 7
NO_ANSWER = "(no final answer yet: the model spent its tokens reasoning; raise max_tokens)"
SHOWN_CHARS = 400


@dataclass
class SmokeSpec:
    """What to check and how to word it; no secret (it travels to the pod in the ConfigMap)."""

    target: str
    model_id: str
    kind: str  # "chat" or "completion"
    port: int
    route: str  # how the requests reach vLLM: "the port-forward to pod X", "Service ns/name"
    server_logs: str  # the command that shows vLLM's log
    api_key_secret: str  # "namespace/name" of the Secret holding VLLM_API_KEY
    generations: int = 1  # several, for several replicas behind a Service
    health_timeout_s: float = 90.0

    def to_json(self) -> dict:
        return asdict(self)


class CheckFailed(Exception):
    def __init__(self, check: str, problem: str, fix: str):
        super().__init__(problem)
        self.check, self.problem, self.fix = check, problem, fix

    def record(self) -> dict:
        return {"check": self.check, "ok": False, "problem": self.problem, "fix": self.fix}


Emit = Callable[[dict], None]


def run_checks(ep: Endpoint, spec: SmokeSpec, emit: Emit, sleep: Callable[[float], None]) -> None:
    """All checks in order; the first that fails raises :class:`CheckFailed`."""
    health(ep, spec, emit, sleep)
    model(ep, spec, emit)
    generate(ep, spec, emit)
    without_key(ep, spec, emit)


def health(ep: Endpoint, spec: SmokeSpec, emit: Emit, sleep: Callable[[float], None]) -> None:
    started = time.monotonic()
    deadline = started + spec.health_timeout_s
    last = "no answer"
    while True:
        try:
            status, _ = ep.with_key(None).get("/health", timeout=min(10.0, spec.health_timeout_s))
            if status == 200:
                emit({"check": "health", "ok": True, "health_s": round(time.monotonic() - started, 3)})
                return
            last = f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - connection trouble is what we are waiting out
            last = describe_connection_error(exc, tunnel=ep.tunnel)
        if time.monotonic() + 1.0 > deadline:
            break
        sleep(1.0)
    raise CheckFailed("health", f"GET /health did not answer 200 within {spec.health_timeout_s:.0f}s through "
                                f"{spec.route} (last: {last})",
                      f"vLLM does not answer on port {spec.port}: read its log ({spec.server_logs}), then re-run "
                      f"`inv smoke --target={spec.target}`")


def model(ep: Endpoint, spec: SmokeSpec, emit: Emit) -> None:
    try:
        status, body = ep.get("/v1/models")
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed("model", f"GET /v1/models failed: {describe_connection_error(exc, tunnel=ep.tunnel)}",
                          f"re-run `inv smoke --target={spec.target}`; if it persists, check the pod's log") from None
    if status == 401:
        ns = spec.api_key_secret.split("/")[0]
        raise CheckFailed("model", f"the endpoint refused the API key from Secret {spec.api_key_secret} (HTTP 401)",
                          f"the pod runs with another key (the Secret changed after it started): restart it "
                          f"(kubectl rollout restart -n {ns} ...) or re-run `inv deploy --target={spec.target}`")
    if status != 200:
        raise CheckFailed("model", f"GET /v1/models answered HTTP {status}: {str(body)[:300]}",
                          "read the pod's log for the cause")
    models = (body.get("data") or []) if isinstance(body, dict) else []
    ids = [m.get("id") for m in models if isinstance(m, dict)]
    if spec.model_id not in ids:
        served = ", ".join(str(i) for i in ids) or "no model"
        raise CheckFailed("model", f"the endpoint serves {served} but target {spec.target} expects {spec.model_id}",
                          f"the server's --served-model-name must be {spec.model_id}: re-run `inv deploy "
                          f"--target={spec.target}` (check targets.{spec.target}.vllm_extra_args)")
    entry = next(m for m in models if m.get("id") == spec.model_id)
    emit({"check": "model", "ok": True, "model": spec.model_id, "max_model_len": entry.get("max_model_len")})


def generate(ep: Endpoint, spec: SmokeSpec, emit: Emit) -> None:
    """``spec.generations`` streamed requests, one after the other (through a Service, more than one endpoint
    is likely to answer); every one must answer."""
    if spec.kind == "chat":
        path, prompt = "/v1/chat/completions", CHAT_PROMPT
    else:
        path, prompt = "/v1/completions", COMPLETION_PROMPT
    errors = []
    for i in range(spec.generations):
        if spec.kind == "chat":
            r = request(ep, "chat", spec.model_id, CHAT_PROMPT, CHAT_MAX_TOKENS, reasoning_effort="low")
        else:
            r = request(ep, "completion", spec.model_id, COMPLETION_PROMPT, COMPLETION_MAX_TOKENS, temperature=0)
        if not r.ok:
            errors.append(f"request {i + 1}: {r.error}")
            emit({"check": "generate", "ok": False, "index": i, "error": r.error})
            continue
        emit({"check": "generate", "ok": True, "index": i, "kind": spec.kind, "prompt": prompt,
              "answer": r.content, "reasoning": r.reasoning,
              "ttft_s": round(r.ttft_s, 4) if r.ttft_s is not None else None,
              "tokens_per_s": round(r.tokens_per_s, 2) if r.tokens_per_s else None,
              "output_tokens": r.output_tokens, "finish_reason": r.finish_reason})
    answered = spec.generations - len(errors)
    if spec.generations > 1:
        emit({"check": "generations", "ok": not errors, "requests": spec.generations, "answered": answered,
              "route": spec.route})
    if errors:
        which = f"{answered} of {spec.generations} requests answered; " if spec.generations > 1 else ""
        raise CheckFailed("generate", f"POST {path} through {spec.route} failed: {which}{'; '.join(errors[:3])}",
                          f"read the pods' log ({spec.server_logs}) for the cause; re-run `inv smoke "
                          f"--target={spec.target}` once it is fixed")


def without_key(ep: Endpoint, spec: SmokeSpec, emit: Emit) -> None:
    try:
        status, _ = ep.with_key(None).get("/v1/models")
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed("without_key", f"GET /v1/models without the key failed: "
                                         f"{describe_connection_error(exc, tunnel=ep.tunnel)}",
                          f"re-run `inv smoke --target={spec.target}`") from None
    if status == 200:
        raise CheckFailed("without_key", "the endpoint answers without the API key: VLLM_API_KEY not set in the pod",
                          f"the container must get VLLM_API_KEY from Secret {spec.api_key_secret}: re-run `inv "
                          f"deploy --target={spec.target}`")
    if status != 401:
        raise CheckFailed("without_key", f"GET /v1/models without the key answered HTTP {status}, expected 401",
                          "check what sits in front of vLLM in the pod")
    emit({"check": "without_key", "ok": True, "status": status})


# ---- what the records read as, and what the report keeps ----


def _short(text: str, limit: int = SHOWN_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def lines(rec: dict) -> list[str]:
    check = rec.get("check")
    if not rec.get("ok") and check not in ("generate", "generations"):
        return []  # a failure is the step's error, with its fix
    if check == "health":
        return [f"  health: 200 after {rec['health_s']:.1f}s"]
    if check == "model":
        extra = f" (max_model_len {rec['max_model_len']})" if rec.get("max_model_len") else ""
        return [f"  model: {rec['model']}{extra}"]
    if check == "generate":
        if not rec.get("ok"):
            return [f"  request {rec['index'] + 1}: failed: {rec.get('error')}"]
        rate = f"{rec['tokens_per_s']:.1f} tok/s" if rec.get("tokens_per_s") else "n/a tok/s"
        ttft = f"{rec['ttft_s']:.3f} s" if rec.get("ttft_s") is not None else "n/a"
        timing = (f"TTFT {ttft}, {rate}, {rec['output_tokens']} tokens"
                  + (f" (finish: {rec['finish_reason']})" if rec.get("finish_reason") else ""))
        if rec["index"] > 0:  # the answer was shown once; the others are timings
            return [f"  request {rec['index'] + 1}: {timing}"]
        answer = rec.get("answer")
        if rec.get("kind") == "chat":
            out = [f"  prompt: {rec['prompt']}", f"  answer: {_short(answer) if answer else NO_ANSWER}",
                   f"  reasoning: {_short(rec['reasoning']) if rec.get('reasoning') else '(none)'}"]
        else:
            out = [f"  prompt: {rec['prompt']!r}",
                   f"  answer: {rec['prompt']}{answer}" if answer else f"  answer: {NO_ANSWER}"]
        return out + [f"  {timing}"]
    if check == "generations":
        return [f"  generations: {rec['answered']} of {rec['requests']} answered through {rec['route']}"]
    if check == "without_key":
        return ["  without the key: 401 (as expected)"]
    return []


def measured(records: list[dict]) -> dict[str, Any]:
    """The report's facts: the first generation's timings (as before), and how many answered."""
    out: dict[str, Any] = {}
    gens = [r for r in records if r.get("check") == "generate"]
    for r in records:
        if not r.get("ok"):
            continue
        if r["check"] == "health":
            out["health_s"] = r["health_s"]
        elif r["check"] == "model":
            out["model"] = r["model"]
        elif r["check"] == "without_key":
            out["without_key_status"] = r["status"]
    first = next((r for r in gens if r.get("ok")), None)
    if first:
        out.update({"ttft_s": first["ttft_s"], "tokens_per_s": first["tokens_per_s"],
                    "output_tokens": first["output_tokens"], "answered": bool(first.get("answer")),
                    "reasoning": bool(first.get("reasoning")), "finish_reason": first.get("finish_reason")})
    if gens:
        out["requests"] = len(gens)
        out["requests_answered"] = sum(1 for r in gens if r.get("ok"))
    return out
