"""The CuPy backend: the same layers and the same step on an NVIDIA GPU.

The layers' formulas run unchanged through ``xp = cupy``. What the GPU needs of its own lives here and in
``kernels/*.cu`` (loaded with ``cupy.RawModule``; compiled by NVRTC once on a machine, in parts at once,
``compile_kernels``, and kept in CuPy's cache):

- ``PhiloxRng``: a counter-based random stream (kernels/random.cu) whose whole state is integers (seed,
  offset, and the fused step's step count),
  so noise and dropout masks are drawn on the GPU and a checkpoint stores the stream exactly;
- ``adam_step``: Adam over a model's flat buffer in one launch (kernels/optim.cu), instead of a dozen
  whole-buffer array operations;
- ``gather_batch``: the batch gathered from the uint8 dataset kept on the GPU (kernels/data.cu), so
  no image crosses the PCIe bus inside an epoch;
- ``fused_step``: the whole training step as our own kernels (minigan/cupy_step.py), which
  ``GAN.train_step`` uses in place of the layer-by-layer path; on Hopper and later its kernels go through
  ``DependentLaunch``, so that each one's blocks are scheduled while the kernels before it still run
  (kernels/dependent_launch.cuh).

Every kernel is checked against the NumPy reference: on the CPU by tests/test_fused_step.py (the kernels
compiled for the host by tests/kernel_host.py), on a GPU by tests/test_cupy.py.
"""

import concurrent.futures
import ctypes
import functools
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

from minigan.backend import BackendError

# A checkout (and an editable install) reads the repository's kernels/; an installed wheel has them inside the
# package, as minigan/kernels/ (setup.py).
_PACKAGE = Path(__file__).resolve().parent
KERNELS = _PACKAGE / "kernels" if (_PACKAGE / "kernels").is_dir() else _PACKAGE.parent / "kernels"
NVRTC_OPTIONS = ("--std=c++17",)  # tests/test_kernels.py compiles with these too
THREADS = 256
_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"[^\n]*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^#pragma once[^\n]*\n", re.MULTILINE)


def kernel_source(family, part=None, kernels=KERNELS):
    """kernels/<family>.cu with each ``#include "header"`` of kernels/ written in place, once, between #line
    directives (compiler messages still name the header's own lines); for a ``part`` of kernels/linear.cu
    (``module_parts``), only that tile shape's LINEAR_KERNELS line of the file's (all of them for None; none
    for ""), each other one left an empty line, so that the lines keep their numbers. ``kernels``: the folder
    to read them from, this package's unless another tree's (examples/compare_kernels.py).

    CuPy's kernel cache on disk is keyed by the source string and the options. Headers reached through an -I
    path are in neither, so after an edit of kernels/philox.cuh the cache would hand back kernels built from
    the old one; with the headers in the source it cannot, and the key no longer holds the checkout's path.
    """
    included = set()

    def expand(text, file):
        def header(match):
            name = match.group(1)
            if name in included:
                return ""
            included.add(name)
            line = text.count("\n", 0, match.start()) + 1
            body = expand(_PRAGMA_ONCE.sub("\n", (kernels / name).read_text()), name)  # (its lines kept)
            return f'#line 1 "{name}"\n{body}\n#line {line + 1} "{file}"'

        return _LOCAL_INCLUDE.sub(header, text)

    if not (kernels / f"{family}.cu").is_file():
        raise BackendError(f"minigan's CUDA kernels are missing: no {kernels / (family + '.cu')} (reinstall minigan)")
    text = (kernels / f"{family}.cu").read_text()
    if part is not None:
        text = _TILE_LINE.sub(lambda line: line.group(0) if line.group(1) == part else "", text)
    return expand(text, f"{family}.cu")


# kernels/linear.cu instantiates its GEMM kernels a tile shape a line: LINEAR_KERNELS(<tile>, ...). Compiled
# whole, it is most of a first run's wait (NVRTC, ~45 s of one core on the H200 machine), one program after
# another; compiled a tile shape at a time, its parts compile at once (compile_kernels).
_TILE_LINE = re.compile(r"^LINEAR_KERNELS\((\w+),.*$", re.MULTILINE)
_TILE_KERNEL = re.compile(r"linear_[a-z_]+?_(\d+x\d+_\d+x\d+(?:_s\d+)?)")


