"""The Kubernetes API emulator, driven by the real ``kubernetes`` client (typed APIs and DynamicClient)."""

from __future__ import annotations

import copy
import http.client
import json
from types import SimpleNamespace

import pytest
from kubernetes import client, config, dynamic
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import exceptions as dyn_exc
from kubernetes.stream import portforward

NS = "gptoss"
MANAGER = "gptoss-gke"


@pytest.fixture
def k8s(kube_emulator, tmp_path):
    api = config.new_client_from_config(config_file=kube_emulator.kubeconfig_path, context="test")
    dyn = dynamic.DynamicClient(api, cache_file=str(tmp_path / "discovery.json"))
    yield SimpleNamespace(emu=kube_emulator, api=api, core=client.CoreV1Api(api), apps=client.AppsV1Api(api),
                          batch=client.BatchV1Api(api), dyn=dyn,
                          res=lambda api_version, kind: dyn.resources.get(api_version=api_version, kind=kind))
    api.close()


def apply(k8s, body, **kw):
    res = k8s.res(body["apiVersion"], body["kind"])
    return res.server_side_apply(body=body, name=body["metadata"]["name"],
                                 namespace=body["metadata"].get("namespace"), field_manager=kw.pop("manager", MANAGER),
                                 **kw)


def namespace(name=NS):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def statefulset(name="vllm", replicas=1, image="vllm/vllm-openai:v0.12.0", ns=NS):
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "vllm", "image": image,
                                                           "ports": [{"containerPort": 8000, "name": "http"}]}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "model-cache"},
                                               "spec": {"accessModes": ["ReadWriteOnce"],
                                                        "resources": {"requests": {"storage": "60Gi"}}}}]}}


def deployment(name="web", replicas=2, ns=NS, image="nginx:1.27"):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}}}


def pod(name, ns=NS, labels=None, containers=("vllm",)):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"containers": [{"name": c, "image": "vllm/vllm-openai:v0.12.0"} for c in containers]}}


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def read_until(fn, predicate, reads=20):
    """Each read is a controller tick; return the first result satisfying predicate."""
    for _ in range(reads):
        value = fn()
        if predicate(value):
            return value
    raise AssertionError(f"condition not reached after {reads} reads; last: {value}")


# ---- discovery ---------------------------------------------------------------------------------------------

def test_discovery_resolves_every_kind(k8s):
    expected = [("v1", "Namespace", False), ("v1", "ServiceAccount", True), ("v1", "Secret", True),
                ("v1", "ConfigMap", True), ("v1", "PersistentVolume", False), ("v1", "PersistentVolumeClaim", True),
                ("v1", "Service", True), ("v1", "Pod", True), ("v1", "Event", True), ("apps/v1", "StatefulSet", True),
                ("apps/v1", "Deployment", True), ("batch/v1", "Job", True),
                ("networking.k8s.io/v1", "Ingress", True)]
    for api_version, kind, namespaced in expected:
        res = k8s.res(api_version, kind)
        assert res.namespaced is namespaced, kind
        assert "patch" in res.verbs and "list" in res.verbs
    pods = k8s.res("v1", "Pod")
    assert {"log", "portforward", "status"} <= set(pods.subresources)
    assert k8s.res("apps/v1", "StatefulSet").subresources["status"].verbs == ["get", "patch", "update"]
    version = client.VersionApi(k8s.api).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")


def test_unauthenticated_requests_get_401(k8s):
    import urllib.request
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(k8s.emu.url + "/api/v1/namespaces", timeout=5)
    assert err.value.code == 401
    assert json.loads(err.value.read())["reason"] == "Unauthorized"
    k8s.emu.tokens = {"only-this"}  # a rejected token (e.g. expired credentials) is a 401 for the client
    with pytest.raises(ApiException) as err:
        k8s.core.list_namespace()
    assert err.value.status == 401


# ---- server-side apply ---------------------------------------------------------------------------------------

