"""Bad input never reaches the cloud: a table of malformed settings and flags, each refused before
the first step (exit 2, the key named, no traceback, no TASK line, no request to the emulated control
plane, no secret echoed), plus property tests for the name rules.

The table drives the real `inv` program in this process (invoke's Program, discovering tasks.py
through --search-root): one import of the tool for the whole table instead of one per row.
"""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from invoke import Program

from gptoss_gke import config
from gptoss_gke.flags import parse_bytes, parse_human_int
from tests.conftest import REPO, require_tool
from tests.emulators.gcp import GcpEmulator, gcloud_env

SECRET = "hf_QmV0dGVyTm90UHJpbnRUaGlzVG9rZW4x"  # shaped like a Hugging Face token
API_KEY = "sk-do-not-print-4f1c2b9e7a"

BASE = """\
project: test-project
region: us-central1
zone: us-central1-a
models:
  bucket: test-project-models
"""


def target_yaml(body: str, target: str = "l4") -> str:
    indented = "\n".join("    " + ln for ln in body.strip().splitlines())
    return BASE + f"targets:\n  {target}:\n{indented}\n"


def pool_yaml(body: str, target: str = "l4") -> str:
    return target_yaml("node_pool:\n" + "\n".join("  " + ln for ln in body.strip().splitlines()), target)


SETUP = ["setup-cluster", "--target=l4"]  # not a dry run: a valid input would reach the emulator
DEPLOY_L4 = ["deploy", "--target=l4"]


class Case:
    def __init__(self, name: str, category: str, key: str, *, args=SETUP, text: str | None = None,
                 env: dict | None = None, raw: bytes | None = None, secret: str | None = None, mkdir: bool = False):
        self.name, self.category, self.key, self.args = name, category, key, list(args)
        self.text, self.env, self.raw, self.secret, self.mkdir = text, env or {}, raw, secret, mkdir

    def __repr__(self) -> str:
        return self.name


def e(name, category, key, var, value, **kw):
    """A case set through one GPTOSS_* variable."""
    return Case(name, category, key, env={var: value}, **kw)


def s(name, category, key, assignment, *, args=SETUP, **kw):
    """A case set through --set."""
    return Case(name, category, key, args=[*args, "--set", assignment], **kw)


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

