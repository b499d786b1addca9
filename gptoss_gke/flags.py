"""Task flags: declared once with their kind, parsed and checked before any setting is read.

invoke hands every flag over as text (our defaults are None or False, so invoke never converts a
value itself and can never raise on one). Each kind here turns the text into a value or into a
:class:`~gptoss_gke.errors.Problem` naming the flag, what is allowed and the fix; the playbook
reports every problem of the flags and the settings together (exit status 2).

Only the standard library and the catalogue are imported: `inv --list` and `inv --help` load this.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

from gptoss_gke.errors import Problem
from gptoss_gke.targets import CATALOGUE


class FlagValueError(ValueError):
    def __init__(self, message: str, allowed: str = "", fix: str = ""):
        super().__init__(message)
        self.message = message
        self.allowed = allowed
        self.fix = fix


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def flag_name(param: str) -> str:
    return "--" + param.rstrip("_").replace("_", "-")


@dataclass(frozen=True)
class Flag:
    """A flag that takes text. ``default`` is what the task gets when the flag is absent."""

    help: str
    default: Any = None
    invoke_default: Any = None  # what invoke sees: None keeps its parser from converting anything

    def parse(self, raw: Any) -> Any:
        if raw is True:  # invoke's optional-value flags give True when bare
            raise FlagValueError("needs a value")
        return raw

    def value(self, raw: Any) -> Any:
        return self.default if raw is None else self.parse(raw)


@dataclass(frozen=True)
class Switch(Flag):
    """An on/off flag (--yes)."""

    default: Any = False
    invoke_default: Any = False

    def value(self, raw: Any) -> Any:
        return bool(raw)


@dataclass(frozen=True)
class OptionalValue(Flag):
    """A flag that may be given bare (True) or with a value: --on, --on=host."""

    def parse(self, raw: Any) -> Any:
        return raw


@dataclass(frozen=True)
class Repeated(Flag):
    """--set key=value, repeatable. A bare --set (no value) arrives as True and is refused."""

    default: Any = ()

    def value(self, raw: Any) -> Any:
        return tuple(raw or ())


@dataclass(frozen=True)
class Integer(Flag):
    minimum: int | None = None
    maximum: int | None = None
    human: bool = False  # vLLM's spelling for token counts: 128k = 128,000, 128K = 131,072

    def parse(self, raw: Any) -> int:
        super().parse(raw)
        text = str(raw).strip()
        number = parse_human_int(text) if self.human else _plain_int(text)
        if number is None:
            raise FlagValueError(f"{text!r} is not a whole number", self._allowed())
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise FlagValueError(f"{number:,} is out of range", self._allowed())
        return number

    def _allowed(self) -> str:
        span = _span(self.minimum, self.maximum)
        return f"a whole number{span}" + (" (vLLM's suffixes work: 128k = 128,000, 128K = 131,072)"
                                          if self.human else "")


@dataclass(frozen=True)
class Number(Flag):
    minimum: float = 0.0  # exclusive: rates and prices are positive

    def parse(self, raw: Any) -> float:
        super().parse(raw)
        text = str(raw).strip()
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= self.minimum:
            raise FlagValueError(f"{text!r} is not a number above {self.minimum:g}",
                                 f"a number above {self.minimum:g}, e.g. 52.5")
        return number


@dataclass(frozen=True)
class ByteSize(Flag):
    """Bytes, with the units people write: 4GiB, 4.5GB, 4G (vLLM: G = 2^30, g = 10^9), 4294967296."""

    def parse(self, raw: Any) -> int:
        super().parse(raw)
        text = str(raw).strip()
        number = parse_bytes(text)
        if number is None:
            raise FlagValueError(f"{text!r} is not a size", BYTES_ALLOWED)
        if number < 1:
            raise FlagValueError(f"{text!r} is not a positive size", BYTES_ALLOWED)
        return number


@dataclass(frozen=True)
class Choice(Flag):
    choices: tuple[str, ...] = ()

    def parse(self, raw: Any) -> str:
        super().parse(raw)
        text = str(raw).strip()
        if text not in self.choices:
            raise FlagValueError(f"{text!r} is not one of the choices{did_you_mean(text, self.choices)}",
                                 ", ".join(self.choices))
        return text


@dataclass(frozen=True)
class ModelConfig(Flag):
    """A catalogue model id, or a Hugging Face config.json (the file, or the folder holding it)."""

    def parse(self, raw: Any) -> str:
        super().parse(raw)
        from pathlib import Path

        from gptoss_gke.serving.capacity import catalogue_model_ids

        text = str(raw).strip()
        known = catalogue_model_ids()
        if text in known:
            return text
        path = Path(text).expanduser()
        if path.is_dir():
            path = path / "config.json"
        allowed = f"one of {', '.join(known)}, or the path of a readable config.json"
        if not path.is_file():
            raise FlagValueError(f"{text!r} is neither a catalogue model nor a config.json file", allowed,
                                 "download the model's config.json and pass its path")
        try:
            path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise FlagValueError(f"{text!r} cannot be read as text", allowed, "pass a readable config.json") from None
        return str(path)


@dataclass(frozen=True)
class OutputDir(Flag):
    """A directory to write into: created if absent, refused if something else is there."""

    def parse(self, raw: Any) -> str:
        super().parse(raw)
        from pathlib import Path

        text = str(raw).strip()
        path = Path(text).expanduser()
        if not text or (path.exists() and not path.is_dir()):
            raise FlagValueError(f"{text!r} exists and is not a directory" if text else "is empty",
                                 "a directory (created if absent)", "name a new or existing directory")
        return str(path)


ALL = "all"


@dataclass(frozen=True)
class Targets(Flag):
    """--target. ``mode``: ``many`` (a list or all; default all), ``list`` (one or more, named) or ``one``.

    The value is a tuple of catalogue names, or ALL (resolved against the settings by the playbook:
    the enabled targets, or every catalogue target when ``all_means="catalogue"``)."""

    mode: str = "many"
    all_means: str = "enabled"
    task: str = ""  # for messages: "plan works on one target at a time"

    @classmethod
    def for_task(cls, task: str, mode: str, *, all_means: str = "enabled", note: str = "") -> "Targets":
        """The --target flag of ``task``, its help written from the catalogue (a new target shows up here)."""
        names = list(CATALOGUE)
        if mode == "many":
            default = "the enabled targets" if all_means == "enabled" else "all"
            text = f"{', '.join(names)}, a comma-separated list, or all (default: {default})"
        elif mode == "list":
            text = f"{_either(names)} (or a comma-separated list)"
        else:
            text = _either(names)
        return cls(text + (f" ({note})" if note else ""), mode=mode, all_means=all_means, task=task)

    @property
    def accepted(self) -> list[str]:
        return [*CATALOGUE, ALL] if self.mode == "many" else list(CATALOGUE)

    def value(self, raw: Any) -> Any:
        if raw is None:
            if self.mode == "many":
                return ALL
            raise FlagValueError(f"{self.task} needs --target", self._allowed(), self._fix())
        return self.parse(raw)

    def parse(self, raw: Any) -> Any:
        super().parse(raw)
        names = [n.strip() for n in str(raw).split(",")]
        if not any(names):
            raise FlagValueError("is empty: no target named", self._allowed())
        if "" in names:
            raise FlagValueError(f"{raw!r} has an empty name between commas", self._allowed())
        if ALL in names:
            if self.mode != "many":
                raise FlagValueError(f"'all' is not allowed here: {self.task} "
                                     f"{'works on one target at a time' if self.mode == 'one' else 'needs the targets named'}",
                                     self._allowed(), self._fix())
            if len(names) > 1:
                raise FlagValueError("'all' cannot be combined with target names", self._allowed())
            return ALL
        for name in names:
            if name not in CATALOGUE:
                raise FlagValueError(f"unknown target '{name}'{did_you_mean(name, self.accepted)}", self._allowed())
        if self.mode == "one" and len(names) > 1:
            raise FlagValueError(f"{self.task} works on one target at a time", self._allowed(), self._fix())
        return tuple(dict.fromkeys(names))  # in the order given, once each

    def _fix(self) -> str:
        if self.mode == "one":
            return "run it once per target: " + ", then ".join(f"--target={n}" for n in CATALOGUE)
        return f"name the targets, e.g. --target={next(iter(CATALOGUE))}"

    def _allowed(self) -> str:
        if self.mode == "one":
            return " or ".join(f"--target={n}" for n in CATALOGUE)
        names = ", ".join(CATALOGUE)
        return f"{names}, a comma-separated list" + (", or all" if self.mode == "many" else "")


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass
class Flags:
    """The parsed flags of one task run: attribute access to values, and every problem found."""

    values: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    specs: dict[str, Flag] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def parse_flags(specs: dict[str, Flag], raw: dict[str, Any],
                conflicts: tuple[tuple[str, str, str], ...] = ()) -> Flags:
    flags = Flags(specs=specs)
    for name, spec in specs.items():
        try:
            flags.values[name] = spec.value(raw.get(name))
        except FlagValueError as exc:
            flags.values[name] = None
            flags.problems.append(Problem(f"flag {flag_name(name)}", "", exc.message, exc.allowed,
                                          exc.fix or f"give {flag_name(name)} a value as allowed above"))
    for first, second, why in conflicts:
        if flags.values.get(first) and flags.values.get(second):
            flags.problems.append(Problem(f"flags {flag_name(first)} and {flag_name(second)}", "",
                                          f"cannot be used together: {why}", "",
                                          f"pass one of {flag_name(first)} or {flag_name(second)}"))
    return flags


# ---------------------------------------------------------------------------------------------
# Units

_DECIMAL = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
            "t": 10**12, "tb": 10**12}
_BINARY = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# vLLM's own single letters (vllm/utils/argparse_utils.py human_readable_int): upper case is binary.
_VLLM_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
BYTES_ALLOWED = ("a byte count such as 4294967296, or with a unit: 4GiB (2^30), 4GB (10^9), 512MiB; "
                 "vLLM's single letters work too (4G = 4 GiB, 4g = 4 GB)")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$")


def parse_bytes(text: str) -> int | None:
    m = _SIZE.match(text.replace("_", "").replace(",", ""))
    if not m:
        return None
    number, unit = m.groups()
    if unit in _VLLM_BINARY:
        factor = _VLLM_BINARY[unit]
    else:
        factor = _BINARY.get(unit.lower()) or _DECIMAL.get(unit.lower())
    if factor is None:
        return None
    if factor == 1 and "." in number:
        return None  # a fraction of a byte
    return int(float(number) * factor) if "." in number else int(number) * factor


def parse_human_int(text: str) -> int | None:
    """vLLM's human_readable_int: 1k = 1,000, 1K = 1,024, 25.6k = 25,600; plain digits otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT])", text)
    if m:
        number, suffix = m.groups()
        if suffix.isupper():
            return int(number) * _VLLM_BINARY[suffix] if "." not in number else None
        return int(float(number) * _DECIMAL[suffix])
    return _plain_int(text)


def _plain_int(text: str) -> int | None:
    text = text.replace("_", "").replace(",", "")
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def _span(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:,} to {maximum:,}"
    if minimum is not None:
        return f" of at least {minimum:,}"
    if maximum is not None:
        return f" of at most {maximum:,}"
    return ""