def test_apply_creates_if_absent_and_second_identical_apply_changes_nothing(k8s):
    emu = k8s.emu
    apply(k8s, namespace())
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": NS,
                                                                "labels": {"app": "vllm"}},
          "data": {"MODEL": "openai/gpt-oss-20b"}}
    first = apply(k8s, cm)
    stored = emu.get("ConfigMap", NS, "settings")
    assert stored["data"] == {"MODEL": "openai/gpt-oss-20b"}
    assert stored["metadata"]["uid"] and stored["metadata"]["creationTimestamp"]
    entry = stored["metadata"]["managedFields"][0]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == (MANAGER, "Apply", "FieldsV1")
    assert entry["fieldsV1"] == {"f:data": {"f:MODEL": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}

    writes_before = len(emu.writes())
    second = apply(k8s, copy.deepcopy(cm))
    assert second.metadata.resourceVersion == first.metadata.resourceVersion
    assert emu.get("ConfigMap", NS, "settings") == stored
    assert len(emu.writes()) == writes_before + 1  # the request is logged; nothing changed

    cm["data"]["MODEL"] = "openai/gpt-oss-120b"
    third = apply(k8s, cm)
    assert int(third.metadata.resourceVersion) > int(first.metadata.resourceVersion)
    assert k8s.core.read_namespaced_config_map("settings", NS).data == {"MODEL": "openai/gpt-oss-120b"}


def test_apply_generation_tracks_spec_and_typed_client_apply(k8s):
    apply(k8s, namespace())
    body = deployment(replicas=1)
    created = apply(k8s, body)
    assert created.metadata.generation == 1
    body["metadata"]["labels"] = {"team": "ml"}
    assert apply(k8s, body).metadata.generation == 1  # metadata only
    body["spec"]["replicas"] = 3
    assert apply(k8s, body).metadata.generation == 2
    # The typed client can apply too: PATCH with _content_type and field_manager.
    typed = k8s.apps.patch_namespaced_deployment("web", NS, body, field_manager=MANAGER,
                                                 _content_type="application/apply-patch+yaml")
    assert typed.metadata.generation == 2 and typed.spec.replicas == 3
    with pytest.raises(ApiException) as err:  # fieldManager is required for apply
        k8s.apps.patch_namespaced_deployment("web", NS, body, _content_type="application/apply-patch+yaml")
    assert err.value.status == 422


def test_apply_removes_fields_it_no_longer_sets_and_reports_conflicts(k8s):
    apply(k8s, namespace())
    body = deployment(replicas=2)
    body["metadata"]["labels"] = {"a": "1", "b": "2"}
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"},
                                                                {"name": "B", "value": "2"}]
    apply(k8s, body)
    body["metadata"]["labels"] = {"a": "1"}
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    out = apply(k8s, body)
    assert out.metadata.labels.to_dict() == {"a": "1"}
    assert [e.name for e in out.spec.template.spec.containers[0].env] == ["A"]

    scale = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
             "spec": {"replicas": 5}}
    with pytest.raises(dyn_exc.ConflictError) as err:
        apply(k8s, scale, manager="someone-else")
    status = json.loads(err.value.body)
    assert status["reason"] == "Conflict" and ".spec.replicas" in status["message"]
    forced = apply(k8s, scale, manager="someone-else", force_conflicts=True)
    assert forced.spec.replicas == 5
    assert [m.manager for m in forced.metadata.managedFields] == [MANAGER, "someone-else"]
    # Same value owned by two managers is shared, not a conflict.
    apply(k8s, scale, manager="third")


