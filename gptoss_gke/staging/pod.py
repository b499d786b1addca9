"""What runs in a pod of the in-cluster staging Job: this checkout's own staging steps, for one share.

The Job ships this checkout as ``k8s/podcode.py`` describes (a ConfigMap, digest-checked, then this module
started); the HF token, when the model needs one, comes as ``HF_TOKEN`` through ``secretKeyRef``, never in
the manifest or on argv. :func:`main` runs the same request protocol ``--on`` uses (``remote/entry.py``: the
imported package's digest must equal the one sent) for the task ``stage-share``:
:class:`~gptoss_gke.staging.steps.StageModel` with the share that ``JOB_COMPLETION_INDEX`` (set by the Job
controller) names. Progress goes to the log as JSON lines (``chunks.PROGRESS_KEY``), the run's report as the
last line (``entry.REPORT_MARK``).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from gptoss_gke.k8s.podcode import read_request
    from gptoss_gke.remote import entry

    request = read_request()
    request["share"] = [int(os.environ["JOB_COMPLETION_INDEX"]), int(request["pods"])]
    request["watch_stdin"] = False
    request.setdefault("facts", {}).update({"staging.progress": "json", "gcs.credentials": "adc"})
    token = os.environ.pop("HF_TOKEN", "")
    request["secrets"] = {"hf_token": token} if token else {}
    # The imported code must be the unpacked copy, never one installed in the image.
    os.environ.pop("PYTHONPATH", None)
    return entry.run(request)


if __name__ == "__main__":
    sys.exit(main())
