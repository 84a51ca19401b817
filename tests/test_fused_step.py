"""The fused GPU step (minigan/cupy_step.py, kernels/*.cu) against the NumPy layers, run on the CPU: the
kernels are compiled for the host by tests/kernel_host.py, so every launch, shape and epilogue is checked
here; tests/test_cupy.py repeats the step checks on a real GPU."""

import ctypes
import ctypes.util
import functools
import types

import numpy as np
import pytest
from conftest import Replay, align_state, use_rng
from fake_cupy import FakeCuda, fake_cupy, tile_of
from kernel_host import HostKernels
from philox_reference import step_normals, step_uniforms

from minigan.backend import get_backend, to_host
from minigan.cupy_step import (BN_COLUMNS, CLUSTER_TILES, DEFAULT_TILE, GEMM_TILES, MAX_K, STEP_TUNING_CANDIDATES,
                               TUNING_ROUNDS, FusedStep, draw_ids, split_k, tile_fits)
from minigan.gan import GAN

pytestmark = pytest.mark.skipif(not HostKernels.available, reason="no host C++ compiler")
STEP_ATOL = 2e-5  # float32, different summation orders (as the PyTorch parity test)


@pytest.fixture(scope="module")
def host_kernels():
    return HostKernels()


def replay_draws(fused, n, step):
    """The noise and dropout uniforms the fused step drew at ``step``, in the NumPy GAN's call order. The noise
    is the step's own, once it is checked to be its reference's draw (the kernel's float32 Box-Muller is within
    2e-5 of the reference's float64 on a GPU too: tests/test_cupy.py), so that both sides train on the same bits."""
    b = fused.buffers(n)
    noise, d_draws, g_draws = draw_ids(fused.gan.k)
    widths = [layer.out_features for layer in fused.d_linear[:3]]
    draws = []
    for i in range(fused.gan.k):
        z = to_host(b["z"][i]).copy()
        np.testing.assert_allclose(z.ravel(), step_normals(fused.seed, step, noise[i], z.size), rtol=2e-5, atol=2e-5)
        draws.append(z)
        draws += [step_uniforms(fused.seed, step, d, (2 * n, w)) for d, w in zip(d_draws[i], widths)]
    draws += [step_uniforms(fused.seed, step, d, (n, w)) for d, w in zip(g_draws, widths)]
    return draws


def fused_gan(k, seed):
    """A NumPy-backend GAN with a fused step on host-compiled kernels and a (seed, step) random stream."""
    gan = GAN(get_backend("numpy"), k=k, seed=9)
    gan.rng = types.SimpleNamespace(seed=seed, step=0)
    return gan


@pytest.mark.parametrize("k, mode", [(1, "graph"), (1, "graph-clusters"), (2, "graph"), (2, "eager")])
def test_fused_steps_match_the_numpy_layers(host_kernels, k, mode):
    """Three fused steps against the NumPy layers fed the same noise and masks, each from the same state
    (conftest.align_state). In "graph" mode the step takes its GPU path with a stand-in for CUDA (FakeCuda):
    the first step runs launch by launch (GEMM tiles timed), the second is captured (and tuned) and replayed,
    the third replays the same graph; at K = 2 the graph holds both D iterations. With "-clusters", a cluster
    tile is fastest where it can run (the products split over 2, 4 or 8 blocks of it)."""
    n, steps = 16, 3
    gan, reference = fused_gan(k, seed=77), GAN(get_backend("numpy"), k=k, seed=9)
    favourites = {"64x64_8x8": 0.5}  # the stand-in timer makes it fastest (and a cluster tile faster still)
    if mode.startswith("graph"):
        clusters = mode.endswith("clusters")
        if clusters:
            favourites["32x32_4x4+cluster"] = 0.4
        cuda = FakeCuda(host_kernels, timings=favourites)
        fused = FusedStep(gan, fake_cupy(cuda), cuda.kernel, timer=cuda.timer, clusters=clusters)
    else:
        fused = FusedStep(gan, np, host_kernels)
    data = np.random.default_rng(10).random((steps, n, 784), dtype=np.float32)
    worst = {"stats": 0.0, "params": 0.0, "grads": 0.0}
    noises, masks = [], []
    for step in range(steps):
        align_state(reference, gan)
        stats = fused.train_step(data[step])
        noises.append(fused.buffers(n)["z"][0].copy())
        masks.append(fused.buffers(n)["dh0"] != 0)
        use_rng(reference, Replay(replay_draws(fused, n, step)))
        expected = reference.train_step(data[step])
        worst["stats"] = max(worst["stats"], float(np.abs(stats - expected).max()))
        np.testing.assert_allclose(stats, expected, rtol=1e-4, atol=1e-6)
        for ours, ref in ((gan.G, reference.G), (gan.D, reference.D)):
            scale = np.abs(ref.grads).max()
            worst["grads"] = max(worst["grads"], float(np.abs(ours.grads - ref.grads).max() / scale))
            np.testing.assert_allclose(ours.grads, ref.grads, rtol=0, atol=1e-4 * scale)
            worst["params"] = max(worst["params"], float(np.abs(ours.params - ref.params).max()))
            np.testing.assert_allclose(ours.params, ref.params, rtol=0, atol=STEP_ATOL)
            for (name, a), (_, r) in zip(ours.named_buffers(), ref.named_buffers()):
                np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6, err_msg=name)
    assert int(fused.step[0]) == steps and int(fused.t_D[0]) == k * steps and int(fused.t_G[0]) == steps
    assert (gan.rng.step, gan.opt_D.t, gan.opt_G.t) == (steps, k * steps, steps)  # host mirrors for checkpoints
    # each step (each replay of one graph) draws new noise and new dropout masks
    for a, b in ((0, 1), (1, 2)):
        assert not np.array_equal(noises[a], noises[b]) and not np.array_equal(masks[a], masks[b])
    if mode.startswith("graph"):
        assert len(fused._graphs) == 1 and cuda.graph_launches == steps - 1
        assert set(fused.tiles.values()) == set(favourites)
        assert fused.side.priority > fused.stream.priority  # lower is higher: the critical path's blocks first
    assert abs(float(noises[0].mean())) < 0.2 and 0.8 < float(noises[0].std()) < 1.2
    print(f"\nfused step ({mode}) vs NumPy layers, k={k}, {steps} steps: max |stats diff| {worst['stats']:.1e}, "
          f"max |grad diff| / max |grad| {worst['grads']:.1e}, max |param diff| {worst['params']:.1e} "
          f"(atol {STEP_ATOL})")


