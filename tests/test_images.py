"""Image mirroring: real skopeo between two loopback docker-registry servers, the real gcloud against
the loopback GCP emulator. The destination registry demands `oauth2accesstoken:<gcloud's token>`, as
Artifact Registry does, so every copy proves the credentials arrived — and every test checks how.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import invoke
import pytest

from gptoss_gke.config import RegistrySettings, RetrySettings, Settings, TargetSettings
from gptoss_gke.core import Context, Redactor, Runner
from gptoss_gke.core.report import Printer, write_report
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.shell import Shell
from gptoss_gke.gcp.project import Credentials
from gptoss_gke.gcp.registry import ArtifactRepository
from gptoss_gke.images import MirrorImage, mirror_image_steps, pinned_image, purge_image_steps
from tests.conftest import offline_gcloud_env, require_tool, run_inv
from tests.emulators.gcp import gcloud_env
from tests.envfiles import mirror_env, write_env
from tests.registry import Registry, publish

PROJECT = "test-project"
NAME = "vllm/vllm-openai"  # the source path; mirrored under <project>/<repository>/
BOTH = ("linux/amd64", "linux/arm64")

WRAPPER = """#!/bin/sh
# Record how this tool was really started (argv, and the auth file skopeo was pointed at), then run it.
{{ printf '%s' "{tool}"; for a in "$@"; do printf ' %s' "$a"; done; printf '\\n'; }} >> "{log}"
if [ -n "$REGISTRY_AUTH_FILE" ]; then
  echo "AUTHFILE $(stat -c %a "$REGISTRY_AUTH_FILE") $(stat -c %a "$(dirname "$REGISTRY_AUTH_FILE")") $REGISTRY_AUTH_FILE" >> "{log}"
