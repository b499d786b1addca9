"""Settings: one validated object per run, built in one pass that reports every problem at once.

Layers, later wins: built-in defaults ← env/<name>.yaml ← GPTOSS_* environment variables ← task
flags (--set key.path=value and the tasks' own flags). Bad input stops here with exit status 2, each
problem naming its origin (file and line, variable or flag), the key, what is allowed and the fix,
before anything reaches the cloud.

The module reads top to bottom:

* **Rules** — one function per kind of name or value (GCP, Kubernetes, paths, images), each with the
  sentence that says what is allowed. Fields use them through ``Annotated`` types.
* **Models** — the settings schema. Field checks use the rules; nothing here touches the disk, so the
  remote staging host can validate the same object again.
* **Rules between keys** — checks that read several keys (zone in region, node counts against the
  catalogue, model context): one function each, registered with the keys it reads.
* **Loading** — untrusted YAML read safely, environment variables, --set, origins.
* **Task checks** — what only some tasks need (project, bucket, placeholders refused outside dry-run).
"""

from __future__ import annotations

import copy
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from gptoss_gke.errors import DEBUG_VARIABLE, ConfigError, Problem
from gptoss_gke.flags import did_you_mean
from gptoss_gke.targets import CATALOGUE, Target

ENV_PREFIX = "GPTOSS_"
ENV_SELECT = "GPTOSS_ENV"  # which env/<name>.yaml
ENV_DIR = "GPTOSS_ENV_DIR"  # where env files live (default: ./env next to tasks.py)
NOT_SETTINGS = (ENV_SELECT, ENV_DIR, DEBUG_VARIABLE)
DEFAULT_ENV = "dev"
DEFAULT_KUBECONFIG = "~/.kube/config"
EXAMPLE_PROJECT = "example-project"
README = "env/README.md documents every key"


# =============================================================================================
# Rules: one function per kind of name or value. Each returns None when the value is valid, or
# what is wrong with it; `allowed` says in one sentence what would be accepted.


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], str | None]
    allowed: str

    def __call__(self, value: Any) -> str | None:
        return self.check(value)

    def validator(self, value: Any) -> Any:
        """For pydantic: raise the rule's problem (None passes through: "not set")."""
        if value is not None:
            problem = self.check(value)
            if problem:
                raise PydanticCustomError("rule", "{problem}", {"problem": problem, "allowed": self.allowed})
        return value


def rule(allowed: str):
    def make(check: Callable[[Any], str | None]) -> Rule:
        return Rule(check, allowed)

    return make


def checked(base: Any, r: Rule) -> Any:
    return Annotated[base, AfterValidator(r.validator)]


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@rule("6-30 characters: lowercase letters, digits and '-', starting with a letter and not ending with '-', "
      "without 'google', 'null', 'undefined' or 'ssl' (a domain-scoped ID is example.com:my-project)")
def project_id(v: str) -> str | None:
    domain, _, name = v.rpartition(":")
    if domain and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+", domain):
        return "has a domain prefix that is not a domain name"
    if not re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", name):
        return "is not a project ID"
    for word in ("google", "null", "undefined", "ssl"):
        if word in name:
            return f"contains the restricted word '{word}'"
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@rule("3-63 characters (up to 222 with dots, at most 63 between dots): lowercase letters, digits, '-', '_' "
      "and '.', starting and ending with a letter or digit; not an IP address, not starting with 'goog', "
      "and not containing 'google' or a look-alike such as 'g00gle'")
def bucket_name(v: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9._-]+", v):
        return "has characters other than lowercase letters, digits, '-', '_' and '.'"
    if not (v[0].isalnum() and v[-1].isalnum()):
        return "does not start and end with a letter or digit"
    if "." in v:
        if len(v) > 222 or len(v) < 3:
            return f"is {len(v)} characters long"
        if any(not part or len(part) > 63 for part in v.split(".")):
            return "has an empty part or a part longer than 63 characters between dots"
    elif not 3 <= len(v) <= 63:
        return f"is {len(v)} characters long"
    if _is_ip(v):
        return "is an IP address"
    if v.startswith("goog"):
        return "starts with 'goog' (reserved by Google)"
    if re.search(r"g[o0][o0]g[l1][e3]", v):
        return "contains 'google' or a look-alike (reserved by Google)"
    return None


@rule("1-40 characters: lowercase letters, digits and '-', starting with a letter and not ending with '-'")
def gke_name(v: str) -> str | None:
    return None if re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", v) else "is not a GKE name"


@rule("1-63 characters: lowercase letters, digits and '-', starting with a letter and not ending with '-'")
def gcp_resource_name(v: str) -> str | None:
    """Compute Engine and Artifact Registry resource names (RFC 1035)."""
    return None if re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", v) else "is not a resource name"


def _gcp_label_chars(v: str) -> bool:
    return all(c.isdigit() or c in "_-" or (c.isalpha() and c == c.lower()) for c in v)


@rule("1-63 characters: lowercase letters, digits, '_' and '-', starting with a lowercase letter")
def gcp_label_key(v: str) -> str | None:
    if not 1 <= len(v) <= 63 or not _gcp_label_chars(v) or not (v[0].isalpha() and v[0] == v[0].lower()):
        return "is not a GCP label key"
    return None


@rule("at most 63 characters: lowercase letters, digits, '_' and '-' (GCP label values are lowercase)")
def gcp_label_value(v: str) -> str | None:
    if len(v) > 63 or not _gcp_label_chars(v):
        return "is not a GCP label value"
    return None


@rule("an optional DNS prefix and '/', then 1-63 characters: letters, digits, '-', '_' and '.', starting and "
      "ending with a letter or digit (e.g. team or example.com/team)")
def kube_label_key(v: str) -> str | None:
    prefix, _, name = v.rpartition("/")
    if prefix and dns_subdomain(prefix):
        return "has a prefix that is not a DNS subdomain"
    if len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return "is not a Kubernetes label key"
    return None


@rule("at most 63 characters: letters, digits, '-', '_' and '.', starting and ending with a letter or digit "
      "(or empty)")
def kube_label_value(v: str) -> str | None:
    if v and (len(v) > 63 or not _QUALIFIED_NAME.match(v)):
        return "is not a Kubernetes label value"
    return None


@rule("a DNS-1123 label: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")
def dns_label(v: str) -> str | None:
    return None if len(v) <= 63 and _DNS_LABEL.match(v) else "is not a DNS-1123 label"


@rule("a DNS-1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters, digits and '-'")
def dns_subdomain(v: str) -> str | None:
    if not 1 <= len(v) <= 253 or not all(_DNS_LABEL.match(p) and len(p) <= 63 for p in v.split(".")):
        return "is not a DNS-1123 subdomain"
    return None


@rule("a DNS-1123 label (lowercase letters, digits and '-'), not default and not starting with kube-")
def namespace_name(v: str) -> str | None:
    if dns_label(v):
        return "is not a DNS-1123 label"
    if v == "default" or v.startswith("kube-"):
        return "is a namespace Kubernetes keeps for itself (teardown deletes the namespace it created)"
    return None


@rule("a DNS name such as gptoss.example.org (a leading '*.' is allowed), not an IP address and without a port")
def ingress_host(v: str) -> str | None:
    if _is_ip(v):
        return "is an IP address (an Ingress host must be a DNS name)"
    return "is not a DNS name" if dns_subdomain(v.removeprefix("*.")) else None


@rule("a region such as us-central1 or europe-west4")
def region_name(v: str) -> str | None:
    return None if _REGION.match(v) else "is not a region"


@rule("a zone such as us-central1-a")
def zone_name(v: str) -> str | None:
    return None if _ZONE.match(v) else "is not a zone"


