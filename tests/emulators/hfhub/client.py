"""Client configuration: the environment, and the already-imported huggingface_hub constants, that point a
huggingface_hub client at the emulator."""

from __future__ import annotations

import os


# --------------------------------------------------------------------------------------------------
# Client configuration
# --------------------------------------------------------------------------------------------------

_HF_ENV_DROP = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE",
                "HF_XET_CACHE", "HF_HUB_ENABLE_HF_TRANSFER", "HF_XET_HIGH_PERFORMANCE", "HF_HUB_DISABLE_IMPLICIT_TOKEN")


def hf_client_env(endpoint: str, hf_home: str | os.PathLike) -> dict[str, str]:
    """Variables for a huggingface_hub process talking to ``endpoint`` only; unset the ``_HF_ENV_DROP`` ones."""
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "DO_NOT_TRACK": "1"}


def _patch_hf_constants(monkeypatch, endpoint: str, hf_home: str) -> None:
    """huggingface_hub reads most settings at import: re-point them for an already-imported module."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover
        return
    hub_cache = os.path.join(hf_home, "hub")
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": hf_home, "HF_HUB_CACHE": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": os.path.join(hf_home, "assets"), "HF_XET_CACHE": os.path.join(hf_home, "xet"),
        "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True, "HF_HUB_ENABLE_HF_TRANSFER": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in values.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    _http.close_session()  # no pooled connection to an earlier emulator
