"""Settings: one validated object per run.

Layers, later wins: built-in defaults ← env/<name>.yaml ← GPTOSS_* environment variables ← task
flags (--set key.path=value and the tasks' own flags). Bad input stops here with exit status 2 and a
message naming the file, line and key, before anything reaches the cloud.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from gptoss_gke.errors import ConfigError
from gptoss_gke.targets import CATALOGUE, Target

ENV_PREFIX = "GPTOSS_"
ENV_SELECT = "GPTOSS_ENV"  # which env/<name>.yaml
ENV_DIR = "GPTOSS_ENV_DIR"  # where env files live (default: ./env next to tasks.py)
DEFAULT_ENV = "dev"
EXAMPLE_PROJECT = "example-project"

_GCP_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$")
_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodePoolSettings(_Strict):
    """Overrides of the catalogue's node pool for one target; unset keys keep the catalogue value."""

    name: str | None = None
    machine_type: str | None = None
    accelerator_type: str | None = None
    accelerator_count: int | None = Field(default=None, ge=0)
    gpu_driver_version: Literal["default", "latest", "disabled"] | None = None
    tpu_topology: str | None = None
    min_nodes: int | None = Field(default=None, ge=0)
    max_nodes: int | None = Field(default=None, ge=0)
    initial_nodes: int | None = Field(default=None, ge=0)
    labels: dict[str, str] | None = None
    spot: bool = False
    reservation: str | None = None  # a specific reservation; its affinity flags are set only then
    node_locations: list[str] | None = None  # zones; default: the environment's zone

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v is not None and not _GCP_NAME.match(v):
            raise ValueError("node pool names are lowercase letters, digits and '-', at most 40 characters")
        return v

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_nodes is not None and self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) is greater than max_nodes ({self.max_nodes})")
        return self


class TargetSettings(_Strict):
    enabled: bool = True  # setup-cluster --target=all creates node pools for enabled targets
    node_pool: NodePoolSettings = Field(default_factory=NodePoolSettings)
    model_revision: str | None = None  # a commit, or a branch resolved to its commit at staging time
    # Which repository files are the weights vLLM loads (Hugging Face patterns; `*` crosses `/`, so
    # exclude the original/ and metal/ copies with ignore patterns rather than relying on allow).
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None
    image: str | None = None  # upstream image to mirror
    max_model_len: int | None = Field(default=None, gt=0)
    vllm_extra_args: list[str] = Field(default_factory=list)
    replicas: int = Field(default=1, ge=0)
    load_timeout_s: int | None = Field(default=None, gt=0)
    expose: Literal["cluster-ip", "load-balancer", "ingress"] = "cluster-ip"
    ingress_host: str | None = None
    pvc_size_gi: int = Field(default=60, gt=0)  # l4 model cache
    storage_class: str = "standard-rwo"

    @field_validator("vllm_extra_args")
    @classmethod
    def _no_key_on_argv(cls, v):
        for arg in v:
            if arg.startswith("--api-key"):
                raise ValueError("--api-key would put the key on the command line; vLLM reads VLLM_API_KEY "
                                 "from the Secret already")
        return v


class ClusterSettings(_Strict):
    name: str = "gptoss"
    location: str | None = None  # a region (regional cluster) or a zone (zonal); default: region
    # Unset: rapid when we create the cluster (Ironwood's versions arrive there first), and an existing
    # cluster keeps the channel its owner chose (a channel change can trigger upgrades).
    release_channel: Literal["rapid", "regular", "stable", "extended"] | None = None
    # How kubectl and our clients reach the control plane: its IP endpoint, or GKE's DNS-based endpoint
    # (IAM-checked, works for a control plane without a public IP: no bastion needed).
    control_plane: Literal["ip", "dns"] = "ip"
    initial_nodes: int = Field(default=1, ge=1)  # default pool, per zone
    default_machine_type: str = "e2-standard-4"
    image_streaming: bool = True
    create: bool = True  # false: the cluster must already exist (we only update its settings)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _GCP_NAME.match(v):
            raise ValueError("cluster names are lowercase letters, digits and '-', at most 40 characters")
        return v


