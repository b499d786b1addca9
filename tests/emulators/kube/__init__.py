"""Loopback Kubernetes API emulator, reached by the real ``kubernetes`` client through a kubeconfig.

One aiohttp server on ``127.0.0.1`` keeps objects in memory and implements, with the API server's
semantics, what the playbooks use, and nothing else (what they never send answers 405 saying so):

==================  ==========================================================================================
module              what it is
==================  ==========================================================================================
``server``          :class:`KubeEmulator`: HTTP, bearer-token auth, routing, request log, injected faults,
                    and what tests call (``seed``, ``objects``, ``script_pods``, ``set_logs``, ``tick``, ...)
``kinds``           the resource types served (:data:`RESOURCE_TYPES`) and ``discovery`` their documents
``api``             reads, create, server-side apply, delete (propagation, preconditions, finalizers), dry runs
``merge``           server-side apply: field ownership (``managedFields``), conflicts, the merge itself
``validation``      what the server refuses (400 decode errors, 422 invalid and immutable fields)
``defaults``        what it fills in (Service IPs, pod spec fields, workload strategies, Secret ``stringData``)
``selectors``       label selectors, in the query and as ``LabelSelector`` objects
``store``           the objects, ``resourceVersion``, uids and generated names
``controllers``     the tick: namespaces, garbage collection, pvc-protection, then ``workloads``
                    (Deployment/ReplicaSet/StatefulSet/Job), ``cloud`` (load balancers, disks) and the
                    ``kubelet`` (pods follow ``scenarios``; logs; ``events``)
``startup``         scripted cold starts: milestones and vLLM log lines on the pod's own clock
``portforward``     the port-forward WebSocket, relayed to a loopback TCP target
``fixtures``        the ``kube_emulator`` pytest fixture
==================  ==========================================================================================

Using it with the kubernetes v37 client (all verified by ``test_kube_emulator.py``)::

    emu = KubeEmulator().start()                      # or the ``kube_emulator`` fixture
    emu.write_kubeconfig(path, context="test")        # plain http, token auth (any token)
    api = kubernetes.config.new_client_from_config(config_file=str(path), context="test")
    dyn = kubernetes.dynamic.DynamicClient(api, cache_file=str(tmp / "discovery.json"))
    res = dyn.resources.get(api_version="apps/v1", kind="StatefulSet")
    obj = res.server_side_apply(body=manifest, name=name, namespace=ns, field_manager="gptoss-gke")
    preview = res.server_side_apply(body=manifest, name=name, namespace=ns, field_manager="gptoss-gke",
                                    dry_run="All")          # force_conflicts=True to take fields over
    emu.set_port_forward_target("vllm-", 8000, ("127.0.0.1", fake_vllm.port))
    pf = kubernetes.stream.portforward(core.connect_get_namespaced_pod_portforward, "vllm-0", ns, ports="8000")
    conn = http.client.HTTPConnection("localhost", 8000); conn.sock = pf.socket(8000)   # then conn.request(...)
    # no target / refused: pf.socket(8000).recv() returns b"" and pf.error(8000) holds the kubelet-style message

Differences from a real cluster worth knowing: ticks are logical (one per read), Pod deletion is graceful
for exactly one tick, a deleted namespace goes at the next tick, no admission webhooks (no GCS FUSE sidecar
injection), no Endpoints/ControllerRevisions, ``Node`` objects exist only when seeded, no protobuf/CBOR, no
aggregated discovery, no OpenAPI document. Not emulated (405): watch, PUT, PATCH other than apply, writes
to ``/status``, deletecollection, list pagination, field selectors.

Nothing here opens a socket to anything but 127.0.0.1.
"""

from .errors import ApiError
from .kinds import RESOURCE_TYPES
from .scenarios import SCENARIOS
from . import startup  # noqa: F401  (registers the "startup" scenario: scripted cold starts)
from .selectors import match_label_selector, parse_label_selector
from .server import KubeEmulator, RecordedRequest

__all__ = ["ApiError", "KubeEmulator", "RecordedRequest", "RESOURCE_TYPES", "SCENARIOS", "match_label_selector",
           "parse_label_selector"]
