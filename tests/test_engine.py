"""Engine semantics with small real steps: files on disk changed by real child processes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import invoke
import pytest

from gptoss_gke.core import Change, Context, Plan, Redactor, Runner, Step, noop
from gptoss_gke.core.report import Printer, write_report
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.shell import Shell
from gptoss_gke.errors import Conflict, StepError


def make_ctx(*, dry_run=False, secrets=()):
    redactor = Redactor()
    for s in secrets:
        redactor.add(s)
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=RetryPolicy(4, 0.01, 0.02), emit=printer.line)
    return Context(None, shell, printer, redactor, dry_run=dry_run, interactive=False), out


class FileContent(Step):
    """Ensure a file holds some text, written by a child process."""

    section = "files"

    def __init__(self, path: Path, content: str, *, needs=None, sabotage=False):
        self.path, self.content, self.name = path, content, path.name
        self.needs = needs
        self.sabotage = sabotage  # the write "succeeds" but does not stick

    def observe(self, ctx):
        return self.path.read_text() if self.path.exists() else None

    def plan(self, ctx, current):
        if current == self.content:
            return noop(f"{self.path.name} already holds {self.content!r}")
        target = "/dev/null" if self.sabotage else str(self.path)
        return Plan([Change(f"write {self.path.name}", "create" if current is None else "update",
                            argv=["sh", "-c", f'printf %s "$1" > "$2"', "sh", self.content, target])])


class Boom(Step):
    section = "files"
    name = "boom"

    def plan(self, ctx, current):
        raise StepError("the thing is broken", "mend the thing")


def test_converges_then_second_run_is_all_ok_with_reasons(tmp_path):
    steps = lambda: [FileContent(tmp_path / "a", "1"), FileContent(tmp_path / "b", "2")]
    ctx, out = make_ctx()
    first = Runner(ctx).run(steps())
    assert [r.status for r in first] == ["changed", "changed"]
    assert (tmp_path / "a").read_text() == "1"
    ctx, out = make_ctx()
    second = Runner(ctx).run(steps())
    assert [r.status for r in second] == ["ok", "ok"]
    assert "ok: a already holds '1'" in out.getvalue()
    assert all(not c.write for r in second for c in r.commands)


def test_dry_run_writes_nothing_and_prints_the_command(tmp_path):
    ctx, out = make_ctx(dry_run=True)
    [r] = Runner(ctx).run([FileContent(tmp_path / "a", "1")])
    assert not (tmp_path / "a").exists()
    assert r.status == "changed" and r.dry_run and r.reason.startswith("would write a")
    assert "would run: sh -c" in out.getvalue()
    assert [c.executed for c in r.commands] == [False]


def test_verify_after_act_fails_when_the_world_still_differs(tmp_path):
    ctx, out = make_ctx()
    [r] = Runner(ctx).run([FileContent(tmp_path / "a", "1", sabotage=True)])
    assert r.status == "failed" and "still differs after acting: write a" in r.error


def test_failure_stops_dependants_but_not_independent_steps(tmp_path):
    ctx, out = make_ctx()
    results = Runner(ctx).run([
        Boom(),
        FileContent(tmp_path / "a", "1"),
        FileContent(tmp_path / "b", "2", needs=()),
    ])
    assert [r.status for r in results] == ["failed", "skipped", "changed"]
    assert results[1].reason == "not run: boom failed"
    assert "fix: mend the thing" in out.getvalue()
    assert not (tmp_path / "a").exists() and (tmp_path / "b").exists()


def test_recap_and_json_report(tmp_path):
    (tmp_path / "a").write_text("1")
    ctx, out = make_ctx()
    runner = Runner(ctx)
    results = runner.run([FileContent(tmp_path / "a", "1"), FileContent(tmp_path / "b", "2"), Boom(),
                          FileContent(tmp_path / "c", "3")])
    ctx.printer.recap(results, 1.0)
    assert "RECAP ok=1 changed=1 skipped=1 failed=1" in out.getvalue()
    report = tmp_path / "report.json"
    write_report(str(report), results, ctx.redact, task="t", dry_run=False)
    doc = json.loads(report.read_text())
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    assert doc["recap"] == {"ok": 1, "changed": 1, "skipped": 1, "failed": 1}
    keys = {"name", "section", "action", "changed", "reason", "diff", "commands", "elapsed", "error", "status"}
    assert all(keys <= set(s) for s in doc["steps"])
    assert [s["action"] for s in doc["steps"]] == ["noop", "create", "noop", "skip"]
    assert doc["steps"][1]["commands"][0]["write"] is True and doc["steps"][1]["commands"][0]["rc"] == 0


def test_transient_failures_are_retried_then_converge(tmp_path):
    counter = tmp_path / "count"

    class Flaky(FileContent):
        def plan(self, ctx, current):
            if current == self.content:
                return noop("done")
            script = (f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; '
                      f'if [ "$n" -lt 2 ]; then echo "ERROR: (gcloud) 503 Service Unavailable" >&2; exit 1; fi; '
                      f'printf 1 > {self.path}')
            return Plan([Change("flaky write", argv=["sh", "-c", script])])

    ctx, out = make_ctx()
    [r] = Runner(ctx).run([Flaky(tmp_path / "a", "1")])
    assert r.status == "changed"
    assert counter.read_text().strip() == "3"
    assert out.getvalue().count("retrying in") == 2


def test_permanent_failures_are_not_retried(tmp_path):
    class Denied(FileContent):
        def plan(self, ctx, current):
            return Plan([Change("denied", argv=["sh", "-c", "echo PERMISSION_DENIED >&2; exit 1"])])

    ctx, out = make_ctx()
    [r] = Runner(ctx).run([Denied(tmp_path / "a", "1")])
    assert r.status == "failed" and "PERMISSION_DENIED" in r.error
    assert "retrying" not in out.getvalue()


def test_conflict_on_write_observes_again(tmp_path):
    class Racy(FileContent):
        def apply(self, ctx, change):
            self.path.write_text(self.content)  # someone else created it first
            raise Conflict("a already exists")

    ctx, out = make_ctx()
    [r] = Runner(ctx).run([Racy(tmp_path / "a", "1")])
    assert r.status == "changed" and "observing again" in out.getvalue()


def test_secrets_never_reach_output_report_or_argv(tmp_path):
    secret = "sk-test-5ecret-value-123456"
    ctx, out = make_ctx(secrets=[secret])

    class Leaky(Step):
        section, name = "files", "leaky"

        def observe(self, ctx):
            return ctx.shell.read(["sh", "-c", 'echo "token is $TOKEN" >&2; exit 3'], env={"TOKEN": secret})

        def plan(self, ctx, current):
            return noop("unreachable")

    class OnArgv(FileContent):
        def plan(self, ctx, current):
            return Plan([Change("put the key on argv", argv=["echo", secret])])

    results = Runner(ctx).run([Leaky(), OnArgv(tmp_path / "a", "1", needs=())])
    report = tmp_path / "r.json"
    write_report(str(report), results, ctx.redact, task="t", dry_run=False)
    assert results[0].status == "failed" and "token is ***" in results[0].error
    assert "secret would appear on its command line" in results[1].error
    assert secret not in out.getvalue() and secret not in report.read_text()


def test_redactor_masks_token_shapes_nobody_registered():
    r = Redactor()
    assert r("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert "ya29" not in r("token ya29.a0AfH6SMBxyz-123")
    assert r("--api-key=hunter22 x") == "--api-key=*** x"


def test_offline_reads_are_not_attempted_after_credentials_fail():
    ctx, _ = make_ctx(dry_run=True)
    ctx.shell.offline = "no credentials"
    from gptoss_gke.errors import CannotObserve

    with pytest.raises(CannotObserve):
        ctx.shell.read(["true"])


def test_writes_after_a_fresh_observation_are_still_shown_and_recorded(tmp_path):
    # The second step is observed again (the first changed something), then writes: its command
    # must still reach the output and the report.
    ctx, out = make_ctx()
    results = Runner(ctx).run([FileContent(tmp_path / "a", "1"), FileContent(tmp_path / "b", "2")])
    assert [len([c for c in r.commands if c.write]) for r in results] == [1, 1]
    assert out.getvalue().count("$ sh -c") == 2


class Blind(Step):
    """A read that cannot be made at all (no network, say)."""

    section = "files"

    def __init__(self, name, *, if_unobservable=None):
        self.name = name
        self.if_unobservable = if_unobservable

    def observe(self, ctx):
        from gptoss_gke.errors import CannotObserve

        raise CannotObserve("cannot reach the thing", "plug the cable in")

    def plan(self, ctx, current):
        return Plan([Change(f"delete {self.name}", "delete", apply=lambda ctx: None)]) if current else \
            noop(f"no {self.name} left")


def test_could_not_observe_is_never_absent_outside_a_dry_run():
    # A dry-run plans on top of it, marked, with the cause and its fix said once.
    ctx, out = make_ctx(dry_run=True)
    results = Runner(ctx).run([Blind("a"), Blind("b")])
    assert [(r.status, r.observation) for r in results] == [("ok", "unknown"), ("ok", "unknown")]
    text = out.getvalue()
    assert "ok: no a left  [not observed: cannot reach the thing]\n  fix: plug the cable in\n" in text
    assert "ok: no b left  [not observed]\n" in text and text.count("fix:") == 1
    # A real run, and a read-only preview that decides what to delete, fail instead.
    for real in (make_ctx()[0], Context(None, ctx.shell, ctx.printer, ctx.redact, dry_run=True, unknown_fails=True,
                                        interactive=False)):
        [r] = Runner(real).run([Blind("a")])
        assert r.status == "failed" and r.error == "cannot reach the thing" and r.fix == "plug the cable in"
    # A step may declare what going on blind means: skipped, said why; what needs it does not run.
    ctx, out = make_ctx()
    results = Runner(ctx).run([Blind("a", if_unobservable="--force: going on without it"),
                               FileContent(Path("/nonexistent/x"), "1", needs=("a",))])
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert results[0].reason == "not observed (cannot reach the thing): --force: going on without it"
    assert results[1].reason == "not run: a could not be observed"


def test_a_second_pass_prints_only_what_acts_and_does_only_what_was_approved(tmp_path):
    (tmp_path / "same").write_text("1")
    steps = lambda: [FileContent(tmp_path / "same", "1"), FileContent(tmp_path / "a", "1"),  # noqa: E731
                     FileContent(tmp_path / "b", "2")]
    ctx, out = make_ctx()
    results = Runner(ctx, quiet=True, approved={"a": ["write a"]}).run(steps())
    assert [r.status for r in results] == ["ok", "changed", "ok"]
    assert (tmp_path / "a").read_text() == "1" and not (tmp_path / "b").exists()  # b was never listed
    assert results[2].reason == "not done (not in the list you confirmed; re-run to see it): write b"
    text = out.getvalue()
    assert "TASK [files : same]" not in text and "TASK [files : b]" not in text and "TASK [files : a]" in text


def test_no_read_starts_behind_a_failed_gate(tmp_path):
    class Gate(Boom):
        gate = True

    class Reader(Step):
        section = "files"

        def __init__(self, name):
            self.name = name

        def observe(self, ctx):
            ctx.shell.read(["sh", "-c", f"echo read >> {tmp_path / 'reads'}"])

        def plan(self, ctx, current):
            return noop("read")

    ctx, out = make_ctx()
    results = Runner(ctx).run([Gate(), Reader("a"), Reader("b")])
    assert [r.status for r in results] == ["failed", "skipped", "skipped"]
    assert not (tmp_path / "reads").exists()  # nothing was read behind the failed gate
    assert "$ sh" not in out.getvalue()
