"""The one place transient failures are retried (429, 5xx, connection resets)."""

from __future__ import annotations

import json
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}

# What gcloud, kubectl, skopeo print when the other side was busy or the connection broke.
_TRANSIENT_TEXT = re.compile(
    r"\b(429|500|502|503|504)\b|RESOURCE_EXHAUSTED|UNAVAILABLE|Too Many Requests|"
    r"Service Unavailable|Internal Server Error|rateLimitExceeded|backendError|"
    r"Connection reset|Connection aborted|RemoteDisconnected|timed out|TLS handshake timeout|"
    r"connection refused by peer|EOF occurred",
    re.IGNORECASE,
)


def short_reason(exc: BaseException) -> str:
    """One line for a person: the innermost reason of a wrapped connection error
    ("[Errno 111] Connection refused"), not urllib3's pool and URL preamble."""
    while isinstance(getattr(exc, "reason", None), BaseException):
        exc = exc.reason
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status and hasattr(exc, "body"):  # an HTTP answer (kubernetes client)
        reason = exc.reason if isinstance(getattr(exc, "reason", None), str) else ""
        try:
            message = json.loads(exc.body).get("message") or ""
        except (TypeError, ValueError, AttributeError):
            message = ""
        return (f"{status} {reason}".strip() + (f": {message}" if message else ""))[:200]
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text.rsplit("): ", 1)[-1][:200]


def is_transient_text(text: str) -> bool:
    return bool(_TRANSIENT_TEXT.search(text or ""))


def _classes(module: str, *names: str) -> tuple[type, ...]:
    """Exception classes of a client library, only if that library is already loaded (an exception
    from it implies it is; we never import an SDK just to classify)."""
    mod = sys.modules.get(module)
    return tuple(getattr(mod, n) for n in names if mod is not None and hasattr(mod, n))


def is_transient_exception(exc: BaseException) -> bool:
    """Transient by HTTP status (any client that exposes one) or by connection-level failure, for
    every HTTP client the tool uses: requests/urllib3 (GCS, downloads), httpx (huggingface_hub),
    google-auth and google-resumable-media, the kubernetes client."""
    for attr in ("status", "code", "status_code"):
        status = getattr(exc, attr, None)
        if isinstance(status, int) and status in TRANSIENT_HTTP:
            return True
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    if isinstance(status, int) and status in TRANSIENT_HTTP:
        return True
    connection_level = (
        _classes("requests.exceptions", "ConnectionError", "Timeout", "ChunkedEncodingError")
        + _classes("urllib3.exceptions", "ProtocolError", "MaxRetryError", "TimeoutError", "NewConnectionError")
        + _classes("httpx", "TransportError") + _classes("httpx2", "TransportError")
        + _classes("google.auth.exceptions", "TransportError")
        + _classes("google.resumable_media", "DataCorruption")
    )
    return isinstance(exc, (ConnectionError, TimeoutError, *connection_level))


RETRY_AFTER_CAP_S = 120.0  # a server asking for longer is treated as asking for this long


def retry_after(exc: BaseException) -> float | None:
    """Seconds a 429/503 answer asked us to wait (Retry-After, in seconds), if it said."""
    headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return min(float(value), RETRY_AFTER_CAP_S) if value is not None else None
    except (TypeError, ValueError, AttributeError):  # an HTTP date, or no usable headers: back off as usual
        return None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 20.0

    def delays(self):
        """Exponential backoff with full jitter, so parallel callers spread out."""
        for attempt in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))

    def call(
        self,
        fn: Callable[[], T],
        *,
        transient: Callable[[BaseException], bool] = is_transient_exception,
        on_retry: Callable[[BaseException, float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        delays = self.delays()
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - re-raised unless transient
                if not transient(exc):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                delay = max(delay, retry_after(exc) or 0.0)  # never sooner than the server asked
                if on_retry:
                    on_retry(exc, delay)
                sleep(delay)
