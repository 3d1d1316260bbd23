"""Fixtures shared by the test folders (constants and builders: tests/helpers.py)."""

import os
import stat

import pytest

from tests.helpers import REFERENCE, data_missing, find_omniglot


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "requires_omniglot: needs the Omniglot data; skipped with the places searched when "
        "absent, failed instead under METALEARN_REQUIRE_DATA=1",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # before the test's fixtures run: the data is looked for in the environment as it is
    if item.get_closest_marker("requires_omniglot") is not None:
        folder, reason = find_omniglot()
        if folder is None:
            data_missing(reason)


@pytest.fixture(scope="session")
def requires_omniglot():
    """The Omniglot folder metalearn finds (its search order, no path given); the test is
    skipped when there is none, with the places searched as the reason, and fails instead
    under METALEARN_REQUIRE_DATA=1. The fixture form of ``@pytest.mark.requires_omniglot``,
    for a test that needs the data only for some parameters:
    ``if name in NEEDS_DATA: request.getfixturevalue("requires_omniglot")``."""
    folder, reason = find_omniglot()
    if folder is None:
        data_missing(reason)
    return folder


@pytest.fixture
def reference_dir():
    """tests/reference/: the PyTorch fixtures and the scripts that generate them."""
    return REFERENCE


@pytest.fixture
def char_device(tmp_path):
    """A character device to save over. Run as root, a regression would replace /dev/null
    itself, for every process on the machine: root gets its own node of /dev/null's device
    (1, 3) in tmp_path instead. Others use /dev/null (they cannot rename over it)."""
    if os.geteuid() != 0:
        return "/dev/null"
    p = tmp_path / "null"
    os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return str(p)
