"""Builds metalearn._core from csrc/: the C core and its CPython/NumPy binding (csrc/python/)."""

import glob
import os
import sys

import numpy
from setuptools import Extension, setup

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

setup(
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
