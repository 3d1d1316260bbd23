"""Every public module of metalearn declares its API: ``__all__`` names only what exists, and
what ``from m import *``, dir() and tab completion offer holds no typing names (``Any``,
``Callable``, ``Union``...) and no modules it imports for itself (``np``, ``math``)."""

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
import types
import typing

import pytest

import metalearn
from tests.helpers import REPO

TYPING_NAMES = set(typing.__all__) | {"TYPE_CHECKING"}


def _public_modules():
    """metalearn and every module below it whose dotted name has no part starting with _."""
    found = ["metalearn"]
    for info in pkgutil.walk_packages(metalearn.__path__, "metalearn."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            found.append(info.name)
    return found


MODULES = _public_modules()


def _offending(module, names):
    """The names among `names` that are typing names or modules other than `module`'s own
    submodules."""
    bad = []
    for n in names:
        if n.startswith("_"):
            continue
        value = getattr(module, n)
        # a typing name that is typing's own object (Keras' layer Concatenate shares a name
        # with typing.Concatenate and is not one)
        if (n in TYPING_NAMES and value is getattr(typing, n, None)) or getattr(
            value, "__module__", None
        ) == "typing":
            bad.append(n)
        elif isinstance(value, types.ModuleType) and value.__name__ != f"{module.__name__}.{n}":
            bad.append(n)
    return bad


def test_the_public_modules_are_found():
    for name in ("metalearn", "metalearn.keras.layers", "metalearn.meta.maml", "metalearn.tasks"):
        assert name in MODULES
    assert not [m for m in MODULES if "._" in m]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_every_name_exists(name):
    module = importlib.import_module(name)
    assert "__all__" in vars(module), f"{name} has no __all__"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}: __all__ repeats a name"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_star_import_offers_no_typing_names_nor_modules(name):
    module = importlib.import_module(name)
    namespace = {}
    exec(f"from {name} import *", namespace)
    assert not _offending(module, [n for n in namespace if n != "__builtins__"])


@pytest.mark.parametrize("name", MODULES)
def test_dir_offers_no_typing_names_nor_modules(name):
    # dir() is what tab completion lists (IPython's completer, and jedi on live objects)
    module = importlib.import_module(name)
    listed = dir(module)
    assert not _offending(module, listed), f"dir({name}) offers {_offending(module, listed)}"
    assert set(module.__all__) <= set(listed)


def test_ipython_tab_completion_offers_the_api_only():
    pytest.importorskip("IPython")  # installed with the test extras (ipykernel)
    script = textwrap.dedent(
        """
        from IPython.core.completer import provisionalcompleter
        from IPython.testing.globalipapp import get_ipython
        ip = get_ipython()
        ip.run_cell("from metalearn.keras import layers")
        for jedi in (True, False):
            ip.Completer.use_jedi = jedi
            with provisionalcompleter():
                # the name after the dot: IPython gives "Dense", ".Dense" or, when jedi
                # falls back, "layers.Dense" (two runs here, 2026-12-07)
                found = [c.text.rsplit(".", 1)[-1]
                         for c in ip.Completer.completions("layers.", 7)]
            print(sorted(found))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()[-2:]
    for line in lines:
        offered = eval(line)
        assert "Dense" in offered and "Layer" in offered
        assert not {"Any", "Callable", "Union", "Optional", "np", "inspect", "math"} & set(offered)
