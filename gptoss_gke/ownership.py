"""What "ours" means, in one place: created by this tool *for this environment* (and, for objects
that belong to one target, for that target).

User ``labels:`` are stamped on what we create but are never part of ownership: adding one later
must not disown everything. Each check returns None when the thing is ours, else the reason it is
not, in words a report can show ("not ours (environment prod)").
"""

from __future__ import annotations

MANAGED_BY = "app.kubernetes.io/managed-by"  # Kubernetes label keys
ENV = "gptoss-gke/env"
TARGET = "gptoss-gke/target"
GCP_MANAGED_BY = "managed-by"  # the same ownership spelled as GCP labels allow (no '/' or '.')
GCP_ENV = "gptoss-gke-env"


def _why_not(labels: dict | None, managed_by: tuple[str, str], env: tuple[str, str],
             target: tuple[str, str] | None = None) -> str | None:
    labels = labels or {}
    (mkey, tool), (ekey, env_name) = managed_by, env
    if labels.get(mkey) != tool:
        return f"not ours (no {mkey}={tool} label)"
    if labels.get(ekey) != env_name:
        other = labels.get(ekey)
        return f"not ours (environment {other})" if other else f"not ours (no {ekey} label)"
    if target is not None and labels.get(target[0]) not in (None, target[1]):
        return f"not ours (target {labels.get(target[0])})"
    return None


def kube_owner_problem(obj: dict | None, settings, target: str | None = None) -> str | None:
    """Why a Kubernetes object is not ours (None: it is). ``target``: it must also be that target's."""
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    want = settings.ownership_labels
    return _why_not(labels, (MANAGED_BY, want[MANAGED_BY]), (ENV, want[ENV]),
                    (TARGET, target) if target else None)


def gcp_owner_problem(labels: dict | None, settings) -> str | None:
    """Why a GCP resource (cluster, node pool, repository, bucket) is not ours (None: it is)."""
    want = settings.gcp_labels
    return _why_not(labels, (GCP_MANAGED_BY, want[GCP_MANAGED_BY]), (GCP_ENV, want[GCP_ENV]))


def selector(settings) -> str:
    """The label selector of everything this environment created in Kubernetes."""
    return ",".join(f"{k}={v}" for k, v in sorted(settings.ownership_labels.items()))


def kept_for(others: dict, uses) -> str | None:
    """Why a thing environments can share (a bucket grant, a mirrored tag, a staged folder, a
    repository) is kept, or None when no other environment uses it and this one may delete it.

    ``others``: every other environment's name → its Settings, or the error that kept it from loading
    (then it might use it: kept, to be safe). ``uses(settings)`` says whether one does."""
    using, unreadable = [], []
    for name, other in sorted((others or {}).items()):
        if isinstance(other, Exception):
            unreadable.append(name)
        elif uses(other):
            using.append(name)
    if using:
        return f"environment {', '.join(using)} uses it too"
    if unreadable:
        return (f"the settings of environment {', '.join(unreadable)} could not be read, so it may use it too "
                f"(fix those files, or delete it by hand)")
    return None
