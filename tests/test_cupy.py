"""The CuPy backend against the NumPy reference, op by op and step by step (needs an NVIDIA GPU).

Every test here is marked ``gpu`` and skips where CuPy or a CUDA device is missing; without a GPU,
tests/test_kernels.py still compiles every kernel and checks the random stream's arithmetic on the host.
"""

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Replay, align_state, assert_step_matches, parameters_before, runs_beside_numpy, use_rng
from philox_reference import normals, uniforms
from test_fused_step import GEMM_SHAPES, check_gemm_tiles

try:
    import cupy

    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # no CuPy, no driver or no device
    cupy, HAVE_GPU = None, False

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and an NVIDIA GPU")]

from minigan import cupy_backend  # noqa: E402
from minigan.backend import get_backend  # noqa: E402
from minigan.gan import GAN  # noqa: E402



class Recorder:
    """Wraps a backend's random stream and keeps a host copy of every draw, in order."""

    def __init__(self, rng, backend):
        self.rng, self.backend, self.draws = rng, backend, []

    def random(self, shape, dtype=np.float64):
        a = self.rng.random(shape, dtype)
        self.draws.append(self.backend.to_numpy(a))
        return a

    def standard_normal(self, shape, dtype=np.float64):
        a = self.rng.standard_normal(shape, dtype)
        self.draws.append(self.backend.to_numpy(a))
        return a

    def permutation(self, n):
        return self.rng.permutation(n)


def test_random_stream_matches_the_philox_reference():
    check_random_stream_matches_the_philox_reference(cupy)


def check_random_stream_matches_the_philox_reference(cupy):
    """PhiloxRng on ``cupy``: uniforms bit for bit and normals to float32 rounding of philox_reference, each draw
    from where the last one ended."""
    rng = get_backend("cupy").rng(1234)
    u = cupy.asnumpy(rng.random((1000, 3), np.float32))
    np.testing.assert_array_equal(u.reshape(-1), uniforms(1234, 0, 3000))  # bit for bit
    z = cupy.asnumpy(rng.standard_normal((999,), np.float32))  # from block 750 on
    np.testing.assert_allclose(z, normals(1234, 750, 999), rtol=2e-5, atol=2e-5)
    big = cupy.asnumpy(rng.standard_normal((1_000_000,), np.float32))
    assert abs(big.mean()) < 0.005 and abs(big.std() - 1) < 0.005
    again = cupy.asnumpy(rng.standard_normal((999,), np.float32))
    assert not np.array_equal(again, z)  # the offset moved on: fresh numbers each draw
    wide = cupy.asnumpy(rng.random((5,), np.float64))  # drawn in float32, handed back in the dtype asked for
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, uniforms(1234, 750 + 250 + 250_000 + 250, 5))  # after 3000, 999, 10^6, 999


def test_random_stream_state_round_trips():
    check_random_stream_state_round_trips(cupy)


def check_random_stream_state_round_trips(cupy):
    """A PhiloxRng given another's state draws what that one draws next, shuffles included."""
    backend = get_backend("cupy")
    a = backend.rng(5)
    a.random((10,), np.float32)
    state = backend.rng_state(a)
    first = cupy.asnumpy(a.standard_normal((100,), np.float32))
    b = backend.rng(0)
    backend.set_rng_state(b, state)
    np.testing.assert_array_equal(cupy.asnumpy(b.standard_normal((100,), np.float32)), first)
    assert np.array_equal(a.permutation(50), b.permutation(50))


def test_gather_batch_matches_numpy():
    cpu, gpu = get_backend("numpy"), get_backend("cupy")
    images = np.random.default_rng(0).integers(0, 256, (300, 784), dtype=np.uint8)
    perm = np.random.default_rng(1).permutation(300)
    out_cpu = np.empty((128, 784), np.float32)
    out_gpu = cupy.empty((128, 784), np.float32)
    for start in (0, 128, 256):
        count = min(128, 300 - start)
        expected = cpu.gather_batch(images, perm, start, count, out_cpu)
        got = gpu.gather_batch(gpu.upload_images(images), cupy.asarray(perm), start, count, out_gpu)
        np.testing.assert_array_equal(cupy.asnumpy(got), expected)


def test_fused_adam_matches_numpy():
    diff = check_adam_kernel_matches_numpy(cupy)
    print(f"\nfused Adam vs NumPy after 4 steps: max |diff| {diff:.2e}")


