"""The Kubernetes API, reached through the kubeconfig setup-cluster wrote (same identity as gcloud).

Every request of the one client (typed, dynamic, discovery) goes through the run's one retry policy
(429 honouring Retry-After, 5xx, connection resets, timeouts), and its errors reach the user as a
problem and a fix (:func:`explain`), never as an ``ApiException`` with HTTP headers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from urllib.parse import urlsplit

from gptoss_gke.core import private_files
from gptoss_gke.core.step import Check, Plan, Step, noop
from gptoss_gke.errors import CannotObserve, Conflict, StepError, ToolError
from gptoss_gke.gcp.project import Credentials

# What steps that talk to the Kubernetes API import (see Step.sdk_modules).
SDK = ("kubernetes.client", "kubernetes.config", "kubernetes.dynamic", "kubernetes.stream")
# A request that hangs is a failure we can retry, not a run that never ends.
REQUEST_TIMEOUT_S = (10, 60)  # connect, read


def context_fix(s) -> str:
    """How to get a kubeconfig context for the cluster without creating anything (`inv setup-cluster` also
    writes it, but creates what is missing: the wrong advice in the middle of a teardown)."""
    dns = " --dns-endpoint" if s.cluster.control_plane == "dns" else ""
    return (f"KUBECONFIG={s.kubeconfig_path} gcloud container clusters get-credentials {s.cluster.name} "
            f"--location={s.cluster_location} --project={s.project}{dns} (it only writes the context), "
            f"or set kube.kubeconfig/kube.context")


KUBE_CLIENT_FACT = "kube.client"
# What deleting a cluster (or its node pools) without seeing inside it may leave behind, billed.
MAY_BE_ORPHANED = ("external load balancers (gcloud compute forwarding-rules list "
                   "--filter='description~kubernetes.io/service-name') and persistent disks (gcloud compute disks "
                   "list --filter='description~kubernetes.io/created-for/pvc')")
FORCE_BLIND = ("--force: nothing is deleted through the Kubernetes API; the node pools/cluster are deleted anyway "
               "and may leave behind " + MAY_BE_ORPHANED)
# Kinds whose objects are not residents of a namespace: records about other objects, or live views.
_NOT_RESIDENTS = {("", "events"), ("events.k8s.io", "events"), ("metrics.k8s.io", "pods")}


class Kube:
    def __init__(self, api_client):
        from kubernetes import client, dynamic

        self.api_client = api_client
        # The client caches discovery in a file named after the server, in the shared temp folder by
        # default: another run (or another user) could hand us a stale or forged one. Ours is private
        # to this run and removed with it (or swept by the next run if this one is killed).
        folder = tempfile.mkdtemp(prefix=f"{private_files.PREFIX}{os.getpid()}-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        self.dynamic = dynamic.DynamicClient(api_client, cache_file=os.path.join(folder, "discovery.json"))
        self.core = client.CoreV1Api(api_client)

    def resource(self, api_version: str, kind: str):
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def get_json(self, path: str, **query) -> dict:
        """A raw GET (discovery, lists of any kind) as the API's JSON."""
        return self.dynamic.request("GET", path, query_params=list(query.items()),
                                    serializer=lambda _client, data: data)

    def namespaced_kinds(self) -> list[tuple[str, str, str]]:
        """(apiVersion, kind, plural) of every namespaced kind the API server lists, custom resources
        included, asked now (never from a discovery cache that predates a CRD)."""
        found = []
        versions = [("", "v1", "/api/v1")]
        for group in self.get_json("/apis").get("groups") or []:
            gv = (group.get("preferredVersion") or {}).get("groupVersion")
            if gv:
                versions.append((group["name"], gv, f"/apis/{gv}"))
        for group, group_version, path in versions:
            for r in self.get_json(path).get("resources") or []:
                if ("/" in r["name"] or not r.get("namespaced") or "list" not in (r.get("verbs") or [])
                        or (group, r["name"]) in _NOT_RESIDENTS):
                    continue
                found.append((group_version, r["kind"], r["name"]))
        return found

    def list_namespaced(self, api_version: str, plural: str, namespace: str) -> list[dict]:
        prefix = "/api" if "/" not in api_version else "/apis"
        doc = self.get_json(f"{prefix}/{api_version}/namespaces/{namespace}/{plural}")
        return doc.get("items") or []


class _TransientAnswer(Exception):
    """A 429/5xx answer, raised only so the retry policy sees it (status, Retry-After)."""

    def __init__(self, response):
        super().__init__(f"{response.status} {response.reason}: {_body_message(response.data)}")
        self.response = response
        self.status, self.reason, self.body = response.status, response.reason, response.data
        self.headers = response.headers


def _body_message(data) -> str:
    try:
        return str(json.loads(data).get("message") or "")[:200]
    except (ValueError, TypeError, AttributeError):
        return ""


