"""The CUDA sources, checked without a GPU: every kernels/*.cu compiles with nvcc and with NVRTC (as CuPy
compiles it on the GPU), and the device helpers that can run on the host (Philox) match their published
known answers and the NumPy reference."""

import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from bench_compile import NVRTC, nvrtc_compile  # examples/, on sys.path via conftest
from kernel_host import kernel_names
from philox_reference import philox4x32

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))

# Random123's kat_vectors for philox4x32-10: (counter, key) -> output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_there_are_kernels():
    assert {p.stem for p in SOURCES} >= {"random", "optim", "data", "linear", "layers", "step"}


@pytest.mark.skipif(NVCC is None, reason="no CUDA compiler (nvcc) on this machine")
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_kernel_compiles(source):
    """nvcc --ptx for Hopper (sm_90), as CuPy's NVRTC would compile it on the H100/H200; warnings are errors."""
    ptx = nvcc_ptx(source)
    names = kernel_names(source)
    assert names
    for name in names:
        assert f".entry {name}(" in ptx, f"{name} missing from the PTX"
    assert ptx.count("griddepcontrol.wait;") >= len(names)  # kernels/dependent_launch.cuh, for Hopper
    # and to machine code: no kernel spills registers to local memory, or keeps an array there (a stack frame:
    # an array indexed by a value the compiler cannot resolve, as kernels/philox.cuh::word_of once made of a
    # reference to either of two Philox blocks, in ten GEMM kernels' dropout epilogues)
    frames = [line.strip() for line in ptxas_report(source).splitlines() if "bytes stack frame" in line]
    assert len(frames) >= len(names)
    local = [line for line in frames if line != "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"]
    assert not local, local