def test_a_graph_the_driver_refuses_is_captured_by_cupy(host_kernels):
    """Where PriorityGraph's driver calls fail (a driver that cannot keep node priorities), the step warns once
    and captures its graph the way CuPy does: it still trains, as a graph. An error of the step's own launches
    is still raised."""
    from minigan.cupy_step import cupy_capture

    def refused(stream, work):
        raise RuntimeError("cuGraphInstantiateWithFlags: CUDA_ERROR_INVALID_VALUE")

    cuda = FakeCuda(host_kernels, timings={})
    fused = FusedStep(fused_gan(1, seed=5), fake_cupy(cuda), cuda.kernel, timer=cuda.timer, capture=refused)
    data = np.random.default_rng(11).random((3, 8, 784), dtype=np.float32)
    fused.train_step(data[0])  # eager: nothing captured yet
    with pytest.warns(RuntimeWarning, match="CUDA_ERROR_INVALID_VALUE: the step's graph is captured by CuPy"):
        fused.train_step(data[1])
    fused.train_step(data[2])
    assert fused.capture is cupy_capture and len(fused._graphs) == 1 and cuda.graph_launches == 2

    def launch_fails(n):
        raise RuntimeError("cuLaunchKernelEx: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")

    fused = FusedStep(fused_gan(1, seed=5), fake_cupy(cuda), cuda.kernel, timer=cuda.timer,
                      capture=lambda stream, work: work())
    fused.train_step(data[0])
    fused.run = launch_fails
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="LAUNCH_OUT_OF_RESOURCES"):
        fused.train_step(data[1])


def test_clusters_the_driver_refuses_leave_the_plain_tiles(host_kernels):
    """Where a cluster launch fails while the tiles are timed, the step warns once and times the tiles without
    clusters: it trains on, with the step an untimed one gives."""
    cuda = FakeCuda(host_kernels, timings={"32x32_4x4+cluster": 0.5})
    fake_kernel = cuda.kernel

    def kernel(family, name):
        launch = fake_kernel(family, name)

        def refusing(grid, block, args, cluster=1):
            if cluster > 1:
                raise RuntimeError("cuLaunchKernelEx: CUDA_ERROR_CLUSTER_OUT_OF_RESOURCES")
            return launch(grid, block, args)

        return refusing

    gan, untimed_gan = fused_gan(1, seed=5), fused_gan(1, seed=5)
    fused = FusedStep(gan, fake_cupy(cuda), kernel, timer=cuda.timer, clusters=True)
    untimed = FusedStep(untimed_gan, np, host_kernels)
    data = np.random.default_rng(12).random((2, 8, 784), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="CLUSTER_OUT_OF_RESOURCES: the GEMM tiles are timed without clusters"):
        np.testing.assert_array_equal(fused.train_step(data[0]), untimed.train_step(data[0]))
    np.testing.assert_array_equal(fused.train_step(data[1]), untimed.train_step(data[1]))
    assert fused.tile_choices == GEMM_TILES and not any(t.endswith("+cluster") for t in fused.tiles.values())
    np.testing.assert_array_equal(gan.D.params, untimed_gan.D.params)


def gemm_products(kernel, xp, tile, splits, x, W, b, dy):
    """Y = x W^T + b, dX = dy W, dW = dy^T x and db through kernels/linear.cu with one tile shape, on
    ``xp`` arrays (NumPy with the host-compiled kernels, or CuPy with cupy_backend.kernel)."""
    from minigan.cupy_step import ACT_NONE, cluster_size, launch_gemm, split_scratch, tile_shape

    (rows, inner), cols = x.shape, W.shape[0]
    slices = tile_shape(tile)[4]
    # the scratch the step would give the largest of the three outputs; NaN: a sum that reads stale scratch shows
    need = [split_scratch(r, c, splits, tile) for r, c in ((rows, cols), (rows, inner), (cols, inner))]
    partials = xp.full(max(1, *(p for p, _ in need)), np.nan, np.float32)
    counters = xp.zeros(max(1, *(c for _, c in need)), np.uint32)
    step, f32, i32 = xp.zeros(1, np.uint64), np.float32, np.int32
    y, dx = xp.empty((rows, cols), np.float32), xp.empty_like(x)
    dW, db = xp.empty_like(W), xp.empty_like(b)
    act = (i32(ACT_NONE), f32(0.2), f32(0.3), f32(1 / 0.7), np.uint64(0), step, np.uint32(0))
    first_row = i32(0)
    launch_gemm(kernel, "linear_forward", tile, rows, cols, splits,
                (y, x, W, b, i32(rows), i32(cols), i32(inner)) + act + (first_row, partials, counters))
    launch_gemm(kernel, "linear_backward_input", tile, rows, inner, splits,
                (dx, dy, W, dx, i32(rows), i32(cols), i32(inner)) + act + (partials, counters))
    launch_gemm(kernel, "linear_backward_weight", tile, cols, inner, splits,
                (dW, db, dy, x, i32(rows), i32(cols), i32(inner), partials, counters))
    assert not counters.any()  # every split launch leaves its tile counters at zero for the next
    # the split paths ran: partial sums published where blocks share a tile, none where one block holds all or
    # the blocks are one cluster
    assert xp.isnan(partials).all() == (splits == slices or cluster_size(tile, splits) > 1)
    return [to_host(a) for a in (y, dx, dW, db)]


def check_gemm_tiles(kernel, xp, rows, cols, inner, splits, misaligned=False, clusters=True):
    """Every tile shape that can run ``splits`` (and its blocks as clusters, where ``clusters``) against NumPy;
    and they all give the same bits."""

    rng = np.random.default_rng(rows + splits)
    x, W = rng.standard_normal((rows, inner)).astype(np.float32), rng.standard_normal((cols, inner)).astype(np.float32)
    b, dy = rng.standard_normal(cols).astype(np.float32), rng.standard_normal((rows, cols)).astype(np.float32)
    on_device = [xp.asarray(a) for a in (x, W, b, dy)]
    if misaligned:  # operands 4 bytes past a 16-byte boundary: no float4 loads
        on_device = [xp.concatenate([xp.zeros(1, np.float32), a.ravel()])[1:].reshape(a.shape) for a in on_device]
        on_gpu = hasattr(on_device[0], "__cuda_array_interface__")
        interface = "__cuda_array_interface__" if on_gpu else "__array_interface__"
        assert all(getattr(a, interface)["data"][0] % 16 == 4 for a in on_device)
    tiles = [tile for tile in GEMM_TILES + (CLUSTER_TILES if clusters else ()) if tile_fits(tile, splits)]
    assert len(tiles) > 1
    results = {tile: gemm_products(kernel, xp, tile, splits, *on_device) for tile in tiles}
    x, W, b, dy = (a.astype(np.float64) for a in (x, W, b, dy))
    expected = (x @ W.T + b, dy @ W, dy.T @ x, dy.sum(0))
    for tile, ours in results.items():
        for got, exact, name in zip(ours, expected, ("Y", "dX", "dW", "db")):
            # float32 sums of up to ~1000 terms: within 1e-5 of the largest entry
            np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5 * np.abs(exact).max(), err_msg=f"{tile} {name}")
        for got, first in zip(ours, results[tiles[0]]):
            np.testing.assert_array_equal(got, first, err_msg=tile)
    return results