def check_adam_kernel_matches_numpy(cupy, on_device=contextlib.nullcontext):
    """Adam on ``cupy``'s arrays (one launch of kernels/optim.cu::adam_step a step) against Adam on NumPy's, over
    four steps of gradients from 1e-8 to 1; each device step runs inside ``on_device()``. Returns the largest
    difference of the parameters."""
    from minigan.optim import Adam

    rng = np.random.default_rng(2)
    p = rng.standard_normal(100_003).astype(np.float32)
    grads = [rng.standard_normal(p.size).astype(np.float32) * 10.0 ** rng.integers(-8, 1) for _ in range(4)]
    p_gpu, g_gpu = cupy.asarray(p), cupy.zeros(p.size, np.float32)
    g_cpu = np.zeros_like(p)
    cpu, gpu = Adam(p, g_cpu), Adam(p_gpu, g_gpu)
    for g in grads:
        g_cpu[...] = g
        g_gpu[...] = cupy.asarray(g)
        cpu.step()
        with on_device():
            gpu.step()
    diff = float(np.abs(cupy.asnumpy(p_gpu) - p).max())
    assert diff < 1e-6
    np.testing.assert_allclose(cupy.asnumpy(gpu.v), cpu.v, rtol=1e-5, atol=1e-30)
    return diff


def test_batchnorm_kernels_round_with_fused_multiply_adds_on_the_gpu():
    """nvcc fuses BatchNorm's multiply-adds (kernels/layers.cu writes them as fmaf), so the GPU rounds the variance
    to the last bit as the CPU build does (tests/test_fused_step.py)."""
    from test_fused_step import check_batchnorm_rounds_with_fused_multiply_adds

    check_batchnorm_rounds_with_fused_multiply_adds(cupy_backend.kernel, cupy)


def test_adam_kernels_round_with_fused_multiply_adds_on_the_gpu():
    """Adam's quads and its element-by-element path give the same bits on a GPU, those of kernels/optim.cu's fmaf
    (nvcc fused the element path's beta2 v + (1 - beta2) g^2 the other way until 2026-11-28), as the CPU build
    does (tests/test_fused_step.py)."""
    from test_fused_step import check_adam_rounds_with_fused_multiply_adds

    check_adam_rounds_with_fused_multiply_adds(cupy_backend.kernel, cupy)


@pytest.mark.skipif(HAVE_GPU and cupy.__version__ == "emulated",
                    reason="the emulated GPU runs the kernels compiled for the CPU, not CuPy's modules")
def test_a_gan_has_every_part_of_the_kernels_compiled_and_each_kernel_from_its_part():
    """CuPy's compiler, through compile_kernels' threads: a GAN on the GPU has every part of kernels/*.cu
    compiled (or loaded from CuPy's cache), and kernel() takes each kernel from its part's module."""
    gan = GAN(get_backend("cupy"), seed=0)
    assert gan.fused is not None
    kernels = cupy_backend.KERNELS
    parts = {(kernels, path.stem, part) for path in kernels.glob("*.cu") for part in cupy_backend.module_parts(path.stem)}
    assert parts <= set(cupy_backend._modules) and len(parts) > 10
    for family, name in (("linear", "linear_forward_64x64_8x8"), ("linear", "head_reduce"), ("optim", "adam_step")):
        part = cupy_backend.module_part(family, name)
        assert cupy_backend.kernel(family, name).code == cupy_backend._modules[(kernels, family, part)].code


@pytest.mark.parametrize("k", [1, 2])
def test_layer_path_steps_match_numpy(k):
    """The layers on CuPy arrays (the fused step switched off): same state, batches, noise and dropout
    masks give the same losses and parameters as on NumPy, step by step."""
    worst = check_layer_path_matches_numpy(cupy, k)
    print(f"\ncupy layers vs numpy, k={k}, 3 steps: gradients and updates {worst:.1e} apart at most (relative L2)")


