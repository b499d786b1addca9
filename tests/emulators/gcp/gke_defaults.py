"""What GKE stores for a new cluster or node pool: every field it fills in when the create body leaves it
out (versions from the release channel, network, endpoints, addons, node config)."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import uuid

from .proto import deep_merge, now

# Versions a release channel hands out (the rapid one is new enough for Ironwood/tpu7x:
# >= 1.34.0-gke.2201000).
CHANNEL_VERSIONS = {
    "RAPID": "1.34.1-gke.1829001",
    "REGULAR": "1.33.5-gke.1308000",
    "STABLE": "1.33.4-gke.1172000",
    "EXTENDED": "1.32.9-gke.1108000",
}

FAKE_CA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\n"
    + base64.encodebytes(b"gcp-emulator fake cluster CA, not a real certificate " * 4)
    + b"-----END CERTIFICATE-----\n"
).decode()


def is_zone(location: str) -> bool:
    return bool(re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", location))


def channel_version(versions: dict, channel: str | None) -> str:
    return versions.get(channel or "REGULAR", versions["REGULAR"])


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:4])


def new_cluster(project: str, location: str, body: dict, *, number: str, endpoint: str, versions: dict,
                link) -> dict:
    """A cluster as GKE stores it when ``body`` creates it (``link(project, location, *path)``: a selfLink)."""
    name = body["name"]
    channel = (body.get("releaseChannel") or {}).get("channel") or "REGULAR"
    version = body.get("initialClusterVersion")
    if not version or version in ("latest", "-"):
        version = channel_version(versions, channel)
    locations = body.get("locations") or (
        [location] if is_zone(location) else [f"{location}-a", f"{location}-b", f"{location}-c"])
    network = body.get("network") or "default"
    subnetwork = body.get("subnetwork") or "default"
    region = location[:-2] if is_zone(location) else location
    cluster_id = hashlib.sha256(f"{project}/{location}/{name}".encode()).hexdigest()[:32]
    cluster = copy.deepcopy(body)
    cluster["_project"] = project
    cluster.pop("nodePools", None)
    cluster.pop("initialNodeCount", None)
    cluster.pop("nodeConfig", None)
    defaults = {
        "name": name,
        "location": location,
        "zone": location,
        "locations": locations,
        "selfLink": link(project, location, "clusters", name),
        "id": cluster_id,
        "createTime": now(),
        "status": "PROVISIONING",
        "endpoint": endpoint,
        "initialClusterVersion": version,
        "currentMasterVersion": version,
        "currentNodeVersion": version,
        "masterAuth": {"clusterCaCertificate": FAKE_CA},
        "network": network,
        "subnetwork": subnetwork,
        "clusterIpv4Cidr": "10.8.0.0/14",
        "servicesIpv4Cidr": "34.118.224.0/20",
        "loggingService": "logging.googleapis.com/kubernetes",
        "monitoringService": "monitoring.googleapis.com/kubernetes",
        "addonsConfig": {
            "httpLoadBalancing": {},
            "horizontalPodAutoscaling": {},
            "kubernetesDashboard": {"disabled": True},
            "networkPolicyConfig": {"disabled": True},
            "gcePersistentDiskCsiDriverConfig": {"enabled": True},
            "dnsCacheConfig": {},
        },
        "networkConfig": {
            "network": f"projects/{project}/global/networks/{network}",
            "subnetwork": f"projects/{project}/regions/{region}/subnetworks/{subnetwork}",
            "defaultSnatStatus": {},
            "serviceExternalIpsConfig": {},
            "datapathProvider": "LEGACY_DATAPATH",
        },
        "ipAllocationPolicy": {"useIpAliases": True, "stackType": "IPV4"},
        # Every cluster has a DNS endpoint; user traffic may use it only with allowExternalTraffic
        # (`--enable-dns-access`). The IP endpoints stay enabled unless `--no-enable-ip-access`.
        "controlPlaneEndpointsConfig": {
            "dnsEndpointConfig": {
                "endpoint": f"gke-{cluster_id}-{number}.{location}.gke.goog"},
            "ipEndpointsConfig": {"enabled": True, "enablePublicEndpoint": True,
                                  "publicEndpoint": endpoint},
        },
        "releaseChannel": {"channel": channel},
        "resourceLabels": {},
        "labelFingerprint": "a9dc16a7",
        "nodePoolDefaults": {"nodeConfigDefaults": {"loggingConfig": {
            "variantConfig": {"variant": "DEFAULT"}}}},
        "legacyAbac": {},
        "shieldedNodes": {"enabled": True},
        "databaseEncryption": {"state": "DECRYPTED"},
        "etag": uuid.uuid4().hex[:8],
    }
    return deep_merge(defaults, {k: v for k, v in cluster.items() if v is not None})


def new_nodepool(cluster: dict, body: dict, *, versions: dict, link, url: str) -> dict:
    """A node pool of ``cluster`` as GKE stores it when ``body`` creates it."""
    project = cluster["_project"]
    location = cluster["location"]
    name = body["name"]
    config = {
        "machineType": "e2-medium",
        "diskSizeGb": 100,
        "diskType": "pd-balanced",
        "imageType": "COS_CONTAINERD",
        "serviceAccount": "default",
        "oauthScopes": ["https://www.googleapis.com/auth/devstorage.read_only",
                        "https://www.googleapis.com/auth/logging.write",
                        "https://www.googleapis.com/auth/monitoring",
                        "https://www.googleapis.com/auth/service.management.readonly",
                        "https://www.googleapis.com/auth/servicecontrol",
                        "https://www.googleapis.com/auth/trace.append"],
        "metadata": {"disable-legacy-endpoints": "true"},
        "shieldedInstanceConfig": {"enableIntegrityMonitoring": True},
    }
    if (cluster.get("workloadIdentityConfig") or {}).get("workloadPool"):
        config["workloadMetadataConfig"] = {"mode": "GKE_METADATA"}
    gcfs = (((cluster.get("nodePoolDefaults") or {}).get("nodeConfigDefaults") or {})
            .get("gcfsConfig"))
    if gcfs:
        config["gcfsConfig"] = copy.deepcopy(gcfs)
    deep_merge(config, body.get("config") or {})
    version = body.get("version")
    if not version or version in ("latest", "-"):
        # GKE gives a new pool its channel's default version, never newer than the control plane:
        # it can be older than the control plane (what Ironwood pools trip over).
        channel = (cluster.get("releaseChannel") or {}).get("channel")
        version = channel_version(versions, channel)
        master = cluster.get("currentMasterVersion")
        if master and _version_key(master) < _version_key(version):
            version = master
    count = int(body.get("initialNodeCount", 3 if body.get("autoscaling") is None else 0) or 0)
    pool = copy.deepcopy(body)
    pool.pop("config", None)
    defaults = {
        "name": name,
        "config": config,
        "initialNodeCount": count,
        "locations": list(cluster.get("locations") or [location]),
        "selfLink": link(project, location, "clusters", cluster["name"], "nodePools", name),
        "version": version,
        "instanceGroupUrls": [],
        "status": "PROVISIONING",
        "management": {"autoUpgrade": True, "autoRepair": True},
        "maxPodsConstraint": {"maxPodsPerNode": "110"},
        "podIpv4CidrSize": 24,
        "upgradeSettings": {"maxSurge": 1, "strategy": "SURGE"},
        "networkConfig": {"podRange": "gke-pods", "podIpv4CidrBlock": "10.8.0.0/14"},
        "etag": uuid.uuid4().hex[:8],
    }
    pool = deep_merge(defaults, {k: v for k, v in pool.items() if v is not None})
    pool["version"] = version
    pool["_nodeCount"] = count * max(1, len(pool["locations"]))
    igm_zones = pool["locations"]
    pool["instanceGroupUrls"] = [
        f"{url}compute/v1/projects/{project}/zones/{z}/instanceGroupManagers/"
        f"gke-{cluster['name'][:15]}-{name[:15]}-{uuid.uuid4().hex[:8]}-grp" for z in igm_zones]
    return pool
