"""Fixtures shared by the test folders (constants and builders: tests/helpers.py)."""

import os
import stat

import pytest

from tests.helpers import REFERENCE


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
