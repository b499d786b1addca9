"""The invoke tasks. Thin: parse flags, pick steps, hand them to the engine.

Only invoke is imported at module level so `inv --list` and `inv --help` stay instant; the engine,
pydantic and the cloud SDKs load inside the task that needs them.
"""

from __future__ import annotations

from invoke import Collection, task

COMMON_HELP = {
    "env": "environment: env/<ENV>.yaml (default: $GPTOSS_ENV or dev)",
    "set_": "override a setting, key.path=value (repeatable), e.g. --set cluster.name=gptoss",
    "dry_run": "read everything, change nothing, print the plan (works offline)",
    "report": "also write every step result as JSON to this file",
}


def _help(*common: str, **extra: str) -> dict[str, str]:
    """Help for the common flags a task takes (all four when none are named) plus its own."""
    return {**{k: v for k, v in COMMON_HELP.items() if not common or k in common}, **extra}


TARGET_HELP = "l4, ironwood, a comma-separated list, or all (default: the enabled targets)"
ON_HELP = ("run on another host over SSH: --on=[user@]host[:port], or bare --on for remote.host "
           "(host key checked against remote.known_hosts)")


@task(iterable=["set_"], help=_help(target=TARGET_HELP))
def setup_cluster(c, target="all", env=None, dry_run=False, report=None, set_=None):
    """Auth, APIs, cluster settings, node pool(s) and kubectl credentials, idempotently."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.cluster import setup_cluster_steps

    with playbook(c, "setup-cluster", env=env, set_=set_, dry_run=dry_run, report=report, target=target) as pb:
        pb.run(setup_cluster_steps(pb.settings, pb.ctx.targets))


@task(iterable=["set_"], optional=["on"], help=_help("env", "set_", "report", on=ON_HELP + "; checks that host's "
                                                       "tools and credentials (a bastion) and its python"))
def doctor(c, env=None, report=None, set_=None, on=None):
    """Check local tools, gcloud credentials and project access; print the fix for each miss."""
    from gptoss_gke.app import playbook
    from gptoss_gke.doctor import doctor_steps

    with playbook(c, "doctor", env=env, set_=set_, report=report, target="all", dry_run=False,
                  needs_project=False, on=on) as pb:
        steps = doctor_steps()
        if pb.remote is not None:
            from gptoss_gke.remote import STAGING_MODULES, RemoteHost

            host = RemoteHost(pb.remote, modules=STAGING_MODULES, purpose="stage-model", modules_required=False)
            for step in steps:
                step.needs = (host.name,)  # one connection failure, not one per check
            steps = [host, *steps]
        pb.run(steps)


@task(help={"adc": "also create Application Default Credentials for the Python clients (default: yes)"})
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


@task(iterable=["set_"], help=_help(
    target="l4 or ironwood (or a comma-separated list)",
    skip_smoke="stop after the rollout is ready; do not run the smoke test",
    rotate_api_key="generate a new API key even if the Secret has one",
))
def deploy(c, target=None, env=None, dry_run=False, report=None, set_=None, skip_smoke=False, rotate_api_key=False):
    """Image → Artifact Registry, weights → GCS, secret, manifests, rollout, smoke test."""
    from gptoss_gke.app import playbook
    from gptoss_gke.deploy import deploy_steps

    with playbook(c, "deploy", env=env, set_=set_, dry_run=dry_run, report=report, target=target,
                  allow_all_targets=False) as pb:
        pb.run(deploy_steps(pb.settings, pb.ctx.targets, rotate_api_key=rotate_api_key, skip_smoke=skip_smoke))


@task(iterable=["set_"], help=_help(
    target=TARGET_HELP.replace("the enabled targets", "all"),
    yes="do not ask before deleting (needed without a terminal)",
    purge_model="also delete the staged weights under our bucket folder, our IAM binding, and the l4 model cache",
    purge_images="also delete the mirrored images (and the repository, if we created it)",
    delete_cluster="delete the cluster itself (only if this environment created it); its load balancers and "
                   "disks are deleted first",
    scale_to_zero="keep the node pools but scale them to zero, for a quick return",
    force="delete the node pools/cluster even when the Kubernetes objects in the cluster cannot be seen "
          "(their load balancers and disks may be left behind, and are named)",
))
def teardown(c, target="all", env=None, dry_run=False, report=None, set_=None, yes=False, purge_model=False,
             purge_images=False, delete_cluster=False, scale_to_zero=False, force=False):
    """Delete what this environment created (ownership labels only), after listing it and asking."""
    from gptoss_gke.app import PROJECT_ROOT, playbook
    from gptoss_gke.config import other_environments
    from gptoss_gke.errors import ToolError
    from gptoss_gke.targets import CATALOGUE
    from gptoss_gke.teardown import not_deleted, teardown_steps

    all_targets = target in (None, "", "all")
    with playbook(c, "teardown", env=env, set_=set_, dry_run=dry_run, report=report, yes=yes,
                  target="all" if all_targets else target) as pb:
        # What environments share (a bucket grant, a mirrored tag, staged weights) is kept while another uses it.
        others = other_environments(pb.settings, root=PROJECT_ROOT) if purge_model or purge_images else {}

        def steps():
            # "all" means every catalogue target, enabled or not: one may have been enabled earlier.
            return teardown_steps(pb.settings, list(CATALOGUE) if all_targets else pb.ctx.targets,
                                  all_targets=all_targets, purge_model=purge_model, purge_images=purge_images,
                                  delete_cluster=delete_cluster, scale_to_zero=scale_to_zero, force=force,
                                  others=others)

        pb.extra["deleted"] = []
        if dry_run:
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
                            + ("" if force else "; --force deletes the node pools/cluster even when the Kubernetes "
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


@task(iterable=["set_"], help=_help(
    "env", "set_", "report",
    target="l4 or ironwood",
    model="a catalogue model id or the path of a Hugging Face config.json (default: the target's)",
    kv_cache_memory="bytes for the KV cache, as vLLM's --kv-cache-memory-bytes (default: estimated)",
    max_model_len="tokens per request (default: the target's)",
    max_num_batched_tokens="vLLM's --max-num-batched-tokens (default: the target's)",
    kv_cache_dtype="auto, fp8, ... (default: the target's)",
    block_size="KV block size in tokens (default: vLLM's for the platform)",
    throughput="output tokens/s for tokens-per-dollar (default: the target's measured or assumed figure)",
))
def plan(c, target=None, env=None, report=None, set_=None, model=None, kv_cache_memory=None, max_model_len=None,
         max_num_batched_tokens=None, kv_cache_dtype=None, block_size=None, throughput=None):
    """Offline: will the model fit, KV tokens, max concurrency (vLLM's arithmetic), and cost."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.plan import CapacityPlan

    def number(v, kind=int):
        return kind(v) if v is not None else None

    with playbook(c, "plan", env=env, set_=set_, report=report, target=target, allow_all_targets=False,
                  needs_project=False) as pb:
        steps = [CapacityPlan(pb.settings, t, model=model, kv_cache_memory=number(kv_cache_memory),
                              max_model_len=number(max_model_len),
                              max_num_batched_tokens=number(max_num_batched_tokens), kv_cache_dtype=kv_cache_dtype,
                              block_size=number(block_size), throughput=number(throughput, float))
                 for t in pb.ctx.targets]
        pb.run(steps)
        pb.extra["plans"] = [s.report for s in steps]
        if len(steps) == 1:
            pb.extra.update({k: steps[0].report.get(k) for k in ("kv_cache_tokens", "max_concurrency")})


@task(iterable=["set_"], help=_help("env", "set_", target="l4 or ironwood (or a comma-separated list)",
                                    out="write one file per object into this directory instead of printing"))
def render(c, target=None, env=None, set_=None, out=None):
    """Offline: the YAML deploy would apply (image by tag unless pinned), for review, kubectl diff or GitOps."""
    import sys
    from pathlib import Path

    from invoke.exceptions import Exit

    from gptoss_gke.app import offline_settings
    from gptoss_gke.errors import ToolError
    from gptoss_gke.k8s.manifests import deploy_objects_offline, object_filename, yaml_stream

    settings, targets = offline_settings(env, set_, target)
    try:
        objects, notes = deploy_objects_offline(settings, targets)
    except ToolError as exc:
        raise Exit(f"error: {exc}", code=2) from None
    header = [f"inv render --target={','.join(targets)} (env {settings.env_name}): what `inv deploy` applies, "
              f"in its order", *notes]
    if out is None:
        sys.stdout.write(yaml_stream(objects, header))
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects, 1):
        path = folder / object_filename(i, obj)
        path.write_text(yaml_stream([obj], header[:1]))
        print(path)
    print(f"# {len(objects)} objects; " + "; ".join(notes))


