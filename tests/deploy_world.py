"""A whole loopback world for deploy/teardown: the real gcloud against the GCP emulator, two Debian
docker-registry servers with the real skopeo, the Kubernetes API emulator reached by the real
client, and a fake vLLM behind the emulator's port-forward that accepts exactly the key our Secret
holds (as the pod, which reads VLLM_API_KEY from that Secret, would)."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool, run_inv
from tests.emulators.gcp import gcloud_env
from tests.emulators.vllm import FakeVllm
from tests.envfiles import BASE, FAST_RETRY, kube, merged, registry, write_env
from tests.registry import publish

P, L, C = "test-project", "us-central1", "gptoss"
NS = "gptoss"
SOURCE = "vllm/vllm-openai"


class SecretKeyedVllm(FakeVllm):
    """A vLLM whose key is whatever the Secret holds right now."""

    kube = None

    @property
    def api_key(self):
        obj = self.kube.get("Secret", NS, "vllm-api-key") if self.kube else None
        raw = ((obj or {}).get("data") or {}).get("VLLM_API_KEY")
        return base64.b64decode(raw).decode() if raw else None

    @api_key.setter
    def api_key(self, value):
        pass


@dataclass
class World:
    tmp: Path
    gcp: object
    kube: object
    vllm: SecretKeyedVllm
    src: object
    dst: object
    env: dict
    token: str
    settings: dict  # what env/dev.yaml holds
    gcs: object = None

    def inv(self, *args: str, env: dict | None = None, stdin: str | None = None):
        return run_inv(list(args), {**self.env, **(env or {})}, timeout=300, stdin=stdin)

    def api_key(self) -> str | None:
        return self.vllm.api_key

    def labelled(self, kind: str) -> list[str]:
        scope = None if kind in ("Namespace", "PersistentVolume") else NS
        return sorted(o["metadata"]["name"] for o in self.kube.objects(kind, scope)
                      if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "gptoss-gke")


def seed_cluster(gcp, kube) -> None:
    """Our cluster, as setup-cluster leaves it: its endpoint is the Kubernetes API emulator's address
    (what the kubeconfig context reaches)."""
    ours = {"resourceLabels": {"managed-by": "gptoss-gke", "gptoss-gke-env": "dev"}}
    gcp.add_cluster(P, L, C, resourceLabels={"managed-by": "gptoss-gke", "gptoss-gke-env": "dev"},
                    endpoint=f"127.0.0.1:{kube.port}",
                    controlPlaneEndpointsConfig={"ipEndpointsConfig": {"publicEndpoint": f"127.0.0.1:{kube.port}"}},
                    workloadIdentityConfig={"workloadPool": f"{P}.svc.id.goog"},
                    node_pools=[{"name": "default-pool", "initialNodeCount": 1},
                                {"name": "l4-gptoss", "config": {"machineType": "g2-standard-4", **ours}},
                                {"name": "ironwood-gptoss", "config": {"machineType": "tpu7x-standard-4t", **ours}}])


@pytest.fixture
def deploy_world(tmp_path, gcp_emulator, kube_emulator, registries, gcs_front):
    require_tool("gcloud", "install the Google Cloud CLI (Debian: apt-get install google-cloud-cli)")
    token = "gptoss-test-token-" + secrets.token_hex(12)
    (tmp_path / "gcloud-token").write_text(token + "\n")
    env = gcloud_env(gcp_emulator, tmp_path, P)
    env = {k: v for k, v in env.items() if not k.startswith(("GPTOSS_", "HF_"))}
    seed_cluster(gcp_emulator, kube_emulator)
    src = registries("source")
    dst = registries("dest", credentials=("oauth2accesstoken", token))
    publish(src, SOURCE, "v0.12.0", tmp_path)
    settings = merged(BASE, registry(dst.host), {"models": {"bucket": f"{P}-models"}},
                      kube(kube_emulator, poll_interval_s=0.05),
                      {"targets": {"l4": {"image": f"{src.host}/{SOURCE}:v0.12.0", "load_timeout_s": 30}}}, FAST_RETRY)
    env.update(GPTOSS_ENV_DIR=write_env(tmp_path, settings), NO_COLOR="1", STORAGE_EMULATOR_HOST=gcs_front.url)
    vllm = SecretKeyedVllm(model_id="openai/gpt-oss-20b")
    vllm.kube = kube_emulator
    vllm.start()
    try:
        vllm.wait_ready()
        kube_emulator.set_port_forward_target("gptoss-l4", 8000, ("127.0.0.1", vllm.port))
        yield World(tmp_path, gcp_emulator, kube_emulator, vllm, src, dst, env, token, settings, gcs_front)
    finally:
        vllm.stop()
