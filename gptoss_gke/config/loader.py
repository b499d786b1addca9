"""Loading: untrusted YAML, environment variables and --set, each value remembering its origin, and
the one validation pass that reports every problem at once."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from gptoss_gke.config.checks import _CROSS_RULES
from gptoss_gke.config.origins import README, Layers, problem_at, quote
from gptoss_gke.config.rules import environment_name, http_url
from gptoss_gke.config.schema import DEFAULT_ENV, Settings, _LocatedError
from gptoss_gke.errors import DEBUG_VARIABLE, ConfigError, Problem
from gptoss_gke.flags import did_you_mean

ENV_PREFIX = "GPTOSS_"
ENV_SELECT = "GPTOSS_ENV"  # which env/<name>.yaml
ENV_DIR = "GPTOSS_ENV_DIR"  # where env files live (default: ./env next to tasks.py)
NOT_SETTINGS = (ENV_SELECT, ENV_DIR, DEBUG_VARIABLE)

# Loading: untrusted YAML, environment variables and --set, each value remembering its origin.

MAX_FILE_BYTES = 256 * 1024
MAX_NODES = 20_000  # after expanding aliases: a settings file has a few hundred
MAX_DEPTH = 32

_NULL, _STR, _SEQ, _MAP, _MERGE = ("tag:yaml.org,2002:" + t for t in ("null", "str", "seq", "map", "merge"))


class _SettingsLoader(yaml.SafeLoader):
    """YAML with no implicit typing except null: 010, yes, 1:30 and 2024-01-01 stay text.

    YAML 1.1 (PyYAML) reads 010 as 8, yes as true and 1:30 as 90. Here every plain scalar is text and
    the schema gives it its type, as a person means it: 010 → 10 for a number, yes → true for a
    switch, 0123 stays "0123" for a name.
    """


_SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag in (_NULL, _MERGE)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _YamlProblem(Exception):
    def __init__(self, line: int | None, message: str, fix: str):
        super().__init__(message)
        self.line = line
        self.message = message
        self.fix = fix


def _safe_yaml(text: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML we do not trust; return the data and the line of every key.

    Refused: syntax errors, aliases that recurse or expand beyond MAX_NODES values (bounded time and
    memory), nesting deeper than MAX_DEPTH, keys that are not plain names, duplicate keys, and explicit
    tags (!!int 010 would be octal again).
    """
    loader = _SettingsLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise _YamlProblem(mark.line + 1 if mark else None, f"malformed YAML: {problem}",
                               "fix the syntax at that line (indentation, a missing ':' or quote)") from None
        except RecursionError:
            raise _YamlProblem(None, f"nested more than {MAX_DEPTH} levels deep", "flatten the file") from None
        if root is None:
            return None, {}
        lines = _check_nodes(root)
        return loader.construct_document(root), lines
    finally:
        loader.dispose()


def _check_nodes(root) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    seen = 0
    stack = [(root, (), ())]  # node, key path, ids of the nodes above (to catch an alias to an ancestor)
    while stack:
        node, path, above = stack.pop()
        seen += 1
        line = node.start_mark.line + 1
        if seen > MAX_NODES:
            raise _YamlProblem(line, f"aliases expand to more than {MAX_NODES:,} values",
                               "write the values out; settings need no more than a few hundred")
        if id(node) in above:
            raise _YamlProblem(line, "an alias refers to the value that contains it (a recursive structure)",
                               "remove the alias")
        if len(above) > MAX_DEPTH:
            raise _YamlProblem(line, f"nested more than {MAX_DEPTH} levels deep", "flatten the file")
        if node.tag not in (_NULL, _STR, _SEQ, _MAP):
            raise _YamlProblem(line, f"explicit tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not used in "
                               f"settings", "remove the tag: each key's type comes from the schema")
        inner = above + (id(node),)
        if isinstance(node, yaml.MappingNode):
            keys = set()
            for k, v in node.value:
                if k.tag == _MERGE:
                    stack.append((v, path, inner))
                    continue
                if not isinstance(k, yaml.ScalarNode) or k.tag != _STR or k.value == "":
                    raise _YamlProblem(k.start_mark.line + 1, "a key that is not a plain name (a complex or "
                                       "empty key)", "write keys as plain names: key: value")
                if k.value in keys:
                    raise _YamlProblem(k.start_mark.line + 1, f"{'.'.join(map(str, path + (k.value,)))}: "
                                       f"duplicate key", "keep one of the two entries")
                keys.add(k.value)
                lines.setdefault(path + (k.value,), k.start_mark.line + 1)
                stack.append((v, path + (k.value,), inner))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines.setdefault(path + (i,), v.start_mark.line + 1)
                stack.append((v, path + (i,), inner))
    return lines


