"""The layout's contracts: tasks.py and tasks/ are one package, every import is declared, a new target
is a catalogue entry and a manifests folder, and the engine's declarations (keys, invalidated facts,
checks) do what they say."""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest
import yaml

from gptoss_gke.core import Change, Context, Plan, Redactor, Runner, Step, noop
from gptoss_gke.core.report import Printer
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.shell import Shell
from gptoss_gke.core.step import Check
from tests.conftest import INV, REPO, run_inv

# ---------------------------------------------------------------------------------------------
# tasks.py + tasks/


def test_invoke_and_plain_python_see_the_same_tasks_folder(offline_env):
    assert not (REPO / "tasks" / "__init__.py").exists()  # else `import tasks` would skip tasks.py
    listed = run_inv(["--list"], offline_env)
    assert listed.returncode == 0, listed.stderr
    probe = ("import tasks.deploy, tasks.teardown; from tasks import ns; "
             "print(tasks.deploy.__file__); print(tasks.teardown.__file__); print(' '.join(sorted(ns.task_names)))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=offline_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    deploy_file, teardown_file, names = proc.stdout.splitlines()
    assert Path(deploy_file) == REPO / "tasks" / "deploy.py" and Path(teardown_file) == REPO / "tasks" / "teardown.py"
    # Every task invoke lists is a task of one of those modules, and every playbook module has one.
    shown = {ln.split()[0] for ln in listed.stdout.splitlines()[2:] if ln.startswith("  ") and not ln.startswith("    ")}
    assert shown == set(names.split())
    modules = {p.stem for p in (REPO / "tasks").glob("*.py")}
    assert {"setup_cluster", "deploy", "teardown", "stage_model", "mirror_image", "serving", "plan", "doctor"} <= modules


# ---------------------------------------------------------------------------------------------
# Declared dependencies


def _declared() -> set[str]:
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S).group(1)
    return {_normal(re.match(r"[A-Za-z0-9_.-]+", item).group(0)) for item in re.findall(r'^\s*"([^"]+)"', block, re.M)}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports by name (at any depth: the SDKs are imported inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from google.cloud import storage` names the module google.cloud.storage
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return found


def test_every_third_party_package_the_code_imports_is_declared():
    owner = {}
    for dist in distributions():
        for file in dist.files or ():
            owner[str(dist.locate_file(file).resolve())] = _normal(dist.metadata["Name"])
    declared = _declared()
    missing = {}
    for path in [*REPO.glob("gptoss_gke/**/*.py"), *REPO.glob("tasks/*.py"), REPO / "tasks.py"]:
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("gptoss_gke", "tasks", "__future__"):
                continue
            try:
                spec = importlib.util.find_spec(module)
            except ModuleNotFoundError:  # `from X import name` where name is not a module
                continue
            if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
                continue  # a namespace package (google): its submodules are what is checked
            dist = owner.get(str(Path(spec.origin).resolve()))
            assert dist is not None, f"{path.relative_to(REPO)} imports {module}, which no installed package provides"
            if dist not in declared:
                missing.setdefault(dist, set()).add(f"{path.relative_to(REPO)} ({module})")
    assert not missing, f"imported but not declared in pyproject.toml dependencies: {missing}"


# ---------------------------------------------------------------------------------------------
# A third target


THIRD = '''

# A throwaway third target (tests/test_layout.py): the L4 shape under another name and pool.
from dataclasses import replace as _replace  # noqa: E402

CATALOGUE["l4b"] = _replace(L4, name="l4b", title="a second L4 target", manifests="l4b",
                            node_pool=_replace(L4.node_pool, name="l4b-gptoss"))
'''


def test_a_third_target_is_a_catalogue_entry_and_a_manifests_folder(tmp_path, offline_env):
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("gptoss_gke", "tasks", "manifests", "env"):
        shutil.copytree(REPO / part, copy / part, ignore=ignore)
    shutil.copy2(REPO / "tasks.py", copy / "tasks.py")
    # The whole change: one catalogue entry, one folder.
    with open(copy / "gptoss_gke" / "targets.py", "a") as fh:
        fh.write(THIRD)
    shutil.copytree(REPO / "manifests" / "l4", copy / "manifests" / "l4b")
    env = {**offline_env, "PYTHONPATH": str(copy)}  # the copy's package, not the installed one

    def inv(*args):
        return subprocess.run([INV, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=120)

    helped = inv("deploy", "--help")
    assert helped.returncode == 0 and "l4, ironwood or l4b" in " ".join(helped.stdout.split()), helped.stdout
    rendered = inv("render", "--target=l4b")
    assert rendered.returncode == 0, rendered.stderr
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered.stdout) if d}
    sts = objects[("StatefulSet", "gptoss-l4b")]
    assert sts["metadata"]["labels"]["gptoss-gke/target"] == "l4b"
    pod = sts["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-nodepool"] == "l4b-gptoss"
    assert ("Service", "gptoss-l4b") in objects  # the common Service, named for the target
    planned = inv("setup-cluster", "--target=l4b", "--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "would run: gcloud container node-pools create l4b-gptoss" in planned.stdout


# ---------------------------------------------------------------------------------------------
# The engine's declarations


def _ctx(dry_run: bool = False, attempts: int = 1):
    redactor = Redactor()
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    import invoke

    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=RetryPolicy(attempts, 0, 0), emit=printer.line)
    return Context(None, shell, printer, redactor, dry_run=dry_run, interactive=False), out


class Counter(Step):
    """A value behind a cached fact: the step reads it through the cache, and writes it."""

    section, name, key = "test", "counter", "test.counter"

    def __init__(self, store: dict, *, declares: bool):
        self.store = store
        self.invalidates = ("test.value",) if declares else ()

    def observe(self, ctx):
        return ctx.fact("test.value", lambda: self.store["value"])

    def plan(self, ctx, current) -> Plan:
        if current == 1:
            return noop("already 1")
        return Plan([Change("set to 1", apply=lambda ctx: self.store.update(value=1))])


def test_the_runner_forgets_the_facts_a_step_declares_it_invalidates():
    ctx, _ = _ctx()
    [r] = Runner(ctx).run([Counter({"value": 0}, declares=True)])
    assert r.status == "changed" and r.error is None  # the verification read the world again
    ctx, _ = _ctx()
    [r] = Runner(ctx).run([Counter({"value": 0}, declares=False)])
    assert r.status == "failed" and "still differs after acting" in r.error  # a stale cache, as before


class Fails(Step):
    section = "test"

    def __init__(self, name: str, key: str):
        self.name, self.key = name, key

    def plan(self, ctx, current) -> Plan:
        raise RuntimeError("boom")


class Needs(Step):
    section, name = "test", "dependent"

    def __init__(self, needs: tuple[str, ...]):
        self.needs = needs

    def plan(self, ctx, current) -> Plan:
        return noop("ran")


def test_needs_names_steps_by_key_not_by_their_display_text():
    ctx, _ = _ctx()
    results = Runner(ctx).run([Fails("a step renamed for display", "test.guard"), Needs(("test.guard",))])
    assert results[1].status == "skipped" and results[1].reason == "not run: a step renamed for display failed"
    ctx, _ = _ctx()
    results = Runner(ctx).run([Fails("test.guard", "another.key"), Needs(("test.guard",))])
    assert results[1].status == "ok"  # the display text is no guard


def test_every_step_of_every_chain_has_its_own_key_and_needs_only_keys_before_it(tmp_path):
    from gptoss_gke.config import load_settings
    from gptoss_gke.flags import ALL, Flags
    from gptoss_gke.gcp.project import Project
    from tasks.deploy import deploy_chain
    from tasks.teardown import teardown_chain

    settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(REPO / "env")})
    targets = ["l4", "ironwood"]
    chains = {"deploy": deploy_chain(settings, targets, Flags({"rotate_api_key": False, "skip_smoke": False}))}
    for delete_cluster in (False, True):
        flags = Flags({"target": ALL, "purge_model": True, "purge_images": True, "delete_cluster": delete_cluster,
                       "scale_to_zero": False, "force": False})
        chains[f"teardown {delete_cluster}"] = teardown_chain(settings, targets, flags, {})
    for name, chain in chains.items():
        seen: list[str] = []
        for step in chain:
            assert step._key or isinstance(type(step).key, str), f"{name}: {step!r} has no key of its own"
            assert step.key not in seen, f"{name}: two steps are {step.key}"
            for needed in step.needs or ():
                # (a step may need a gate that only some playbooks put first: stage-model's project read)
                assert needed in seen or needed == Project.key, f"{name}: {step!r} needs {needed}, not a step before it"
            seen.append(step.key)


class Measure(Check):
    section, name, key = "test", "measure", "test.measure"

    def __init__(self, result: Plan | None = None):
        self.result = result
        self.probed = 0

    def probe(self, ctx, current):
        self.probed += 1
        return 42

    def preview(self, ctx) -> Plan:
        return Plan([Change("measure")])

    def verdict(self, ctx, found) -> Plan:
        return self.result or noop(f"measured {found}")


def test_a_check_is_ok_or_failed_never_changed_and_its_probe_waits_for_a_real_run():
    ctx, _ = _ctx()
    check = Measure()
    [r] = Runner(ctx).run([check])
    assert (r.status, r.reason, check.probed) == ("ok", "measured 42", 1)
    ctx, _ = _ctx(dry_run=True)
    check = Measure()
    [r] = Runner(ctx).run([check])
    assert (r.status, r.reason, check.probed) == ("ok", "would measure", 0)  # listed, not done, not "changed"
    ctx, _ = _ctx()
    [r] = Runner(ctx).run([Measure(Plan([Change("change something")]))])
    assert r.status == "failed" and "is a check but planned a change" in r.error


@pytest.mark.parametrize("case", ["show-api-key", "port-forward"])
def test_access_steps_say_kubernetes_errors_in_words(case, tmp_path, kube_emulator):
    from gptoss_gke.config import load_settings
    from gptoss_gke.serving.access import ForwardSession, ShowApiKey
    from tests.conftest import in_process
    from tests.envfiles import kube_env

    folder = kube_env(tmp_path, kube_emulator)
    settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(folder)})
    ctx, out = in_process(settings)
    if case == "show-api-key":
        kube_emulator.inject("GET", r"/namespaces/gptoss/secrets/vllm-api-key$", 403, message="secrets is forbidden")
        step = ShowApiKey(settings, force=True, stream=io.StringIO())
    else:
        kube_emulator.inject("GET", r"/namespaces/gptoss/pods$", 403, message="pods is forbidden")
        step = ForwardSession(settings, "l4", local_port=0, until=lambda tunnel: True)
    [r] = Runner(ctx).run([step])
    assert r.status == "failed" and "the Kubernetes API denied it (403 Forbidden)" in r.error, r.error
    assert r.fix.startswith("ask for roles/container.developer in project test-project")
    for raw in ("HTTP response headers", "ApiException", "HTTPHeaderDict"):
        assert raw not in out.getvalue() + r.error



class Flaky(Step):
    """Its read meets one transient error (retried), then it acts."""

    section, name, key = "test", "flaky", "test.flaky"

    def __init__(self):
        self.calls = 0
        self.done = False

    def observe(self, ctx):
        def read():
            self.calls += 1
            if self.calls == 1:
                raise ConnectionResetError("connection reset by peer")
            return self.done

        return ctx.retrying(read, "reading the flaky thing")

    def plan(self, ctx, current) -> Plan:
        return noop("done") if current else Plan([Change("do it", apply=lambda ctx: setattr(self, "done", True))])


def test_a_quiet_pass_shows_a_steps_retries_under_its_own_header():
    ctx, out = _ctx(attempts=2)
    [r] = Runner(ctx, quiet=True).run([Flaky()])
    assert r.status == "changed"
    text = out.getvalue()
    assert "retrying reading the flaky thing" in text
    assert text.index("TASK [test : flaky]") < text.index("retrying reading the flaky thing"), text


# ---------------------------------------------------------------------------------------------
# The layout the docs draw is the layout on disk

_PATH_LIKE = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
_FILE_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh", ".toml")


def _path_like(token: str) -> bool:
    return bool(_PATH_LIKE.fullmatch(token)) and ("/" in token or token.endswith(_FILE_SUFFIXES)) \
        and not token.startswith(".")


def _dirs_named(tokens: list[str]) -> list[str]:
    """The folders a line's paths are in: a bare name beside them (a table row's `runner.py` next to
    `gptoss_gke/core/`) is in one of those."""
    return [t if t.endswith("/") else t.rsplit("/", 1)[0] + "/" for t in tokens if "/" in t]


def named_paths(markdown: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every file or folder a piece of markdown names, with the folders it may be relative to: the code
    spans of each line, and inside fenced blocks a README-style tree (a folder at the margin, what is in
    it indented two spaces, its modules listed by name in parentheses) or a diagram's paths."""
    found: list[tuple[str, tuple[str, ...]]] = []
    in_block, top = False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_block, top = not in_block, ""
            continue
        if in_block:
            words = line.split()
            indent = len(line) - len(line.lstrip(" "))
            if words and indent == 0 and _path_like(words[0]):  # a tree's top level
                top = words[0] if words[0].endswith("/") else ""
                found.append((words[0], ()))
            elif words and indent == 2 and top and _path_like(words[0]):
                found.append((top + words[0], ()))
            elif line.strip().startswith("(") and top:  # "(setup_cluster, deploy, ...)": modules of `top`
                found += [(f"{top}{name}.py", ()) for name in re.findall(r"\w+", line)]
            else:  # a diagram: any path in it
                found += [(t, ()) for t in re.findall(r"[\w-]+(?:/[\w.-]+)+/?|[\w-]+\.py\b", line) if _path_like(t)]
            continue
        tokens = [w.strip("(),;:") for span in re.findall(r"`([^`]+)`", line) for w in span.split()]
        tokens = [t for t in tokens if _path_like(t)]
        found += [(t, tuple(_dirs_named(tokens))) for t in tokens]
    return found


def missing_paths(markdown: str) -> list[str]:
    def exists(name: str, bases: tuple[str, ...]) -> bool:
        return any((REPO / base / name).exists() for base in ("", "gptoss_gke/", *bases))

    return [name for name, bases in named_paths(markdown) if not exists(name, bases)]


def test_every_file_the_readme_layout_and_the_architecture_name_exists():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    architecture = (REPO / "docs" / "architecture.md").read_text()
    for name, text in (("README.md (Layout)", layout), ("docs/architecture.md", architecture)):
        assert len(named_paths(text)) >= 25, f"{name}: the guard no longer finds the names it should check"
        assert missing_paths(text) == [], f"{name} names what is not in the repository"
    # The guard can fail: a renamed module, a folder that went, a playbook listed that does not exist.
    assert missing_paths("```\ngptoss_gke/\n  nowhere.py      gone\ntasks/\n                (deploy, undeploy)\n```\n"
                         "| box | `gptoss_gke/core/` | `runner.py`, `planner.py` |\n") == \
        ["gptoss_gke/nowhere.py", "tasks/undeploy.py", "planner.py"]