def test_dry_run_everywhere_changes_nothing(k8s):
    emu = k8s.emu
    apply(k8s, namespace())
    emu.clear_log()
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}, "data": {"k": "v"}}
    would = apply(k8s, cm, dry_run="All")
    assert would.data.k == "v" and would.metadata.uid
    assert emu.get("ConfigMap", NS, "c") is None
    k8s.core.create_namespaced_config_map(NS, cm, dry_run="All")
    assert emu.get("ConfigMap", NS, "c") is None
    assert emu.writes() == [] and len(emu.requests) == 2

    live = apply(k8s, cm)
    cm["data"]["k"] = "changed"
    preview = apply(k8s, cm, dry_run="All")
    assert preview.data.k == "changed"
    assert emu.get("ConfigMap", NS, "c")["data"] == {"k": "v"}
    k8s.core.delete_namespaced_config_map("c", NS, dry_run="All")
    assert emu.get("ConfigMap", NS, "c")["metadata"]["resourceVersion"] == live.metadata.resourceVersion
    same = apply(k8s, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS},
                       "data": {"k": "v"}}, dry_run="All")
    assert same.metadata.resourceVersion == live.metadata.resourceVersion  # a no-op previews as unchanged


# ---- typed CRUD and errors -----------------------------------------------------------------------------------

def test_crud_errors_are_status_objects(k8s):
    core = k8s.core
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("missing", "default")
    assert err.value.status == 404
    assert status_of(err.value) | {} == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                         "message": 'pods "missing" not found', "reason": "NotFound",
                                         "details": {"name": "missing", "kind": "pods"}, "code": 404}

    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("nope", {"metadata": {"name": "x"}})
    assert err.value.status == 404 and status_of(err.value)["message"] == 'namespaces "nope" not found'

    core.create_namespace({"metadata": {"name": NS}})
    created = core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}, "data": {"a": "1"}})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "x"}})
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"

    stale = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "2"},
             "metadata": {"name": "x", "namespace": NS, "resourceVersion": created.metadata.resource_version}}
    updated = apply(k8s, stale, force_conflicts=True)  # a: "1" was the creator's (OpenAPI-Generator)
    assert int(updated.metadata.resourceVersion) > int(created.metadata.resource_version)
    with pytest.raises(dyn_exc.ConflictError) as err:  # stale resourceVersion
        apply(k8s, stale, force_conflicts=True)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"

    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Bad_Name"}})
    assert err.value.status == 422 and status_of(err.value)["reason"] == "Invalid"
    with pytest.raises(dyn_exc.BadRequestError):  # label values are strings; a YAML number is a decode error
        apply(k8s, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "y", "namespace": NS,
                                                                         "labels": {"version": 1}}})
    with pytest.raises(ApiException) as err:
        k8s.apps.create_namespaced_deployment(NS, {"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c",
                                                                                        "image": "i"}]}}}})
    assert err.value.status == 422 and "does not match template" in status_of(err.value)["message"]


def test_statefulset_spec_outside_template_is_immutable(k8s):
    apply(k8s, namespace())
    body = statefulset()
    apply(k8s, body)
    body["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "100Gi"
    with pytest.raises(dyn_exc.UnprocessibleEntityError) as err:
        apply(k8s, body)
    assert "updates to statefulset spec for fields other than" in json.loads(err.value.body)["message"]


def test_secret_string_data_is_stored_as_data(k8s):
    apply(k8s, namespace())
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": NS},
              "stringData": {"token": "hf_abc"}}
    first = apply(k8s, secret)
    assert first.data.token == "aGZfYWJj" and "stringData" not in first.to_dict()
    assert apply(k8s, secret).metadata.resourceVersion == first.metadata.resourceVersion


def test_what_the_playbooks_never_send_is_refused_saying_so(k8s):
    apply(k8s, namespace())
    apply(k8s, deployment(replicas=1))
    refused = [
        lambda: k8s.apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 2}}),  # strategic merge
        lambda: k8s.apps.patch_namespaced_deployment("web", NS, [{"op": "replace", "path": "/spec/replicas",
                                                                   "value": 4}]),  # JSON patch
        lambda: k8s.apps.replace_namespaced_deployment("web", NS, deployment(replicas=3)),
        lambda: k8s.apps.patch_namespaced_deployment_status("web", NS, {"status": {"replicas": 9}}),
        lambda: k8s.core.list_namespaced_pod(NS, watch=True, timeout_seconds=1),
        lambda: k8s.core.list_namespaced_pod(NS, field_selector="status.phase=Running"),
        lambda: k8s.core.list_namespaced_pod(NS, limit=1),
        lambda: k8s.core.delete_collection_namespaced_config_map(NS),
    ]
    for call in refused:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 405 and "is not emulated" in status_of(err.value)["message"]
    assert k8s.apps.read_namespaced_deployment("web", NS).spec.replicas == 1