# (--split-compile 0: the compilers' optimizations on every core, which leaves the machine code as it was)
@functools.cache
def nvcc_ptx(source):
    """nvcc's PTX of ``source`` for Hopper, warnings as errors."""
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "out.ptx"
        proc = subprocess.run([NVCC, "--ptx", "-arch=sm_90", "--std=c++17", "-Werror", "all-warnings",
                               "--split-compile", "0", "-o", str(ptx), str(source)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return ptx.read_text()


@functools.cache
def ptxas_report(source):
    """What ptxas says (-v) of each kernel of ``source`` compiled to machine code for Hopper (nvcc_ptx's PTX)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "in.ptx").write_text(nvcc_ptx(source))
        proc = subprocess.run([NVCC, "-cubin", "-arch=sm_90", "-Xptxas", "-v", "--split-compile", "0",
                               "-o", str(Path(folder) / "out.cubin"), str(Path(folder) / "in.ptx")],
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.skipif(NVCC is None, reason="no CUDA compiler (nvcc) on this machine")
def test_the_32x32_tiles_fit_the_splits_split_k_plans_per_sm():
    """split_k plans SPLIT_BLOCKS_PER_SM splits of 32 x 32 tiles per SM: every kernel of those tiles must fit
    that many at once in an SM's 65,536 registers (a warp's are allocated 256 at a time). Left to itself
    ptxas gave the forward kernels 163 registers, 3 blocks of the _s2 tile where the rule plans 4."""
    from minigan.cupy_step import GEMM_TILES, SPLIT_BLOCKS_PER_SM, tile_shape

    registers = dict(re.findall(r"Function properties for (\w+)\n.*?Used (\d+) registers",
                                ptxas_report(ROOT / "kernels" / "linear.cu"), re.S))
    tiles = [tile for tile in GEMM_TILES if tile_shape(tile)[:2] == (32, 32)]
    assert len(tiles) >= 3
    for tile in tiles:
        bm, bn, tm, tn, slices = tile_shape(tile)
        warps, blocks = bm // tm * bn // tn * slices // 32, SPLIT_BLOCKS_PER_SM // slices
        for kind in ("linear_forward", "linear_backward_input", "linear_backward_weight"):
            per_warp = math.ceil(int(registers[f"{kind}_{tile}"]) * 32 / 256) * 256
            assert per_warp * warps * blocks <= 65536, (f"{kind}_{tile}: {registers[f'{kind}_{tile}']} registers a "
                                                        f"thread, room for fewer than {blocks} blocks per SM")


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC library (pip install nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_kernel_compiles_with_nvrtc_as_cupy_does(source):
    """NVRTC on the source CuPy's RawModule gets (minigan.cupy_backend.kernel_source), with its options: the
    compiler the GPU path really uses, whose built-in headers differ from nvcc's."""
    from minigan.cupy_backend import kernel_source

    ptx, log = nvrtc_compile(kernel_source(source.stem), source.name)
    assert ptx is not None, log
    assert "warning" not in log, log
    for name in kernel_names(source):
        assert f".entry {name}(" in ptx, f"{name} missing from NVRTC's PTX"


def test_linear_compiles_in_parts_that_hold_every_kernel_once(tmp_path):
    """kernels/linear.cu is compiled a tile shape at a time (minigan.cupy_backend.compile_kernels): each part
    keeps the file's lines where they were, holds its tile shape's kernels and no other's, and kernel() looks
    every kernel of the file up in the part that holds it; D's head, in no tile's line, is in every part and
    is taken from the one with no GEMM kernel (""). Two parts compile alone with NVRTC."""
    from minigan import cupy_backend

    whole = cupy_backend.kernel_source("linear")
    parts = cupy_backend.module_parts("linear")
    assert parts[-1] == "" and len(parts) == len(set(parts)) > 8
    assert parts[:-1] == re.findall(r"^LINEAR_KERNELS\((\w+),", (ROOT / "kernels" / "linear.cu").read_text(), re.MULTILINE)
    names = kernel_names(ROOT / "kernels" / "linear.cu")
    held = {}
    for part in parts:
        source = cupy_backend.kernel_source("linear", part)
        assert source.count("\n") == whole.count("\n")
        (tmp_path / "part.cu").write_text(source)
        held[part] = set(kernel_names(tmp_path / "part.cu"))
    assert held[""] == {"head_forward_backward", "head_reduce"}
    for name in names:
        home = cupy_backend.module_part("linear", name)
        assert name in held[home], (name, home)
        assert [part for part in parts if name in held[part] - held[""]] == ([home] if home else []), name
    assert set().union(*held.values()) == set(names)
    if NVRTC is not None:
        for part in ("", "32x32_4x4"):
            ptx, log = nvrtc_compile(cupy_backend.kernel_source("linear", part), "linear.cu")
            assert ptx is not None and "warning" not in log, log
            assert set(re.findall(r"\.entry (\w+)\(", ptx)) == held[part]


def fake_cupy_compiler(monkeypatch, fail=None, seconds=0.0, meet=0):
    """A stand-in for ``cupy`` whose RawModule records each compilation (its code, the thread's GPU) and, as the
    driver's module load would, refuses one in a thread with no CUDA context current; the first ``meet``
    compilations wait for each other (they must run at once), each takes ``seconds``, and one whose code holds
    ``fail`` raises NVRTC's error."""
    import sys
    import threading
    import time
    import types

    from minigan import cupy_backend

    compiled, current, entered, lock = [], threading.local(), [], threading.Lock()
    meeting = threading.Barrier(meet, timeout=20) if meet else None

    class Module:
        def __init__(self, code, options):
            assert "extern \"C\"" in code and options == cupy_backend.NVRTC_OPTIONS
            self.code = code

        def compile(self):
            with lock:
                entered.append(self.code)
                first = len(entered) <= meet
            if first:
                meeting.wait()
            time.sleep(seconds)
            if fail is not None and fail in self.code:
                raise RuntimeError("\nnvrtc: error: failed to compile the program\n(long log)")
            if not getattr(current, "context", False):
                raise RuntimeError("CUDA_ERROR_INVALID_CONTEXT: invalid device context")
            compiled.append((self.code, getattr(current, "device", 0)))

        def get_function(self, name):
            return (self.code, name)

    def set_device(device):
        current.device = device

    def free(pointer):  # cudaFree(0): the device's context made current in this thread
        assert pointer == 0
        current.context = True

    runtime = types.SimpleNamespace(getDevice=lambda: getattr(current, "device", 0), setDevice=set_device, free=free)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=Module, cuda=types.SimpleNamespace(
        runtime=runtime)))
    monkeypatch.setattr(cupy_backend, "_modules", {})
    monkeypatch.setattr(cupy_backend, "_kernels", {})
    current.device, current.context = 1, True  # the caller's GPU, whose context its thread has
    return compiled


