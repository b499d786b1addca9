"""A small OpenAI-compatible client that measures one streaming request at a time.

Used by the smoke test and the benchmark. Standard library only (http.client), so every byte's
arrival time is ours to take: ``readline`` on a streamed response returns as soon as one
server-sent event line is complete, with no client-side buffering in between.

What one request reports (``RequestResult``):
- ``ttft_s``: from just before the request is sent to the first chunk carrying a token (answer,
  reasoning or completion text; vLLM's role-only opening chunk is not a token);
- ``itl_s``: the gaps between successive token chunks (inter-token latencies);
- ``tpot_s``: (last token time - first token time) / (output tokens - 1);
- ``output_tokens``: the server's ``usage.completion_tokens`` when it sends usage, else the
  number of token chunks;
- ``tokens_per_s``: output tokens / end-to-end latency (what the tutorial computed with ``time
  curl``); ``decode_tokens_per_s``: 1 / TPOT, the generation rate once the first token is out.

A request that fails is returned with ``error`` set and ``ok`` False; callers report it and leave
it out of every average (``summarize``).
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT_S = 120.0  # longest silence we accept between two bytes of one response


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    model: str | None = None
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    tpot_s: float | None = None
    mean_itl_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    token_chunks: int = 0
    latency_s: float | None = None
    tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    content: str | None = None  # None when the model produced no final answer (gpt-oss may not)
    reasoning: str | None = None
    finish_reason: str | None = None

    def to_json(self, *, with_itl: bool = False, with_text: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_itl:
            data.pop("itl_s")
        if not with_text:
            data.pop("content")
            data.pop("reasoning")
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in data.items()}


class Endpoint:
    """Where requests go: a base URL such as http://127.0.0.1:8000 and the API key (or None); ``tunnel``:
    the URL is a port-forward's (errors then name it as the likely cause)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 tunnel: bool = True):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.tunnel = tunnel

    def with_key(self, api_key: str | None) -> "Endpoint":
        return Endpoint(self.base_url, api_key, timeout=self.timeout, tunnel=self.tunnel)

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout or self.timeout)

    def _headers(self, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if body:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def get(self, path: str, *, timeout: float | None = None) -> tuple[int, Any]:
        """One GET: (status, parsed JSON or text). Connection problems raise OSError/HTTPException."""
        conn = self._connection(timeout)
        try:
            conn.request("GET", self.prefix + path, headers=self._headers(False))
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, _parse_body(raw)

    def stream(self, path: str, payload: dict[str, Any]) -> RequestResult:
        """POST a streaming request and measure it. Never raises for request failures."""
        return _measure(self, path, payload)


def _parse_body(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(body or "").strip()[:300]


def describe_connection_error(exc: BaseException, *, tunnel: bool = True) -> str:
    """Plain words for what broke between us and the server; ``tunnel``: through a port-forward (the usual
    suspect then), else straight to a Service or host."""
    dropped = " (tunnel dropped?)" if tunnel else ""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no data from the server for too long (timed out)"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed in the middle of the response{dropped}"
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return f"the connection closed before the response was complete{dropped}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused" + (" (is the port-forward still open?)" if tunnel else "")
    return f"{type(exc).__name__}: {exc}"


_TOKEN_FIELDS = ("content", "reasoning", "reasoning_content", "text")


def _chunk_text(choice: dict) -> tuple[str, str, bool]:
    """(answer text, reasoning text, carries a token) of one streamed choice."""
    delta = choice.get("delta")
    if delta is None:  # /v1/completions
        text = choice.get("text") or ""
        return text, "", bool(text)
    answer = delta.get("content") or ""
    # gpt-oss: `reasoning` is current, `reasoning_content` the deprecated copy; either may appear.
    reasoning = delta.get("reasoning") or delta.get("reasoning_content") or ""
    token = bool(answer or reasoning or delta.get("tool_calls"))
    return answer, reasoning, token


def _measure(ep: Endpoint, path: str, payload: dict[str, Any]) -> RequestResult:
    result = RequestResult()
    body = json.dumps(payload).encode()
    answer: list[str] = []
    reasoning: list[str] = []
    token_times: list[float] = []
    usage: dict | None = None
    conn = ep._connection()
    started = time.perf_counter()
    try:
        conn.request("POST", ep.prefix + path, body=body, headers=ep._headers(True))
        resp = conn.getresponse()
        result.status = resp.status
        if resp.status != 200:
            result.error = f"HTTP {resp.status}: {_error_text(_parse_body(resp.read()))}"
            return result
        done = False
        while True:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter()
            line = line.strip()
            if not line or line.startswith(b":") or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                result.error = f"unreadable stream event: {data[:200]!r}"
                return result
            if event.get("error"):
                result.error = f"server error mid-stream: {_error_text(event)}"
                return result
            result.model = event.get("model") or result.model
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                a, r, token = _chunk_text(choice)
                if a:
                    answer.append(a)
                if r:
                    reasoning.append(r)
                if token:
                    token_times.append(now)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
        ended = time.perf_counter()
        if not done:
            result.error = "the stream ended without [DONE] (connection closed early" + (
                ": tunnel dropped?)" if ep.tunnel else ")")
            return result
    except (OSError, http.client.HTTPException) as exc:
        result.error = describe_connection_error(exc, tunnel=ep.tunnel)
        return result
    finally:
        conn.close()
        result.content = "".join(answer) or None
        result.reasoning = "".join(reasoning) or None
        _fill_timings(result, started, token_times, usage)
    if not token_times:
        result.error = "the server answered but streamed no token"
        return result
    result.latency_s = ended - started
    n = result.output_tokens
    result.tokens_per_s = n / result.latency_s if result.latency_s > 0 else None
    result.ok = True
    return result


def _fill_timings(result: RequestResult, started: float, times: list[float], usage: dict | None) -> None:
    result.token_chunks = len(times)
    if usage:
        result.output_tokens = int(usage.get("completion_tokens") or 0) or len(times)
        result.prompt_tokens = usage.get("prompt_tokens")
    else:
        result.output_tokens = len(times)
    if not times:
        return
    result.ttft_s = times[0] - started
    result.itl_s = [b - a for a, b in zip(times, times[1:])]
    if result.itl_s:
        result.mean_itl_s = statistics.fmean(result.itl_s)
    if result.output_tokens > 1 and times[-1] > times[0]:
        result.tpot_s = (times[-1] - times[0]) / (result.output_tokens - 1)
        result.decode_tokens_per_s = 1.0 / result.tpot_s


# ---- payloads ----


def chat_payload(model: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **extra}


def completion_payload(model: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **extra}


def request(ep: Endpoint, kind: str, model: str, prompt: str, max_tokens: int, **extra: Any) -> RequestResult:
    """One measured request: kind "chat" (/v1/chat/completions) or "completion" (/v1/completions)."""
    if kind == "chat":
        return ep.stream("/v1/chat/completions", chat_payload(model, prompt, max_tokens, **extra))
    if kind == "completion":
        return ep.stream("/v1/completions", completion_payload(model, prompt, max_tokens, **extra))
    raise ValueError(f"unknown request kind {kind!r} (chat or completion)")


# ---- aggregates ----


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarize(results: list[RequestResult], wall_s: float | None = None) -> dict[str, Any]:
    """Means over the successful requests only; failures are counted and listed, never averaged."""
    good = [r for r in results if r.ok]
    itls = [gap for r in good for gap in r.itl_s]
    out = {
        "requests": len(results),
        "succeeded": len(good),
        "failed": len(results) - len(good),
        "errors": [r.error for r in results if not r.ok],
        "ttft_s": _mean([r.ttft_s for r in good]),
        "mean_itl_s": statistics.fmean(itls) if itls else None,
        "tpot_s": _mean([r.tpot_s for r in good]),
        "tokens_per_s": _mean([r.tokens_per_s for r in good]),
        "decode_tokens_per_s": _mean([r.decode_tokens_per_s for r in good]),
        "output_tokens": sum(r.output_tokens for r in good),
        "prompt_tokens": _mean([r.prompt_tokens for r in good]),
    }
    if wall_s is not None:
        out["wall_s"] = wall_s
        out["aggregate_tokens_per_s"] = out["output_tokens"] / wall_s if good and wall_s > 0 else None
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}
