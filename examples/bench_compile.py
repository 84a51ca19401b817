"""How long the GPU backend's kernels take to compile on a first run: kernels/*.cu as whole files one after
another (the backend until 2026-11-28), against the parts minigan.cupy_backend.compile_kernels compiles at once,
one thread each. It calls NVRTC, the compiler CuPy calls, through ctypes, with the options CuPy passes and
CuPy's target (machine code for the GPU's architecture, so ptxas's time counts too); no GPU is needed.

    python examples/bench_compile.py [--arch sm_90] [--threads N]

Prints one JSON line per way (seconds), the ratio, and each part's own seconds. CuPy then keeps each module
in its cache on disk, so only a machine's first run, or the first after an edit of kernels/, waits for this.
"""

import concurrent.futures
import ctypes
import ctypes.util
import glob
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigan import cupy_backend  # noqa: E402
from minigan.cli import ArgumentParser  # noqa: E402


def nvrtc_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel (minigan's test extra), a CUDA toolkit, or the library path;
    None where there is none."""
    candidates = []
    try:
        import nvidia

        candidates += sorted(p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "cu*", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    candidates += glob.glob(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "lib64", "libnvrtc.so*"))
    candidates += [ctypes.util.find_library("nvrtc")] if ctypes.util.find_library("nvrtc") else []
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


NVRTC = nvrtc_library()


def nvrtc_compile(code, name, arch="compute_90"):
    """(PTX, or None where it does not compile, and the log) of NVRTC on ``code`` with minigan.cupy_backend's
    options plus what CuPy's RawModule adds (-ftz=true, the arch). A sm_XX arch is built to machine code, as
    CuPy builds it, and gives "" for the PTX, which it does not keep."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), code.encode(), name.encode(), 0, None, None) == 0
    try:
        options = [o.encode() for o in cupy_backend.NVRTC_OPTIONS + ("-ftz=true", f"-arch={arch}")]
        result = NVRTC.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        if result != 0:
            return None, log.value.decode()
        if not arch.startswith("compute_"):
            return "", log.value.decode()
        NVRTC.nvrtcGetPTXSize(program, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetPTX(program, ptx)
        return ptx.value.decode(), log.value.decode()
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


def timed_compile(family, part, arch):
    started = time.perf_counter()
    ptx, log = nvrtc_compile(cupy_backend.kernel_source(family, part), f"{family}.cu", arch)
    if ptx is None:
        first_line = next((line for line in log.splitlines() if line.strip()), "NVRTC failed")
        raise SystemExit(f"bench_compile.py: kernels/{family}.cu ({ {None: 'whole', '': 'head'}.get(part, part)}): {first_line}")
    return time.perf_counter() - started


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", help="NVRTC's -arch (sm_90: Hopper machine code, as CuPy builds)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the parts")
    parser.add_argument("--families", nargs="+", metavar="FAMILY", help="only these kernels/<FAMILY>.cu (all)")
    args = parser.parse_args(argv)
    if NVRTC is None:
        raise SystemExit("bench_compile.py: error: no NVRTC library (pip install nvidia-cuda-nvrtc)")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    families = sorted(path.stem for path in cupy_backend.KERNELS.glob("*.cu"))
    unknown = sorted(set(args.families or ()) - set(families))
    if unknown:
        parser.error(f"no kernels/{unknown[0]}.cu (the families: {', '.join(families)})")
    families = sorted(args.families or families)
    parts = [(family, part) for family in families for part in cupy_backend.module_parts(family)]

    started = time.perf_counter()
    for family in families:
        timed_compile(family, None, args.arch)
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        part_s = list(pool.map(lambda work: timed_compile(*work, args.arch), parts))
    parts_s = time.perf_counter() - started

    print(json.dumps({"way": "whole files, one after another", "files": len(families), "seconds": round(whole_s, 2)}))
    print(json.dumps({"way": "parts at once", "parts": len(parts), "threads": args.threads,
                      "seconds": round(parts_s, 2), "longest_part_seconds": round(max(part_s), 2)}))
    print(json.dumps({"ratio_parts_to_whole": round(parts_s / whole_s, 3), "arch": args.arch,
                      "part_seconds": {f"{family}.cu" + (f" {part or '(head)'}" if part is not None else ""): round(s, 2)
                                       for (family, part), s in zip(parts, part_s)}}))


if __name__ == "__main__":
    main()
