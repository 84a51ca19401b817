"""Our GEMM kernels (kernels/linear.cu) against cupy.matmul (cuBLAS) at the products of one training step.

    python examples/bench_gemm.py            # needs CuPy and an NVIDIA GPU
    python examples/bench_gemm.py --only forward 128 512 1024 --tile 32x32_4x4 --splits 1

For each product it first checks every tile shape of ours against cuBLAS (max relative error), then times
them and cuBLAS with CUDA events, launches queued behind kernels/step.cu::hold so that the host's launch
rate is hidden, as inside the captured step, with the epilogue the step gives the product (its activation
and dropout; the check against cuBLAS runs without). It prints one JSON line per product: microseconds per call of
each tile shape that can run the split-K the step uses (minigan.cupy_step.split_k), the best time at each
split count (to check that rule), cuBLAS's, and the ratio of our best at the rule's split count (else at
any measured) to cuBLAS. --only, --tile and --splits narrow it to one product, tile shape or split count:
a run short enough for a profiler (.ci/gpu-checks runs Nsight Compute on one, where it is installed).
"""

import json
import sys

import numpy as np

from minigan.cli import ArgumentParser


def products(n=128):
    """(kind, rows, cols, inner, activation) of every GEMM in a step with batch n (K = 1), as
    minigan.cupy_step runs them: the activation of a forward product's epilogue, or the derivative an input
    gradient's applies (of the layer before's; a weight gradient has none)."""
    from minigan.cupy_step import ACT_LEAKY, ACT_LEAKY_DROPOUT, ACT_NONE, ACT_SIGMOID

    g = [(100, 256), (256, 512), (512, 1024), (1024, 784)]  # (in, out) of G's Linear layers
    d = [(784, 1024), (1024, 512), (512, 256)]  # and of D's (its last, one output, is the fused head's)
    g_act = [ACT_LEAKY] * 3 + [ACT_SIGMOID]  # (BatchNorm follows G's LeakyReLU in a kernel of its own)
    out = [("forward", n, n_out, n_in, act) for (n_in, n_out), act in zip(g, g_act)]
    out += [("forward", n, n_out, n_in, ACT_LEAKY_DROPOUT) for n_in, n_out in d]  # real and fake rows apart
    out += [("weight", n_out, n_in, n, ACT_NONE) for n_in, n_out in g]  # G step
    out += [("weight", n_out, n_in, 2 * n, ACT_NONE) for n_in, n_out in d]  # D step, over real and fake rows
    # D step: no input gradient of D's first layer; G step: through D into G's output (sigmoid), then G but
    # its first layer, each into a BatchNorm's output (its backward, LeakyReLU's included, a kernel of its own)
    out += [("input", 2 * n, n_in, n_out, ACT_LEAKY_DROPOUT) for n_in, n_out in d[1:]]
    out += [("input", n, n_in, n_out, ACT_LEAKY_DROPOUT) for n_in, n_out in d[1:]]
    out += [("input", n, d[0][0], d[0][1], ACT_SIGMOID)]
    out += [("input", n, n_in, n_out, ACT_NONE) for n_in, n_out in g[1:]]
    return sorted(set(out))


KERNELS = {"forward": "linear_forward", "weight": "linear_backward_weight", "input": "linear_backward_input"}


def step_products(n=128):
    """products(n) keyed as the fused step keys them, (kernel, rows, cols, inner): its tiles, a tile table."""
    return [(KERNELS[kind], rows, cols, inner) for kind, rows, cols, inner, _ in products(n)]


def parse_args(argv):
    from minigan.cupy_step import CLUSTER_TILES, GEMM_TILES, MAX_SPLITS

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs=4, metavar=("KIND", "ROWS", "COLS", "INNER"),
                        help="one product: forward, weight or input, and its output's rows and cols, inner size")
    parser.add_argument("--tile", choices=GEMM_TILES + CLUSTER_TILES,
                        help="one tile shape (+cluster: its blocks as clusters; Hopper and later)")
    parser.add_argument("--splits", type=int, choices=[s for s in (1, 2, 4, 8, 16) if s <= MAX_SPLITS],
                        help="one split count")
    args = parser.parse_args(argv)
    if args.only:
        kind, *sizes = args.only
        if kind not in ("forward", "weight", "input") or not all(size.isdigit() and int(size) > 0 for size in sizes):
            parser.error(f"--only {' '.join(args.only)}: KIND is forward, weight or input; sizes are positive")
        args.only = (kind, *map(int, sizes))
    return args