@rule("a region (us-central1) or a zone (us-central1-a)")
def location_name(v: str) -> str | None:
    return None if _REGION.match(v) or _ZONE.match(v) else "is neither a region nor a zone"


@rule("a machine type such as g2-standard-4, tpu7x-standard-4t or n2-custom-8-32768")
def machine_type(v: str) -> str | None:
    return None if len(v) <= 63 and re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)+", v) else "is not a machine type"


@rule("an accelerator type such as nvidia-l4 or nvidia-h100-80gb")
def accelerator_type(v: str) -> str | None:
    return None if len(v) <= 63 and re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)+", v) else "is not an accelerator type"


@rule("a TPU topology such as 2x2x1 or 4x4")
def tpu_topology(v: str) -> str | None:
    return None if re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*){1,2}", v) else "is not a topology"


_RESERVATION_PATH = re.compile(r"projects/(?P<project>[^/]+)/reservations/(?P<name>[^/]+)"
                               r"(?:/reservationBlocks/(?P<block>[^/]+))?")


@rule("a reservation name (my-reservation) or, for a shared reservation, its path "
      "projects/PROJECT/reservations/NAME (optionally /reservationBlocks/BLOCK)")
def reservation(v: str) -> str | None:
    m = _RESERVATION_PATH.fullmatch(v)
    if m:
        if project_id(m["project"]):
            return "names a project that is not a project ID"
        parts = [m["name"]] + ([m["block"]] if m["block"] else [])
        return "names a reservation that is not a resource name" if any(gcp_resource_name(p) for p in parts) else None
    return None if not gcp_resource_name(v) else "is neither a reservation name nor projects/P/reservations/R"


def reservation_key(value: str, project: str | None) -> str:
    """A reservation as GKE reports it, whichever way it was written: projects/P/reservations/R[/...]."""
    return value if _RESERVATION_PATH.fullmatch(value) else f"projects/{project}/reservations/{value}"


@rule("a 40-character commit hash, or a branch or tag name: letters, digits, '.', '_', '-' and '/', without "
      "'..', '//', a leading '/', '-' or '.', or a trailing '/', '.' or '.lock'")
def revision(v: str) -> str | None:
    if re.fullmatch(r"[0-9a-f]{40}", v):
        return None
    if not 1 <= len(v) <= 255 or not re.fullmatch(r"[A-Za-z0-9._/-]+", v):
        return "is neither a commit hash nor a ref name"
    if ".." in v or "//" in v or v[0] in "/-." or v.endswith(("/", ".", ".lock")) or "/." in v:
        return "is not a safe ref name"
    return None


@rule("a folder inside the bucket: parts of letters, digits, '.', '_' and '-' separated by '/', no '.' or '..' "
      "part and no leading '/' (empty: the bucket's top level)")
