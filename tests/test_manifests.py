"""Rendered manifests: schema-valid (kubernetes-validate, strict), errata fixed, labels everywhere."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from gptoss_gke.config import load_settings, parse_set
from gptoss_gke.k8s.manifests import render
from tests.conftest import REPO

K8S_VERSION = "1.34.0"  # GKE rapid channel, where Ironwood runs
IMAGE = "us-central1-docker.pkg.dev/p/gptoss/vllm-openai@sha256:" + "a" * 64


def settings_for(env: str, *sets: str):
    return load_settings(env, environ={"GPTOSS_ENV_DIR": str(REPO / "env")}, overrides=parse_set(list(sets)))


def all_renderings():
    for env_file in sorted((REPO / "env").glob("*.yaml")):
        for target in ("l4", "ironwood"):
            for expose in ("cluster-ip", "load-balancer", "ingress"):
                s = settings_for(env_file.stem, f"targets.{target}.expose={expose}",
                                 f"targets.{target}.ingress_host=gptoss.example.com")
                yield f"{env_file.stem}-{target}-{expose}", s, render(s, s.target(target), IMAGE)


@pytest.mark.parametrize("case, settings, objects", list(all_renderings()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_rendered_manifest_passes_strict_schema_validation(case, settings, objects):
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "gptoss-gke"
        assert labels["gptoss-gke/env"] == settings.env_name


def _kinds(objects):
    return {o["kind"]: o for o in objects}


def _container(workload, name="vllm"):
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_l4_fixes_the_tutorial_errata():
    s = settings_for("dev")
    objects = render(s, s.target("l4"), IMAGE)
    k = _kinds(objects)
    sts = k["StatefulSet"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    services = [o["metadata"]["name"] for o in objects if o["kind"] == "Service"]
    assert sts["spec"]["serviceName"] in services  # the governing Service exists
    args = _container(sts)["args"]
    text = " ".join(args)
    for wrong in ("--api-key", "--swap-space", "--max-num-partial-prefills"):
        assert wrong not in text
    assert "--kv-cache-dtype=fp8" in args and "--max-model-len=128000" in args
    env = {e["name"]: e for e in _container(sts)["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "VLLM_API_KEY"
    c = _container(sts)
    assert c["image"] == IMAGE and "@sha256:" in c["image"]
    threshold = c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"]
    assert threshold >= s.target("l4").load_budget_s
    init = sts["spec"]["template"]["spec"]["initContainers"][0]
    ignore = json.loads(next(e["value"] for e in init["env"] if e["name"] == "IGNORE_PATTERNS"))
    assert ignore == ["original/*", "metal/*"]
    assert "Ingress" not in k  # only with expose: ingress


def test_l4_ingress_uses_only_ingress_class_name():
    s = settings_for("dev", "targets.l4.expose=ingress", "targets.l4.ingress_host=llm.example.com")
    ing = _kinds(render(s, s.target("l4"), IMAGE))["Ingress"]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert "kubernetes.io/ingress.class" not in ing["metadata"].get("annotations", {})


def test_ironwood_fixes_the_tutorial_errata():
    s = settings_for("dev")
    objects = render(s, s.target("ironwood"), IMAGE)
    k = _kinds(objects)
    dep = k["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == s.kube.service_account  # not default/default
    assert any(t["key"] == "google.com/tpu" for t in pod["tolerations"])
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu7x",
                                   "cloud.google.com/gke-tpu-topology": "2x2x1"}
    assert _container(dep)["resources"]["limits"]["google.com/tpu"] == 4
    mount = next(m for m in _container(dep)["volumeMounts"] if m["name"] == "model-vol")
    assert mount["readOnly"] is True
    pv = k["PersistentVolume"]
    assert pv["spec"]["csi"]["volumeHandle"] == s.models.bucket
    assert "skipCSIBucketAccessCheck" not in pv["spec"]["csi"].get("volumeAttributes", {})
    assert all(o["spec"].get("type", "ClusterIP") != "LoadBalancer" for o in objects if o["kind"] == "Service")
    args = _container(dep)["args"]
    model = next(a for a in args if a.startswith("--model="))
    assert s.target("ironwood").model_revision in model  # the folder carries the revision
    assert "--api-key" not in " ".join(args)


def test_no_secret_in_rendered_manifests(monkeypatch):
    token = "hf_" + "x" * 30
    s = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(REPO / "env"), "HF_TOKEN": token})
    for target in ("l4", "ironwood"):
        assert token not in yaml.safe_dump_all(render(s, s.target(target), IMAGE))
