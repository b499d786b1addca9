"""The fake vLLM OpenAI server: readiness, auth, response shapes, and streaming pace."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from .vllm import FakeVllm

MODEL = "openai/gpt-oss-20b"
KEY = "test-api-key"


def call(server, method, path, body=None, key=KEY, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data and resp.getheader("Content-Type", "").startswith(
        "application/json") else data)


def sse_events(server, path, body, key=KEY):
    """POST a streaming request; return [(seconds since send, payload)] and the time the request was sent."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.connect()
    sent = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers={"Authorization": f"Bearer {key}",
                                                                "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if line.startswith(b"data: "):
            payload = line[6:].decode()
            events.append((time.perf_counter() - sent, payload if payload == "[DONE]" else json.loads(payload)))
    conn.close()
    return events


def test_health_refuses_connections_until_ready():
    with FakeVllm(model_id=MODEL, ready_after_s=0.3) as server:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        assert server.wait_ready(5)
        assert call(server, "GET", "/health", key=None) == (200, b"")
        assert call(server, "GET", "/version", key=None) == (200, {"version": "0.12.0"})
        server.never_ready = True  # the engine died: vLLM answers 503 on /health
        assert call(server, "GET", "/health", key=None)[0] == 503


def test_health_503_mode_and_never_ready():
    with FakeVllm(not_ready_mode="503", never_ready=True) as server:
        assert call(server, "GET", "/health", key=None)[0] == 503
        server.set_ready()
        assert call(server, "GET", "/health", key=None)[0] == 200
    with FakeVllm(never_ready=True) as server:
        time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_api_key_protects_only_v1(fake_vllm):
    assert call(fake_vllm, "GET", "/v1/models", key=None) == (401, {"error": "Unauthorized"})
    assert call(fake_vllm, "GET", "/v1/models", key="wrong") == (401, {"error": "Unauthorized"})
    assert call(fake_vllm, "GET", "/health", key=None) == (200, b"")
    assert call(fake_vllm, "GET", "/metrics", key=None)[0] == 200
    status, models = call(fake_vllm, "GET", "/v1/models")
    assert status == 200 and models["object"] == "list"
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 131072
    rec = [r for r in fake_vllm.requests if r.path == "/v1/models"]
    assert [(r.auth_present, r.auth_ok, r.status) for r in rec] == [(False, False, 401), (True, False, 401),
                                                                    (True, True, 200)]
    assert all("Authorization" not in r.headers and "authorization" not in r.headers for r in fake_vllm.requests)
    fake_vllm.require_key = False  # misconfigured: serves without checking
    assert call(fake_vllm, "GET", "/v1/models", key=None)[0] == 200


def test_chat_completion_shape_with_reasoning(fake_vllm):
    fake_vllm.tokens_per_second = 5000
    fake_vllm.first_token_delay = 0
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words"}], "max_tokens": 20}
    status, out = call(fake_vllm, "POST", "/v1/chat/completions", body)
    assert status == 200 and out["object"] == "chat.completion" and out["model"] == MODEL
    msg = out["choices"][0]["message"]
    assert msg["reasoning"] and msg["reasoning"] == msg["reasoning_content"] and msg["content"]
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25,
                            "prompt_tokens_details": None}
    body["max_tokens"] = 4  # all of it is chain of thought: content is null
    msg = call(fake_vllm, "POST", "/v1/chat/completions", body)[1]["choices"][0]["message"]
    assert msg["content"] is None and len(msg["reasoning"].split()) == 4
    status, out = call(fake_vllm, "POST", "/v1/completions", {"model": MODEL, "prompt": "one two", "max_tokens": 3})
    assert status == 200 and out["object"] == "text_completion" and len(out["choices"][0]["text"].split()) == 3
    assert out["usage"]["prompt_tokens"] == 2


def test_faults_and_errors(fake_vllm):
    fake_vllm.first_token_delay = 0
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    fake_vllm.fail_requests = 2
    assert call(fake_vllm, "POST", "/v1/chat/completions", body)[0] == 500
    status, err = call(fake_vllm, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert status == 500 and err["error"]["type"] == "InternalServerError" and err["error"]["code"] == 500
    assert call(fake_vllm, "POST", "/v1/chat/completions", body)[0] == 200
    status, err = call(fake_vllm, "POST", "/v1/chat/completions", dict(body, model="other"))
    assert status == 404 and err["error"]["message"] == "The model `other` does not exist."
    status, err = call(fake_vllm, "POST", "/v1/chat/completions", dict(body, max_tokens=200000))
    assert status == 400 and "maximum context length" in err["error"]["message"]
    fake_vllm.model_id = "openai/gpt-oss-120b"
    assert call(fake_vllm, "GET", "/v1/models")[1]["data"][0]["id"] == "openai/gpt-oss-120b"


def test_streaming_ttft_and_rate_match_configuration(fake_vllm):
    fake_vllm.first_token_delay = 0.3
    fake_vllm.tokens_per_second = 100.0
    n = 100
    events = sse_events(fake_vllm, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "count to a hundred"}], "max_tokens": n,
        "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1][1] == "[DONE]"
    chunks = [e for _, e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == n
    token_times = [t for t, e in events[:-1] if e["choices"] and
                   any(e["choices"][0]["delta"].get(k) for k in ("content", "reasoning"))]
    deltas = [e["choices"][0]["delta"] for _, e in events[:-1] if e["choices"]][1:]
    assert len(token_times) == n == len(deltas)
    assert deltas[0].keys() == {"reasoning", "reasoning_content"} and "content" in deltas[-1]
    kinds = ["r" if "reasoning" in d else "c" for d in deltas]
    assert kinds == sorted(kinds, reverse=True)  # reasoning first, then content
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    # The pacing is a floor whatever the machine's load (how close it comes: bench/bench_client_accuracy.py).
    assert token_times[0] >= 0.3 - 0.005, token_times[0]
    assert token_times[-1] >= 0.3 + (n - 1) / 100.0 - 0.005, token_times[-1]


def test_streaming_completions_without_usage(fake_vllm):
    fake_vllm.first_token_delay = 0.0
    fake_vllm.tokens_per_second = 1000.0
    events = sse_events(fake_vllm, "/v1/completions", {"model": MODEL, "prompt": "a b c", "max_tokens": 5,
                                                       "stream": True})
    payloads = [e for _, e in events]
    assert payloads[-1] == "[DONE]" and len(payloads) == 6
    assert all(p["object"] == "text_completion" and "usage" not in p for p in payloads[:-1])
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"
