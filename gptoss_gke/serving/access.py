"""How a person reaches the endpoint: a long-lived port-forward, and the API key on explicit request.

Both are checks (they change nothing: ok or failed, never changed), and talk to the Kubernetes API, so
its errors reach the person as a problem and a fix (``k8s/client.py`` ``explain``).
"""

from __future__ import annotations

import sys

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import Interrupted, StepError
from gptoss_gke.k8s.client import KubeCheck


class ForwardSession(KubeCheck):
    """`inv port-forward`: keep a tunnel open until Ctrl-C, showing how to use it without the key."""

    section = "port-forward"

    def __init__(self, settings, target_name: str, *, local_port: int = 8000, until=None):
        self.target = settings.target(target_name)
        self.local_port = local_port
        self.name = f"{self.target.name} endpoint on 127.0.0.1:{local_port or 'any free port'}"
        self.key = f"port-forward.{target_name}"
        # Tests pass a callable that returns True when the session should end; people press Ctrl-C.
        self.until = until

    def preview(self, ctx) -> Plan:
        return Plan([Change(f"forward 127.0.0.1:{self.local_port or '(any)'} to a Ready pod of {self.target.name} "
                            f"(port {self.target.port}) until Ctrl-C", "update")])

    def verdict(self, ctx, pod) -> Plan:
        return noop(f"forwarded to pod {ctx.settings.kube.namespace}/{pod} until it was closed", pod=pod)

    def probe(self, ctx, current) -> str:
        from gptoss_gke.k8s.portforward import port_forward_tunnel

        s = ctx.settings
        t = self.target
        p = ctx.printer
        with port_forward_tunnel(ctx, t, local_port=self.local_port) as tunnel:
            url = f"http://127.0.0.1:{tunnel.port}"
            p.line(f"  forwarding {url} → pod {s.kube.namespace}/{tunnel.pod}:{t.port}   (Ctrl-C closes the tunnel)")
            for line in curl_hint(s, url):
                p.line(line)
            p.line(f"  (or see the key once with `inv show-api-key --target={t.name}`)")
            try:
                while not (self.until and self.until(tunnel)):
                    ctx.sleep(0.2)
            except Interrupted:
                if ctx.interrupt.name != "SIGINT":
                    raise  # SIGTERM (a CI cancel) ends the run as interrupted
                ctx.interrupt.absorb()  # Ctrl-C is how a port-forward ends: not a failure
                p.line("")
        p.line("  tunnel closed")
        return tunnel.pod


def curl_hint(s, url: str) -> list[str]:
    """How to call the endpoint with the key kept off every command line (``ps`` shows arguments to all
    users): a shell variable, not exported, handed to curl as a header on stdin (``-H @-``, curl >= 7.55)
    by ``printf``, which is a shell builtin and so never a process of its own."""
    return [
        "  the key stays out of this output and off every command line (printf is a shell builtin; curl reads "
        "the header from stdin):",
        f"    VLLM_API_KEY=\"$(kubectl --context {s.kube_context} -n {s.kube.namespace} get secret "
        f"{s.kube.api_key_secret} -o jsonpath='{{.data.VLLM_API_KEY}}' | base64 -d)\"",
        f"    printf 'Authorization: Bearer %s\\n' \"$VLLM_API_KEY\" | curl -s {url}/v1/models -H @-",
    ]


class ShowApiKey(KubeCheck):
    """`inv show-api-key`: the one place the key is printed, to a person at a terminal (or --force)."""

    section = "api-key"
    key = "api-key.show"

    def __init__(self, settings, *, force: bool = False, stream=None):
        self.force = force
        self.stream = stream or sys.stdout
        self.name = f"API key in Secret {settings.kube.namespace}/{settings.kube.api_key_secret}"

    def preview(self, ctx) -> Plan:
        return Plan([Change("print the API key (this output only; never in a report)", "update")])

    def verdict(self, ctx, found) -> Plan:
        return noop("printed the API key above (this output only; never in a report)")

    def probe(self, ctx, current) -> None:
        from gptoss_gke.k8s.secret import read_api_key

        isatty = getattr(self.stream, "isatty", None)
        if not self.force and not (isatty and isatty()):
            raise StepError("standard output is not a terminal: not printing the API key where it could end up "
                            "in a log or a file",
                            "run it in a terminal, or add --force if you mean to capture it")
        key = read_api_key(ctx)
        # Deliberately past the printer: the printer masks this very value everywhere else.
        self.stream.write(f"  VLLM_API_KEY={key}\n")
        self.stream.flush()
