"""Keeps secrets out of everything we print or write.

Known secret values are registered as they are loaded or created; a few token shapes are also
masked on sight, so a token we never registered (one gcloud printed, say) cannot leak either.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

MASK = "***"

# Shapes of credentials that must never be shown even if nobody registered them.
_TOKEN_SHAPES = [
    re.compile(r"ya29\.[0-9A-Za-z_\-.]+"),  # Google OAuth access tokens
    re.compile(r"hf_[0-9A-Za-z]{16,}"),  # Hugging Face user tokens
    # (not a placeholder such as %s or $VAR: the port-forward hint shows how to send the header)
    re.compile(r"(?i)(authorization:\s*bearer\s+)(?![%$])[^\s'\"]+"),
    re.compile(r"(?i)(--api-key[= ])[^\s'\"]+"),
]


class Redactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls) -> "Redactor":
        """A run's redactor, already holding the token the environment gives (``HF_TOKEN``): it may appear
        in a message before the settings that also read it are loaded."""
        redactor = cls()
        redactor.add(os.environ.get("HF_TOKEN"))
        return redactor

    def add(self, secret: str | None) -> None:
        # Very short values would mask ordinary words; secrets we generate or accept are long.
        if secret and len(secret) >= 6:
            with self._lock:
                self._secrets.add(secret)

    def contains_secret(self, text: str) -> bool:
        return any(s in text for s in self._secrets)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for s in secrets:
            text = text.replace(s, MASK)
        for shape in _TOKEN_SHAPES:
            text = shape.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
        return text

    def scrub(self, value: Any) -> Any:
        """Redact every string inside a JSON-like structure."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value
