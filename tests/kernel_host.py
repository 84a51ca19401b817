"""kernels/*.cu compiled for the CPU (through tests/cuda_host.h) and called like cupy.RawKernel objects.

``HostKernels()(family, name)`` returns a callable ``(grid, block, args)`` that runs the kernel on NumPy
arrays: every array argument is passed as a pointer to its data, scalars by the kernel's declared types.
So the code that launches kernels on the GPU (minigan/cupy_step.py) runs unchanged on the CPU, with xp=numpy.
"""

import ctypes
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)', re.S)
CTYPES = [("unsigned long long", ctypes.c_ulonglong), ("long long", ctypes.c_longlong),
          ("unsigned int", ctypes.c_uint), ("int", ctypes.c_int), ("float", ctypes.c_float),
          ("double", ctypes.c_double)]


def kernel_signatures():
    """{family: [(name, [(ctype, arg name), ...])]} from every extern "C" kernel in kernels/*.cu."""
    out = {}
    for source in sorted(KERNELS.glob("*.cu")):
        kernels = []
        for name, params in SIGNATURE.findall(source.read_text()):
            args = []
            for param in (p.strip() for p in params.split(",")):
                arg_type, arg_name = param.rsplit(None, 1) if "*" not in param else (param[: param.rindex("*") + 1], param[param.rindex("*") + 1 :].strip())
                if "*" in arg_type:
                    ctype = ctypes.c_void_p
                else:
                    ctype = next(c for t, c in CTYPES if arg_type.replace("const ", "").strip() == t)
                args.append((ctype, arg_name))
            kernels.append((name, args))
        out[source.stem] = kernels
    return out


class HostKernels:
    available = shutil.which("g++") is not None

    def __init__(self):
        self.signatures = kernel_signatures()
        self.build_dir = Path(tempfile.mkdtemp(prefix="minigan-kernels-"))
        lines = ['#include "cuda_host.h"'] + [f'#include "{KERNELS / (f + ".cu")}"' for f in self.signatures]
        for kernels in self.signatures.values():
            for name, args in kernels:
                params = ", ".join(f"{'void*' if c is ctypes.c_void_p else self._c_name(c)} {a}" for c, a in args)
                casts = ", ".join(f"({self._param_type(name, a)}){a}" if c is ctypes.c_void_p else a for c, a in args)
                lines.append(f'extern "C" void host_{name}(unsigned gx, unsigned gy, unsigned bx, {params}) '
                             f"{{ launch(dim3(gx, gy), dim3(bx), [&] {{ {name}({casts}); }}); }}")
        source = self.build_dir / "kernels_host.cpp"
        source.write_text("\n".join(lines) + "\n")
        library = self.build_dir / "kernels_host.so"
        subprocess.run(["g++", "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-w", f"-I{ROOT / 'tests'}",
                        f"-I{KERNELS}", "-o", str(library), str(source)], check=True)
        self.library = ctypes.CDLL(str(library))
        self.kernels = {}
        for kernels in self.signatures.values():
            for name, args in kernels:
                fn = getattr(self.library, f"host_{name}")
                fn.argtypes = [ctypes.c_uint] * 3 + [c for c, _ in args]
                fn.restype = None
                self.kernels[name] = (fn, args)

    def _c_name(self, ctype):
        return next(t for t, c in CTYPES if c is ctype)

    def _param_type(self, kernel, arg):
        for source in KERNELS.glob("*.cu"):
            for name, params in SIGNATURE.findall(source.read_text()):
                if name == kernel:
                    param = next(p.strip() for p in params.split(",") if re.search(rf"\b{arg}$", p.strip()))
                    return param[: param.rindex("*") + 1]
        raise KeyError(kernel)

    def __call__(self, family, name):
        fn, args = self.kernels[name]

        def launch(grid, block, values):
            grid = tuple(grid) + (1,) * (2 - len(grid))
            converted = []
            for (ctype, arg_name), value in zip(args, values, strict=True):
                if ctype is ctypes.c_void_p:
                    if not (isinstance(value, np.ndarray) and value.flags.c_contiguous):
                        raise TypeError(f"{name}: argument {arg_name} must be a C-contiguous array")
                    converted.append(value.ctypes.data)
                else:
                    converted.append(value)
            fn(grid[0], grid[1], block[0], *converted)

        return launch