@task(iterable=["set_"], help=_help(target=TARGET_HELP))
def mirror_image(c, target="all", env=None, dry_run=False, report=None, set_=None):
    """Copy the serving image into Artifact Registry with skopeo (no Docker daemon), pinned by digest."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import mirror_image_steps

    with playbook(c, "mirror-image", env=env, set_=set_, dry_run=dry_run, report=report, target=target) as pb:
        pb.run([Credentials(), *mirror_image_steps(pb.settings, pb.ctx.targets)])


@task(iterable=["set_"], help=_help(target="l4 or ironwood (or a comma-separated list)"))
def smoke(c, target=None, env=None, dry_run=False, report=None, set_=None):
    """Through a port-forward: /health, the served model, one streamed answer (TTFT, tok/s), 401 without the key."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.smoke import Smoke

    with playbook(c, "smoke", env=env, set_=set_, dry_run=dry_run, report=report, target=target,
                  allow_all_targets=False) as pb:
        pb.run([Smoke(pb.settings, t) for t in pb.ctx.targets])


@task(iterable=["set_"], help=_help("env", "set_", target="l4 or ironwood",
                                    local_port="local port to listen on, 127.0.0.1 only (default 8000; 0: any free)"))
def port_forward(c, target=None, local_port=8000, env=None, set_=None):
    """Open 127.0.0.1:<port> to a Ready pod of the target until Ctrl-C; prints the URL, never the key."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.access import ForwardSession

    with playbook(c, "port-forward", env=env, set_=set_, target=target, allow_all_targets=False,
                  single_target="port-forward opens") as pb:
        pb.run([ForwardSession(pb.settings, pb.ctx.targets[0], local_port=int(local_port))])


@task(iterable=["set_"], help=_help("env", "set_", "report",
                                    target="l4 or ironwood (the key is shared by the namespace)",
                                    force="print even when standard output is not a terminal"))
def show_api_key(c, target=None, env=None, report=None, set_=None, force=False):
    """Print the endpoint's API key, to a person at a terminal (or with --force). Never in a report."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.access import ShowApiKey

    with playbook(c, "show-api-key", env=env, set_=set_, report=report, target=target,
                  allow_all_targets=False) as pb:
        pb.run([ShowApiKey(pb.settings, force=force)])