def module_parts(family, kernels=KERNELS):
    """The parts ``family`` is compiled in, each a module of its own: kernels/linear.cu's tile shapes, then ""
    (the rest of it: D's head); [None] (the whole file) for every other family."""
    if family != "linear":
        return [None]
    return _TILE_LINE.findall((kernels / "linear.cu").read_text()) + [""]


def module_part(family, name):
    """The part of ``family`` whose module holds kernel ``name``."""
    if family != "linear":
        return None
    tile = _TILE_KERNEL.fullmatch(name)
    return tile.group(1) if tile else ""


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendError(f"--backend cupy needs CuPy (pip install cupy-cuda12x or cupy-cuda13x): {e}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when there is no driver or no device
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BackendError(f"--backend cupy needs an NVIDIA GPU, and CUDA reports none ({first_line})") from None
    if count < 1:
        raise BackendError("--backend cupy needs an NVIDIA GPU, and CUDA reports none")
    return cupy


_modules, _kernels = {}, {}


def _kernel_error(family, name, e):
    """What CuPy raised for kernels/<family>.cu's ``name`` as one line: the first of its message (NVRTC's log
    follows it), which the programs print."""
    first_line = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return BackendError(f"kernels/{family}.cu: {name}: {first_line}")


def _module(family, part, name, device=None, kernels=KERNELS):
    """The compiled module of ``part`` of kernels/<family>.cu (CuPy's cache on disk, else NVRTC), kept for the
    process; ``name`` is what was asked for, for the error. ``device``, in a thread of compile_kernels: the
    caller's GPU, made current there with its context first, since a new thread has none and the driver's
    module load needs one (cupy/cupy#940)."""
    import cupy

    module = _modules.get((kernels, family, part))
    if module is None:
        try:
            if device is not None:
                cupy.cuda.runtime.setDevice(device)
                cupy.cuda.runtime.free(0)  # CUDA's idiom that makes the device's context current in this thread
            module = cupy.RawModule(code=kernel_source(family, part, kernels), options=NVRTC_OPTIONS)
            module.compile()
        except Exception as e:  # CompileException (NVRTC), CUDADriverError (loading), OSError (the source)
            raise _kernel_error(family, name, e) from None
        module = _modules.setdefault((kernels, family, part), module)
    return module


def kernel(family, name, kernels=KERNELS):
    """Kernel ``name`` of kernels/<family>.cu (of the folder ``kernels``), compiled on first use and cached for
    the process."""
    found = _kernels.get((kernels, family, name))
    if found is None:
        module = _module(family, module_part(family, name), name, kernels=kernels)
        try:
            found = _kernels[(kernels, family, name)] = module.get_function(name)
        except Exception as e:  # CUDADriverError: no such kernel in the module
            raise _kernel_error(family, name, e) from None
    return found


def compile_kernels(note=None, note_after=2.0, kernels=KERNELS):
    """Compile every module of kernels/*.cu (of the folder ``kernels``) at once, a thread each: NVRTC runs
    without holding the GIL, so the first run on a machine waits for its largest part, not for the sum of them
    all. Afterwards CuPy's cache on disk hands them back in a fraction of a second. ``note(text)`` is called
    once if it takes longer than ``note_after`` seconds, so that a first run does not wait in silence."""
    import cupy

    work = [(path.stem, part) for path in sorted(kernels.glob("*.cu")) for part in module_parts(path.stem, kernels)]
    work = [(family, part) for family, part in work if (kernels, family, part) not in _modules]
    timer = threading.Timer(note_after, note, ("compiling minigan's CUDA kernels (once on this machine: CuPy "
                                               "keeps them in its cache)",)) if note and work else None
    if timer:
        timer.start()
    try:
        device = cupy.cuda.runtime.getDevice()
        with concurrent.futures.ThreadPoolExecutor(max(1, min(len(work), os.cpu_count() or 1))) as pool:
            for done in [pool.submit(_module, family, part, part or "kernels", device, kernels)
                         for family, part in work]:
                done.result()
    finally:
        if timer:
            timer.cancel()


# cuda.h's CUlaunchAttribute (an id, then a 64-byte union at offset 8) and CUlaunchConfig, for
# cuLaunchKernelEx, which CuPy does not wrap, and the flags of the graph calls below; tests/test_kernels.py
# holds them to cuda.h.
CU_LAUNCH_ATTRIBUTE_COOPERATIVE = 2
CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6
CU_STREAM_CAPTURE_MODE_RELAXED = 2
CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY = 8


class LaunchAttribute(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class LaunchConfig(ctypes.Structure):
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(LaunchAttribute)), ("numAttrs", ctypes.c_uint)]


