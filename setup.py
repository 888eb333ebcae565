"""The C extension ``ipcraft._native``; everything else about the package is in pyproject.toml.

setuptools still calls ``ext-modules`` in pyproject.toml experimental (it warns on every build), so
the one extension is declared here.  Its sources are every ``src/ipcraft/_native/*.c`` (a glob, so a
new C file is built without touching this file) and it depends on every header beside them.
"""

from glob import glob

from setuptools import Extension, setup

NATIVE = "src/ipcraft/_native"

setup(
    ext_modules=[
        Extension(
            "ipcraft._native",
            sources=sorted(glob(f"{NATIVE}/*.c")),
            depends=sorted(glob(f"{NATIVE}/*.h")),
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
            libraries=["dl"],  # dlopen/dlsym (zmqfast.c), in libc itself from glibc 2.34
        )
    ]
)