@task(iterable=["set_"], help=_help(
    target="l4 or ironwood",
    in_cluster="run `vllm bench serve` as a Job in the cluster instead of the three tests through a port-forward",
    num_prompts="--in-cluster: prompts to send (default 30)",
    concurrency="--in-cluster: requests in flight at once (default 3)",
))
def bench(c, target=None, env=None, dry_run=False, report=None, set_=None, in_cluster=False, num_prompts=30,
          concurrency=3):
    """The tutorial's three tests (TTFT, ITL, TPOT, tok/s) beside its L4 figures; --report writes them as JSON."""
    from gptoss_gke.app import playbook
    from gptoss_gke.serving.bench import Bench, BenchJob

    with playbook(c, "bench", env=env, set_=set_, dry_run=dry_run, report=report, target=target,
                  allow_all_targets=False, single_target="bench measures") as pb:
        name = pb.ctx.targets[0]
        if in_cluster:
            step = BenchJob(pb.settings, name, num_prompts=int(num_prompts), concurrency=int(concurrency))
        else:
            step = Bench(pb.settings, name)
        pb.run([step])
        if step.doc:
            pb.extra["bench"] = step.doc


@task(iterable=["set_"], optional=["on"], help=_help(target=TARGET_HELP, on=ON_HELP + "; the transfer runs there "
                                                                           "(a VM in the bucket's region)"))
def stage_model(c, target="all", env=None, dry_run=False, report=None, set_=None, on=None):
    """Hugging Face → Cloud Storage: only what vLLM loads, sha256-verified, resumable; bucket + IAM grant."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.project import Credentials, Project
    from gptoss_gke.models import stage_model_steps

    with playbook(c, "stage-model", env=env, set_=set_, dry_run=dry_run, report=report, target=target, on=on,
                  remote_shell=False) as pb:
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