def check_layer_path_matches_numpy(cupy, k, rows=64, steps=3, on_device=contextlib.nullcontext):
    """A float32 GAN on the CuPy backend with its fused step switched off (the layer path: NumPy's layers on
    ``cupy``'s arrays, PhiloxRng's draws, the Adam kernel) against one on NumPy fed the same draws, each of
    ``steps`` steps from the same state; each device step runs inside ``on_device()``. Returns
    assert_step_matches' largest difference."""
    cpu, gpu = GAN(get_backend("numpy"), k=k, seed=3), GAN(get_backend("cupy"), k=k, seed=3)
    gpu.fused = None
    np.testing.assert_array_equal(cupy.asnumpy(gpu.G.params), cpu.G.params)  # weights drawn on the host
    recorder = Recorder(gpu.rng, gpu.backend)
    use_rng(gpu, recorder)
    data = np.random.default_rng(4).random((steps, rows, 784), dtype=np.float32)
    worst = 0.0
    for batch in data:
        align_state(cpu, gpu)  # each step compared from the same state
        before = parameters_before(cpu)
        recorder.draws.clear()
        with on_device():
            stats_gpu = cupy.asnumpy(gpu.train_step(cupy.asarray(batch)))
        use_rng(cpu, Replay(recorder.draws))
        stats_cpu = cpu.train_step(batch)
        np.testing.assert_allclose(stats_gpu, stats_cpu, rtol=1e-4)
        worst = max(worst, assert_step_matches(gpu, cpu, before))
        for ours, ref in ((gpu.G, cpu.G), (gpu.D, cpu.D)):
            for (name, a), (_, b) in zip(ours.named_buffers(), ref.named_buffers()):
                np.testing.assert_allclose(cupy.asnumpy(a), b, rtol=1e-4, atol=1e-6, err_msg=name)
    return worst


@pytest.mark.parametrize("k", [1, 2])
def test_fused_steps_match_numpy(k):
    """The fused step on the GPU against the NumPy layers, fed the same noise and masks, each step from the
    same state (as tests/test_fused_step.py does with the kernels compiled for the CPU)."""
    from test_fused_step import replay_draws

    n, steps = 128, 3
    gpu, cpu = GAN(get_backend("cupy"), k=k, seed=3), GAN(get_backend("numpy"), k=k, seed=3)
    assert gpu.fused is not None
    data = np.random.default_rng(4).random((steps, n, 784), dtype=np.float32)
    worst = 0.0
    for step in range(steps):
        align_state(cpu, gpu)  # each step compared from the same state
        before = parameters_before(cpu)
        stats = cupy.asnumpy(gpu.train_step(cupy.asarray(data[step])))
        use_rng(cpu, Replay(replay_draws(gpu.fused, n, step)))
        np.testing.assert_allclose(stats, cpu.train_step(data[step]), rtol=1e-4, atol=1e-6)
        worst = max(worst, assert_step_matches(gpu, cpu, before))
    print(f"\nfused cupy step vs numpy layers, k={k}, {steps} steps: gradients and updates {worst:.1e} apart at "
          f"most (relative L2)")


def test_epochs_on_both_backends_track_each_other(tmp_path):
    """Three epochs on 1,000 images, the fused GPU step against the NumPy layers drawing the same numbers."""
    runs = runs_beside_numpy(tmp_path, n=1000, batch_size=100, epochs=3)
    losses = {name: np.array([[h["loss_D"], h["loss_G"]] for h in run.history]) for name, run in runs.items()}
    print(f"\nper-epoch losses, cupy:\n{losses['cupy']}\nnumpy:\n{losses['numpy']}")
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-2)


