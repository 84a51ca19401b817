"""kernels/*.cu compiled for the CPU (through tests/cuda_host.h) and called like cupy.RawKernel objects.

``HostKernels()(family, name)`` returns a callable ``(grid, block, args, cluster=1)`` that runs the kernel on
NumPy arrays on a grid of up to three dimensions, in clusters of ``cluster`` blocks along z: every array
argument is passed as a pointer to its data, every scalar as its value, and each must have the dtype the
kernel declares (as CuPy passes them unconverted); a launch configuration CUDA would refuse is refused. So
the code that launches kernels on the GPU (minigan/cupy_step.py) runs unchanged on the CPU, with xp=numpy.
"""

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
SIGNATURE = re.compile(r'extern "C" __global__ void\s+(?:__launch_bounds__\(([^)]*)\)\s+)?(\w+)\(([^)]*)\)', re.S)
MAX_THREADS, MAX_GRID = 1024, (2**31 - 1, 65535, 65535)  # per block, and blocks per grid dimension, as CUDA's
MAX_CLUSTER = 8  # blocks per cluster, CUDA's portable most
BUILT = {}  # {digest of the source a build compiles and the files it reads: the library, loaded}
CTYPES = [("unsigned long long", ctypes.c_ulonglong), ("long long", ctypes.c_longlong),
          ("unsigned int", ctypes.c_uint), ("int", ctypes.c_int), ("float", ctypes.c_float),
          ("double", ctypes.c_double)]
# CuPy passes a NumPy scalar as the bytes of its dtype, whatever the kernel declares: a mismatch is no
# conversion on a GPU but garbage (an int32 read as a long long), so the host launch refuses one.
DTYPES = {ctypes.c_ulonglong: np.uint64, ctypes.c_longlong: np.int64, ctypes.c_uint: np.uint32,
          ctypes.c_int: np.int32, ctypes.c_float: np.float32, ctypes.c_double: np.float64}
POINTEE = {"unsigned long long": np.uint64, "long long": np.int64, "unsigned int": np.uint32, "int": np.int32,
           "float": np.float32, "double": np.float64, "unsigned char": np.uint8}  # an array's dtype likewise


def preprocessed(source):
    """The text of a kernels/*.cu file after the C preprocessor: kernels stamped out by macros show up."""
    return subprocess.run(["g++", "-E", "-P", "-x", "c++", f"-I{Path(source).parent}", str(source)], capture_output=True,
                          text=True, check=True).stdout


def kernel_names(source):
    return [name for _, name, _ in SIGNATURE.findall(preprocessed(source))]


def kernel_signatures(folder=KERNELS):
    """{family: [(name, [(ctypes type, C type, arg name), ...], most threads per block)]} of every extern "C"
    kernel in the folder's *.cu (the most: its __launch_bounds__, else CUDA's limit)."""
    out = {}
    for source in sorted(folder.glob("*.cu")):
        kernels = []
        for bounds, name, params in SIGNATURE.findall(preprocessed(source)):
            args = []
            for param in (p.strip() for p in params.split(",")):
                split = param.rindex("*") + 1 if "*" in param else param.rindex(" ")
                c_type, arg_name = param[:split].strip(), param[split:].strip()
                bare = c_type.replace("const ", "")
                ctype = ctypes.c_void_p if "*" in c_type else next(c for t, c in CTYPES if bare == t)
                args.append((ctype, c_type, arg_name))
            kernels.append((name, args, int(bounds.split(",")[0]) if bounds else MAX_THREADS))
        out[source.stem] = kernels
    return out