# ---- selectors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("selector,names", [
    ("app=web", ["a", "b"]), ("app==web", ["a", "b"]), ("app!=web", ["c", "d"]), ("tier", ["a", "c"]),
    ("!tier", ["b", "d"]), ("app in (web,db)", ["a", "b", "c"]), ("app notin (web)", ["c", "d"]),
    ("app=web,tier=front", ["a"]), ("app in (db), tier", ["c"]),
])
def test_label_selectors(k8s, selector, names):
    k8s.core.create_namespace({"metadata": {"name": NS}})
    for name, labels in (("a", {"app": "web", "tier": "front"}), ("b", {"app": "web"}),
                         ("c", {"app": "db", "tier": "back"}), ("d", {})):
        k8s.core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})
    got = k8s.core.list_namespaced_config_map(NS, label_selector=selector).items
    assert sorted(i.metadata.name for i in got if i.metadata.name != "kube-root-ca.crt") == names


def test_invalid_selector_is_400_and_list_has_no_item_kinds(k8s):
    with pytest.raises(ApiException) as err:
        k8s.core.list_namespaced_config_map("default", label_selector="a in ()")
    assert err.value.status == 400
    import urllib.request
    req = urllib.request.Request(k8s.emu.url + "/api/v1/namespaces", headers={"Authorization": "Bearer t"})
    raw = json.loads(urllib.request.urlopen(req, timeout=5).read())
    assert raw["kind"] == "NamespaceList" and "kind" not in raw["items"][0]  # as the real API server answers


# ---- controller ----------------------------------------------------------------------------------------------

def test_statefulset_becomes_ready_with_claims_and_events(k8s):
    emu = k8s.emu
    emu.script_pods("vllm", "ready", ticks=3)
    apply(k8s, namespace())
    apply(k8s, statefulset())
    phases = []
    sts = read_until(lambda: k8s.apps.read_namespaced_stateful_set("vllm", NS),
                     lambda s: (phases.append([(p["status"].get("phase"), p["status"]["conditions"][-3]["status"])
                                               for p in emu.objects("Pod", NS)]) or (s.status.ready_replicas or 0) == 1))
    assert ["Pending" in str(p) for p in phases].count(True) >= 1
    assert sts.status.available_replicas == 1 and sts.status.observed_generation == 1
    assert sts.status.current_revision == sts.status.update_revision
    pod0 = k8s.core.read_namespaced_pod("vllm-0", NS)
    assert pod0.metadata.labels["app"] == "vllm" and pod0.metadata.owner_references[0].kind == "StatefulSet"
    assert pod0.spec.volumes[-1].persistent_volume_claim.claim_name == "model-cache-vllm-0"
    assert pod0.status.container_statuses[0].ready and pod0.status.pod_ip
    pvc = k8s.core.read_namespaced_persistent_volume_claim("model-cache-vllm-0", NS)
    assert pvc.status.phase == "Bound" and pvc.spec.storage_class_name == "standard-rwo"
    reasons = {e.reason for e in k8s.core.list_namespaced_event(NS).items}
    assert {"SuccessfulCreate", "Scheduled", "Pulled", "Started"} <= reasons

    # A template change rolls the pod; readiness returns.
    apply(k8s, statefulset(image="vllm/vllm-openai:v0.12.1"))
    sts = read_until(lambda: k8s.apps.read_namespaced_stateful_set("vllm", NS),
                     lambda s: s.status.observed_generation == 2 and s.status.updated_replicas == 1
                     and (s.status.ready_replicas or 0) == 1)
    assert k8s.core.read_namespaced_pod("vllm-0", NS).spec.containers[0].image.endswith("v0.12.1")

    # Deleting the StatefulSet removes its pods (garbage collection at the next read); the claim is retained
    # (persistentVolumeClaimRetentionPolicy defaults to Retain).
    k8s.apps.delete_namespaced_stateful_set("vllm", NS)
    assert k8s.core.list_namespaced_pod(NS).items == []
    assert k8s.core.read_namespaced_persistent_volume_claim("model-cache-vllm-0", NS).status.phase == "Bound"
    assert emu.errors == []


