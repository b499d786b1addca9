"""Images: mirrored into Artifact Registry with skopeo (no Docker daemon), pinned by digest.

An image is named by a key: each target's serving image (key: the target's name, source
``targets.<t>.image``), and the tools image our in-cluster Jobs run this checkout on (key :data:`TOOLS`,
source ``models.stager_image``). One mirror, one pin and one purge serve every key.

What is compared, so that "already there" is exact and a re-run copies nothing:

* The source tag is resolved once per run (``skopeo inspect --raw``, hashed as the registry does).
* ``registry.platform: all`` mirrors the tag's top-level manifest as it is (an index stays an index:
  ``skopeo copy --all --preserve-digests``), so the destination must hold the source's top-level digest.
* ``registry.platform: linux/amd64`` (the default) mirrors only that platform's image. For a
  multi-platform index the wanted digest is the one the index lists for the platform; that manifest is
  copied *by that digest*, byte for byte, so the destination tag points at it. For a single-platform
  source the wanted digest is the source's own (after checking its config names the platform).
* A source named by digest (``…@sha256:…``) is mirrored as that digest, whatever the platform setting: the
  digest the user pinned is the digest that runs (an index is copied whole, ``--all``; the node picks its
  platform from it). To copy one platform only, pin that platform's own manifest digest.
* The destination tag is read the same way; equal digests → nothing to do. The copy always names the
  source by digest, so what is copied is what was compared even if the tag moves meanwhile.

The rest of the chain uses :func:`pinned_image`: ``<host>/<project>/<repo>/<path>@sha256:…``.

Credentials: the destination token is gcloud's (``gcloud auth print-access-token``). It reaches
skopeo only through an auth file (``core/private_files.py``: 0600, in a private directory, removed right
after each command however it ends, swept by the next run if this one was killed) named by
``REGISTRY_AUTH_FILE``; never argv, output or report. The source is read anonymously
(``--no-creds`` / ``--src-no-creds``), so no credentials of the user's are sent to Docker Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from gptoss_gke.core.private_files import private_file
from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import CannotObserve, CommandFailed, StepError
from gptoss_gke.gcp import gcloud
from gptoss_gke.gcp.project import Credentials, access_token
from gptoss_gke.gcp.registry import (ArtifactRepository, PurgeRepository, describe_repository, registry_host,
                                     repository_kept_for)
from gptoss_gke.ownership import gcp_owner_problem, kept_for
from gptoss_gke.targets import CATALOGUE

SKOPEO = "skopeo"
COPY_TIMEOUT_S = 2 * 3600  # a vLLM image is ~10 GB; generous, and the failure says what it waited for
AR_USER = "oauth2accesstoken"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}

_NOT_FOUND = re.compile(r"manifest unknown|name unknown|not found|404|no such image|does not exist", re.I)
_DENIED = re.compile(r"unauthorized|authentication required|denied|forbidden|\b40[13]\b", re.I)
_NETWORK = re.compile(r"\bEOF\b|connection reset|connection refused|broken pipe|i/o timeout|no such host|"
                      r"network is unreachable|TLS handshake|server misbehaving|timeout|unexpected EOF|"
                      r"context deadline exceeded|http: server gave HTTP response to HTTPS client", re.I)
_RATE = re.compile(r"toomanyrequests|rate limit|\b429\b", re.I)


TOOLS = "tools"  # the key of the tools image (no target is named so: targets come from the catalogue)


@dataclass(frozen=True)
class ImageSpec:
    """What one key names: the source reference and the setting it comes from (named in every error)."""

    key: str
    source: str
    setting: str  # "targets.l4.image", "models.stager_image"
    title: str  # how plans and recaps call it


def image_spec(settings, key: str) -> ImageSpec:
    if key == TOOLS:
        return ImageSpec(key, settings.models.stager_image, "models.stager_image",
                         "tools image (models.stager_image)")
    return ImageSpec(key, settings.target(key).image, f"targets.{key}.image", f"image {key}")


def image_keys() -> list[str]:
    """Every key an environment may mirror: what another environment's purge must keep if shared."""
    return [*CATALOGUE, TOOLS]


