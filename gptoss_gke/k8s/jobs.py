"""What our Jobs (in-cluster staging, the smoke test) read the same way: a Job's state from its conditions."""

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
