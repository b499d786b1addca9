"""What pip sees of us: which Pythons may install the package."""

from __future__ import annotations

import re
from importlib.metadata import metadata

from packaging.specifiers import SpecifierSet

from tests.conftest import REPO


def test_every_current_python_may_install_it_and_none_older_than_the_code_supports():
    # The installed metadata is what pip checks before refusing an install.
    allowed = SpecifierSet(metadata("gptoss-gke")["Requires-Python"])
    for version in ("3.10", "3.11", "3.12", "3.13", "3.14", "3.15", "4.0"):
        assert version in allowed, f"Python {version} would be refused by requires-python {allowed}"
    # 3.9 cannot run the settings models (`X | None` evaluated at run time): refuse it up front.
    assert "3.9" not in allowed


def test_classifiers_name_every_version_from_the_lower_bound_up_to_the_current_release():
    text = (REPO / "pyproject.toml").read_text()
    lower = int(re.search(r'requires-python = ">=3\.(\d+)"', text).group(1))
    named = {int(m) for m in re.findall(r"Python :: 3\.(\d+)", text)}
    assert named == set(range(lower, 15))
