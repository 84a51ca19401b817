"""With this folder on PYTHONPATH, every Python process sees the emulated GPU (tests/fake_cupy.py) as ``cupy``:
how programs started as subprocesses reach it. The GPU CLI test uses it under ``MINIGAN_EMULATE_GPU=1``, and so
does a rehearsal of the GPU checks on a machine without a GPU (their figures mean nothing; their plumbing does):

    PYTHONPATH=tests/emulated_gpu DEADLINE=1500 OUT=/tmp/gpu-checks-out bash .ci/gpu-checks
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: fake_cupy, kernel_host

from fake_cupy import install  # noqa: E402
from kernel_host import HostKernels  # noqa: E402

install(HostKernels())