def test_host_launch_refuses_what_a_gpu_would_misread(host_kernels):
    """CuPy passes a scalar as its dtype's bytes and an array as a bare pointer: an int32 where the kernel
    reads a long long, or a float64 array behind a float*, is garbage on a GPU, so the emulator refuses both,
    as it refuses a launch configuration CUDA would (the GPU code's launches pass it in every test here)."""
    out = np.zeros(8, np.float32)
    fill = host_kernels("random", "uniform_fill")
    fill((1,), (32,), (out, np.int64(8), np.uint64(1), np.uint64(0)))
    assert out.all()
    with pytest.raises(TypeError, match="argument n must be a scalar of dtype int64"):
        fill((1,), (32,), (out, np.int32(8), np.uint64(1), np.uint64(0)))
    with pytest.raises(TypeError, match="must be a C-contiguous array of dtype float32"):
        fill((1,), (32,), (out.astype(np.float64), np.int64(8), np.uint64(1), np.uint64(0)))
    # and what a GPU refuses to launch: a block beyond the kernel's __launch_bounds__, an empty grid
    gemm = host_kernels("linear", "linear_backward_weight_32x32_4x4")  # __launch_bounds__(64)
    with pytest.raises(ValueError, match="at most 64 threads"):
        gemm((1, 1), (128,), ())
    with pytest.raises(ValueError, match="grid .* is empty"):
        fill((0,), (32,), (out, np.int64(0), np.uint64(1), np.uint64(0)))


GEMM_SHAPES = [(1, 1, 1), (37, 70, 129), (64, 64, 16), (130, 1, 65), (36, 68, 132)]  # the last: float4 loads


def test_the_grid_barrier_orders_the_probes_pieces(host_kernels):
    """kernels/step.cu's grid_sync_probe (examples/bench_grid_sync.py) on the CPU: 5 pieces in one launch, a grid
    barrier between each two, on 8 blocks that run at once (here a cluster's, on a GPU a cooperative launch's), leave
    the counts that a chain of 5 launches of one piece leaves, and that the order of the pieces gives; twice in a row,
    as a graph's replays, the barrier's count goes on from where it was."""
    from bench_grid_sync import expected_counts

    probe, blocks, threads = host_kernels("step", "grid_sync_probe"), 8, 32

    def run(launches, grid, cluster):
        count, sink, arrived = np.zeros((2, blocks * threads), np.uint32), np.zeros(blocks * threads, np.float32), \
            np.zeros(1, np.uint32)
        for first, pieces in launches:
            probe(grid, (threads,), (count, sink, arrived, np.int32(first), np.int32(pieces), np.int32(3)),
                  cluster=cluster)
        return count, int(arrived[0])

    for launches in ([(0, 5)], [(0, 5), (0, 5)]):
        expected = np.array(expected_counts(launches), np.uint32)[:, None]
        chain, _ = run([(first + p, 1) for first, pieces in launches for p in range(pieces)], (blocks,), 1)
        np.testing.assert_array_equal(chain, np.broadcast_to(expected, chain.shape))
        barriers, arrived = run(launches, (1, 1, blocks), blocks)
        np.testing.assert_array_equal(barriers, np.broadcast_to(expected, barriers.shape))
        assert arrived == 4 * blocks * len(launches)  # 4 barriers a launch, every block at each
    assert expected_counts([(0, 5)]) == [4, 5] and expected_counts([(0, 5), (0, 5)]) == [8, 9]


def test_the_emulated_threads_keep_room_on_their_stacks(host_kernels):
    """Each emulated CUDA thread is a fiber with a stack of its own (tests/cuda_host.h), an inaccessible page
    below it: after every tile shape of every GEMM kernel, split and not, the deepest of them has used less
    than a quarter of its 64 KB."""
    check_gemm_tiles(host_kernels, np, 37, 70, 129, 4)
    check_gemm_tiles(host_kernels, np, 36, 68, 132, 1)
    deepest = host_kernels.library.cuda_host_deepest_stack
    deepest.restype = ctypes.c_ulong
    print(f"\ndeepest fiber stack: {deepest()} bytes")
    assert 0 < deepest() < (1 << 16) // 4


def test_the_stand_in_for_cuda_refuses_a_race_between_streams(host_kernels):
    """Launches run one at a time here, so a race would not show in the numbers: FakeCuda refuses a launch
    that touches memory a launch on another stream writes (or writes what it reads) unless an event, a host
    synchronisation or CUDA's implicit legacy-stream synchronisation orders the two."""
    cuda = FakeCuda(host_kernels)
    cupy = fake_cupy(cuda)
    z, stats, dW, db, partials = (np.zeros(64, np.float32) for _ in range(5))

    def write_z():
        cuda.kernel("random", "normal_fill")((1,), (32,), (z, np.int64(64), np.uint64(1), np.uint64(0)))

    def read_z():
        cuda.kernel("linear", "head_reduce")((1,), (256,), (stats, dW, db, z, partials, np.int32(32), np.int32(8),
                                                           np.int32(1), np.int32(1)))

    main, side, free = cupy.cuda.Stream(), cupy.cuda.Stream(), cupy.cuda.Stream(non_blocking=True)
    with side:
        write_z()
    with main, pytest.raises(AssertionError, match="race: head_reduce may run while normal_fill .* its Z overlaps "
                                                   "the other's out"):
        read_z()
    joined = cupy.cuda.Event()
    with side:  # the fix: the reader's stream waits for an event recorded after the write
        write_z()
        joined.record()
    main.wait_event(joined)
    with main:
        read_z()
    with side, pytest.raises(AssertionError, match="race: normal_fill may run while head_reduce"):  # and back
        write_z()
    cuda.Device().synchronize()  # the host waited for everything: what follows is ordered after it
    with side:
        write_z()
    read_z()  # on the legacy stream, which waits for the blocking streams' work
    write_z()
    with side:
        read_z()  # and they for its work
    cuda.Device().synchronize()
    with free:
        write_z()
    with pytest.raises(AssertionError, match="race"):
        read_z()  # but not for a non-blocking stream's


@pytest.mark.parametrize("rows, cols, inner", GEMM_SHAPES)
@pytest.mark.parametrize("splits", [1, 3, 4, 6, 8, 16])
def test_gemm_tiles_on_ragged_shapes(host_kernels, rows, cols, inner, splits):
    """Every tile shape, with and without split-K (3 and 6 splits: uneven ranges, some empty where the inner
    size is small; 4 to 16: splits shared by a block's thread groups, in shared memory when one block holds
    them all, else together with the other blocks', the four-group tiles' too from 8 on; by the tile's blocks
    as one cluster where they number 2, 4 or 8), on tiles that straddle the matrix edges, against NumPy; and
    every tile shape gives the same bits, which is what lets the GPU pick the fastest."""
    check_gemm_tiles(host_kernels, np, rows, cols, inner, splits)


@pytest.mark.parametrize("splits", [1, 4])
def test_gemm_tiles_read_misaligned_operands(host_kernels, splits):
    """Operands whose rows would allow float4 loads but whose start is not 16-byte aligned are read one
    float at a time, with the same bits as the aligned ones read four at a time."""
    aligned = check_gemm_tiles(host_kernels, np, 36, 68, 132, splits)
    misaligned = check_gemm_tiles(host_kernels, np, 36, 68, 132, splits, misaligned=True)
    for tile in aligned:
        for a, b in zip(aligned[tile], misaligned[tile]):
            np.testing.assert_array_equal(a, b, err_msg=tile)


