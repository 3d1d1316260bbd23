"""Builds metalearn._core from csrc/: the C core plus its one CPython/NumPy binding file."""
import glob
import os

import numpy
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def sources():
    found = []
    for folder in ("core", "ops", "trace", "kernels", "optim", "io", "memory", "python"):
        found += sorted(glob.glob(os.path.join("csrc", folder, "*.c")))
    return found


# Portable flags only: the AVX2/FMA kernels are chosen at run time through function
# attributes, so a wheel built here runs on any x86-64. METALEARN_CFLAGS adds flags
# (the sanitizer build of CI uses it).
extra = ["-std=gnu11", "-O3", "-fno-math-errno", "-Wall", "-Wno-unused-parameter",
         "-Wno-missing-field-initializers"]
extra += os.environ.get("METALEARN_CFLAGS", "").split()
link = os.environ.get("METALEARN_LDFLAGS", "").split()

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