def test_compile_kernels_compiles_every_part_once_at_the_same_time_on_the_callers_gpu(monkeypatch):
    from minigan import cupy_backend

    monkeypatch.setattr(cupy_backend.os, "cpu_count", lambda: 4)
    compiled = fake_cupy_compiler(monkeypatch, meet=3)  # three at once, or the barrier breaks
    cupy_backend.compile_kernels()
    every = [cupy_backend.kernel_source(path.stem, part) for path in SOURCES
             for part in cupy_backend.module_parts(path.stem)]
    assert sorted(code for code, _ in compiled) == sorted(every) and len(every) == len(set(every))
    assert {device for _, device in compiled} == {1}
    code, name = cupy_backend.kernel("linear", "linear_forward_64x64_8x8")  # from the part compiled above
    assert code == cupy_backend.kernel_source("linear", "64x64_8x8") and name == "linear_forward_64x64_8x8"
    assert cupy_backend.kernel("linear", "head_reduce")[0] == cupy_backend.kernel_source("linear", "")
    assert cupy_backend.kernel("optim", "adam_step")[0] == cupy_backend.kernel_source("optim")
    cupy_backend.compile_kernels()
    assert len(compiled) == len(every)  # nothing twice


def test_compile_kernels_notes_a_long_wait_once_and_a_failure_in_one_line(monkeypatch):
    from minigan import cupy_backend
    from minigan.backend import BackendError

    notes = []
    fake_cupy_compiler(monkeypatch, seconds=0.05)
    cupy_backend.compile_kernels(note=notes.append, note_after=0.01)
    assert notes == ["compiling minigan's CUDA kernels (once on this machine: CuPy keeps them in its cache)"]
    fake_cupy_compiler(monkeypatch)
    cupy_backend.compile_kernels(note=notes.append, note_after=5.0)
    assert len(notes) == 1
    fake_cupy_compiler(monkeypatch, fail="LINEAR_KERNELS(128x128_8x8,")
    with pytest.raises(BackendError) as error:
        cupy_backend.compile_kernels()
    assert str(error.value) == "kernels/linear.cu: 128x128_8x8: nvrtc: error: failed to compile the program"


def test_kernel_source_holds_its_headers(tmp_path):
    """The source handed to CuPy holds kernels/'s headers themselves, so CuPy's kernel cache (keyed by the source
    and options) sees an edited header; and a compiler message inside a header names the header's line, and one
    in the file after its headers the file's."""
    from minigan import cupy_backend

    for family in ("linear", "random"):
        code = cupy_backend.kernel_source(family)
        assert '#include "' not in code and "philox4x32(" in code and "#pragma once" not in code
    kernels = tmp_path / "kernels"
    shutil.copytree(ROOT / "kernels", kernels)
    before = cupy_backend.kernel_source("random", kernels=kernels)
    header = (kernels / "philox.cuh").read_text().splitlines()
    line = next(i for i, text in enumerate(header, 1) if text.startswith("__host__"))  # after #pragma once
    header.insert(line - 1, "this is not C++;")
    (kernels / "philox.cuh").write_text("\n".join(header) + "\n")
    after = cupy_backend.kernel_source("random", kernels=kernels)
    assert after != before and "this is not C++;" in after and "this is not C++;" not in cupy_backend.kernel_source("random")
    if NVRTC is not None:
        ptx, log = nvrtc_compile(after, "random.cu")
        assert ptx is None and f"philox.cuh({line})" in log, log
    # the file's own lines after the headers keep their numbers too
    shutil.copy(ROOT / "kernels" / "philox.cuh", kernels / "philox.cuh")
    source = (kernels / "random.cu").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if text.startswith("extern"))  # after its #includes
    source.insert(line - 1, "this is not C++ either;")
    (kernels / "random.cu").write_text("\n".join(source) + "\n")
    if NVRTC is not None:
        ptx, log = nvrtc_compile(cupy_backend.kernel_source("random", kernels=kernels), "random.cu")
        assert ptx is None and f"random.cu({line})" in log, log