CASES = [
    # --- GCP names -----------------------------------------------------------------------------
    e("project-uppercase", "gcp", "project", "GPTOSS_PROJECT", "My-Project"),
    e("project-too-short", "gcp", "project", "GPTOSS_PROJECT", "abc"),
    e("project-restricted-word", "gcp", "project", "GPTOSS_PROJECT", "my-google-proj"),
    e("bucket-goog-prefix", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "goog-models"),
    e("bucket-contains-google", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "my-google-weights"),
    e("bucket-look-alike", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "my-g00gle-weights"),
    e("bucket-ip-address", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "192.168.5.4"),
    e("bucket-too-long", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "b" * 64),
    e("bucket-dotted-part-too-long", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "a" * 64 + ".example.org"),
    e("bucket-empty-part", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "my..bucket"),
    e("bucket-bad-start", "gcp", "models.bucket", "GPTOSS_MODELS__BUCKET", "-bucket"),
    e("cluster-name-uppercase", "gcp", "cluster.name", "GPTOSS_CLUSTER__NAME", "GptOss"),
    e("cluster-name-41-chars", "gcp", "cluster.name", "GPTOSS_CLUSTER__NAME", "g" * 41),
    s("node-pool-name-underscore", "gcp", "targets.l4.node_pool.name", "targets.l4.node_pool.name=l4_pool"),
    Case("cluster-label-key-uppercase", "gcp", "cluster.labels", text=BASE + "cluster:\n  labels:\n    Team: ml\n"),
    Case("cluster-label-value-uppercase", "gcp", "cluster.labels", text=BASE + "cluster:\n  labels:\n    team: Prod\n"),
    Case("env-name-uppercase", "gcp", "--env", args=[*SETUP, "--env", "Prod"]),
    Case("env-name-path", "gcp", "--env", args=[*SETUP, "--env", "../../etc/passwd"]),
    e("zone-shape", "gcp", "zone", "GPTOSS_ZONE", "us-central1"),
    e("region-shape", "gcp", "region", "GPTOSS_REGION", "us central1"),
    e("zone-outside-region", "gcp", "zone", "GPTOSS_ZONE", "europe-west4-a"),
    e("cluster-location-elsewhere", "gcp", "cluster.location", "GPTOSS_CLUSTER__LOCATION", "europe-west4"),
    s("machine-type-shape", "gcp", "targets.l4.node_pool.machine_type", "targets.l4.node_pool.machine_type=G2_STANDARD"),
    s("reservation-path-incomplete", "gcp", "targets.ironwood.node_pool.reservation",
      "targets.ironwood.node_pool.reservation=projects/p-123456/reservations"),
    s("reservation-name", "gcp", "targets.ironwood.node_pool.reservation",
      "targets.ironwood.node_pool.reservation=My_Reservation"),
    e("repository-uppercase", "gcp", "registry.repository", "GPTOSS_REGISTRY__REPOSITORY", "GptOss"),
    Case("node-location-outside-region", "gcp", "targets.l4.node_pool.node_locations",
         text=pool_yaml("node_locations: [us-east1-b]")),
    # --- Kubernetes ----------------------------------------------------------------------------
    e("namespace-kube-system", "kubernetes", "kube.namespace", "GPTOSS_KUBE__NAMESPACE", "kube-system"),
    e("namespace-default", "kubernetes", "kube.namespace", "GPTOSS_KUBE__NAMESPACE", "default"),
    e("namespace-underscore", "kubernetes", "kube.namespace", "GPTOSS_KUBE__NAMESPACE", "bad_ns"),
    Case("label-key-bang", "kubernetes", "labels", text=BASE + "labels:\n  'bad key!': x\n"),
    Case("label-value-space", "kubernetes", "labels", text=BASE + "labels:\n  team: has space\n"),
    Case("label-ownership", "kubernetes", "labels", text=BASE + "labels:\n  app.kubernetes.io/managed-by: me\n"),
    Case("node-label-key", "kubernetes", "targets.l4.node_pool.labels", text=pool_yaml("labels: {'a/b/c': x}")),
    s("storage-class", "kubernetes", "targets.l4.storage_class", "targets.l4.storage_class=Fast_SSD"),
    s("ingress-host-ip", "kubernetes", "targets.l4.ingress_host", "targets.l4.ingress_host=10.0.0.1"),
    s("ingress-host-underscore", "kubernetes", "targets.l4.ingress_host",
      "targets.l4.ingress_host=bad_host.example.org"),
    s("ingress-without-host", "kubernetes", "targets.l4.ingress_host", "targets.l4.expose=ingress"),
    e("service-account-uppercase", "kubernetes", "kube.service_account", "GPTOSS_KUBE__SERVICE_ACCOUNT", "VLLM"),
    e("secret-name-underscore", "kubernetes", "kube.api_key_secret", "GPTOSS_KUBE__API_KEY_SECRET", "api_key"),
    s("expose-unknown", "kubernetes", "targets.l4.expose", "targets.l4.expose=nodeport"),
    # --- Paths and files -----------------------------------------------------------------------
    s("revision-dotdot", "paths", "targets.l4.model_revision", "targets.l4.model_revision=../../etc"),
    s("revision-leading-dash", "paths", "targets.l4.model_revision", "targets.l4.model_revision=-rf"),
    e("prefix-escapes", "paths", "models.prefix", "GPTOSS_MODELS__PREFIX", "../escape"),
    e("prefix-absolute", "paths", "models.prefix", "GPTOSS_MODELS__PREFIX", "/abs/models"),
    e("token-file-is-directory", "paths", "models.hf_token_file", "GPTOSS_MODELS__HF_TOKEN_FILE", "/"),
    e("key-file-missing", "paths", "remote.key_file", "GPTOSS_REMOTE__KEY_FILE", "/nonexistent/id_ed25519"),
    e("context-control-character", "kubernetes", "kube.context", "GPTOSS_KUBE__CONTEXT", "gke\tcontext"),
    Case("pattern-absolute", "paths", "targets.l4.allow_patterns", text=target_yaml("allow_patterns: ['/etc/*']")),
    Case("kubeconfig-directory", "paths", "KUBECONFIG", env={"KUBECONFIG": "/"}),
    # --- Images --------------------------------------------------------------------------------
    s("image-bad-tag", "images", "targets.l4.image", "targets.l4.image=docker.io/vllm/vllm-openai:bad!tag"),
    s("image-uppercase-path", "images", "targets.l4.image", "targets.l4.image=docker.io/VLLM/Server:v1"),
    s("image-bad-digest", "images", "targets.l4.image", "targets.l4.image=vllm/vllm-openai@sha256:123"),
    Case("image-remote-mode-not-docker-hub", "images", "targets.l4.image",
         text=target_yaml("image: ghcr.io/example/server:v1") + "registry:\n  mode: remote\n"),
    # --- Numbers -------------------------------------------------------------------------------
    s("max-model-len-beyond-context", "numbers", "targets.l4.max_model_len", "targets.l4.max_model_len=200000"),
    s("max-nodes-zero", "numbers", "targets.l4.node_pool.max_nodes", "targets.l4.node_pool.max_nodes=0"),
    Case("min-above-max", "numbers", "targets.l4.node_pool.min_nodes", text=pool_yaml("min_nodes: 3\nmax_nodes: 1")),
    s("initial-above-max", "numbers", "targets.l4.node_pool.initial_nodes", "targets.l4.node_pool.initial_nodes=5"),
    s("replicas-beyond-pool", "numbers", "targets.l4.replicas", "targets.l4.replicas=5"),
    s("accelerators-machine-lacks", "numbers", "targets.l4.node_pool.accelerator_count",
      "targets.l4.node_pool.accelerator_count=2"),
    s("accelerator-wrong-family", "numbers", "targets.l4.node_pool.accelerator_type",
      "targets.l4.node_pool.accelerator_type=nvidia-tesla-t4"),
    s("pvc-too-small", "numbers", "targets.l4.pvc_size_gi", "targets.l4.pvc_size_gi=5"),
    e("ssh-port-range", "numbers", "remote.port", "GPTOSS_REMOTE__PORT", "70000"),
    e("retry-attempts-zero", "numbers", "retry.attempts", "GPTOSS_RETRY__ATTEMPTS", "0"),
    s("load-timeout-two-days", "numbers", "targets.l4.load_timeout_s", "targets.l4.load_timeout_s=172800"),
    e("workers-too-many", "numbers", "models.workers", "GPTOSS_MODELS__WORKERS", "1000"),
    s("max-nodes-words", "numbers", "targets.l4.node_pool.max_nodes", "targets.l4.node_pool.max_nodes=lots"),
    Case("price-negative", "numbers", "prices.g2-standard-4.on_demand",
         text=BASE + "prices:\n  g2-standard-4: {on_demand: -1}\n"),
    e("temp-infinite", "numbers", "models.max_temp_gib", "GPTOSS_MODELS__MAX_TEMP_GIB", ".inf"),
    # --- Flags ---------------------------------------------------------------------------------
    Case("kv-cache-memory-words", "flags", "--kv-cache-memory", args=["plan", "--target=l4", "--kv-cache-memory=lots"]),
    Case("max-model-len-suffix", "flags", "--max-model-len", args=["plan", "--target=l4", "--max-model-len=12x"]),
    Case("num-prompts-words", "flags", "--num-prompts", args=["bench", "--target=l4", "--in-cluster",
                                                               "--num-prompts=abc"]),
    Case("local-port-range", "flags", "--local-port", args=["port-forward", "--target=l4", "--local-port=99999"]),
    Case("conflicting-teardown", "flags", "--delete-cluster", args=["teardown", "--yes", "--delete-cluster",
                                                                    "--scale-to-zero"]),
    Case("empty-target", "flags", "--target", args=["setup-cluster", "--target="]),
    Case("empty-target-item", "flags", "--target", args=["setup-cluster", "--target=l4,,"]),
    Case("all-on-one-target-task", "flags", "'all' is not allowed here", args=["plan", "--target=all"]),
    Case("missing-target", "flags", "--target", args=["deploy"]),
    Case("bare-set", "flags", "--set", args=[*SETUP, "--set"]),
    Case("set-without-equals", "flags", "--set", args=[*SETUP, "--set", "cluster.name"]),
    Case("block-size", "flags", "--block-size", args=["plan", "--target=l4", "--block-size=7"]),
    Case("kv-dtype", "flags", "--kv-cache-dtype", args=["plan", "--target=l4", "--kv-cache-dtype=fp16"]),
    Case("list-on-one-target-task", "flags", "--target", args=["bench", "--target=l4,ironwood"]),
    Case("model-file-missing", "flags", "--model", args=["plan", "--target=l4", "--model=/nonexistent/config.json"]),
    Case("throughput-negative", "flags", "--throughput", args=["plan", "--target=l4", "--throughput=-1"]),
    Case("unknown-target-suggestion", "flags", "did you mean 'l4'", args=["setup-cluster", "--target=l5"]),
    # --- YAML that cannot be trusted -----------------------------------------------------------
    Case("file-is-directory", "yaml", "dev.yaml", mkdir=True),
    Case("not-utf8", "yaml", "UTF-8", raw=BASE.encode() + b"cluster:\n  name: caf\xe9\n"),
    Case("recursive-alias", "yaml", "recursive", text=BASE + "labels: &x [*x]\n"),
    Case("exponential-aliases", "yaml", "aliases expand", text=BASE + LAUGHS),
    Case("complex-key", "yaml", "not a plain name", text=BASE + "? [a, b]\n: c\n"),
    Case("explicit-octal-tag", "yaml", "explicit tag", text=BASE + "cluster:\n  initial_nodes: !!int 010\n"),
    Case("duplicate-key", "yaml", "duplicate key", text=BASE + "region: us-east1\n"),
    Case("malformed", "yaml", "malformed YAML", text=BASE + "cluster:\n name: [unclosed\n"),
    Case("top-level-list", "yaml", "mapping", text="- project: x\n"),
    Case("yes-for-a-number", "yaml", "targets.l4.node_pool.max_nodes", text=pool_yaml("max_nodes: yes")),
    Case("maybe-for-a-switch", "yaml", "targets.l4.node_pool.spot", text=pool_yaml("spot: maybe")),
    Case("sexagesimal", "yaml", "targets.l4.replicas", text=target_yaml("replicas: 1:30")),
    Case("huge-file", "yaml", "bytes", text=BASE + "# " + "x" * 300_000 + "\n"),
    Case("deep-nesting", "yaml", "nested", text=BASE + "labels: " + "[" * 200 + "]" * 200 + "\n"),
    # --- Secrets in bad input ------------------------------------------------------------------
    Case("api-key-separate", "secrets", "targets.l4.vllm_extra_args", secret=API_KEY,
         text=target_yaml(f"vllm_extra_args: ['--api-key', '{API_KEY}']")),
    Case("api-key-underscore", "secrets", "targets.l4.vllm_extra_args", secret=API_KEY,
         text=target_yaml(f"vllm_extra_args: ['--api_key={API_KEY}']")),
    Case("api-key-prefix", "secrets", "targets.l4.vllm_extra_args", secret=API_KEY,
         text=target_yaml(f"vllm_extra_args: ['--api-k', '{API_KEY}']")),
    Case("api-key-equals", "secrets", "targets.l4.vllm_extra_args", secret=API_KEY,
         text=target_yaml(f"vllm_extra_args: ['--max-num-seqs=4', '--api-key={API_KEY}']")),
    e("token-pasted-as-path", "secrets", "models.hf_token_file", "GPTOSS_MODELS__HF_TOKEN_FILE", SECRET, secret=SECRET),
    s("token-pasted-with-set", "secrets", "models.hf_token_file", f"models.hf_token_file={SECRET}", secret=SECRET),
    e("endpoint-with-password", "secrets", "models.hf_endpoint", "GPTOSS_MODELS__HF_ENDPOINT",
      f"https://me:{API_KEY}@hub.example.org", secret=API_KEY),
    Case("token-as-bucket", "secrets", "models.bucket", env={"GPTOSS_MODELS__BUCKET": SECRET}, secret=SECRET),
    # --- Placeholders outside --dry-run --------------------------------------------------------
    e("placeholder-project", "placeholders", "project", "GPTOSS_PROJECT", "example-project"),
    e("placeholder-bucket", "placeholders", "models.bucket", "GPTOSS_MODELS__BUCKET",
      "example-project-gptoss-models"),
    Case("placeholder-ingress-host", "placeholders", "targets.l4.ingress_host",
         text=target_yaml("expose: ingress\ningress_host: gptoss.example.com")),
    # --- Environment variables -----------------------------------------------------------------
    e("variable-misspelt", "environment", "release_channel", "GPTOSS_CLUSTER__RELEASE_CHANEL", "stable"),
    e("variable-empty-level", "environment", "GPTOSS_CLUSTER____NAME", "GPTOSS_CLUSTER____NAME", "x"),
]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    """One emulated GKE/Service Usage/RM/AR control plane for the whole table: it must see no request."""
    require_tool("gcloud", "install the Google Cloud CLI (Debian: apt-get install google-cloud-cli)")
    emu = GcpEmulator(op_polls_before_done=0)
    emu.start()
    try:
        yield emu, gcloud_env(emu, tmp_path_factory.mktemp("gcloud"), "test-project")
    finally:
        emu.stop()


