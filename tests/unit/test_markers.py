"""Every test carries exactly one level marker (unit, integration, e2e).

The marker comes from the test's directory (tests/conftest.py), so a test file
placed anywhere else, or a test that also marks itself with another level, is
caught here instead of silently falling out of `make quick` or a CI split.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import LEVELS, ROOT, level_of

NOT_EXACTLY_ONE = (
    "not (unit or integration or e2e)"
    " or (unit and integration) or (unit and e2e) or (integration and e2e)"
)


def test_level_comes_from_the_directory() -> None:
    tests = ROOT / "tests"
    assert [level_of(tests / lvl / "test_x.py") for lvl in LEVELS] == list(LEVELS)
    assert level_of(tests / "test_x.py") is None
    assert level_of(tests / "hostile" / "test_x.py") is None
    assert level_of(ROOT / "experiments" / "test_x.py") is None


def test_every_collected_test_has_exactly_one_level() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", NOT_EXACTLY_ONE, "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    # exit code 5: nothing selected, i.e. every test has exactly one level
    assert proc.returncode == 5, (
        "tests without exactly one of unit/integration/e2e (put the file under "
        f"tests/unit, tests/integration or tests/e2e):\n{proc.stdout}{proc.stderr}"
    )
    assert " deselected" in proc.stdout  # the suite was collected at all


def test_every_test_file_lives_under_a_level() -> None:
    stray = [p for p in (ROOT / "tests").rglob("test_*.py") if level_of(p) is None]
    assert stray == [], f"move these under tests/unit, integration or e2e: {stray}"