def test_every_kernel_first_waits_for_the_kernels_before_it():
    """The fused step launches every kernel with programmatic stream serialization (kernels/dependent_launch.cuh):
    its blocks may start while the kernels it depends on still run, so it must wait for them before it reads or
    writes anything. The first statement of every kernel is that wait."""
    from kernel_host import SIGNATURE, preprocessed

    for source in SOURCES:
        text = preprocessed(source)
        kernels = list(SIGNATURE.finditer(text))
        assert kernels
        for kernel in kernels:
            body = text[kernel.end():].lstrip()
            assert body.startswith("{") and body[1:].lstrip().startswith("after_previous_kernels();"), \
                f"{source.name}: {kernel.group(2)} does not begin with after_previous_kernels()"


CUDA_H = next((h for h in [Path(NVCC).resolve().parent.parent / "include" / "cuda.h" if NVCC else None,
                           Path("/usr/local/cuda/include/cuda.h")] if h and h.exists()), None)


@pytest.mark.skipif(CUDA_H is None or shutil.which("gcc") is None, reason="no cuda.h or no C compiler")
def test_launch_structs_match_cuda_h(tmp_path):
    """cuLaunchKernelEx's arguments as minigan.cupy_backend lays them out in ctypes, against cuda.h's own."""
    import ctypes

    from minigan.cupy_backend import (CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
                                      CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, CU_STREAM_CAPTURE_MODE_RELAXED,
                                      CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY, LaunchAttribute, LaunchConfig)

    probe = tmp_path / "layout.c"
    probe.write_text("#include <cuda.h>\n#include <stddef.h>\n#include <stdio.h>\nint main(void) {\n"
                     '  printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %d %d %d %d %d\\n", sizeof(CUlaunchAttribute),\n'
                     "         offsetof(CUlaunchAttribute, value),\n"
                     "         offsetof(CUlaunchAttributeValue, programmaticStreamSerializationAllowed),\n"
                     "         offsetof(CUlaunchAttributeValue, cooperative),\n"
                     "         offsetof(CUlaunchAttributeValue, clusterDim.x), offsetof(CUlaunchAttributeValue, clusterDim.z),\n"
                     "         sizeof(CUlaunchConfig), offsetof(CUlaunchConfig, hStream),\n"
                     "         offsetof(CUlaunchConfig, attrs), offsetof(CUlaunchConfig, numAttrs),\n"
                     "         (int)CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, (int)CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,\n"
                     "         (int)CU_LAUNCH_ATTRIBUTE_COOPERATIVE,\n"
                     "         (int)CU_STREAM_CAPTURE_MODE_RELAXED, (int)CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY);\n}\n")
    subprocess.run(["gcc", f"-I{CUDA_H.parent}", "-o", str(tmp_path / "layout"), str(probe)], check=True)
    c = [int(w) for w in subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                                        check=True).stdout.split()]
    # DependentLaunch writes value[0] (programmatic serialization, cooperative), value[0..2] (the cluster's x, y,
    # z): ints
    ours = [ctypes.sizeof(LaunchAttribute), LaunchAttribute.value.offset, 0, 0, 0, 8, ctypes.sizeof(LaunchConfig),
            LaunchConfig.hStream.offset, LaunchConfig.attrs.offset, LaunchConfig.numAttrs.offset,
            CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
            CU_LAUNCH_ATTRIBUTE_COOPERATIVE, CU_STREAM_CAPTURE_MODE_RELAXED, CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY]
    assert c == ours


