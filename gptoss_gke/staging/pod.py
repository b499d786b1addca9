"""What runs in a pod of the in-cluster staging Job: this checkout's own staging steps, for one share.

The pod starts from a stock Python image with two read-only volumes: a ConfigMap holding this checkout as
a tarball (``code.tar.gz``), the run's request (``request.json``: validated settings, target, pods, the code's
tree digest) and the pinned requirements; and, when the model needs one, a Secret holding the HF token
(``HF_TOKEN`` through ``secretKeyRef``, never in the manifest or on argv). :data:`BOOTSTRAP` (the
container's ``python -c``) checks the tarball's sha256 against ``GPTOSS_CODE_SHA256``, unpacks it, installs
the pinned requirements only if the image lacks them, and starts :func:`main`, which runs the same
request protocol ``--on`` uses (``remote/entry.py``: the imported package's digest must equal the one sent)
for the task ``stage-share``: :class:`~gptoss_gke.staging.steps.StageModel` with the share that
``JOB_COMPLETION_INDEX`` (set by the Job controller) names. Progress goes to the log as JSON lines
(``chunks.PROGRESS_KEY``), the run's report as the last line (``entry.REPORT_MARK``).

Only the standard library is imported at module level: :data:`BOOTSTRAP` runs before anything else is there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CODE_DIR = "/var/run/gptoss/code"  # the ConfigMap's mount
WORK_DIR = "/tmp/gptoss"  # an emptyDir: unpacked code and installed requirements
REQUEST_FILE = "request.json"
CODE_FILE = "code.tar.gz"
REQUIREMENTS_FILE = "requirements.txt"

# The container's program. Exit 2: the code is not the code that was sent (never retried into success).
BOOTSTRAP = r"""
import hashlib, importlib.util, os, subprocess, sys, tarfile
code_dir, work = os.environ["GPTOSS_CODE_DIR"], os.environ["GPTOSS_WORK_DIR"]
data = open(os.path.join(code_dir, "code.tar.gz"), "rb").read()
if hashlib.sha256(data).hexdigest() != os.environ["GPTOSS_CODE_SHA256"]:
    print("gptoss-gke pod: code.tar.gz is not the code that was sent (sha256 differs)", flush=True)
    sys.exit(2)
dest = os.path.join(work, "code")
with tarfile.open(os.path.join(code_dir, "code.tar.gz")) as t:
    t.extractall(dest, filter="data")
deps = os.path.join(work, "deps")
needed = os.environ["GPTOSS_MODULES"].split(",")
if any(importlib.util.find_spec(m.split(".")[0]) is None for m in needed):
    print("gptoss-gke pod: installing the pinned requirements", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--disable-pip-version-check",
                    "--target", deps, "-r", os.path.join(code_dir, "requirements.txt")], check=True)
os.environ["PYTHONPATH"] = os.pathsep.join([dest, deps])
os.execv(sys.executable, [sys.executable, "-u", "-m", "gptoss_gke.staging.pod"])
"""


def main() -> int:
    from gptoss_gke.remote import entry

    request = json.loads((Path(os.environ["GPTOSS_CODE_DIR"]) / REQUEST_FILE).read_text())
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
