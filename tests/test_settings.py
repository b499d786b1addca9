"""Settings: layering and every kind of bad input (exit 2, nothing run)."""

from __future__ import annotations

import textwrap

import pytest

from gptoss_gke.config import load_settings, parse_set, require
from gptoss_gke.errors import ConfigError
from tests.conftest import REPO, run_inv


def write_env(tmp_path, name: str, text: str):
    folder = tmp_path / "env"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    return folder


BASE = """\
project: my-project-1
region: europe-west4
zone: europe-west4-b
cluster:
  name: base
models:
  bucket: my-bucket
"""


def load(tmp_path, text=BASE, *, environ=None, sets=(), env="dev"):
    folder = write_env(tmp_path, "dev", text)
    return load_settings(env, environ={"GPTOSS_ENV_DIR": str(folder), **(environ or {})},
                         overrides=parse_set(list(sets)))


def test_layers_defaults_then_file_then_environment_then_flags(tmp_path):
    s = load(tmp_path)
    assert s.cluster.release_channel is None  # built-in default: rapid on create, an existing channel kept
    assert s.cluster.name == "base" and s.region == "europe-west4"  # file
    s = load(tmp_path, environ={"GPTOSS_CLUSTER__NAME": "fromenv", "GPTOSS_TARGETS__L4__NODE_POOL__MAX_NODES": "3"})
    assert s.cluster.name == "fromenv"
    assert s.target("l4").node_pool.max_nodes == 3
    assert s.target("l4").node_pool.machine_type == "g2-standard-4"  # catalogue value kept
    s = load(tmp_path, environ={"GPTOSS_CLUSTER__NAME": "fromenv"}, sets=["cluster.name=fromflag"])
    assert s.cluster.name == "fromflag"


def test_environment_is_chosen_by_variable_or_flag(tmp_path):
    folder = write_env(tmp_path, "dev", BASE)
    write_env(tmp_path, "prod", BASE.replace("name: base", "name: prodcluster"))
    assert load_settings(None, environ={"GPTOSS_ENV_DIR": str(folder), "GPTOSS_ENV": "prod"}).cluster.name == \
        "prodcluster"
    s = load_settings("prod", environ={"GPTOSS_ENV_DIR": str(folder), "GPTOSS_ENV": "dev"})
    assert s.cluster.name == "prodcluster" and s.env_name == "prod"


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE.replace("  name: base", "  name: base\n  nmae: x"))
    msg = str(err.value)
    assert "dev.yaml:6" in msg and "cluster.nmae" in msg and "did you mean 'name'" in msg


def test_unknown_environment_variable_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, environ={"GPTOSS_CLUSTER__RELEASE_CHANEL": "stable"})
    assert "GPTOSS_CLUSTER__RELEASE_CHANEL" in str(err.value) and "release_channel" in str(err.value)


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + "targets:\n  l4:\n    node_pool:\n      max_nodes: lots\n")
    msg = str(err.value)
    assert "dev.yaml:11" in msg and "targets.l4.node_pool.max_nodes" in msg and "'lots'" in msg


def test_zone_not_in_region(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE.replace("zone: europe-west4-b", "zone: us-central1-a"))
    assert "dev.yaml:3" in str(err.value) and "zone us-central1-a is not in region europe-west4" in str(err.value)


def test_unknown_target_in_file_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + "targets:\n  ironwod: {}\n")
    assert "did you mean 'ironwood'" in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + "cluster:\n name: [unclosed\n")
    assert "dev.yaml:" in str(err.value) and "malformed YAML" in str(err.value)


def test_duplicate_key_is_an_error_not_a_silent_override(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, BASE + "region: us-east1\n")
    assert "dev.yaml:8" in str(err.value) and "duplicate key" in str(err.value)


def test_required_values(tmp_path):
    s = load(tmp_path, BASE.replace("project: my-project-1\n", "").replace("models:\n  bucket: my-bucket\n", ""))
    with pytest.raises(ConfigError) as err:
        require(s, targets=["ironwood"], dry_run=False)
    assert "project: required" in str(err.value) and "models.bucket: required for target ironwood" in str(err.value)
    require(s.model_copy(update={"project": "my-project-1"}), targets=["l4"], dry_run=False)  # l4 needs no bucket


def test_placeholder_project_only_for_dry_run(tmp_path):
    s = load(tmp_path, BASE.replace("my-project-1", "example-project"))
    require(s, targets=["l4"], dry_run=True)
    with pytest.raises(ConfigError, match="placeholder"):
        require(s, targets=["l4"], dry_run=False)


def test_api_key_on_argv_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="VLLM_API_KEY"):
        load(tmp_path, BASE + "targets:\n  l4:\n    vllm_extra_args: ['--api-key=abc']\n")


def test_shipped_example_environments_are_valid():
    for path in sorted((REPO / "env").glob("*.yaml")):
        s = load_settings(path.stem, environ={"GPTOSS_ENV_DIR": str(REPO / "env")})
        for name in s.enabled_targets():
            assert s.target(name).model_revision  # every target resolves


@pytest.mark.parametrize("args, expect", [
    (["setup-cluster", "--dry-run", "--target=l5"], "unknown target 'l5' (did you mean 'l4'?)"),
    (["setup-cluster", "--dry-run", "--env=nope"], "environment 'nope' not found"),
    (["bench", "--dry-run", "--target=l4,ironwood"], "bench works on one target at a time"),
    (["setup-cluster", "--dry-run", "--set", "cluster.nmae=x"], "flag --set cluster.nmae: cluster.nmae: unknown key"),
    (["setup-cluster", "--dry-run", "--set", "region=us-central1", "--set", "zone=europe-west4-a"],
     "zone europe-west4-a is not in region us-central1"),
])
def test_bad_input_exits_2_before_any_step(offline_env, args, expect):
    proc = run_inv(args, offline_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stderr
    assert "TASK [" not in proc.stdout  # nothing ran


def _leaf_keys(model, prefix=""):
    from typing import get_origin

    from gptoss_gke.config.loader import _model_in

    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        inner = _model_in(info.annotation)
        if inner is None:
            yield prefix + name
        elif get_origin(info.annotation) is dict:
            yield from _leaf_keys(inner, f"{prefix}{name}.<{'t' if name == 'targets' else 'machine type'}>.")
        else:
            yield from _leaf_keys(inner, f"{prefix}{name}.")


def test_env_readme_documents_every_key():
    from gptoss_gke.config import Settings

    text = (REPO / "env" / "README.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    for key in _leaf_keys(Settings):
        parent, _, leaf = key.rpartition(".")
        # Either the key itself, or its name in the row that groups its parent (`remote.*`, `retry.attempts` / ...).
        assert f"`{key}`" in text or any(f"`{leaf}`" in row and (f"`{parent}." in row or f"`{parent}`" in row)
                                         for row in rows) or any(f"{parent}.{leaf}" in row for row in rows), key
