"""The command-line surface every task shares: one decorator for the flags, no traceback for a person.

A task in ``tasks/`` declares its flags once, with their kind (``flags.py``), through
:func:`playbook_task`: the common flags it takes (``--env``, ``--set``, ``--dry-run``, ``--report``), its
``--target`` (help written from the target catalogue) and its own. One way to parse and check them, and
``-h`` is always help. Only invoke and the flag kinds are imported at module level so ``inv --list`` and
``inv --help`` stay instant; the engine, pydantic and the cloud SDKs load inside the task that needs them.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from invoke import Collection, Task, task
from invoke.exceptions import Exit, ParseError, UnexpectedExit

from gptoss_gke.errors import DEBUG_VARIABLE
from gptoss_gke.flags import Choice, Flag, Integer, OptionalValue, Repeated, Switch, Targets, parse_flags

COMMON = {
    "env": Flag("environment: env/<ENV>.yaml (default: $GPTOSS_ENV or dev)"),
    "set_": Repeated("override a setting, key.path=value (repeatable), e.g. --set cluster.name=gptoss"),
    "dry_run": Switch("read everything, change nothing, print the plan (works offline)"),
    "report": Flag("also write every step result as JSON to this file"),
}
ALL_COMMON = tuple(COMMON)


class _Task(Task):
    """invoke's Task, except that a bare list flag (``--set`` with no value) is seen, not dropped.

    invoke starts list flags at ``[]``, so its parser cannot tell "no value" from "not given". Starting
    at None and marking the flag optional makes a bare ``--set`` arrive as True, which the flag check
    refuses with the fix.
    """

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.kind is list:
                arg.raw_value = None
        return args


def playbook_task(*, common: tuple[str, ...] = ALL_COMMON, target: str | None = None, all_targets: str = "enabled",
                  target_note: str = "", conflicts: tuple[tuple[str, str, str], ...] = (), **own: Flag):
    """Declare a task by its flags: the common ones it takes, its ``--target`` and its own, each with its kind.

    ``target``: ``"many"`` (a list or all), ``"list"`` (one or more, named) or ``"one"``; ``all_targets``:
    what ``all`` means (the ``enabled`` targets, or the whole ``catalogue``). The body is called as
    ``body(c, flags)`` with every flag parsed; problems travel in ``flags.problems`` and the playbook
    reports them with the settings' own (exit 2). No short flags are generated, so ``-h`` is always help.
    """

    def decorate(body):
        specs = {name: COMMON[name] for name in common}
        if target is not None:
            specs["target"] = Targets.for_task(body.__name__.replace("_", "-"), target, all_means=all_targets,
                                               note=target_note)
        specs.update(own)

        def run(c, **raw):
            return guarded(lambda: body(c, parse_flags(specs, raw, conflicts)))

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        run.__module__ = body.__module__
        run.__signature__ = inspect.Signature(
            [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=spec.invoke_default)
               for name, spec in specs.items()])
        lists = [n for n, s in specs.items() if isinstance(s, Repeated)]
        optional = [n for n, s in specs.items() if isinstance(s, (Repeated, OptionalValue))]
        return task(run, klass=_Task, iterable=lists, optional=optional, auto_shortflags=False,
                    help={name: _help_text(spec) for name, spec in specs.items()})

    return decorate


# ---------------------------------------------------------------------------------------------
# No traceback reaches a person: around every task body (guarded), and for invoke's own output
# (install_excepthook, called by tasks.py: `inv --list | head` must end quietly too).

def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE) not in (None, "", "0")


def _redactor():
    from gptoss_gke.core.redact import Redactor

    return Redactor.for_run()


def _unexpected(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return _redactor()(f"error: unexpected {type(exc).__name__}: {text}{where}\n"
                    f"  fix: this is a bug in gptoss-gke; re-run with {DEBUG_VARIABLE}=1 to see the traceback "
                    f"and include it in a report")


def _say(message: str) -> None:
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()


def guarded(body: Callable[[], Any]) -> Any:
    """Run a task body so that no traceback ever reaches a person.

    Bad input is exit 2 with the problems (the playbook prints them); a known failure is its problem and
    fix; anything else is one line with the way to see the traceback. A closed stdout ends quietly.
    """
    from gptoss_gke.core.report import silence_stdout
    from gptoss_gke.errors import ToolError

    try:
        return body()
    except (Exit, ParseError, UnexpectedExit, KeyboardInterrupt):
        raise
    except BrokenPipeError:
        silence_stdout()
        raise Exit(code=0) from None
    except ToolError as exc:
        _say(_redactor()(f"error: {exc}"))
        raise Exit(code=exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _debugging():
            raise
        _say(_unexpected(exc))
        raise Exit(code=1) from None


def install_excepthook() -> None:
    """For what escapes invoke itself: a closed stdout ends quietly, anything else is one line."""
    default = sys.excepthook

    def hook(kind, exc, tb):
        if issubclass(kind, BrokenPipeError):
            from gptoss_gke.core.report import silence_stdout

            silence_stdout()
            return
        if issubclass(kind, Exception) and not _debugging():
            _say(_unexpected(exc))
            return
        default(kind, exc, tb)

    sys.excepthook = hook


def _help_text(spec: Flag) -> str:
    if isinstance(spec, Integer):
        return f"{spec.help}; {spec._allowed()}"
    if isinstance(spec, Choice):
        return f"{spec.help}: {', '.join(spec.choices)}"
    return spec.help



ON_HELP = ("run on another host over SSH: --on=[user@]host[:port], or bare --on for remote.host "
           "(host key checked against remote.known_hosts)")


def collection(*tasks: Task) -> Collection:
    ns = Collection()
    for t in tasks:
        ns.add_task(t)
    return ns