def _read_env_file(path: Path, shown: str) -> tuple[dict, dict[tuple, int], list[Problem]]:
    def problem(message: str, fix: str, line: int | None = None) -> tuple[dict, dict, list[Problem]]:
        return {}, {}, [Problem(f"{shown}:{line}" if line else shown, "", message, "", fix)]

    if path.is_dir():
        return problem("is a directory, not a settings file", f"put the settings in {shown} as a YAML file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return problem(f"is {path.stat().st_size:,} bytes; a settings file is a few KB",
                           "point --env / GPTOSS_ENV_DIR at the settings file")
        raw = path.read_bytes()
    except OSError as exc:
        return problem(f"cannot be read: {exc.strerror}", f"make {shown} readable (chmod u+r)")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return problem(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x})", "save the file as UTF-8", line)
    try:
        data, lines = _safe_yaml(text)
    except _YamlProblem as exc:
        return problem(exc.message, exc.fix, exc.line)
    if data is None:
        return {}, {}, []
    if not isinstance(data, dict):
        return problem("the top level must be a mapping of settings", f"see {README}", 1)
    return data, lines, []


def env_dir(default_root: Path | None = None, environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_DIR):
        return Path(environ[ENV_DIR])
    return (default_root or Path.cwd()) / "env"


def _scalar(raw: str, origin: str) -> Any:
    """A value from the environment or --set: a YAML value read like the files ([a, b] → a list), or the
    text itself when it is not YAML."""
    if raw == "":
        return ""
    try:
        value, _ = _safe_yaml(raw)
    except _YamlProblem as exc:
        if exc.message.startswith("malformed"):
            return raw
        raise ConfigError(f"{origin}: {exc.message}", exc.fix) from None
    return value


def _env_overrides(environ: dict[str, str]) -> tuple[list[tuple[tuple, Any, str]], list[Problem]]:
    found, problems = [], []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        origin = f"environment variable {name}"
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        if "" in path:
            problems.append(Problem(origin, "", "has an empty level (levels are separated by exactly two '_')",
                                    "GPTOSS_CLUSTER__NAME for cluster.name", f"rename or unset {name}"))
            continue
        _override(path, raw, origin, found, problems)
    return found, problems


def _override(path: tuple, raw: str, origin: str, found: list, problems: list[Problem]) -> None:
    """One variable's or --set's value, read as YAML would read it: into ``found``, or a problem."""
    try:
        found.append((path, _scalar(raw, origin), origin))
    except ConfigError as exc:
        problems.append(Problem(origin, ".".join(path), exc.problem.split(": ", 1)[-1], "", exc.fix or ""))


def _set_overrides(items) -> tuple[list[tuple[tuple, Any, str]], list[Problem]]:
    found, problems = [], []
    for item in items or ():
        if item is True or item is None or "=" not in str(item):
            shown = "" if item is True or item is None else f" {quote(item)}"
            problems.append(Problem("flag --set", "", f"needs key.path=value{shown and ', got' + shown}",
                                    "key.path=value, e.g. --set cluster.name=gptoss",
                                    "write --set key.path=value (quote the value if it has spaces)"))
            continue
        key, raw = str(item).split("=", 1)
        path = tuple(p.strip() for p in key.strip().split("."))
        origin = f"flag --set {key.strip()}"
        if "" in path:
            problems.append(Problem(origin, "", "has an empty key part", "key.path=value, e.g. --set zone=us-east1-b",
                                    "write the key as dot-separated names"))
            continue
        _override(path, raw, origin, found, problems)
    return found, problems