def kernel_params(args):
    """(the argument values, the void* array pointing at each) for cuLaunchKernelEx, as CuPy passes them: an
    array as its device address, a NumPy scalar as the bytes of its own dtype. Keep the first alive until the
    launch returns (the driver copies the values then, into the graph's node too)."""
    values = []
    for arg in args:
        if isinstance(arg, np.generic):
            values.append(np.array(arg))
        elif hasattr(arg, "data") and hasattr(arg.data, "ptr"):  # cupy.ndarray (a view: its own address)
            values.append(np.array(arg.data.ptr, dtype=np.uint64))
        else:
            raise TypeError(f"a kernel argument must be an array or a NumPy scalar, not {type(arg).__name__}")
    return values, (ctypes.c_void_p * max(1, len(values)))(*[v.ctypes.data for v in values])


# The driver calls made through ctypes (CuPy wraps none of them) by the names the library exports, which
# tests/test_kernels.py holds to those cuda.h gives the calls, with their argument types (handles as void*).
_HANDLE, _OUT = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
DRIVER_CALLS = {
    "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "cuLaunchKernelEx": [ctypes.POINTER(LaunchConfig), _HANDLE, _OUT, _HANDLE],  # DependentLaunch
    "cuStreamBeginCapture_v2": [_HANDLE, ctypes.c_int],  # PriorityGraph
    "cuStreamEndCapture": [_HANDLE, _OUT],
    "cuGraphInstantiateWithFlags": [_OUT, _HANDLE, ctypes.c_ulonglong],
    "cuGraphLaunch": [_HANDLE, _HANDLE],
    "cuGraphDestroy": [_HANDLE],
    "cuGraphExecDestroy": [_HANDLE],
}
_driver = []


def launch_ex_driver():
    """The CUDA driver library (ctypes) if it has every call of DRIVER_CALLS (cuLaunchKernelEx, from CUDA 12.0,
    is the last of them to come), else None."""
    if not _driver:
        try:
            driver = ctypes.CDLL("libcuda.so.1")
            for name, argtypes in DRIVER_CALLS.items():
                getattr(driver, name).argtypes = argtypes
        except (OSError, AttributeError):  # no driver library, or one older than a call
            driver = None
        _driver.append(driver)
    return _driver[0]


def driver_call(driver, name, *args):
    """driver.<name>(*args), raising RuntimeError with CUDA's name for the error where it fails."""
    result = getattr(driver, name)(*args)
    if result != 0:
        error = ctypes.c_char_p()
        driver.cuGetErrorName(result, ctypes.byref(error))
        raise RuntimeError(f"{name}: {(error.value or b'error %d' % result).decode()}")


