"""Errors in Google's JSON format (``{"error": {"code", "message", "status", "details"}}``), as gcloud
reads them."""

from __future__ import annotations

from typing import Any

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    429: "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute'.",
    503: "The service is currently unavailable.",
    500: "Internal error encountered.",
    409: "Resource already exists.",
    404: "Requested entity was not found.",
    403: "The caller does not have permission",
}


class ApiError(Exception):
    """An error answered in Google's JSON error format."""

    def __init__(self, code: int, message: str, status: str | None = None,
                 details: list | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")
        self.details = details

    def body(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}