class RegistrySettings(_Strict):
    location: str | None = None  # default: region
    repository: str = "gptoss"
    mode: Literal["copy", "remote"] = "copy"  # copy with skopeo, or an AR remote repo on Docker Hub
    platform: str = "linux/amd64"  # or "all"
    # The registry host images are pushed to and pinned at. Default (None): <location>-docker.pkg.dev.
    # Set it only for a private mirror or a loopback test registry.
    host: str | None = None
    # Verify TLS when skopeo talks to the source and destination registries. false only for a
    # plain-HTTP registry on loopback (tests); never for Artifact Registry or Docker Hub.
    tls_verify: bool = True

    @field_validator("platform")
    @classmethod
    def _platform(cls, v):
        if v != "all" and not re.match(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$", v):
            raise ValueError("platform is os/arch[/variant] (e.g. linux/amd64) or all")
        return v

    @field_validator("repository")
    @classmethod
    def _repo(cls, v):
        if not re.match(r"^[a-z]([a-z0-9-]*[a-z0-9])?$", v):
            raise ValueError("Artifact Registry repository names are lowercase letters, digits and '-'")
        return v


class ModelStoreSettings(_Strict):
    bucket: str | None = None  # required for targets served from a bucket (ironwood)
    location: str | None = None  # default: region
    prefix: str = "models"  # objects go to <prefix>/<model id>/<revision>/
    hf_token_file: str | None = None  # a file holding the HF token (else HF_TOKEN in the environment)
    workers: int = Field(default=8, ge=1, le=64)
    chunk_mib: int = Field(default=64, ge=8)
    max_temp_gib: float = Field(default=8.0, gt=0)
    temp_dir: str | None = None
    hf_endpoint: str | None = None  # the Hugging Face Hub (or a mirror); HF_ENDPOINT in the environment wins

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v):
        if v is not None and (not _BUCKET.match(v) or ".." in v or v.startswith("goog")):
            raise ValueError("bucket names are 3-63 lowercase letters, digits, '-', '_' and '.'")
        return v


class KubeSettings(_Strict):
    kubeconfig: str = "~/.kube/config"
    context: str | None = None  # default: the context get-credentials writes
    namespace: str = "gptoss"
    service_account: str = "vllm"
    api_key_secret: str = "vllm-api-key"
    field_manager: str = "gptoss-gke"
    poll_interval_s: float = Field(default=5.0, gt=0)  # how often rollout waits look again

    @field_validator("namespace", "service_account", "api_key_secret")
    @classmethod
    def _dns(cls, v):
        if not _DNS_LABEL.match(v):
            raise ValueError("must be a DNS-1123 label: lowercase letters, digits and '-'")
        return v


class RemoteSettings(_Strict):
    host: str | None = None
    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_keys: bool = True  # false: trust an unknown host on first use (recorded); a changed key still refuses
    python: str = "python3"  # the remote interpreter that runs shipped steps (a virtualenv's python, say)
    connect_timeout_s: float = Field(default=15.0, gt=0)


class RetrySettings(_Strict):
    attempts: int = Field(default=5, ge=1)
    base_delay_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=20.0, ge=0)


class Price(_Strict):
    on_demand: float = Field(ge=0)
    spot: float | None = Field(default=None, ge=0)


def _default_prices() -> dict[str, Price]:
    # USD per node-hour for g2-standard-4 in us-central1 (the tutorial quotes ~$0.70 and ~$0.21).
    # Add your own per environment (prices: {machine type: {on_demand, spot}}); TPU v7 pricing is
    # contract-specific, so no default is shipped for it.
    return {"g2-standard-4": Price(on_demand=0.7068, spot=0.2121)}


