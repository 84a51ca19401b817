"""What a kernel boundary costs in the fused step's CUDA graph, and what programmatic dependent launch and the
streams' priorities save (needs CuPy and an NVIDIA GPU).

    python examples/bench_launch.py [--launches 32] [--replays 200] [--rounds 5] [--batch 128]

1. A chain of --launches launches of kernels/step.cu::count_launch (one thread adds one to a counter), each
   after the one before, captured as a graph and replayed: microseconds per launch, with CuPy's own launch
   and with minigan.cupy_backend.DependentLaunch, on 1 block and on 1024 blocks of 64 threads (the grid of
   the step's largest GEMMs). The counter must have counted every launch. The fused step's critical path is
   32 launches at K = 1, so 32 times this is time no kernel of the step can take back.
2. The fused step's graph (K = 1) built three ways, all with the first's GEMM tiles, replayed in alternating
   rounds in one process: milliseconds per step of each, the median over --rounds. "dependent" is the step as
   it runs; "cupy" launches its kernels without dependent launch (minigan.cupy_backend.cluster_kernel: the
   same cuLaunchKernelEx, without the attribute, as CuPy's own launch cannot launch the cluster tiles);
   "one_priority" is captured by CuPy
   (minigan.cupy_step.cupy_capture), so that every kernel runs at one priority, where the step's own graph
   (minigan.cupy_backend.PriorityGraph) runs the side stream's kernels below the critical path's.
Prints one JSON line per figure.
"""

import json
import statistics
import sys

import numpy as np

from minigan.cli import ArgumentParser


def chain_us_per_launch(cupy, launch, blocks, launches, replays):
    counter = cupy.zeros(1, np.uint32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        launch((blocks,), (64,), (counter,))  # loaded before the capture
        stream.begin_capture()
        for _ in range(launches):
            launch((blocks,), (64,), (counter,))
        graph = stream.end_capture()
        graph.launch(stream=stream)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        for _ in range(replays):
            graph.launch(stream=stream)
        end.record(stream)
        end.synchronize()
    counted, expected = int(cupy.asnumpy(counter)[0]), 1 + launches * (replays + 1)
    if counted != expected:
        raise SystemExit(f"bench_launch.py: error: the chain counted {counted} launches, not {expected}")
    return cupy.cuda.get_elapsed_time(start, end) * 1e3 / (replays * launches)


def step_ms(cupy, gan, real, replays):
    stream = gan.fused.stream
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for _ in range(replays):
        gan.train_step(real)
    end.record(stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / replays


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launches", type=int, default=32)
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if min(args.launches, args.replays, args.rounds, args.batch - 1) < 1:
        p.error("--launches, --replays and --rounds must be at least 1, --batch at least 2")
    from minigan import cupy_backend
    from minigan.backend import BackendError, get_backend
    from minigan.cupy_step import cupy_capture
    from minigan.gan import GAN

    try:
        backend = get_backend("cupy")
    except BackendError as e:
        print(f"bench_launch.py: error: {e}", file=sys.stderr)
        return 1
    cupy = backend.xp
    if not cupy_backend.dependent_launch_available(cupy):
        print("bench_launch.py: error: programmatic dependent launch needs compute capability 9.0 and a driver "
              "with cuLaunchKernelEx (CUDA 12.0)", file=sys.stderr)
        return 1
    paths = {"cupy": cupy_backend.kernel("step", "count_launch"),
             "dependent": cupy_backend.dependent_kernel("step", "count_launch")}
    for blocks in (1, 1024):
        for name, launch in paths.items():
            us = chain_us_per_launch(cupy, launch, blocks, args.launches, args.replays)
            print(json.dumps({"chain": name, "blocks": blocks, "launches": args.launches,
                              "us_per_launch": round(us, 3)}))
    real = cupy.asarray(np.random.default_rng(0).random((args.batch, 784), dtype=np.float32))
    gans = {name: GAN(backend, seed=0) for name in ("dependent", "cupy", "one_priority")}
    gans["cupy"].fused.kernel = cupy_backend.cluster_kernel  # (CuPy's own launch has no clusters)
    gans["one_priority"].fused.capture = cupy_capture
    for name in ("cupy", "one_priority"):
        gans[name].fused.tiles = gans["dependent"].fused.tiles  # filled by the first's first step, then shared
    times = {name: [] for name in gans}
    for name, gan in gans.items():
        for _ in range(3):  # tiles timed (the first), kernels loaded, graph captured
            gan.train_step(real)
    for _ in range(args.rounds):
        for name, gan in gans.items():
            times[name].append(step_ms(cupy, gan, real, args.replays))
    for name, ts in times.items():
        print(json.dumps({"step": name, "batch": args.batch, "k": 1, "ms_per_step": round(statistics.median(ts), 4),
                          "rounds": [round(t, 4) for t in ts]}))
    step = {name: statistics.median(ts) for name, ts in times.items()}
    print(json.dumps({"step_ratio_dependent_vs_cupy": round(step["dependent"] / step["cupy"], 3),
                      "step_ratio_priorities_vs_one": round(step["dependent"] / step["one_priority"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
