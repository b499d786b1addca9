"""The invoke tasks. Thin: parse flags, pick steps, hand them to the engine.

Every task declares its flags once, with their kind (gptoss_gke/flags.py): one way to parse and check
them, and `-h` is always help. Only invoke and those declarations are imported at module level so
`inv --list` and `inv --help` stay instant; the engine, pydantic and the cloud SDKs load inside the
task that needs them.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from invoke import Collection, Task, task
from invoke.exceptions import Exit, ParseError, UnexpectedExit

from gptoss_gke.errors import DEBUG_VARIABLE
from gptoss_gke.flags import (ByteSize, Choice, Flag, Integer, ModelConfig, Number, OptionalValue, OutputDir, Repeated,
                              Switch, Targets, parse_flags)
from gptoss_gke.serving.capacity import BLOCK_SIZES, KV_CACHE_DTYPES

COMMON = {
    "env": Flag("environment: env/<ENV>.yaml (default: $GPTOSS_ENV or dev)"),
    "set_": Repeated("override a setting, key.path=value (repeatable), e.g. --set cluster.name=gptoss"),
    "dry_run": Switch("read everything, change nothing, print the plan (works offline)"),
    "report": Flag("also write every step result as JSON to this file"),
}
ALL_COMMON = tuple(COMMON)


class _Task(Task):
    """invoke's Task, except that a bare list flag (``--set`` with no value) is seen, not dropped.

    invoke starts list flags at ``[]``, so its parser cannot tell "no value" from "not given". Starting
    at None and marking the flag optional makes a bare ``--set`` arrive as True, which the flag check
    refuses with the fix.
    """

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.kind is list:
                arg.raw_value = None
        return args


def playbook_task(*, common: tuple[str, ...] = ALL_COMMON, conflicts: tuple[tuple[str, str, str], ...] = (),
                  **own: Flag):
    """Declare a task by its flags: the common ones it takes plus its own, each with its kind.

    The body is called as ``body(c, flags)`` with every flag parsed; problems travel in
    ``flags.problems`` and the playbook reports them with the settings' own (exit 2). No short
    flags are generated, so ``-h`` is always help.
    """

    def decorate(body):
        specs = {**{name: COMMON[name] for name in common}, **own}

        def run(c, **raw):
            return guarded(lambda: body(c, parse_flags(specs, raw, conflicts)))

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        run.__signature__ = inspect.Signature(
            [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=spec.invoke_default)
               for name, spec in specs.items()])
        lists = [n for n, s in specs.items() if isinstance(s, Repeated)]
        optional = [n for n, s in specs.items() if isinstance(s, (Repeated, OptionalValue))]
        return task(run, klass=_Task, iterable=lists, optional=optional, auto_shortflags=False,
                    help={name: _help_text(spec) for name, spec in specs.items()})

    return decorate


# ---------------------------------------------------------------------------------------------
# No traceback reaches a person: around every task body (guarded), and for invoke's own output
# (install_excepthook, called by tasks.py: `inv --list | head` must end quietly too).

def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE) not in (None, "", "0")


def _redactor():
    from gptoss_gke.core.redact import Redactor

    redactor = Redactor()
    redactor.add(os.environ.get("HF_TOKEN"))
    return redactor


def _unexpected(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return _redactor()(f"error: unexpected {type(exc).__name__}: {text}{where}\n"
                    f"  fix: this is a bug in gptoss-gke; re-run with {DEBUG_VARIABLE}=1 to see the traceback "
                    f"and include it in a report")


def _say(message: str) -> None:
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()


def guarded(body: Callable[[], Any]) -> Any:
    """Run a task body so that no traceback ever reaches a person.

    Bad input is exit 2 with the problems (the playbook prints them); a known failure is its problem and
    fix; anything else is one line with the way to see the traceback. A closed stdout ends quietly.
    """
    from gptoss_gke.core.report import silence_stdout
    from gptoss_gke.errors import ToolError

    try:
        return body()
    except (Exit, ParseError, UnexpectedExit, KeyboardInterrupt):
        raise
    except BrokenPipeError:
        silence_stdout()
        raise Exit(code=0) from None
    except ToolError as exc:
        _say(_redactor()(f"error: {exc}"))
        raise Exit(code=exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _debugging():
            raise
        _say(_unexpected(exc))
        raise Exit(code=1) from None


def install_excepthook() -> None:
    """For what escapes invoke itself: a closed stdout ends quietly, anything else is one line."""
    default = sys.excepthook

    def hook(kind, exc, tb):
        if issubclass(kind, BrokenPipeError):
            from gptoss_gke.core.report import silence_stdout

            silence_stdout()
            return
        if issubclass(kind, Exception) and not _debugging():
            _say(_unexpected(exc))
            return
        default(kind, exc, tb)

    sys.excepthook = hook


def _help_text(spec: Flag) -> str:
    if isinstance(spec, Integer):
        return f"{spec.help}; {spec._allowed()}"
    if isinstance(spec, Choice):
        return f"{spec.help}: {', '.join(spec.choices)}"
    return spec.help


TARGETS_HELP = "l4, ironwood, a comma-separated list, or all (default: the enabled targets)"
ON_HELP = ("run on another host over SSH: --on=[user@]host[:port], or bare --on for remote.host "
           "(host key checked against remote.known_hosts)")


def _one_target(task_name: str, help_text: str = "l4 or ironwood") -> Targets:
    return Targets(help_text, mode="one", task=task_name)


def _named_targets(task_name: str) -> Targets:
    return Targets("l4 or ironwood (or a comma-separated list)", mode="list", task=task_name)


@playbook_task(target=Targets(TARGETS_HELP, task="setup-cluster"))
def setup_cluster(c, f):
    """Auth, APIs, cluster settings, node pool(s) and kubectl credentials, idempotently."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.cluster import setup_cluster_steps

    with playbook(c, "setup-cluster", f) as pb:
        pb.run(setup_cluster_steps(pb.settings, pb.ctx.targets))


