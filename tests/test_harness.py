"""The test set-up keeps its own promise: a test that needs a system tool this machine lacks fails
under CI=true with the command that installs it, and elsewhere is skipped loudly, never quietly."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

NEEDS_A_TOOL = '''
from tests.conftest import require_tool


def test_needs_skopeo():
    require_tool("skopeo", "apt-get install -y skopeo")
'''
HINT = "skopeo is not installed: apt-get install -y skopeo"


def run_pytest(tmp_path, *, ci: str | None, tools: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """pytest on a one-test file, in a child whose PATH holds only ``tools`` (stubs that do nothing)."""
    test_file = tmp_path / "test_needs_a_tool.py"
    test_file.write_text(NEEDS_A_TOOL)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    # No third-party plugins: the verdict is the conftest helper's alone (and the child starts faster).
    env.update(PATH=str(bin_dir), PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-rA", "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_tool_fails_under_ci_with_the_install_hint_and_is_skipped_loudly_elsewhere(tmp_path):
    ci = run_pytest(tmp_path, ci="true")
    assert ci.returncode == 1, ci.stdout + ci.stderr  # pytest's "tests failed"
    assert "1 failed" in ci.stdout and HINT in ci.stdout

    local = run_pytest(tmp_path, ci=None)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in local.stdout and f"SKIPPED LOUDLY: {HINT}" in local.stdout

    # The same test with the tool on PATH runs (the verdicts above come from the missing tool alone).
    present = run_pytest(tmp_path, ci="true", tools=("skopeo",))
    assert present.returncode == 0 and "1 passed" in present.stdout, present.stdout + present.stderr