@pytest.mark.skipif(CUDA_H is None or shutil.which("gcc") is None or shutil.which("nm") is None,
                    reason="no cuda.h, C compiler or nm")
def test_driver_calls_are_the_symbols_cuda_h_names(tmp_path):
    """minigan.cupy_backend.DRIVER_CALLS binds the symbols a C program calling the same functions through
    cuda.h links against (its macros pick the versions: cuStreamBeginCapture is cuStreamBeginCapture_v2)."""
    from minigan.cupy_backend import DRIVER_CALLS

    calls = ["cuGetErrorName", "cuLaunchKernelEx", "cuStreamBeginCapture", "cuStreamEndCapture", "cuGraphInstantiate",
             "cuGraphLaunch", "cuGraphDestroy", "cuGraphExecDestroy"]
    probe = tmp_path / "calls.c"
    probe.write_text("#include <cuda.h>\nvoid *used[] = {" + ", ".join(f"(void *){c}" for c in calls) + "};\n")
    subprocess.run(["gcc", f"-I{CUDA_H.parent}", "-c", "-o", str(tmp_path / "calls.o"), str(probe)], check=True)
    nm = subprocess.run(["nm", "-u", str(tmp_path / "calls.o")], capture_output=True, text=True, check=True)
    assert {line.split()[-1] for line in nm.stdout.splitlines()} == set(DRIVER_CALLS)


def test_kernel_params_point_at_what_cupy_passes():
    """Each void* of cuLaunchKernelEx's argument array points at what CuPy's own launch would pass: an array's
    device address, a NumPy scalar's bytes in its dtype; anything else is refused."""
    import ctypes
    import types

    from minigan.cupy_backend import kernel_params

    class DeviceArray:  # what kernel_params reads of a cupy.ndarray
        data = types.SimpleNamespace(ptr=0x7F0012345600)

    args = (DeviceArray(), np.int32(-3), np.float32(0.5), np.uint64(2**63 + 5), np.float64(0.25), np.uint32(7))
    values, params = kernel_params(args)
    kinds = (ctypes.c_uint64, ctypes.c_int32, ctypes.c_float, ctypes.c_uint64, ctypes.c_double, ctypes.c_uint32)
    got = [ctypes.cast(params[i], ctypes.POINTER(kind)).contents.value for i, kind in enumerate(kinds)]
    assert got == [0x7F0012345600, -3, 0.5, 2**63 + 5, 0.25, 7]
    with pytest.raises(TypeError, match="NumPy scalar"):
        kernel_params((DeviceArray(), 3))