def parse_set(items) -> list[tuple[tuple, Any, str]]:
    """--set items as (key path, value, origin); bad items raise ConfigError (all of them at once)."""
    found, problems = _set_overrides(items)
    if problems:
        raise ConfigError.of(problems)
    return found


def read_settings(env: str | None = None, *, root: Path | None = None, environ: dict[str, str] | None = None,
                  overrides: list[tuple[tuple, Any, str]] | None = None,
                  sets=()) -> tuple[Settings | None, list[Problem]]:
    """The one pass over the settings: every layer read, every key checked, every problem returned."""
    environ = dict(os.environ if environ is None else environ)
    problems: list[Problem] = []
    name = env or environ.get(ENV_SELECT) or DEFAULT_ENV
    name_origin = "flag --env" if env else (f"environment variable {ENV_SELECT}" if environ.get(ENV_SELECT) else
                                            "defaults")
    bad_name = environment_name(name)
    folder = env_dir(root, environ)
    layers = Layers()
    shown = None
    file_read = False
    if bad_name:
        problems.append(Problem(name_origin, "", f"environment {quote(name)} {bad_name}", environment_name.allowed,
                                "name the environment in lowercase (--env NAME or GPTOSS_ENV=NAME)"))
    else:
        path = folder / f"{name}.yaml"
        shown = _display_path(path)
        if not path.exists():
            known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
            problems.append(Problem(name_origin, "", f"environment '{name}' not found: no {shown}"
                                    f"{did_you_mean(name, known)}", f"one of: {', '.join(known) or '(none found)'}",
                                    f"create it from env/dev.yaml, or pick another (--env NAME or {ENV_SELECT}=NAME)"))
        else:
            data, lines, file_problems = _read_env_file(path, shown)
            problems += file_problems
            file_read = not file_problems
            layers.merge_tree(data, lambda p: f"{shown}:{lines.get(p, 1)}")

    env_values, env_problems = _env_overrides(environ)
    set_values, set_problems = _set_overrides(sets)
    problems += env_problems + set_problems
    for key_path, value, origin in env_values + list(overrides or []) + set_values:
        layers.merge(key_path, value, origin)

    settings, field_problems = _validate(layers)
    problems += field_problems
    if settings is None or not file_read:
        return None, problems  # no usable environment file: nothing more can be judged
    settings.env_name = name if not bad_name else DEFAULT_ENV
    settings.env_file = shown
    settings._origins = layers.origin
    if not settings.kube.kubeconfig:
        first = next((p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p), None)
        if first:  # what gcloud writes to and kubectl reads first
            settings.kube.kubeconfig = first
            settings._kubeconfig_source = "$KUBECONFIG"
        else:
            settings._kubeconfig_source = "default"
    if environ.get("HF_ENDPOINT"):
        endpoint = environ["HF_ENDPOINT"].rstrip("/")
        bad = http_url(endpoint)
        if bad:
            problems.append(Problem("environment variable HF_ENDPOINT", "", bad, http_url.allowed,
                                    "set HF_ENDPOINT to the hub's URL, or unset it"))
        else:
            settings.models.hf_endpoint = endpoint
    problems += _file_problems(settings, environ)
    return settings, problems


def load_settings(env: str | None = None, *, root: Path | None = None, environ: dict[str, str] | None = None,
                  overrides: list[tuple[tuple, Any, str]] | None = None) -> Settings:
    """Build the one Settings object for this run, or raise ConfigError (exit 2) with every problem."""
    settings, problems = read_settings(env, root=root, environ=environ, overrides=overrides)
    if problems:
        raise ConfigError.of(problems)
    return settings


