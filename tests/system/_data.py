"""Whether the Omniglot data is present, for the system tests that need it.

A stand-in for the shared ``requires_omniglot`` mechanism of tests/conftest.py (same
environment variable, same search): a test that needs the data skips with a reason when it
is absent, and fails instead when ``METALEARN_REQUIRE_DATA=1`` (CI sets it, so that CI never
skips these tests silently).
"""

import os

import pytest


def omniglot_found():
    """True when a folder metalearn searches holds both Omniglot sets (the packaged arrays,
    the official zips or their unpacked folders)."""
    try:
        from metalearn.datasets._locate import search_paths

        folders = search_paths("omniglot")
    except ImportError:
        from metalearn.datasets import omniglot_search_paths as search

        folders = search()
    forms = ("omniglot_{}.npz", "images_{}.zip", "images_{}")
    return all(
        any((folder / f.format(which)).exists() for folder in folders for f in forms)
        for which in ("background", "evaluation")
    )


def require_omniglot(what):
    """Skips (or, under METALEARN_REQUIRE_DATA=1, fails) the calling test when Omniglot is
    absent; `what` names what needed it."""
    if omniglot_found():
        return
    reason = (
        f"{what} needs the Omniglot data, not found (pass --data, set METALEARN_DATA, or put "
        "images_background.zip and images_evaluation.zip in ~/.cache/metalearn/data/omniglot)"
    )
    if os.environ.get("METALEARN_REQUIRE_DATA") == "1":
        pytest.fail(reason + "; METALEARN_REQUIRE_DATA=1 makes this a failure")
    pytest.skip(reason)
