"""Tests that need Omniglot skip with a reason naming where it was looked for when it is
absent, and fail instead under METALEARN_REQUIRE_DATA=1 (CI), through the one mark/fixture
of tests/conftest.py. Run in a child pytest whose data search finds nothing."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

# one test that takes the mark, one whose module fixture takes the fixture
MARKED = "tests/meta/test_omniglot.py::test_real_sets_sizes_and_values"
BY_FIXTURE = "tests/meta/test_metalearner.py::test_fit_fills_memory_with_normalised_keys"


def _pytest_without_data(tmp_path, require):
    # the checkout's ../shared/data is switched off in the child before the tests import
    # anything; METALEARN_DATA and the user data folder point at empty places
    script = textwrap.dedent(
        f"""
        import sys
        import pytest
        import metalearn.datasets._locate as locate
        locate._checkout_shared = lambda: None
        sys.exit(pytest.main(["-q", "-rsE", "-p", "no:cacheprovider", {MARKED!r}, {BY_FIXTURE!r}]))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["METALEARN_DATA"] = str(tmp_path / "nowhere")
    env["METALEARN_DATA_HOME"] = str(tmp_path / "home")
    env.pop("METALEARN_REQUIRE_DATA", None)
    if require:
        env["METALEARN_REQUIRE_DATA"] = "1"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("require", [False, True], ids=["skip", "require"])
def test_missing_omniglot_skips_with_the_places_or_fails_when_required(tmp_path, require):
    out = _pytest_without_data(tmp_path, require)
    text = out.stdout + out.stderr
    # the reason names every place searched, and how to point at the data
    for place in (tmp_path / "nowhere", tmp_path / "home" / "omniglot"):
        assert str(place) in text, text
    assert "needs Omniglot" in text and "METALEARN_DATA" in text
    if require:
        assert out.returncode == 1, text
        assert "2 errors" in text and "METALEARN_REQUIRE_DATA=1" in text, text
    else:
        assert out.returncode == 0, text
        assert "2 skipped" in text, text