def tools_image(ctx) -> str:
    """The small Python image our in-cluster Jobs run this checkout's code on (the staging Job, the smoke Job):
    its copy in our repository, pinned by digest, as :func:`pinned_image` pins a target's image.

    The one place that decides it, so every Job that needs it gets the same reference. A chain that runs such
    a Job mirrors it first (``MirrorImage(settings, TOOLS)`` after the repository, as in-cluster staging does);
    the pin is read from the same once-per-run observation of the source that step makes."""
    return pinned_image(ctx, TOOLS)


# ---------------------------------------------------------------------------------------------
# References


@dataclass(frozen=True)
class ImageRef:
    registry: str  # "docker.io", "us-central1-docker.pkg.dev", "127.0.0.1:5000"
    path: str  # "vllm/vllm-openai"
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.path}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def repo(self) -> str:
        return f"{self.registry}/{self.path}"

    def at(self, digest: str) -> "ImageRef":
        return ImageRef(self.registry, self.path, None, digest)

    def docker(self) -> str:
        return f"docker://{self}"


_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_reference(text: str) -> ImageRef:
    """A Docker reference, normalised as docker/podman do (vllm/x → docker.io/vllm/x, nginx → library/)."""
    rest, digest = text, None
    if "@" in text:
        rest, digest = text.split("@", 1)
    if digest is not None and not _DIGEST.match(digest):
        raise ValueError(f"bad digest {digest!r}")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = "docker.io", rest
    if registry == "index.docker.io":
        registry = "docker.io"
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ValueError(f"bad tag {tag!r}")
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if not all(_COMPONENT.match(c) for c in path.split("/")):
        raise ValueError(f"bad repository path {path!r} (lowercase letters, digits, '.', '_', '-')")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, path, tag, digest)


def source_ref(settings, key: str) -> ImageRef:
    spec = image_spec(settings, key)
    try:
        return parse_reference(spec.source)
    except ValueError as exc:
        example = "docker.io/library/python:3.12-slim" if key == TOOLS else "docker.io/vllm/vllm-openai:v0.12.0"
        raise StepError(f"{spec.setting} {spec.source!r} is not an image reference: {exc}",
                        f"fix {spec.setting} in {settings.env_file}, e.g. {example}") from None


def destination(settings, key: str) -> ImageRef:
    """Where the image of ``key`` lives in our repository: the source's path, under the repository.

    A remote repository serves Docker Hub's paths as they are (``…/<repo>/vllm/vllm-openai``), and a
    copy uses the same layout, so both modes pin the same kind of reference.
    """
    src = source_ref(settings, key)
    tag = src.tag or f"sha256-{src.digest.split(':', 1)[1]}"
    return ImageRef(registry_host(settings), f"{settings.project}/{settings.registry.repository}/{src.path}", tag)


def short(digest: str | None) -> str:
    return f"{digest[:19]}…" if digest else "-"


# ---------------------------------------------------------------------------------------------
# Reading registries


@dataclass
class SourceState:
    ref: ImageRef
    digest: str  # the tag's top-level manifest (an index or an image)
    media_type: str
    platforms: dict[str, str] = field(default_factory=dict)  # index only: "linux/amd64" → manifest digest
    wanted: str = ""  # what the destination tag must hold for the configured platform
    chosen: str = ""  # words: "linux/amd64 of index sha256:…", "all platforms", ...

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _tls(settings, *which: str) -> list[str]:
    if settings.registry.tls_verify:
        return []
    return [f"--{w}tls-verify=false" for w in which] if which else ["--tls-verify=false"]


def _platform_key(p: dict) -> str:
    key = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return key + (f"/{p['variant']}" if p.get("variant") else "")


def _matches(p: dict, wanted: str) -> bool:
    parts = wanted.split("/")
    if p.get("os") != parts[0] or p.get("architecture") != parts[1]:
        return False
    return len(parts) < 3 or p.get("variant") == parts[2]


