"""What our Jobs (in-cluster staging, the smoke test) read and do the same way: a Job's state and why it
failed, its pods, their logs, and the objects it owns."""

from __future__ import annotations


def job_state(job: dict) -> str:
    """"complete", "failed" or "running", from the Job controller's terminal conditions (the ``*Target`` ones
    come first, while the last pods are still stopping)."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "complete"
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "running"


def failed_condition(job: dict) -> dict | None:
    """The condition that says why the Job failed (its ``reason`` and ``message``), if it did."""
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget")), None)


def job_pods(ctx, name: str) -> list[dict]:
    """The Job's pods (label ``job-name``), as the API's JSON (camelCase)."""
    from gptoss_gke.k8s.client import kube

    k = kube(ctx)
    items = k.core.list_namespaced_pod(ctx.settings.kube.namespace, label_selector=f"job-name={name}").items
    return [k.api_client.sanitize_for_serialization(p) for p in items]


def job_pod_log(ctx, pod: dict, *, container: str, tail_lines: int | None = None) -> list[str]:
    """A pod's log lines, redacted; [] while it has not started, or once it is gone (the next poll looks again)."""
    from gptoss_gke.k8s.client import kube
    from gptoss_gke.k8s.timeline import pod_log

    lines = pod_log(kube(ctx), ctx.settings.kube.namespace, pod["metadata"]["name"], container=container,
                    tail_lines=tail_lines, timestamps=False)
    return [ctx.redact(line) for line in lines]


def apply_owned_by_job(ctx, job_name: str, objects: list[dict]) -> None:
    """Apply ``objects`` (the Job's code, its Secret) owned by the Job, so Kubernetes' garbage collector deletes
    them with it."""
    from gptoss_gke.k8s.client import kube
    from gptoss_gke.k8s.objects import KubeObject

    ns = ctx.settings.kube.namespace
    job = kube(ctx).resource("batch/v1", "Job").get(name=job_name, namespace=ns).to_dict()
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"]}
    for obj in objects:
        obj["metadata"]["ownerReferences"] = [owner]
        KubeObject(obj)._apply(ctx)