def test_deployment_job_and_deletion_propagation(k8s):
    emu = k8s.emu
    apply(k8s, namespace())
    apply(k8s, deployment(replicas=2))
    dep = read_until(lambda: k8s.apps.read_namespaced_deployment("web", NS),
                     lambda d: d.status.available_replicas == 2)
    assert {c.type: c.status for c in dep.status.conditions} == {"Available": "True", "Progressing": "True"}
    pods = k8s.core.list_namespaced_pod(NS, label_selector="app=web").items
    assert len(pods) == 2 and all(p.metadata.name.startswith("web-") and
                                  len(p.metadata.name.split("-")) == 3 for p in pods)

    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bench", "namespace": NS},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "b", "image": "i"}]}}}}
    apply(k8s, job)
    done = read_until(lambda: k8s.batch.read_namespaced_job("bench", NS), lambda j: j.status.succeeded == 1)
    assert "Complete" in {c.type for c in done.status.conditions}

    k8s.apps.delete_namespaced_deployment("web", NS)
    assert k8s.core.list_namespaced_pod(NS, label_selector="app=web").items == []
    assert k8s.apps.list_namespaced_replica_set(NS).items == []
    apply(k8s, deployment(name="keep", replicas=1))
    read_until(lambda: k8s.core.list_namespaced_pod(NS, label_selector="app=keep").items, lambda p: len(p) == 1)
    k8s.apps.delete_namespaced_deployment("keep", NS, propagation_policy="Orphan")
    assert len(k8s.apps.list_namespaced_replica_set(NS).items) == 1

    k8s.core.delete_namespace(NS)
    assert emu.get("Namespace", None, NS)["status"]["phase"] == "Terminating"
    with pytest.raises(ApiException) as err:
        k8s.core.create_namespaced_config_map(NS, {"metadata": {"name": "late"}})
    assert err.value.status == 403
    assert all(n.metadata.name != NS for n in k8s.core.list_namespace().items)
    assert emu.objects("Pod", NS) == [] and emu.objects("Job", NS) == []


def test_foreground_deletion_and_finalizers(k8s):
    apply(k8s, namespace())
    apply(k8s, deployment(replicas=1))
    read_until(lambda: k8s.core.list_namespaced_pod(NS).items, lambda pods: len(pods) == 1)
    gone = k8s.apps.delete_namespaced_deployment("web", NS, propagation_policy="Foreground")
    assert gone["metadata"]["deletionTimestamp"] and "foregroundDeletion" in gone["metadata"]["finalizers"]
    assert k8s.core.list_namespaced_pod(NS).items == [] and k8s.apps.list_namespaced_deployment(NS).items == []

    held = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "namespace": NS,
                                                                  "finalizers": ["example.com/hold"]}}
    apply(k8s, held)
    k8s.core.delete_namespaced_config_map("held", NS)
    assert k8s.core.read_namespaced_config_map("held", NS).metadata.deletion_timestamp
    del held["metadata"]["finalizers"]
    apply(k8s, held)  # its manager no longer sets the finalizer: it goes, and the object with it
    with pytest.raises(ApiException) as err:
        k8s.core.read_namespaced_config_map("held", NS)
    assert err.value.status == 404