def test_cli_trains_on_the_gpu_and_resumes_on_the_cpu(tmp_path):
    from test_cli import final_arrays, run_cli
    from test_data import write_mnist

    # on the emulated GPU, the programs see it too (tests/emulated_gpu/sitecustomize.py)
    gpu = [Path(__file__).parent / "emulated_gpu"] if cupy.__version__ == "emulated" else []
    write_mnist(tmp_path, n=300)
    out = tmp_path / "run"
    proc = run_cli("train_mnist.py", "--backend", "cupy", "--data-dir", tmp_path, "--epochs", 2,
                   "--batch-size", 64, "--out", out, pythonpath=gpu, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "cupy" in proc.stdout
    proc = run_cli("train_mnist.py", "--backend", "numpy", "--data-dir", tmp_path, "--resume", out, "--epochs", 3)
    assert proc.returncode == 0, proc.stderr
    assert int(final_arrays(out)["epoch"]) == 3
    proc = run_cli("sample.py", "--backend", "cupy", "--checkpoint", out, "--n", 16, "--out", tmp_path / "s.npy",
                   pythonpath=gpu)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("rows, cols, inner", GEMM_SHAPES + [(256, 1024, 784), (128, 784, 1024)])
@pytest.mark.parametrize("splits", [1, 3, 8])
def test_gemm_tiles_on_the_gpu(rows, cols, inner, splits):
    """Every tile shape and split-K on the device (blocks really concurrent: the split-K hand-over, through
    global memory or, launched as clusters, through their shared memory) against NumPy, bit-identical across
    tile shapes, as tests/test_fused_step.py checks on the CPU."""
    from minigan.cupy_backend import dependent_kernel, dependent_launch_available, kernel

    clusters = dependent_launch_available(cupy)  # (cluster launches go through the same cuLaunchKernelEx)
    check_gemm_tiles(dependent_kernel if clusters else kernel, cupy, rows, cols, inner, splits, clusters=clusters)


def test_captured_graph_replays_equal_eager_steps_and_draw_fresh_numbers():
    """The same steps run eagerly and as replays of one captured CUDA graph give bit-identical parameters
    (each chose its GEMM tiles by its own timings, the graph's in the graph too: any choice gives the same
    bits, and the graph's tuning puts back the state its trials trained); each replay reads the step counter
    from device memory, so it draws new noise and masks."""
    data = cupy.asarray(np.random.default_rng(6).random((3, 128, 784), dtype=np.float32))
    eager, graphed = GAN(get_backend("cupy"), seed=8), GAN(get_backend("cupy"), seed=8)
    eager.fused.use_graph, graphed.fused.use_graph = False, True
    for gan in (eager, graphed):  # not the GPU's tile table: each times and tunes its own
        gan.fused.take_tiles({})
    noises = []
    for batch in data:
        eager.train_step(batch)
        graphed.train_step(batch)
        noises.append(cupy.asnumpy(graphed.fused.buffers(128)["z"][0]))
    assert len(graphed.fused._graphs) == 1  # a first eager step (tiles timed), then captured once, replayed
    # and tuned: the trials' replays trained on the second batch, and the state was put back (the bits below)
    kept = [trial for trial in graphed.fused.trials if trial["kept"]]
    print(f"\ngraph tuning: {len(graphed.fused.trials)} trials, {len(kept)} kept, ratios "
          f"{sorted(round(trial['ratio'], 3) for trial in graphed.fused.trials)}")
    if cupy_backend.priority_graphs_available():  # kept each kernel's priority: the driver took the graph
        assert isinstance(graphed.fused._graphs[128], cupy_backend.PriorityGraph)
    np.testing.assert_array_equal(cupy.asnumpy(graphed.G.params), cupy.asnumpy(eager.G.params))
    np.testing.assert_array_equal(cupy.asnumpy(graphed.D.params), cupy.asnumpy(eager.D.params))
    assert not np.array_equal(noises[0], noises[1]) and not np.array_equal(noises[1], noises[2])


def test_a_gpu_with_a_tile_table_takes_every_tile_of_it():
    """minigan/tiles/: on a GPU that has a table (the H200), a step of batch 128 runs the table's tile on each of its
    22 products, every one of which can run there, and times and tunes none."""
    from minigan.cupy_step import device_name, read_tiles, tile_table

    table = tile_table(device_name(cupy))
    if not table.exists():
        pytest.skip(f"no tile table for {device_name(cupy)} (minigan/tiles/)")
    gan = GAN(get_backend("cupy"), seed=3)
    batch = cupy.asarray(np.random.default_rng(3).random((128, 784), dtype=np.float32))
    for _ in range(2):  # eager, then captured
        gan.train_step(batch)
    products = set(gan.fused.products)
    assert gan.fused.table == table and not gan.fused.tile_times and not gan.fused.trials
    assert {key: gan.fused.tiles[key] for key in products} == read_tiles(table) and len(products) == 22


def test_profile_step_times_every_launch_of_a_step():
    from profile_step import profile, replay_ms  # examples/ is on the path (conftest)

    gan = GAN(get_backend("cupy"), seed=1)
    real = cupy.asarray(np.random.default_rng(0).random((64, 784), dtype=np.float32))
    graph_ms = replay_ms(gan, real, replays=5)
    launches = profile(gan, real)
    names = [name for name, *_ in launches]
    # D over the n real rows (3 GEMMs), noise, G (4 GEMMs + 3 BatchNorms), D over the n fake rows (3 GEMMs),
    # head over 2n (2), D backward (5 GEMMs), Adam (2 parts), D over n (3 + 2 head + 3 input gradients),
    # G backward (7 GEMMs + 3 BatchNorms), Adam (2 parts), step counters
    assert len(launches) == 44, names
    assert names[0].startswith("linear_forward") and names[3] == "normal_step_fill" and names[-1] == "step_finish"
    assert all(us > 0 for *_, us in launches) and graph_ms > 0
    # the critical path: every launch but D's forward pass over the real rows, the heads' reductions, the
    # weight gradients beside an input gradient and the two Adam ranges the side stream takes
    streams = [stream for *_, stream, _ in launches]
    assert streams[:3] == ["side"] * 3 and streams.count("main") == 32 and streams[-1] == "main"
    assert gan.fused.use_graph and gan.fused.side is not None  # restored for training


def test_profile_timeline_finds_every_launch_in_the_replayed_graph():
    """examples/profile_step.py --timeline: torch's profiler records our graph's kernels, each replay's the step's
    launches (graph_timeline refuses them otherwise; it prints whether their graph node ids gave their order)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    from profile_step import graph_timeline, profile, traced_kernels

    gan = GAN(get_backend("cupy"), seed=1)
    real = cupy.asarray(np.random.default_rng(0).random((64, 784), dtype=np.float32))
    for _ in range(3):  # the graph captured and tuned
        gan.train_step(real)
    launches = profile(gan, real)
    figures, summary = graph_timeline(traced_kernels(gan, real, 5),
                                      [(name, stream) for name, _, _, stream, _ in launches])
    print(f"\ntimeline: {summary}")
    assert summary["replays"] == 5 and len(figures) == len(launches) == 44
    assert all(launch["us"] > 0 and launch["end_us"] <= summary["span_us"] for launch in figures)
    assert 0 < summary["span_us"] <= summary["period_us"]


def test_bench_launch_counts_every_launch_both_ways(capsys):
    """examples/bench_launch.py: the chains of launches, CuPy's and the dependent ones, each counted every launch
    (the order held), and the fused step's graph ran all three ways."""
    from bench_launch import main

    assert main(["--launches", "4", "--replays", "3", "--rounds", "1", "--batch", "16"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    chains = {(line["chain"], line["blocks"]) for line in lines if "chain" in line}
    assert chains == {(path, blocks) for path in ("cupy", "dependent") for blocks in (1, 1024)}
    assert {line["step"] for line in lines if "step" in line} == {"cupy", "dependent", "one_priority"}
    assert {"step_ratio_dependent_vs_cupy", "step_ratio_priorities_vs_one"} <= lines[-1].keys()


@pytest.mark.skipif(HAVE_GPU and cupy.__version__ == "emulated",
                    reason="the probe launches through the driver (cuLaunchKernelEx), which the emulated GPU has not")
def test_bench_grid_sync_orders_every_piece_each_way(capsys):
    """examples/bench_grid_sync.py: the chain of launches, and the cooperative launches with their grid barriers
    (unless the driver refused them, which it prints), captured alone and beside a side stream, each left the counts
    that the order of its pieces gives (else it stops with an error), and it prints each design's slope."""
    from bench_grid_sync import DESIGNS, main

    assert main(["--blocks", "8", "--work", "4", "--pieces", "3", "--replays", "3", "--rounds", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    print("\n".join(json.dumps(line) for line in lines))
    graphs = {(line["design"], line["pieces"], line["side"]) for line in lines if "us_per_replay" in line or "error" in line}
    assert graphs == {(design, pieces, side) for design in DESIGNS for pieces in (1, 3) for side in (False, True)}
    assert {(line["design"], line["side"]) for line in lines if "us_per_boundary" in line} == {("launches", False),
                                                                                             ("launches", True)}


def test_compare_kernels_against_a_copy_of_the_kernels_leaves_the_same_bits(tmp_path, capsys):
    """examples/compare_kernels.py against a copy of this checkout's kernels/ (its own modules, compiled from the
    same source): the two steps, replayed in turns with the same tiles, leave the same bits."""
    import shutil

    from compare_kernels import main

    shutil.copytree(cupy_backend.KERNELS, tmp_path / "kernels")
    assert main([str(tmp_path), "--rounds", "2", "--replays", "5", "--batch", "32"]) == 0
    meta, this, other, ratio, bits = map(json.loads, capsys.readouterr().out.splitlines())
    print(f"\ncompare_kernels: {this['ms_per_step']} against {other['ms_per_step']} ms, ratio {ratio['ratio_other_vs_this']}")
    assert meta["other"] == str((tmp_path / "kernels").resolve()) and this["ms_per_step"] > 0 and other["ms_per_step"] > 0
    assert bits == {"same_bits": True, "arrays": 18, "steps": 13, "max_abs_difference": {}}
