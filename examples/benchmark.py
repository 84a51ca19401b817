"""Time full training steps (D step + G step) of minigan, and of the reference PyTorch program in the same run.

    python examples/benchmark.py --backend numpy --steps 50 --compare-torch

Prints one JSON line per implementation, e.g.
    {"impl": "minigan-numpy", "device": "...", "batch": 128, "k": 1, "steps": 50, "ms_per_step": 31.2}
and, with --compare-torch, PyTorch's step on the same device (torch-eager; with --backend cupy also
torch-cuda-graph, the whole step captured in one CUDA graph) and two lines of ratios: each time over
torch-eager's, and minigan's over the fastest PyTorch variant's.
Each implementation first runs its warm-up steps (and must produce finite losses), then is timed
over --steps steps; the figure is the median of --repeats such timings, taken in turns. minigan's line also
gives its first step's time (on the GPU: compiling the kernels, timing the GEMM tiles), its second's (the
graph's capture and tuning) and, on CuPy, how many of the step's products chose each GEMM tile shape and what
the graph's tuning tried and kept. On CuPy it also times minigan-cupy-layers, the same GAN
through the layers on CuPy arrays (cuBLAS products, CuPy's array operations, no graph): the design the
fused step replaces.

Without --tiles the step takes its GPU's tile table (minigan/tiles/, where one was measured for the device's
name), as training does, and times and tunes only the products it does not name; "tiles" in minigan's line says
which file and how many products it took and timed. --tiles FILE lets two processes (two trees, in
.ci/gpu-compare) time their steps with the same GEMM tiles, the table's aside: the first, finding no FILE, times
every product, and writes its tiles there after its warm-up (a tile table, if copied to minigan/tiles/); the next
takes them, for every product of its step that FILE names and that can run the tile there, and times and tunes
only the others. Each process's tiles moved the step by up to 15% on an H200 (runs 20 and 21 in docs/gpu-runs/),
more than most changes it compares.
"""

import collections
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from minigan.backend import BackendError, get_backend
from minigan.cli import ArgumentParser
from minigan.cupy_step import read_tiles, write_tiles
from minigan.gan import GAN


def time_steps(step, steps, synchronize):
    """Mean wall time of ``steps`` calls of step(), in ms."""
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def setup_minigan(args, real, fused=True):
    """(description, step, synchronize) for minigan on --backend, after warm-up and a finiteness check.
    fused=False: on CuPy, the layer-by-layer path instead of the fused step (cuBLAS, CuPy's array ops)."""
    backend = get_backend(args.backend)
    gan = GAN(backend, k=args.k, seed=0)
    if not fused:
        gan.fused = None
    shared_tiles = fused and gan.fused is not None and args.tiles is not None
    written = shared_tiles and not args.tiles.exists()
    if shared_tiles:  # the file's tiles, or every product timed here: not the device's tile table
        try:
            gan.fused.take_tiles({} if written else read_tiles(args.tiles))
        except ValueError as e:
            raise SystemExit(f"benchmark.py: error: --tiles {e}") from None
    batch = gan.batch_input(len(real))  # where the training loop gathers its batches: no copy per step
    batch[...] = backend.asarray(real)
    real = batch
    start = time.perf_counter()
    stats = gan.train_step(real)  # on the GPU: compiles the kernels and times the GEMM tiles
    backend.synchronize()
    meta = {"impl": f"minigan-{args.backend}" + ("" if fused else "-layers"), "device": backend.device,
            "first_step_s": round(time.perf_counter() - start, 3)}
    start = time.perf_counter()
    stats = gan.train_step(real)  # the first of the warm-up steps: on the GPU, captures the step's graph
    backend.synchronize()
    meta["second_step_s"] = round(time.perf_counter() - start, 3)
    for _ in range(args.warmup - 1):
        stats = gan.train_step(real)
    if not np.all(np.isfinite(backend.to_numpy(stats))):
        raise SystemExit("benchmark.py: error: minigan produced non-finite losses")
    if gan.fused is not None:  # how many of the step's products chose each tile shape
        products = set(gan.fused.products)
        meta["gemm_tiles"] = dict(collections.Counter(gan.fused.tiles[key] for key in products))
        # the step's products whose tiles came from the file (or the device's tile table), and those it timed
        timed = {key for key in products if key in gan.fused.tile_times}
        if written:
            write_tiles(args.tiles, gan.fused.tiles)
        table = args.tiles if shared_tiles else gan.fused.table
        meta["tiles"] = {"file": table and str(table), "written": written, "taken": len(products - timed),
                         "timed": len(timed)}
        kept = [t["ratio"] for t in gan.fused.trials if t["kept"]]  # the graph's tuning, at the second step
        meta["step_tuning"] = {"trials": len(gan.fused.trials), "kept": len(kept),
                               "graph_ratio": round(float(np.prod(kept)), 4)}  # tuned graph / untuned, as timed
    return meta, lambda: gan.train_step(real), backend.synchronize


