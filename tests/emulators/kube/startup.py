"""Scripted cold starts: a pod goes through scale-up, image pull, init containers, container start and vLLM's
log lines at known offsets from its creation, on its own clock, one milestone per controller tick.

``script_pods("gptoss-l4", "startup", milestones={...}, logs=[...], ...)``. Each milestone is an offset in
seconds from the pod's ``creationTimestamp``; the kubelet stamps conditions, events, ``startedAt`` and log
lines with that clock instead of the wall clock, so a test knows every duration exactly without sleeping:

``scale_up``      TriggeredScaleUp from the cluster autoscaler (the pod is unschedulable until ``scheduled``)
``scheduled``     bound to the node (PodScheduled, the scheduler's Scheduled event)
``pulling``       the kubelet's Pulling event
``pulled``        Pulled ("Image size: N bytes", or "already present on machine" with ``cached=True``) and,
                  with ``streamed=True``, GKE's ImageStreaming event on the node
``init_started``  init containers running (their ``startedAt``); ``initialized``: done (Initialized)
``started``       the serving container running (Created, Started, ``state.running.startedAt``)
``ready``         Ready

``logs``: ``[(offset, line), ...]``, served with those stamps (``timestamps=true``) once reached.
"""

from __future__ import annotations

import datetime as _dt

from .scenarios import SCENARIOS, PodView, first_container

ORDER = ("scale_up", "scheduled", "pulling", "pulled", "init_started", "initialized", "started", "ready")


def _at(base: str, offset: float) -> str:
    start = _dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    return (start + _dt.timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_stamp(base: str, offset: float) -> str:
    start = _dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    return (start + _dt.timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _scenario_startup(pod, age, elapsed, p) -> PodView:
    marks: dict = p["milestones"]
    logs = sorted(p.get("logs") or [], key=lambda x: x[0])
    stops = sorted({*marks.values(), *(off for off, _ in logs)})
    now_off = stops[min(age, len(stops) - 1)]
    base = pod["metadata"]["creationTimestamp"]
    clock = _at(base, now_off)
    reached = {m for m, off in marks.items() if off <= now_off}
    c = first_container(pod, p)
    image, name = c.get("image", ""), c.get("name", "")
    resource = p.get("resource", "nvidia.com/gpu")

    events = []
    if "scale_up" in marks:
        events.append(("Warning", "FailedScheduling", f"0/1 nodes are available: 1 Insufficient {resource}.",
                       "default-scheduler", _at(base, 0)))
    if "scale_up" in reached:
        events.append(("Normal", "TriggeredScaleUp", p.get("scale_up_message", "pod triggered scale-up: "
                       "[{https://www.googleapis.com/compute/v1/projects/test-project/zones/us-central1-a/"
                       "instanceGroups/gke-gptoss-pool-grp 0->1 (max: 1)}]"), "cluster-autoscaler",
                       _at(base, marks["scale_up"])))
    if "scheduled" not in reached:
        return PodView(scheduled=False, waiting=None, clock=clock, events=events,
                       unschedulable_message=f"0/1 nodes are available: 1 Insufficient {resource}.")
    if "pulling" in reached:
        events.append(("Normal", "Pulling", f'Pulling image "{image}"', "kubelet", _at(base, marks["pulling"])))
    if "pulled" in reached:
        when = _at(base, marks["pulled"])
        if p.get("cached"):
            events.append(("Normal", "Pulled", f'Container image "{image}" already present on machine', "kubelet",
                           when))
        else:
            took = marks["pulled"] - marks.get("pulling", marks["pulled"])
            events.append(("Normal", "Pulled", f'Successfully pulled image "{image}" in {took}s ({took}s including '
                           f'waiting). Image size: {int(p.get("image_bytes", 9_800_000_000))} bytes.', "kubelet", when))
        if p.get("streamed"):
            # GKE's own event on the node ("Use Image streaming to pull container images", GKE docs).
            events.append(("Normal", "ImageStreaming", f"Image {image} is backed by image streaming.",
                           "gcfsd", when, "node"))
    extra: dict = {}
    inits = (pod.get("spec") or {}).get("initContainers") or []
    if inits and "init_started" in reached:
        started = _at(base, marks["init_started"])
        done = "initialized" in reached
        extra["initContainerStatuses"] = [
            {"name": ic.get("name"), "image": ic.get("image", ""), "imageID": ic.get("image", ""),
             "containerID": f"containerd://{pod['metadata'].get('uid', '')}-{ic.get('name')}", "ready": done,
             "restartCount": 0, "started": not done,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                      "finishedAt": _at(base, marks["initialized"])}} if done else
             {"running": {"startedAt": started}}} for ic in inits]
    initialized = not inits or "initialized" in reached
    if "started" not in reached:
        return PodView(waiting=("PodInitializing" if inits and not initialized else "ContainerCreating", ""),
                       sandbox=True, clock=clock, events=events, initialized=initialized, extra_status=extra)
    at = _at(base, marks["started"])
    events += [("Normal", "Created", f"Created container: {name}", "kubelet", at),
               ("Normal", "Started", f"Started container {name}", "kubelet", at)]
    lines = [(_log_stamp(base, off), text) for off, text in logs if off <= now_off]
    return PodView(phase="Running", waiting=None, running=True, ready="ready" in reached, others_running=True,
                   clock=clock, events=events, extra_status=extra, logs=lines)


SCENARIOS["startup"] = _scenario_startup  # milestones={name: offset_s}, logs=[(offset_s, line)], cached=,
#                                           streamed=, image_bytes=, resource=, scale_up_message=, container=
