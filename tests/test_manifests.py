"""Rendered manifests: schema-valid (kubernetes-validate, strict), errata fixed, labels everywhere."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from gptoss_gke.config import load_settings, parse_set
from gptoss_gke.k8s.manifests import deploy_objects_offline, render
from gptoss_gke.targets import CATALOGUE
from tests.conftest import REPO, run_inv

K8S_VERSION = "1.34.0"  # GKE rapid channel, where Ironwood runs
IMAGE = "us-central1-docker.pkg.dev/p/gptoss/vllm-openai@sha256:" + "a" * 64


def settings_for(env: str, *sets: str):
    return load_settings(env, environ={"GPTOSS_ENV_DIR": str(REPO / "env")}, overrides=parse_set(list(sets)))


def all_renderings():
    """What `inv render` prints (= what deploy applies) for every example environment, target and expose mode."""
    for env_file in sorted((REPO / "env").glob("*.yaml")):
        for target in CATALOGUE:
            for expose in ("cluster-ip", "load-balancer", "ingress"):
                s = settings_for(env_file.stem, f"targets.{target}.expose={expose}",
                                 f"targets.{target}.ingress_host=gptoss.example.com")
                yield f"{env_file.stem}-{target}-{expose}", s, deploy_objects_offline(s, [target])[0]


def pod_specs(objects):
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("StatefulSet", "Deployment", "Job")]


def assert_hardened(pod: dict) -> None:
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    containers = pod["containers"] + pod.get("initContainers", [])
    for c in containers:
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, c["name"]
        assert not c["securityContext"].get("privileged")


@pytest.mark.parametrize("case, settings, objects", list(all_renderings()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_rendered_manifest_passes_strict_schema_validation(case, settings, objects):
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "gptoss-gke"
        assert labels["gptoss-gke/env"] == settings.env_name
    [pod] = pod_specs(objects)
    assert_hardened(pod)
    kinds = [o["kind"] for o in objects]
    expose = settings.target_settings(objects[-1]["metadata"]["labels"]["gptoss-gke/target"]).expose
    # Each expose mode renders its object for either target (ironwood's ingress was silently missing).
    assert kinds.count("Ingress") == (expose == "ingress")
    assert [o["spec"].get("type") for o in objects if o["kind"] == "Service"].count("LoadBalancer") == \
        (expose == "load-balancer")
    if expose == "ingress":
        ing = next(o for o in objects if o["kind"] == "Ingress")
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == backend["name"])
        assert backend["port"] == {"name": "http"} and "http" in [p["name"] for p in service["spec"]["ports"]]


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
    for target in CATALOGUE:
        assert token not in yaml.safe_dump_all(render(s, s.target(target), IMAGE))


def test_bench_job_is_hardened_and_schema_valid():
    from gptoss_gke.serving.bench import render_job

    s = settings_for("dev")
    job = render_job(s, s.target("l4"), image=IMAGE, base_url="http://gptoss-l4.gptoss:80", num_prompts=3,
                     concurrency=1, input_len=128, output_len=64, deadline_s=600)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert_hardened(job["spec"]["template"]["spec"])


def test_ironwood_weights_mount_is_tuned_for_a_65_gb_streamed_load():
    s = settings_for("dev")
    k = _kinds(render(s, s.target("ironwood"), IMAGE))
    options = k["PersistentVolume"]["spec"]["mountOptions"]
    for wanted in ("file-cache:max-size-mb:70000", "file-cache:cache-file-for-range-read:true",
                   "file-cache:enable-parallel-downloads:true", "metadata-cache:ttl-secs:-1",
                   "metadata-cache:negative-ttl-secs:0", "implicit-dirs"):
        assert wanted in options
    assert k["PersistentVolume"]["spec"]["csi"]["volumeAttributes"] == {"gcsfuseMetadataPrefetchOnMount": "true"}
    pod = k["Deployment"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["gke-gcsfuse/volumes"] == "true"
    assert {annotations[f"gke-gcsfuse/{r}-limit"] for r in ("cpu", "memory", "ephemeral-storage")} == {"0"}
    cache = next(v for v in pod["spec"]["volumes"] if v["name"] == "gke-gcsfuse-cache")
    assert cache == {"name": "gke-gcsfuse-cache", "emptyDir": {"medium": "Memory", "sizeLimit": "72Gi"}}


def test_inv_render_prints_what_deploy_applies_offline_and_writes_files(offline_env, tmp_path):
    from gptoss_gke.k8s.objects import with_image
    from tasks.deploy import kube_steps

    sets = ["--set", "targets.ironwood.expose=ingress", "--set", "targets.ironwood.ingress_host=llm.example.com"]
    proc = run_inv(["render", "--target=ironwood", *sets], offline_env)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for obj in docs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert "Secret" not in [d["kind"] for d in docs] and "never rendered" in proc.stdout.split("---")[0]
    # The image is the mirrored tag (nothing was read to pin it), and the header says so.
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == ("us-central1-docker.pkg.dev/example-project/gptoss/vllm/vllm-tpu:"
                     "nightly-ironwood-20251217-baf570b-0cd5353")
    assert f"image by tag {image}; deploy pins it by digest" in proc.stdout
    # Exactly the objects, in the order, that deploy's steps apply (their image set at run time).
    s = settings_for("dev", "targets.ironwood.expose=ingress", "targets.ironwood.ingress_host=llm.example.com")
    applied = [with_image(step.template, image) for step in kube_steps(s, "ironwood", rotate_api_key=False,
                                                                       with_secret=False)]
    assert docs == applied

    out = tmp_path / "rendered"
    files = run_inv(["render", "--target=ironwood", f"--out={out}", *sets], offline_env)
    assert files.returncode == 0, files.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written][:2] == ["01-namespace-gptoss.yaml", "02-serviceaccount-vllm.yaml"]
    assert [yaml.safe_load(p.read_text()) for p in written] == docs

    bad = run_inv(["render", "--target=ironwood", "--set", "targets.ironwood.expose=ingress"], offline_env)
    assert bad.returncode == 2 and "targets.ironwood.ingress_host: is required when expose is ingress" in bad.stderr
    assert bad.stdout == ""
