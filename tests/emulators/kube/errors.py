"""Errors as the API server answers them: a ``Status`` object with the reason and details clients read."""

from __future__ import annotations

from .kinds import ResourceType

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
           406: "NotAcceptable", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
           429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def details(rt: ResourceType, name: str, **extra) -> dict:
    d = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    d.update(extra)
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.resource} "{name}" not found', "NotFound", details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, f'{rt.resource} "{name}" already exists', "AlreadyExists", details(rt, name))


def conflict(rt: ResourceType, name: str, why: str = "the object has been modified; please apply your "
             "changes to the latest version and try again") -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {rt.resource} "{name}": {why}', "Conflict",
                    details(rt, name))


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """causes: (field, reason e.g. FieldValueInvalid, message after ``field: ``)."""
    parts = [f"{f}: {m}" for f, _, m in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(422, f'{rt.qualified_kind} "{name}" is invalid: {summary}', "Invalid",
                    details(rt, name, causes=[{"reason": r, "message": m, "field": f} for f, r, m in causes]))


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


def method_not_allowed() -> ApiError:
    return ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed", {})


def not_emulated(what: str) -> ApiError:
    """A request the real server serves but the playbooks never send: said loudly, never half-answered."""
    return ApiError(405, f"kube emulator: {what} is not emulated (the playbooks never send it; add it to "
                         f"tests/emulators/kube/ with the API server's semantics if they start to)",
                    "MethodNotAllowed", {})
