"""The Hugging Face side of staging: one repository at one revision, its files, and its errors in words.

The HF token comes from settings (``HF_TOKEN`` or ``models.hf_token_file``), is registered with the
redactor by the loader, and only ever travels in an ``Authorization`` header.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptoss_gke.core.retry import is_transient_exception
from gptoss_gke.errors import CannotObserve, StepError

HF_DEFAULT = "https://huggingface.co"
_TOKEN_PAGE = "https://huggingface.co/settings/tokens"
# What the staging steps import lazily (see Step.sdk_modules).
HF_SDK = ("huggingface_hub", "huggingface_hub.errors", "huggingface_hub.hf_api", "huggingface_hub.file_download",
          "huggingface_hub.utils")


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None  # published for LFS files
    git_oid: str | None  # git blob id (the content's, for non-LFS files)

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


def select_files(paths, allow_patterns, ignore_patterns) -> list[str]:
    """The hub's own filter (``*`` crosses ``/``): the same selection ``hf download`` would make."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(list(paths), allow_patterns=list(allow_patterns or []) or None,
                                    ignore_patterns=list(ignore_patterns or []) or None))


class HubRepo:
    """One repo at one revision on the hub (or HF_ENDPOINT), errors turned into problems with fixes."""

    def __init__(self, settings, target_name: str, repo_id: str):
        self.endpoint = (settings.models.hf_endpoint or HF_DEFAULT).rstrip("/")
        self.token = settings.hf_token.get_secret_value() if settings.hf_token else None
        self.repo_id = repo_id
        self.target_name = target_name
        self.env_file = settings.env_file

    def api(self):
        from huggingface_hub import HfApi

        from gptoss_gke import TOOL_NAME, __version__

        return HfApi(endpoint=self.endpoint, token=self.token or False, library_name=TOOL_NAME,
                     library_version=__version__)

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        from gptoss_gke import TOOL_NAME, __version__

        return build_hf_headers(token=self.token or False, library_name=TOOL_NAME, library_version=__version__)

    def url(self, revision: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, path, revision=revision, endpoint=self.endpoint)

    def resolve(self, revision: str) -> str:
        info = self._call(lambda: self.api().model_info(self.repo_id, revision=revision), revision)
        return info.sha

    def files(self, commit: str) -> list[RepoFile]:
        from huggingface_hub.hf_api import RepoFile as HfRepoFile

        entries = self._call(lambda: list(self.api().list_repo_tree(self.repo_id, revision=commit, recursive=True)),
                             commit)
        out = []
        for e in entries:
            if not isinstance(e, HfRepoFile):
                continue
            lfs = e.lfs
            out.append(RepoFile(e.path, int(e.size), lfs.sha256 if lfs else None, e.blob_id))
        return out

    def check_access(self, commit: str, path: str) -> None:
        """A HEAD of one file: gated repos keep their metadata public, so this is where gating shows."""
        from huggingface_hub import get_hf_file_metadata

        self._call(lambda: get_hf_file_metadata(self.url(commit, path), token=self.token or False,
                                                endpoint=self.endpoint), commit)

    def _call(self, fn, revision: str):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            raise self.explain(exc, revision) from None

    def explain(self, exc: Exception, revision: str) -> Exception:
        repo, t = self.repo_id, self.target_name
        page = f"{HF_DEFAULT}/{repo}"
        token_fix = (f"set HF_TOKEN, or models.hf_token_file in {self.env_file}, to a read token from {_TOKEN_PAGE}")
        kind, status = _hub_error_kind(exc, has_token=bool(self.token))
        if kind == "gated":
            if self.token:
                return StepError(f"{repo} is gated and the account of this HF token has not been granted access",
                                 f"accept the conditions at {page} with that account, then re-run")
            return StepError(f"{repo} is gated: downloading it needs a token", f"accept the conditions at {page}, "
                             f"then {token_fix}")
        if kind == "revision":
            return StepError(f"revision {revision} not found in {repo}",
                             f"set targets.{t}.model_revision to a commit or branch of {repo} "
                             f"(see {page}/commits/main)")
        if kind == "repo":
            if self.token:
                return StepError(f"repository {repo} not found on {self.endpoint}, or this HF token cannot see it",
                                 f"check the model id of target {t}, and that the token's account can open {page}")
            return StepError(f"repository {repo} not found on {self.endpoint} (or it is private and needs a token)",
                             f"check the model id of target {t}; for a private or gated repo, {token_fix}")
        if kind == "entry":
            return StepError(f"a file listed in {repo}@{revision[:12]} is missing on the hub: {exc}",
                             f"re-run; if it persists, pin targets.{t}.model_revision to another commit")
        if status == 401:
            return StepError("the Hugging Face Hub refused the HF token (invalid or expired)",
                             f"create a new read token at {_TOKEN_PAGE} and update HF_TOKEN / models.hf_token_file")
        if status == 403:
            return StepError(f"the Hugging Face Hub denied access to {repo}: {exc}",
                             f"check the token's permissions at {_TOKEN_PAGE}")
        if is_transient_exception(exc) and status is None:
            return CannotObserve(f"cannot reach the Hugging Face Hub at {self.endpoint}: {type(exc).__name__}",
                                 "check the network or proxy (or HF_ENDPOINT)")
        return exc


class HubHttpError(Exception):
    """A non-2xx answer to one of our own file GETs, with the hub's error headers."""

    def __init__(self, status: int, code: str | None, message: str | None, url: str):
        super().__init__(f"HTTP {status}{f' {code}' if code else ''} for {url}"
                         + (f": {message}" if message else ""))
        self.status, self.code, self.message = status, code, message


def _hub_error_kind(exc: Exception, *, has_token: bool) -> tuple[str | None, int | None]:
    """(gated | revision | repo | entry | None, HTTP status) for huggingface_hub's errors and ours."""
    if isinstance(exc, HubHttpError):
        kinds = {"GatedRepo": "gated", "RevisionNotFound": "revision", "RepoNotFound": "repo",
                 "EntryNotFound": "entry"}
        kind = kinds.get(exc.code or "")
        if kind is None and exc.status == 401 and exc.message != "Invalid credentials in Authorization header" \
                and not has_token:
            kind = "repo"  # the hub answers 401 for private and missing repos alike
        return kind, exc.status
    from huggingface_hub import errors as hferr

    status = getattr(getattr(exc, "response", None), "status_code", None)
    entry = getattr(hferr, "RemoteEntryNotFoundError", None) or getattr(hferr, "EntryNotFoundError")
    for cls, kind in ((hferr.GatedRepoError, "gated"), (hferr.RevisionNotFoundError, "revision"),
                      (hferr.RepositoryNotFoundError, "repo"), (entry, "entry")):
        if isinstance(exc, cls):
            return kind, status
    return None, status
