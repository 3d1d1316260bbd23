"""Builds metalearn._core from csrc/: the C core and its CPython/NumPy binding (csrc/python/)."""

import glob
import os
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError

HERE = os.path.dirname(os.path.abspath(__file__))


def sources():
    """Every C file of csrc/'s folders but the C unit tests: a new folder needs no entry here."""
    return sorted(
        path
        for path in glob.glob(os.path.join("csrc", "*", "*.c"))
        if os.path.basename(os.path.dirname(path)) != "tests"
    )


# Portable flags only: the AVX2/FMA kernels are chosen at run time through function
# attributes, so a wheel built here runs on any x86-64. METALEARN_CFLAGS adds flags
# (the sanitizer build of CI uses it).
extra = [
    "-std=gnu11",
    "-O3",
    "-fno-math-errno",
    "-Wall",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]
extra += os.environ.get("METALEARN_CFLAGS", "").split()
link = os.environ.get("METALEARN_LDFLAGS", "").split()
# The binding calls the core only through its public functions (accessors included), and
# the core's files call each other's: bound inside the extension at link time, each is a
# direct call instead of a jump through the PLT. Same code, so the same bits.
if sys.platform.startswith("linux"):
    link.append("-Wl,-Bsymbolic-functions")

# pip shows a failed build's whole log, where the compiler's one line is easily missed
# among the commands: the last lines say what failed and what is needed.
BUILD_FAILED = """
metalearn: building the C extension metalearn._core failed ({error}).
metalearn is a C core with a Python face, and pip install compiles it from the C sources
in csrc/ (about a minute). That needs a C compiler (gcc or clang, called as $CC or cc)
and the Python development headers (Python.h: the python3-dev or python3-devel package
on Linux, the Xcode command line tools on macOS). The compiler's own message is above;
`pip install -v .` shows every compile command and its output.
"""


class BuildExtExplained(build_ext):
    """build_ext that ends a compiler failure with what it needs (BUILD_FAILED)."""

    def run(self):
        try:
            super().run()
        except (CCompilerError, ExecError) as error:
            sys.stderr.write(BUILD_FAILED.format(error=error))
            raise


setup(
    cmdclass={"build_ext": BuildExtExplained},
    ext_modules=[
        Extension(
            "metalearn._core",
            sources=sources(),
            include_dirs=[os.path.join("csrc", "include"), "csrc", numpy.get_include()],
            extra_compile_args=extra,
            extra_link_args=link,
            libraries=["m"],
            define_macros=[("NPY_TARGET_VERSION", "NPY_1_25_API_VERSION")],
        )
    ],
)