def test_dependent_launch_hands_the_driver_its_attributes(monkeypatch):
    """DependentLaunch's cuLaunchKernelEx, as a stand-in driver sees it: the grid, the block, the current stream,
    programmatic serialization (allowed, or not for cupy_backend.cluster_kernel's launches), and a cluster
    dimension only where a launch asks for clusters."""
    import sys
    import types

    from minigan import cupy_backend

    seen = []

    def launch_ex(config, function, params, extra):
        config = config._obj
        assert config.sharedMemBytes == 0  # the kernels' shared memory is all static: none asked at launch
        attributes = [(config.attrs[i].id, list(config.attrs[i].value[:3])) for i in range(config.numAttrs)]
        seen.append(((config.gridDimX, config.gridDimY, config.gridDimZ),
                     (config.blockDimX, config.blockDimY, config.blockDimZ), config.hStream, function, attributes))
        return 0

    stream = types.SimpleNamespace(ptr=0x5EED)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        cuda=types.SimpleNamespace(get_current_stream=lambda: stream)))
    monkeypatch.setattr(cupy_backend, "launch_ex_driver", lambda: types.SimpleNamespace(cuLaunchKernelEx=launch_ex))
    raw = types.SimpleNamespace(kernel=types.SimpleNamespace(ptr=0xF00))
    args = (np.int32(1),)
    cupy_backend.DependentLaunch(raw)((3, 2, 4), (128,), args)
    cupy_backend.DependentLaunch(raw)((3, 2, 4), (128,), args, cluster=2)
    cupy_backend.DependentLaunch(raw, programmatic=False)((3, 2, 8), (64,), args, cluster=8)
    cooperative = cupy_backend.DependentLaunch(raw, cooperative=True)
    cooperative((64,), (256,), args)
    with pytest.raises(ValueError, match="a cooperative launch has no clusters"):
        cooperative((64,), (256,), args, cluster=8)
    pss, cluster, coop = (cupy_backend.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                          cupy_backend.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, cupy_backend.CU_LAUNCH_ATTRIBUTE_COOPERATIVE)
    assert seen == [((3, 2, 4), (128, 1, 1), 0x5EED, 0xF00, [(pss, [1, 0, 0])]),
                    ((3, 2, 4), (128, 1, 1), 0x5EED, 0xF00, [(pss, [1, 0, 0]), (cluster, [1, 1, 2])]),
                    ((3, 2, 8), (64, 1, 1), 0x5EED, 0xF00, [(pss, [0, 0, 0]), (cluster, [1, 1, 8])]),
                    ((64, 1, 1), (256, 1, 1), 0x5EED, 0xF00, [(pss, [1, 0, 0]), (coop, [1, 0, 0])])]


def test_a_driver_without_cuLaunchKernelEx_means_cupys_own_launch_and_capture(monkeypatch):
    """Hopper with a CUDA 11 driver, or no driver library: launch_ex_driver is None, so neither dependent launch
    nor PriorityGraph is available, and the fused step then launches and captures through CuPy
    (CupyBackend.fused_step) rather than failing. A driver with every call gets each one's argument types, and
    dependent launch is then available from compute capability 9.0 (griddepcontrol) on, Blackwell's included."""
    import types

    from minigan import cupy_backend

    def gpu(compute_capability):  # CuPy's Device().compute_capability: major and minor digits, "90" for 9.0
        return types.SimpleNamespace(cuda=types.SimpleNamespace(
            Device=lambda: types.SimpleNamespace(compute_capability=compute_capability)))

    def old_driver(name):
        return types.SimpleNamespace(cuGetErrorName=lambda *args: 0)  # no cuLaunchKernelEx

    def no_driver(name):
        raise OSError(f"{name}: cannot open shared object file")

    for loader in (old_driver, no_driver):
        monkeypatch.setattr(cupy_backend, "_driver", [])
        monkeypatch.setattr(cupy_backend.ctypes, "CDLL", loader)
        assert cupy_backend.launch_ex_driver() is None
        assert not cupy_backend.dependent_launch_available(gpu("90"))
        assert not cupy_backend.priority_graphs_available()

    # a driver with every call: each gets its argument types
    current = types.SimpleNamespace(**{name: types.SimpleNamespace(argtypes=None) for name in cupy_backend.DRIVER_CALLS})
    monkeypatch.setattr(cupy_backend, "_driver", [])
    monkeypatch.setattr(cupy_backend.ctypes, "CDLL", lambda name: current)
    assert cupy_backend.launch_ex_driver() is current and cupy_backend.priority_graphs_available()
    assert all(getattr(current, name).argtypes == argtypes for name, argtypes in cupy_backend.DRIVER_CALLS.items())
    assert [cupy_backend.dependent_launch_available(gpu(cc)) for cc in ("80", "89", "90", "100", "120")] == [
        False, False, True, True, True]


class RecordingDriver:
    """The driver calls PriorityGraph makes, recorded; each returns ``results.get(name, 0)`` and the capture hands
    back graph 0x51, the instantiation executable graph 0x52."""

    def __init__(self, **results):
        self.calls, self.results = [], results

    def __getattr__(self, name):
        def call(*args):
            def value(arg):
                arg = getattr(arg, "_obj", arg)  # ctypes.byref(x) -> x
                return arg.value if hasattr(arg, "value") else arg

            if name == "cuStreamEndCapture":
                args[1]._obj.value = 0x51
            if name == "cuGraphInstantiateWithFlags" and not self.results.get(name):
                args[0]._obj.value = 0x52
            self.calls.append((name, *map(value, args)))  # (outputs as the call left them)
            return self.results.get(name, 0)

        return call