def run_in_process(args: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The real `inv` program, in this process, with exactly this environment."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        Program().run(["inv", "--search-root", str(REPO), *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def write_case(case: Case, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dev.yaml"
    if case.mkdir:
        path.mkdir()
    elif case.raw is not None:
        path.write_bytes(case.raw)
    else:
        path.write_text(case.text if case.text is not None else BASE)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_the_first_step(case, control_plane, tmp_path, monkeypatch, capsys):
    emu, base_env = control_plane
    write_case(case, tmp_path / "env")
    env = {**base_env, "GPTOSS_ENV_DIR": str(tmp_path / "env"), "GPTOSS_KUBE__KUBECONFIG": str(tmp_path / "kube"),
           "HOME": str(tmp_path), "NO_COLOR": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
           "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", **case.env}
    if "KUBECONFIG" in case.env:
        env.pop("GPTOSS_KUBE__KUBECONFIG")
    before = len(emu.requests)
    code, out, err = run_in_process(case.args, env, monkeypatch, capsys)
    text = out + err
    assert code == 2, text
    assert case.key in err, err
    assert "Traceback" not in text and "TASK [" not in out and "PLAYBOOK [" not in out
    assert len(emu.requests) == before  # nothing reached the (emulated) cloud
    for secret in (SECRET, API_KEY):
        assert secret not in text


def test_the_table_covers_every_category_with_sixty_inputs():
    by_category: dict[str, int] = {}
    for case in CASES:
        by_category[case.category] = by_category.get(case.category, 0) + 1
    assert len(CASES) >= 60 and set(by_category) >= {"gcp", "kubernetes", "paths", "images", "numbers", "flags",
                                                      "yaml", "secrets", "placeholders"}


def test_every_problem_is_reported_at_once(control_plane, tmp_path, monkeypatch, capsys):
    emu, base_env = control_plane
    write_case(Case("several", "all", "", text=BASE.replace("test-project-models", "goog-models")
                    + "cluster:\n  name: Bad_Name\n" + pool_yaml("max_nodes: 0").removeprefix(BASE)), tmp_path / "env")
    env = {**base_env, "GPTOSS_ENV_DIR": str(tmp_path / "env"), "NO_COLOR": "1", "GPTOSS_ZONE": "europe-west4-a",
           "HOME": str(tmp_path)}
    code, out, err = run_in_process(["teardown", "--delete-cluster", "--scale-to-zero", "--target=l5"], env,
                                    monkeypatch, capsys)
    assert code == 2
    assert "6 problems" in err
    for where_and_key in ("dev.yaml:5: models.bucket", "dev.yaml:7: cluster.name", "node_pool.max_nodes",
                          "environment variable GPTOSS_ZONE: zone", "flag --target", "--scale-to-zero"):
        assert where_and_key in err
    assert "allowed:" in err and "fix:" in err


def test_env_prod_in_capitals_is_refused_with_the_lowercase_name(control_plane, tmp_path, monkeypatch, capsys):
    _, base_env = control_plane
    write_case(Case("prod", "gcp", ""), tmp_path / "env")
    env = {**base_env, "GPTOSS_ENV_DIR": str(tmp_path / "env"), "NO_COLOR": "1", "HOME": str(tmp_path)}
    code, _, err = run_in_process(["setup-cluster", "--dry-run", "--env", "Prod"], env, monkeypatch, capsys)
    assert code == 2 and "use --env prod with env/prod.yaml" in err


# ---------------------------------------------------------------------------------------------
# What people write is read as they mean it


def test_yaml_numbers_and_switches_read_as_a_person_means_them(tmp_path):
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "dev.yaml").write_text(target_yaml("replicas: 010\nmodel_revision: 0123\nnode_pool:\n  spot: yes\n"
                                                 "  max_nodes: 12"))
    s = config.load_settings(environ={"GPTOSS_ENV_DIR": str(folder)})
    ts = s.target_settings("l4")
    assert ts.replicas == 10 and ts.model_revision == "0123" and ts.node_pool.spot is True


