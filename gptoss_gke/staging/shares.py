"""Which pod of the in-cluster staging Job moves which file: a deterministic split by bytes.

Every pod computes the same split from the same file list (the revision's selection, not what is
missing now), so a pod retried by the Job, or a Job created again after a failure, takes exactly the
files its index had: it resumes its own uploads and never races another pod on one. A file is the
unit: one multipart upload has one writer, so no upload id has to be shared between pods. The largest
files go first, each to the least-loaded pod (ties: the lowest index).
"""

from __future__ import annotations

from gptoss_gke.staging.hub import RepoFile

# Bytes one pod should move, when the user does not set models.stage_pods: ~2 minutes at the 100 MB/s one
# pod's connections to the CDN typically sustain; more pods only pay off with more bytes.
BYTES_PER_POD = 12 * 10 ** 9
MAX_AUTO_PODS = 8


def share_of(files: list[RepoFile], pods: int) -> dict[str, int]:
    """path → the index of the pod that stages it."""
    load = [0] * pods
    owner: dict[str, int] = {}
    for f in sorted(files, key=lambda f: (-f.size, f.path)):
        i = min(range(pods), key=lambda k: (load[k], k))
        owner[f.path] = i
        load[i] += f.size
    return owner


def default_pods(files: list[RepoFile]) -> int:
    """Sized to the model: one pod per BYTES_PER_POD, at most one per large file, at most MAX_AUTO_PODS."""
    total = sum(f.size for f in files)
    large = sum(1 for f in files if f.lfs) or 1
    return max(1, min(MAX_AUTO_PODS, large, -(-total // BYTES_PER_POD)))