@playbook_task(common=("env", "set_", "report"),
               on=OptionalValue(ON_HELP + "; checks that host's tools and credentials (a bastion) and its python"))
def doctor(c, f):
    """Check local tools, gcloud credentials, project access and placeholder settings; print each fix once."""
    from gptoss_gke.app import playbook
    from gptoss_gke.doctor import PlaceholderSettings, doctor_steps

    with playbook(c, "doctor", f, needs_project=False) as pb:
        steps = doctor_steps()
        if pb.remote is not None:
            from gptoss_gke.remote import STAGING_MODULES, RemoteHost

            host = RemoteHost(pb.remote, modules=STAGING_MODULES, purpose="stage-model", modules_required=False)
            for step in steps:
                step.needs = (host.name,)  # one connection failure, not one per check
            steps = [host, *steps]
        pb.run([PlaceholderSettings(), *steps])  # the settings are read here, whichever host is checked


@task(auto_shortflags=False,
      help={"adc": "also create Application Default Credentials for the Python clients (default: yes)"})
def auth(c, adc=True):
    """Log in interactively: gcloud auth login (+ application-default login for the Python clients)."""
    import sys

    from gptoss_gke.app import refuse_invoke_dry

    refuse_invoke_dry(c)
    if not sys.stdin.isatty():
        from invoke.exceptions import Exit

        raise Exit("inv auth needs a terminal: it opens a browser login. On a server, use a service "
                   "account: gcloud auth activate-service-account --key-file=KEY.json", code=2)
    c.run("gcloud auth login", pty=True)
    if adc:
        # The Python clients (Cloud Storage, Kubernetes) prefer gcloud's token; ADC is the fallback
        # for runs where gcloud itself is not on PATH (e.g. the remote staging host).
        c.run("gcloud auth application-default login", pty=True)


@playbook_task(
    target=_named_targets("deploy"),
    skip_smoke=Switch("stop after the rollout is ready; do not run the smoke test"),
    rotate_api_key=Switch("generate a new API key even if the Secret has one"),
)
def deploy(c, f):
    """Image → Artifact Registry, weights → GCS, secret, manifests, rollout, smoke test."""
    from gptoss_gke.app import playbook
    from gptoss_gke.deploy import deploy_steps

    with playbook(c, "deploy", f) as pb:
        pb.run(deploy_steps(pb.settings, pb.ctx.targets, rotate_api_key=f.rotate_api_key, skip_smoke=f.skip_smoke))