def other_environments(settings: Settings, *, root: Path | None = None,
                       environ: dict[str, str] | None = None) -> dict[str, "Settings | ConfigError"]:
    """Every other environment beside this run's (env/<name>.yaml), loaded as a run in this shell would
    load it, or the error that stopped it. Teardown asks them before deleting what environments can
    share (a bucket grant, a mirrored tag, staged weights, a repository)."""
    environ = dict(os.environ if environ is None else environ)
    folder = env_dir(root, environ)
    found: dict[str, Settings | ConfigError] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        if path.stem == settings.env_name:
            continue
        try:
            found[path.stem] = load_settings(path.stem, root=root, environ=environ)
        except ConfigError as exc:
            found[path.stem] = exc
    return found


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# Keys whose values are never quoted in a message: a token pasted into a path, a key in vLLM's args.
_QUIET_KEYS = ("hf_token_file", "vllm_extra_args", "hf_endpoint", "key_file")


def _validate(layers: Layers) -> tuple[Settings | None, list[Problem]]:
    """Validate; on errors, drop the failed keys (back to defaults) and validate again, so the rules
    between keys still run on everything that was valid and every problem is reported at once."""
    data = copy.deepcopy(layers.data)
    problems: list[Problem] = []
    failed: list[tuple] = []
    for _ in range(8):
        try:
            settings = Settings.model_validate(data)
            break
        except ValidationError as exc:
            for err in exc.errors():
                loc, problem = _explain(err, data, layers)
                if loc not in failed:
                    failed.append(loc)
                    problems.append(problem)
                _drop(data, loc)
    else:
        return None, problems
    settings._failed = failed
    for keys, check in _CROSS_RULES:
        # A rule does not run on a key that failed its own check (it went back to its default). Under
        # `targets`, only the failed target is left out: the others still get every check.
        if any(k != ("targets",) and (f[:len(k)] == k or k[:len(f)] == f) for k in keys for f in failed):
            continue
        for loc, message, allowed in check(settings):
            if not any(f[:2] == loc[:2] for f in failed if f[:1] == ("targets",)):
                problems.append(problem_at(layers, loc, message, allowed))
    return settings, problems


def _data_loc(loc: tuple, data: Any) -> tuple:
    """The part of pydantic's error location that exists in the data (it adds type tags)."""
    found: tuple = ()
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue
        found += (part,)
    return found


def _drop(data: dict, loc: tuple) -> None:
    # Drop the whole key (a list with one bad item goes back to its default too).
    key_loc = loc[:next((i for i, p in enumerate(loc) if isinstance(p, int)), len(loc))]
    node = data
    for part in key_loc[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and key_loc:
        node.pop(key_loc[-1], None)
    elif not key_loc:
        data.clear()


def _explain(err: dict, data: dict, layers: Layers) -> tuple[tuple, Problem]:
    loc = _data_loc(tuple(err["loc"]), data) or tuple(err["loc"])
    ctx = err.get("ctx") or {}
    allowed = ctx.get("allowed", "")
    located = ctx.get("error")
    if isinstance(located, _LocatedError):
        loc, msg, allowed = located.loc, located.message, located.allowed
    elif err["type"] == "extra_forbidden":
        choices = _fields_at(loc[:-1])
        msg = f"unknown key{did_you_mean(loc[-1], choices)}"
        allowed = f"one of: {', '.join(choices)}" if choices else ""
    elif err["type"] == "rule":
        msg = ctx["problem"]
        if not any(k in loc for k in _QUIET_KEYS) and isinstance(err.get("input"), str):
            msg = f"{quote(err['input'])} {msg}"
    elif set(ctx) & {"ge", "gt", "le", "lt"}:
        bounds = [f"{word} {ctx[k]}" for k, word in (("ge", "at least"), ("gt", "above"), ("le", "at most"),
                                                      ("lt", "below")) if k in ctx]
        msg = f"{quote(err.get('input'))} is out of range"
        allowed = " and ".join(bounds) + (f" ({_BOUND_REASONS[loc[-1]]})" if loc and loc[-1] in _BOUND_REASONS else "")
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], (dict, list)) and not any(k in loc for k in _QUIET_KEYS):
            msg += f" (got {quote(err['input'])})"
    return loc, problem_at(layers, loc, msg, allowed)