def test_units_people_write():
    assert parse_bytes("4GiB") == 4 * 2**30 and parse_bytes("4 GB") == 4 * 10**9 and parse_bytes("4G") == 4 * 2**30
    assert parse_bytes("4g") == 4 * 10**9 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("4294967296") == 2**32 and parse_bytes("lots") is None and parse_bytes("1.5") is None
    assert parse_human_int("128k") == 128_000 and parse_human_int("128K") == 131_072 and parse_human_int("8192") == 8192
    assert parse_human_int("1.5K") is None and parse_human_int("12x") is None


def test_kubeconfig_follows_kubectl_and_says_so(tmp_path):
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "dev.yaml").write_text(BASE)
    first, second = tmp_path / "a", tmp_path / "b"
    s = config.load_settings(environ={"GPTOSS_ENV_DIR": str(folder), "KUBECONFIG": f"{first}{os.pathsep}{second}"})
    assert s.kubeconfig_path == str(first) and s.kubeconfig_shown == f"{first} (from $KUBECONFIG)"
    s = config.load_settings(environ={"GPTOSS_ENV_DIR": str(folder), "HOME": str(tmp_path)})
    assert s.kubeconfig_shown == "~/.kube/config (from default)"
    s = config.load_settings(environ={"GPTOSS_ENV_DIR": str(folder), "KUBECONFIG": str(first),
                                      "GPTOSS_KUBE__KUBECONFIG": str(second)})
    assert s.kubeconfig_path == str(second) and s.kubeconfig_shown == str(second)  # the setting wins