@playbook_task(
    target=Targets("l4, ironwood, a comma-separated list, or all (default: all)", all_means="catalogue",
                   task="teardown"),
    yes=Switch("do not ask before deleting (needed without a terminal)"),
    purge_model=Switch("also delete the staged weights under our bucket folder, our IAM binding, and the l4 "
                       "model cache"),
    purge_images=Switch("also delete the mirrored images (and the repository, if we created it)"),
    delete_cluster=Switch("delete the cluster itself (only if this environment created it); its load balancers "
                          "and disks are deleted first"),
    scale_to_zero=Switch("keep the node pools but scale them to zero, for a quick return"),
    force=Switch("delete the node pools/cluster even when the Kubernetes objects in the cluster cannot be seen "
                 "(their load balancers and disks may be left behind, and are named)"),
    conflicts=(("delete_cluster", "scale_to_zero",
                "deleting the cluster deletes its node pools; there is nothing left to scale to zero"),),
)
def teardown(c, f):
    """Delete what this environment created (ownership labels only), after listing it and asking."""
    from gptoss_gke.app import PROJECT_ROOT, playbook
    from gptoss_gke.config import other_environments
    from gptoss_gke.errors import ToolError
    from gptoss_gke.flags import ALL
    from gptoss_gke.teardown import not_deleted, teardown_steps

    with playbook(c, "teardown", f) as pb:
        # What environments share (a bucket grant, a mirrored tag, staged weights) is kept while another uses it.
        others = other_environments(pb.settings, root=PROJECT_ROOT) if f.purge_model or f.purge_images else {}

        def steps():
            # "all" means every catalogue target, enabled or not: one may have been enabled earlier.
            return teardown_steps(pb.settings, pb.ctx.targets, all_targets=f.target == ALL,
                                  purge_model=f.purge_model, purge_images=f.purge_images,
                                  delete_cluster=f.delete_cluster, scale_to_zero=f.scale_to_zero, force=f.force,
                                  others=others)

        pb.extra["deleted"] = []
        if f.dry_run:
            pb.run(steps())
            return
        preview = pb.preview(steps())
        doomed = [r for r in preview if r.changed]
        if any(r.status == "failed" for r in preview):
            # Something could not be seen (or checked): deleting the rest could orphan what it holds.
            pb.results.extend(not_deleted(preview))
            raise ToolError("nothing deleted: teardown stops when anything it would delete, or anything that "
                            "depends on it, could not be seen or checked (failed above)",
                            "fix what the failures above say, then re-run"
                            + ("" if f.force else "; --force deletes the node pools/cluster even when the Kubernetes "
                               "objects in them cannot be seen"))
        if not doomed:
            pb.results.extend(preview)  # nothing to delete: the preview is the answer
            return
        pb.ctx.printer.line("")
        pb.ctx.printer.line(f"About to change {len(doomed)} item(s) listed above as 'changed (dry-run)'.", "bold")
        if not pb.ctx.confirm("Delete them?"):
            raise ToolError("nothing deleted: teardown needs confirmation",
                            "answer y at the prompt, or pass --yes (required without a terminal)")
        pb.ctx.printer.line("")
        pb.ctx.printer.line("Deleting (only what is listed above):", "bold")
        try:
            pb.run(steps(), quiet=True, approved={r.name: r.planned for r in doomed})
        finally:  # an interrupted run still reports what it did delete
            pb.extra["deleted"] = [p for r in pb.results if r.changed for p in r.planned]


@playbook_task(
    common=("env", "set_", "report"),
    target=_one_target("plan"),
    model=ModelConfig("a catalogue model id or the path of a Hugging Face config.json (default: the target's)"),
    kv_cache_memory=ByteSize("memory for the KV cache, as vLLM's --kv-cache-memory-bytes: 4GiB, 4.5GB, "
                             "4294967296 (default: estimated)"),
    max_model_len=Integer("tokens per request (default: the target's)", minimum=1, human=True),
    max_num_batched_tokens=Integer("vLLM's --max-num-batched-tokens (default: the target's)", minimum=1,
                                   human=True),
    kv_cache_dtype=Choice("KV cache dtype (default: the target's)", choices=KV_CACHE_DTYPES),
    block_size=Choice("KV block size in tokens (default: vLLM's for the platform)", choices=BLOCK_SIZES),
    throughput=Number("output tokens/s for tokens-per-dollar (default: the target's measured or assumed figure)"),
)
def plan(c, f):
    """Offline: will the model fit, KV tokens, max concurrency (vLLM's arithmetic), and cost."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.plan import CapacityPlan

    with playbook(c, "plan", f, needs_project=False) as pb:
        steps = [CapacityPlan(pb.settings, t, model=f.model, kv_cache_memory=f.kv_cache_memory,
                              max_model_len=f.max_model_len, max_num_batched_tokens=f.max_num_batched_tokens,
                              kv_cache_dtype=f.kv_cache_dtype,
                              block_size=int(f.block_size) if f.block_size else None, throughput=f.throughput)
                 for t in pb.ctx.targets]
        pb.run(steps)
        pb.extra["plans"] = [s.report for s in steps]
        if len(steps) == 1:
            pb.extra.update({k: steps[0].report.get(k) for k in ("kv_cache_tokens", "max_concurrency")})


@playbook_task(common=("env", "set_"), target=_named_targets("render"),
               out=OutputDir("write one file per object into this directory instead of printing"))
def render(c, f):
    """Offline: the YAML deploy would apply (image by tag unless pinned), for review, kubectl diff or GitOps."""
    import sys
    from pathlib import Path

    from invoke.exceptions import Exit

    from gptoss_gke.app import offline_settings
    from gptoss_gke.errors import ToolError
    from gptoss_gke.k8s.manifests import deploy_objects_offline, object_filename, yaml_stream

    settings, targets = offline_settings(f)
    try:
        objects, notes = deploy_objects_offline(settings, targets)
    except ToolError as exc:
        raise Exit(f"error: {exc}", code=2) from None
    header = [f"inv render --target={','.join(targets)} (env {settings.env_name}): what `inv deploy` applies, "
              f"in its order", *notes]
    if f.out is None:
        sys.stdout.write(yaml_stream(objects, header))
        return
    folder = Path(f.out)
    folder.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects, 1):
        path = folder / object_filename(i, obj)
        path.write_text(yaml_stream([obj], header[:1]))
        print(path)
    print(f"# {len(objects)} objects; " + "; ".join(notes))


@playbook_task(target=Targets(TARGETS_HELP, task="mirror-image"))
def mirror_image(c, f):
    """Copy the serving image into Artifact Registry with skopeo (no Docker daemon), pinned by digest."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import mirror_image_steps

    with playbook(c, "mirror-image", f) as pb:
        pb.run([Credentials(), *mirror_image_steps(pb.settings, pb.ctx.targets)])