# Why a number has the bounds it has, said with the bound.
_BOUND_REASONS = {
    "max_nodes": "a pool that can never have a node serves nothing; GKE allows 1000 per zone",
    "min_nodes": "GKE allows 1000 nodes per pool and zone",
    "initial_nodes": "GKE allows 1000 nodes per pool and zone",
    "accelerator_count": "GPUs and TPU chips per node",
    "replicas": "each replica takes a whole accelerator node",
    "load_timeout_s": "a day is the longest wait that makes sense; a load takes minutes",
    "pvc_size_gi": "a persistent disk holds at most 64 TiB",
    "port": "TCP ports",
    "workers": "parallel transfers; more only adds contention",
    "chunk_mib": "Cloud Storage composes chunks; tiny ones cost requests, huge ones memory",
    "attempts": "more retries only delay the failure",
    "poll_interval_s": "how often a wait looks again",
}


def _fields_at(loc: tuple) -> list[str]:
    """Field names valid at a key path, for did-you-mean suggestions."""
    model: Any = Settings
    i = 0
    while i < len(loc):
        field_info = model.model_fields.get(loc[i])
        inner = _model_in(field_info.annotation) if field_info else None
        if inner is None:
            return []
        if get_origin(field_info.annotation) is dict:
            i += 1  # the next part is a key of the mapping (a target name, a machine type)
        model = inner
        i += 1
    return [n for n, f in model.model_fields.items() if not f.exclude]


def _model_in(annotation) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found:
            return found
    return None


def _file_problems(s: Settings, environ: dict[str, str]) -> list[Problem]:
    """Files the settings name are checked now, not when a step first opens them. Paths are never
    quoted: a token pasted where a path belongs must not be printed."""
    problems = []

    def need(loc: tuple, path_text: str | None, *, kind: str = "file", optional_absent: bool = False,
             what: str = "") -> Path | None:
        if not path_text:
            return None
        path = Path(os.path.expanduser(path_text))
        problem = None
        if not path.exists():
            if optional_absent:
                return None
            problem = "names no existing file (path not shown: it may be a pasted secret)"
        elif kind == "file" and not path.is_file():
            problem = "is not a regular file (a directory?)"
        elif kind == "dir" and not path.is_dir():
            problem = "is not a directory"
        elif not os.access(path, os.R_OK | (os.W_OK if kind == "dir" else 0)):
            problem = "cannot be read" if kind == "file" else "is not writable"
        if problem:
            problems.append(problem_at(Layers(origin=s._origins), loc, problem, what))
            return None
        return path

    token_file = need(("models", "hf_token_file"), s.models.hf_token_file, what="a file holding a Hugging Face token")
    token = environ.get("HF_TOKEN")
    if not token and token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            token = None
        if not token:
            problems.append(problem_at(Layers(origin=s._origins), ("models", "hf_token_file"),
                                     "is empty or not text", "a file holding a Hugging Face token"))
    if token:
        s.hf_token = SecretStr(token)
    # models.temp_dir is not checked here: staging may run on another host (--on), and creates it.
    need(("remote", "key_file"), s.remote.key_file, what="your private SSH key, e.g. ~/.ssh/id_ed25519")
    need(("remote", "known_hosts"), s.remote.known_hosts, optional_absent=True, what="an ssh known_hosts file")
    kubeconfig = Path(s.kubeconfig_path)
    if kubeconfig.exists() and not kubeconfig.is_file():  # absent is fine: setup-cluster writes it
        where = "environment variable KUBECONFIG" if s._kubeconfig_source == "$KUBECONFIG" else None
        if where:
            problems.append(Problem(where, "", "names something that is not a file", "a kubeconfig file",
                                    "point KUBECONFIG (or kube.kubeconfig) at a kubeconfig file"))
        else:
            problems.append(problem_at(Layers(origin=s._origins), ("kube", "kubeconfig"),
                                     "is not a regular file (a directory?)", "a kubeconfig file"))
    return problems
