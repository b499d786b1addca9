"""Jobs whose pods really run: a minimal kubelet that starts each pod as a local process.

Jobs with ``spec.completionMode: Indexed`` are handled here, and non-indexed Jobs a test opts in by name
(:meth:`JobPods.run_for_real`, e.g. the smoke Job's ``smoke-`` prefix); the other Jobs keep the scripted pods
of :mod:`.workloads` (the bench Job). With the Job controller's semantics:

* one pod per index not yet succeeded (``parallelism`` at most at once), named ``<job>-<index>-<suffix>``,
  with the ``batch.kubernetes.io/job-completion-index`` annotation and label and ``JOB_COMPLETION_INDEX``;
* a pod's container runs as a child process on this machine: ``command`` + ``args`` (``python`` is this
  interpreter), ``env`` with ``value`` and ``valueFrom.secretKeyRef`` (a missing Secret fails the pod unless
  ``optional``), volumes from ConfigMaps (``data`` and ``binaryData``), Secrets and emptyDirs written into a
  private directory per pod; every ``mountPath`` named in the command, the args or the env is rewritten to
  that directory (a liberty taken: the process shares this machine's filesystem);
* the process's output is the pod's log; its exit status the container's ``terminated.exitCode`` (a signal
  is 128 + its number) and the pod's phase;
* a non-indexed Job (of one completion) is one index without the annotation: pods ``<job>-<suffix>``, a failed
  pod replaced until ``backoffLimit`` is spent (then ``BackoffLimitExceeded``), ``Complete`` when one succeeds;
* a failed pod is replaced for its index until ``backoffLimitPerIndex`` is spent; ``podFailurePolicy``
  ``FailIndex`` on exit codes fails the index at once; with ``maxFailedIndexes`` exceeded (or the index
  limit spent without it) the Job fails (``FailedIndexes``); all indexes succeeded: ``SuccessCriteriaMet``
  and ``Complete``; ``status.completedIndexes`` / ``failedIndexes`` as interval lists;
* ``ttlSecondsAfterFinished``: the Job and its pods are deleted that long after it finished;
* a pod deleted (or garbage-collected with its Job) has its process killed; :meth:`JobPods.kill` is the
  test's way of losing a node under a pod (SIGKILL);
* cluster DNS and kube-proxy: a Service's name ``<svc>.<ns>.svc[.cluster.local]:<port>`` in a pod's env or
  args is rewritten to the loopback address a test routed it to (:meth:`JobPods.route_service`, which
  ``chaos.ServiceProxy`` does for its Service: it sends each connection to a Ready, not terminating
  endpoint). A Service no test routed goes to a closed loopback port: connection refused, as kube-proxy
  rejects connections to a Service without endpoints. The other liberty taken, like the mountPaths: the
  process would ask this machine's resolver, which knows no cluster names (and must not be asked them).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .events import record_event
from .objects import now, terminating

INDEX = "batch.kubernetes.io/job-completion-index"
SERVICE_NAME = re.compile(r"\b([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.svc"
                          r"(?:\.cluster\.local)?:(\d+)\b")
REFUSED = "127.0.0.1:1"  # nothing listens on tcpmux: a connection is refused at once


def indexed(job: dict) -> bool:
    return (job.get("spec") or {}).get("completionMode") == "Indexed"


def intervals(indexes: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``, as the Job controller writes completedIndexes."""
    out, run = [], []
    for i in sorted(set(indexes)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


class _Proc:
    def __init__(self, popen: subprocess.Popen, log_path: str, workdir: str):
        self.popen = popen
        self.log_path = log_path
        self.workdir = workdir
        self.lines: list[str] = []  # the pod's log, as the kubelet serves it
        self.started = now()


class JobPods:
    def __init__(self, store, kubelet, workloads):
        self.store = store
        self.kubelet = kubelet
        self.workloads = workloads
        self.root = tempfile.mkdtemp(prefix="kube-jobpods-")
        self.procs: dict[str, _Proc] = {}  # pod uid → its process
        self.env: dict[str, str] = {}  # added to every pod's environment by the test (a loopback endpoint)
        self.finished_at: dict[str, float] = {}  # job uid → when it finished (ttlSecondsAfterFinished)
        self.real_prefixes: set[str] = set()  # non-indexed Jobs whose pods run here, by name prefix
        self.services: dict[tuple[str, str, int], int] = {}  # (service, namespace, port) → loopback port

    def handles(self, job: dict) -> bool:
        return indexed(job) or any(job["metadata"]["name"].startswith(p) for p in self.real_prefixes)

    # ---- the test's hands
    def run_for_real(self, name_prefix: str) -> None:
        """Non-indexed Jobs named ``name_prefix...`` run their pods here too (the bench Job stays scripted)."""
        self.real_prefixes.add(name_prefix)

    def route_service(self, service: str, namespace: str, port: int, loopback_port: int) -> None:
        """Cluster DNS + kube-proxy: pods reach ``service.namespace.svc.cluster.local:port`` at the loopback port."""
        self.services[(service, namespace, int(port))] = loopback_port

    def unroute_service(self, service: str, namespace: str, port: int) -> None:
        self.services.pop((service, namespace, int(port)), None)

    def _resolve(self, text: str) -> str:
        def sub(m: re.Match) -> str:
            port = self.services.get((m.group(1), m.group(2), int(m.group(3))))
            return f"127.0.0.1:{port}" if port else REFUSED

        return SERVICE_NAME.sub(sub, text)

    def kill(self, job: str, index: int, sig: int = signal.SIGKILL) -> bool:
        """Kill the running process of ``index`` of Job ``job`` (as a node lost under it)."""
        for uid, proc in self.procs.items():
            pod = self._pod_by_uid(uid)
            if pod and pod["metadata"]["labels"].get("job-name") == job and proc.popen.poll() is None \
                    and pod["metadata"]["annotations"].get(INDEX) == str(index):
                proc.popen.send_signal(sig)
                return True
        return False

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- each tick
    def tick(self) -> None:
        self._reap_orphans()
        for key in self.store.of_kind("Job"):
            job = self.store.objects.get(key)
            if job is None or not self.handles(job):
                continue
            if terminating(job):
                continue
            self._pods_progress(key[1], job)
            self._reconcile(key, job)
            self._status(key, self.store.objects[key])
            self._ttl(key, self.store.objects[key])

    def _pod_by_uid(self, uid: str) -> dict | None:
        return next((o for k, o in self.store.objects.items() if k[0] == "Pod" and o["metadata"]["uid"] == uid), None)

    def _reap_orphans(self) -> None:
        for uid, proc in list(self.procs.items()):
            pod = self._pod_by_uid(uid)
            if pod is None or terminating(pod):
                if proc.popen.poll() is None:
                    proc.popen.kill()
                    proc.popen.wait(timeout=10)
                if pod is not None:
                    self.store.remove(("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]))
                del self.procs[uid]

    def _by_index(self, ns: str, job: dict) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for _, p in self.store.owned("Pod", ns, job["metadata"]["uid"]):
            out.setdefault(int((p["metadata"].get("annotations") or {}).get(INDEX, 0)), []).append(p)
        return out

    @staticmethod
    def _phase(p: dict) -> str | None:
        return (p.get("status") or {}).get("phase")

    def _fail_index_codes(self, job: dict) -> set[int]:
        codes: set[int] = set()
        for rule in ((job["spec"].get("podFailurePolicy") or {}).get("rules") or []):
            on = rule.get("onExitCodes") or {}
            if rule.get("action") == "FailIndex" and on.get("operator", "In") == "In":
                codes |= set(on.get("values") or [])
        return codes

    def _index_state(self, job: dict, pods: list[dict]) -> str:
        if any(self._phase(p) == "Succeeded" for p in pods):
            return "succeeded"
        failed = [p for p in pods if self._phase(p) == "Failed"]
        fail_now = self._fail_index_codes(job)
        if any(_exit_code(p) in fail_now for p in failed):
            return "failed"
        limit = job["spec"].get("backoffLimitPerIndex") if indexed(job) else job["spec"].get("backoffLimit", 6)
        if limit is not None and len(failed) > int(limit):
            return "failed"
        return "active" if any(self._phase(p) not in ("Succeeded", "Failed") for p in pods) else "pending"

    def _finished(self, job: dict) -> bool:
        return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])

    def _reconcile(self, key: tuple, job: dict) -> None:
        if self._finished(job) or job["spec"].get("suspend"):
            return
        ns, name = key[1], key[2]
        spec = job["spec"]
        by_index = self._by_index(ns, job)
        states = {i: self._index_state(job, by_index.get(i, [])) for i in range(int(spec.get("completions", 1)))}
        if sum(1 for s in states.values() if s == "failed") > int(spec.get("maxFailedIndexes", 1 << 30)):
            return
        running = sum(1 for s in states.values() if s == "active")
        for i, state in sorted(states.items()):
            if state != "pending" or running >= int(spec.get("parallelism", 1)):
                continue
            labels = {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"], "batch.kubernetes.io/job-name": name,
                      "controller-uid": job["metadata"]["uid"], "job-name": name}
            template = copy.deepcopy(spec.get("template") or {})
            if indexed(job):
                labels[INDEX] = str(i)
                template.setdefault("metadata", {}).setdefault("annotations", {})[INDEX] = str(i)
                pod = self.workloads._new_pod(job, f"{name}-{i}-{self.store.suffix()}", template, labels,
                                              hostname=f"{name}-{i}")
            else:
                pod = self.workloads._new_pod(job, f"{name}-{self.store.suffix()}", template, labels)
            self.kubelet.leave_alone(pod)
            self._start(pod, i if indexed(job) else None)
            running += 1

    def _start(self, pod: dict, index: int | None) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta["namespace"]
        key = ("Pod", ns, meta["name"])
        workdir = tempfile.mkdtemp(prefix=f"{meta['name']}-", dir=self.root)
        [container] = spec["containers"][:1]
        mounts: dict[str, str] = {}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        problem = None
        for m in container.get("volumeMounts") or []:
            local = os.path.join(workdir, "volumes", m["name"])
            os.makedirs(local, exist_ok=True)
            vol = volumes.get(m["name"]) or {}
            if "configMap" in vol:
                cm = self.store.objects.get(("ConfigMap", ns, vol["configMap"]["name"]))
                if cm is None:
                    problem = f'configmap "{vol["configMap"]["name"]}" not found'
                    continue
                for k, v in (cm.get("data") or {}).items():
                    with open(os.path.join(local, k), "w") as fh:
                        fh.write(v)
                for k, v in (cm.get("binaryData") or {}).items():
                    with open(os.path.join(local, k), "wb") as fh:
                        fh.write(base64.b64decode(v))
            elif "secret" in vol:
                sec = self.store.objects.get(("Secret", ns, vol["secret"]["secretName"]))
                for k, v in ((sec or {}).get("data") or {}).items():
                    with open(os.path.join(local, k), "wb") as fh:
                        fh.write(base64.b64decode(v))
            mounts[m["mountPath"]] = local

        def local_path(text: str) -> str:
            for path in sorted(mounts, key=len, reverse=True):
                text = text.replace(path, mounts[path])
            return text

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": meta["name"], **self.env}
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = self._resolve(local_path(str(e["value"])))
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                sec = self.store.objects.get(("Secret", ns, ref["name"]))
                raw = ((sec or {}).get("data") or {}).get(ref["key"])
                if raw is None and not ref.get("optional"):
                    problem = f'secret "{ref["name"]}" not found'
                elif raw is not None:
                    env[e["name"]] = base64.b64decode(raw).decode()
        if problem:  # the kubelet keeps it waiting with CreateContainerConfigError; here: fails it at once
            self._set_status(key, "Failed", {"waiting": {"reason": "CreateContainerConfigError", "message": problem}})
            return
        argv = [self._resolve(local_path(a)) for a in (container.get("command") or []) + (container.get("args") or [])]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        log_path = os.path.join(workdir, "log")
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = _Proc(popen, log_path, workdir)
        self.procs[meta["uid"]] = proc
        self.kubelet.live_logs(meta["name"], proc.lines)
        record_event(self.store, pod, "Normal", "Started", "Started container " + container["name"], "kubelet")
        self._set_status(key, "Running", {"running": {"startedAt": proc.started}})

    def _pods_progress(self, ns: str, job: dict) -> None:
        for key, pod in self.store.owned("Pod", ns, job["metadata"]["uid"]):
            proc = self.procs.get(pod["metadata"]["uid"])
            if proc is None:
                continue
            with open(proc.log_path, "rb") as fh:
                proc.lines[:] = fh.read().decode("utf-8", "replace").splitlines()
            code = proc.popen.poll()
            if code is not None and self._phase(pod) == "Running":
                code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number
                self._set_status(key, "Succeeded" if code == 0 else "Failed",
                                 {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                                 "startedAt": proc.started, "finishedAt": now()}})

    def _set_status(self, key: tuple, phase: str, state: dict) -> None:
        pod = copy.deepcopy(self.store.objects[key])
        c = pod["spec"]["containers"][0]
        pod["spec"].setdefault("nodeName", self.store.node_name)
        digest = hashlib.sha256(str(c.get("image")).encode()).hexdigest()
        pod["status"] = {"phase": phase, "startTime": (pod.get("status") or {}).get("startTime") or now(),
                         "containerStatuses": [{"name": c["name"], "image": c.get("image"),
                                                "imageID": f"{c.get('image')}@sha256:{digest}",
                                                "containerID": "containerd://" + hashlib.sha256(
                                                    pod["metadata"]["uid"].encode()).hexdigest(),
                                                "ready": phase == "Running", "lastState": {},
                                                "restartCount": 0, "started": phase == "Running", "state": state}]}
        self.store.set(key, pod)

    def _status(self, key: tuple, job: dict) -> None:
        spec = job["spec"]
        by_index = self._by_index(key[1], job)
        n = int(spec.get("completions", 1))
        states = {i: self._index_state(job, by_index.get(i, [])) for i in range(n)}
        pods = [p for ps in by_index.values() for p in ps]
        old = job.get("status") or {}
        status = {"startTime": old.get("startTime") or now(), "terminating": 0, "uncountedTerminatedPods": {},
                  "ready": sum(1 for p in pods if self._phase(p) == "Running")}
        active = sum(1 for p in pods if self._phase(p) == "Running")
        succeeded = [i for i, s in states.items() if s == "succeeded"]
        failed_idx = [i for i, s in states.items() if s == "failed"]
        if active:
            status["active"] = active
        if succeeded:
            status["succeeded"] = len(succeeded)
            if indexed(job):
                status["completedIndexes"] = intervals(succeeded)
        failed_pods = sum(1 for p in pods if self._phase(p) == "Failed")
        if failed_pods:
            status["failed"] = failed_pods
        if failed_idx and indexed(job):
            status["failedIndexes"] = intervals(failed_idx)
        conds = list(old.get("conditions") or [])
        if not self._finished(job):
            if len(succeeded) == n:
                conds += [_cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                          _cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods")]
                status["completionTime"] = now()
                record_event(self.store, job, "Normal", "Completed", "Job completed", "job-controller")
            elif len(failed_idx) > int(spec.get("maxFailedIndexes", 1 << 30)) or (
                    failed_idx and len(failed_idx) + len(succeeded) == n and active == 0):
                reason, message = (("FailedIndexes", "Job has failed indexes") if indexed(job) else
                                   ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
                conds += [_cond("FailureTarget", reason, message), _cond("Failed", reason, message)]
                record_event(self.store, job, "Warning", reason, message, "job-controller")
        if conds:
            status["conditions"] = conds
        if old.get("completionTime"):
            status["completionTime"] = old["completionTime"]
        new = copy.deepcopy(job)
        new["status"] = status
        self.store.set(key, new)

    def _ttl(self, key: tuple, job: dict) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None or not self._finished(job):
            return
        uid = job["metadata"]["uid"]
        done = self.finished_at.setdefault(uid, time.monotonic())
        if time.monotonic() - done >= int(ttl):
            for pkey, _ in self.store.owned("Pod", key[1], uid):
                self.store.remove(pkey)
            self.store.remove(key)


def _exit_code(pod: dict) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term.get("exitCode")
    return None


def _cond(typ: str, reason: str, message: str) -> dict:
    t = now()
    return {"type": typ, "status": "True", "reason": reason, "message": message, "lastProbeTime": t,
            "lastTransitionTime": t}