@pytest.mark.parametrize("splits", [1, 4])
def test_gemm_epilogues_apply_the_dropout_masks_of_the_reference(host_kernels, splits):
    """LeakyReLU + Dropout in the forward epilogue and their derivatives in the input gradient's, every tile
    shape, on widths that are no multiple of 4 and rows that start mid-batch: the epilogues draw four
    neighbours' uniforms from one or two Philox blocks, and each element gets its own word of the reference
    stream (philox_reference.step_uniforms), which the NumPy side applies here."""
    from minigan.cupy_step import ACT_LEAKY_DROPOUT, launch_gemm, split_scratch

    rows, cols, inner, first_row = 19, 37, 45, 3
    rng, f32, i32 = np.random.default_rng(splits), np.float32, np.int32
    seed, step, draw, slope, drop_p = 11, 4, 6, f32(0.2), 0.3
    x, W = rng.standard_normal((rows, inner)).astype(f32), rng.standard_normal((cols, inner)).astype(f32)
    b, dy = rng.standard_normal(cols).astype(f32), rng.standard_normal((rows, cols)).astype(f32)
    y_prev = rng.standard_normal((rows, inner)).astype(f32)  # the previous layer's (dropped-out) output
    act = (i32(ACT_LEAKY_DROPOUT), slope, f32(drop_p), f32(1 / (1 - drop_p)), np.uint64(seed),
           np.full(1, step, np.uint64), np.uint32(draw))
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    pre = x64 @ W64.T + b
    kept = step_uniforms(seed, step, draw, (rows, cols), first=first_row * cols) >= f32(drop_p)
    y_expected = np.where(kept, np.where(pre > 0, pre, 0.2 * pre) / (1 - drop_p), 0)
    kept_prev = step_uniforms(seed, step, draw, (rows, inner)) >= f32(drop_p)
    dx_expected = np.where(kept_prev, dy.astype(np.float64) @ W64 / (1 - drop_p) * np.where(y_prev > 0, 1, 0.2), 0)
    for tile in (tile for tile in GEMM_TILES + CLUSTER_TILES if tile_fits(tile, splits)):
        scratch = [split_scratch(r, c, splits, tile) for r, c in ((rows, cols), (rows, inner))]
        partials = np.zeros(max(1, *(p for p, _ in scratch)), f32)
        counters = np.zeros(max(1, *(c for _, c in scratch)), np.uint32)
        y, dx = np.full((rows, cols), np.nan, f32), np.full((rows, inner), np.nan, f32)
        launch_gemm(host_kernels, "linear_forward", tile, rows, cols, splits,
                    (y, x, W, b, i32(rows), i32(cols), i32(inner)) + act + (i32(first_row), partials, counters))
        launch_gemm(host_kernels, "linear_backward_input", tile, rows, inner, splits,
                    (dx, dy, W, y_prev, i32(rows), i32(cols), i32(inner)) + act + (partials, counters))
        np.testing.assert_allclose(y, y_expected, rtol=0, atol=1e-5 * np.abs(y_expected).max(), err_msg=tile)
        np.testing.assert_allclose(dx, dx_expected, rtol=0, atol=1e-5 * np.abs(dx_expected).max(), err_msg=tile)


def test_split_rule_fills_the_sms_and_keeps_whole_ranges():
    from minigan.cupy_step import MAX_SPLITS, split_k

    assert split_k(128, 784, 1024, 132) == 8  # 4 x 25 tiles of 32 x 32: 800 of the 1056 blocks' worth
    assert split_k(256, 1024, 784, 132) == 4  # 256 tiles: 8 splits would be 2048
    assert split_k(128, 512, 256, 132) == 4  # each split keeps 64 of the 256
    assert split_k(1024, 784, 256, 132) == 1  # 800 tiles fill the SMs already
    assert split_k(16, 16, 100, 132) == 2  # 100 >= 2 x MIN_SPLIT_INNER (48): slices 4 and 3
    assert split_k(16, 16, 90, 132) == 1  # too short to cut
    assert split_k(1, 1, 10**6, 132) == MAX_SPLITS


FAVOURITE = "32x32_4x4_s2"  # the stand-in timer's fastest wherever it can run (products of an even split count)


def favourite_timer(host_kernels, run_timed=True):
    """(kernel, timer, timed tiles): the host kernels, noting which ran, and a stand-in timer that notes the tile
    it timed and prefers FAVOURITE. It runs the launch, as the GPU timer does, unless ``run_timed`` is False
    (then a timed launch is only noted: the host kernels are slow at larger batches)."""
    timed_tiles, launched, timing = [], [], []

    def kernel(family, name):
        launched.append(name)
        run = host_kernels(family, name)
        return lambda *args: None if timing else run(*args)

    def timer(launch, reps):
        if not run_timed:
            timing.append(True)  # the launch below only notes its kernel
        launch()
        timing.clear()
        timed_tiles.append(tile_of(launched[-1]))
        return 0.5 if timed_tiles[-1] == FAVOURITE else 1.0

    return kernel, timer, timed_tiles


def timings(step, keys, split):
    """The tiles ``step`` times for ``keys`` (each split split[key]): TUNING_ROUNDS times every tile shape that
    can run it within the split-K scratch, sorted."""
    return sorted(tile for key in keys for tile in GEMM_TILES
                  if step._tile_runs(tile, *key[1:3], split[key])
                  for _ in range(TUNING_ROUNDS))


def test_tiles_chosen_by_timing_give_the_same_step(host_kernels):
    """The tuner times every tile shape that can run each product of the first step and keeps the fastest;
    the timing launches leave no trace, and the step is bit for bit the untimed one."""
    n = 16
    kernel, timer, timed_tiles = favourite_timer(host_kernels)
    data = np.random.default_rng(3).random((2, n, 784), dtype=np.float32)
    timed, untimed = fused_gan(1, seed=5), fused_gan(1, seed=5)
    timed_step, untimed_step = FusedStep(timed, np, kernel, timer=timer), FusedStep(untimed, np, host_kernels)
    for batch in data:
        np.testing.assert_array_equal(timed_step.train_step(batch), untimed_step.train_step(batch))
    split = {key: split_k(*key[1:], timed_step.sms) for key in timed_step.tiles}
    assert any(s % 2 == 0 for s in split.values()) and any(s == 1 for s in split.values())
    for key, tile in timed_step.tiles.items():  # the favourite where it can run, else the first tile shape
        assert tile == (FAVOURITE if split[key] % 2 == 0 else GEMM_TILES[0]), key
    assert set(untimed_step.tiles.values()) == {DEFAULT_TILE}
    # each product timed on the first step only, TUNING_ROUNDS times on every tile shape that can run it
    assert sorted(timed_tiles) == timings(timed_step, timed_step.tiles, split)
    for a, b in ((timed.G, untimed.G), (timed.D, untimed.D)):
        np.testing.assert_array_equal(a.params, b.params)
        np.testing.assert_array_equal(a.grads, b.grads)