def object_prefix(v: str) -> str | None:
    if not v.strip("/"):
        return None if v == "" else "is only '/'; use an empty prefix for the bucket's top level"
    if v.startswith("/"):
        return "starts with '/'"
    parts = v.rstrip("/").split("/")
    if any(p in ("", ".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in parts) or len(v) > 512:
        return "would not stay a plain folder inside the bucket"
    return None


@rule("a file name pattern such as *.safetensors or original/*, relative to the repository (no leading '/', "
      "no '..')")
def file_pattern(v: str) -> str | None:
    if not v or v.startswith("/") or ".." in v.split("/") or "\n" in v:
        return "is not a pattern inside the repository"
    return None


@rule("an image reference such as docker.io/vllm/vllm-openai:v0.12.0 (registry/path:tag or @sha256:digest)")
def image_reference(v: str) -> str | None:
    from gptoss_gke.images import parse_reference

    try:
        parse_reference(v)
    except ValueError as exc:
        return f"is not an image reference: {exc}"
    return None


@rule("a host name or address with an optional port: us-central1-docker.pkg.dev, 127.0.0.1:5000")
def registry_host(v: str) -> str | None:
    host, _, port = v.rpartition(":") if re.search(r":\d+$", v) else (v, "", "")
    if port and not 1 <= int(port) <= 65535:
        return "has a port outside 1-65535"
    if _is_ip(host.strip("[]")) or not dns_subdomain(host.lower()):
        return None
    return "is not a host name"


@rule("an http(s) URL with a host and no user name or password, e.g. https://huggingface.co")
def http_url(v: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        u = urlsplit(v)
        u.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        return "is not a URL"
    if u.scheme not in ("http", "https") or not u.hostname:
        return "is not an http(s) URL"
    if u.username or u.password:
        return "carries a user name or password (use HF_TOKEN or models.hf_token_file for credentials)"
    return None


@rule("an SSH host: a DNS name or an IP address")
def ssh_host(v: str) -> str | None:
    return None if _is_ip(v) or not dns_subdomain(v.lower()) else "is not a host name or address"


@rule("a POSIX user name: lowercase letters, digits, '_' and '-', starting with a letter or '_'")
def user_name(v: str) -> str | None:
    return None if re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", v) else "is not a user name"


@rule("an environment name: 1-63 lowercase letters, digits, '_' and '-', starting and ending with a letter or "
      "digit (it becomes a GCP and Kubernetes label value, which are lowercase)")
def environment_name(v: str) -> str | None:
    if len(v) <= 63 and re.fullmatch(r"[a-z0-9]([-_a-z0-9]*[a-z0-9])?", v):
        return None
    if v.lower() != v and not environment_name(v.lower()):
        return (f"has upper-case letters; label values are lowercase, and two environments must never share "
                f"one (use --env {v.lower()} with env/{v.lower()}.yaml)")
    return "is not an environment name"


@rule("1-128 printable characters")
def printable(v: str) -> str | None:
    return None if 1 <= len(v) <= 128 and v.isprintable() else "is empty or has control characters"


@rule("os/arch[/variant] such as linux/amd64, or all")
def platform(v: str) -> str | None:
    return None if v == "all" or re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", v) else "is not a platform"


# vLLM's own parser (FlexibleArgumentParser) reads --api_key as --api-key and, like argparse, accepts
# an unambiguous prefix such as --api-k; the key must come from the Secret, never argv.
_TOOL_ARGS = {
    "model": "the model path comes from the staged weights",
    "served-model-name": "the served name is the model id clients ask for",
    "host": "the server listens on every pod address",
    "port": "the Service and probes use the target's port",
    "max-model-len": "set targets.<t>.max_model_len instead",
}


def vllm_option(arg: str) -> str | None:
    """The option an argument names as vLLM's parser reads it (--api_key=x → api-key), or None."""
    if not arg.startswith("--") or len(arg) < 3:
        return None
    name = arg[2:].split("=", 1)[0].split(".", 1)[0]
    return name.replace("_", "-")


@rule("vLLM arguments such as --max-num-seqs=8; not --api-key in any spelling (vLLM reads VLLM_API_KEY from "
      "the Secret), and not the ones the tool sets itself (--model, --served-model-name, --host, --port, "
      "--max-model-len)")
def vllm_extra_args(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        option = vllm_option(arg)
        if option is None:
            continue
        if len(option) >= 3 and "api-key".startswith(option):
            # Never echo the argument or the one after it: either may be the key itself.
            return (f"item {i + 1} is vLLM's --api-key (value not shown): it would put the key on the "
                    f"command line")
        if option in _TOOL_ARGS:
            return f"item {i + 1} (--{option}) is set by the tool: {_TOOL_ARGS[option]}"
    return None


# Names of the checked types, for the models below.
ProjectId = checked(str, project_id)
BucketName = checked(str, bucket_name)
GkeName = checked(str, gke_name)
ResourceName = checked(str, gcp_resource_name)
Dns1123Label = checked(str, dns_label)
Dns1123Subdomain = checked(str, dns_subdomain)
Namespace = checked(str, namespace_name)
IngressHost = checked(str, ingress_host)
Region = checked(str, region_name)
Zone = checked(str, zone_name)
Location = checked(str, location_name)
MachineType = checked(str, machine_type)
AcceleratorType = checked(str, accelerator_type)
TpuTopology = checked(str, tpu_topology)
Reservation = checked(str, reservation)
Revision = checked(str, revision)
ObjectPrefix = checked(str, object_prefix)
FilePattern = checked(str, file_pattern)
ImageReference = checked(str, image_reference)
RegistryHost = checked(str, registry_host)
HttpUrl = checked(str, http_url)
SshHost = checked(str, ssh_host)
UserName = checked(str, user_name)
Printable = checked(str, printable)
Platform = checked(str, platform)
VllmArgs = checked(list[str], vllm_extra_args)
GcpLabels = Annotated[dict[checked(str, gcp_label_key), checked(str, gcp_label_value)], Field(max_length=64)]
KubeLabels = dict[checked(str, kube_label_key), checked(str, kube_label_value)]


# =============================================================================================
# Models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


MAX_POOL_NODES = 1000  # GKE's limit per node pool and zone


class NodePoolSettings(_Strict):
    """Overrides of the catalogue's node pool for one target; unset keys keep the catalogue value."""

    name: GkeName | None = None
    machine_type: MachineType | None = None
    accelerator_type: AcceleratorType | None = None
    accelerator_count: int | None = Field(default=None, ge=1, le=16)
    gpu_driver_version: Literal["default", "latest", "disabled"] | None = None
    tpu_topology: TpuTopology | None = None
    min_nodes: int | None = Field(default=None, ge=0, le=MAX_POOL_NODES)
    max_nodes: int | None = Field(default=None, ge=1, le=MAX_POOL_NODES)  # a pool that can never grow serves nothing
    initial_nodes: int | None = Field(default=None, ge=0, le=MAX_POOL_NODES)
    labels: KubeLabels | None = None  # Kubernetes node labels
    spot: bool = False
    reservation: Reservation | None = None  # a specific reservation; its affinity flags are set only then
    node_locations: list[Zone] | None = Field(default=None, min_length=1)  # default: the environment's zone


class TargetSettings(_Strict):
    enabled: bool = True  # setup-cluster --target=all creates node pools for enabled targets
    node_pool: NodePoolSettings = Field(default_factory=NodePoolSettings)
    model_revision: Revision | None = None  # a commit, or a branch resolved to its commit at staging time
    # Which repository files are the weights vLLM loads (Hugging Face patterns; `*` crosses `/`, so
    # exclude the original/ and metal/ copies with ignore patterns rather than relying on allow).
    allow_patterns: list[FilePattern] | None = Field(default=None, min_length=1)
    ignore_patterns: list[FilePattern] | None = None
    image: ImageReference | None = None  # upstream image to mirror
    max_model_len: int | None = Field(default=None, ge=1)  # at most the model's context: a rule below
    vllm_extra_args: VllmArgs = Field(default_factory=list)
    replicas: int = Field(default=1, ge=0, le=100)
    load_timeout_s: int | None = Field(default=None, ge=1, le=24 * 3600)
    expose: Literal["cluster-ip", "load-balancer", "ingress"] = "cluster-ip"
    ingress_host: IngressHost | None = None
    pvc_size_gi: int = Field(default=60, ge=1, le=65536)  # l4 model cache; at least the weights: a rule below
    storage_class: Dns1123Subdomain = "standard-rwo"


class ClusterSettings(_Strict):
    name: GkeName = "gptoss"
    location: Location | None = None  # a region (regional cluster) or a zone (zonal); default: region
    # Unset: rapid when we create the cluster (Ironwood's versions arrive there first), and an existing
    # cluster keeps the channel its owner chose (a channel change can trigger upgrades).
    release_channel: Literal["rapid", "regular", "stable", "extended"] | None = None
    # How kubectl and our clients reach the control plane: its IP endpoint, or GKE's DNS-based endpoint
    # (IAM-checked, works for a control plane without a public IP: no bastion needed).
    control_plane: Literal["ip", "dns"] = "ip"
    initial_nodes: int = Field(default=1, ge=1, le=MAX_POOL_NODES)  # default pool, per zone
    default_machine_type: MachineType = "e2-standard-4"
    image_streaming: bool = True
    create: bool = True  # false: the cluster must already exist (we only update its settings)
    labels: GcpLabels = Field(default_factory=dict)  # GCP labels on a cluster we create


class RegistrySettings(_Strict):
    location: Location | None = None  # default: region
    repository: ResourceName = "gptoss"
    mode: Literal["copy", "remote"] = "copy"  # copy with skopeo, or an AR remote repo on Docker Hub
    platform: Platform = "linux/amd64"  # or "all"
    # The registry host images are pushed to and pinned at. Default (None): <location>-docker.pkg.dev.
    # Set it only for a private mirror or a loopback test registry.
    host: RegistryHost | None = None
    # Verify TLS when skopeo talks to the source and destination registries. false only for a
    # plain-HTTP registry on loopback (tests); never for Artifact Registry or Docker Hub.
    tls_verify: bool = True


class ModelStoreSettings(_Strict):
    bucket: BucketName | None = None  # required for targets served from a bucket (ironwood)
    location: Location | None = None  # default: region
    prefix: ObjectPrefix = "models"  # objects go to <prefix>/<model id>/<revision>/
    hf_token_file: str | None = None  # a file holding the HF token (else HF_TOKEN in the environment)
    workers: int = Field(default=8, ge=1, le=64)
    chunk_mib: int = Field(default=64, ge=8, le=1024)
    max_temp_gib: float = Field(default=8.0, gt=0, le=1024)
    temp_dir: str | None = None
    hf_endpoint: HttpUrl | None = None  # the Hugging Face Hub (or a mirror); HF_ENDPOINT in the environment wins


class KubeSettings(_Strict):
    kubeconfig: str | None = None  # default: the first file in $KUBECONFIG, else ~/.kube/config (as kubectl)
    context: Printable | None = None  # default: the context get-credentials writes
    namespace: Namespace = "gptoss"
    service_account: Dns1123Subdomain = "vllm"
    api_key_secret: Dns1123Subdomain = "vllm-api-key"
    field_manager: Printable = "gptoss-gke"
    poll_interval_s: float = Field(default=5.0, gt=0, le=300)  # how often rollout waits look again


class RemoteSettings(_Strict):
    host: SshHost | None = None
    user: UserName | None = None
    port: int = Field(default=22, ge=1, le=65535)
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_keys: bool = True  # false: trust an unknown host on first use (recorded); a changed key still refuses
    python: Printable = "python3"  # the remote interpreter that runs shipped steps (a virtualenv's python, say)
    connect_timeout_s: float = Field(default=15.0, gt=0, le=600)


class RetrySettings(_Strict):
    attempts: int = Field(default=5, ge=1, le=20)
    base_delay_s: float = Field(default=1.0, ge=0, le=60)
    max_delay_s: float = Field(default=20.0, ge=0, le=600)


class Price(_Strict):
    on_demand: float = Field(ge=0)
    spot: float | None = Field(default=None, ge=0)


def _default_prices() -> dict[str, Price]:
    # USD per node-hour for g2-standard-4 in us-central1 (the L4 tutorial quotes ~$0.70 and ~$0.21).
    # Add your own per environment (prices: {machine type: {on_demand, spot}}); TPU v7 pricing is
    # contract-specific, so no default is shipped for it.
    return {"g2-standard-4": Price(on_demand=0.7068, spot=0.2121)}


# Labels the tool puts on everything it creates; teardown trusts them, so settings cannot redefine them.
OWNERSHIP_KEYS = ("app.kubernetes.io/managed-by", "gptoss-gke/env", "gptoss-gke/target")


class Settings(_Strict):
    project: ProjectId | None = None
    region: Region = "us-central1"
    zone: Zone = "us-central1-a"
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    models: ModelStoreSettings = Field(default_factory=ModelStoreSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    targets: dict[str, TargetSettings] = Field(default_factory=dict)
    prices: dict[MachineType, Price] = Field(default_factory=_default_prices)
    labels: KubeLabels = Field(default_factory=dict)  # added to every Kubernetes object we create

    # Not settable from files: filled by the loader.
    env_name: str = Field(default=DEFAULT_ENV, exclude=True)
    env_file: str | None = Field(default=None, exclude=True)
    hf_token: SecretStr | None = Field(default=None, exclude=True)
    _origins: dict[tuple, str] = PrivateAttr(default_factory=dict)
    _kubeconfig_source: str = PrivateAttr(default="kube.kubeconfig")
    _failed: list[tuple] = PrivateAttr(default_factory=list)  # keys refused by the loader (back to defaults)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v):
        for name in v:
            if name not in CATALOGUE:
                raise _LocatedError(("targets", name), f"unknown target '{name}'{did_you_mean(name, CATALOGUE)}",
                                    f"one of: {', '.join(CATALOGUE)}")
        return v

    @field_validator("labels")
    @classmethod
    def _not_ownership(cls, v):
        for key in v:
            if key in OWNERSHIP_KEYS:
                raise _LocatedError(("labels", key), "is one of the ownership labels the tool sets itself "
                                    "(teardown trusts them)", f"any label key except {', '.join(OWNERSHIP_KEYS)}")
        return v

    # ---- derived values: one place, so every step agrees ----
    @property
    def cluster_location(self) -> str:
        return self.cluster.location or self.region

    @property
    def cluster_is_regional(self) -> bool:
        return not _ZONE.match(self.cluster_location)

    @property
    def registry_location(self) -> str:
        return self.registry.location or self.region

    @property
    def bucket_location(self) -> str:
        return (self.models.location or self.region).upper()

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"

    @property
    def kube_context(self) -> str:
        return self.kube.context or f"gke_{self.project}_{self.cluster_location}_{self.cluster.name}"

    @property
    def kubeconfig_path(self) -> str:
        return os.path.expanduser(self.kube.kubeconfig or DEFAULT_KUBECONFIG)

    @property
    def kubeconfig_shown(self) -> str:
        """The kubeconfig and why that one: "~/.kube/config", "/tmp/k (from $KUBECONFIG)"."""
        path = self.kube.kubeconfig or DEFAULT_KUBECONFIG
        return path if self._kubeconfig_source == "kube.kubeconfig" else f"{path} (from {self._kubeconfig_source})"

    @property
    def ownership_labels(self) -> dict[str, str]:
        """Who created an object: this tool, for this environment. Teardown selects on exactly these;
        user ``labels`` are added beside them (object_labels) but never decide ownership."""
        from gptoss_gke import TOOL_NAME
        from gptoss_gke.ownership import ENV, MANAGED_BY

        return {MANAGED_BY: TOOL_NAME, ENV: self.env_name}

    @property
    def object_labels(self) -> dict[str, str]:
        """What every Kubernetes object we create carries: the user's labels, then ours (ours win)."""
        return {**self.labels, **self.ownership_labels}

    @property
    def gcp_labels(self) -> dict[str, str]:
        """The same ownership, spelled the way GCP labels allow (no '/' or '.')."""
        from gptoss_gke import TOOL_NAME
        from gptoss_gke.ownership import GCP_ENV, GCP_MANAGED_BY

        return {GCP_MANAGED_BY: TOOL_NAME, GCP_ENV: self.env_name}

    def origin(self, loc: tuple) -> str:
        """Where a key's value came from: "env/dev.yaml:12", "environment variable GPTOSS_ZONE", "defaults"."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self._origins:
                return self._origins[loc[:n]]
        return "defaults"

    def target(self, name: str) -> Target:
        base = CATALOGUE[name]
        t = self.targets.get(name, TargetSettings())
        pool = t.node_pool.model_dump(exclude={"spot", "reservation", "node_locations"})
        if pool.get("labels") is not None:
            pool["labels"] = {**base.node_pool.labels, **pool["labels"]}
        patterns = {k: tuple(v) for k, v in (("allow_patterns", t.allow_patterns),
                                                ("ignore_patterns", t.ignore_patterns)) if v is not None}
        return base.with_overrides(model_revision=t.model_revision, image=t.image, **patterns,
                                   max_model_len=t.max_model_len, load_budget_s=t.load_timeout_s,
                                   node_pool=pool)

    def hourly_price(self, machine_type: str, *, spot: bool = False) -> float | None:
        """USD per node-hour from ``prices.<machine type>``; None when not known (never guessed)."""
        price = self.prices.get(machine_type)
        if price is None:
            return None
        return price.spot if spot else price.on_demand

    def target_settings(self, name: str) -> TargetSettings:
        return self.targets.get(name, TargetSettings())

    def enabled_targets(self) -> list[str]:
        return [n for n in CATALOGUE if self.target_settings(n).enabled]

    def node_locations(self, name: str) -> list[str]:
        return self.target_settings(name).node_pool.node_locations or [self.zone]


class _LocatedError(ValueError):
    """A check that knows which key it is about (and what is allowed there)."""

    def __init__(self, loc: tuple, message: str, allowed: str = ""):
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.allowed = allowed


# =============================================================================================
# Rules between keys. Each reads the keys it is registered with; when one of those failed its own
# check, the rule is not run (its input cannot be trusted). Each yields (key path, problem, allowed).

_CROSS_RULES: list[tuple[tuple[tuple, ...], Callable[[Settings], Iterable[tuple[tuple, str, str]]]]] = []


def reads(*keys: str):
    def register(fn):
        _CROSS_RULES.append((tuple(tuple(k.split(".")) for k in keys), fn))
        return fn

    return register


@reads("zone", "region", "cluster.location", "targets")
def _locations_in_region(s: Settings):
    region = s.region
    if not s.zone.startswith(region + "-"):
        yield ("zone",), f"zone {s.zone} is not in region {region}", f"a zone of {region}, e.g. {region}-a"
    loc = s.cluster.location
    if loc and loc != region and not (loc.startswith(region + "-") and _ZONE.match(loc)):
        yield (("cluster", "location"), f"cluster location {loc} is neither region {region} nor one of its zones",
               f"{region} or one of its zones")
    for name, t in s.targets.items():
        for z in t.node_pool.node_locations or []:
            if not z.startswith(region + "-"):
                yield (("targets", name, "node_pool", "node_locations"),
                       f"node location {z} is not a zone of region {region}", f"zones of {region}")


@reads("targets")
def _node_counts(s: Settings):
    for name in s.targets:
        p = s.target(name).node_pool
        loc = ("targets", name, "node_pool")
        if p.min_nodes > p.max_nodes:
            yield loc + ("min_nodes",), f"min_nodes ({p.min_nodes}) is greater than max_nodes ({p.max_nodes})", \
                "min_nodes <= max_nodes"
        if p.initial_nodes > p.max_nodes:
            yield loc + ("initial_nodes",), (f"initial_nodes ({p.initial_nodes}) is greater than max_nodes "
                                              f"({p.max_nodes})"), "initial_nodes <= max_nodes"


# Accelerators per machine type: GPU machine families carry a fixed type and count (the count is the
# "-Ng" suffix on a2/a3/a4); TPU machine types end in "-<chips>t"; g2 follows its own table.
_G2_GPUS = {"4": 1, "8": 1, "12": 1, "16": 1, "24": 2, "32": 1, "48": 4, "96": 8}
_GPU_FAMILIES = {"a2-highgpu": "nvidia-tesla-a100", "a2-megagpu": "nvidia-tesla-a100",
                 "a2-ultragpu": "nvidia-a100-80gb", "a3-highgpu": "nvidia-h100-80gb",
                 "a3-edgegpu": "nvidia-h100-80gb", "a3-megagpu": "nvidia-h100-mega-80gb",
                 "a3-ultragpu": "nvidia-h200-141gb", "a4-highgpu": "nvidia-b200"}
_ATTACHABLE = {"nvidia-tesla-t4": (1, 2, 4), "nvidia-tesla-v100": (1, 2, 4, 8), "nvidia-tesla-p4": (1, 2, 4),
               "nvidia-tesla-p100": (1, 2, 4)}  # n1 machine types


def machine_accelerators(machine: str) -> tuple[str | None, tuple[int, ...]] | None:
    """(accelerator type, counts allowed) a machine type takes, or None when we do not know the family."""
    m = re.fullmatch(r"g2-standard-(\d+)", machine)
    if m:
        return ("nvidia-l4", (_G2_GPUS[m[1]],)) if m[1] in _G2_GPUS else None
    for family, gpu in _GPU_FAMILIES.items():
        m = re.fullmatch(rf"{family}-(\d+)g", machine)
        if m:
            return gpu, (int(m[1]),)
    m = re.fullmatch(r"(tpu7x|ct\d+[a-z]*)-[a-z]+-(\d+)t", machine)
    if m:
        return None, (int(m[2]),)
    if re.match(r"(e2|n2|n2d|c2|c2d|c3|c3d|c4|t2d|t2a|m1|m2|m3)-", machine):
        return None, ()
    return None


@reads("targets")
def _accelerators_fit_machine(s: Settings):
    for name in s.targets:
        p = s.target(name).node_pool
        loc = ("targets", name, "node_pool")
        known = machine_accelerators(p.machine_type)
        if p.machine_type.startswith("n1-") and p.accelerator_type:
            counts = _ATTACHABLE.get(p.accelerator_type)
            if counts and p.accelerator_count not in counts:
                yield loc + ("accelerator_count",), (f"{p.accelerator_type} attaches to {p.machine_type} in "
                                                      f"counts of {counts}, not {p.accelerator_count}"), \
                    f"accelerator_count one of {counts}"
            continue
        if known is None:
            continue
        gpu, counts = known
        if not counts and p.accelerator_type:
            yield loc + ("accelerator_type",), f"{p.machine_type} takes no accelerator", \
                "a GPU machine type (g2, a2, a3, a4, n1) for accelerator_type"
        elif counts and p.accelerator_count not in counts:
            yield loc + ("accelerator_count",), (f"{p.machine_type} has {counts[0]} "
                                                  f"{'chip(s)' if gpu is None else gpu}, not {p.accelerator_count}"), \
                f"accelerator_count: {counts[0]}"
        if gpu and p.accelerator_type and p.accelerator_type != gpu:
            yield loc + ("accelerator_type",), f"{p.machine_type} comes with {gpu}, not {p.accelerator_type}", \
                f"accelerator_type: {gpu}"


@reads("targets", "zone")
def _replicas_fit_pool(s: Settings):
    for name, t in s.targets.items():
        p = s.target(name).node_pool
        capacity = p.max_nodes * len(s.node_locations(name))
        if t.replicas > capacity:
            yield (("targets", name, "replicas"),
                   f"{t.replicas} replicas need {t.replicas} nodes (one accelerator node each); the pool grows to "
                   f"{capacity}", f"replicas <= node_pool.max_nodes x zones ({capacity}), or raise max_nodes")


def model_context(model_id: str) -> int | None:
    """The longest request the model supports (from its config.json in the catalogue)."""
    from gptoss_gke.serving.capacity import ModelShape, catalogue_model_ids, load_catalogue_config

    if model_id not in catalogue_model_ids():
        return None
    return ModelShape.from_hf_config(load_catalogue_config(model_id)).derived_max_model_len


@reads("targets")
def _lengths_fit_model(s: Settings):
    for name, t in s.targets.items():
        target = s.target(name)
        limit = model_context(target.model_id)
        if t.max_model_len and limit and t.max_model_len > limit:
            yield (("targets", name, "max_model_len"),
                   f"{t.max_model_len:,} tokens is beyond {target.model_id}'s context of {limit:,} (vLLM refuses to "
                   f"start)", f"at most {limit:,}")
        if target.weights == "pvc":
            need = math.ceil(target.weight_memory_gib) + 2  # the shards plus the downloader's partial file
            if t.pvc_size_gi < need:
                yield (("targets", name, "pvc_size_gi"),
                       f"{t.pvc_size_gi} GiB cannot hold {target.model_id}'s weights (~{target.weight_memory_gib:.1f} "
                       f"GiB)", f"at least {need}")


@reads("targets")
def _ingress_has_host(s: Settings):
    for name, t in s.targets.items():
        if t.expose == "ingress" and not t.ingress_host:
            yield (("targets", name, "ingress_host"), "is required when expose is ingress",
                   "a DNS name such as gptoss.example.org")


@reads("registry.mode", "targets")
def _remote_mode_fronts_docker_hub(s: Settings):
    if s.registry.mode != "remote":
        return
    from gptoss_gke.images import parse_reference

    for name in s.targets:
        ref = parse_reference(s.target(name).image)
        if ref.registry != "docker.io":
            yield (("targets", name, "image"), f"is on {ref.registry}, but registry.mode remote fronts Docker Hub",
                   "a docker.io image, or registry.mode: copy")


@reads("retry")
def _delays_in_order(s: Settings):
    if s.retry.base_delay_s > s.retry.max_delay_s:
        yield (("retry", "base_delay_s"), f"base_delay_s ({s.retry.base_delay_s:g}) is above max_delay_s "
               f"({s.retry.max_delay_s:g})", "base_delay_s <= max_delay_s")


@reads("models")
def _temp_space_holds_a_chunk(s: Settings):
    m = s.models
    if m.max_temp_gib * 1024 < 2 * m.chunk_mib:
        yield (("models", "max_temp_gib"), f"{m.max_temp_gib:g} GiB of temp space cannot hold two "
               f"{m.chunk_mib} MiB chunks", f"at least {2 * m.chunk_mib / 1024:g}")


# =============================================================================================
# Loading: untrusted YAML, environment variables and --set, each value remembering its origin.

MAX_FILE_BYTES = 256 * 1024
MAX_NODES = 20_000  # after expanding aliases: a settings file has a few hundred
MAX_DEPTH = 32

_NULL, _STR, _SEQ, _MAP, _MERGE = ("tag:yaml.org,2002:" + t for t in ("null", "str", "seq", "map", "merge"))


class _SettingsLoader(yaml.SafeLoader):
    """YAML with no implicit typing except null: 010, yes, 1:30 and 2024-01-01 stay text.

    YAML 1.1 (PyYAML) reads 010 as 8, yes as true and 1:30 as 90. Here every plain scalar is text and
    the schema gives it its type, as a person means it: 010 → 10 for a number, yes → true for a
    switch, 0123 stays "0123" for a name.
    """


_SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag in (_NULL, _MERGE)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _YamlProblem(Exception):
    def __init__(self, line: int | None, message: str, fix: str):
        super().__init__(message)
        self.line = line
        self.message = message
        self.fix = fix


def _safe_yaml(text: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML we do not trust; return the data and the line of every key.

    Refused: syntax errors, aliases that recurse or expand beyond MAX_NODES values (bounded time and
    memory), nesting deeper than MAX_DEPTH, keys that are not plain names, duplicate keys, and explicit
    tags (!!int 010 would be octal again).
    """
    loader = _SettingsLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise _YamlProblem(mark.line + 1 if mark else None, f"malformed YAML: {problem}",
                               "fix the syntax at that line (indentation, a missing ':' or quote)") from None
        except RecursionError:
            raise _YamlProblem(None, f"nested more than {MAX_DEPTH} levels deep", "flatten the file") from None
        if root is None:
            return None, {}
        lines = _check_nodes(root)
        return loader.construct_document(root), lines
    finally:
        loader.dispose()


def _check_nodes(root) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    seen = 0
    stack = [(root, (), ())]  # node, key path, ids of the nodes above (to catch an alias to an ancestor)
    while stack:
        node, path, above = stack.pop()
        seen += 1
        line = node.start_mark.line + 1
        if seen > MAX_NODES:
            raise _YamlProblem(line, f"aliases expand to more than {MAX_NODES:,} values",
                               "write the values out; settings need no more than a few hundred")
        if id(node) in above:
            raise _YamlProblem(line, "an alias refers to the value that contains it (a recursive structure)",
                               "remove the alias")
        if len(above) > MAX_DEPTH:
            raise _YamlProblem(line, f"nested more than {MAX_DEPTH} levels deep", "flatten the file")
        if node.tag not in (_NULL, _STR, _SEQ, _MAP):
            raise _YamlProblem(line, f"explicit tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not used in "
                               f"settings", "remove the tag: each key's type comes from the schema")
        inner = above + (id(node),)
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for k, v in node.value:
                if k.tag == _MERGE:
                    stack.append((v, path, inner))
                    continue
                if not isinstance(k, yaml.ScalarNode) or k.tag != _STR or k.value == "":
                    raise _YamlProblem(k.start_mark.line + 1, "a key that is not a plain name (a complex or "
                                       "empty key)", "write keys as plain names: key: value")
                if k.value in keys:
                    raise _YamlProblem(k.start_mark.line + 1, f"{'.'.join(map(str, path + (k.value,)))}: "
                                       f"duplicate key", "keep one of the two entries")
                keys.add(k.value)
                lines.setdefault(path + (k.value,), k.start_mark.line + 1)
                stack.append((v, path + (k.value,), inner))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines.setdefault(path + (i,), v.start_mark.line + 1)
                stack.append((v, path + (i,), inner))
    return lines


def _read_env_file(path: Path, shown: str) -> tuple[dict, dict[tuple, int], list[Problem]]:
    def problem(message: str, fix: str, line: int | None = None) -> tuple[dict, dict, list[Problem]]:
        return {}, {}, [Problem(f"{shown}:{line}" if line else shown, "", message, "", fix)]

    if path.is_dir():
        return problem("is a directory, not a settings file", f"put the settings in {shown} as a YAML file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return problem(f"is {path.stat().st_size:,} bytes; a settings file is a few KB",
                           "point --env / GPTOSS_ENV_DIR at the settings file")
        raw = path.read_bytes()
    except OSError as exc:
        return problem(f"cannot be read: {exc.strerror}", f"make {shown} readable (chmod u+r)")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return problem(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x})", "save the file as UTF-8", line)
    try:
        data, lines = _safe_yaml(text)
    except _YamlProblem as exc:
        return problem(exc.message, exc.fix, exc.line)
    if data is None:
        return {}, {}, []
    if not isinstance(data, dict):
        return problem("the top level must be a mapping of settings", f"see {README}", 1)
    return data, lines, []


@dataclass
class _Layers:
    data: dict = field(default_factory=dict)
    origin: dict[tuple, str] = field(default_factory=dict)  # key path → "env/dev.yaml:12" etc.

    def merge(self, path: tuple, value: Any, origin: str) -> None:
        node = self.data
        for key in path[:-1]:
            nxt = node.get(key)
            if not isinstance(nxt, dict):
                nxt = node[key] = {}
            node = nxt
        node[path[-1]] = value
        self.origin[path] = origin

    def merge_tree(self, tree: dict, origin_of, prefix: tuple = ()) -> None:
        for key, value in tree.items():
            path = prefix + (key,)
            if isinstance(value, dict) and value and not _is_leaf_mapping(path):
                self.origin[path] = origin_of(path)
                self.merge_tree(value, origin_of, path)
            else:
                self.merge(path, value, origin_of(path))

    def where(self, loc: tuple) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.origin:
                return self.origin[loc[:n]]
        return "defaults"


def _is_leaf_mapping(path: tuple) -> bool:
    """Mappings that are values (labels, prices) replace as a whole rather than merge key by key."""
    return path[-1] in ("labels",) or (len(path) == 2 and path[0] == "prices")


def env_dir(default_root: Path | None = None, environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_DIR):
        return Path(environ[ENV_DIR])
    return (default_root or Path.cwd()) / "env"


def _scalar(raw: str, origin: str) -> Any:
    """A value from the environment or --set: a YAML value read like the files ([a, b] → a list), or the
    text itself when it is not YAML."""
    if raw == "":
        return ""
    try:
        value, _ = _safe_yaml(raw)
    except _YamlProblem as exc:
        if exc.message.startswith("malformed"):
            return raw
        raise ConfigError(f"{origin}: {exc.message}", exc.fix) from None
    return value


def _env_overrides(environ: dict[str, str]) -> tuple[list[tuple[tuple, Any, str]], list[Problem]]:
    found, problems = [], []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        origin = f"environment variable {name}"
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        if "" in path:
            problems.append(Problem(origin, "", "has an empty level (levels are separated by exactly two '_')",
                                    "GPTOSS_CLUSTER__NAME for cluster.name", f"rename or unset {name}"))
            continue
        try:
            found.append((path, _scalar(raw, origin), origin))
        except ConfigError as exc:
            problems.append(Problem(origin, ".".join(path), exc.problem.split(": ", 1)[-1], "", exc.fix or ""))
    return found, problems


def _set_overrides(items) -> tuple[list[tuple[tuple, Any, str]], list[Problem]]:
    found, problems = [], []
    for item in items or ():
        if item is True or item is None or "=" not in str(item):
            shown = "" if item is True or item is None else f" {_quote(item)}"
            problems.append(Problem("flag --set", "", f"needs key.path=value{shown and ', got' + shown}",
                                    "key.path=value, e.g. --set cluster.name=gptoss",
                                    "write --set key.path=value (quote the value if it has spaces)"))
            continue
        key, raw = str(item).split("=", 1)
        path = tuple(p.strip() for p in key.strip().split("."))
        origin = f"flag --set {key.strip()}"
        if "" in path:
            problems.append(Problem(origin, "", "has an empty key part", "key.path=value, e.g. --set zone=us-east1-b",
                                    "write the key as dot-separated names"))
            continue
        try:
            found.append((path, _scalar(raw, origin), origin))
        except ConfigError as exc:
            problems.append(Problem(origin, ".".join(path), exc.problem.split(": ", 1)[-1], "", exc.fix or ""))
    return found, problems


def parse_set(items) -> list[tuple[tuple, Any, str]]:
    """--set items as (key path, value, origin); bad items raise ConfigError (all of them at once)."""
    found, problems = _set_overrides(items)
    if problems:
        raise ConfigError.of(problems)
    return found


def read_settings(env: str | None = None, *, root: Path | None = None, environ: dict[str, str] | None = None,
                  overrides: list[tuple[tuple, Any, str]] | None = None,
                  sets=()) -> tuple[Settings | None, list[Problem]]:
    """The one pass over the settings: every layer read, every key checked, every problem returned."""
    environ = dict(os.environ if environ is None else environ)
    problems: list[Problem] = []
    name = env or environ.get(ENV_SELECT) or DEFAULT_ENV
    name_origin = "flag --env" if env else (f"environment variable {ENV_SELECT}" if environ.get(ENV_SELECT) else
                                            "defaults")
    bad_name = environment_name(name)
    folder = env_dir(root, environ)
    layers = _Layers()
    shown = None
    file_read = False
    if bad_name:
        problems.append(Problem(name_origin, "", f"environment {_quote(name)} {bad_name}", environment_name.allowed,
                                "name the environment in lowercase (--env NAME or GPTOSS_ENV=NAME)"))
    else:
        path = folder / f"{name}.yaml"
        shown = _display_path(path)
        if not path.exists():
            known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
            problems.append(Problem(name_origin, "", f"environment '{name}' not found: no {shown}"
                                    f"{did_you_mean(name, known)}", f"one of: {', '.join(known) or '(none found)'}",
                                    f"create it from env/dev.yaml, or pick another (--env NAME or {ENV_SELECT}=NAME)"))
        else:
            data, lines, file_problems = _read_env_file(path, shown)
            problems += file_problems
            file_read = not file_problems
            layers.merge_tree(data, lambda p: f"{shown}:{lines.get(p, 1)}")

    env_values, env_problems = _env_overrides(environ)
    set_values, set_problems = _set_overrides(sets)
    problems += env_problems + set_problems
    for key_path, value, origin in env_values + list(overrides or []) + set_values:
        layers.merge(key_path, value, origin)

    settings, field_problems = _validate(layers)
    problems += field_problems
    if settings is None or not file_read:
        return None, problems  # no usable environment file: nothing more can be judged
    settings.env_name = name if not bad_name else DEFAULT_ENV
    settings.env_file = shown
    settings._origins = layers.origin
    if not settings.kube.kubeconfig:
        first = next((p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p), None)
        if first:  # what gcloud writes to and kubectl reads first
            settings.kube.kubeconfig = first
            settings._kubeconfig_source = "$KUBECONFIG"
        else:
            settings._kubeconfig_source = "default"
    if environ.get("HF_ENDPOINT"):
        endpoint = environ["HF_ENDPOINT"].rstrip("/")
        bad = http_url(endpoint)
        if bad:
            problems.append(Problem("environment variable HF_ENDPOINT", "", bad, http_url.allowed,
                                    "set HF_ENDPOINT to the hub's URL, or unset it"))
        else:
            settings.models.hf_endpoint = endpoint
    problems += _file_problems(settings, environ)
    return settings, problems


def load_settings(env: str | None = None, *, root: Path | None = None, environ: dict[str, str] | None = None,
                  overrides: list[tuple[tuple, Any, str]] | None = None) -> Settings:
    """Build the one Settings object for this run, or raise ConfigError (exit 2) with every problem."""
    settings, problems = read_settings(env, root=root, environ=environ, overrides=overrides)
    if problems:
        raise ConfigError.of(problems)
    return settings


def other_environments(settings: Settings, *, root: Path | None = None,
                       environ: dict[str, str] | None = None) -> dict[str, "Settings | ConfigError"]:
    """Every other environment beside this run's (env/<name>.yaml), loaded as a run in this shell would
    load it, or the error that stopped it. Teardown asks them before deleting what environments can
    share (a bucket grant, a mirrored tag, staged weights, a repository)."""
    environ = dict(os.environ if environ is None else environ)
    folder = env_dir(root, environ)
    found: dict[str, Settings | ConfigError] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        if path.stem == settings.env_name:
            continue
        try:
            found[path.stem] = load_settings(path.stem, root=root, environ=environ)
        except ConfigError as exc:
            found[path.stem] = exc
    return found


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _quote(value: Any) -> str:
    """A value shown in a message: short, and never something shaped like a credential."""
    from gptoss_gke.core.redact import Redactor

    text = value if isinstance(value, str) else repr(value)
    if Redactor()(text) != text:
        return "(value not shown: it looks like a credential)"
    return repr(text if len(text) <= 80 else text[:77] + "...")


# Keys whose values are never quoted in a message: a token pasted into a path, a key in vLLM's args.
_QUIET_KEYS = ("hf_token_file", "vllm_extra_args", "hf_endpoint", "key_file")


def _validate(layers: _Layers) -> tuple[Settings | None, list[Problem]]:
    """Validate; on errors, drop the failed keys (back to defaults) and validate again, so the rules
    between keys still run on everything that was valid and every problem is reported at once."""
    data = copy.deepcopy(layers.data)
    problems: list[Problem] = []
    failed: list[tuple] = []
    for _ in range(8):
        try:
            settings = Settings.model_validate(data)
            break
        except ValidationError as exc:
            for err in exc.errors():
                loc, problem = _explain(err, data, layers)
                if loc not in failed:
                    failed.append(loc)
                    problems.append(problem)
                _drop(data, loc)
    else:
        return None, problems
    settings._failed = failed
    for keys, check in _CROSS_RULES:
        # A rule does not run on a key that failed its own check (it went back to its default). Under
        # `targets`, only the failed target is left out: the others still get every check.
        if any(k != ("targets",) and (f[:len(k)] == k or k[:len(f)] == f) for k in keys for f in failed):
            continue
        for loc, message, allowed in check(settings):
            if not any(f[:2] == loc[:2] for f in failed if f[:1] == ("targets",)):
                problems.append(_problem(layers, loc, message, allowed))
    return settings, problems


def _data_loc(loc: tuple, data: Any) -> tuple:
    """The part of pydantic's error location that exists in the data (it adds type tags)."""
    found: tuple = ()
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue
        found += (part,)
    return found


def _drop(data: dict, loc: tuple) -> None:
    # Drop the whole key (a list with one bad item goes back to its default too).
    key_loc = loc[:next((i for i, p in enumerate(loc) if isinstance(p, int)), len(loc))]
    node = data
    for part in key_loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and key_loc:
        node.pop(key_loc[-1], None)
    elif not key_loc:
        data.clear()


def _explain(err: dict, data: dict, layers: _Layers) -> tuple[tuple, Problem]:
    loc = _data_loc(tuple(err["loc"]), data) or tuple(err["loc"])
    ctx = err.get("ctx") or {}
    allowed = ctx.get("allowed", "")
    located = ctx.get("error")
    if isinstance(located, _LocatedError):
        loc, msg, allowed = located.loc, located.message, located.allowed
    elif err["type"] == "extra_forbidden":
        choices = _fields_at(loc[:-1])
        msg = f"unknown key{did_you_mean(loc[-1], choices)}"
        allowed = f"one of: {', '.join(choices)}" if choices else ""
    elif err["type"] == "rule":
        msg = ctx["problem"]
        if not any(k in loc for k in _QUIET_KEYS) and isinstance(err.get("input"), str):
            msg = f"{_quote(err['input'])} {msg}"
    elif set(ctx) & {"ge", "gt", "le", "lt"}:
        bounds = [f"{word} {ctx[k]}" for k, word in (("ge", "at least"), ("gt", "above"), ("le", "at most"),
                                                      ("lt", "below")) if k in ctx]
        msg = f"{_quote(err.get('input'))} is out of range"
        allowed = " and ".join(bounds) + (f" ({_BOUND_REASONS[loc[-1]]})" if loc and loc[-1] in _BOUND_REASONS else "")
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], (dict, list)) and not any(k in loc for k in _QUIET_KEYS):
            msg += f" (got {_quote(err['input'])})"
    return loc, _problem(layers, loc, msg, allowed)


# Why a number has the bounds it has, said with the bound.
_BOUND_REASONS = {
    "max_nodes": "a pool that can never have a node serves nothing; GKE allows 1000 per zone",
    "min_nodes": "GKE allows 1000 nodes per pool and zone",
    "initial_nodes": "GKE allows 1000 nodes per pool and zone",
    "accelerator_count": "GPUs and TPU chips per node",
    "replicas": "each replica takes a whole accelerator node",
    "load_timeout_s": "a day is the longest wait that makes sense; a load takes minutes",
    "pvc_size_gi": "a persistent disk holds at most 64 TiB",
    "port": "TCP ports",
    "workers": "parallel transfers; more only adds contention",
    "chunk_mib": "Cloud Storage composes chunks; tiny ones cost requests, huge ones memory",
    "attempts": "more retries only delay the failure",
    "poll_interval_s": "how often a wait looks again",
}


def _problem(layers: _Layers, loc: tuple, message: str, allowed: str = "", fix: str = "") -> Problem:
    where = layers.where(loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    return Problem(where, key, message, allowed, fix or _fix_at(where, key))


def _fix_at(where: str, key: str) -> str:
    if where.startswith("environment variable "):
        return f"change or unset {where.removeprefix('environment variable ')}"
    if where.startswith("flag --set"):
        return f"change --set {key}=..."
    if where == "defaults":
        return f"set {key} in the environment file ({README})"
    return f"edit {key} at {where} ({README})"


def _fields_at(loc: tuple) -> list[str]:
    """Field names valid at a key path, for did-you-mean suggestions."""
    model: Any = Settings
    i = 0
    while i < len(loc):
        field_info = model.model_fields.get(loc[i])
        inner = _model_in(field_info.annotation) if field_info else None
        if inner is None:
            return []
        if get_origin(field_info.annotation) is dict:
            i += 1  # the next part is a key of the mapping (a target name, a machine type)
        model = inner
        i += 1
    return [n for n, f in model.model_fields.items() if not f.exclude]


def _model_in(annotation) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found:
            return found
    return None


def _file_problems(s: Settings, environ: dict[str, str]) -> list[Problem]:
    """Files the settings name are checked now, not when a step first opens them. Paths are never
    quoted: a token pasted where a path belongs must not be printed."""
    problems = []

    def need(loc: tuple, path_text: str | None, *, kind: str = "file", optional_absent: bool = False,
             what: str = "") -> Path | None:
        if not path_text:
            return None
        path = Path(os.path.expanduser(path_text))
        problem = None
        if not path.exists():
            if optional_absent:
                return None
            problem = "names no existing file (path not shown: it may be a pasted secret)"
        elif kind == "file" and not path.is_file():
            problem = "is not a regular file (a directory?)"
        elif kind == "dir" and not path.is_dir():
            problem = "is not a directory"
        elif not os.access(path, os.R_OK | (os.W_OK if kind == "dir" else 0)):
            problem = "cannot be read" if kind == "file" else "is not writable"
        if problem:
            problems.append(_problem(_Layers(origin=s._origins), loc, problem, what))
            return None
        return path

    token_file = need(("models", "hf_token_file"), s.models.hf_token_file, what="a file holding a Hugging Face token")
    token = environ.get("HF_TOKEN")
    if not token and token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            token = None
        if not token:
            problems.append(_problem(_Layers(origin=s._origins), ("models", "hf_token_file"),
                                     "is empty or not text", "a file holding a Hugging Face token"))
    if token:
        s.hf_token = SecretStr(token)
    # models.temp_dir is not checked here: staging may run on another host (--on), and creates it.
    need(("remote", "key_file"), s.remote.key_file, what="your private SSH key, e.g. ~/.ssh/id_ed25519")
    need(("remote", "known_hosts"), s.remote.known_hosts, optional_absent=True, what="an ssh known_hosts file")
    kubeconfig = Path(s.kubeconfig_path)
    if kubeconfig.exists() and not kubeconfig.is_file():  # absent is fine: setup-cluster writes it
        where = "environment variable KUBECONFIG" if s._kubeconfig_source == "$KUBECONFIG" else None
        if where:
            problems.append(Problem(where, "", "names something that is not a file", "a kubeconfig file",
                                    "point KUBECONFIG (or kube.kubeconfig) at a kubeconfig file"))
        else:
            problems.append(_problem(_Layers(origin=s._origins), ("kube", "kubeconfig"),
                                     "is not a regular file (a directory?)", "a kubeconfig file"))
    return problems


# =============================================================================================
# Task checks: what only some tasks need, with the targets the flags chose.

# Values copied from the examples: a project and bucket you do not own, a host you do not control.
_PLACEHOLDER_HOSTS = re.compile(r"(^|\.)example\.(com|org|net)$")


def placeholders(s: Settings) -> list[Problem]:
    """Every example value still in the settings, with its key and the fix (refused outside --dry-run)."""
    found = []
    layers = _Layers(origin=s._origins)
    if s.project and EXAMPLE_PROJECT in s.project:
        found.append(_problem(layers, ("project",), f"is still the placeholder {_quote(s.project)}",
                              "your Google Cloud project ID",
                              "set project: in the environment file, or GPTOSS_PROJECT=<your project>"))
    if s.models.bucket and EXAMPLE_PROJECT in s.models.bucket:
        found.append(_problem(layers, ("models", "bucket"), f"is still the example bucket {_quote(s.models.bucket)} "
                              f"(a global name you do not own)", "a bucket in your project",
                              "set models.bucket: (or GPTOSS_MODELS__BUCKET) to a bucket you own, e.g. "
                              "<your project>-gptoss-models"))
    for name, t in s.targets.items():
        if t.ingress_host and _PLACEHOLDER_HOSTS.search(t.ingress_host):
            found.append(_problem(layers, ("targets", name, "ingress_host"),
                                  f"is still the example host {_quote(t.ingress_host)}", "a DNS name you control",
                                  f"set targets.{name}.ingress_host to your own host name"))
    return found


def resolve_targets(choice: Any, settings: Settings, *, all_means: str = "enabled") -> list[str]:
    """The flags' target choice (ALL or names) as catalogue names."""
    from gptoss_gke.flags import ALL

    if choice == ALL:
        return list(CATALOGUE) if all_means == "catalogue" else settings.enabled_targets()
    return list(choice or ())


def task_problems(settings: Settings, *, targets: list[str], dry_run: bool, needs_project: bool) -> list[Problem]:
    """Values only some tasks need; checked before the first step runs. (No enabled target is not one:
    setup-cluster then converges the cluster alone.)"""
    problems = []
    layers = _Layers(origin=settings._origins)
    if not needs_project:
        return problems
    failed = settings._failed
    if not settings.project and ("project",) not in failed:
        problems.append(_problem(layers, ("project",), "required value missing", project_id.allowed,
                                 "set project: in the environment file, or GPTOSS_PROJECT=<your project>"))
    for name in targets:
        if CATALOGUE[name].weights == "bucket" and not settings.models.bucket and ("models", "bucket") not in failed:
            problems.append(_problem(layers, ("models", "bucket"), f"required for target {name} (its weights are "
                                     f"served from Cloud Storage)", bucket_name.allowed,
                                     "set models.bucket: in the environment file, or GPTOSS_MODELS__BUCKET"))
    if not dry_run:
        problems += placeholders(settings)
    return problems


def require(settings: Settings, *, targets: list[str], dry_run: bool) -> None:
    problems = task_problems(settings, targets=targets, dry_run=dry_run, needs_project=True)
    if problems:
        raise ConfigError.of(problems)