class DependentLaunch:
    """A kernel launched, like a CuPy kernel, as ``kernel(grid, block, args)`` on the current stream, but
    through cuLaunchKernelEx with programmatic stream serialization: its blocks may be scheduled while the
    kernels it depends on still run, and wait in kernels/dependent_launch.cuh's after_previous_kernels()
    until those have finished. Stream capture keeps that as the graph's programmatic edges.
    ``kernel(grid, block, args, cluster=c)`` launches the blocks in thread block clusters of c along z.
    ``programmatic=False``: the launch waits for the kernels before it as CuPy's does (clusters only).
    ``cooperative=True``: every block of the grid is resident at once (kernels/step.cu's grid_barrier), and
    none is in a cluster."""

    def __init__(self, raw_kernel, programmatic=True, cooperative=False):
        import cupy

        self.cupy, self.cu_function = cupy, raw_kernel.kernel.ptr  # the cupy.RawKernel's CUfunction
        second = CU_LAUNCH_ATTRIBUTE_COOPERATIVE if cooperative else CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        attributes = (LaunchAttribute * 2)(LaunchAttribute(id=CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION),
                                           LaunchAttribute(id=second))
        attributes[0].value[0] = int(programmatic)  # programmaticStreamSerializationAllowed
        attributes[1].value[0] = int(cooperative)  # cooperative (else clusterDim.x, set at each launch)
        self.attributes, self.cooperative, self._driver = attributes, cooperative, launch_ex_driver()

    def __call__(self, grid, block, args, cluster=1):
        if self.cooperative and cluster != 1:
            raise ValueError("a cooperative launch has no clusters")
        grid, block = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
        values, params = kernel_params(args)  # params points into values, alive until the call returns
        if not self.cooperative:
            self.attributes[1].value[:3] = (1, 1, cluster)  # clusterDim x, y, z
        config = LaunchConfig(*grid, *block, 0, self.cupy.cuda.get_current_stream().ptr, self.attributes,
                              2 if cluster > 1 or self.cooperative else 1)
        driver_call(self._driver, "cuLaunchKernelEx", ctypes.byref(config), self.cu_function, params, None)


def dependent_launch_available(cupy):
    """Whether this GPU and driver can launch through DependentLaunch: compute capability 9.0 (griddepcontrol)
    and a driver with cuLaunchKernelEx."""
    return int(cupy.cuda.Device().compute_capability[:-1]) >= 9 and launch_ex_driver() is not None


class PriorityGraph:
    """The launches of ``work()`` on ``stream``, and on the streams it forks from it, captured as one CUDA
    graph in which every kernel keeps the priority of the stream it was launched on: the graph is instantiated
    with CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY, through the driver (ctypes). CuPy's capture
    instantiates without it, and then every kernel of the graph runs at the priority of the stream the graph
    is launched into. ``launch(stream)``, as CuPy's graphs.

    A stream's priority only orders the scheduling of blocks: where blocks of two kernels wait for room on the
    SMs, the higher priority's go first; no block is stopped for them.
    """

    def __init__(self, stream, work):
        self._driver, self._exec = launch_ex_driver(), ctypes.c_void_p()
        graph = ctypes.c_void_p()
        # relaxed, as CuPy captures: CuPy's memory pool may still call cudaMalloc
        driver_call(self._driver, "cuStreamBeginCapture_v2", stream.ptr, CU_STREAM_CAPTURE_MODE_RELAXED)
        try:
            with stream:
                work()
        finally:  # a capture left open would break every later launch on the stream
            driver_call(self._driver, "cuStreamEndCapture", stream.ptr, ctypes.byref(graph))
        try:
            driver_call(self._driver, "cuGraphInstantiateWithFlags", ctypes.byref(self._exec), graph,
                        CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY)
        finally:
            self._driver.cuGraphDestroy(graph)  # the executable graph holds what it needs

    def launch(self, stream):
        driver_call(self._driver, "cuGraphLaunch", self._exec, stream.ptr)

    def __del__(self):
        if self._exec:
            self._driver.cuGraphExecDestroy(self._exec)


def priority_graphs_available():
    """Whether the driver can capture a PriorityGraph (every driver with cuLaunchKernelEx can)."""
    return launch_ex_driver() is not None


@functools.cache
def dependent_kernel(family, name, kernels=KERNELS):
    """kernel(family, name, kernels) launched through DependentLaunch."""
    return DependentLaunch(kernel(family, name, kernels))


@functools.cache
def cluster_kernel(family, name):
    """kernel(family, name) launched through cuLaunchKernelEx without dependent launch: CuPy's launch, but one
    that takes ``cluster`` (examples/bench_launch.py's step without dependent launch, cluster tiles and all)."""
    return DependentLaunch(kernel(family, name), programmatic=False)