def test_a_batch_written_into_batch_input_is_not_copied_and_trains_as_a_copied_one(host_kernels):
    """The fused step reads a batch in batch_input(n), the real rows of D's input, where it lies: the same bits
    as a batch copied in from elsewhere, and nothing writes over those rows but the next batch."""
    from minigan.backend import same_array

    data = np.random.default_rng(4).random((2, 16, 784), dtype=np.float32)
    gans = fused_gan(1, seed=5), fused_gan(1, seed=5)
    in_place, copied = (FusedStep(gan, np, host_kernels) for gan in gans)
    for batch in data:
        rows = in_place.batch_input(16)
        rows[...] = batch
        assert same_array(rows, in_place.buffers(16)["x"][:16])
        x = in_place.buffers(16)["x"]
        x.flags.writeable = False  # a copy into the rows would raise (the kernels write through pointers)
        np.testing.assert_array_equal(in_place.train_step(rows), copied.train_step(batch))
        x.flags.writeable = True
        np.testing.assert_array_equal(rows, batch)
    for model in ("G", "D"):
        np.testing.assert_array_equal(getattr(gans[0], model).params, getattr(gans[1], model).params)


def test_a_later_batch_size_takes_the_first_ones_tiles(host_kernels):
    """An epoch's smaller last batch takes, untimed, the tile of the product launched at the same place in the
    first batch size's step; where that tile cannot run the product's split count (here the weight gradients
    over 2n = 128 rows split in 2 at n = 64, and not at n = 32), the product is timed. Same bits either way. A
    batch size larger than the first is timed whole."""
    kernel, timer, timed_tiles = favourite_timer(host_kernels, run_timed=False)
    data = np.random.default_rng(13).random((96, 784), dtype=np.float32)
    timed, untimed = fused_gan(1, seed=5), fused_gan(1, seed=5)
    timed_step, untimed_step = FusedStep(timed, np, kernel, timer=timer), FusedStep(untimed, np, host_kernels)
    np.testing.assert_array_equal(timed_step.train_step(data[:64]), untimed_step.train_step(data[:64]))
    timed_first = len(timed_tiles)
    np.testing.assert_array_equal(timed_step.train_step(data[64:]), untimed_step.train_step(data[64:]))
    first, later = timed_step.first_products, timed_step.products
    assert len(first) == len(later) and [key[0] for key in first] == [key[0] for key in later]
    split = {key: split_k(*key[1:], timed_step.sms) for key in first + later}
    fits = [tile_fits(timed_step.tiles[a], split[b]) for a, b in zip(first, later)]
    assert any(fits) and not all(fits)
    for a, b, reused in zip(first, later, fits):
        assert timed_step.tiles[b] == (timed_step.tiles[a] if reused else GEMM_TILES[0]), (a, b)
    retimed = {b for b, reused in zip(later, fits) if not reused}
    assert sorted(timed_tiles[timed_first:]) == timings(timed_step, retimed, split)
    np.testing.assert_array_equal(timed.D.params, untimed.D.params)
    # a larger batch size than the first (a run resumed at an epoch's last step) is timed as the first was
    larger = FusedStep(fused_gan(1, seed=5), np, kernel, timer=timer)
    larger.train_step(data[64:])
    before, seen = len(timed_tiles), set(larger.tiles)  # (D's input gradients over 2n rows are G's at 2n)
    larger.train_step(data[:64])
    new = [key for key in dict.fromkeys(larger.products) if key not in seen]
    assert new and sorted(timed_tiles[before:]) == timings(larger, new, split)
    assert all(larger.tiles[key] == timed_step.tiles[key] for key in first)