@pytest.mark.parametrize("scenario,params,check", [
    ("unschedulable", {"message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                       "not_trigger_scale_up": "pod didn't trigger scale-up: 1 max node group size reached"},
     lambda pod, events: (pod.status.phase == "Pending"
                          and pod.status.conditions[0].reason == "Unschedulable"
                          and ("Warning", "FailedScheduling", "0/3 nodes are available: 3 Insufficient "
                               "nvidia.com/gpu.") in events
                          and any(r == "NotTriggerScaleUp" for _, r, _ in events))),
    ("image_pull", {}, lambda pod, events: (
        pod.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
        and any(t == "Warning" and r == "Failed" and "Failed to pull image" in m for t, r, m in events))),
    ("crashloop", {"exit_code": 3}, lambda pod, events: (
        pod.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
        and pod.status.container_statuses[0].restart_count > 0
        and pod.status.container_statuses[0].last_state.terminated.exit_code == 3
        and any(r == "BackOff" for _, r, _ in events))),
    ("oomkilled", {}, lambda pod, events: (
        pod.status.container_statuses[0].last_state.terminated.reason == "OOMKilled"
        and pod.status.container_statuses[0].last_state.terminated.exit_code == 137)),
    ("gcsfuse_denied", {"bucket": "my-models"}, lambda pod, events: (
        pod.status.phase == "Pending"
        and any(r == "FailedMount" and "PermissionDenied" in m and 'GCS bucket "my-models"' in m
                and "does not have storage.objects.list access" in m for _, r, m in events))),
    ("running_not_ready", {}, lambda pod, events: (
        pod.status.phase == "Running" and not pod.status.container_statuses[0].ready
        and any(r == "Unhealthy" for _, r, _ in events))),
])
def test_pod_scenarios(k8s, scenario, params, check):
    k8s.emu.script_pods("app=vllm", scenario, **params)
    apply(k8s, namespace())
    k8s.core.create_namespaced_pod(NS, pod("vllm-0", labels={"app": "vllm"}))
    for _ in range(4):
        p = k8s.core.read_namespaced_pod("vllm-0", NS)
    events = [(e.type, e.reason, e.message) for e in k8s.core.list_namespaced_event(NS).items
              if e.involved_object.name == "vllm-0"]
    assert check(p, events), (p.status, events)


def test_custom_events(k8s):
    apply(k8s, namespace())
    k8s.core.create_namespaced_pod(NS, pod("a"))
    k8s.emu.add_event(NS, "a", "Warning", "Custom", "something odd")
    k8s.emu.add_event(NS, {"kind": "Pod", "name": "ghost"}, "Normal", "Other", "x")
    events = k8s.core.list_namespaced_event(NS).items
    assert [(e.reason, e.message, e.involved_object.kind) for e in events
            if e.involved_object.name == "a" and e.type == "Warning"] == [("Custom", "something odd", "Pod")]
    assert [e.reason for e in events if e.involved_object.name == "ghost"] == ["Other"]


def test_pod_logs(k8s):
    emu = k8s.emu
    apply(k8s, namespace())
    emu.script_pods("slow", "pending")
    k8s.core.create_namespaced_pod(NS, pod("slow"))
    with pytest.raises(ApiException) as err:  # like the kubelet: nothing to read while the container waits
        k8s.core.read_namespaced_pod_log("slow", NS)
    assert err.value.status == 400 and "is waiting to start: ContainerCreating" in status_of(err.value)["message"]

    apply(k8s, statefulset())
    read_until(lambda: k8s.core.list_namespaced_pod(NS, label_selector="app=vllm").items,
               lambda pods: pods and pods[0].status.phase == "Running")
    emu.set_logs("vllm", ["INFO starting", "INFO loading weights", "INFO Application startup complete."])
    assert k8s.core.read_namespaced_pod_log("vllm-0", NS) == \
        "INFO starting\nINFO loading weights\nINFO Application startup complete.\n"
    assert k8s.core.read_namespaced_pod_log("vllm-0", NS, tail_lines=1) == "INFO Application startup complete.\n"
    emu.set_logs("app=vllm", "only via selector")
    assert k8s.core.read_namespaced_pod_log("vllm-0", NS, container="vllm") == "only via selector\n"
    with pytest.raises(ApiException):
        k8s.core.read_namespaced_pod_log("vllm-0", NS, previous=True)

    k8s.core.create_namespaced_pod(NS, pod("two", containers=("a", "b")))
    with pytest.raises(ApiException) as err:
        k8s.core.read_namespaced_pod_log("two", NS)
    assert "a container name must be specified" in status_of(err.value)["message"]


# ---- port-forward --------------------------------------------------------------------------------------------

def test_port_forward_reaches_fake_vllm(k8s, fake_vllm):
    emu = k8s.emu
    apply(k8s, namespace())
    apply(k8s, statefulset())
    read_until(lambda: k8s.core.read_namespaced_pod("vllm-0", NS), lambda p: p.status.phase == "Running")
    emu.set_port_forward_target("vllm-", 8000, ("127.0.0.1", fake_vllm.port))

    pf = portforward(k8s.core.connect_get_namespaced_pod_portforward, "vllm-0", NS, ports="8000")
    try:
        conn = http.client.HTTPConnection("localhost", 8000, timeout=10)
        conn.sock = pf.socket(8000)
        conn.request("GET", "/v1/models", headers={"Authorization": "Bearer test-api-key"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["data"][0]["id"] == "openai/gpt-oss-20b"
        conn.request("GET", "/health")  # keep-alive: same tunnel
        assert conn.getresponse().status == 200
    finally:
        pf.close()
    assert any(r.path.endswith("/pods/vllm-0/portforward") for r in emu.requests)

    pf = portforward(k8s.core.connect_get_namespaced_pod_portforward, "vllm-0", NS, ports="9000")
    sock = pf.socket(9000)
    sock.settimeout(5)
    assert sock.recv(1) == b""  # no target: the error channel closes the port
    assert "connection refused" in pf.error(9000)
    with pytest.raises(ApiException):
        portforward(k8s.core.connect_get_namespaced_pod_portforward, "nope", NS, ports="8000")


def test_seed_and_request_log(k8s):
    emu = k8s.emu
    emu.seed({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "foreign", "namespace": "other"},
              "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}})
    svc = k8s.core.read_namespaced_service("foreign", "other")
    assert svc.spec.selector == {"app": "x"} and svc.spec.ports[0].target_port == 80 and svc.spec.cluster_ip
    assert emu.writes() == []
    k8s.core.create_namespaced_config_map("other", {"metadata": {"name": "a"}})
    (w,) = emu.writes()
    # the v37 typed client sends create bodies without a Content-Type; the API server assumes JSON
    assert (w.method, w.path, w.content_type, w.status) == ("POST", "/api/v1/namespaces/other/configmaps", "", 201)
    apply(k8s, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "other"}},
          dry_run="All")
    apply(k8s, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "other"}})
    last = emu.writes()[-1]
    assert (last.method, last.path, last.content_type, last.field_manager, last.status) == (
        "PATCH", "/api/v1/namespaces/other/configmaps/b", "application/apply-patch+yaml", MANAGER, 201)
    assert len(emu.writes()) == 2 and emu.requests[-2].dry_run
    assert emu.get("Namespace", None, "other") and len(emu.objects("configmap", "other")) == 3


