"""What clients of a target's Service see: the Ready endpoints it routes to, and their zones.

For the spot capacity profiles the deploy checks this after the rollout: a replica that is Ready but
not (yet) behind the Service, or two replicas in one zone where one zonal spot reclaim would take both,
is exactly what the port-forward smoke test cannot see. Read from the EndpointSlices, as kube-proxy does.
"""

from __future__ import annotations

import time

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import KubeCheck, kube

SETTLE_S = 30.0  # EndpointSlices follow readiness within seconds


class ServiceEndpoints(KubeCheck):
    section = "smoke"
    observe_early = False  # only meaningful once the rollout is ready

    def __init__(self, settings, target_name: str):
        from gptoss_gke.k8s.manifests import workload_name

        target = settings.target(target_name)
        self.target_name = target_name
        self.service = workload_name(target)  # the ClusterIP Service clients use
        self.replicas = settings.target_settings(target_name).replicas
        self.zones = settings.node_locations(target_name)
        self.want = min(self.replicas, 2)
        self.name = f"Service {settings.kube.namespace}/{self.service} endpoints"
        self.key = f"smoke.{target_name}.endpoints"

    def preview(self, ctx) -> Plan:
        return Plan([Change(f"check that Service {self.service} routes to {self.want} or more Ready endpoints"
                            + (" in different zones" if self.want > 1 and len(self.zones) > 1 else ""), "update")])

    def _read(self, ctx) -> dict:
        ns = ctx.settings.kube.namespace
        slices = kube(ctx).resource("discovery.k8s.io/v1", "EndpointSlice").get(
            namespace=ns, label_selector=f"kubernetes.io/service-name={self.service}").to_dict()["items"]
        ready = [ep for s in slices for ep in s.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready")]
        return {"ready": len(ready), "pods": sorted((ep.get("targetRef") or {}).get("name", "?") for ep in ready),
                "zones": sorted({ep["zone"] for ep in ready if ep.get("zone")})}

    def probe(self, ctx, current) -> dict:
        deadline = time.monotonic() + SETTLE_S
        found = self._read(ctx)
        while not self._good(found) and time.monotonic() < deadline:
            ctx.sleep(min(ctx.settings.kube.poll_interval_s, 2.0))
            found = self._read(ctx)
        return found

    def _good(self, found: dict) -> bool:
        spread = self.want < 2 or len(self.zones) < 2 or len(found["zones"]) >= 2
        return found["ready"] >= self.want and spread

    def verdict(self, ctx, found) -> Plan:
        ns = ctx.settings.kube.namespace
        if found["ready"] < self.want:
            raise StepError(f"Service {ns}/{self.service} routes to {found['ready']} Ready endpoint(s) "
                            f"({', '.join(found['pods']) or 'none'}); clients need {self.want} for one preemption "
                            f"to leave one serving",
                            f"`kubectl get pods,endpointslices -n {ns}` shows which replica is missing; "
                            f"re-run `inv deploy --target={self.target_name}` once it is Ready")
        if not self._good(found):
            raise StepError(f"Service {ns}/{self.service}'s Ready endpoints are all in {', '.join(found['zones'])}: "
                            f"one zonal spot reclaim takes every replica",
                            f"check the pods' topology spread (`kubectl describe pods -n {ns}`) and that "
                            f"node_pool.node_locations lists zones with L4 capacity")
        zones = f" in {', '.join(found['zones'])}" if found["zones"] else ""
        return noop(f"Service {ns}/{self.service} routes to {found['ready']} Ready endpoints{zones}", endpoints=found)