@playbook_task(target=_named_targets("smoke"))
def smoke(c, f):
    """Through a port-forward: /health, the served model, one streamed answer (TTFT, tok/s), 401 without the key."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.smoke import Smoke

    with playbook(c, "smoke", f) as pb:
        pb.run([Smoke(pb.settings, t) for t in pb.ctx.targets])


@playbook_task(common=("env", "set_"), target=_one_target("port-forward"),
               local_port=Integer("local port to listen on, 127.0.0.1 only (default 8000; 0: any free)",
                                  default=8000, minimum=0, maximum=65535))
def port_forward(c, f):
    """Open 127.0.0.1:<port> to a Ready pod of the target until Ctrl-C; prints the URL, never the key."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.access import ForwardSession

    with playbook(c, "port-forward", f) as pb:
        pb.run([ForwardSession(pb.settings, pb.ctx.targets[0], local_port=f.local_port)])


@playbook_task(common=("env", "set_", "report"),
               target=_one_target("show-api-key", "l4 or ironwood (the key is shared by the namespace)"),
               force=Switch("print even when standard output is not a terminal"))
def show_api_key(c, f):
    """Print the endpoint's API key, to a person at a terminal (or with --force). Never in a report."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.access import ShowApiKey

    with playbook(c, "show-api-key", f) as pb:
        pb.run([ShowApiKey(pb.settings, force=f.force)])


@playbook_task(
    target=_one_target("bench"),
    in_cluster=Switch("run `vllm bench serve` as a Job in the cluster instead of the three tests through a "
                      "port-forward"),
    num_prompts=Integer("--in-cluster: prompts to send (default 30)", default=30, minimum=1, maximum=10_000),
    concurrency=Integer("--in-cluster: requests in flight at once (default 3)", default=3, minimum=1,
                        maximum=1_000),
)
def bench(c, f):
    """The tutorial's three tests (TTFT, ITL, TPOT, tok/s) beside its L4 figures; --report writes them as JSON."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.bench import Bench, BenchJob

    with playbook(c, "bench", f) as pb:
        name = pb.ctx.targets[0]
        if f.in_cluster:
            step = BenchJob(pb.settings, name, num_prompts=f.num_prompts, concurrency=f.concurrency)
        else:
            step = Bench(pb.settings, name)
        pb.run([step])
        if step.doc:
            pb.extra["bench"] = step.doc


@playbook_task(target=Targets(TARGETS_HELP, task="stage-model"),
               on=OptionalValue(ON_HELP + "; the transfer runs there (a VM in the bucket's region)"))
def stage_model(c, f):
    """Hugging Face → Cloud Storage: only what vLLM loads, sha256-verified, resumable; bucket + IAM grant."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.project import Credentials, Project
    from gptoss_gke.models import stage_model_steps

    with playbook(c, "stage-model", f, remote_shell=False) as pb:
        if pb.remote is not None:
            from gptoss_gke.remote import stage_model_remotely

            stage_model_remotely(pb)
        else:
            pb.run([Credentials(), Project(), *stage_model_steps(pb.settings, pb.ctx.targets)])


def build_collection() -> Collection:
    ns = Collection()
    for t in (setup_cluster, deploy, teardown, plan, render, doctor, auth, mirror_image, smoke, port_forward,
              show_api_key, bench, stage_model):
        ns.add_task(t)
    return ns