# ---- what teardown and the retry policy rely on ---------------------------------------------------------------

def test_discovery_lists_kinds_a_namespace_may_hold_in_their_own_group_versions(k8s):
    for api_version, kind in (("autoscaling/v2", "HorizontalPodAutoscaler"), ("policy/v1", "PodDisruptionBudget"),
                              ("rbac.authorization.k8s.io/v1", "Role"), ("batch/v1", "CronJob"),
                              ("networking.k8s.io/v1", "NetworkPolicy"), ("gateway.networking.k8s.io/v1", "HTTPRoute"),
                              ("metrics.k8s.io/v1beta1", "PodMetrics")):
        assert k8s.res(api_version, kind).namespaced, kind
    groups = {g["name"]: g for g in k8s.dyn.request("GET", "/apis").to_dict()["groups"]}
    assert groups["autoscaling"]["preferredVersion"]["groupVersion"] == "autoscaling/v2"
    assert k8s.res("metrics.k8s.io/v1beta1", "PodMetrics").verbs == ["get", "list"]


def test_injected_faults_answer_before_the_request_takes_effect(k8s):
    emu = k8s.emu
    apply(k8s, namespace())
    emu.inject("PATCH", r"/namespaces/gptoss/configmaps/c$", 503, dry_run=False)
    emu.inject("GET", r"/namespaces/gptoss/configmaps$", 429, retry_after=2)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}, "data": {"a": "1"}}
    apply(k8s, body, dry_run="All")  # not a match: the dry run passes
    with pytest.raises(dyn_exc.ServiceUnavailableError) as failed:
        apply(k8s, body)
    assert json.loads(failed.value.body)["reason"] == "ServiceUnavailable"
    assert emu.get("ConfigMap", NS, "c") is None  # it never took effect
    apply(k8s, body)  # the next one goes through
    cfg = type.__call__(client.Configuration)
    cfg.retries = False  # urllib3 would wait out a Retry-After on its own
    core = client.CoreV1Api(config.new_client_from_config(config_file=emu.kubeconfig_path, context="test",
                                                          client_configuration=cfg))
    with pytest.raises(ApiException) as limited:
        core.list_namespaced_config_map(NS)
    assert limited.value.status == 429 and limited.value.headers["Retry-After"] == "2"
    assert emu.faults_left() == 0 and [c.metadata.name for c in k8s.core.list_namespaced_config_map(NS).items
                                       if c.metadata.name == "c"] == ["c"]