@pytest.mark.parametrize("in_graph", [0.9, 1.1])
def test_the_graph_tuner_keeps_a_tile_only_where_the_graph_runs_faster(host_kernels, in_graph):
    """Every tile shape ties alone here, so each product gets its first tile shape, and the next
    STEP_TUNING_CANDIDATES are tried in the graph. Where the runner-up runs faster in the graph than alone (the
    stand-in timer: 0.9 against 1.0), the tuner keeps it on exactly the products it can run; where slower (1.1),
    on none. A trial's timing replays train on the batch at hand, yet the tuned step gives the untimed step's
    bits: the state is put back. A second batch size's graph is not tuned: it takes the first one's tuned
    tiles."""
    n, runner_up = 16, GEMM_TILES[1]
    cuda = FakeCuda(host_kernels, timings={}, graph_timings={runner_up: in_graph}, timed_replays=int(in_graph < 1))
    gan, untimed_gan = fused_gan(1, seed=5), fused_gan(1, seed=5)
    tuned = FusedStep(gan, fake_cupy(cuda), cuda.kernel, timer=cuda.timer)
    data = np.random.default_rng(4).random((2, n, 784), dtype=np.float32)
    tuned.train_step(data[0])  # eager: the tiles timed alone
    if in_graph < 1:  # the graph captured, tuned (the first timing replays it: a training step), then run
        untimed = FusedStep(untimed_gan, np, host_kernels)
        for batch in data:
            untimed.train_step(batch)
        np.testing.assert_array_equal(tuned.train_step(data[1]), untimed.stats)
        assert cuda.timed_replays == 0 and cuda.graph_launches == 2
    else:
        tuned.graph(n)
    can_run = {key for key, times in tuned.tile_times.items() if runner_up in times}
    assert can_run and all(len(times) > STEP_TUNING_CANDIDATES for times in tuned.tile_times.values())
    assert len(tuned.trials) == STEP_TUNING_CANDIDATES * len(tuned.tile_times)  # the next tiles of every product
    assert {key for key, tile in tuned.tiles.items() if tile != GEMM_TILES[0]} == (can_run if in_graph < 1 else set())
    assert all(trial["kept"] == (trial["ratio"] < 1) for trial in tuned.trials)
    if in_graph < 1:
        for ours, theirs in ((gan.G, untimed_gan.G), (gan.D, untimed_gan.D)):
            np.testing.assert_array_equal(ours.params, theirs.params)
            np.testing.assert_array_equal(ours.grads, theirs.grads)
            for (name, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
                np.testing.assert_array_equal(a, b, err_msg=name)
        for opt, untimed_opt in ((gan.opt_G, untimed_gan.opt_G), (gan.opt_D, untimed_gan.opt_D)):
            np.testing.assert_array_equal(opt.m, untimed_opt.m)
            np.testing.assert_array_equal(opt.v, untimed_opt.v)
        assert int(tuned.step[0]) == 2 and int(tuned.t_D[0]) == 2 and int(tuned.t_G[0]) == 2
        # a smaller batch's graph is not tuned: it takes the tuned tiles
        products, trials = dict(tuned.tiles), len(tuned.trials)
        tuned.train_step(data[0, : n // 2])
        tuned.graph(n // 2)
        assert len(tuned._graphs) == 2 and len(tuned.trials) == trials and set(tuned.tiles) > set(products)
        assert [tuned.tiles[key] for key in tuned.products] == [products[key] for key in tuned.first_products]
    else:
        assert set(tuned.tiles.values()) == {GEMM_TILES[0]}


def test_the_tile_search_keeps_a_tile_only_where_the_graph_beats_the_margin_in_every_round(host_kernels):
    """FusedStep.search_tiles (examples/search_tiles.py), from a step whose tiles were all taken (a tile table: none
    timed or tuned) and with the stand-in timer: a tile that takes half a GEMM's time in the graph is kept on
    exactly the products it can run; one that takes 0.97 of it, under 0.5% of the step, is within the 1% margin and
    kept nowhere. Every other tile that can run a product is tried once. The trials' replays train, yet the
    searched step gives the untimed step's bits: the state is put back. The step then replays the searched graph."""
    import bench_gemm

    n, rounds, fast, slight = 16, 3, "64x64_8x8", "64x64_4x4"  # slight is tried first (GEMM_TILES order)
    cuda = FakeCuda(host_kernels, timings={}, graph_timings={fast: 0.5, slight: 0.97}, timed_replays=1)
    gan, untimed_gan = fused_gan(1, seed=5), fused_gan(1, seed=5)
    searched = FusedStep(gan, fake_cupy(cuda), cuda.kernel, timer=cuda.timer)
    searched.tile_choices = GEMM_TILES[:4]  # (each trial is a capture: the test's time)
    start = dict.fromkeys(bench_gemm.step_products(n), DEFAULT_TILE)
    assert searched.take_tiles(start) == set(start)
    data = np.random.default_rng(4).random((3, n, 784), dtype=np.float32)
    searched.train_step(data[0])  # eager, nothing timed
    searched.train_step(data[1])  # captured, nothing to tune (no product timed)
    assert not searched.tile_times and not searched.trials and cuda.graph_launches == 1
    reported = []
    trials, overall = searched.search_tiles(n, rounds=rounds, replays=2, margin=0.01, report=reported.append)
    assert reported == trials and all(len(trial["ratios"]) == rounds for trial in trials)
    assert cuda.timed_replays == 0 and cuda.graph_launches == 2  # one timing replayed a graph: a training step

    def runs(tile, key):
        return searched._tile_runs(tile, key[1], key[2], split_k(*key[1:], searched.sms))

    can_run = {key for key in start if runs(fast, key)}
    assert can_run and {key for key, tile in searched.tiles.items() if tile != DEFAULT_TILE} == can_run
    assert {key: tile for key, tile in searched.tiles.items() if key in can_run} == dict.fromkeys(can_run, fast)
    assert not [trial for trial in trials if trial["tile"] == slight and trial["kept"]]
    assert any(trial["tile"] == slight and max(trial["ratios"]) < 1 for trial in trials)  # faster, within the margin
    assert len(trials) == sum(sum(runs(tile, key) for tile in searched.tile_choices) - 1 for key in start)
    assert max(overall) < 1 and all(trial["kept"] == (trial["tile"] == fast) for trial in trials)
    untimed = FusedStep(untimed_gan, np, host_kernels)
    for batch in data:
        untimed.train_step(batch)
    np.testing.assert_array_equal(searched.train_step(data[2]), untimed.stats)  # the searched graph, replayed
    assert cuda.graph_launches == 3 and len(searched._graphs) == 1
    for ours, theirs in ((gan.G, untimed_gan.G), (gan.D, untimed_gan.D)):
        np.testing.assert_array_equal(ours.params, theirs.params)
        for (name, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
            np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(gan.opt_D.v, untimed_gan.opt_D.v)


def test_step_noise_matches_its_reference_and_the_replay_sequence(host_kernels):
    from philox_reference import StepReplay

    step = np.zeros(1, np.uint64) + 5
    z = np.empty(1001, np.float32)
    host_kernels("random", "normal_step_fill")((((1001 + 3) // 4 + 255) // 256,), (256,),
                                               (z, np.int32(1001), np.uint64(42), step, np.uint32(3)))
    np.testing.assert_allclose(z, step_normals(42, 5, 3, 1001), rtol=1e-5, atol=1e-5)
    # StepReplay (the GPU tests' stand-in stream for the NumPy side) draws in the fused step's order
    replay = StepReplay(42, 1, 0)
    noise, d_draws, g_draws = draw_ids(1)
    for s in range(2):
        np.testing.assert_array_equal(replay.standard_normal((4, 100)), step_normals(42, s, noise[0], 400).reshape(4, 100))
        for d in d_draws[0] + g_draws:
            np.testing.assert_array_equal(replay.random((8, 3)), step_uniforms(42, s, d, (8, 3)).astype(np.float64))
    assert replay.step == 2


def test_a_steps_draws_are_its_own_for_every_k_the_fused_step_takes(host_kernels):
    """Each noise and dropout draw of a step has an id of its own, and none is draw 0, whose counters at step 0
    are the layer path's first blocks (philox.cuh: (block, draw, step) against (offset, 0, 0)); past MAX_K D
    updates the ids would repeat, and the fused step refuses the GAN."""
    def ids(k):
        noise, d_step, g_step = draw_ids(k)
        return noise + [d for draws in d_step for d in draws] + g_step

    for k in (1, 2, 3, MAX_K):
        drawn = ids(k)
        assert len(drawn) == 4 * k + 3 and len(set(drawn)) == len(drawn) and 0 < min(drawn) and max(drawn) < 2**32
    assert len(set(ids(MAX_K + 1))) < len(ids(MAX_K + 1))
    FusedStep(fused_gan(MAX_K, 1), np, host_kernels)
    with pytest.raises(ValueError, match=f"at most {MAX_K} D updates"):
        FusedStep(fused_gan(MAX_K + 1, 1), np, host_kernels)


@pytest.mark.parametrize("n", [13, 3, 64])
def test_head_kernels_on_ragged_shapes(host_kernels, n):
    """D's last layer fused with the sigmoid + BCE head (kernels/linear.cu: head_forward_backward, then
    head_reduce), D step and G step, against float64 NumPy; row counts that leave a block part empty, and a
    width that is no multiple of 4 (the previous layer's dropout mask, four neighbours at a time, ends mid-run)."""
    from minigan.cupy_step import ACT_LEAKY_DROPOUT, HEAD_ROWS

    rng, K, slope, drop_p, seed, step, draw = np.random.default_rng(n), 21, np.float32(0.2), 0.3, 5, 7, 2
    i32, f32 = np.int32, np.float32
    w, bias = rng.standard_normal(K).astype(f32) * 0.3, rng.standard_normal(1).astype(f32)
    for g_step in (0, 1):
        rows = n if g_step else 2 * n
        h = rng.standard_normal((rows, K)).astype(f32)
        h[: rows // 2] *= 4  # logits of both signs, some of them large
        dh, z = np.full((rows, K), np.nan, f32), np.full(rows, np.nan, f32)
        blocks = -(-rows // HEAD_ROWS)
        partials, stats = np.full((blocks, K + 1), np.nan, f32), np.zeros(4, f32)
        dW, db = np.full(K, np.nan, f32), np.full(1, np.nan, f32)
        host_kernels("linear", "head_forward_backward")(
            (blocks,), (256,), (dh, z, partials, h, w, bias, i32(rows), i32(n), i32(K), i32(g_step),
                                i32(ACT_LEAKY_DROPOUT), slope, f32(drop_p), f32(1 / (1 - drop_p)), np.uint64(seed),
                                np.full(1, step, np.uint64), np.uint32(draw)))
        host_kernels("linear", "head_reduce")((1,), (256,), (stats, dW, db, z, partials, i32(n), i32(K), i32(g_step),
                                                             i32(1)))
        h64 = h.astype(np.float64)
        logit = h64 @ w + bias[0]
        p = 1 / (1 + np.exp(-logit))
        target = np.ones(rows) if g_step else np.r_[np.ones(n), np.zeros(n)]
        dz = (p - target) / n
        np.testing.assert_allclose(z, logit, rtol=1e-5, atol=1e-5)
        kept = step_uniforms(seed, step, draw, (rows, K)) >= np.float32(drop_p)
        dropout = np.where(kept, 1 / (1 - drop_p), 0)
        np.testing.assert_allclose(dh, dz[:, None] * w * dropout * np.where(h > 0, 1, slope), rtol=1e-4, atol=1e-7)
        losses = -np.maximum(np.log(np.where(target == 1, p, 1 - p)), -100)
        if g_step:
            np.testing.assert_allclose(stats[1], losses.mean(), rtol=1e-5)
            assert np.isnan(dW).all()  # the G step leaves D's gradients alone
        else:
            np.testing.assert_allclose(stats[[0, 2, 3]], [losses[:n].mean() + losses[n:].mean(), p[:n].mean(),
                                                          p[n:].mean()], rtol=1e-5)
            np.testing.assert_allclose(dW, dz @ h64, rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(db, [dz.sum()], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rows, columns", [(13, 45), (2, 1), (128, 256), (200, 20)])
def test_batchnorm_kernels_on_ragged_shapes(host_kernels, rows, columns):
    """Columns that do not fill a block, batches that do not fill the row lanes or go past the rows a thread
    keeps in registers (128): as the NumPy BatchNorm1d followed by LeakyReLU's backward."""
    from minigan.layers import BatchNorm1d

    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, columns)) * 2 + 1).astype(np.float32)
    a = np.maximum(x, np.float32(0.2) * x)  # a LeakyReLU output, as the fused step feeds BatchNorm
    norm = BatchNorm1d(columns)
    norm.params["gamma"][...] = rng.uniform(0.5, 1.5, columns)
    norm.params["beta"][...] = rng.standard_normal(columns)
    gamma, beta = norm.params["gamma"].copy(), norm.params["beta"].copy()
    rm, rv = np.zeros(columns, np.float32), np.ones(columns, np.float32)
    y, x_hat, inv_std = np.empty_like(a), np.empty_like(a), np.empty(columns, np.float32)
    blocks = -(-columns // BN_COLUMNS)
    host_kernels("layers", "batchnorm_forward")((blocks,), (256,), (y, x_hat, inv_std, a, gamma, beta, rm, rv,
                                                np.int32(rows), np.int32(columns), np.float32(1e-5), np.float32(0.1)))
    expected = norm.forward(a)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, norm.buffers["running_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, norm.buffers["running_var"], rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal((rows, columns)).astype(np.float32)
    dpre, dgamma, dbeta = np.empty_like(dy), np.empty(columns, np.float32), np.empty(columns, np.float32)
    host_kernels("layers", "batchnorm_leaky_backward")((blocks,), (256,), (dpre, dgamma, dbeta, dy, x_hat, inv_std, gamma,
                                                       a, np.int32(rows), np.int32(columns), np.float32(0.2)))
    dx = norm.backward(dy)
    np.testing.assert_allclose(dgamma, norm.grads["gamma"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dbeta, norm.grads["beta"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dpre, dx * np.where(a > 0, 1, np.float32(0.2)), rtol=1e-4, atol=1e-5)


@functools.cache
def _libm_fmaf():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.fmaf.restype, libm.fmaf.argtypes = ctypes.c_float, [ctypes.c_float] * 3
    return np.vectorize(libm.fmaf, otypes=[np.float32])


def fmaf(a, b, c):
    """a * b + c rounded once, elementwise in float32: C99's fmaf from libm, as a GPU's fma.rn.f32."""
    return _libm_fmaf()(a, b, c)


def check_batchnorm_rounds_with_fused_multiply_adds(kernel, xp):
    """kernels/layers.cu's batchnorm_forward, through ``kernel(family, name)`` on ``xp`` arrays (the host-compiled
    kernels on NumPy, or CuPy's): the variance of 128 rows (each of 32 lanes sums its 4 rows in order, then the
    lanes are added in order) is the one exact fused multiply-adds give, to the last bit of 1 / sqrt(var + eps),
    and not the one that a multiply rounded before its add gives; and each running statistic is its old value
    times 1 - momentum fused with the new one's share, rounded before (the way nvcc fused it, written out)."""
    rows, columns, eps, momentum = 128, 256, np.float32(1e-5), np.float32(0.1)
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, columns)) * 2 + 1).astype(np.float32)
    mean_before, var_before = rng.standard_normal(columns).astype(np.float32), rng.random(columns).astype(np.float32)
    a = np.maximum(x, np.float32(0.2) * x)
    lanes = a.reshape(4, 32, columns)  # lanes[u, l]: row l + 32 u, the u-th of lane l

    def add_lanes(per_lane):  # the 32 lanes' sums in order, in float32
        total = np.zeros(columns, np.float32)
        for lane_sum in per_lane:
            total = total + lane_sum
        return total

    sums = np.zeros((32, columns), np.float32)
    for rows_u in lanes:
        sums = sums + rows_u
    mu = add_lanes(sums) / np.float32(rows)

    def variance(fused):
        squares = np.zeros((32, columns), np.float32)
        for rows_u in lanes:
            d = rows_u - mu
            squares = fmaf(d, d, squares) if fused else squares + d * d
        return add_lanes(squares) / np.float32(rows)

    var = variance(fused=True)
    ones, zeros = xp.ones(columns, np.float32), xp.zeros(columns, np.float32)
    out = [xp.empty(a.shape, np.float32), xp.empty(a.shape, np.float32), xp.empty(columns, np.float32)]
    running_mean, running_var = xp.array(mean_before), xp.array(var_before)  # copies: the kernel updates them
    kernel("layers", "batchnorm_forward")((columns // BN_COLUMNS,), (256,), (
        *out, xp.asarray(a), ones, zeros, running_mean, running_var, np.int32(rows), np.int32(columns), eps, momentum))
    np.testing.assert_array_equal(to_host(out[2]), np.float32(1) / np.sqrt(var + eps))
    assert (to_host(out[2]) != np.float32(1) / np.sqrt(variance(fused=False) + eps)).any()  # the data tells them apart
    keep, unbiased = np.float32(1) - momentum, momentum * np.float32(rows) / np.float32(rows - 1)
    np.testing.assert_array_equal(to_host(running_mean), fmaf(mean_before, keep, momentum * mu))
    np.testing.assert_array_equal(to_host(running_var), fmaf(var_before, keep, unbiased * var))
    assert (to_host(running_var) != fmaf(unbiased, var, var_before * keep)).any()  # fused the other way


def test_batchnorm_kernels_round_as_a_gpu(host_kernels):
    """kernels/layers.cu adds its products as fused multiply-adds, as nvcc compiles them, so the CPU build rounds as
    a GPU does (g++ left the variance's squares a multiply and an add until 2026-11-28); tests/test_cupy.py checks
    the same on a GPU."""
    check_batchnorm_rounds_with_fused_multiply_adds(host_kernels, np)


def test_layer_path_random_kernels_match_their_reference(host_kernels):
    """uniform_fill / normal_fill (minigan.cupy_backend.PhiloxRng) draw the reference stream from any offset."""
    from philox_reference import normals, uniforms

    for n, offset in ((1, 0), (1003, 7), (4096, 2**33)):
        u, z = np.empty(n, np.float32), np.empty(n, np.float32)
        grid = (((n + 3) // 4 + 255) // 256,)
        host_kernels("random", "uniform_fill")(grid, (256,), (u, np.int64(n), np.uint64(99), np.uint64(offset)))
        host_kernels("random", "normal_fill")(grid, (256,), (z, np.int64(n), np.uint64(99), np.uint64(offset)))
        np.testing.assert_array_equal(u, uniforms(99, offset, n))
        np.testing.assert_allclose(z, normals(99, offset, n), rtol=1e-5, atol=1e-5)


def check_adam_rounds_with_fused_multiply_adds(kernel, xp):
    """kernels/optim.cu's adam_step, through ``kernel(family, name)`` on ``xp`` arrays: its quads (16-byte loads and
    stores) and its element-by-element path (taken where a buffer is not 16-byte aligned, and past the last whole
    quad) give, to the last bit, Adam written as fused multiply-adds: m + (1 - beta1)(g - m) fused,
    beta2 v fused with (1 - beta2) g^2 rounded before, sqrt(v) inv_scale + eps_scaled fused. Neither the other
    fusing of v's two products nor none at all gives those bits, and all are within float32 rounding of
    minigan.optim.Adam. The fused step's counted Adam strides over any grid to the same bits."""
    from minigan.optim import Adam

    rng = np.random.default_rng(5)
    lr, (beta1, beta2), eps, t = 2e-4, (0.5, 0.999), 1e-8, 7
    step_size = lr / (1 - beta1**t)
    one_minus_beta1, beta2_, one_minus_beta2, inv_scale, eps_scaled = constants = (
        np.float32(1 - beta1), np.float32(beta2), np.float32(1 - beta2),
        np.float32(1 / (np.sqrt(1 - beta2**t) * step_size)), np.float32(eps / step_size))
    for n in (1, 6, 1003, 4099):  # 4099: 1025 quads, over the 512 threads of the counted kernel's grid below
        p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        m, v = rng.standard_normal(n).astype(np.float32) * 1e-2, rng.random(n).astype(np.float32) * 1e-3
        m_next = fmaf(one_minus_beta1, g - m, m)
        v_next = {"as written": fmaf(beta2_, v, one_minus_beta2 * (g * g)),
                  "fused the other way": fmaf(one_minus_beta2, g * g, beta2_ * v),
                  "not fused": beta2_ * v + one_minus_beta2 * (g * g)}
        expected = [p - m_next / fmaf(np.sqrt(v_next["as written"]), inv_scale, eps_scaled), g, m_next,
                    v_next["as written"]]
        for shift in (0, 1):  # buffers 16-byte aligned (quads), then one float past (floats)
            memory = [xp.full(n + shift + 4, 7.0, np.float32) for _ in range(4)]  # 7.0: beyond the buffers
            state = [block[shift:shift + n] for block in memory]
            for buffer, value in zip(state, (p, g, m, v)):
                buffer[...] = xp.asarray(value)
            kernel("optim", "adam_step")((-(-n // 4 // 256),), (256,), (*state, np.int64(n), *constants))
            assert all((to_host(block[:shift]) == 7.0).all() and (to_host(block[shift + n:]) == 7.0).all()
                       for block in memory)
            for name, got, want in zip("pgmv", state, expected):
                np.testing.assert_array_equal(to_host(got), want, err_msg=f"{name}, buffers shifted by {shift}")
        if n > 1000:  # the data tells the roundings apart
            assert all((v_next[other] != expected[3]).any() for other in ("fused the other way", "not fused"))
        reference = Adam(p.copy(), g.copy(), lr=lr, betas=(beta1, beta2), eps=eps)
        reference.m[...], reference.v[...], reference.t = m, v, t - 1
        reference.step()
        np.testing.assert_allclose(expected[0], reference.params, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(expected[2], reference.m, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(expected[3], reference.v, rtol=1e-6, atol=1e-12)
        # the counted kernel: step t from the device counter t - 2 and t_offset 1, on too few threads for a quad each
        state = [xp.array(x) for x in (p, g, m, v)]  # copies: the kernel updates them
        kernel("optim", "adam_step_counted")((2,), (256,), (*state, np.int64(n), np.float64(lr), np.float64(beta1),
                                                          np.float64(beta2), np.float64(eps),
                                                          xp.asarray(np.array([t - 2], np.int64)), np.int32(1)))
        for name, counted, want in zip("pgmv", state, expected):
            np.testing.assert_array_equal(to_host(counted), want, err_msg=f"{name}, counted")


def test_adam_kernels_round_as_a_gpu(host_kernels):
    """kernels/optim.cu writes Adam's sums of products as the fused multiply-adds nvcc made of its quads, in both of
    its paths, so the CPU build (which g++ left unfused until 2026-11-28) rounds as a GPU does, and the quads as the
    element-by-element path does; tests/test_cupy.py checks the same on a GPU."""
    check_adam_rounds_with_fused_multiply_adds(host_kernels, np)


def test_the_h200s_tile_table_names_every_product_of_the_step_with_a_tile_it_can_run():
    """minigan/tiles/NVIDIA-H200.jsonl (the tiles examples/search_tiles.py found fastest in the step's graph, run 22):
    one tile for each of the 22 products of a step of batch 128, a tile the fused step has, whose groups and cluster
    fit the product's split count on the H200's 132 SMs. (A tile it could not run would be timed instead, and the
    table's gain lost.)"""
    import bench_gemm

    from minigan.cupy_step import read_tiles, tile_table

    table = read_tiles(tile_table("NVIDIA H200"))
    assert set(table) == set(bench_gemm.step_products(128))
    for (_, rows, cols, inner), tile in table.items():
        assert tile in GEMM_TILES + CLUSTER_TILES and tile_fits(tile, split_k(rows, cols, inner, 132)), (rows, tile)