# ---------------------------------------------------------------------------------------------
# Property tests for the name rules: valid names pass, each class of invalid name fails.

LOWER = string.ascii_lowercase
names = st.from_regex(r"\A[a-z]([-a-z0-9]{0,38}[a-z0-9])?\Z")
buckets = st.from_regex(r"\A[a-z0-9][-_a-z0-9]{1,61}[a-z0-9]\Z").filter(
    lambda b: not b.startswith("goog") and "google" not in b.replace("0", "o").replace("1", "l").replace("3", "e"))
labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@hsettings(max_examples=200, deadline=None)
@given(names)
def test_gke_names_valid(name):
    assert config.gke_name(name) is None and config.gcp_resource_name(name) is None


@hsettings(max_examples=200, deadline=None)
@given(names, st.sampled_from(["upper", "underscore", "long", "digit-start", "dash-end"]))
def test_gke_names_invalid_classes(name, kind):
    bad = {"upper": name[:-1] + name[-1].upper() if name[-1].isalpha() else name + "A",
           "underscore": name + "_x", "long": (name * 41)[:41] if len(name) > 0 else "a" * 41,
           "digit-start": "1" + name, "dash-end": name + "-"}[kind]
    if kind == "long" and len(bad) <= 40:
        bad = bad + "a" * (41 - len(bad))
    assert config.gke_name(bad) is not None


