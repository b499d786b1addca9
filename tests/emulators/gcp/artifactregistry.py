"""Artifact Registry v1: repositories (get/list/create/patch/delete, their operations, locations and
project settings) and, for Docker repositories, the packages' versions and tags as gcloud 528's
``artifacts docker tags delete`` and ``artifacts docker images delete`` use them.

A Docker repository's images live in a real registry, as in Artifact Registry, where the Docker API
(``<location>-docker.pkg.dev``) and this REST API are two views of one store: attach one with
:meth:`ArtifactRegistry.serve_docker_images` (``tests.registry.Registry`` is one). Package ids are the
image path escaped (``vllm%2Fvllm-openai``); a version is a manifest digest, a tag a name pointing at
one. What gcloud 528 sends (captured against this emulator; R the repository, PKG the package):

* ``artifacts docker tags delete IMAGE:TAG``: GET R (a Docker repository?), DELETE ``.../packages/PKG/tags/TAG``.
* ``artifacts docker images delete IMAGE@DIGEST --delete-tags``: GET R, GET ``.../packages/PKG/tags`` with
  ``filter=version="<version name>"``, DELETE each of those tags, DELETE ``.../packages/PKG/versions/DIGEST``
  (an operation, polled until done). A version that still has tags is not deleted without ``force=true``.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any, Protocol
from urllib.parse import quote, unquote

from .errors import ApiError
from .operations import Operation
from .proto import now, prune

_FORMATS = {"DOCKER", "MAVEN", "NPM", "PYTHON", "APT", "YUM", "GO", "KFP", "GENERIC"}
AR_PATH = r"/v1/projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)"
_REPO = rf"{AR_PATH}/repositories/(?P<repository>[^/:]+)"
_PKG = rf"{_REPO}/packages/(?P<package>[^/:]+)"
_NOT_FOUND = "Requested entity was not found."


class DockerImages(Protocol):
    """A registry's storage, as Artifact Registry's API sees it. ``name``: the image's path in the
    registry (``<project>/<repository>/<image>``)."""

    def tags(self, name: str) -> dict[str, str]: ...  # tag → manifest digest

    def digests(self, name: str) -> set[str]: ...  # every manifest stored, tagged or not

    def untag(self, name: str, tag: str) -> None: ...

    def delete_manifest(self, name: str, digest: str) -> None: ...


class ArtifactRegistry:
    """The Artifact Registry handlers of :class:`~.server.GcpEmulator` (a mixin, like :class:`~.gke.Gke`)."""

    ROUTES = [
        ("GET", r"/v1/projects/(?P<project>[^/:]+)/projectSettings", "ar_get_project_settings"),
        ("GET", r"/v1/projects/(?P<project>[^/:]+)/locations", "ar_list_locations"),
        ("GET", rf"{AR_PATH}/repositories", "ar_list_repositories"),
        ("POST", rf"{AR_PATH}/repositories", "ar_create_repository"),
        ("GET", _REPO, "ar_get_repository"),
        ("PATCH", _REPO, "ar_patch_repository"),
        ("DELETE", _REPO, "ar_delete_repository"),
        ("GET", rf"{_PKG}/tags", "ar_list_tags"),
        ("GET", rf"{_PKG}/tags/(?P<tag>[^/:]+)", "ar_get_tag"),
        ("DELETE", rf"{_PKG}/tags/(?P<tag>[^/:]+)", "ar_delete_tag"),
        ("GET", rf"{_PKG}/versions/(?P<version>[^/]+)", "ar_get_version"),
        ("DELETE", rf"{_PKG}/versions/(?P<version>[^/]+)", "ar_delete_version"),
    ]

    def serve_docker_images(self, project: str, location: str, repository: str, images: DockerImages) -> None:
        """The images of Docker repository ``repository`` are those ``images`` stores under
        ``<project>/<repository>/``: what the Docker API serves is what this API lists and deletes."""
        with self.lock:
            self.state.docker_images[(project, location, repository)] = images

    def add_repository(self, project: str, location: str, name: str, **fields) -> dict:
        with self.lock:
            repo = self._new_repository(project, location, name, {"format": "DOCKER", **fields})
            self.state.repositories[(project, location, name)] = repo
            return repo

    def get_repository(self, project: str, location: str, name: str) -> dict | None:
        with self.lock:
            repo = self.state.repositories.get((project, location, name))
            return prune(repo, in_map=False) if repo and not repo.get("_pending") else None

    def _new_repository(self, pid, location, name, spec) -> dict:
        fmt = spec.get("format") or "DOCKER"
        mode = spec.get("mode")
        if not mode or mode == "MODE_UNSPECIFIED":
            mode = "STANDARD_REPOSITORY"
        repo = {
            "name": f"projects/{pid}/locations/{location}/repositories/{name}",
            "format": fmt,
            "createTime": now(),
            "updateTime": now(),
            "mode": mode,
            "satisfiesPzi": True,
        }
        if fmt == "DOCKER":
            repo["registryUri"] = f"{location}-docker.pkg.dev/{pid}/{name}"
        for k, v in spec.items():
            if k not in ("name", "createTime", "updateTime", "mode") and v not in (None, "", {}, []):
                repo[k] = copy.deepcopy(v)
        if repo["mode"] == "REMOTE_REPOSITORY":
            repo.setdefault("remoteRepositoryConfig", {})
        repo.setdefault("vulnerabilityScanningConfig", {
            "enablementState": "SCANNING_DISABLED",
            "enablementStateReason": "API containerscanning.googleapis.com is not enabled."})
        return repo

    def _lro(self, pid, location, method, path, on_success, on_failure=None,
             verb="create", target="") -> dict:
        name = f"projects/{pid}/locations/{location}/operations/{uuid.uuid4()}"
        meta = {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"}
        op = Operation("lro", name, self.op_polls_before_done, project=pid, location=location,
                       on_success=on_success, on_failure=on_failure, metadata=meta, target=target, op_type=verb)
        return self._start_op(op, method, path).render()

    def ar_list_repositories(self, query, body, project, location):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        names = sorted(k for k, r in self.state.repositories.items()
                       if k[0] == pid and location in ("-", k[1]) and not r.get("_pending"))
        size = int(query.get("pageSize") or self.repositories_max_page_size)
        size = max(1, min(size, self.repositories_max_page_size))
        start = int(query.get("pageToken") or 0)
        out: dict[str, Any] = {}
        page = names[start:start + size]
        if page:
            out["repositories"] = [prune(self.state.repositories[k]) for k in page]
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return out

    def _repo(self, pid, location, name) -> dict:
        repo = self.state.repositories.get((pid, location, name))
        if repo is None or repo.get("_pending"):
            raise ApiError(404, "Requested entity was not found.", "NOT_FOUND")
        return repo

    def ar_get_repository(self, query, body, project, location, repository):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        return prune(self._repo(pid, location, repository))

    def ar_create_repository(self, query, body, project, location):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        rid = query.get("repositoryId") or (body.get("name") or "").rsplit("/", 1)[-1]
        if not rid:
            raise ApiError(400, "repository_id is required", "INVALID_ARGUMENT")
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", rid):
            raise ApiError(400, f"Invalid repository id \"{rid}\".", "INVALID_ARGUMENT")
        fmt = body.get("format")
        if fmt not in _FORMATS:
            raise ApiError(400, f"Invalid repository format {fmt!r}.", "INVALID_ARGUMENT")
        key = (pid, location, rid)
        if key in self.state.repositories:
            raise ApiError(409, "the repository already exists", "ALREADY_EXISTS")
        repo = self._new_repository(pid, location, rid, body)
        # The repository appears when the operation succeeds; a concurrent create still conflicts.
        self.state.repositories[key] = dict(repo, _pending=True)

        def ok():
            self.state.repositories[key] = repo
            return {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository",
                    **prune(repo)}

        def failed(error):
            self.state.repositories.pop(key, None)

        return self._lro(pid, location, "POST", self._cur_path, ok, failed, "create", repo["name"])

    def ar_patch_repository(self, query, body, project, location, repository):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        repo = self._repo(pid, location, repository)
        mask = [m for m in (query.get("updateMask") or "").split(",") if m]
        fields = mask or [k for k in body if k not in ("name",)]
        for f in fields:
            if f in body:
                repo[f] = copy.deepcopy(body[f])
            else:
                repo.pop(f, None)
        repo["updateTime"] = now()
        return prune(repo)

    def ar_delete_repository(self, query, body, project, location, repository):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        repo = self._repo(pid, location, repository)
        key = (pid, location, repository)

        def ok():
            self.state.repositories.pop(key, None)
            return {"@type": "type.googleapis.com/google.protobuf.Empty"}

        return self._lro(pid, location, "DELETE", self._cur_path, ok, None, "delete", repo["name"])

    def ar_get_operation(self, query, body, project, location, operation):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        name = f"projects/{pid}/locations/{location}/operations/{operation}"
        op = self.state.operations.get(name)
        if op is None or op.kind != "lro":
            raise ApiError(404, f"Operation {name} not found.", "NOT_FOUND")
        return self._poll(name).render()

    def ar_get_location(self, query, body, project, location):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        return {"name": f"projects/{pid}/locations/{location}", "locationId": location}

    def ar_list_locations(self, query, body, project):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        locs = ["asia-east1", "europe-west4", "us", "us-central1", "us-east1", "us-east4",
                "us-east5", "us-west1", "us-west4"]
        return {"locations": [{"name": f"projects/{pid}/locations/{loc}", "locationId": loc}
                              for loc in locs]}

    def ar_get_project_settings(self, query, body, project):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        return {"name": f"projects/{pid}/projectSettings",
                "legacyRedirectionState": "REDIRECTION_FROM_GCR_IO_DISABLED"}

    # ---- Docker packages: versions and tags ---------------------------------------------------------

    def _docker(self, project, location, repository, package) -> tuple[str, str, Any]:
        """(package resource name, image path in the registry, the registry) of a Docker package."""
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        repo = self._repo(pid, location, repository)
        if repo.get("format") != "DOCKER":
            raise ApiError(400, f"Repository {repository} is not a Docker repository.", "INVALID_ARGUMENT")
        images = self.state.docker_images.get((pid, location, repository))
        if images is None:
            raise ApiError(404, _NOT_FOUND, "NOT_FOUND")
        name = f"{repo['name']}/packages/{quote(unquote(package), safe='')}"
        return name, f"{pid}/{repository}/{unquote(package)}", images

    @staticmethod
    def _tag(package_name: str, tag: str, digest: str) -> dict:
        return {"name": f"{package_name}/tags/{tag}", "version": f"{package_name}/versions/{digest}"}

    def ar_list_tags(self, query, body, project, location, repository, package):
        package_name, image, images = self._docker(project, location, repository, package)
        tags = [self._tag(package_name, t, d) for t, d in sorted(images.tags(image).items())]
        flt = (query.get("filter") or "").strip()
        if flt:
            m = re.fullmatch(r'(name|version)\s*=\s*"([^"]*)"', flt)
            if not m:
                raise ApiError(400, f"Invalid filter: {flt}", "INVALID_ARGUMENT")
            tags = [t for t in tags if t[m.group(1)] == m.group(2)]
        size = max(1, min(int(query.get("pageSize") or 1000), 1000))
        start = int(query.get("pageToken") or 0)
        out: dict[str, Any] = {}
        if tags[start:start + size]:
            out["tags"] = tags[start:start + size]
        if start + size < len(tags):
            out["nextPageToken"] = str(start + size)
        return out

    def ar_get_tag(self, query, body, project, location, repository, package, tag):
        package_name, image, images = self._docker(project, location, repository, package)
        digest = images.tags(image).get(tag)
        if digest is None:
            raise ApiError(404, _NOT_FOUND, "NOT_FOUND")
        return self._tag(package_name, tag, digest)

    def ar_delete_tag(self, query, body, project, location, repository, package, tag):
        """Only the tag: the image it pointed at stays, with its other tags."""
        package_name, image, images = self._docker(project, location, repository, package)
        if tag not in images.tags(image):
            raise ApiError(404, _NOT_FOUND, "NOT_FOUND")
        images.untag(image, tag)
        return {}

    def ar_get_version(self, query, body, project, location, repository, package, version):
        package_name, image, images = self._docker(project, location, repository, package)
        if version not in images.digests(image):
            raise ApiError(404, _NOT_FOUND, "NOT_FOUND")
        out = {"name": f"{package_name}/versions/{version}"}
        if query.get("view") == "FULL":
            out["relatedTags"] = [self._tag(package_name, t, d) for t, d in sorted(images.tags(image).items())
                                  if d == version]
        return out

    def ar_delete_version(self, query, body, project, location, repository, package, version):
        """The manifest goes; a version still tagged only with ``force=true`` (its tags go with it)."""
        package_name, image, images = self._docker(project, location, repository, package)
        if version not in images.digests(image):
            raise ApiError(404, _NOT_FOUND, "NOT_FOUND")
        tagged = sorted(t for t, d in images.tags(image).items() if d == version)
        if tagged and (query.get("force") or "").lower() != "true":
            raise ApiError(400, f"Version {version} is tagged ({', '.join(tagged)}); delete its tags first or "
                                f"delete it with force.", "FAILED_PRECONDITION")
        pid = self._resolve_project(project)

        def ok():
            for t in tagged:
                images.untag(image, t)
            images.delete_manifest(image, version)
            return {"@type": "type.googleapis.com/google.protobuf.Empty"}

        return self._lro(pid, location, "DELETE", self._cur_path, ok, None, "delete",
                         f"{package_name}/versions/{version}")
