"""Rules: one function per kind of name or value (GCP, Kubernetes, paths, images).

Each returns None when the value is valid, or the problem, and carries the sentence that says what
is allowed. The settings fields use them through ``Annotated`` types (the names at the end).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

EXAMPLE_PROJECT = "example-project"

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
