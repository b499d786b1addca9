"""GKE ``container/v1``: clusters (get/list/create/update/delete and the ``:setX`` verbs), node pools
(get/list/create/update/setSize/setAutoscaling/setManagement/delete), operations and serverConfig, as
gcloud 528 calls them (see the package docstring for the requests it sends)."""

from __future__ import annotations

import copy
import datetime as _dt
import uuid
from typing import Any

from .errors import ApiError
from .operations import Operation
from .gke_defaults import channel_version, is_zone, new_cluster, new_nodepool
from .proto import deep_merge, prune

_SEG = r"[^/:]+"
GKE_PATH = rf"/v1(?:beta1)?/projects/(?P<project>{_SEG})/(?P<kind>locations|zones)/(?P<location>{_SEG})"
_CL = rf"{GKE_PATH}/clusters/(?P<cluster>{_SEG})"
_NP = rf"{_CL}/nodePools/(?P<nodepool>{_SEG})"


def _camel_lower(name: str) -> str:
    return name[:1].lower() + name[1:]


class Gke:
    """The GKE handlers and seeding helpers of :class:`~.server.GcpEmulator` (a mixin: it uses the
    emulator's ``state``, ``lock``, ``url``, ``_require_project``, ``_start_op`` and ``_poll``)."""

    ROUTES = [
        # GKE
        ("GET", rf"{GKE_PATH}/(?:serverConfig|serverconfig)", "gke_server_config"),
        ("GET", rf"{GKE_PATH}/clusters", "gke_list_clusters"),
        ("POST", rf"{GKE_PATH}/clusters", "gke_create_cluster"),
        ("GET", _CL, "gke_get_cluster"),
        ("PUT", _CL, "gke_update_cluster"),
        ("POST", rf"{_CL}/update", "gke_update_cluster"),  # zones-style update
        ("DELETE", _CL, "gke_delete_cluster"),
        ("GET", rf"{_CL}/nodePools", "gke_list_nodepools"),
        ("POST", rf"{_CL}/nodePools", "gke_create_nodepool"),
        ("GET", _NP, "gke_get_nodepool"),
        ("PUT", _NP, "gke_update_nodepool"),
        ("DELETE", _NP, "gke_delete_nodepool"),
        ("POST", rf"{_NP}[:/](?P<verb>[A-Za-z]+)", "gke_nodepool_verb"),
        ("POST", rf"{_CL}[:/](?P<verb>[A-Za-z]+)", "gke_cluster_verb"),
    ]

    def add_cluster(self, project: str, location: str, name: str, *, node_pools: Any = None,
                    **overrides) -> dict:
        """Seed a RUNNING cluster. ``overrides`` are deep-merged into the stored cluster (e.g.
        ``workloadIdentityConfig={"workloadPool": "p.svc.id.goog"}``, ``currentMasterVersion=``).
        ``node_pools``: None for one "default-pool", or a list of node pool dicts (or names)."""
        with self.lock:
            self._require_project(project)
            if node_pools is None:
                node_pools = [{"name": "default-pool", "initialNodeCount": 1}]
            pools = [{"name": p} if isinstance(p, str) else p for p in node_pools]
            cluster = self._new_cluster(project, location, {**overrides, "name": name})
            cluster["status"] = "RUNNING"
            self.state.clusters[(project, location, name)] = cluster
            for pool in pools:
                np_ = self._new_nodepool(cluster, pool)
                np_["status"] = "RUNNING"
                self.state.nodepools[(project, location, name, np_["name"])] = np_
            return cluster

    def add_nodepool(self, project: str, location: str, cluster: str, name: str, **fields) -> dict:
        with self.lock:
            c = self._cluster(project, location, cluster)
            np_ = self._new_nodepool(c, dict(fields, name=name))
            np_["status"] = "RUNNING"
            self.state.nodepools[(project, location, cluster, name)] = np_
            return np_

    def get_cluster(self, project: str, location: str, name: str) -> dict | None:
        """The cluster as the API would render it (with nodePools), or None."""
        with self.lock:
            key = (project, location, name)
            if key not in self.state.clusters:
                return None
            return self._render_cluster(self.state.clusters[key])

    def get_nodepool(self, project: str, location: str, cluster: str, name: str) -> dict | None:
        with self.lock:
            np_ = self.state.nodepools.get((project, location, cluster, name))
            return None if np_ is None else self._render_nodepool(np_)

    def _cluster_busy(self, cluster_key) -> None:
        for op in self.state.operations.values():
            if not op.done and op.cluster_key == cluster_key:
                raise ApiError(400, f"Cluster is running incompatible operation {op.short_name}.",
                               "FAILED_PRECONDITION")

    def _cluster(self, project: str, location: str, name: str) -> dict:
        c = self.state.clusters.get((project, location, name))
        if c is None:
            raise ApiError(404, f"Not found: projects/{project}/locations/{location}/clusters/{name}.",
                           "NOT_FOUND")
        return c

    def _nodepool(self, project, location, cluster, name) -> dict:
        self._cluster(project, location, cluster)
        np_ = self.state.nodepools.get((project, location, cluster, name))
        if np_ is None:
            raise ApiError(404, f"Not found: projects/{project}/locations/{location}/clusters/"
                           f"{cluster}/nodePools/{name}.", "NOT_FOUND")
        return np_

    def _gke_link(self, project: str, location: str, *rest: str) -> str:
        number = self.state.projects[project]["projectNumber"]
        kind = "zones" if is_zone(location) else "locations"
        tail = "/".join(rest)
        return f"{self.url}v1/projects/{number}/{kind}/{location}/{tail}"

    def _new_cluster(self, project: str, location: str, body: dict) -> dict:
        return new_cluster(project, location, body, number=self.state.projects[project]["projectNumber"],
                           endpoint=self.cluster_endpoint, versions=self.channel_versions, link=self._gke_link)

    def _new_nodepool(self, cluster: dict, body: dict) -> dict:
        return new_nodepool(cluster, body, versions=self.channel_versions, link=self._gke_link, url=self.url)

    def _render_nodepool(self, np_: dict) -> dict:
        return prune(np_)

    def _render_cluster(self, cluster: dict) -> dict:
        key = (cluster["_project"], cluster["location"], cluster["name"])
        pools = [np_ for k, np_ in self.state.nodepools.items() if k[:3] == key]
        out = copy.deepcopy(cluster)
        out["nodePools"] = [copy.deepcopy(p) for p in pools]
        out["currentNodeCount"] = sum(p.get("_nodeCount", 0) for p in pools)
        return prune(out)

    def _gke_op(self, project, location, op_type, target, cluster_key, method, path,
                on_success=None, on_failure=None) -> dict:
        short = f"operation-{int(_dt.datetime.now().timestamp() * 1000)}-{uuid.uuid4().hex[:8]}"
        kind = "zones" if "/zones/" in path else "locations"
        name = f"projects/{project}/{kind}/{location}/operations/{short}"
        op = Operation("container", name, self.op_polls_before_done, project=project,
                       location=location, op_type=op_type, target=target, cluster_key=cluster_key,
                       self_link=self._gke_link(project, location, "operations", short),
                       on_success=on_success, on_failure=on_failure)
        return self._start_op(op, method, path).render()

    # --- container handlers (paths: projects/P/(locations|zones)/L/...)
    def gke_server_config(self, query, body, project, location, kind="locations"):
        self._require_project(project, "container.googleapis.com")
        versions = sorted(set(self.channel_versions.values()), reverse=True)
        return {
            "defaultClusterVersion": channel_version(self.channel_versions, "REGULAR"),
            "validMasterVersions": versions,
            "validNodeVersions": versions,
            "defaultImageType": "COS_CONTAINERD",
            "validImageTypes": ["COS_CONTAINERD", "UBUNTU_CONTAINERD"],
            "channels": [{"channel": ch, "defaultVersion": v, "validVersions": [v]}
                         for ch, v in self.channel_versions.items()],
        }

    def gke_list_clusters(self, query, body, project, location, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        items = [self._render_cluster(c) for (p, loc, _), c in sorted(self.state.clusters.items())
                 if p == pid and location in ("-", loc)]
        return {"clusters": items} if items else {}

    def gke_get_cluster(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        return self._render_cluster(self._cluster(pid, location, cluster))

    def gke_create_cluster(self, query, body, project, location, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        spec = body.get("cluster") or {}
        name = spec.get("name")
        if not name:
            raise ApiError(400, "Cluster.name must be specified.", "INVALID_ARGUMENT")
        key = (pid, location, name)
        if key in self.state.clusters:
            raise ApiError(409, f"Already exists: projects/{pid}/locations/{location}/clusters/{name}.",
                           "ALREADY_EXISTS")
        cluster = self._new_cluster(pid, location, spec)
        self.state.clusters[key] = cluster
        pools = spec.get("nodePools")
        if pools is None:
            pools = [{"name": "default-pool", "initialNodeCount": spec.get("initialNodeCount", 3),
                      "config": spec.get("nodeConfig") or {}}]
        for pool in pools:
            np_ = self._new_nodepool(cluster, pool)
            self.state.nodepools[key + (np_["name"],)] = np_

        def ok():
            cluster["status"] = "RUNNING"
            for k, p in self.state.nodepools.items():
                if k[:3] == key:
                    p["status"] = "RUNNING"

        def failed(error):
            cluster["status"] = "ERROR"
            cluster["statusMessage"] = error["message"]
            for k, p in self.state.nodepools.items():
                if k[:3] == key:
                    p["status"] = "ERROR"

        return self._gke_op(pid, location, "CREATE_CLUSTER", cluster["selfLink"], key, "POST",
                            self._cur_path, ok, failed)

    def gke_delete_cluster(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        c = self._cluster(pid, location, cluster)
        key = (pid, location, cluster)
        self._cluster_busy(key)
        c["status"] = "STOPPING"

        def ok():
            self.state.clusters.pop(key, None)
            for k in [k for k in self.state.nodepools if k[:3] == key]:
                del self.state.nodepools[k]

        def failed(error):
            c["status"] = "ERROR"
            c["statusMessage"] = error["message"]

        return self._gke_op(pid, location, "DELETE_CLUSTER", c["selfLink"], key, "DELETE",
                            self._cur_path, ok, failed)

    def _cluster_mutation(self, pid, location, cluster, op_type, apply, method="POST"):
        c = self._cluster(pid, location, cluster)
        key = (pid, location, cluster)
        self._cluster_busy(key)
        prev_status = c.get("status", "RUNNING")
        c["status"] = "RECONCILING"

        def ok():
            apply(c)
            c["status"] = prev_status if prev_status != "RECONCILING" else "RUNNING"
            c["etag"] = uuid.uuid4().hex[:8]

        def failed(error):
            c["status"] = prev_status

        return self._gke_op(pid, location, op_type, c["selfLink"], key, method, self._cur_path,
                            ok, failed)

    def gke_update_cluster(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        update = body.get("update")
        if not isinstance(update, dict) or not update:
            raise ApiError(400, "Update must specify at least one field.", "INVALID_ARGUMENT")
        pool_id = update.get("desiredNodePoolId")
        if pool_id:
            self._nodepool(pid, location, cluster, pool_id)
        op_type = "UPGRADE_MASTER" if "desiredMasterVersion" in update else (
            "UPGRADE_NODES" if "desiredNodeVersion" in update else "UPDATE_CLUSTER")
        return self._cluster_mutation(pid, location, cluster, op_type,
                                      lambda c: self._apply_cluster_update(c, pid, update), "PUT")

    def _apply_cluster_update(self, c: dict, pid: str, update: dict) -> None:
        key = (pid, c["location"], c["name"])
        pool_id = update.get("desiredNodePoolId")
        pool = self.state.nodepools.get(key + (pool_id,)) if pool_id else None
        for field, value in update.items():
            if field == "desiredNodePoolId" or value is None:
                continue
            if field == "desiredWorkloadIdentityConfig":
                if value.get("workloadPool"):
                    c["workloadIdentityConfig"] = copy.deepcopy(value)
                else:
                    c.pop("workloadIdentityConfig", None)
            elif field == "desiredAddonsConfig":
                deep_merge(c.setdefault("addonsConfig", {}), value)
            elif field == "desiredGatewayApiConfig":
                c.setdefault("networkConfig", {})["gatewayApiConfig"] = copy.deepcopy(value)
            elif field == "desiredGcfsConfig":  # clusters update --enable-image-streaming
                gcfs = value
                defaults = c.setdefault("nodePoolDefaults", {}).setdefault("nodeConfigDefaults", {})
                defaults["gcfsConfig"] = copy.deepcopy(gcfs)
                for k, p in self.state.nodepools.items():  # GKE applies it to pools not opted out
                    if k[:3] == key and "gcfsConfig" not in p.get("_explicit", ()):
                        p.setdefault("config", {})["gcfsConfig"] = copy.deepcopy(gcfs)
            elif field == "desiredReleaseChannel":
                c["releaseChannel"] = copy.deepcopy(value)
            elif field == "desiredResourceLabels":
                c["resourceLabels"] = dict(value.get("labels") or {})
            elif field == "desiredMasterVersion":
                channel = (c.get("releaseChannel") or {}).get("channel")
                v = value if value not in ("latest", "-") else channel_version(self.channel_versions, channel)
                c["currentMasterVersion"] = v
            elif field == "desiredNodeVersion" and pool is not None:
                v = value if value not in ("latest", "-") else c["currentMasterVersion"]
                pool["version"] = v
                c["currentNodeVersion"] = v
            elif field == "desiredImageType" and pool is not None:
                pool.setdefault("config", {})["imageType"] = value
            elif field == "desiredNodePoolAutoscaling" and pool is not None:
                pool["autoscaling"] = copy.deepcopy(value)
            elif field == "desiredLocations":
                c["locations"] = list(value)
            elif field == "desiredLoggingService":
                c["loggingService"] = value
            elif field == "desiredMonitoringService":
                c["monitoringService"] = value
            elif field == "desiredDatapathProvider":
                c.setdefault("networkConfig", {})["datapathProvider"] = value
            elif field == "desiredNodePoolAutoConfigNetworkTags":
                c.setdefault("nodePoolAutoConfig", {})["networkTags"] = copy.deepcopy(value)
            elif field.startswith("desired"):
                target = _camel_lower(field[len("desired"):])
                if isinstance(value, dict) and isinstance(c.get(target), dict):
                    deep_merge(c[target], value)
                else:
                    c[target] = copy.deepcopy(value)

    def gke_cluster_verb(self, query, body, project, location, cluster, verb, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        verb = {"resourceLabels": "setResourceLabels", "addons": "setAddons", "logging":
                "setLogging", "monitoring": "setMonitoring", "master": "updateMaster",
                "locations": "setLocations", "legacyAbac": "setLegacyAbac"}.get(verb, verb)

        def apply(c):
            if verb == "setResourceLabels":
                c["resourceLabels"] = dict(body.get("resourceLabels") or {})
                c["labelFingerprint"] = uuid.uuid4().hex[:8]
            elif verb == "setAddons":
                deep_merge(c.setdefault("addonsConfig", {}), body.get("addonsConfig") or {})
            elif verb == "setLocations":
                c["locations"] = list(body.get("locations") or [])
            elif verb == "setLogging":
                c["loggingService"] = body.get("loggingService")
            elif verb == "setMonitoring":
                c["monitoringService"] = body.get("monitoringService")
            elif verb == "updateMaster":
                self._apply_cluster_update(c, pid, {"desiredMasterVersion": body.get("masterVersion")})
            elif verb == "setLegacyAbac":
                c["legacyAbac"] = {"enabled": bool(body.get("enabled"))}
            elif verb == "setNetworkPolicy":
                c["networkPolicy"] = copy.deepcopy(body.get("networkPolicy") or {})
            elif verb == "setMaintenancePolicy":
                c["maintenancePolicy"] = copy.deepcopy(body.get("maintenancePolicy") or {})

        known = {"setResourceLabels": "SET_LABELS", "setAddons": "UPDATE_CLUSTER",
                 "setLocations": "UPDATE_CLUSTER", "setLogging": "UPDATE_CLUSTER",
                 "setMonitoring": "UPDATE_CLUSTER", "updateMaster": "UPGRADE_MASTER",
                 "setLegacyAbac": "UPDATE_CLUSTER", "setNetworkPolicy": "SET_NETWORK_POLICY",
                 "setMaintenancePolicy": "SET_MAINTENANCE_POLICY"}
        if verb not in known:
            raise self._not_implemented(f"cluster verb {verb}", query, body)
        if verb == "setResourceLabels":
            c = self._cluster(pid, location, cluster)
            fp = body.get("labelFingerprint")
            if fp and fp != c.get("labelFingerprint"):
                raise ApiError(409, "Labels could not be set due to fingerprint mismatch.", "ABORTED")
        return self._cluster_mutation(pid, location, cluster, known[verb], apply)

    def gke_list_nodepools(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        self._cluster(pid, location, cluster)
        pools = [self._render_nodepool(p) for k, p in self.state.nodepools.items()
                 if k[:3] == (pid, location, cluster)]
        return {"nodePools": pools} if pools else {}

    def gke_get_nodepool(self, query, body, project, location, cluster, nodepool, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        return self._render_nodepool(self._nodepool(pid, location, cluster, nodepool))

    def gke_create_nodepool(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        c = self._cluster(pid, location, cluster)
        spec = body.get("nodePool") or {}
        name = spec.get("name")
        if not name:
            raise ApiError(400, "NodePool.name must be specified.", "INVALID_ARGUMENT")
        ckey = (pid, location, cluster)
        key = ckey + (name,)
        if key in self.state.nodepools:
            raise ApiError(409, f"Already exists: projects/{pid}/locations/{location}/clusters/"
                           f"{cluster}/nodePools/{name}.", "ALREADY_EXISTS")
        self._cluster_busy(ckey)
        np_ = self._new_nodepool(c, spec)
        np_["_explicit"] = sorted((spec.get("config") or {}).keys())
        self.state.nodepools[key] = np_

        def ok():
            np_["status"] = "RUNNING"

        def failed(error):
            np_["status"] = "ERROR"
            np_["statusMessage"] = error["message"]

        return self._gke_op(pid, location, "CREATE_NODE_POOL", np_["selfLink"], ckey, "POST",
                            self._cur_path, ok, failed)

    def gke_delete_nodepool(self, query, body, project, location, cluster, nodepool,
                            kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        np_ = self._nodepool(pid, location, cluster, nodepool)
        ckey = (pid, location, cluster)
        self._cluster_busy(ckey)
        np_["status"] = "STOPPING"

        def ok():
            self.state.nodepools.pop(ckey + (nodepool,), None)

        def failed(error):
            np_["status"] = "ERROR"

        return self._gke_op(pid, location, "DELETE_NODE_POOL", np_["selfLink"], ckey, "DELETE",
                            self._cur_path, ok, failed)

    def _nodepool_mutation(self, pid, location, cluster, nodepool, op_type, apply, method):
        np_ = self._nodepool(pid, location, cluster, nodepool)
        ckey = (pid, location, cluster)
        self._cluster_busy(ckey)
        prev = np_.get("status", "RUNNING")
        np_["status"] = "RECONCILING"

        def ok():
            apply(np_)
            np_["status"] = "RUNNING" if prev in ("RECONCILING", "PROVISIONING") else prev
            np_["etag"] = uuid.uuid4().hex[:8]

        def failed(error):
            np_["status"] = prev

        return self._gke_op(pid, location, op_type, np_["selfLink"], ckey, method, self._cur_path,
                            ok, failed)

    def gke_update_nodepool(self, query, body, project, location, cluster, nodepool,
                            kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        upd = {k: v for k, v in body.items()
               if k not in ("name", "projectId", "zone", "clusterId", "nodePoolId") and v is not None}
        if not upd:
            raise ApiError(400, "No update specified.", "INVALID_ARGUMENT")
        c = self._cluster(pid, location, cluster)

        def apply(np_):
            cfg = np_.setdefault("config", {})
            explicit = set(np_.get("_explicit", ()))
            for field, value in upd.items():
                if field == "nodeVersion":
                    np_["version"] = value if value not in ("latest", "-") else c["currentMasterVersion"]
                elif field == "locations":
                    np_["locations"] = list(value)
                elif field == "labels":
                    cfg["labels"] = dict((value or {}).get("labels") or {})
                elif field == "resourceLabels":
                    cfg["resourceLabels"] = dict((value or {}).get("labels") or {})
                elif field == "taints":
                    cfg["taints"] = copy.deepcopy((value or {}).get("taints") or [])
                elif field == "tags":
                    cfg["tags"] = list((value or {}).get("tags") or [])
                elif field == "resourceManagerTags":
                    cfg["resourceManagerTags"] = copy.deepcopy(value)
                elif field == "upgradeSettings":
                    deep_merge(np_.setdefault("upgradeSettings", {}), value)
                elif field in ("workloadMetadataConfig", "gcfsConfig", "gvnic", "kubeletConfig",
                               "linuxNodeConfig", "loggingConfig", "confidentialNodes",
                               "windowsNodeConfig", "fastSocket", "containerdConfig",
                               "machineType", "diskSizeGb", "diskType", "imageType", "accelerators",
                               "storagePools", "maxRunDuration", "flexStart", "queuedProvisioning"):
                    cfg[field] = copy.deepcopy(value)
                    explicit.add(field)
                else:
                    cfg[field] = copy.deepcopy(value)
            np_["_explicit"] = sorted(explicit)

        return self._nodepool_mutation(pid, location, cluster, nodepool, "UPGRADE_NODES", apply, "PUT")

    def gke_nodepool_verb(self, query, body, project, location, cluster, nodepool, verb,
                          kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        verb = {"autoscaling": "setAutoscaling", "setManagement": "setManagement",
                "update": "update"}.get(verb, verb)
        if verb == "update":  # zones style POST .../nodePools/N/update
            return self.gke_update_nodepool(query, body, project, location, cluster, nodepool)
        if verb == "setSize":
            count = int(body.get("nodeCount", 0))

            def apply(np_):
                np_["_nodeCount"] = count * max(1, len(np_.get("locations") or [None]))
            return self._nodepool_mutation(pid, location, cluster, nodepool, "SET_NODE_POOL_SIZE",
                                           apply, "POST")
        if verb == "setAutoscaling":
            return self._nodepool_mutation(
                pid, location, cluster, nodepool, "UPDATE_CLUSTER",
                lambda np_: np_.__setitem__("autoscaling", copy.deepcopy(body.get("autoscaling") or {})),
                "POST")
        if verb == "setManagement":
            return self._nodepool_mutation(
                pid, location, cluster, nodepool, "SET_NODE_POOL_MANAGEMENT",
                lambda np_: np_.__setitem__("management", copy.deepcopy(body.get("management") or {})),
                "POST")
        raise self._not_implemented(f"node pool verb {verb}", query, body)

    def gke_get_operation(self, query, body, project, location, operation, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        for k in ("locations", "zones"):
            name = f"projects/{pid}/{k}/{location}/operations/{operation}"
            if name in self.state.operations:
                return self._poll(name).render()
        raise ApiError(404, f"Not found: operation {operation}.", "NOT_FOUND")

    def gke_list_operations(self, query, body, project, location, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        ops = [op.render() for op in self.state.operations.values()
               if op.kind == "container" and op.project == pid and location in ("-", op.location)]
        return {"operations": ops}