@contextmanager
def dest_auth_file(ctx) -> Iterator[str]:
    """A private auth file holding the destination token; removed however the command ends."""
    token = access_token(ctx)
    auth = base64.b64encode(f"{AR_USER}:{token}".encode()).decode()
    ctx.redact.add(token)
    ctx.redact.add(auth)
    with private_file("auth.json", json.dumps({"auths": {registry_host(ctx.settings): {"auth": auth}}})) as path:
        yield path


@contextmanager
def no_auth_file() -> Iterator[str]:
    """An auth file holding `{}`: skopeo must not pick up the user's credentials for the source."""
    with private_file("auth.json", "{}") as path:
        yield path


def _skopeo_read(ctx, argv: list[str], auth_file: str) -> str:
    return ctx.shell.read([SKOPEO, *argv], env={"REGISTRY_AUTH_FILE": auth_file}).stdout


def _manifest_digest(ctx, raw: str, inspect_argv: list[str], auth_file: str, first_platform: str | None) -> str:
    """sha256 of the manifest bytes, as registries compute it.

    Child output reaches us decoded; ASCII (every manifest we know) round-trips exactly. Anything
    else is asked of skopeo itself, which hashes the bytes it received.
    """
    if raw.isascii():
        return "sha256:" + hashlib.sha256(raw.encode("ascii")).hexdigest()
    overrides = []
    if first_platform:
        os_name, arch, *variant = first_platform.split("/")
        overrides = ["--override-os", os_name, "--override-arch", arch]
        if variant:
            overrides += ["--override-variant", variant[0]]
    argv = [*overrides, *[a for a in inspect_argv if a != "--raw"]]
    argv.insert(argv.index("inspect") + 1, "--format={{.Digest}}")
    return _skopeo_read(ctx, argv, auth_file).strip()


def _inspect(ctx, ref: ImageRef, *, anonymous: bool) -> tuple[str, str, dict] | None:
    """(digest, media type, manifest) of what ``ref`` points at, or None when the tag is absent."""
    s = ctx.settings
    argv = ["inspect", "--raw", *_tls(s), *(["--no-creds"] if anonymous else []), ref.docker()]
    with (no_auth_file() if anonymous else dest_auth_file(ctx)) as auth_file:
        try:
            raw = _skopeo_read(ctx, argv, auth_file)
        except CommandFailed as exc:
            if _NOT_FOUND.search(exc.stderr) and not _DENIED.search(exc.stderr):
                return None
            raise
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError:
            raise StepError(f"{ref} answered something that is not a manifest: {raw[:200]!r}",
                            "check the registry host in the reference") from None
        media_type = manifest.get("mediaType") or (
            "application/vnd.oci.image.index.v1+json" if "manifests" in manifest else
            "application/vnd.oci.image.manifest.v1+json")
        first = None
        if media_type in INDEX_TYPES:
            first = next((_platform_key(m["platform"]) for m in manifest.get("manifests", [])
                          if m.get("platform", {}).get("os") not in (None, "unknown")), None)
        digest = _manifest_digest(ctx, raw, argv, auth_file, first)
    return digest, media_type, manifest


def _source_error(settings, key: str, ref: ImageRef, exc: CommandFailed) -> Exception:
    text = exc.stderr
    fix_ref = f"check {image_spec(settings, key).setting} in {settings.env_file}"
    if _NETWORK.search(text):
        return CannotObserve(f"cannot reach {ref.registry} to read {ref}: {_last(text)}",
                             "check the network or proxy, then re-run")
    if _RATE.search(text):
        return StepError(f"{ref.registry} refused to serve {ref}: pull rate limit reached",
                         "wait and re-run (the mirror exists precisely so nodes never hit this limit)")
    if _DENIED.search(text):
        return StepError(f"source image {ref} not found or not public: {_last(text)}",
                         f"{fix_ref}; mirroring reads public images anonymously")
    if _NOT_FOUND.search(text):
        return StepError(f"source image {ref} not found: {_last(text)}", fix_ref)
    return StepError(f"reading source image {ref} failed: {_last(text)}", fix_ref)