def setup_torch(args, real):
    import torch

    import torch_gan

    device = "cuda" if args.backend == "cupy" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    G, D = torch_gan.Generator().to(device), torch_gan.Discriminator().to(device)
    opt_G, opt_D = torch_gan.make_optimizers(G, D)
    criterion = torch.nn.BCELoss()
    real = torch.from_numpy(real).to(device)

    def step():
        z = [torch.randn(args.batch, 100, device=device) for _ in range(args.k)]
        return torch_gan.train_step(G, D, opt_G, opt_D, criterion, real, z, args.k)

    for _ in range(args.warmup):
        loss_D, loss_G, _, _ = step()
    if not (torch.isfinite(loss_D) and torch.isfinite(loss_G)):
        raise SystemExit("benchmark.py: error: torch produced non-finite losses")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device == "cuda" else \
        f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    return {"impl": "torch-eager", "device": name, "torch": torch.__version__}, step, sync


def setup_torch_cuda_graph(args, real):
    """The same PyTorch step captured whole into one CUDA graph (noise, both updates) and replayed."""
    import torch

    import torch_gan

    torch.manual_seed(0)
    G, D = torch_gan.Generator().cuda(), torch_gan.Discriminator().cuda()
    opt_G, opt_D = torch_gan.make_optimizers(G, D, capturable=True)
    criterion = torch.nn.BCELoss()
    real = torch.from_numpy(real).cuda()

    def step():
        z = [torch.randn(args.batch, 100, device="cuda") for _ in range(args.k)]
        return torch_gan.train_step(G, D, opt_G, opt_D, criterion, real, z, args.k)

    side = torch.cuda.Stream()  # warm up on a side stream, as torch.cuda.graph requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(args.warmup, 3)):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        losses = step()
    graph.replay()
    torch.cuda.synchronize()
    if not all(torch.isfinite(v) for v in losses[:2]):
        raise SystemExit("benchmark.py: error: torch (CUDA graph) produced non-finite losses")
    return ({"impl": "torch-cuda-graph", "device": torch.cuda.get_device_name(), "torch": torch.__version__},
            graph.replay, torch.cuda.synchronize)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=int, default=5, help="timings to take the median of (default 5)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--compare-torch", action="store_true", help="also time the PyTorch program, same run")
    p.add_argument("--tiles", type=Path, metavar="FILE",
                   help="the fused step's GEMM tiles: taken from FILE where it exists (for the products it names "
                        "that can run them; the others are timed), else written there after the warm-up")
    args = p.parse_args(argv)
    if min(args.steps, args.warmup, args.repeats, args.batch - 1, args.k) < 1:
        p.error("--steps, --warmup, --repeats and --k must be at least 1, --batch at least 2")
    if args.tiles is not None and args.backend != "cupy":
        print("benchmark.py: error: --tiles is the fused step's GEMM tiles: it needs --backend cupy", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_gan.py
    real = np.random.default_rng(0).random((args.batch, 784), dtype=np.float32)

    try:
        impls = [setup_minigan(args, real)]
        if args.backend == "cupy":  # the design the fused step replaces, as a baseline of our own
            impls.append(setup_minigan(args, real, fused=False))
    except BackendError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 1
    if args.compare_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("benchmark.py: error: --compare-torch needs torch (pip install torch)", file=sys.stderr)
            return 1
        impls.append(setup_torch(args, real))
        if args.backend == "cupy":
            impls.append(setup_torch_cuda_graph(args, real))
    # Repeats alternate between implementations, so a slow spell of the machine hits both alike.
    times = [[] for _ in impls]
    for _ in range(args.repeats):
        for (_, step, sync), ts in zip(impls, times):
            ts.append(time_steps(step, args.steps, sync))
    results = []
    for (meta, _, _), ts in zip(impls, times):
        results.append({**meta, "batch": args.batch, "k": args.k, "steps": args.steps, "repeats": args.repeats,
                        "ms_per_step": round(statistics.median(ts), 3)})
        print(json.dumps(results[-1]))
    if args.compare_torch:
        base = next(r["ms_per_step"] for r in results if r["impl"] == "torch-eager")
        print(json.dumps({"ratio_vs_torch_eager": {r["impl"]: round(r["ms_per_step"] / base, 3) for r in results}}))
        fastest = min((r for r in results if r["impl"].startswith("torch")), key=lambda r: r["ms_per_step"])
        print(json.dumps({"ratio_vs_fastest_torch": {"baseline": fastest["impl"], results[0]["impl"]:
                                                     round(results[0]["ms_per_step"] / fastest["ms_per_step"], 3)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
