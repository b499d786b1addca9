"""`inv auth`: an interactive login (not a playbook: nothing to observe, one person at a terminal)."""

from invoke import task


@task(auto_shortflags=False,
      help={"adc": "also create Application Default Credentials for the Python clients (default: yes)"})
def auth(c, adc=True):
    """Log in interactively: gcloud auth login (+ application-default login for the Python clients)."""
    import sys

    from invoke.exceptions import Exit

    from gptoss_gke.playbook import refuse_invoke_dry

    refuse_invoke_dry(c)
    if not sys.stdin.isatty():
        raise Exit("inv auth needs a terminal: it opens a browser login. On a server, use a service "
                   "account: gcloud auth activate-service-account --key-file=KEY.json", code=2)
    c.run("gcloud auth login", pty=True)
    if adc:
        # The Python clients (Cloud Storage, Kubernetes) prefer gcloud's token; ADC is the fallback
        # for runs where gcloud itself is not on PATH (e.g. the remote staging host).
        c.run("gcloud auth application-default login", pty=True)