def _retry_every_request(ctx, api_client) -> None:
    """Route every request of the client (typed, dynamic, discovery) through the run's retry policy,
    with a timeout. The client returns error answers rather than raising, so a transient one is
    turned into an exception for the policy; when the attempts run out, the last answer is handed
    back and the client raises its usual ApiException. (``call_api`` as the kubernetes 37 client shapes
    it: every typed, dynamic and streaming call goes through it.)"""
    from gptoss_gke.core.retry import TRANSIENT_HTTP

    call_api = api_client.call_api

    def retried(method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        def once():
            response = call_api(method, url, header_params, body, post_params,
                                _request_timeout if _request_timeout is not None else REQUEST_TIMEOUT_S)
            if response.status in TRANSIENT_HTTP:
                response.read()
                raise _TransientAnswer(response)
            return response

        try:
            return ctx.retrying(once, f"{method} {urlsplit(url).path}")
        except _TransientAnswer as exc:
            return exc.response

    api_client.call_api = retried


def kube(ctx) -> Kube:
    """One client per run; CannotObserve when there is no kubeconfig/context or no API server.

    A failure to connect is remembered for the run: every later step would wait for the same
    retries to fail the same way."""

    def connect():
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        s = ctx.settings
        path = s.kubeconfig_path
        if not os.path.exists(path):
            return CannotObserve(f"no kubeconfig at {s.kubeconfig_shown}", context_fix(s))
        configuration = type.__call__(client.Configuration)  # a fresh one, not a copy of the default
        # One retry policy: urllib3's own (3 silent retries, Retry-After honoured on its own) is off.
        configuration.retries = False
        try:
            api_client = config.new_client_from_config(config_file=path, context=s.kube_context,
                                                       client_configuration=configuration)
        except ConfigException as exc:
            return CannotObserve(f"kubeconfig {s.kubeconfig_shown} has no usable context {s.kube_context}: {exc}",
                                 context_fix(s))
        _retry_every_request(ctx, api_client)
        try:
            return Kube(api_client)
        except Exception as exc:  # noqa: BLE001 - discovery failed: nothing answers at that address
            explained = explain(ctx, exc)
            if isinstance(explained, CannotObserve):
                return explained
            return CannotObserve(f"cannot reach the Kubernetes API of context {s.kube_context}: "
                                 f"{_short_error(exc)}",
                                 "check the cluster is running and `inv setup-cluster` succeeded")

    client = ctx.fact(KUBE_CLIENT_FACT, connect)
    if isinstance(client, CannotObserve):
        raise CannotObserve(client.problem, client.fix)
    return client


# ---------------------------------------------------------------------------------------------
# Which cluster a context reaches


def context_server(settings) -> tuple[str | None, str | None]:
    """(server URL, kubeconfig cluster entry) of kube.context, or (None, None) when it is missing."""
    import yaml

    try:
        with open(settings.kubeconfig_path) as fh:
            config = yaml.safe_load(fh) or {}
    except OSError:
        return None, None
    contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []}
    clusters = {c.get("name"): c.get("cluster") or {} for c in config.get("clusters") or []}
    entry = contexts.get(settings.kube_context)
    if not entry:
        return None, None
    return clusters.get(entry.get("cluster"), {}).get("server"), entry.get("cluster")


def host_port(address: str, default_port: int = 443) -> str:
    parts = urlsplit(address if "//" in address else f"//{address}")
    port = parts.port or (80 if parts.scheme == "http" else default_port)
    return f"{parts.hostname}:{port}"


def cluster_endpoints(cluster: dict) -> set[str]:
    """Every address GKE serves the cluster's control plane on (IP, private IP, DNS), as host:port."""
    private = cluster.get("privateClusterConfig") or {}
    endpoints = cluster.get("controlPlaneEndpointsConfig") or {}
    ips = endpoints.get("ipEndpointsConfig") or {}
    found = [cluster.get("endpoint"), private.get("privateEndpoint"), private.get("publicEndpoint"),
             (endpoints.get("dnsEndpointConfig") or {}).get("endpoint"), ips.get("publicEndpoint"),
             ips.get("privateEndpoint")]
    return {host_port(e) for e in found if e}


def kube_for_cluster(ctx, cluster: dict) -> Kube:
    """The client, once kube.context is known to reach ``cluster``: nothing is ever deleted through a
    context that points at another cluster. CannotObserve (with which cluster it points at) if not."""
    s = ctx.settings
    if not os.path.exists(s.kubeconfig_path):  # said as what it is, not as a file that lacks the context
        raise CannotObserve(f"no kubeconfig at {s.kubeconfig_shown}", context_fix(s))
    server, entry = context_server(s)
    if server is None:
        raise CannotObserve(f"kubeconfig {s.kubeconfig_shown} has no context {s.kube_context}", context_fix(s))
    endpoints = cluster_endpoints(cluster)
    if endpoints and host_port(server) not in endpoints:
        raise CannotObserve(
            f"kube.context {s.kube_context} points at {server} (kubeconfig cluster {entry}), not at cluster "
            f"{s.cluster.name} (endpoint {', '.join(sorted(endpoints))})",
            f"run `gcloud container clusters get-credentials {s.cluster.name} --location={s.cluster_location} "
            f"--project={s.project}` (or `inv setup-cluster`), or set kube.context to that cluster's context")
    return kube(ctx)