@hsettings(max_examples=300, deadline=None)
@given(buckets)
def test_bucket_names_valid(name):
    assert config.bucket_name(name) is None


@hsettings(max_examples=300, deadline=None)
@given(buckets, st.sampled_from(["upper", "goog", "google", "lookalike", "ip", "long", "dots", "edge", "space"]))
def test_bucket_names_invalid_classes(name, kind):
    bad = {"upper": name[0] + "X" + name[1:], "goog": "goog" + name, "google": name[:10] + "google",
           "lookalike": "x-g00gle-" + name, "ip": "10.1.2.3", "long": (name + "x" * 64)[:64],
           "dots": name + ".." + name, "edge": name + "-", "space": name[:5] + " " + name[5:]}[kind]
    assert config.bucket_name(bad) is not None


@hsettings(max_examples=200, deadline=None)
@given(st.lists(labels, min_size=1, max_size=4).map(".".join).filter(lambda d: len(d) <= 222),
       st.sampled_from([None, "part"]))
def test_dotted_bucket_names(dotted, variant):
    if len(dotted) < 3 or _is_ip(dotted):
        return
    name = dotted if variant is None else dotted + "." + "a" * 64
    assert (config.bucket_name(name) is None) == (variant is None)


def _is_ip(text):
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@hsettings(max_examples=200, deadline=None)
@given(labels, st.sampled_from(["upper", "dot", "long", "empty"]))
def test_dns_labels(label, kind):
    assert config.dns_label(label) is None
    bad = {"upper": label + "A", "dot": label + ".x", "long": label + "a" * 64, "empty": ""}[kind]
    assert config.dns_label(bad) is not None


