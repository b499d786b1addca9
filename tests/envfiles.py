"""The settings files (``env/<name>.yaml``) the loopback worlds run with, written from layers.

A world states what it points at (a kubeconfig, a registry, an SSH server) as small dicts; later layers
win, key by key. Nothing here pastes YAML: the tests that are about reading YAML (test_settings,
test_bad_input) write their own text on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

PROJECT = "test-project"
BASE = {"project": PROJECT, "region": "us-central1", "zone": "us-central1-a"}
# Loopback servers answer at once: backing off for seconds would only slow the tests down.
FAST_RETRY = {"retry": {"base_delay_s": 0.05, "max_delay_s": 0.2}}

MODELS_BUCKET = "test-models"  # the bucket of the hub → GCS staging world
CHUNK_MIB = 8  # the smallest chunk staging allows, so small test files still cross chunk edges


def merged(*layers: dict) -> dict:
    """The layers merged key by key (maps recursively; anything else: the later layer wins)."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def write_env(tmp_path: Path, *layers: dict, name: str = "dev") -> str:
    """Write ``tmp_path/env/<name>.yaml`` from ``layers``; returns the folder (``GPTOSS_ENV_DIR``)."""
    folder = Path(tmp_path) / "env"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(merged(*layers), sort_keys=False))
    return str(folder)


def kube(emulator, *, poll_interval_s: float) -> dict:
    """The Kubernetes API emulator's kubeconfig (context ``test``)."""
    return {"kube": {"kubeconfig": str(emulator.kubeconfig_path), "context": "test",
                     "poll_interval_s": poll_interval_s}}


def registry(host: str) -> dict:
    """A loopback docker-registry (plain http) instead of Artifact Registry's host."""
    return {"registry": {"host": host, "tls_verify": False}}


def kube_env(tmp_path: Path, emulator, *layers: dict) -> str:
    """For steps run in-process against the Kubernetes API emulator; ``layers``: more settings."""
    return write_env(tmp_path, BASE, {"models": {"bucket": f"{PROJECT}-models"}},
                     kube(emulator, poll_interval_s=0.02), *layers)


def mirror_env(tmp_path: Path, registry_host: str, image: str) -> str:
    """The image-mirroring world: the l4 target's ``image`` copied into a loopback registry, one attempt
    per command (the tests cut and deny on purpose)."""
    return write_env(tmp_path, BASE, registry(registry_host),
                     {"targets": {"l4": {"image": image}}, "retry": {"attempts": 1}})


def staging(revision: str, *, workers: int) -> dict:
    """Ironwood's weights at ``revision``, staged into :data:`MODELS_BUCKET`."""
    return {"models": {"bucket": MODELS_BUCKET, "chunk_mib": CHUNK_MIB, "workers": workers},
            "targets": {"ironwood": {"model_revision": revision}}}


def remote(server, *, known_hosts=None) -> dict:
    """``--on`` runs on the test's sshd (``tests.sshd``), with this interpreter."""
    return {"remote": {"host": "127.0.0.1", "port": server.port, "user": server.user,
                       "key_file": str(server.client_key), "known_hosts": str(known_hosts or server.known_hosts),
                       "python": sys.executable, "connect_timeout_s": 5}}


def staging_env(tmp_path: Path, revision: str, *, server=None, known_hosts=None) -> str:
    """The hub → GCS staging world's settings; with ``server`` (an sshd) staging runs on that host."""
    if server is None:
        return write_env(tmp_path, BASE, staging(revision, workers=4),
                         {"retry": {"attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05}})
    return write_env(tmp_path, BASE, staging(revision, workers=2), remote(server, known_hosts=known_hosts),
                     FAST_RETRY)