class Settings(_Strict):
    project: str | None = None
    region: str = "us-central1"
    zone: str = "us-central1-a"
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    models: ModelStoreSettings = Field(default_factory=ModelStoreSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    targets: dict[str, TargetSettings] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=_default_prices)
    labels: dict[str, str] = Field(default_factory=dict)  # added to every object we create

    # Not settable from files: filled by the loader.
    env_name: str = Field(default=DEFAULT_ENV, exclude=True)
    env_file: str | None = Field(default=None, exclude=True)
    hf_token: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("project")
    @classmethod
    def _project(cls, v):
        if v is not None and not _PROJECT.match(v):
            raise ValueError("project IDs are 6-30 lowercase letters, digits and '-', starting with a letter")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v):
        if not _REGION.match(v):
            raise ValueError("a region looks like us-central1")
        return v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v):
        if not _ZONE.match(v):
            raise ValueError("a zone looks like us-central1-a")
        return v

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v):
        for name in v:
            if name not in CATALOGUE:
                raise ValueError(f"unknown target '{name}'{_did_you_mean(name, CATALOGUE)}; "
                                 f"known: {', '.join(CATALOGUE)}")
        return v

    @model_validator(mode="after")
    def _zones_in_region(self):
        region = self.region
        if not self.zone.startswith(region + "-"):
            raise _LocatedError(("zone",), f"zone {self.zone} is not in region {region}")
        loc = self.cluster.location
        if loc and loc != region and not (loc.startswith(region + "-") and _ZONE.match(loc)):
            raise _LocatedError(("cluster", "location"),
                                f"cluster location {loc} is neither region {region} nor one of its zones")
        for name, t in self.targets.items():
            for z in t.node_pool.node_locations or []:
                if not z.startswith(region + "-") or not _ZONE.match(z):
                    raise _LocatedError(("targets", name, "node_pool", "node_locations"),
                                        f"node location {z} is not a zone of region {region}")
        return self

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
        return os.path.expanduser(self.kube.kubeconfig)

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
    """A model-level check that knows which key it is about."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Loading


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


def _yaml_with_lines(text: str, filename: str) -> tuple[dict, dict[tuple, int]]:
    """Parse YAML and remember the line of every key; duplicate keys are an error, not a surprise."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{filename}{line}: malformed YAML: {problem}",
                          "fix the syntax at that line (indentation, a missing ':' or quote)") from None
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for k, v in node.value:
                key = k.value
                if key in seen:
                    raise ConfigError(f"{filename}:{k.start_mark.line + 1}: {'.'.join(path + (key,))}: "
                                      f"duplicate key", "keep one of the two entries")
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    data = yaml.safe_load(text) if root is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: the top level must be a mapping of settings",
                          "see env/README.md for the keys")
    return data, lines


def env_dir(default_root: Path | None = None, environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_DIR):
        return Path(environ[ENV_DIR])
    return (default_root or Path.cwd()) / "env"


def _env_overrides(environ: dict[str, str]) -> list[tuple[tuple, Any, str]]:
    found = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in (ENV_SELECT, ENV_DIR):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        found.append((path, _scalar(raw), f"environment variable {name}"))
    return found