# ---------------------------------------------------------------------------------------------
# Errors in words


def _status(exc) -> tuple[str, str, list[dict]]:
    """(message, reason, causes) from an API error's Status body."""
    try:
        body = json.loads(exc.body) if isinstance(exc.body, (str, bytes)) and exc.body else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("message") or (exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes)
                                      else str(exc.body or "")) or str(exc.reason or "")
    causes = (body.get("details") or {}).get("causes") or []
    return message.strip()[:600], body.get("reason") or str(exc.reason or ""), causes


def _short_error(exc: BaseException) -> str:
    from gptoss_gke.core.retry import short_reason

    return short_reason(exc)


def explain(ctx, exc: BaseException) -> ToolError | None:
    """A Kubernetes client error as a problem and a fix (None: not a Kubernetes error)."""
    s = ctx.settings
    context = s.kube_context if s is not None else "(unknown)"
    status = getattr(exc, "status", None)
    if status is not None and hasattr(exc, "body"):  # ApiException and the dynamic client's errors
        message, reason, _ = _status(exc)
        if status == 0:  # the client could not talk TLS to the server
            return CannotObserve(f"cannot reach the Kubernetes API of context {context}: {message}",
                                 "check the cluster is running and `inv setup-cluster` succeeded")
        if status == 401:
            return CannotObserve(f"the Kubernetes API refused the credentials of context {context} (401)",
                                 "run `inv setup-cluster` (it refreshes the context) or `inv auth`")
        if status == 403:
            return StepError(f"the Kubernetes API denied it (403 {reason}): {message}",
                             f"ask for roles/container.developer in project {s.project}, or check that kube.context "
                             f"{context} is the cluster you mean")
        if status == 409:
            return Conflict(f"conflict (409 {reason}): {message}")
        if status in (422, 400):
            return StepError(f"the Kubernetes API rejected it ({status} {reason}): {message}",
                             "correct the field it names (in the manifest or the setting that fills it), then re-run")
        if status == 429 or status >= 500:
            return StepError(f"the Kubernetes API kept answering {status} {reason} after {s.retry.attempts} "
                             f"attempts: {message}",
                             "the control plane may be upgrading or overloaded: wait a minute and re-run "
                             "(re-running resumes where this stopped)")
        return StepError(f"the Kubernetes API answered {status} {reason}: {message}",
                         f"check kube.context {context} and the object named above")
    module = type(exc).__module__ or ""
    if module.startswith("urllib3") or isinstance(exc, (ConnectionError, TimeoutError)):
        server = context_server(s)[0] if s is not None else None
        at = f" at {server}" if server else ""
        return CannotObserve(f"cannot reach the Kubernetes API of context {context}{at}: {_short_error(exc)}",
                             "check the cluster is running and the network path to its control plane")
    return None


class KubeStep(Step):
    """A step that talks to the Kubernetes API: the SDK is imported up front, errors are explained."""

    sdk_modules = SDK

    def explain(self, ctx, exc: Exception) -> Exception | None:
        return explain(ctx, exc)


class KubeCheck(KubeStep, Check):
    """A check (smoke test, benchmark, tunnel, the key) that talks to the Kubernetes API."""


class KubernetesApi(KubeCheck):
    """Can we see inside the cluster at all, through a context that really is this cluster's? Said
    once, here; every Kubernetes deletion (and, without --force, every pool/cluster deletion) needs it."""

    section = "kubernetes"
    key = "kube.api"
    needs = (Credentials.key,)

    def __init__(self, settings, *, force: bool):
        self.name = f"Kubernetes API of cluster {settings.cluster.name}"
        if force:
            self.if_unobservable = FORCE_BLIND

    def observe(self, ctx):
        from gptoss_gke.gcp.cluster import describe_cluster

        cluster = describe_cluster(ctx)
        if cluster is None:
            return None
        k = kube_for_cluster(ctx, cluster)
        return {"server": k.api_client.configuration.host}

    def verdict(self, ctx, current) -> Plan:
        s = ctx.settings
        if current is None:
            return noop(f"cluster {s.cluster.name} does not exist: nothing of ours can be in it")
        return noop(f"context {s.kube_context} reaches cluster {s.cluster.name} ({current['server']})")
