"""The fused step with this checkout's kernels against the same step with another tree's kernels, in one process
on one GPU (needs CuPy and an NVIDIA GPU).

    python examples/compare_kernels.py OTHER [--rounds 9] [--replays 200] [--batch 128]

OTHER is another checkout of minigan (or its kernels/ folder) whose kernels/*.cu differ from this checkout's in
their code only: the same kernels, taking the same arguments, launched by this checkout's step
(minigan/cupy_step.py). A change to the step's Python is not what this measures; examples/benchmark.py in each
tree is (.ci/gpu-compare).

Both steps start from the same seed, train on the same batch and run the same GEMM tiles: this checkout's step
times and tunes them in its first steps, and the other's takes them as they are. Their graphs are then replayed
in alternating rounds, --replays steps a round, the order of the two swapped from one round to the next. Between
processes the step's time moves by several percent with the tiles each process's timings choose (the README's
**Speed**); here both have the same tiles, so what differs is the kernels.

Prints JSON lines: the GPU and the tiles; each step's ms per step (the median of its rounds, and every round's);
the other's time over this one's, of the medians and round by round, and how many rounds the other won; last,
whether the two left the same bits after the same steps (parameters, gradients, Adam's moments, running statistics,
the device counters, the step's losses: FusedStep.state_arrays) and, where not, the largest difference in each array that differs. A change that should not
change a value (a cache hint, a prefetch) must show the same bits. Where CuPy, the GPU or one of the other's
kernels is missing: a one-line error and exit status 1 (2 where OTHER holds no kernels/linear.cu).
"""

import collections
import functools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from bench_launch import step_ms

from minigan.cli import ArgumentParser


def kernels_folder(other):
    """The folder of the other tree's *.cu: OTHER/kernels in a checkout, else OTHER; None if it holds no linear.cu."""
    folder = other / "kernels" if (other / "kernels").is_dir() else other
    return folder.resolve() if (folder / "linear.cu").is_file() else None


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("other", type=Path, help="another checkout of minigan, or its kernels/ folder")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--replays", type=int, default=200, help="steps a round")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if min(args.rounds, args.replays, args.batch - 1) < 1:
        p.error("--rounds and --replays must be at least 1, --batch at least 2")
    folder = kernels_folder(args.other)
    if folder is None:
        print(f"compare_kernels.py: error: {args.other}: no kernels/linear.cu there (OTHER is a checkout of minigan, "
              "or its kernels/ folder)", file=sys.stderr)
        return 2
    from minigan import cupy_backend
    from minigan.backend import BackendError, get_backend
    from minigan.gan import GAN

    try:
        backend = get_backend("cupy")
        cupy = backend.xp
        gans = {"this": GAN(backend, seed=0), "other": GAN(backend, seed=0)}
        # the other's kernels, launched as this checkout's are (dependent launch where the GPU has it)
        cupy_backend.compile_kernels(kernels=folder)
        gans["other"].fused.kernel = functools.partial(gans["this"].fused.kernel, kernels=folder)
        gans["other"].fused.tiles = gans["this"].fused.tiles  # filled by this one's first steps, then shared
        real = np.random.default_rng(0).random((args.batch, 784), dtype=np.float32)
        batches = {}
        for name, gan in gans.items():
            batches[name] = gan.batch_input(args.batch)  # where the step reads its batch: no copy per step
            batches[name][...] = cupy.asarray(real)
            for _ in range(3):  # (this one) tiles timed, then the graph captured and tuned; (both) replayed once
                gan.train_step(batches[name])
        times = {name: [] for name in gans}
        for round_ in range(args.rounds):
            for name in ("this", "other") if round_ % 2 == 0 else ("other", "this"):
                times[name].append(step_ms(cupy, gans[name], batches[name], args.replays))
        states = {name: {key: backend.to_numpy(array) for key, array in gan.fused.state_arrays().items()}
                  for name, gan in gans.items()}
    except BackendError as e:
        print(f"compare_kernels.py: error: {e}", file=sys.stderr)
        return 1
    tiles = collections.Counter(gans["this"].fused.tiles.values())
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(json.dumps({"device": backend.device, "batch": args.batch, "k": 1, "this": str(cupy_backend.KERNELS),
                      "other": str(folder), "gemm_tiles": dict(tiles)}))
    for name, ts in times.items():
        print(json.dumps({"step": name, "ms_per_step": round(medians[name], 4), "rounds": [round(t, 4) for t in ts]}))
    ratios = [other / this for this, other in zip(times["this"], times["other"])]
    print(json.dumps({"ratio_other_vs_this": round(medians["other"] / medians["this"], 4),
                      "round_ratios": [round(r, 4) for r in ratios], "rounds_other_faster": sum(r < 1 for r in ratios),
                      "rounds": args.rounds}))
    # bit for bit (a NaN equals the same NaN; -0.0 is not 0.0)
    differing = {name: float(np.max(np.abs(states["other"][name].astype(np.float64) - array)))
                 for name, array in states["this"].items() if array.tobytes() != states["other"][name].tobytes()}
    print(json.dumps({"same_bits": not differing, "arrays": len(states["this"]),
                      "steps": 3 + args.rounds * args.replays, "max_abs_difference": differing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
