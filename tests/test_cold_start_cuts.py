"""The cold-start cuts in what deploy applies (schema-validated): the compile caches where the next pod finds
them, the weights' parallel load within an explicit memory budget, and the XLA cache's writable prefix."""

from __future__ import annotations

import kubernetes_validate

from gptoss_gke.k8s.manifests import render
from gptoss_gke.serving import compile_cache
from tests.test_manifests import IMAGE, K8S_VERSION, settings_for


def by_name(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def env_of(workload) -> dict:
    c = next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    return {e["name"]: e.get("value") for e in c.get("env") or []}


def test_l4_keeps_its_compile_caches_on_the_retained_claim():
    s = settings_for("dev")
    objects = render(s, s.target("l4"), IMAGE)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    sts = by_name(objects)[("StatefulSet", "gptoss-l4")]
    env = env_of(sts)
    assert env["VLLM_CACHE_ROOT"].startswith("/models/") and env["TRITON_CACHE_DIR"].startswith("/models/")
    assert env["XDG_CACHE_HOME"].startswith("/models/")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_ironwood_persists_the_xla_cache_on_its_own_writable_prefix_keyed_by_image():
    s = settings_for("dev", "targets.ironwood.enabled=true",
                     "targets.ironwood.image=docker.io/vllm/vllm-tpu@sha256:" + "b" * 64)
    objects = render(s, s.target("ironwood"), IMAGE)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    named = by_name(objects)
    dep = named[("Deployment", "gptoss-ironwood")]
    assert env_of(dep)["VLLM_XLA_CACHE_PATH"] == "/xla-cache/sha256-bbbbbbbbbbbb"
    mounts = {m["name"]: m for m in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["model-vol"]["readOnly"] is True and not mounts["compile-cache"].get("readOnly")
    pv = named[("PersistentVolume", "gptoss-ironwood-compile-cache")]
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"] and pv["spec"]["csi"]["volumeHandle"] == s.models.bucket
    assert "only-dir=compile-cache/dev/ironwood" in pv["spec"]["mountOptions"]
    assert not pv["spec"]["csi"].get("readOnly")
    pvc = named[("PersistentVolumeClaim", "ironwood-compile-cache")]
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    # By tag when the settings name no digest (the catalogue's dated nightly).
    s = settings_for("dev", "targets.ironwood.enabled=true")
    assert compile_cache.cache_path(s, s.target("ironwood")) == \
        "/xla-cache/nightly-ironwood-20251217-baf570b-0cd5353"


def test_ironwood_memory_budget_is_explicit_and_the_ram_cache_bounded_below_its_volume():
    s = settings_for("dev", "targets.ironwood.enabled=true")
    named = by_name(render(s, s.target("ironwood"), IMAGE))
    pod = named[("Deployment", "gptoss-ironwood")]["spec"]["template"]
    vllm = pod["spec"]["containers"][0]
    assert vllm["resources"]["requests"]["memory"] == "128Gi" and "memory" not in vllm["resources"]["limits"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["gke-gcsfuse/memory-request"] == "74Gi" and annotations["gke-gcsfuse/memory-limit"] == "0"
    cache = next(v for v in pod["spec"]["volumes"] if v["name"] == "gke-gcsfuse-cache")
    options = named[("PersistentVolume", "gptoss-ironwood-weights")]["spec"]["mountOptions"]
    bound_mib = int(next(o for o in options if o.startswith("file-cache:max-size-mb:")).rsplit(":", 1)[1])
    size_limit_mib = int(cache["emptyDir"]["sizeLimit"].removesuffix("Gi")) * 1024
    weights_mib = s.target("ironwood").weight_memory_gib * 1024
    assert weights_mib < bound_mib < size_limit_mib  # one copy fits; GCS FUSE evicts before the kubelet does
    assert "file-cache:enable-parallel-downloads:true" in options

