"""Pod scenarios: what a pod's containers do over (logical) time, as the kubelet would report it.

A scenario is a function ``(pod, age, elapsed, params) -> PodView``: ``age`` counts controller ticks since
the scenario started to apply to the pod, ``elapsed`` seconds. The kubelet (:mod:`.kubelet`) renders the
view into ``status`` and records its events. :meth:`KubeEmulator.script_pods` picks one per pod.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class PodView:
    """What a scenario decides for a pod at a given tick; rendered into ``status`` by the emulator."""
    phase: str = "Pending"
    scheduled: bool = True
    unschedulable_message: str = ""
    # state of the affected container (the others follow ``others_running``)
    waiting: tuple | None = ("ContainerCreating", "")  # (reason, message)
    running: bool = False
    ready: bool = False
    terminated: tuple | None = None  # (reason, exitCode)
    restarts: int = 0
    last_terminated: tuple | None = None  # (reason, exitCode)
    others_running: bool = False
    others_ready: bool | None = None  # None: same as ``ready``
    sandbox: bool | None = None  # PodReadyToStartContainers; None: once any container started
    events: list = field(default_factory=list)  # (type, reason, message, source component[, at, about])
    # Scripted startups (:mod:`.startup`): the pod's own clock for this tick (RFC 3339; None: the wall
    # clock), whether init containers are done, extra status fields, and the log lines so far as
    # (stamp, text) pairs.
    clock: str | None = None
    initialized: bool = True
    extra_status: dict = field(default_factory=dict)
    logs: list | None = None


def first_container(pod: dict, params: dict) -> dict:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    want = params.get("container")
    for c in containers:
        if c.get("name") == want:
            return c
    return containers[0]


def _started_events(pod: dict) -> list:
    events = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        img, name = c.get("image", ""), c.get("name", "")
        events += [("Normal", "Pulling", f'Pulling image "{img}"', "kubelet"),
                   ("Normal", "Pulled", f'Successfully pulled image "{img}" in 1.2s (1.2s including waiting). '
                                        f"Image size: 1048576 bytes.", "kubelet"),
                   ("Normal", "Created", f"Created container: {name}", "kubelet"),
                   ("Normal", "Started", f"Started container {name}", "kubelet")]
    return events


def _scenario_ready(pod, age, elapsed, p) -> PodView:
    ticks = int(p.get("ticks", 2))
    start = int(p.get("start_ticks", max(ticks - 1, 0)))
    if age < start:
        return PodView()
    ready = age >= ticks and elapsed >= float(p.get("seconds", 0))
    return PodView(phase="Running", waiting=None, running=True, ready=ready, others_running=True,
                   events=_started_events(pod))


def _scenario_pending(pod, age, elapsed, p) -> PodView:
    return PodView()


def _scenario_running_not_ready(pod, age, elapsed, p) -> PodView:
    if age < int(p.get("start_ticks", 1)):
        return PodView()
    probe = p.get("probe", "Startup")
    msg = p.get("message") or (f'{probe} probe failed: Get "http://{pod.get("status", {}).get("podIP", "10.8.0.10")}'
                               f':8000/health": dial tcp: connect: connection refused')
    return PodView(phase="Running", waiting=None, running=True, ready=False, others_running=True,
                   events=_started_events(pod) + [("Warning", "Unhealthy", msg, "kubelet")])


def _scenario_unschedulable(pod, age, elapsed, p) -> PodView:
    msg = p.get("message") or ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
                               "available: 3 No preemption victims found for incoming pod.")
    events = [("Warning", "FailedScheduling", msg, "default-scheduler")]
    nts = p.get("not_trigger_scale_up")
    if nts:
        if nts is True:
            nts = "pod didn't trigger scale-up: 1 Insufficient nvidia.com/gpu"
        events.append(("Normal", "NotTriggerScaleUp", nts, "cluster-autoscaler"))
    if p.get("scale_up"):
        events.append(("Normal", "TriggeredScaleUp", p["scale_up"], "cluster-autoscaler"))
    return PodView(scheduled=False, unschedulable_message=msg, waiting=None, events=events)


def _scenario_image_pull(pod, age, elapsed, p) -> PodView:
    if age < int(p.get("ticks", 1)):
        return PodView()
    c = first_container(pod, p)
    img = p.get("image") or c.get("image", "")
    err = p.get("error") or (f'rpc error: code = NotFound desc = failed to pull and unpack image "{img}": failed '
                             f'to resolve reference "{img}": {img}: not found')
    return PodView(waiting=("ImagePullBackOff", f'Back-off pulling image "{img}": ErrImagePull: {err}'), sandbox=True,
                   events=[("Normal", "Pulling", f'Pulling image "{img}"', "kubelet"),
                           ("Warning", "Failed", f'Failed to pull image "{img}": {err}', "kubelet"),
                           ("Warning", "Failed", "Error: ErrImagePull", "kubelet"),
                           ("Normal", "BackOff", f'Back-off pulling image "{img}"', "kubelet"),
                           ("Warning", "Failed", "Error: ImagePullBackOff", "kubelet")])


def _crash(pod, age, elapsed, p, reason: str, exit_code: int) -> PodView:
    ticks = int(p.get("ticks", 1))
    if age < ticks:
        if age < max(ticks - 1, 0) or ticks == 0:
            return PodView()
        return PodView(phase="Running", waiting=None, running=True, others_running=True,
                       events=_started_events(pod))
    c = first_container(pod, p)
    restarts = int(p.get("restarts", 0)) or (1 + age - ticks)
    msg = f"back-off {min(10 * 2 ** (restarts - 1), 300)}s restarting failed container={c.get('name')} " \
          f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"
    ev = f"Back-off restarting failed container {c.get('name')} in pod " \
         f"{pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"
    return PodView(phase="Running", waiting=("CrashLoopBackOff", msg), restarts=restarts,
                   last_terminated=(reason, exit_code), others_running=True, others_ready=True, sandbox=True,
                   events=_started_events(pod) + [("Warning", "BackOff", ev, "kubelet")])


def _scenario_crashloop(pod, age, elapsed, p) -> PodView:
    return _crash(pod, age, elapsed, p, p.get("reason", "Error"), int(p.get("exit_code", 1)))


def _scenario_oomkilled(pod, age, elapsed, p) -> PodView:
    return _crash(pod, age, elapsed, p, "OOMKilled", int(p.get("exit_code", 137)))


def _scenario_gcsfuse_denied(pod, age, elapsed, p) -> PodView:
    if age < int(p.get("ticks", 1)):
        return PodView()
    bucket = p.get("bucket", "model-bucket")
    volume = p.get("volume", "gcs-fuse-csi-ephemeral")
    who = p.get("principal", "Caller")
    msg = p.get("message") or (
        f'MountVolume.SetUp failed for volume "{volume}" : rpc error: code = PermissionDenied desc = failed to get '
        f'GCS bucket "{bucket}": googleapi: Error 403: {who} does not have storage.objects.list access to the '
        f"Google Cloud Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not "
        f"exist)., forbidden")
    return PodView(events=[("Warning", "FailedMount", msg, "kubelet")])


def _still_running(pod, age, p) -> PodView | None:
    """Pending, then Running, for ``ticks``; None once the pod has ended."""
    ticks = int(p.get("ticks", 2))
    if age < max(ticks - 1, 0):
        return PodView()
    if age < ticks:
        return PodView(phase="Running", waiting=None, running=True, ready=True, others_running=True,
                       events=_started_events(pod))
    return None


def _scenario_succeeded(pod, age, elapsed, p) -> PodView:
    running = _still_running(pod, age, p)
    if running is not None:
        return running
    code = int(p.get("exit_code", 0))
    return PodView(phase="Succeeded", waiting=None, terminated=("Completed", code), events=_started_events(pod))


def _scenario_failed(pod, age, elapsed, p) -> PodView:
    running = _still_running(pod, age, p)
    if running is not None:
        return running
    return PodView(phase="Failed", waiting=None, terminated=(p.get("reason", "Error"), int(p.get("exit_code", 1))),
                   events=_started_events(pod))


SCENARIOS: dict[str, Callable[..., PodView]] = {
    "ready": _scenario_ready,                  # ticks=2, start_ticks=ticks-1, seconds=0
    "pending": _scenario_pending,              # scheduled, ContainerCreating forever
    "running_not_ready": _scenario_running_not_ready,  # start_ticks=1, probe="Startup", message=
    "unschedulable": _scenario_unschedulable,  # message=, not_trigger_scale_up=str|True, scale_up=str
    "image_pull": _scenario_image_pull,        # ticks=1, image=, error=, container=
    "crashloop": _scenario_crashloop,          # ticks=1, exit_code=1, reason="Error", restarts=, container=
    "oomkilled": _scenario_oomkilled,          # ticks=1, exit_code=137, restarts=, container=
    "gcsfuse_denied": _scenario_gcsfuse_denied,  # ticks=1, bucket=, volume=, principal=, message=
    "succeeded": _scenario_succeeded,          # ticks=2, exit_code=0 (default for Job pods)
    "failed": _scenario_failed,                # ticks=2, exit_code=1, reason="Error"
}
