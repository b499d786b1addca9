"""Stateful loopback emulator of the Google Cloud REST APIs that gcloud 528 calls for GKE setup.

It serves, on one 127.0.0.1 port (ephemeral, background thread, concurrent requests):

* GKE ``container/v1``: clusters (get/list/create/update/delete and the ``:setX`` verbs), node pools
  (get/list/create/update/setSize/setAutoscaling/setManagement/delete), operations, serverConfig.
* Service Usage v1: services get/list/enable/batchEnable/disable and ``operations/...``.
* Cloud Resource Manager v1 (what ``gcloud projects describe`` uses) and v3 ``projects get``.
* Artifact Registry v1: repositories get/list/create/patch/delete and their operations; a Docker
  repository's tags and versions (list/get/delete), served from a real registry's storage.

Point the real gcloud at it with :func:`gcloud_env`. Nothing here opens a socket to anything but
127.0.0.1. One module per API (:mod:`.gke`, :mod:`.serviceusage`, :mod:`.resourcemanager`,
:mod:`.artifactregistry`), mixed into :class:`~.server.GcpEmulator` (:mod:`.server`: HTTP, request log,
faults, operations); :mod:`.operations`, :mod:`.proto` (proto3 JSON rendering) and :mod:`.errors` are
shared; the ``gcp_emulator`` fixture is in :mod:`.fixtures`.

What gcloud 528 sends (captured against this emulator; P project, L location, C cluster):

* ``clusters create``: GET ``/v1/projects/P/services/container.googleapis.com`` (and
  ``containerfilesystem.googleapis.com`` with ``--enable-image-streaming``; disabled only warns),
  POST ``/v1/projects/P/locations/L/clusters`` ``{"cluster": {...}, "parent": ...}``, GET the
  operation, GET the cluster, then writes the kubeconfig entry.
* ``clusters update`` (one flag per call): GET cluster, PUT ``.../clusters/C``
  ``{"name": ..., "update": {X}}`` with X = ``desiredWorkloadIdentityConfig`` |
  ``desiredAddonsConfig`` | ``desiredGatewayApiConfig`` | ``desiredGcfsConfig``
  (``--enable-image-streaming``) | ``desiredReleaseChannel``; ``--update-labels`` /
  ``--remove-labels`` POST ``.../clusters/C:setResourceLabels`` with ``labelFingerprint``.
* ``node-pools create``: POST ``.../clusters/C/nodePools`` ``{"nodePool": {...}, "parent": ...}``.
  ``node-pools update --enable-autoscaling`` is a cluster PUT with ``desiredNodePoolAutoscaling`` +
  ``desiredNodePoolId``; ``--node-labels`` / ``--node-taints`` / ``--workload-metadata`` PUT
  ``.../nodePools/N`` with ``labels.labels`` / ``taints.taints`` / ``workloadMetadataConfig``.
  ``clusters resize`` POSTs ``.../nodePools/N:setSize``.
* ``services enable S`` POSTs ``/v1/projects/P/services/S:enable`` (several: ``services:batchEnable``
  ``{"serviceIds": [...]}``) and polls ``/v1/operations/...`` unless the reply is already done.
* ``projects describe`` GETs ``/v1/projects/P`` (Resource Manager v1).
* ``artifacts repositories create R`` POSTs ``/v1/projects/P/locations/L/repositories?repositoryId=R``
  (body: format, mode ``MODE_UNSPECIFIED`` | ``REMOTE_REPOSITORY``, description, labels,
  remoteRepositoryConfig), polls ``/v1/projects/P/locations/L/operations/ID`` unless done, GETs R.
* ``artifacts docker tags delete`` / ``artifacts docker images delete --delete-tags``: see
  :mod:`.artifactregistry`.

Behaviour worth knowing (all of it mirrors the real services):

* Mutations return an Operation. With ``op_polls_before_done = N`` the operation answers RUNNING to
  the first N polls and DONE afterwards; the change becomes visible when it turns DONE (a resource
  being created exists meanwhile as PROVISIONING, a cluster being updated is RECONCILING).
  ``N = 0`` makes every operation DONE at once. Each RUNNING answer costs a gcloud sleep (measured
  with gcloud 528: container 5 s, Service Usage 2 s, Artifact Registry ~3.7 s), so keep ``N = 0``
  wherever speed matters (the ``gcp_emulator`` fixture does).
* While a cluster has an unfinished operation, further mutations of that cluster or its node pools
  get ``400 FAILED_PRECONDITION`` ("incompatible operation"), as on GKE.
* A failed operation ends DONE with ``error`` (and, for GKE, ``statusMessage``: that is the field
  gcloud reads). A failed create leaves the resource in status ERROR; a failed update changes
  nothing.
* GET replies for clusters and node pools are rendered like proto3 JSON: fields holding a default
  value (false, 0, "", [], ``*_UNSPECIFIED``) are omitted, except inside map fields such as labels.
  So an autoscaling pool with ``minNodeCount: 0`` reads back without ``minNodeCount``.
* New node pools get ``config.workloadMetadataConfig.mode = GKE_METADATA`` when the cluster has
  Workload Identity, as GKE does, and, without ``version`` in the create body, the default version
  of the cluster's release channel (``channel_versions``, also what ``serverConfig`` reports), capped
  at the control plane's version: lower ``channel_versions[ch]`` after a cluster exists to get a
  control plane newer than what its new pools get.
* Every cluster reports ``controlPlaneEndpointsConfig.dnsEndpointConfig.endpoint``;
  ``allowExternalTraffic`` is set only by ``--enable-dns-access`` (create body or
  ``desiredControlPlaneEndpointsConfig``).
* Container and Artifact Registry calls answer ``403 SERVICE_DISABLED`` when the project has not
  enabled the API (``enforce_service_enablement``), and every API answers 403 for unknown projects.
"""

from .errors import ApiError
from .gcloud import gcloud_env
from .gke_defaults import CHANNEL_VERSIONS
from .operations import OperationHold
from .server import GcpEmulator, GcpState, RecordedRequest
from .serviceusage import DEFAULT_ENABLED_SERVICES

__all__ = ["ApiError", "CHANNEL_VERSIONS", "DEFAULT_ENABLED_SERVICES", "GcpEmulator", "GcpState", "OperationHold",
           "RecordedRequest", "gcloud_env"]