def main(argv=None):
    args = parse_args(argv)
    from minigan.backend import BackendError, get_backend

    try:
        cupy = get_backend("cupy").xp
    except BackendError as e:
        sys.exit(f"bench_gemm.py: error: {e}")
    from minigan.cupy_backend import dependent_kernel, dependent_launch_available, kernel
    from minigan.cupy_step import (ACT_NONE, CLUSTER_TILES, GEMM_TILES, MAX_SPLITS, gpu_seconds_per_launch, launch_gemm,
                                   split_k, split_scratch, tile_fits)

    rng = np.random.default_rng(0)
    step = cupy.zeros(1, np.uint64)
    f32, i32 = np.float32, np.int32
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    split_counts = [args.splits] if args.splits else [s for s in (1, 2, 4, 8, 16) if s <= MAX_SPLITS]
    # as the step launches them: through cuLaunchKernelEx where the GPU can launch dependent kernels and
    # clusters, with the cluster tiles among the shapes timed
    clusters = dependent_launch_available(cupy)
    launcher = dependent_kernel if clusters else kernel
    tiles = [args.tile] if args.tile else GEMM_TILES + (CLUSTER_TILES if clusters else ())
    if not clusters and any(tile.endswith("+cluster") for tile in tiles):
        sys.exit(f"bench_gemm.py: error: {args.tile} needs clusters, which this GPU or driver cannot launch")
    chosen = [(*args.only, ACT_NONE)] if args.only else products()
    scratch = [split_scratch(rows, cols, splits, tile) for _, rows, cols, *_ in chosen for splits in split_counts
               for tile in tiles if tile_fits(tile, splits)]
    if not scratch:
        sys.exit(f"bench_gemm.py: error: tile {args.tile} cannot run {args.splits} splits")
    partials = cupy.empty(max(max(p for p, _ in scratch), 1), f32)  # enough for any split of any product here
    counters = cupy.zeros(max(max(c for _, c in scratch), 1), np.uint32)

    def timed(launch):  # microseconds per call, as the step's tuner measures
        return gpu_seconds_per_launch(cupy, kernel, launch, reps=50) * 1e6

    print(json.dumps({"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "sms": sms}))
    for kind, rows, cols, inner, activation in chosen:
        # C (rows, cols) = A (rows, inner) B (inner, cols), with the operands laid out as the layers have them;
        # act: the epilogue's activation (none while checked against cuBLAS) and dropout's parameters
        act = (i32(ACT_NONE), f32(0.2), f32(0.3), f32(1 / 0.7), np.uint64(0), step, np.uint32(0))
        if kind == "forward":  # Y = X W^T: X (rows, inner), W (cols, inner)
            X = cupy.asarray(rng.standard_normal((rows, inner), dtype=f32))
            W = cupy.asarray(rng.standard_normal((cols, inner), dtype=f32))
            C, R = cupy.empty((rows, cols), f32), cupy.empty((rows, cols), f32)
            reference = lambda: cupy.matmul(X, W.T, out=R)  # noqa: E731
            name, args = "linear_forward", (C, X, W, cupy.zeros(cols, f32), i32(rows), i32(cols), i32(inner)) + act
            args += (i32(0),)  # the batch's first row, for dropout's counters
        elif kind == "weight":  # dW = dY^T X: dY (inner, rows), X (inner, cols)
            dY = cupy.asarray(rng.standard_normal((inner, rows), dtype=f32))
            X = cupy.asarray(rng.standard_normal((inner, cols), dtype=f32))
            C, R, db = cupy.empty((rows, cols), f32), cupy.empty((rows, cols), f32), cupy.empty(rows, f32)
            reference = lambda: cupy.matmul(dY.T, X, out=R)  # noqa: E731
            name, args = "linear_backward_weight", (C, db, dY, X, i32(inner), i32(rows), i32(cols))
            expected_db = dY.sum(axis=0)
        else:  # dX = dY W: dY (rows, inner), W (inner, cols)
            dY = cupy.asarray(rng.standard_normal((rows, inner), dtype=f32))
            W = cupy.asarray(rng.standard_normal((inner, cols), dtype=f32))
            C, R = cupy.empty((rows, cols), f32), cupy.empty((rows, cols), f32)
            reference = lambda: cupy.matmul(dY, W, out=R)  # noqa: E731
            Y_prev = cupy.asarray(rng.standard_normal((rows, cols), dtype=f32))  # its signs pick LeakyReLU's slope
            name, args = "linear_backward_input", (C, dY, W, Y_prev, i32(rows), i32(inner), i32(cols)) + act
        args += (partials, counters)
        # the launch timed: as the step runs it, with its activation in the epilogue
        at = 7  # the activation's place among a forward or input gradient's arguments
        timed_args = args if kind == "weight" else args[:at] + (i32(activation),) + args[at + 1:]
        rule = split_k(rows, cols, inner, sms)
        expected = reference().copy()
        scale = float(cupy.abs(expected).max())
        result = {"product": kind, "rows": rows, "cols": cols, "inner": inner, "activation": activation,
                  "splits": rule, "us": {}}
        best_at_splits = {}
        for splits in split_counts:
            for tile in (tile for tile in tiles if tile_fits(tile, splits)):
                launch = lambda: launch_gemm(launcher, name, tile, rows, cols, splits, args)  # noqa: E731
                C.fill(np.nan)
                if kind == "weight":
                    db.fill(np.nan)
                launch()
                error = float(cupy.abs(C - expected).max()) / scale
                if kind == "weight":  # and the bias gradient, summed by the same blocks
                    error = max(error, float(cupy.abs(db - expected_db).max() / cupy.abs(expected_db).max()))
                if not error <= 1e-4:
                    sys.exit(f"bench_gemm.py: error: {name} {tile} splits {splits} at {rows}x{cols}x{inner} is "
                             f"wrong (max relative error {error:.1e})")
                us = round(timed(lambda: launch_gemm(launcher, name, tile, rows, cols, splits, timed_args)), 2)
                best_at_splits[splits] = min(best_at_splits.get(splits, us), us)
                if splits == rule:
                    result["us"][tile] = us
        result["best_us_at_splits"] = best_at_splits
        result["cublas_us"] = round(timed(reference), 2)
        ours = best_at_splits.get(rule, min(best_at_splits.values()))
        result["ratio_to_cublas"] = round(ours / result["cublas_us"], 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