def test_load_balancers_and_provisioned_disks_hold_their_objects_until_the_cloud_resource_is_gone(k8s):
    emu = k8s.emu
    apply(k8s, namespace())
    apply(k8s, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": NS},
                "spec": {"type": "LoadBalancer", "selector": {"a": "b"}, "ports": [{"port": 80}]}})
    apply(k8s, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": NS},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    svc = k8s.core.read_namespaced_service("lb", NS)  # a read runs the controllers
    assert svc.metadata.finalizers == ["service.kubernetes.io/load-balancer-cleanup"]
    assert svc.status.load_balancer.ingress[0].ip
    volume = k8s.core.read_namespaced_persistent_volume_claim("data", NS).spec.volume_name
    pv = k8s.core.read_persistent_volume(volume)
    assert pv.spec.persistent_volume_reclaim_policy == "Delete" and pv.spec.claim_ref.name == "data"

    k8s.core.delete_namespaced_service("lb", NS)
    k8s.core.delete_namespaced_persistent_volume_claim("data", NS)
    assert emu.get("Service", NS, "lb")["metadata"]["deletionTimestamp"]  # held by its finalizer
    for _ in range(emu.cloud_cleanup_ticks + 2):
        emu.tick()
    assert emu.get("Service", NS, "lb") is None
    assert emu.get("PersistentVolumeClaim", NS, "data") is None
    for _ in range(emu.cloud_cleanup_ticks + 2):
        emu.tick()
    assert emu.get("PersistentVolume", None, volume) is None  # its disk deleted, then it


def test_a_stalled_request_times_the_client_out_and_is_then_answered_as_usual(k8s):
    """``delay_s``: the API server holds the request (an upgrade, a slow etcd); a client whose read
    timeout is shorter gives up, yet the request still takes effect once the server gets to it."""
    import time

    import urllib3

    emu = k8s.emu
    apply(k8s, namespace())
    emu.inject("POST", r"/namespaces/gptoss/configmaps$", None, delay_s=1.5)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="late"), data={"a": "1"})
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        k8s.core.create_namespaced_config_map(NS, body, _request_timeout=(5, 0.3))
    assert emu.get("ConfigMap", NS, "late") is None  # still held
    [post] = [r for r in emu.requests if r.method == "POST"]
    deadline = time.monotonic() + 30  # generous: the server answers 1.5 s after the request came
    while post.status != 201:
        assert time.monotonic() < deadline, "the stalled request was never answered"
        time.sleep(0.05)
    assert emu.get("ConfigMap", NS, "late")["data"] == {"a": "1"} and emu.faults_left() == 0
