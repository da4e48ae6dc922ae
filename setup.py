"""Build of the vaec._core extension from csrc/ (the C core) and vaec/_core.c (the binding).

The default build targets the baseline ISA of the platform: no -march=native. Faster
kernels (AVX2+FMA, AVX-512) are compiled with per-function target attributes in their own
files and chosen at run time from CPUID. Set VAEC_SANITIZE=1 to build with
-fsanitize=address,undefined (used by .ci/run), VAEC_TSAN=1 with -fsanitize=thread, VAEC_DEBUG=1
for -O0 -g.
"""
import os
import sys
from glob import glob

import numpy
from setuptools import Extension, setup

csrc = sorted(glob(os.path.join("csrc", "*.c")))
# -fno-wrapv undoes the -fwrapv of CPython's own CFLAGS, which setuptools puts first: vaec's C
# does not rely on signed overflow wrapping, the training step runs 2-3 % faster without
# it, and the sanitizer build can then catch a signed overflow.
extra_compile = ["-std=c11", "-O3", "-fno-wrapv", "-fno-math-errno", "-fno-strict-aliasing", "-Wall", "-Wextra",
                 "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
extra_link = []
if os.environ.get("VAEC_DEBUG"):
    extra_compile = [f for f in extra_compile if not f.startswith("-O")] + ["-O0", "-g"]
if os.environ.get("VAEC_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    extra_compile = [f for f in extra_compile if not f.startswith("-O")] + ["-O1", "-g"] + san
    extra_link += san
if os.environ.get("VAEC_TSAN"):   # ThreadSanitizer (used by .ci/run for the threading tests)
    extra_compile = [f for f in extra_compile if not f.startswith("-O")] + ["-O1", "-g", "-fsanitize=thread"]
    extra_link += ["-fsanitize=thread"]
libraries = [] if sys.platform == "win32" else ["m", "pthread"]

setup(
    ext_modules=[
        Extension(
            "vaec._core",
            sources=sorted(glob(os.path.join("vaec", "*.c"))) + csrc,
            include_dirs=["csrc", numpy.get_include()],
            depends=glob(os.path.join("csrc", "*.h")) + glob(os.path.join("csrc", "*.inc")) + glob(os.path.join("vaec", "*.h")),
            extra_compile_args=extra_compile,
            extra_link_args=extra_link,
            libraries=libraries,
        )
    ]
)