def _blocks(n):
    return ((int(n) + THREADS - 1) // THREADS,)


class PhiloxRng:
    """Random stream on the GPU with NumPy Generator's methods as minigan uses them.

    Draws come from Philox4x32-10 blocks ``offset, offset + 1, ...`` of key ``seed``; shuffling, which
    happens once an epoch on the host, uses a NumPy generator seeded alike. The state is plain integers.
    """

    def __init__(self, seed):
        self.seed, self.offset = int(seed) & (2**64 - 1), 0
        self.step = 0  # the fused step's counter (minigan/cupy_step.py): its draws are (element, draw, step)
        self.host = np.random.default_rng(seed)

    def _fill(self, name, shape, dtype):
        import cupy

        out = cupy.empty(shape, dtype=np.float32)
        n = out.size
        if n:
            quads = (n + 3) // 4
            kernel("random", name)(_blocks(quads), (THREADS,),
                                   (out, np.int64(n), np.uint64(self.seed), np.uint64(self.offset)))
            self.offset += quads
        return out if np.dtype(dtype) == np.float32 else out.astype(dtype)

    def random(self, shape, dtype=np.float64):
        return self._fill("uniform_fill", shape, dtype)

    def standard_normal(self, shape, dtype=np.float64):
        return self._fill("normal_fill", shape, dtype)

    def permutation(self, n):
        return self.host.permutation(n)

    def state(self):
        return {"seed": self.seed, "offset": self.offset, "step": self.step, "host": self.host.bit_generator.state}

    def set_state(self, state):
        self.seed, self.offset, self.step = int(state["seed"]), int(state["offset"]), int(state["step"])
        self.host.bit_generator.state = state["host"]


def adam_step(opt, step_size, bias_correction2_sqrt):
    """One launch of kernels/optim.cu::adam_step over the flat buffers of ``opt`` (a minigan.optim.Adam)."""
    if opt.params.dtype != np.float32:
        raise TypeError("the fused Adam kernel is float32; use the NumPy backend for float64 checks")
    beta1, beta2 = opt.betas
    n = opt.params.size
    kernel("optim", "adam_step")(
        _blocks(-(-n // 4)), (THREADS,),  # a thread per four parameters
        (opt.params, opt.grads, opt.m, opt.v, np.int64(n), np.float32(1 - beta1), np.float32(beta2),
         np.float32(1 - beta2), np.float32(1 / (bias_correction2_sqrt * step_size)),
         np.float32(opt.eps / step_size)))


class CupyBackend:
    name = "cupy"

    def __init__(self):
        self.xp = _import_cupy()

    @property
    def device(self):
        from minigan.cupy_step import device_name

        return f"{device_name(self.xp)} (cupy {self.xp.__version__})"

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def rng(self, seed):
        return PhiloxRng(seed)

    def rng_state(self, rng):
        return {"backend": self.name, "state": rng.state()}

    def set_rng_state(self, rng, state):
        rng.set_state(state["state"])

    def fused_step(self, gan):
        """The whole step as our kernels (minigan/cupy_step.py), for the float32 recipe with at most MAX_K D updates
        a step; None otherwise (the layers' own path)."""
        from minigan.cupy_step import MAX_K, FusedStep, device_name, read_tiles, tile_table

        if gan.dtype != np.float32 or gan.k > MAX_K:
            return None
        # where the GPU or the driver cannot launch dependent kernels (nor clusters), CuPy's own launch (and capture)
        dependent = dependent_launch_available(self.xp)
        compile_kernels(note=lambda text: print(f"minigan: {text}", file=sys.stderr, flush=True))
        step = FusedStep(gan, self.xp, dependent_kernel if dependent else kernel, clusters=dependent,
                         capture=PriorityGraph if priority_graphs_available() else None)
        table = tile_table(device_name(self.xp))
        if table.exists():  # measured on this GPU: those products are neither timed nor tuned
            try:
                step.take_tiles(read_tiles(table), table)
            except ValueError as e:
                raise BackendError(f"the GPU's tile table {e}") from None
        return step

    def upload_images(self, images):
        return self.xp.asarray(images)

    def gather_batch(self, images, perm, start, count, out):
        """out[:count] = images[perm[start:start+count]] / 255 on the GPU; ``perm`` is on the GPU too."""
        rows, dim = int(count), images.shape[1]
        kernel("data", "gather_batch")(_blocks(rows * dim), (THREADS,),
                                       (out, images, perm, np.int64(start), np.int32(rows), np.int32(dim)))
        return out[:rows]

    def synchronize(self):
        self.xp.cuda.Device().synchronize()
