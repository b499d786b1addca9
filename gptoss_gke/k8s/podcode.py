"""This checkout, run in a pod of one of our Jobs: shipped in a ConfigMap, checked by digest, then started.

A Job's pod starts from a small stock Python image (:func:`gptoss_gke.images.tools_image`) with the
ConfigMap ``manifests/jobs/code-configmap.yaml`` mounted read-only at :data:`CODE_DIR`: this checkout as a
tarball (``code.tar.gz``), the run's request (``request.json``, no secret) and the requirements, hash-locked
(``requirements.txt``; the staging Job sends ``staging/stager-requirements.txt``). :data:`BOOTSTRAP` (the
container's ``python -c``) checks the tarball's sha256 against ``GPTOSS_CODE_SHA256``, unpacks it, installs
the requirements only if the image lacks one of ``GPTOSS_MODULES`` (empty: the standard library is enough),
with :func:`pip_install_argv` (imported from the unpacked code: one pip line, here and in the tests), and runs
the module ``GPTOSS_MAIN`` names. Secrets reach the pod only through ``secretKeyRef`` (never the ConfigMap, the
manifest or argv).

Only the standard library is imported here: :data:`BOOTSTRAP` runs before anything else is there.
"""

from __future__ import annotations

import base64
import hashlib
import json

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
needed = [m for m in os.environ.get("GPTOSS_MODULES", "").split(",") if m]
if any(importlib.util.find_spec(m.split(".")[0]) is None for m in needed):
    print("gptoss-gke pod: installing the hash-locked requirements", flush=True)
    sys.path.insert(0, dest)
    from gptoss_gke.k8s.podcode import pip_install_argv
    if subprocess.run(pip_install_argv(sys.executable, os.path.join(code_dir, "requirements.txt"), deps)).returncode:
        print("gptoss-gke pod: installing the requirements failed (see pip's lines above)", flush=True)
        sys.exit(1)
os.environ["PYTHONPATH"] = os.pathsep.join([dest, deps])
os.execv(sys.executable, [sys.executable, "-u", "-m", os.environ["GPTOSS_MAIN"]])
"""


def pip_install_argv(python: str, requirements: str, target: str) -> list[str]:
    """The one pip line that installs a pod's requirements into ``target``: only what the file names
    (``--no-deps``), each a wheel (``--only-binary=:all:``: nothing is built, no setup.py runs) whose sha256 is
    one the file lists (``--require-hashes``: a changed or substituted file is refused, and so is a line
    without a hash or an exact ``==`` pin)."""
    return [python, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
            "--require-hashes", "--only-binary=:all:", "--no-deps", "--target", target, "-r", requirements]


def read_request() -> dict:
    """In the pod: the run's request, as the ConfigMap carries it."""
    import os
    from pathlib import Path

    return json.loads((Path(os.environ["GPTOSS_CODE_DIR"]) / REQUEST_FILE).read_text())


def code_configmap(settings, *, name: str, labels: dict, request: dict, requirements: list[str],
                   main: str, modules: list[str]) -> tuple[list[dict], list[dict]]:
    """The ConfigMap carrying this checkout and ``request``, and the container environment that runs
    ``main`` from it (``modules``: what must be importable, else the requirements are installed)."""
    from gptoss_gke.k8s.manifests import render_template
    from gptoss_gke.remote.shipping import code_bundle

    bundle = code_bundle()
    request = {**request, "code": {"sha256": bundle.sha256}}
    objects = render_template("jobs/code-configmap.yaml", {
        "name": name, "namespace": settings.kube.namespace, "labels": labels,
        "code_tarball": base64.b64encode(bundle.data).decode(), "request": json.dumps(request),
        "requirements": "\n".join(requirements) + "\n"})
    env = [{"name": "GPTOSS_CODE_SHA256", "value": hashlib.sha256(bundle.data).hexdigest()},
           {"name": "GPTOSS_CODE_DIR", "value": CODE_DIR}, {"name": "GPTOSS_WORK_DIR", "value": WORK_DIR},
           {"name": "GPTOSS_MODULES", "value": ",".join(modules)}, {"name": "GPTOSS_MAIN", "value": main},
           {"name": "HOME", "value": WORK_DIR}, {"name": "TMPDIR", "value": WORK_DIR},
           {"name": "NO_COLOR", "value": "1"}]
    return objects, env
