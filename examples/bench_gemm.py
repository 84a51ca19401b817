"""Our GEMM kernels (kernels/linear.cu) against cupy.matmul (cuBLAS) at the products of one training step.

    python examples/bench_gemm.py            # needs CuPy and an NVIDIA GPU

For each product it first checks our result against cuBLAS's (max relative error), then times both tile
sizes of ours and cuBLAS back to back on the GPU with CUDA events (so host launch overhead is hidden, as
inside the captured step), and prints one JSON line: microseconds per call and the ratio to cuBLAS.
Use it to set minigan.cupy_step.SMALL_TILE_BELOW and to see how far the GEMM is from cuBLAS.
"""

import json
import sys

import numpy as np


def products(n=128):
    """(kind, rows, cols, inner) of every product in a step with batch n (K = 1)."""
    g = [(100, 256), (256, 512), (512, 1024), (1024, 784)]  # (in, out) of G's Linear layers
    d = [(784, 1024), (1024, 512), (512, 256), (256, 1)]  # and of D's
    out = []
    for rows, layers in ((n, g), (2 * n, d), (n, d)):
        for n_in, n_out in layers:
            out.append(("forward", rows, n_out, n_in))
            out.append(("weight", n_out, n_in, rows))
            out.append(("input", rows, n_in, n_out))
    return sorted(set(out))


def main():
    try:
        import cupy
    except ImportError:
        sys.exit("bench_gemm.py: error: needs CuPy and an NVIDIA GPU")
    from minigan.cupy_backend import kernel

    rng = np.random.default_rng(0)
    step = cupy.zeros(1, np.uint64)
    f32, i32 = np.float32, np.int32

    def timed(launch, reps=200):
        launch()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            launch()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / reps * 1e3  # microseconds

    for kind, rows, cols, inner in products():
        # C (rows, cols) = A (rows, inner) B (inner, cols), with the operands laid out as the layers have them
        if kind == "forward":  # Y = X W^T: X (rows, inner), W (cols, inner)
            X = cupy.asarray(rng.standard_normal((rows, inner), dtype=f32))
            W = cupy.asarray(rng.standard_normal((cols, inner), dtype=f32))
            b = cupy.zeros(cols, f32)
            C, R = cupy.empty((rows, cols), f32), cupy.empty((rows, cols), f32)
            reference = lambda: cupy.matmul(X, W.T, out=R)  # noqa: E731
            args = lambda tile: (C, X, W, b, i32(rows), i32(cols), i32(inner), i32(0), f32(0.2), f32(0.3),  # noqa: E731
                                 f32(1 / 0.7), np.uint64(0), step, np.uint32(0), i32(tile))
            name = "linear_forward"
        elif kind == "weight":  # dW = dY^T X: dY (inner, rows), X (inner, cols)
            dY = cupy.asarray(rng.standard_normal((inner, rows), dtype=f32))
            X = cupy.asarray(rng.standard_normal((inner, cols), dtype=f32))
            C, R, db = cupy.empty((rows, cols), f32), cupy.empty((rows, cols), f32), cupy.empty(rows, f32)
            reference = lambda: cupy.matmul(dY.T, X, out=R)  # noqa: E731
            args = lambda tile: (C, db, dY, X, i32(inner), i32(rows), i32(cols), i32(tile))  # noqa: E731
            name = "linear_backward_weight"
        else:  # dX = dY W: dY (rows, inner), W (inner, cols)
            dY = cupy.asarray(rng.standard_normal((rows, inner), dtype=f32))
            W = cupy.asarray(rng.standard_normal((inner, cols), dtype=f32))
            C, R = cupy.empty((rows, cols), f32), cupy.empty((rows, cols), f32)
            reference = lambda: cupy.matmul(dY, W, out=R)  # noqa: E731
            args = lambda tile: (C, dY, W, C, i32(rows), i32(inner), i32(cols), i32(0), f32(0.2), f32(0.3),  # noqa: E731
                                 f32(1 / 0.7), np.uint64(0), step, np.uint32(0), i32(tile))
            name = "linear_backward_input"
        result = {"product": kind, "rows": rows, "cols": cols, "inner": inner}
        expected = reference().copy()
        for tile in (32, 64):
            grid = ((cols + tile - 1) // tile, (rows + tile - 1) // tile)
            launch = lambda: kernel("linear", name)(grid, (256,), args(tile))  # noqa: E731
            launch()
            error = float(cupy.abs(C - expected).max() / cupy.abs(expected).max())
            if error > 1e-4:
                sys.exit(f"bench_gemm.py: error: {name} tile {tile} at {rows}x{cols}x{inner} is wrong "
                         f"(max relative error {error:.1e})")
            result[f"tile{tile}_us"] = round(timed(launch), 2)
        result["cublas_us"] = round(timed(reference), 2)
        result["best_ratio_to_cublas"] = round(min(result["tile32_us"], result["tile64_us"]) / result["cublas_us"], 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