def _scalar(raw: str) -> Any:
    """Values from the environment and --set are YAML scalars: 3 → int, true → bool, [a, b] → list."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[tuple, Any, str]]:
    found = []
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key.path=value", "e.g. --set cluster.name=gptoss")
        key, raw = item.split("=", 1)
        found.append((tuple(key.strip().split(".")), _scalar(raw), f"flag --set {key.strip()}"))
    return found


def load_settings(
    env: str | None = None,
    *,
    root: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: list[tuple[tuple, Any, str]] | None = None,
) -> Settings:
    """Build the one Settings object for this run, or raise ConfigError (exit 2)."""
    environ = dict(os.environ if environ is None else environ)
    name = env or environ.get(ENV_SELECT) or DEFAULT_ENV
    folder = env_dir(root, environ)
    layers = _Layers()

    path = folder / f"{name}.yaml"
    shown = _display_path(path)
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(
            f"environment '{name}' not found: no {shown}{_did_you_mean(name, known)}",
            f"create it from env/dev.yaml, or pick one of: {', '.join(known) or '(none found)'} "
            f"(--env NAME or {ENV_SELECT}=NAME)",
        )
    data, lines = _yaml_with_lines(path.read_text(), shown)
    layers.merge_tree(data, lambda p: f"{shown}:{lines.get(p, 1)}")

    for key_path, value, origin in _env_overrides(environ) + list(overrides or []):
        layers.merge(key_path, value, origin)

    try:
        settings = Settings.model_validate(layers.data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, layers), "correct the value above; env/README.md documents every key") \
            from None

    settings.env_name = name
    settings.env_file = shown
    if environ.get("HF_ENDPOINT"):
        settings.models.hf_endpoint = environ["HF_ENDPOINT"].rstrip("/")
    token = environ.get("HF_TOKEN")
    if not token and settings.models.hf_token_file:
        token_path = Path(os.path.expanduser(settings.models.hf_token_file))
        if not token_path.is_file():
            raise ConfigError(f"{layers.where(('models', 'hf_token_file'))}: models.hf_token_file: "
                              f"{token_path} does not exist", "point it at a file holding your HF token")
        token = token_path.read_text().strip()
    if token:
        settings.hf_token = SecretStr(token)
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


def _explain(exc: ValidationError, layers: _Layers) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _LocatedError):
            loc, msg = ctx_err.loc, ctx_err.message
        elif err["type"] == "extra_forbidden":
            msg = f"unknown key{_did_you_mean(loc[-1], _fields_at(loc[:-1]))}"
        elif err["type"] == "missing":
            msg = "required value missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        key = ".".join(str(p) for p in loc) or "(top level)"
        messages.append(f"{layers.where(loc)}: {key}: {msg}")
    return "invalid settings:\n  " + "\n  ".join(messages) if len(messages) > 1 else messages[0]


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


def resolve_targets(target: str | None, settings: Settings | None = None, *, allow_all: bool = True,
                    single: str | None = None) -> list[str]:
    """`--target`: one name, a comma-separated list, or all (the enabled ones); unknown names → exit 2.

    ``single``: the task works on one target (its words, e.g. "bench measures"), so a list is refused."""
    if target in (None, "", "all"):
        if not allow_all:
            raise ConfigError("this task needs --target", f"use one of: {', '.join(CATALOGUE)}")
        return settings.enabled_targets() if settings else list(CATALOGUE)
    names = [t.strip() for t in target.split(",") if t.strip()]
    for name in names:
        if name not in CATALOGUE:
            raise ConfigError(f"unknown target '{name}'{_did_you_mean(name, CATALOGUE)}",
                              f"use one of: {', '.join(CATALOGUE)} (or all)")
    if single and len(names) != 1:
        raise ConfigError(f"{single} one target at a time", f"use --target={' or --target='.join(CATALOGUE)}")
    return names


def require(settings: Settings, *, targets: list[str], dry_run: bool) -> None:
    """Values only some tasks need; checked before the first step runs."""
    problems = []
    origin = settings.env_file or "settings"
    if not settings.project:
        problems.append(f"{origin}: project: required value missing (set project: or GPTOSS_PROJECT)")
    elif settings.project == EXAMPLE_PROJECT and not dry_run:
        problems.append(f"{origin}: project: still the placeholder '{EXAMPLE_PROJECT}' "
                        f"(set your project ID there or in GPTOSS_PROJECT; --dry-run works without one)")
    for name in targets:  # already checked by resolve_targets
        if CATALOGUE[name].weights == "bucket" and not settings.models.bucket:
            problems.append(f"{origin}: models.bucket: required for target {name} (its weights are served "
                            f"from Cloud Storage)")
    if problems:
        raise ConfigError("\n".join(problems), "edit the environment file or set the GPTOSS_* variable")