class RecordingStream:
    def __init__(self, ptr, calls):
        self.ptr, self.calls = ptr, calls

    def __enter__(self):
        self.calls.append(("current", self.ptr))

    def __exit__(self, *exc):
        self.calls.append(("current", None))


def test_priority_graph_keeps_each_kernels_priority(monkeypatch):
    """PriorityGraph: a relaxed capture on the stream around the work (with the stream current), ended even where
    the work fails; the graph instantiated with USE_NODE_PRIORITY and then freed, also where that fails (one
    line naming CUDA's error); launched on the stream given; the executable graph freed with the object."""
    from minigan import cupy_backend

    driver = RecordingDriver()
    monkeypatch.setattr(cupy_backend, "_driver", [driver])
    stream = RecordingStream(0x77, driver.calls)
    graph = cupy_backend.PriorityGraph(stream, lambda: driver.calls.append(("work",)))
    graph.launch(stream=RecordingStream(0x99, driver.calls))
    del graph
    assert driver.calls == [("cuStreamBeginCapture_v2", 0x77, 2), ("current", 0x77), ("work",), ("current", None),
                            ("cuStreamEndCapture", 0x77, 0x51), ("cuGraphInstantiateWithFlags", 0x52, 0x51, 8),
                            ("cuGraphDestroy", 0x51), ("cuGraphLaunch", 0x52, 0x99), ("cuGraphExecDestroy", 0x52)]

    def failing_work():
        raise ValueError("a launch failed")

    driver.calls.clear()
    with pytest.raises(ValueError, match="a launch failed"):
        cupy_backend.PriorityGraph(stream, failing_work)
    assert [call[0] for call in driver.calls] == ["cuStreamBeginCapture_v2", "current", "current", "cuStreamEndCapture"]

    driver = RecordingDriver(cuGraphInstantiateWithFlags=1)
    monkeypatch.setattr(cupy_backend, "_driver", [driver])
    with pytest.raises(RuntimeError, match="^cuGraphInstantiateWithFlags: error 1$"):
        cupy_backend.PriorityGraph(stream, lambda: None)
    assert [call[0] for call in driver.calls][-2:] == ["cuGetErrorName", "cuGraphDestroy"]


def test_philox_reference_matches_known_answers():
    for counter, key, expected in PHILOX_KAT:
        got = philox4x32(*counter, *key)
        assert tuple(int(w) for w in got) == expected


