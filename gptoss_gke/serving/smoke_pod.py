"""The smoke Job's pod: the smoke checks against the Service, as an in-cluster client sees it.

Started by :data:`gptoss_gke.k8s.podcode.BOOTSTRAP` (``GPTOSS_MAIN``). The Service's URL comes in
``GPTOSS_SMOKE_URL`` (its cluster DNS name: kube-proxy sends each connection to a Ready endpoint), the
key in ``VLLM_API_KEY`` (a ``secretKeyRef`` to the API-key Secret), the rest in the ConfigMap's request.
Every record is one JSON line ``{"gptoss_smoke": {...}}`` on stdout, which the local run reads back from
the pod's log. Exit 0: every check passed; 1: one failed (its record says why); 2: the pod was set up wrong.
Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import time

from gptoss_gke.k8s.podcode import read_request
from gptoss_gke.serving.client import Endpoint
from gptoss_gke.serving.smoke_checks import CheckFailed, SmokeSpec, run_checks

RECORD_KEY = "gptoss_smoke"
URL_VARIABLE = "GPTOSS_SMOKE_URL"
KEY_VARIABLE = "VLLM_API_KEY"


def emit(record: dict) -> None:
    print(json.dumps({RECORD_KEY: record}), flush=True)


def main() -> int:
    request = read_request()
    spec = SmokeSpec(**request["smoke"])
    key = os.environ.get(KEY_VARIABLE)
    if not key or not os.environ.get(URL_VARIABLE):
        emit({"check": "setup", "ok": False, "problem": f"the smoke pod has no {KEY_VARIABLE} or {URL_VARIABLE}",
              "fix": f"the API-key Secret {spec.api_key_secret} must hold {KEY_VARIABLE}: re-run `inv deploy "
                     f"--target={spec.target}`"})
        return 2
    ep = Endpoint(os.environ[URL_VARIABLE], key, timeout=float(request.get("request_timeout_s", 120.0)), tunnel=False)
    try:
        run_checks(ep, spec, emit, time.sleep)
    except CheckFailed as failed:
        emit(failed.record())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