fi
exec "{real}" "$@"
"""


@dataclass
class World:
    tmp: Path
    emu: object
    src: Registry
    dst: Registry
    env: dict
    token: str
    log: Path

    @property
    def dest_name(self) -> str:
        return f"{PROJECT}/gptoss/{NAME}"

    def calls(self, tool: str = "") -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [ln for ln in text.splitlines() if not ln.startswith("AUTHFILE") and ln.startswith(tool)]

    def authfiles(self) -> list[tuple[str, str, str]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [tuple(ln.split()[1:4]) for ln in text.splitlines() if ln.startswith("AUTHFILE")]

    def settings(self, *, host: str | None = None, tag: str = "v1", **registry) -> Settings:
        return Settings(project=PROJECT,
                        registry=RegistrySettings(host=host or self.dst.host, tls_verify=False, **registry),
                        targets={"l4": TargetSettings(image=f"{self.src.host}/{NAME}:{tag}")},
                        retry=RetrySettings(attempts=1))

    def secrets(self) -> list[str]:
        return [self.token, base64.b64encode(f"oauth2accesstoken:{self.token}".encode()).decode()]


@pytest.fixture
def world(tmp_path, gcp_emulator, registries):
    require_tool("gcloud", "install the Google Cloud CLI")
    token = "gptoss-test-token-" + secrets.token_hex(16)  # no known token shape: only our code can hide it
    (tmp_path / "gcloud-token").write_text(token + "\n")
    env = gcloud_env(gcp_emulator, tmp_path, PROJECT)
    env = {k: v for k, v in env.items() if not k.startswith("GPTOSS_")}
    log = tmp_path / "argv.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("skopeo", "gcloud"):
        wrapper = bindir / tool
        wrapper.write_text(WRAPPER.format(tool=tool, log=log, real=shutil.which(tool)))
        wrapper.chmod(0o755)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env["NO_COLOR"] = "1"
    src = registries("source")
    dst = registries("dest", credentials=("oauth2accesstoken", token))
    return World(tmp_path, gcp_emulator, src, dst, env, token, log)


def run(world: World, settings: Settings, steps=None, *, dry_run: bool = False, env: dict | None = None):
    """Run steps in-process with the real Shell; return (results, printed output, context)."""
    redactor = Redactor()
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=RetryPolicy(1, 0, 0), emit=printer.line,
                  base_env=env or world.env)
    ctx = Context(settings, shell, printer, redactor, dry_run=dry_run, interactive=False)
    ctx.targets = ["l4"]
    if steps is None:
        steps = [Credentials(), *mirror_image_steps(settings, ["l4"])]
    results = Runner(ctx).run(steps)
    return results, out.getvalue(), ctx


def our_repository(world: World, settings: Settings, **fields) -> None:
    world.emu.add_repository(PROJECT, settings.registry_location, settings.registry.repository,
                             labels=dict(settings.gcp_labels), **fields)


def assert_no_secret_anywhere(world: World, *texts: str) -> None:
    argv_log = world.log.read_text()
    for secret in world.secrets():
        assert secret not in argv_log, "a credential reached a child process's command line"
        for text in texts:
            assert secret not in text, "a credential reached the output or the report"


# ---------------------------------------------------------------------------------------------
# End to end through `inv mirror-image`


def test_inv_mirror_image_copies_once_then_rerun_copies_nothing(world):
    image = publish(world.src, NAME, "v1", world.tmp, platforms=BOTH)
    amd64 = image.platforms["linux/amd64"]
    env = {**world.env, "GPTOSS_ENV_DIR": mirror_env(world.tmp, world.dst.host, f"{world.src.host}/{NAME}:v1")}
    report = world.tmp / "report.json"

    first = run_inv(["mirror-image", "--target=l4", f"--report={report}"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    pinned = f"{world.dst.host}/{world.dest_name}@{amd64}"
    assert "changed: create Docker repository gptoss in us-central1" in first.stdout
    assert f"changed: copy {world.src.host}/{NAME}:v1 (linux/amd64 of index" in first.stdout
    assert "RECAP ok=1 changed=2 skipped=0 failed=0" in first.stdout
    # The tag now holds exactly the source's amd64 image (its digest unchanged), and nothing else.
    assert world.dst.manifest_digest(world.dest_name, "v1") == amd64
    assert all(world.dst.has_blob(world.dest_name, b) for b in image.blobs("linux/amd64"))
    assert not any(world.dst.has_blob(world.dest_name, b) for b in image.blobs("linux/arm64"))
    doc = json.loads(report.read_text())
    assert doc["steps"][-1]["facts"]["pinned"] == pinned
    copies = world.calls("skopeo copy")
    assert len(copies) == 1 and f"docker://{world.src.host}/{NAME}@{amd64}" in copies[0]
    # Repository created with its labels and description, once.
    posts = world.emu.find_requests("POST", r"/repositories$")
    assert len(posts) == 1
    assert posts[0].body["labels"] == {"managed-by": "gptoss-gke", "gptoss-gke-env": "dev"}
    assert posts[0].body["format"] == "DOCKER" and "gpt-oss" in posts[0].body["description"]

    dest_requests = len(world.dst.requests())
    source_requests = len(world.src.requests())
    second = run_inv(["mirror-image", "--target=l4", f"--report={report}"], env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"already at {amd64} (source unchanged); pinned {pinned}" in second.stdout
    assert "RECAP ok=3 changed=0 skipped=0 failed=0" in second.stdout
    assert len(world.calls("skopeo copy")) == 1  # still only the first run's
    # Digest comparison only: the second run read two manifests and moved no blob either way.
    for reg, before in ((world.dst, dest_requests), (world.src, source_requests)):
        touched = [(r.method, r.uri.rsplit("/", 2)[-2]) for r in reg.requests()[before:] if r.uri != "/v2/"]
        assert touched == [("GET", "manifests")]
    assert len(world.emu.find_requests("POST", r"/repositories$")) == 1
    assert json.loads(report.read_text())["steps"][-1]["facts"]["pinned"] == pinned

    # The token went to skopeo through a 0600 file in a private directory that is gone now.
    files = world.authfiles()
    assert files and all(mode == "600" and dmode == "700" for mode, dmode, _ in files)
    assert not any(Path(path).parent.exists() for _, _, path in files)
    assert_no_secret_anywhere(world, first.stdout + first.stderr, second.stdout + second.stderr,
                              report.read_text())


def test_inv_dry_run_without_credentials_prints_the_plan_unpinned(tmp_path):
    env = {**offline_gcloud_env(tmp_path), "GPTOSS_ENV_DIR": write_env(tmp_path, {"project": PROJECT})}
    proc = run_inv(["mirror-image", "--target=l4", "--dry-run"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "would run: gcloud artifacts repositories create gptoss --location=us-central1 --repository-format=docker" \
           in out
    assert ("would run: skopeo --override-os linux --override-arch amd64 copy --preserve-digests --src-no-creds "
            "docker://docker.io/vllm/vllm-openai:v0.12.0 "
            "docker://us-central1-docker.pkg.dev/test-project/gptoss/vllm/vllm-openai:v0.12.0") in out
    assert "not pinned: source not observed" in out
    assert "failed=0" in out


# ---------------------------------------------------------------------------------------------
# In-process, the real Shell: digests, platforms, failures


def test_source_tag_moved_copies_once_and_pins_the_new_digest(world):
    settings = world.settings()
    our_repository(world, settings)
    old = publish(world.src, NAME, "v1", world.tmp, platforms=BOTH)
    results, out, _ = run(world, settings)
    assert [r.status for r in results] == ["ok", "ok", "changed"], out
    assert "repository gptoss already exists" in results[1].reason

    new = publish(world.src, NAME, "v1", world.tmp, platforms=BOTH, version="2")  # the tag moves
    copies_before = len(world.calls("skopeo copy"))
    results, out, ctx = run(world, settings)
    assert results[-1].status == "changed", out
    assert (f"update {world.dst.host}/{world.dest_name}:v1: {old.platforms['linux/amd64'][:19]}… → "
            f"{new.platforms['linux/amd64'][:19]}… (source {world.src.host}/{NAME}:v1 moved") in results[-1].reason
    assert len(world.calls("skopeo copy")) == copies_before + 1
    copy_records = [c for c in results[-1].commands if c.argv.startswith("skopeo copy")]
    assert len(copy_records) == 1 and copy_records[0].write and copy_records[0].rc == 0
    assert world.dst.manifest_digest(world.dest_name, "v1") == new.platforms["linux/amd64"]
    assert pinned_image(ctx, "l4") == f"{world.dst.host}/{world.dest_name}@{new.platforms['linux/amd64']}"
    assert results[-1].facts["pinned"] == pinned_image(ctx, "l4")
    # Layers the new release shares with nothing old were sent; the old pinned digest still resolves.
    assert world.dst.manifest_digest(world.dest_name, old.platforms["linux/amd64"]) == old.platforms["linux/amd64"]

    report = world.tmp / "report.json"
    write_report(str(report), results, ctx.redact, task="mirror-image", dry_run=False)
    recorded = " ".join(c.argv for r in results for c in r.commands)
    assert_no_secret_anywhere(world, out, report.read_text(), recorded)


def test_platform_all_mirrors_the_index_itself(world):
    settings = world.settings(platform="all")
    our_repository(world, settings)
    # Non-ASCII text in the index: its digest must still be the registry's, or every run would copy.
    image = publish(world.src, NAME, "v1", world.tmp, platforms=BOTH, title="vLLM — modèle ünïcode")
    results, out, ctx = run(world, settings)
    assert results[-1].status == "changed", out
    assert world.dst.manifest_digest(world.dest_name, "v1") == image.digest
    assert all(world.dst.has_blob(world.dest_name, b) for p in BOTH for b in image.blobs(p))
    assert pinned_image(ctx, "l4") == f"{world.dst.host}/{world.dest_name}@{image.digest}"
    assert "--all" in world.calls("skopeo copy")[-1].split()

    results, out, _ = run(world, settings)
    assert results[-1].status == "ok" and f"already at {image.digest} (source unchanged)" in results[-1].reason
    # Switching to one platform replaces the index with that platform's image: a real difference.
    results, out, ctx = run(world, world.settings(platform="linux/arm64"))
    assert results[-1].status == "changed", out
    assert world.dst.manifest_digest(world.dest_name, "v1") == image.platforms["linux/arm64"]


def test_single_platform_source_of_the_wrong_architecture_is_refused(world):
    settings = world.settings()
    our_repository(world, settings)
    publish(world.src, NAME, "v1", world.tmp, platforms=("linux/arm64",))
    results, out, _ = run(world, settings)
    assert results[-1].status == "failed"
    assert "is a single-platform linux/arm64 image; the nodes need linux/amd64" in results[-1].error
    assert world.calls("skopeo copy") == []


def test_network_cut_mid_copy_fails_clearly_and_the_rerun_sends_no_blob_twice(world, proxies):
    proxy = proxies(world.dst)
    settings = world.settings(host=proxy.host)
    our_repository(world, settings)
    image = publish(world.src, NAME, "v1", world.tmp, platforms=BOTH, layer_sizes=(300_000, 200_000))
    blobs = image.blobs("linux/amd64")
    name = world.dest_name

    proxy.cut_on_manifest_put()
    results, out, _ = run(world, settings)
    assert proxy.cuts == 1
    failed = results[-1]
    assert failed.status == "failed", out
    assert failed.error.startswith(f"the connection broke while copying to {proxy.host}/{name}")
    assert "re-run the same command: blobs already in the registry are not sent again" in failed.fix
    assert world.dst.manifest_digest(name, "v1") is None  # no tag: nothing half-done is visible
    assert all(world.dst.blob_uploads(b) == 1 for b in blobs)  # the blobs made it before the cut

    proxy.restore()
    results, out, ctx = run(world, settings)
    assert results[-1].status == "changed", out
    assert world.dst.manifest_digest(name, "v1") == image.platforms["linux/amd64"]
    assert all(world.dst.blob_uploads(b) == 1 for b in blobs), "a blob already there was sent again"
    assert_no_secret_anywhere(world, out, failed.error, failed.fix)


def test_destination_permission_denied_is_a_clear_failure(world, proxies):
    # A token the registry does not accept: nothing can be read or written.
    (world.tmp / "gcloud-token").write_text("gptoss-test-token-revoked-" + secrets.token_hex(8))
    settings = world.settings()
    our_repository(world, settings)
    publish(world.src, NAME, "v1", world.tmp)
    results, out, _ = run(world, settings)
    assert results[-1].status == "failed"
    assert results[-1].error.startswith(f"permission denied reading {world.dst.host}/{world.dest_name}")
    assert "roles/artifactregistry.reader" in results[-1].fix

    # A reader-only account: the destination reads fine, the upload is denied (Artifact Registry's 403).
    (world.tmp / "gcloud-token").write_text(world.token)
    proxy = proxies(world.dst)
    proxy.deny_writes()
    results, out, _ = run(world, world.settings(host=proxy.host))
    assert results[-1].status == "failed", out
    assert results[-1].error.startswith(f"permission denied pushing to {proxy.host}/{world.dest_name}")
    assert "uploadArtifacts" in results[-1].error and "roles/artifactregistry.writer" in results[-1].fix
    assert_no_secret_anywhere(world, out)


def test_source_tag_not_found(world):
    settings = world.settings(tag="v9")
    our_repository(world, settings)
    publish(world.src, NAME, "v1", world.tmp)
    results, out, _ = run(world, settings)
    assert results[-1].status == "failed"
    assert results[-1].error == f"source image {world.src.host}/{NAME}:v9 not found: tag v9 does not exist in " \
                                f"{world.src.host}/{NAME}"
    assert "check targets.l4.image" in results[-1].fix and "skopeo list-tags" in results[-1].fix


def test_skopeo_missing_fails_with_the_install_hint_and_dry_run_still_plans(world):
    settings = world.settings()
    empty = world.tmp / "empty-bin"
    empty.mkdir()
    env = {**world.env, "PATH": str(empty)}
    [result], out, _ = run(world, settings, [MirrorImage(settings, "l4")], env=env)
    assert result.status == "failed"
    assert result.error == "skopeo is not installed (or not on PATH)"
    assert "apt-get install -y skopeo" in result.fix

    [result], out, _ = run(world, settings, [MirrorImage(settings, "l4")], env=env, dry_run=True)
    assert result.status == "changed" and not result.observed
    assert "would run: skopeo --override-os linux --override-arch amd64 copy" in out


# ---------------------------------------------------------------------------------------------
# The repository


def test_remote_mode_creates_a_docker_hub_remote_repository_once(world):
    settings = world.settings(mode="remote")
    results, out, _ = run(world, settings, [ArtifactRepository(settings)])
    assert results[0].status == "changed", out
    [post] = world.emu.find_requests("POST", r"/repositories$")
    assert post.body["mode"] == "REMOTE_REPOSITORY"
    assert post.body["remoteRepositoryConfig"] == {"dockerRepository": {"publicRepository": "DOCKER_HUB"}}
    assert "--mode=remote-repository" in out and "--remote-docker-repo=docker-hub" in out

    results, out, _ = run(world, settings, [ArtifactRepository(settings)])
    assert results[0].status == "ok" and "remote" in results[0].reason
    assert len(world.emu.find_requests("POST", r"/repositories$")) == 1

    # Remote repositories front Docker Hub only: another source registry is a configuration error.
    publish(world.src, NAME, "v1", world.tmp)
    results, out, _ = run(world, settings, [MirrorImage(settings, "l4")])
    assert results[0].status == "failed" and "registry.mode remote fronts Docker Hub" in results[0].error


def test_existing_repository_of_the_other_mode_is_an_immutable_failure(world):
    settings = world.settings()  # mode copy wants a standard repository
    world.emu.add_repository(PROJECT, "us-central1", "gptoss", mode="REMOTE_REPOSITORY",
                             remoteRepositoryConfig={"dockerRepository": {"publicRepository": "DOCKER_HUB"}})
    results, out, _ = run(world, settings, [ArtifactRepository(settings)])
    assert results[0].status == "failed"
    assert "it is a remote repository, registry.mode copy wants a standard one" in results[0].error
    assert "cannot change in place" in results[0].error
    assert "registry.repository" in results[0].fix and "gcloud artifacts repositories delete gptoss" in results[0].fix
    assert world.emu.mutating_requests() == []


def test_artifact_registry_api_disabled_says_how_to_enable_it(world):
    world.emu.disable_services(PROJECT, "artifactregistry.googleapis.com")
    settings = world.settings()
    results, out, _ = run(world, settings, [ArtifactRepository(settings)])
    assert results[0].status == "failed"
    assert results[0].error == f"the Artifact Registry API is not enabled in project {PROJECT}"
    assert "gcloud services enable artifactregistry.googleapis.com" in results[0].fix


def test_purge_deletes_our_repository_or_only_our_image(world):
    settings = world.settings()
    publish(world.src, NAME, "v1", world.tmp)
    results, out, _ = run(world, settings)  # creates the repository (ours) and copies
    assert [r.status for r in results] == ["ok", "changed", "changed"], out

    results, out, _ = run(world, settings, purge_image_steps(settings, ["l4"]))
    assert [r.status for r in results] == ["ok", "changed"], out
    assert "goes with repository gptoss" in results[0].reason
    assert world.emu.get_repository(PROJECT, "us-central1", "gptoss") is None

    # A repository someone else made: it stays; only the image we mirrored goes.
    world.emu.add_repository(PROJECT, "us-central1", "gptoss")
    assert world.dst.manifest_digest(world.dest_name, "v1") is not None
    results, out, _ = run(world, settings, purge_image_steps(settings, ["l4"]))
    assert [r.status for r in results] == ["changed", "ok"], out
    assert "is not ours (no managed-by=gptoss-gke label): kept" in results[1].reason
    assert world.dst.manifest_digest(world.dest_name, "v1") is None
    assert world.emu.get_repository(PROJECT, "us-central1", "gptoss") is not None
    assert_no_secret_anywhere(world, out)


def test_purge_deletes_only_the_tag_we_pushed_never_tags_others_share(world):
    import subprocess

    settings = world.settings()
    world.emu.add_repository(PROJECT, "us-central1", "gptoss")  # someone else's repository
    publish(world.src, NAME, "v1", world.tmp)
    results, out, _ = run(world, settings)
    assert results[-1].status == "changed", out
    digest = world.dst.manifest_digest(world.dest_name, "v1")
    # Someone pins the very image we mirrored under a tag of their own.
    auth = world.tmp / "empty-auth.json"
    auth.write_text("{}")
    creds = ":".join(world.dst.credentials)
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"--src-creds={creds}", f"--dest-creds={creds}",
                    f"docker://{world.dst.host}/{world.dest_name}:v1", f"docker://{world.dst.host}/{world.dest_name}:prod"],
                   check=True, env={**world.env, "REGISTRY_AUTH_FILE": str(auth)}, capture_output=True, timeout=60)
    assert world.dst.manifest_digest(world.dest_name, "prod") == digest

    results, out, _ = run(world, settings, purge_image_steps(settings, ["l4"]))
    assert [r.status for r in results] == ["ok", "ok"], out
    assert "kept: its image is also tagged prod" in results[0].reason
    assert world.dst.manifest_digest(world.dest_name, "prod") == digest  # their tag still resolves

    # Another environment mirrors into the same tag: it stays while that environment exists.
    results, out, _ = run(world, settings, purge_image_steps(settings, ["l4"], {"staging": world.settings()}))
    assert "kept: environment staging uses it too" in results[0].reason
    assert world.dst.manifest_digest(world.dest_name, "v1") == digest


# ---------------------------------------------------------------------------------------------
# The tools image (models.stager_image): the same mirror, pin and purge, under its own key


def test_tools_image_pinned_by_digest_is_mirrored_as_that_digest_once_and_purged(world):
    from gptoss_gke.config import load_settings
    from gptoss_gke.images import TOOLS, tools_image
    from tests.envfiles import BASE, registry

    publish(world.src, NAME, "v1", world.tmp)
    python = publish(world.src, "library/python", "3.12-slim", world.tmp, platforms=BOTH)
    # The user pins the multi-platform index by digest: that digest is what must run, not one of its platforms.
    pinned_source = f"{world.src.host}/library/python@{python.digest}"
    folder = write_env(world.tmp, BASE, registry(world.dst.host),
                       {"targets": {"l4": {"image": f"{world.src.host}/{NAME}:v1"}},
                        "models": {"stager_image": pinned_source}, "retry": {"attempts": 1}})
    env = {**world.env, "GPTOSS_ENV_DIR": folder}
    world.emu.add_repository(PROJECT, "us-central1", "gptoss")  # someone else's: purge removes only our image
    report = world.tmp / "report.json"
    dest = f"{PROJECT}/gptoss/library/python"
    tag = f"sha256-{python.digest.split(':')[1]}"

    first = run_inv(["mirror-image", "--target=l4", "--tools", f"--report={report}"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "TASK [images : tools image (models.stager_image)]" in first.stdout
    assert world.dst.manifest_digest(dest, tag) == python.digest  # the index itself, under a tag naming it
    assert all(world.dst.has_blob(dest, b) for p in BOTH for b in python.blobs(p))
    [tools_step] = [s for s in json.loads(report.read_text())["steps"] if s["key"] == "image.tools"]
    assert tools_step["facts"]["pinned"] == f"{world.dst.host}/{dest}@{python.digest}"
    copies = [c for c in world.calls("skopeo copy") if "library/python" in c]
    assert len(copies) == 1 and "--all" in copies[0].split() and f"library/python@{python.digest}" in copies[0]

    again = run_inv(["mirror-image", "--target=l4", "--tools"], env)
    assert again.returncode == 0 and "RECAP ok=4 changed=0" in again.stdout, again.stdout + again.stderr
    assert len([c for c in world.calls("skopeo copy") if "library/python" in c]) == 1

    settings = load_settings(environ={"GPTOSS_ENV_DIR": folder})
    results, out, ctx = run(world, settings, purge_image_steps(settings, [TOOLS]))
    assert [r.status for r in results] == ["changed", "ok"], out
    assert results[0].name == "mirrored tools image (models.stager_image)"
    assert world.dst.manifest_digest(dest, tag) is None
    assert world.dst.manifest_digest(f"{PROJECT}/gptoss/{NAME}", "v1") is not None  # the target's image stays
    # What a Job is given (read once per run, as the purge's observation did): our copy, by the pinned digest.
    assert tools_image(ctx) == f"{world.dst.host}/{dest}@{python.digest}"
    assert_no_secret_anywhere(world, first.stdout + first.stderr, again.stdout, out)


def test_teardown_purges_the_tools_image_only_with_every_target(tmp_path):
    from gptoss_gke.config import load_settings
    from gptoss_gke.flags import ALL, Flags
    from tasks.teardown import teardown_chain

    settings = load_settings(environ={"GPTOSS_ENV_DIR": write_env(tmp_path, {"project": PROJECT})})

    def keys(target):
        flags = Flags({"target": target, "purge_model": False, "purge_images": True, "delete_cluster": False,
                       "scale_to_zero": False, "force": False})
        return [s.key for s in teardown_chain(settings, ["l4"], flags, {})]

    assert "image.tools.purge" in keys(ALL)
    assert "image.tools.purge" not in keys(("l4",)) and "image.l4.purge" in keys(("l4",))
