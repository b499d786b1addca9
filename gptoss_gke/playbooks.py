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


@task(iterable=["set_"], help=_help(target=TARGET_HELP))
def setup_cluster(c, target="all", env=None, dry_run=False, report=None, set_=None):
    """Auth, APIs, cluster settings, node pool(s) and kubectl credentials, idempotently."""
    from gptoss_gke.app import playbook
    from gptoss_gke.gcp.cluster import setup_cluster_steps

    with playbook(c, "setup-cluster", env=env, set_=set_, dry_run=dry_run, report=report, target=target) as pb:
        pb.run(setup_cluster_steps(pb.settings, pb.ctx.targets))


@task(iterable=["set_"], help=_help("env", "set_", "report"))
def doctor(c, env=None, report=None, set_=None):
    """Check local tools, gcloud credentials and project access; print the fix for each miss."""
    from gptoss_gke.app import playbook
    from gptoss_gke.doctor import doctor_steps

    with playbook(c, "doctor", env=env, set_=set_, report=report, target="all", dry_run=False,
                  needs_project=False) as pb:
        pb.run(doctor_steps())


@task(help={"adc": "also create Application Default Credentials for the Python clients (default: yes)"})
def auth(c, adc=True):
    """Log in interactively: gcloud auth login (+ application-default login for the Python clients)."""
    import sys

    if not sys.stdin.isatty():
        from invoke.exceptions import Exit

        raise Exit("inv auth needs a terminal: it opens a browser login. On a server, use a service "
                   "account: gcloud auth activate-service-account --key-file=KEY.json", code=2)
    c.run("gcloud auth login", pty=True)
    if adc:
        # The Python clients (Cloud Storage, Kubernetes) prefer gcloud's token; ADC is the fallback
        # for runs where gcloud itself is not on PATH (e.g. the remote staging host).
        c.run("gcloud auth application-default login", pty=True)


def build_collection() -> Collection:
    ns = Collection()
    for t in (setup_cluster, doctor, auth):
        ns.add_task(t)
    return ns
