"""The endpoint, once deployed: `inv smoke`, `inv bench`, `inv port-forward`, `inv show-api-key`.

Each is one step that only looks or measures (a check): ok or failed, never changed. Only
`bench --in-cluster` changes something: it runs a Job in the cluster. (`smoke --via=service` runs its
client as a short Job too, and deletes it once read: nothing of it stays; its image, the tools image, is
mirrored into Artifact Registry first if it is not there yet.)
"""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import Choice, Integer, Switch


@playbook_task(
    target="list",
    # serving/smoke.py VIAS (not imported here: `inv --list` stays fast)
    via=Choice("service: from a Job's pod through the Service, as clients in the cluster (default for the spot "
               "profiles); pod: through a port-forward to one Ready pod (default for one on-demand replica)",
               choices=("service", "pod")),
)
def smoke(c, f):
    """/health, the served model, streamed answers (TTFT, tok/s), 401 without the key: through the Service or a pod."""
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import TOOLS, mirror_image_steps
    from gptoss_gke.playbook import playbook
    from gptoss_gke.serving.smoke import VIA_SERVICE, Smoke

    with playbook(c, "smoke", f) as pb:
        checks = [Smoke(pb.settings, t, via=f.via) for t in pb.ctx.targets]
        # The smoke Job runs on the tools image: in Artifact Registry first (a no-op once it is there).
        image = [Credentials(), *mirror_image_steps(pb.settings, [TOOLS])] if any(
            c.via == VIA_SERVICE for c in checks) else []
        pb.run([*image, *checks])


@playbook_task(
    target="one",
    in_cluster=Switch("run `vllm bench serve` as a Job in the cluster instead of the three tests through a "
                      "port-forward"),
    num_prompts=Integer("--in-cluster: prompts to send (default 30)", default=30, minimum=1, maximum=10_000),
    concurrency=Integer("--in-cluster: requests in flight at once (default 3)", default=3, minimum=1,
                        maximum=1_000),
)
def bench(c, f):
    """The tutorial's three tests (TTFT, ITL, TPOT, tok/s) beside its L4 figures; --report writes them as JSON."""
    from gptoss_gke.playbook import playbook
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


@playbook_task(common=("env", "set_"), target="one",
               local_port=Integer("local port to listen on, 127.0.0.1 only (default 8000; 0: any free)",
                                  default=8000, minimum=0, maximum=65535))
def port_forward(c, f):
    """Open 127.0.0.1:<port> to a Ready pod of the target until Ctrl-C; prints the URL, never the key."""
    from gptoss_gke.playbook import playbook
    from gptoss_gke.serving.access import ForwardSession

    with playbook(c, "port-forward", f) as pb:
        pb.run([ForwardSession(pb.settings, pb.ctx.targets[0], local_port=f.local_port)])


@playbook_task(common=("env", "set_", "report"), target="one", target_note="the key is shared by the namespace",
               force=Switch("print even when standard output is not a terminal"))
def show_api_key(c, f):
    """Print the endpoint's API key, to a person at a terminal (or with --force). Never in a report."""
    from gptoss_gke.playbook import playbook
    from gptoss_gke.serving.access import ShowApiKey

    with playbook(c, "show-api-key", f) as pb:
        pb.run([ShowApiKey(pb.settings, force=f.force)])