class HostKernels:
    available = shutil.which("g++") is not None

    def __init__(self, folder=KERNELS):
        """The kernels of ``folder``: the checkout's kernels/, or another tree's (examples/compare_kernels.py),
        built with that tree's tests/cuda_host.h where it has one (its kernels may call what only its own has)."""
        self.folder = folder
        host = folder.parent / "tests" if (folder.parent / "tests" / "cuda_host.h").is_file() else ROOT / "tests"
        self.signatures = kernel_signatures(folder)
        lines = ['#include "cuda_host.h"'] + [f'#include "{folder / (f + ".cu")}"' for f in self.signatures]
        for kernels in self.signatures.values():
            for name, args, _ in kernels:
                params = ", ".join(f"{c_type} {arg}" for _, c_type, arg in args)
                call = ", ".join(arg for _, _, arg in args)
                lines.append(f'extern "C" void host_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                             f"unsigned cluster, {params}) "
                             f"{{ launch(dim3(gx, gy, gz), dim3(bx), cluster, [&] {{ {name}({call}); }}); }}")
        source = "\n".join(lines) + "\n"
        # built once a process from the same files (each test module makes its own HostKernels)
        read = [host / "cuda_host.h", *sorted(folder.iterdir())]
        digest = hashlib.sha256(source.encode() + b"".join(path.read_bytes() for path in read if path.is_file()))
        digest = digest.hexdigest()
        if digest not in BUILT:
            with tempfile.TemporaryDirectory(prefix="minigan-kernels-") as build_dir:
                source_file, library = Path(build_dir) / "kernels_host.cpp", Path(build_dir) / "kernels_host.so"
                source_file.write_text(source)
                # a * b + c contracted into one fused multiply-add, as nvcc and NVRTC do by default (--fmad=true),
                # where the CPU has the instruction: the GEMMs then round as on a GPU, and the tolerances are
                # tested for that
                subprocess.run(["g++", "-std=c++20", "-O2", "-march=native", "-ffp-contract=fast", "-shared", "-fPIC",
                                "-pthread", "-w", f"-I{host}", f"-I{folder}", "-o", str(library), str(source_file)],
                               check=True)
                # loaded before its folder goes: a library mapped into the process outlives its file
                BUILT[digest] = ctypes.CDLL(str(library))
        self.library = BUILT[digest]
        self.kernels = {}
        for kernels in self.signatures.values():
            for name, args, max_threads in kernels:
                fn = getattr(self.library, f"host_{name}")
                fn.argtypes = [ctypes.c_uint] * 5 + [c for c, _, _ in args]
                fn.restype = None
                self.kernels[name] = (fn, args, max_threads)

    def accesses(self, name, values):
        """[(first byte, end, written, argument, array)] of the memory a launch of ``name`` with ``values`` may
        touch: each array argument's extent, written unless the kernel declares its pointer const. The array
        itself comes along so that, while a record of the launch is kept, no new array gets its addresses."""
        _, args, _ = self.kernels[name]
        return [(value.ctypes.data, value.ctypes.data + value.nbytes, not c_type.startswith("const "), arg_name, value)
                for (ctype, c_type, arg_name), value in zip(args, values) if ctype is ctypes.c_void_p]

    def __call__(self, family, name):
        fn, args, max_threads = self.kernels[name]

        def launch(grid, block, values, cluster=1):
            grid = tuple(grid) + (1,) * (3 - len(grid))
            # what a GPU refuses to launch (a block over the kernel's __launch_bounds__ or CUDA's limits), and
            # the block shape this emulator keeps (kernels/*.cu use one-dimensional blocks)
            if not (len(block) == 1 and 0 < block[0] <= max_threads):
                raise ValueError(f"{name}: block {tuple(block)}: one dimension of at most {max_threads} threads")
            if not all(0 < g <= most for g, most in zip(grid, MAX_GRID)):
                raise ValueError(f"{name}: grid {grid} is empty or beyond CUDA's {MAX_GRID}")
            if not (0 < cluster <= MAX_CLUSTER and grid[2] % cluster == 0):
                raise ValueError(f"{name}: clusters of {cluster} blocks along z: at most {MAX_CLUSTER} (CUDA's "
                                 f"portable size), dividing the grid's {grid[2]}")
            converted = []
            for (ctype, c_type, arg_name), value in zip(args, values, strict=True):
                if ctype is ctypes.c_void_p:
                    pointee = np.dtype(POINTEE[c_type.replace("const ", "").rstrip("* ")])
                    if not (isinstance(value, np.ndarray) and value.flags.c_contiguous and value.dtype == pointee):
                        raise TypeError(f"{name}: argument {arg_name} must be a C-contiguous array of dtype {pointee}")
                    converted.append(value.ctypes.data)
                elif not (isinstance(value, np.generic) and value.dtype == DTYPES[ctype]):
                    raise TypeError(f"{name}: argument {arg_name} must be a scalar of dtype {np.dtype(DTYPES[ctype])} "
                                    f"(the kernel's {ctype.__name__}), not {type(value).__name__}")
                else:
                    converted.append(value)
            fn(*grid, block[0], cluster, *converted)

        return launch
