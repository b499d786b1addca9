"""The environment that points the real gcloud at the emulator, and at nothing else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .server import DEFAULT_PROJECT, GcpEmulator

_OVERRIDDEN_APIS = ("CONTAINER", "ARTIFACTREGISTRY", "SERVICEUSAGE", "CLOUDRESOURCEMANAGER")


def gcloud_env(emu: GcpEmulator, tmp_path: Any, project: str = DEFAULT_PROJECT, *,
               storage_url: str | None = None, ensure_project: bool = True,
               extra: dict | None = None) -> dict:
    """Environment for running the real gcloud against ``emu`` (and nothing else).

    Creates ``tmp_path/gcloud-config`` (CLOUDSDK_CONFIG), ``tmp_path/gcloud-token`` (a dummy
    access token) and points KUBECONFIG at ``tmp_path/kubeconfig``. ``storage_url`` sets
    CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE (otherwise it is removed). With ``ensure_project``
    the project is registered in the emulator if it is unknown.
    """
    tmp = Path(tmp_path)
    config_dir = tmp / "gcloud-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    token = tmp / "gcloud-token"
    if not token.exists():
        token.write_text("ya29.emulator-dummy-token\n")
    if ensure_project and project not in emu.state.projects:
        emu.add_project(project)
    dropped = {"KUBECONFIG", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
               "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    # No inherited gcloud settings, and no proxy that could carry loopback traffic elsewhere.
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("CLOUDSDK_") or k.upper() in dropped)}
    env.update({
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
        "CLOUDSDK_CONFIG": str(config_dir),
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "False",
        "CLOUDSDK_METRICS_ENVIRONMENT": "tests",
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "True",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "True",
        "CLOUDSDK_SURVEY_DISABLE_PROMPTS": "True",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_PROJECT": project,
        "KUBECONFIG": str(tmp / "kubeconfig"),
    })
    for api in _OVERRIDDEN_APIS:
        env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}"] = emu.url
    if storage_url:
        env["CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE"] = storage_url
    if extra:
        env.update(extra)
    return env
