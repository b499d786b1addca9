"""The command-line surface: task list, instant startup, doctor, the offline plan."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import INV, REPO, run_inv

TOP_LEVEL = ["setup-cluster", "deploy", "teardown", "doctor", "plan", "render", "smoke", "bench", "auth", "stage-model",
             "mirror-image", "port-forward", "show-api-key"]


def test_list_shows_every_top_level_task_with_help(offline_env):
    proc = run_inv(["--list"], offline_env)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()[2:] if ln.strip() and not ln.startswith("    ")}
    for task in TOP_LEVEL:
        assert task in lines, f"{task} missing from inv --list:\n{proc.stdout}"
        assert len(lines[task].split()) > 2, f"{task} has no help text"


def test_list_and_help_import_no_cloud_sdk(offline_env):
    for args in (["--list"], ["--help", "deploy"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", INV, *args], cwd=REPO, env=offline_env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        heavy = {m for m in imported if m.split(".")[0] in ("google", "kubernetes", "huggingface_hub", "pydantic",
                                                          "fabric", "paramiko", "gptoss_gke.config")}
        assert not heavy, f"inv {' '.join(args)} imported {sorted(heavy)[:5]}"


def test_doctor_names_each_missing_tool_and_its_fix(offline_env, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**offline_env, "PATH": str(empty)}
    proc = run_inv(["doctor"], env)
    assert proc.returncode == 1
    out = proc.stdout
    assert "failed: gcloud not found on PATH" in out and "fix: install the Google Cloud CLI" in out
    assert "failed: skopeo not found on PATH" in out and "apt-get install -y skopeo" in out
    assert "failed: gke-gcloud-auth-plugin not found" in out
    assert "ok: kubectl not found (optional" in out
    assert "RECAP" in out


def test_doctor_without_credentials_points_to_inv_auth(offline_env):
    proc = run_inv(["doctor"], offline_env)
    assert "failed: gcloud has no usable credentials" in proc.stdout
    assert "fix: run `inv auth`" in proc.stdout


def test_offline_setup_cluster_plan_is_complete_and_exits_0(offline_env, tmp_path):
    report = tmp_path / "plan.json"
    proc = run_inv(["setup-cluster", "--target=l4,ironwood", "--dry-run", f"--report={report}"], offline_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in (
        "would run: gcloud services enable",
        "would run: gcloud container clusters create gptoss --location=us-central1 "
        "--workload-pool=example-project.svc.id.goog",
        "--addons=GcsFuseCsiDriver,HttpLoadBalancing,HorizontalPodAutoscaling",
        "would run: gcloud container node-pools create l4-gptoss",
        "--accelerator=type=nvidia-l4,count=1,gpu-driver-version=latest",
        "--node-taints=nvidia.com/gpu=present:NoSchedule",
        "would run: gcloud container node-pools create ironwood-gptoss",
        "--machine-type=tpu7x-standard-4t",
        "would run: gcloud container clusters get-credentials gptoss",
        # the cause, once, first, with its fix; every step after it is marked, not re-explained
        "ok: nothing below is read: the plan shows what would be done if nothing existed  "
        "[not observed: gcloud has no usable credentials (the project)]\n  fix: run `inv auth`",
        "  [not observed]\n",
    ):
        assert expected in out, expected
    assert out.count("no usable credentials") == 1 and out.count("fix:") == 1
    assert out.count("  $ gcloud") == 1  # the reads that cannot succeed are not made
    assert "--reservation" not in out  # no reservation configured → no affinity flags (errata)
    doc = json.loads(report.read_text())
    assert doc["dry_run"] is True and doc["recap"]["failed"] == 0
    assert any(not s["observed"] for s in doc["steps"])


def test_offline_plan_without_gcloud_at_all(offline_env, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = run_inv(["setup-cluster", "--dry-run"], {**offline_env, "PATH": str(empty)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "would run: gcloud container clusters create" in proc.stdout
    # The real cause, said once, first: not "no usable credentials".
    out = proc.stdout
    first_task = out.index("TASK [")
    assert out.index("[not observed: gcloud is not installed (or not on PATH)]") < out.index("TASK [", first_task + 1)
    assert "fix: install the Google Cloud CLI" in out
    assert out.count("gcloud is not installed") == 1 and "no usable credentials" not in out


def test_without_gcloud_or_credentials_a_real_run_says_so_once_and_reads_nothing_else(offline_env, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**offline_env, "GPTOSS_PROJECT": "my-project-123", "GPTOSS_MODELS__BUCKET": "my-project-123-models"}
    for env, cause in (({**env, "PATH": str(empty)}, "gcloud is not installed (or not on PATH)"),
                       (env, "gcloud has no usable credentials (the project)")):
        proc = run_inv(["setup-cluster"], env)
        assert proc.returncode == 1, proc.stdout
        out = proc.stdout
        assert f"failed: {cause}" in out and out.count("fix:") == 1, out
        assert out.count("  $ ") == 1, out  # one read; no stray command lines after the last task
        skipped = out.count("skipped: not run: credentials and project failed")
        assert skipped >= 3 and skipped == out.count("TASK [") - 1  # every step after it, none run
        assert out.rstrip().splitlines()[-1].startswith(f"RECAP ok=0 changed=0 skipped={skipped} failed=1")


def test_readme_offline_plan_for_ironwood_exits_0_and_is_complete(offline_env, tmp_path):
    report = tmp_path / "plan.json"
    proc = run_inv(["deploy", "--target=ironwood", "--dry-run", f"--report={report}"], offline_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in (
        "would run: gcloud artifacts repositories create gptoss",
        "would run: skopeo",
        "would create bucket gs://example-project-gptoss-models",
        "would grant roles/storage.objectViewer on gs://example-project-gptoss-models",
        "would stage openai/gpt-oss-120b@b5c939de8f75",
        "would create PersistentVolume gptoss-ironwood-weights",
        "would create Deployment gptoss/gptoss-ironwood",
        "would grant roles/storage.objectUser on gs://example-project-gptoss-models/compile-cache/dev/ironwood/",
        "would create PersistentVolume gptoss-ironwood-compile-cache",
        "would wait up to 1h00m",
        "would smoke-test the endpoint",
        "NOT pinned",
    ):
        assert expected in out, expected
    steps = json.loads(report.read_text())["steps"]
    assert all(s["status"] in ("ok", "changed") for s in steps)


def test_auth_without_a_terminal_explains_the_alternative(offline_env):
    proc = run_inv(["auth"], offline_env)
    assert proc.returncode == 2
    assert "needs a terminal" in proc.stderr and "gcloud auth activate-service-account" in proc.stderr


def _task_flags() -> dict[str, set[str]]:
    from tasks import ns
    return {name: {"--" + n for arg in ns[name].get_arguments() for n in arg.names} for name in ns.task_names}


def test_readme_flags_exist_on_every_task_it_lists():
    import re

    flags = _task_flags()
    text = (REPO / "README.md").read_text()
    table = text[text.index("| task | what it does |"):text.index("## Per-target guides")]
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            continue
        for usage in re.findall(r"`([a-z-]+(?: [^`]*)?)`", re.split(r"(?<!\\)\|", row)[1]):
            task, *rest = usage.split(" ", 1)
            assert task in flags, f"README lists {task}, which is not a task"
            for flag in re.findall(r"--[a-z-]+", " ".join(rest)):
                assert flag in flags[task], f"README: {task} {flag} does not exist"
    # The common-flags table says exactly which tasks take each common flag.
    common = text[text.index("| common flag | taken by |"):text.index("Every flag and setting is checked")]
    for row in common.splitlines()[2:]:
        if not row.startswith("|"):
            continue
        _, names, takers, _ = row.split("|")
        said = re.findall(r"`([a-z-]+)`", takers.split("(")[0])
        expected = set(flags) - set(said) if takers.strip().startswith("every task except") else set(said)
        for flag in re.findall(r"`(--[a-z-]+)`", names):
            assert {t for t in flags if flag in flags[t]} == expected, f"README's row for {flag}"


def test_dash_h_is_help_on_every_task(offline_env):
    proc = run_inv(["plan", "-h"], offline_env)
    assert proc.returncode == 0 and "--throughput" in proc.stdout and "Usage:" in proc.stdout
    for name, names in _task_flags().items():
        assert not any(len(n) == 3 for n in names), f"{name} has a short flag"  # "--x" from a one-letter alias


def test_unexpected_errors_are_one_line_with_the_debug_hint(monkeypatch, capsys):
    import pytest
    from invoke.exceptions import Exit

    from gptoss_gke.cli import guarded

    def bug():
        return {}["hf_" + "x" * 20]  # an unexpected KeyError whose text looks like a token

    monkeypatch.delenv("GPTOSS_DEBUG", raising=False)
    with pytest.raises(Exit) as exited:
        guarded(bug)
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.count("\n") == 2
    assert err.startswith("error: unexpected KeyError") and "GPTOSS_DEBUG=1" in err
    assert "Traceback" not in err and "hf_xxxx" not in err  # redacted like everything else
    monkeypatch.setenv("GPTOSS_DEBUG", "1")
    with pytest.raises(KeyError):
        guarded(bug)


def test_output_into_a_closed_pipe_ends_quietly(offline_env):
    # Like `inv plan | head -1` once head has exited: the reading end is already closed.
    import os

    for args in (["plan", "--target=l4"], ["--list"]):  # our printer, and invoke's own output
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([INV, *args], cwd=REPO, env=offline_env, stdout=write_end,
                                  stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write_end)
        assert proc.stderr == "", args
    assert proc.returncode in (0, 1)


def _line_of(text: str) -> int:
    lines = (REPO / "env" / "dev.yaml").read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if ln.startswith(text))


def test_setting_only_the_project_leaves_the_example_bucket_refused(offline_env):
    env = {**offline_env, "GPTOSS_PROJECT": "my-real-project"}
    proc = run_inv(["setup-cluster", "--target=l4"], env)
    assert proc.returncode == 2 and "TASK [" not in proc.stdout
    assert (f"env/dev.yaml:{_line_of('  bucket:')}: models.bucket: is still the example bucket "
            f"'example-project-gptoss-models'") in proc.stderr
    assert "fix: set models.bucket:" in proc.stderr
    assert run_inv(["setup-cluster", "--target=l4", "--dry-run"], env).returncode == 0  # fine for a plan


def test_doctor_flags_placeholders_and_prints_each_fix_once(offline_env):
    proc = run_inv(["doctor"], offline_env)
    out = proc.stdout
    assert proc.returncode == 1
    assert (f"failed: placeholder settings (accepted only with --dry-run): project at env/dev.yaml:"
            f"{_line_of('project:')}; models.bucket at env/dev.yaml:{_line_of('  bucket:')}") in out
    assert out.count("GPTOSS_PROJECT=<your project>") == 1 and out.count("fix: run `inv auth`") == 1


def test_tutorials_are_named_in_words_a_user_knows():
    """Users know the tutorials by what they do (gpt-oss-20b on one L4 with vLLM 0.12), never by the
    names our workspace gave them; nor may anything point into that workspace. In any case and spelling."""
    import inspect
    import re

    internal = re.compile(r"(?<![a-z])(?:seed|tutorial)[ _-]?0\d\d(?!\d)|\bthe seed'?s\b|shared/(?:design|seeds)"
                          r"|\.\./shared|\bseeds/", re.IGNORECASE)
    for spelling in ("seed 000", "Tutorial 001", "TUTORIAL-000", "test_tutorial_000_figures", "The seed's ratio",
                     "../shared/x", "shared/design/notes.md", "shared/seeds/x.md"):
        assert internal.search(spelling), spelling  # the guard catches every way these were written
    paths = [*REPO.glob("*.md"), *REPO.glob("*.toml"), REPO / "tasks.py", *REPO.rglob("tasks/**/*.py"),
             *REPO.glob("docs/*.md"), *REPO.glob("env/*"), *REPO.rglob("gptoss_gke/**/*.py"),
             *REPO.glob("manifests/**/*.yaml"), *REPO.glob("manifests/**/*.md"), *REPO.rglob("bench/**/*.py"),
             *REPO.glob("scripts/*"), *REPO.glob("tests/*.py"), *REPO.rglob("tests/emulators/**/*.py")]
    assert len({p.parent for p in paths}) >= 10  # every folder above is really read
    for path in paths:
        shown = str(path.relative_to(REPO))
        if not path.is_file():
            continue
        text = path.read_text()
        if path.name == "test_cli.py":  # this guard spells what it forbids
            text = text.replace(inspect.getsource(test_tutorials_are_named_in_words_a_user_knows), "")
        assert not internal.search(text), f"{shown}: {internal.search(text).group(0)}"