def on_the_host(tmp_path, main, cases):
    """kernels/philox.cuh's __host__ __device__ code compiled for the CPU: the lines that the C++ ``main`` prints
    for ``cases``, fed to its standard input one case a line."""
    harness = tmp_path / "philox.cpp"
    harness.write_text(f'#include "{ROOT / "tests" / "cuda_host.h"}"\n#include "{ROOT / "kernels" / "philox.cuh"}"\n'
                       f"#include <cstdio>\n{main}\n")
    exe = tmp_path / "philox"
    subprocess.run(["g++", "-std=c++20", "-O2", "-pthread", "-o", str(exe), str(harness)], check=True)
    return subprocess.run([str(exe)], input="\n".join(" ".join(map(str, c)) for c in cases), capture_output=True,
                          text=True, check=True).stdout.splitlines()


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")
def test_philox_device_code_matches_the_reference_on_the_host(tmp_path):
    """kernels/philox.cuh's philox4x32 is __host__ __device__: compile it for the CPU and compare."""
    rng = np.random.default_rng(0)
    cases = rng.integers(0, 2**32, size=(200, 6), dtype=np.uint64)
    cases[:3] = [list(c) + list(k) for c, k, _ in PHILOX_KAT]
    out = on_the_host(tmp_path, "int main() { unsigned int a[6];\n"
                                "  while (scanf(\"%u %u %u %u %u %u\", a, a+1, a+2, a+3, a+4, a+5) == 6) {\n"
                                "    uint4x32 r = philox4x32(a[0], a[1], a[2], a[3], a[4], a[5]);\n"
                                "    printf(\"%u %u %u %u\\n\", r.v[0], r.v[1], r.v[2], r.v[3]); } }", cases)
    device = np.array([line.split() for line in out], dtype=np.uint64)
    reference = np.stack(philox4x32(*(cases[:, i] for i in range(6))), axis=1).astype(np.uint64)
    np.testing.assert_array_equal(device, reference)
    assert [tuple(int(w) for w in row) for row in device[:3]] == [e for _, _, e in PHILOX_KAT]


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")
def test_step_uniforms4_draws_each_element_its_own_word(tmp_path):
    """The epilogues' four neighbours from one or two Philox blocks (philox.cuh::step_uniforms4) are the
    reference's uniforms of those elements, whatever the first one's place within its block of four."""
    from philox_reference import step_uniforms

    cases = [(77, 3, 5, index) for index in range(9)] + [(2**40 + 7, 2**33 + 1, 11, 1_000_001), (1, 0, 0, 2**32 - 4)]
    out = on_the_host(tmp_path, "int main() { unsigned long long seed, step; unsigned int draw, index; float u[4];\n"
                                "  while (scanf(\"%llu %llu %u %u\", &seed, &step, &draw, &index) == 4) {\n"
                                "    step_uniforms4(seed, step, draw, index, u);\n"
                                "    printf(\"%.9g %.9g %.9g %.9g\\n\", u[0], u[1], u[2], u[3]); } }", cases)
    for (seed, step, draw, index), line in zip(cases, out, strict=True):
        expected = step_uniforms(seed, step, draw, (4,), first=index)
        np.testing.assert_array_equal(np.array(line.split(), np.float32), expected, err_msg=str(index))


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_the_emulated_gpu_runs_an_os_thread_per_core_this_process_may_use(tmp_path):
    """tests/cuda_host.h shares a launch's blocks out among one OS thread (and one set of fiber stacks) per core
    of the process's CPU affinity, not per core of the machine: a CI runner given 2 of a 64-core host's gets 2."""
    harness = tmp_path / "workers.cpp"
    harness.write_text(f'#include "{ROOT / "tests" / "cuda_host.h"}"\n'
                       "int main() {  // one set of 32 fiber stacks per OS thread of the launch\n"
                       "    launch(dim3(64), dim3(32), 1, [] {});\n"
                       '    std::printf("%zu\\n", cuda_host::stacks.size() / 32);\n}\n')
    exe = tmp_path / "workers"
    subprocess.run(["g++", "-std=c++20", "-O2", "-pthread", "-o", str(exe), str(harness)], check=True)
    cores = sorted(os.sched_getaffinity(0))

    def workers(allowed):
        return int(subprocess.run([str(exe)], capture_output=True, text=True, check=True,
                                  preexec_fn=lambda: os.sched_setaffinity(0, allowed)).stdout)

    assert workers(cores[:1]) == 1
    assert workers(cores) == min(64, len(cores))


def test_a_kernel_that_fails_to_compile_or_load_is_one_line(monkeypatch):
    """What CuPy raises from NVRTC or the driver becomes a BackendError naming the file and kernel, which
    the programs print as one line (tests/test_cupy.py runs the real compiler)."""
    from minigan import cupy_backend
    from minigan.backend import BackendError

    fake_cupy_compiler(monkeypatch, fail="LINEAR_KERNELS(32x32_4x4,")
    with pytest.raises(BackendError) as error:
        cupy_backend.kernel("linear", "linear_forward_32x32_4x4")
    assert str(error.value) == "kernels/linear.cu: linear_forward_32x32_4x4: nvrtc: error: failed to compile the program"
