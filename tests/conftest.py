"""Shared test plumbing. Every server a test starts binds 127.0.0.1; gcloud never leaves loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The fixture modules: every test sees their fixtures without importing them.
pytest_plugins = (
    "tests.emulators.gcp.fixtures",
    "tests.emulators.kube.fixtures",
    "tests.emulators.hfhub.fixtures",
    "tests.emulators.vllm",
    "tests.gcs",
    "tests.registry",
    "tests.sshd",
    "tests.deploy_world",
    "tests.pkgdev",
)

REPO = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).with_name("inv"))


def require_tool(name: str, install: str) -> str:
    """A system tool the test needs: fail under CI with the install hint, skip loudly elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    missing(f"{name} is not installed: {install}")


def missing(message: str):
    """Something a test needs is not on this machine: a failure under CI=true, a loud skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


def offline_gcloud_env(tmp_path: Path) -> dict[str, str]:
    """gcloud with an empty config and both switches that keep it from querying off the machine."""
    cfg = tmp_path / "gcloud-config"
    cfg.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GPTOSS_", "HF_", "GOOGLE_"))}
    env.update(
        CLOUDSDK_CONFIG=str(cfg),
        CLOUDSDK_CORE_CHECK_GCE_METADATA="False",
        CLOUDSDK_METRICS_ENVIRONMENT="tests",
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        KUBECONFIG=str(tmp_path / "kubeconfig"),
        GPTOSS_KUBE__KUBECONFIG=str(tmp_path / "kubeconfig"),
        NO_COLOR="1",
        HOME=str(tmp_path / "home"),
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


# Where a test did not start a server for a client, the client still gets a loopback address (the
# discard port: connection refused at once), so a missing fixture fails fast instead of reaching out.
LOOPBACK_DEFAULTS = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "HF_ENDPOINT": "http://127.0.0.1:9",
                     "HF_HUB_DISABLE_TELEMETRY": "1"}


def run_inv(args: list[str], env: dict[str, str], *, cwd: Path = REPO, timeout: float = 300,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**LOOPBACK_DEFAULTS, **env}
    return subprocess.run([INV, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          input=stdin if stdin is not None else "")


@pytest.fixture
def offline_env(tmp_path):
    return offline_gcloud_env(tmp_path)


def in_process(settings, retry=None, *, dry_run: bool = False):
    """A Context for running steps in-process (real Shell, redactor and printer); returns (ctx, output)."""
    import io

    import invoke

    from gptoss_gke.core import Context, Redactor
    from gptoss_gke.core.report import Printer
    from gptoss_gke.core.retry import RetryPolicy
    from gptoss_gke.core.shell import Shell

    redactor = Redactor()
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=retry or RetryPolicy(1, 0, 0), emit=printer.line)
    return Context(settings, shell, printer, redactor, dry_run=dry_run, interactive=False), out


@pytest.fixture
def gcloud_world(tmp_path, gcp_emulator):
    """The real gcloud pointed at the loopback control plane, plus an environment file for our tool."""
    require_tool("gcloud", "install the Google Cloud CLI (Debian: apt-get install google-cloud-cli)")
    from tests.emulators.gcp import gcloud_env
    from tests.envfiles import BASE, FAST_RETRY, PROJECT, write_env

    env = gcloud_env(gcp_emulator, tmp_path, PROJECT)
    folder = write_env(tmp_path, BASE, {"cluster": {"name": "gptoss"}, "models": {"bucket": f"{PROJECT}-models"},
                                        "kube": {"kubeconfig": str(tmp_path / "kubeconfig")}}, FAST_RETRY)
    env.update(GPTOSS_ENV_DIR=folder, NO_COLOR="1")
    return gcp_emulator, env
