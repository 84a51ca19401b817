"""Where the GPU time of one fused training step goes, launch by launch (needs CuPy and an NVIDIA GPU).

    python examples/profile_step.py [--batch 128] [--k 1]

After three warm-up steps (kernels compiled, GEMM tiles timed, graph captured) it times the graph replay,
and the replay of a graph without the side stream's branches (one stream), then runs one step launch by
launch on one stream with a CUDA event before each launch, all queued behind kernels/step.cu::hold so the
events time the GPU and not the host. Prints one JSON line per launch (kernel, grid, block, microseconds, and
the stream the graph runs it on), one per kernel family (launches, total, share) and a summary: the sum of the
launches, and of the main stream's alone, against the replayed graphs' times per step. The main stream's
launches are the step's critical path (a side stream's launch waits for the main stream's before it; the main
stream waits for the side stream only at the joins), so where the graph's time is their sum, moving more work
to the side stream cannot help.
The last launch's figure also holds the conversion of the step's statistics that follows it.
"""

import argparse
import collections
import json
import re
import sys

import numpy as np


def replay_ms(gan, real, replays=200):
    """GPU milliseconds per step of the replayed graph, after three warm-up steps."""
    import cupy

    for _ in range(3):
        gan.train_step(real)
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    with gan.fused.stream:
        start.record()
        for _ in range(replays):
            gan.train_step(real)
        end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / replays


def profile(gan, real):
    """[(kernel, grid, block, stream, us)] of one step of ``gan`` (warmed up) run launch by launch; stream is
    "side" for the launches the graph runs on the side stream, else "main"."""
    import cupy

    from minigan import cupy_backend
    from minigan.cupy_step import HOLD_CYCLES

    fused = gan.fused
    marks, launcher = [], fused.kernel

    def marked(family, name):
        launch = launcher(family, name)

        def run(grid, block, args, **cluster):
            marks.append((name + ("+cluster" if cluster else ""), tuple(grid), tuple(block),
                          "side" if fused.on_side else "main", fused.stream.record()))
            launch(grid, block, args, **cluster)

        return run

    # one stream (the side stream's branches folded in), so that consecutive events bracket one launch each
    side, fused.side = fused.side, None
    fused.kernel, fused.use_graph = marked, False
    try:
        with fused.stream:
            # ~20 ms, longer than the host takes to queue the eager step's launches: the 5 ms held before was not
            # (run 13's profile of a branch whose host code did more per launch timed its last three at 135-239 us)
            cupy_backend.kernel("step", "hold")((1,), (1,), (np.int64(HOLD_CYCLES * 20),))
            gan.train_step(real)
            last = fused.stream.record()
        last.synchronize()
    finally:
        fused.kernel, fused.use_graph, fused.side = launcher, True, side
    ends = [m[-1] for m in marks[1:]] + [last]
    return [(name, grid, block, stream, cupy.cuda.get_elapsed_time(event, after) * 1e3)
            for (name, grid, block, stream, event), after in zip(marks, ends)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--k", type=int, default=1)
    args = p.parse_args(argv)
    from minigan.backend import BackendError, get_backend
    from minigan.gan import GAN

    try:
        backend = get_backend("cupy")
    except BackendError as e:
        print(f"profile_step.py: error: {e}", file=sys.stderr)
        return 1
    gan, one_stream = GAN(backend, k=args.k, seed=0), GAN(backend, k=args.k, seed=0)
    one_stream.fused.side = None  # its graph has no branch: the side stream's launches wait their turn
    real = backend.asarray(np.random.default_rng(0).random((args.batch, 784), dtype=np.float32))
    graph_ms, one_stream_ms = replay_ms(gan, real), replay_ms(one_stream, real)
    launches = profile(gan, real)
    families = collections.defaultdict(lambda: [0, 0.0])
    for i, (name, grid, block, stream, us) in enumerate(launches):
        print(json.dumps({"launch": i, "kernel": name, "grid": grid, "block": block, "stream": stream,
                          "us": round(us, 2)}))
        family = re.sub(r"_\d+x\d+_\d+x\d+(_s\d+)?(\+cluster)?$", "", name)  # a GEMM's kind, whatever its tile
        families[family][0] += 1
        families[family][1] += us
    total = sum(us for *_, us in launches)
    main_stream = [us for *_, stream, us in launches if stream == "main"]
    for family, (count, us) in sorted(families.items(), key=lambda f: -f[1][1]):
        print(json.dumps({"kernel": family, "launches": count, "us": round(us, 1), "share": round(us / total, 3)}))
    print(json.dumps({"device": backend.device, "batch": args.batch, "k": args.k, "launches": len(launches),
                      "sum_of_launches_ms": round(total / 1e3, 4), "main_stream_launches": len(main_stream),
                      "main_stream_sum_ms": round(sum(main_stream) / 1e3, 4), "graph_ms_per_step": round(graph_ms, 4),
                      "graph_one_stream_ms_per_step": round(one_stream_ms, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
