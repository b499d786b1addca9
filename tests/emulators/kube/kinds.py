"""The kinds the emulated API server serves: group, version, plural, scope, verbs and subresources."""

from __future__ import annotations

from dataclasses import dataclass

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_NS_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple = ()
    extra_subresources: tuple = ()  # (name, kind, verbs) besides "status"
    has_status: bool = True
    has_generation: bool = False
    delete_returns_object: bool = False
    verbs: tuple = ALL_VERBS
    categories: tuple = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``pods`` or ``statefulsets.apps``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def singular(self) -> str:
        return self.kind.lower()


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, ("ns",), delete_returns_object=True,
                 verbs=_NS_VERBS),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",), has_status=False),
    ResourceType("", "v1", "Secret", "secrets", True, (), has_status=False),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",), has_status=False),
    ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",), delete_returns_object=True),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",),
                 delete_returns_object=True),
    ResourceType("", "v1", "Service", "services", True, ("svc",), delete_returns_object=True,
                 categories=("all",)),
    ResourceType("", "v1", "Pod", "pods", True, ("po",),
                 (("log", "Pod", ("get",)), ("portforward", "PodPortForwardOptions", ("create", "get")),
                  ("eviction", "Eviction", ("create",))),
                 delete_returns_object=True, categories=("all",)),
    ResourceType("", "v1", "Event", "events", True, ("ev",), has_status=False),
    ResourceType("", "v1", "Node", "nodes", False, ("no",)),
    ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",), has_generation=True,
                 categories=("all",)),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, ("sts",), has_generation=True,
                 categories=("all",)),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",), has_generation=True,
                 categories=("all",)),
    ResourceType("batch", "v1", "Job", "jobs", True, (), has_generation=True, categories=("all",)),
    ResourceType("networking.k8s.io", "v1", "Ingress", "ingresses", True, ("ing",), has_generation=True),
    # Kinds a namespace may hold that the playbooks never create: teardown must see them before it
    # deletes a namespace (it asks discovery for every namespaced, listable kind).
    ResourceType("", "v1", "Endpoints", "endpoints", True, ("ep",), has_status=False),
    # Made by the emulator's EndpointSlice controller (endpointslices.py) for every Service with a selector.
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True, (), has_status=False),
    ResourceType("apps", "v1", "ControllerRevision", "controllerrevisions", True, (), has_status=False),
    ResourceType("batch", "v1", "CronJob", "cronjobs", True, ("cj",), categories=("all",)),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, ("netpol",),
                 has_status=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", True, (), has_status=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True, (), has_status=False),
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, ("pdb",)),
    ResourceType("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True, ("hpa",),
                 categories=("all",)),
    # A custom resource (GKE installs the Gateway API CRDs with --gateway-api=standard).
    ResourceType("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", True, (), has_generation=True),
    # GKE's ComputeClass (cluster-scoped; GKE >= 1.30.3-gke.1451000 serves it).
    ResourceType("cloud.google.com", "v1", "ComputeClass", "computeclasses", False, ("cc",), has_generation=True),
    # Namespaced and listable, but a live view, not a resident (metrics-server serves it on GKE).
    ResourceType("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", True, (), has_status=False,
                 verbs=("get", "list")),
    # Namespaced, but create-only: nothing to list.
    ResourceType("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", True,
                 (), verbs=("create",)),
)

BY_KIND = {rt.kind: rt for rt in RESOURCE_TYPES}
BY_GVR = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES}


def resolve_kind(kind: str) -> ResourceType:
    """``StatefulSet``, ``statefulsets``, ``sts`` or ``apps/v1/StatefulSet`` → its type."""
    k = kind.split("/")[-1].lower()
    for rt in RESOURCE_TYPES:
        if k in (rt.kind.lower(), rt.plural, rt.singular, *rt.short_names):
            return rt
    raise KeyError(f"unknown kind {kind!r}")