def _dest_error(settings, ref: ImageRef, exc: CommandFailed, *, writing: bool) -> Exception:
    text = exc.stderr
    repo = f"{settings.registry.repository} ({settings.registry_location})"
    if _DENIED.search(text):
        need = "roles/artifactregistry.writer" if writing else "roles/artifactregistry.reader"
        return StepError(
            f"permission denied {'pushing to' if writing else 'reading'} {ref.repo}: {_last(text)}",
            f"your gcloud account needs {need} on repository {repo} (or on project {settings.project}); "
            f"check `gcloud auth list` and `project:` in {settings.env_file}")
    if _NETWORK.search(text):
        if writing:
            return StepError(f"the connection broke while copying to {ref.repo}: {_last(text)}",
                             "re-run the same command: blobs already in the registry are not sent again")
        return CannotObserve(f"cannot reach {ref.registry} to read {ref}: {_last(text)}",
                             "check the network or proxy, then re-run")
    return StepError(f"{'copying to' if writing else 'reading'} {ref} failed: {_last(text)}",
                     "see the message above; re-running resumes where the copy stopped")


def _last(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else (text or "")
    m = re.search(r'msg="(.*)"\s*$', line)  # skopeo's logrus line: keep the message
    return (m.group(1).replace('\\"', '"') if m else line)[-600:]


def observe_source(ctx, key: str) -> SourceState:
    """Resolve the source image of ``key`` to digests, once per run."""

    def read() -> SourceState:
        s = ctx.settings
        ref = source_ref(s, key)
        try:
            found = _inspect(ctx, ref, anonymous=True)
        except CommandFailed as exc:
            raise _source_error(s, key, ref, exc) from None
        if found is None:
            what = f"tag {ref.tag}" if ref.tag else f"digest {ref.digest}"
            raise StepError(f"source image {ref} not found: {what} does not exist in {ref.repo}",
                            f"check {image_spec(s, key).setting} in {s.env_file} (list the tags: skopeo list-tags "
                            f"docker://{ref.repo})")
        digest, media_type, manifest = found
        if ref.digest and digest != ref.digest:
            raise StepError(f"{ref.registry} served {short(digest)} for {ref}", "the registry is inconsistent; retry")
        state = SourceState(ref, digest, media_type)
        platform = s.registry.platform
        if state.is_index:
            state.platforms = {_platform_key(m.get("platform", {})): m["digest"] for m in manifest.get("manifests", [])
                               if m.get("platform", {}).get("os") not in (None, "unknown")}
        if platform == "all" or s.registry.mode == "remote" or (ref.digest and state.is_index):
            # (pinned by digest: that digest is what runs, so an index is kept whole)
            state.wanted = digest
            state.chosen = ("all platforms" + (" (the index pinned by digest)" if ref.digest else "")
                            if state.is_index else "single-platform image")
        elif state.is_index:
            match = next((m for m in manifest.get("manifests", []) if _matches(m.get("platform", {}), platform)),
                         None)
            if match is None:
                raise StepError(f"{ref} has no {platform} image (it has {', '.join(state.platforms) or 'none'})",
                                "set registry.platform to one of those (or all), or pick another image")
            state.wanted = match["digest"]
            state.chosen = f"{platform} of index {short(digest)}"
        else:
            state.wanted = digest
            state.chosen = _check_single_platform(ctx, ref.at(digest), platform)
        return state

    return ctx.fact(f"image.{key}.source", read)


def _check_single_platform(ctx, ref: ImageRef, platform: str) -> str:
    """A single-platform source must be the platform the nodes run, or pods die with 'exec format error'."""
    argv = ["inspect", "--config", "--raw", *_tls(ctx.settings), "--no-creds", ref.docker()]
    with no_auth_file() as auth_file:
        try:
            config = json.loads(_skopeo_read(ctx, argv, auth_file) or "{}")
        except (CommandFailed, json.JSONDecodeError):
            return "single-platform image"  # unreadable config: the copy itself will say more
    have = _platform_key({"os": config.get("os"), "architecture": config.get("architecture"),
                          "variant": config.get("variant")})
    if not _matches({"os": config.get("os"), "architecture": config.get("architecture"),
                     "variant": config.get("variant")}, platform):
        raise StepError(f"{ref.repo} is a single-platform {have} image; the nodes need {platform}",
                        "pick an image built for that platform, or set registry.platform to match")
    return f"single-platform {have} image"


def observe_destination(ctx, key: str) -> str | None:
    """The digest the destination tag holds now (None: absent). Never cached: copies change it."""
    s = ctx.settings
    dest = destination(s, key)
    if s.registry.host is None and describe_repository(ctx) is None:
        return None  # no repository yet (AR answers "denied" for images in a missing repository)
    try:
        found = _inspect(ctx, dest, anonymous=False)
    except CommandFailed as exc:
        raise _dest_error(s, dest, exc, writing=False) from None
    return found[0] if found else None


def pinned_image(ctx, key: str) -> str:
    """The reference manifests use: the mirrored image of ``key`` by digest (observed once per run).

    In a dry-run that could not observe the source, the tag reference, marked as not pinned.
    """

    def pin() -> str:
        dest = destination(ctx.settings, key)
        try:
            src = observe_source(ctx, key)
        except CannotObserve as exc:
            if not ctx.dry_run:
                raise
            what = "the tools image" if key == TOOLS else f"image for {key}"
            ctx.printer.line(f"  {what} is NOT pinned ({exc.problem}): using the tag {dest}", "dim")
            return str(dest)
        return str(dest.at(src.wanted))

    return ctx.fact(f"image.{key}", pin)


# ---------------------------------------------------------------------------------------------
# Steps


def _copy_argv(ctx, key: str, src: SourceState | None) -> list[str]:
    s = ctx.settings
    dest = destination(s, key)
    platform = s.registry.platform
    prefix: list[str] = []
    flags = ["--preserve-digests", "--src-no-creds", *_tls(s, "src-", "dest-")]
    if src is None:  # not observed (dry-run): copy the tag, letting skopeo pick the platform
        source = source_ref(s, key)
        if platform == "all" or source.digest:
            flags.insert(0, "--all")
        else:
            os_name, arch, *variant = platform.split("/")
            prefix = ["--override-os", os_name, "--override-arch", arch]
            if variant:
                prefix += ["--override-variant", variant[0]]
    else:
        # By digest: exactly what was compared. For one platform of an index that is the platform's
        # own manifest, so no index is copied and the tag holds the single-platform image.
        source = src.ref.at(src.wanted)
        if src.wanted == src.digest and src.is_index:
            flags.insert(0, "--all")
    return [SKOPEO, *prefix, "copy", *flags, source.docker(), dest.docker()]


class MirrorImage(Step):
    """The image of ``key`` (a target's serving image, or the tools image) in our repository, at the source's
    digest for the configured platform (or the digest the source is pinned at)."""

    section = "images"

    @staticmethod
    def step_key(image_key: str) -> str:
        """The key of the step that mirrors ``image_key``: what a step that runs the image ``needs``."""
        return f"image.{image_key}"

    def __init__(self, settings, key: str):
        self.image_key = key
        self.name = image_spec(settings, key).title
        self.key = self.step_key(key)
        self.needs = (Credentials.key, ArtifactRepository.key)

    def observe(self, ctx):
        src = observe_source(ctx, self.image_key)
        if ctx.settings.registry.mode == "remote":
            return {"source": src, "dest": None}
        return {"source": src, "dest": observe_destination(ctx, self.image_key)}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        dest = destination(s, self.image_key)
        if s.registry.mode == "remote":
            return self._plan_remote(ctx, current, dest)
        if current is None:
            src_ref = source_ref(s, self.image_key)
            whole = s.registry.platform == "all" or src_ref.digest
            return Plan([Change(f"copy {src_ref} → {dest} ({'all platforms' if whole else s.registry.platform}); "
                                f"not pinned: source not observed", "create",
                                argv=_copy_argv(ctx, self.image_key, None))],
                        diff={"image": "not observed"}, facts={"pinned": None, "image": str(dest)})
        src, have = current["source"], current["dest"]
        pinned = pinned_image(ctx, self.image_key)
        facts = {"pinned": pinned, "source": str(src.ref), "source_digest": src.digest, "digest": src.wanted,
                 "platform": src.chosen}
        if have == src.wanted:
            return noop(f"{dest} already at {src.wanted} (source unchanged); pinned {pinned}", **facts)
        argv = _copy_argv(ctx, self.image_key, src)
        if have is None:
            change = Change(f"copy {src.ref} ({src.chosen}) → {dest}, pinned {pinned}", "create", argv=argv,
                            timeout=COPY_TIMEOUT_S)
        else:
            change = Change(f"update {dest}: {short(have)} → {short(src.wanted)} (source {src.ref} moved; "
                            f"{src.chosen}), pinned {pinned}", "update", argv=argv, timeout=COPY_TIMEOUT_S)
        return Plan([change], diff={"digest": {"have": have, "want": src.wanted}}, facts=facts)

    def _plan_remote(self, ctx, current, dest: ImageRef) -> Plan:
        s = ctx.settings
        src_ref = source_ref(s, self.image_key)
        if src_ref.registry != "docker.io":
            raise StepError(f"registry.mode remote fronts Docker Hub, but {image_spec(s, self.image_key).setting} "
                            f"is on {src_ref.registry}", f"set registry.mode: copy in {s.env_file}")
        if current is None:
            return noop(f"nodes pull {dest} through the remote repository (not pinned: source not observed)",
                        pinned=None, image=str(dest))
        pinned = pinned_image(ctx, self.image_key)
        return noop(f"nodes pull through the remote repository from Docker Hub; pinned {pinned}", pinned=pinned,
                    source=str(current["source"].ref), digest=current["source"].wanted)

    def apply(self, ctx, change: Change) -> None:
        dest = destination(ctx.settings, self.image_key)
        ctx.printer.line(f"  copying registry-to-registry (no local daemon, nothing stored here) → {dest.repo}",
                         "dim")
        _skopeo_write(ctx, self.image_key, change, reads_source=True)


def _skopeo_write(ctx, key: str, change: Change, *, reads_source: bool = False) -> None:
    """A skopeo command that writes to our repository (a copy, a delete), the destination token in a private
    auth file; its failure in words (the source's, when skopeo could not read it)."""
    dest = destination(ctx.settings, key)
    with dest_auth_file(ctx) as auth_file:
        try:
            ctx.shell.write(change.argv, env={"REGISTRY_AUTH_FILE": auth_file}, timeout=change.timeout,
                            purpose=change.summary)
        except CommandFailed as exc:
            if reads_source and "initializing source" in exc.stderr:  # skopeo: "could not read the source"
                raise _source_error(ctx.settings, key, source_ref(ctx.settings, key), exc) from None
            raise _dest_error(ctx.settings, dest, exc, writing=True) from None


def _tags_sharing(ctx, dest: ImageRef, digest: str) -> list[str]:
    """The other tags of the destination image that point at ``digest``."""
    s = ctx.settings
    with dest_auth_file(ctx) as auth_file:
        try:
            listed = json.loads(_skopeo_read(ctx, ["list-tags", *_tls(s), f"docker://{dest.repo}"], auth_file) or "{}")
        except CommandFailed as exc:
            raise _dest_error(s, dest, exc, writing=False) from None
        except json.JSONDecodeError:
            raise StepError(f"skopeo list-tags of {dest.repo} printed something other than JSON",
                            "upgrade skopeo") from None
    shared = []
    for tag in sorted(listed.get("Tags") or []):
        if tag == dest.tag:
            continue
        found = _inspect(ctx, ImageRef(dest.registry, dest.path, tag), anonymous=False)
        if found and found[0] == digest:
            shared.append(tag)
    return shared


def _mirrors(other, ref: ImageRef) -> bool:
    """Does another environment's settings mirror into the same tag?"""
    try:
        return any(destination(other, k) == ref for k in image_keys())
    except StepError:
        return False


class PurgeImage(Step):
    """teardown --purge-images: the tag we pushed, when the repository itself is not ours to delete.

    Only the tag: an image that other tags also point at keeps them (Artifact Registry deletes the one
    tag; a plain registry cannot delete a tag alone, so the image stays, said so)."""

    section = "images"
    needs = (Credentials.key,)

    def __init__(self, settings, key: str, others: dict | None = None):
        self.key = f"image.{key}.purge"
        self.image_key = key
        self.others = others or {}
        self.name = f"mirrored {image_spec(settings, key).title}"

    def observe(self, ctx):
        repo = describe_repository(ctx)
        if repo is None and ctx.settings.registry.host is None:
            return {"repo": None, "digest": None, "also_tagged": []}
        digest = observe_destination(ctx, self.image_key)
        dest = destination(ctx.settings, self.image_key)
        return {"repo": repo, "digest": digest, "also_tagged": _tags_sharing(ctx, dest, digest) if digest else []}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        dest = destination(s, self.image_key)
        if s.registry.mode == "remote":
            return noop("remote repository: nothing was copied (its cache goes with the repository)")
        if current is None:
            return Plan([Change(f"delete {dest} (not observed)", "delete", argv=self._delete_argv(ctx, dest))])
        if current["repo"] is not None and _ours(s, current["repo"]) and not repository_kept_for(s, self.others):
            return noop(f"{dest} goes with repository {s.registry.repository}")
        if current["digest"] is None:
            return noop(f"{dest} does not exist")
        shared = kept_for(self.others, lambda other: _mirrors(other, dest))
        if shared:
            return noop(f"{dest} kept: {shared}")
        others = current["also_tagged"]
        if others and s.registry.host is not None:
            return noop(f"{dest} kept: its image is also tagged {', '.join(others)} (deleting it would take those "
                        f"tags too, and this registry cannot delete a tag alone)")
        if others:
            return Plan([Change(f"delete tag {dest} (its image stays: also tagged {', '.join(others)})", "delete",
                                argv=gcloud.argv(ctx, "artifacts", "docker", "tags", "delete", str(dest),
                                                 "--quiet"))])
        return Plan([Change(f"delete {dest} ({short(current['digest'])})", "delete",
                            argv=self._delete_argv(ctx, dest.at(current["digest"])))])

    @staticmethod
    def _delete_argv(ctx, ref: ImageRef) -> list[str]:
        s = ctx.settings
        if s.registry.host is None:  # Artifact Registry: its own delete also removes the (only, ours) tag
            return gcloud.argv(ctx, "artifacts", "docker", "images", "delete", str(ref), "--delete-tags", "--quiet")
        return [SKOPEO, "delete", *_tls(s), ref.docker()]

    def apply(self, ctx, change: Change) -> None:
        if change.argv[0] != SKOPEO:
            gcloud.write(ctx, change.argv, what=change.summary)
            return
        _skopeo_write(ctx, self.image_key, change)


def _ours(settings, repo: dict) -> bool:
    return gcp_owner_problem(repo.get("labels"), settings) is None


def mirror_image_steps(settings, keys: list[str]) -> list[Step]:
    """The repository, then the image of each key (targets, :data:`TOOLS`). Put `Credentials()` first (deploy and
    the task do)."""
    return [ArtifactRepository(settings), *[MirrorImage(settings, k) for k in keys]]


def purge_image_steps(settings, keys: list[str], others: dict | None = None) -> list[Step]:
    """The image of each key (targets, :data:`TOOLS`), then the repository if ours. ``others``: the other
    environments (name → Settings or load error): what they share is kept."""
    return [*[PurgeImage(settings, k, others) for k in keys], PurgeRepository(settings, others)]
