"""Loopback fake of vLLM 0.12's OpenAI-compatible server serving a gpt-oss model.

One aiohttp server on ``127.0.0.1`` (ephemeral port, background thread). What it mirrors:

* ``GET /health``: 200 with an empty body once "ready". Before that nothing listens on the port
  (connection refused, like vLLM while the engine loads) or, with ``not_ready_mode="503"``, every path
  answers 503. ``ready_after_s`` counts from :meth:`FakeVllm.start`; ``never_ready`` keeps it down. Setting
  ``never_ready`` once the server listens makes ``/health`` answer 503 (vLLM's dead-engine answer).
* ``GET /version`` → ``{"version": "0.12.0"}``; ``GET /metrics`` → a few Prometheus series. Both open.
* ``GET /v1/models`` → ``{"object": "list", "data": [{"id", "object": "model", "max_model_len", ...}]}``.
* ``POST /v1/chat/completions`` and ``POST /v1/completions``, non-streaming and streaming (SSE
  ``data: {...}\\n\\n`` chunks, then ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with
  ``choices: []`` and ``usage``). The output is exactly ``max_tokens`` (or ``max_completion_tokens``) tokens,
  one chunk each, ``finish_reason: "length"``; without either, ``default_max_tokens`` tokens with
  ``finish_reason: "stop"``. ``usage.prompt_tokens`` is the prompt's word count.
* gpt-oss reasoning: the first ``reasoning_tokens`` tokens are chain of thought, in ``message.reasoning``
  and ``message.reasoning_content`` (the deprecated copy), the rest is ``content``; ``content`` is ``null``
  when nothing is left (or with ``content_null=True``). Streaming: the first chunk carries
  ``delta: {"role": "assistant", "content": ""}`` immediately, then ``delta.reasoning``/``reasoning_content``
  chunks, then ``delta.content`` chunks. Time to first token = the first chunk with text.
* Pacing: token *i* leaves at ``t0 + first_token_delay + i / tokens_per_second`` (absolute schedule, so the
  measured rate does not drift).
* ``api_key``: every ``/v1/*`` path needs ``Authorization: Bearer <key>``, else 401 ``{"error":
  "Unauthorized"}`` (vLLM's middleware answer). ``require_key=False`` simulates a misconfigured server that
  answers without checking.
* Faults: ``fail_requests = N`` makes the next N completion requests answer 500; an unknown ``model``
  answers 404; a prompt plus ``max_tokens`` beyond ``max_model_len`` answers 400 (vLLM's error shape
  ``{"error": {"message", "type", "param", "code"}}``).

Every request is recorded in :attr:`FakeVllm.requests` without the Authorization value (only whether it was
present and matched). All attributes can be changed while the server runs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.emulators.aioserver import LoopbackAioServer

try:  # pytest is optional for importing the fake itself.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

__all__ = ["FakeVllm", "VllmRequest", "fake_vllm"]

LOOPBACK = "127.0.0.1"
REASONING_WORDS = ("We need to answer the user. The question is simple, so think it through step by step, "
                   "check the facts, and then reply briefly and clearly.").split()
CONTENT_WORDS = ("Hello! This answer comes from a fake gpt-oss model behind an emulated vLLM server, "
                 "generated one token at a time for tests.").split()


@dataclass
class VllmRequest:
    method: str
    path: str
    headers: dict  # without Authorization
    auth_present: bool
    auth_ok: bool
    body: Any = None
    status: int = 0
    stream: bool = False
    time: float = field(default_factory=time.time)


def _error(message: str, typ: str, code: int, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": typ, "param": param, "code": code}},
                             status=code)


def _words(text: Any) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):  # content parts or token lists
        total = 0
        for part in text:
            if isinstance(part, dict):
                total += _words(part.get("text") or "")
            elif isinstance(part, str):
                total += _words(part)
            elif isinstance(part, int):
                total += 1
        return total
    return 0


class FakeVllm(LoopbackAioServer):
    thread_label = "fake-vllm"

    """Fake vLLM OpenAI server on 127.0.0.1. See the module docstring."""

    def __init__(self, model_id: str = "openai/gpt-oss-20b", api_key: str | None = None, *,
                 first_token_delay: float = 0.05, tokens_per_second: float = 200.0, ready_after_s: float = 0.0,
                 never_ready: bool = False, not_ready_mode: str = "refuse", require_key: bool = True,
                 fail_requests: int = 0, max_model_len: int = 131072, default_max_tokens: int = 64,
                 reasoning_tokens: int = 8, content_null: bool = False, version: str = "0.12.0",
                 model_root: str | None = None):
        if not_ready_mode not in ("refuse", "503"):
            raise ValueError("not_ready_mode is 'refuse' or '503'")
        self.model_id = model_id
        self.api_key = api_key
        self.first_token_delay = first_token_delay
        self.tokens_per_second = tokens_per_second
        self.ready_after_s = ready_after_s
        self.never_ready = never_ready
        self.not_ready_mode = not_ready_mode
        self.require_key = require_key
        self.fail_requests = fail_requests
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.reasoning_tokens = reasoning_tokens
        self.content_null = content_null
        self.version = version
        self.model_root = model_root
        self.requests: list[VllmRequest] = []
        self.port: int | None = None
        self.listening = False
        self._lock = threading.Lock()
        self._started_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._watcher: asyncio.Task | None = None
        self._metrics = {"running": 0, "prompt_tokens": 0, "generation_tokens": 0, "success": 0}

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ready(self) -> bool:
        return not self.never_ready and time.monotonic() - self._started_at >= self.ready_after_s

    def set_ready(self) -> None:
        self.never_ready = False
        self.ready_after_s = 0.0

    def _before_start(self) -> None:
        self._started_at = time.monotonic()

    async def _astart(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.not_ready_mode == "503" or self.ready:
            await self._listen()
        else:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_ready())

    async def _listen(self) -> None:
        if not self.listening:
            await web.SockSite(self._runner, self._sock).start()
            self.listening = True

    async def _watch_ready(self) -> None:
        while not self.ready:
            await asyncio.sleep(0.005)
        await self._listen()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until the port listens and /health would answer 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening and self.ready:
                return True
            time.sleep(0.005)
        return False

    async def _astop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
        if self._runner:
            await self._runner.cleanup()


    def completion_requests(self) -> list[VllmRequest]:
        with self._lock:
            return [r for r in self.requests if r.path in ("/v1/chat/completions", "/v1/completions")]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- HTTP ------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        key_ok = auth is not None and self.api_key is not None and auth == f"Bearer {self.api_key}"
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        rec = VllmRequest(request.method, request.path, headers, auth is not None, key_ok, body,
                          stream=isinstance(body, dict) and bool(body.get("stream")))
        with self._lock:
            self.requests.append(rec)
        try:
            resp = await self._route(request, body, key_ok)
        except (ConnectionResetError, asyncio.CancelledError):
            rec.status = 499
            raise
        rec.status = resp.status
        return resp

    async def _route(self, request: web.Request, body: Any, key_ok: bool) -> web.StreamResponse:
        path, method = request.path, request.method
        if not self.ready:
            return web.Response(status=503, body=b"")
        if path == "/health":
            return web.Response(status=200, body=b"") if method == "GET" else self._405()
        if path == "/version":
            return web.json_response({"version": self.version}) if method == "GET" else self._405()
        if path == "/metrics":
            return web.Response(text=self._metrics_text(), content_type="text/plain")
        if path.startswith("/v1") and method != "OPTIONS" and self.api_key and self.require_key and not key_ok:
            return web.json_response({"error": "Unauthorized"}, status=401)
        if path == "/v1/models":
            return self._models() if method == "GET" else self._405()
        if path in ("/v1/chat/completions", "/v1/completions"):
            if method != "POST":
                return self._405()
            return await self._completion(request, body, chat=path.endswith("chat/completions"))
        return web.json_response({"detail": "Not Found"}, status=404)

    @staticmethod
    def _405() -> web.Response:
        return web.json_response({"detail": "Method Not Allowed"}, status=405)

    def _models(self) -> web.Response:
        created = int(time.time())
        return web.json_response({"object": "list", "data": [{
            "id": self.model_id, "object": "model", "created": created, "owned_by": "vllm",
            "root": self.model_root or self.model_id, "parent": None, "max_model_len": self.max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}]}]})

    def _metrics_text(self) -> str:
        m, label = self._metrics, f'engine="0",model_name="{self.model_id}"'
        return "\n".join([
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{label}}} {float(m['running'])}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{label}}} 0.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{label}}} {0.01 * m['running']}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{label}}} {float(m['prompt_tokens'])}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{label}}} {float(m['generation_tokens'])}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{{{label}}} {float(m['success'])}",
            ""])

    # ---- completions -----------------------------------------------------------------------------------

    def _token_text(self, i: int, reasoning: bool, first: bool) -> str:
        words = REASONING_WORDS if reasoning else CONTENT_WORDS
        word = words[i % len(words)]
        return word if first else " " + word

    async def _completion(self, request: web.Request, body: Any, *, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if not isinstance(body, dict):
            return _error("Expected a JSON object in the request body", "BadRequestError", 400)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return _error("[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}]",
                              "BadRequestError", 400)
            prompts = [sum(_words(m.get("content")) for m in messages if isinstance(m, dict))]
        else:
            prompt = body.get("prompt")
            if prompt is None or prompt == "" or prompt == []:
                return _error("Either prompt or prompt_embeds must be provided and non-empty.",
                              "BadRequestError", 400)
            if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompts = [_words(p) for p in prompt]
            else:
                prompts = [_words(prompt)]
        model = body.get("model")
        if model is not None and model != self.model_id:
            return _error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model")
        if self.fail_requests > 0:
            self.fail_requests -= 1
            return _error("EngineCore encountered an issue. See stack trace (above) for the root cause.",
                          "InternalServerError", 500)
        requested = body.get("max_completion_tokens") if chat and body.get("max_completion_tokens") is not None \
            else body.get("max_tokens")
        if requested is not None and (not isinstance(requested, int) or requested < 1):
            return _error(f"max_tokens must be at least 1, got {requested}.", "BadRequestError", 400, "max_tokens")
        n = int(requested) if requested is not None else self.default_max_tokens
        finish = "length" if requested is not None else "stop"
        for p in prompts:
            if p >= self.max_model_len:
                return _error(f"This model's maximum context length is {self.max_model_len} tokens. However, "
                              f"your request has {p} input tokens. Please reduce the length of the input "
                              f"messages.", "BadRequestError", 400)
            if p + n > self.max_model_len:
                return _error(f"'max_tokens' or 'max_completion_tokens' is too large: {n}. This model's maximum "
                              f"context length is {self.max_model_len} tokens and your request has {p} input "
                              f"tokens ({n} > {self.max_model_len} - {p}).", "BadRequestError", 400)
        n_reason = n if (chat and self.content_null) else (min(self.reasoning_tokens, n) if chat else 0)
        ftd, tps = float(self.first_token_delay), float(self.tokens_per_second)
        schedule = [t0 + ftd + i / tps for i in range(n)]
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        usage = {"prompt_tokens": sum(prompts), "total_tokens": sum(prompts) + n * len(prompts),
                 "completion_tokens": n * len(prompts), "prompt_tokens_details": None}
        self._metrics["running"] += 1
        try:
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return await self._stream(request, rid, created, chat, len(prompts), n, n_reason, finish,
                                          schedule, usage, include_usage)
            if schedule:
                await asyncio.sleep(max(0.0, schedule[-1] - loop.time()))
            texts = [self._token_text(i if i < n_reason else i - n_reason, i < n_reason,
                                      i == 0 or i == n_reason) for i in range(n)]
            reasoning = "".join(texts[:n_reason]) or None
            content = "".join(texts[n_reason:]) or None
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                                  "annotations": None, "audio": None, "function_call": None,
                                                  "tool_calls": [], "reasoning": reasoning,
                                                  "reasoning_content": reasoning},
                          "logprobs": None, "finish_reason": finish, "stop_reason": None, "token_ids": None}
                out = {"id": rid, "object": "chat.completion", "created": created, "model": self.model_id,
                       "choices": [choice], "service_tier": None, "system_fingerprint": None, "usage": usage,
                       "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
            else:
                out = {"id": rid, "object": "text_completion", "created": created, "model": self.model_id,
                       "choices": [{"index": j, "text": content or "", "logprobs": None, "finish_reason": finish,
                                    "stop_reason": None, "prompt_logprobs": None, "token_ids": None}
                                   for j in range(len(prompts))],
                       "service_tier": None, "system_fingerprint": None, "usage": usage,
                       "kv_transfer_params": None}
            self._count(usage)
            return web.json_response(out)
        finally:
            self._metrics["running"] -= 1

    def _count(self, usage: dict) -> None:
        self._metrics["prompt_tokens"] += usage["prompt_tokens"]
        self._metrics["generation_tokens"] += usage["completion_tokens"]
        self._metrics["success"] += 1

    async def _stream(self, request: web.Request, rid: str, created: int, chat: bool, n_prompts: int, n: int,
                      n_reason: int, finish: str, schedule: list[float], usage: dict,
                      include_usage: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                       "Cache-Control": "no-cache"})
        await resp.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"

        async def send(payload: dict) -> None:
            await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

        def chunk(choices: list) -> dict:
            return {"id": rid, "object": obj, "created": created, "model": self.model_id, "choices": choices}

        try:
            if chat:
                await send(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}]))
            for i in range(n):
                delay = schedule[i] - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                reasoning = i < n_reason
                text = self._token_text(i if reasoning else i - n_reason, reasoning, i == 0 or i == n_reason)
                last = i == n - 1
                choices = []
                for j in range(n_prompts):
                    if chat:
                        delta = {"reasoning": text, "reasoning_content": text} if reasoning else {"content": text}
                        c = {"index": j, "delta": delta, "logprobs": None, "finish_reason": finish if last else None}
                    else:
                        c = {"index": j, "text": text, "logprobs": None, "finish_reason": finish if last else None}
                    if last:
                        c["stop_reason"] = None
                    choices.append(c)
                await send(chunk(choices))
            if include_usage:
                await send(dict(chunk([]), usage=usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self._count(usage)
        except (ConnectionResetError, ConnectionError):
            pass
        return resp


if pytest is not None:
    @pytest.fixture
    def fake_vllm():
        """A started :class:`FakeVllm` serving ``openai/gpt-oss-20b`` with api key ``test-api-key``, ready."""
        server = FakeVllm(model_id="openai/gpt-oss-20b", api_key="test-api-key")
        server.start()
        server.wait_ready()
        try:
            yield server
        finally:
            server.stop()
