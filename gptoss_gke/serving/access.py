"""How a person reaches the endpoint: a long-lived port-forward, and the API key on explicit request."""

from __future__ import annotations

import sys
import time

from gptoss_gke.core.step import Change, Plan, Step
from gptoss_gke.errors import StepError


class ForwardSession(Step):
    """`inv port-forward`: keep a tunnel open until Ctrl-C, showing how to use it without the key."""

    section = "port-forward"
    verify = False

    def __init__(self, settings, target_name: str, *, local_port: int = 8000, until=None):
        self.target = settings.target(target_name)
        self.local_port = local_port
        self.name = f"{self.target.name} endpoint on 127.0.0.1:{local_port or 'any free port'}"
        # Tests pass a callable that returns True when the session should end; people press Ctrl-C.
        self.until = until

    def observe(self, ctx):
        return None

    def plan(self, ctx, current) -> Plan:
        return Plan([Change(f"forward 127.0.0.1:{self.local_port or '(any)'} to a Ready pod of {self.target.name} "
                            f"(port {self.target.port}) until Ctrl-C", "update", apply=self.run)])

    def run(self, ctx) -> None:
        from gptoss_gke.k8s.portforward import port_forward_tunnel

        s = ctx.settings
        t = self.target
        p = ctx.printer
        with port_forward_tunnel(ctx, t, local_port=self.local_port) as tunnel:
            url = f"http://127.0.0.1:{tunnel.port}"
            try:
                p.line(f"  forwarding {url} → pod {s.kube.namespace}/{tunnel.pod}:{t.port}   "
                       f"(Ctrl-C closes the tunnel)")
                p.line("  the key stays out of this output; put it in an environment variable first:")
                p.line(f"    export VLLM_API_KEY=\"$(kubectl --context {s.kube_context} -n {s.kube.namespace} get "
                       f"secret {s.kube.api_key_secret} -o jsonpath='{{.data.VLLM_API_KEY}}' | base64 -d)\"")
                p.line(f"    curl -s {url}/v1/models --oauth2-bearer \"$VLLM_API_KEY\"")
                p.line(f"  (or see it once with `inv show-api-key --target={t.name}`)")
                while not (self.until and self.until(tunnel)):
                    time.sleep(0.2)
            except KeyboardInterrupt:
                p.line("")
        p.line("  tunnel closed")


class ShowApiKey(Step):
    """`inv show-api-key`: the one place the key is printed, to a person at a terminal (or --force)."""

    section = "api-key"
    verify = False

    def __init__(self, settings, *, force: bool = False, stream=None):
        self.force = force
        self.stream = stream or sys.stdout
        self.name = f"API key in Secret {settings.kube.namespace}/{settings.kube.api_key_secret}"

    def observe(self, ctx):
        return None

    def plan(self, ctx, current) -> Plan:
        return Plan([Change("print the API key (this output only; never in a report)", "update", apply=self.run)])

    def run(self, ctx) -> None:
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