@hsettings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[a-z][-_a-z0-9]{0,62}\Z"), st.from_regex(r"\A[-_a-z0-9]{0,63}\Z"))
def test_gcp_labels(key, value):
    assert config.gcp_label_key(key) is None and config.gcp_label_value(value) is None
    assert config.gcp_label_key(key.upper() + "A") is not None and config.gcp_label_value(value + "A") is not None
    assert config.gcp_label_key("1" + key) is not None and config.gcp_label_value(value + "." ) is not None


@hsettings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z"), st.sampled_from(["", "example.com/"]))
def test_kubernetes_label_keys(name, prefix):
    assert config.kube_label_key(prefix + name) is None and config.kube_label_value(name) is None
    assert config.kube_label_key(prefix + name + "/x/y") is not None
    assert config.kube_label_value(name + "!") is not None and config.kube_label_value("-" + name) is not None


@hsettings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[a-z][-a-z0-9]{4,28}[a-z0-9]\Z").filter(
    lambda p: not any(w in p for w in ("google", "null", "undefined", "ssl"))))
def test_project_ids(project):
    assert config.project_id(project) is None and config.project_id("example.com:" + project) is None
    for bad in (project.upper(), project + "-", "1" + project[1:], project[:5] + "google", project + "x" * 30):
        if bad != project:
            assert config.project_id(bad) is not None


@hsettings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
       st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_-]{0,20}(/[A-Za-z0-9_][A-Za-z0-9_-]{0,20}){0,2}\Z"))
def test_revisions(commit, ref):
    assert config.revision(commit) is None and config.revision(ref) is None
    for bad in ("../" + ref, "/" + ref, ref + "/", ref + ".lock", "-" + ref, ref + " x", ref + "//x"):
        assert config.revision(bad) is not None


@hsettings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,20}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,20}){0,3}\Z").filter(
    lambda p: ".." not in p.split("/")))
def test_prefixes_cannot_escape(prefix):
    assert config.object_prefix(prefix) is None and config.object_prefix(prefix + "/") is None
    for bad in ("/" + prefix, "../" + prefix, prefix + "/../x", prefix + "/./x", prefix + "//x"):
        assert config.object_prefix(bad) is not None


def test_api_key_in_every_spelling_vllm_accepts():
    for spelling in ("--api-key", "--api_key", "--api-key=x", "--api_key=x", "--api-k", "--api-ke=x", "--api"):
        assert config.vllm_extra_args(["--max-num-seqs=4", spelling]) is not None, spelling
    for fine in ("--max-num-seqs=4", "--api-server-count=2", "-O3", "--enforce-eager"):
        assert config.vllm_extra_args([fine]) is None, fine


def test_reservation_paths_converge_with_names():
    assert config.reservation("my-res") is None and config.reservation("projects/other-proj/reservations/r1") is None
    assert config.reservation_key("r1", "my-proj") == config.reservation_key("projects/my-proj/reservations/r1", "x")
    assert config.reservation_key("projects/a-proj1/reservations/r1", "p") != config.reservation_key("r1", "p")


def test_did_you_mean_offers_only_what_the_task_accepts():
    from gptoss_gke.flags import FlagValueError, Targets

    with pytest.raises(FlagValueError, match="did you mean 'all'"):
        Targets("", task="setup-cluster").parse("alll")
    with pytest.raises(FlagValueError) as refused:
        Targets("", mode="one", task="plan").parse("alll")
    assert "did you mean" not in refused.value.message
    with pytest.raises(FlagValueError, match="did you mean 'ironwood'"):
        Targets("", mode="one", task="plan").parse("ironwod")
