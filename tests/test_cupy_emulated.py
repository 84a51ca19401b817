"""The CuPy backend's whole program on an emulated GPU (tests/fake_cupy.py): the training loop with the data
on the device, the Philox stream, the fused step (eager, then captured and replayed), checkpoints across
backends and sampling run minigan's GPU code unchanged, with the kernels compiled for the CPU.
tests/test_cupy.py runs the same paths on a real GPU."""

import contextlib
import sys
import time

import numpy as np
import pytest
from fake_cupy import install
from kernel_host import HostKernels
from test_data import write_mnist

from minigan import checkpoint as ckpt
from minigan.backend import BackendError, get_backend
from minigan.gan import GAN
from minigan.train import RECIPE

pytestmark = pytest.mark.skipif(not HostKernels.available, reason="no host C++ compiler")


@pytest.fixture(scope="module")
def host_kernels():
    return HostKernels()


@pytest.fixture
def emulated_gpu(host_kernels, monkeypatch):
    return install(host_kernels, monkeypatch.setattr, lambda name, module: monkeypatch.setitem(sys.modules, name, module))


def test_the_program_trains_on_the_emulated_gpu_resumes_on_the_cpu_and_samples(emulated_gpu, tmp_path, capsys):
    from minigan import sample, train

    write_mnist(tmp_path, n=64)
    out = tmp_path / "run"
    assert train.main(["--backend", "cupy", "--data-dir", str(tmp_path), "--epochs", "2", "--batch-size", "16",
                       "--out", str(out)]) == 0
    assert "cupy on emulated GPU" in capsys.readouterr().out
    assert emulated_gpu.graph_launches == 2 * 4 - 1  # the first step eager, the other seven one graph
    arrays = ckpt.load_npz(out / "checkpoint.npz")
    assert int(arrays["epoch"]) == 2 and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "samples" / "epoch_002.png").exists() and (out / "losses.png").exists()
    # the checkpoint of the GPU run continues on the CPU
    assert train.main(["--backend", "numpy", "--data-dir", str(tmp_path), "--resume", str(out), "--epochs", "3"]) == 0
    assert int(ckpt.load_npz(out / "checkpoint.npz")["epoch"]) == 3
    # and samples back on the GPU
    assert sample.main(["--backend", "cupy", "--checkpoint", str(out), "--n", "16",
                        "--out", str(tmp_path / "s.npy")]) == 0
    images = np.load(tmp_path / "s.npy")
    assert images.shape[0] == 16 and images.dtype == np.uint8 and images.max() > images.min()


def test_epochs_on_the_emulated_gpu_track_the_numpy_backend(emulated_gpu, tmp_path):
    """As tests/test_cupy.py's three epochs on a GPU: the fused step against the NumPy layers drawing the
    same numbers (philox_reference.StepReplay), here with the GPU emulated, so they agree more closely."""
    from conftest import runs_beside_numpy

    runs = runs_beside_numpy(tmp_path, n=96, batch_size=32, epochs=2)
    losses = {name: np.array([[h[m] for m in ("loss_D", "loss_G", "D_x", "D_G_z")] for h in run.history])
              for name, run in runs.items()}
    print(f"\nper-epoch loss_D, loss_G, D(x), D(G(z)), emulated GPU:\n{losses['cupy']}\nnumpy:\n{losses['numpy']}")
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-4)
    # Parameters: Adam's first steps move a weight by ~lr whatever its gradient's size, so where a gradient is
    # near eps the last bits of a sum (split-K groups them otherwise than NumPy) decide its sign, and such
    # elements drift apart by ~lr (measured: 0.3% of them by > 1e-4 after 6 steps). The runs track each other
    # when their distance is small against the distance each travelled from the initial weights.
    initial = GAN(get_backend("numpy"), seed=RECIPE["seed"])
    for model in ("G", "D"):
        ours, reference, start = (getattr(gan, model).params for gan in (runs["cupy"].gan, runs["numpy"].gan, initial))
        apart, travelled = np.linalg.norm(ours - reference), np.linalg.norm(reference - start)
        print(f"{model}: |cupy - numpy| {apart:.3g}, |numpy - initial| {travelled:.3g}")
        assert apart < 0.1 * travelled


def test_a_gan_with_more_d_updates_than_the_fused_steps_draws_trains_on_the_layer_path(emulated_gpu):
    from minigan.cupy_step import MAX_K

    assert GAN(get_backend("cupy"), k=MAX_K, seed=1).fused is not None
    assert GAN(get_backend("cupy"), k=MAX_K + 1, seed=1).fused is None


@pytest.fixture
def adam_on_the_device(emulated_gpu, monkeypatch):
    """A context in which Adam.step takes its device path. Adam tells the device's arrays by their module, and the
    emulated GPU's arrays are NumPy's, so without it Adam on the emulated GPU would run NumPy's update."""
    from minigan import optim

    @contextlib.contextmanager
    def on_device():
        with monkeypatch.context() as patch:
            patch.setattr(optim, "array_module", lambda a: sys.modules["cupy"])
            yield

    return on_device


def test_the_random_stream_matches_its_reference_and_round_trips_on_the_emulated_gpu(emulated_gpu):
    """PhiloxRng's offsets and state (tests/test_cupy.py runs the same checks on a GPU)."""
    from test_cupy import check_random_stream_matches_the_philox_reference, check_random_stream_state_round_trips

    check_random_stream_matches_the_philox_reference(sys.modules["cupy"])
    check_random_stream_state_round_trips(sys.modules["cupy"])


def test_the_adam_kernels_launch_matches_numpy_on_the_emulated_gpu(adam_on_the_device):
    """cupy_backend.adam_step's arguments (tests/test_cupy.py runs the same check on a GPU)."""
    from test_cupy import check_adam_kernel_matches_numpy

    check_adam_kernel_matches_numpy(sys.modules["cupy"], adam_on_the_device)


@pytest.mark.parametrize("k", [1, 2])
def test_the_layer_path_in_float32_matches_numpy_on_the_emulated_gpu(adam_on_the_device, k):
    """The path a float32 GAN takes on the CuPy backend without its fused step (a --k above MAX_K; tests/test_cupy.py
    runs the same check on a GPU): NumPy's layers on the device's arrays, PhiloxRng's draws, the Adam kernel."""
    from test_cupy import check_layer_path_matches_numpy

    check_layer_path_matches_numpy(sys.modules["cupy"], k, rows=16, steps=2, on_device=adam_on_the_device)


def test_gpu_benchmark_and_profile_on_the_emulated_gpu(emulated_gpu, monkeypatch, capsys):
    """The GPU-only parts of examples/benchmark.py and examples/profile_step.py run (their figures mean
    nothing here), and examples/bench_gemm.py's products are the step's, with the step's activations."""
    import json

    import bench_gemm
    import benchmark
    from profile_step import profile, replay_ms

    from minigan import cupy_step
    from minigan.gan import GAN

    started = time.perf_counter()
    assert benchmark.main(["--backend", "cupy", "--steps", "1", "--warmup", "1", "--repeats", "1", "--batch", "16"]) == 0
    seconds = time.perf_counter() - started
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["impl"] for line in lines] == ["minigan-cupy", "minigan-cupy-layers"]
    assert all(line["first_step_s"] > 0 and line["second_step_s"] > 0 for line in lines)  # (the graph's capture)
    assert sum(line["first_step_s"] + line["second_step_s"] for line in lines) < seconds  # times within the run's
    assert sum(lines[0]["gemm_tiles"].values()) == 22  # the step's 22 GEMM shapes (K = 1; D's forward passes
    # over the real and the fake rows are the G step's shapes)
    # every tile ties on the emulated GPU: the graph tuner tried each product's next STEP_TUNING_CANDIDATES (each
    # product has more tiles than that), and kept none
    trials = 22 * cupy_step.STEP_TUNING_CANDIDATES
    assert lines[0]["step_tuning"] == {"trials": trials, "kept": 0, "graph_ratio": 1.0}
    kinds = {name: kind for kind, name in bench_gemm.KERNELS.items()}
    launched, launch_gemm = set(), cupy_step.launch_gemm

    def recorded(kernel, name, tile, rows, cols, splits, args):  # (kind, rows, cols, inner, activation)
        kind = kinds[name]
        inner = {"forward": args[6], "input": args[5], "weight": args[4]}[kind]
        launched.add((kind, rows, cols, int(inner), 0 if kind == "weight" else int(args[7])))
        launch_gemm(kernel, name, tile, rows, cols, splits, args)

    monkeypatch.setattr(cupy_step, "launch_gemm", recorded)
    gan = GAN(get_backend("cupy"), seed=1)
    real = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    assert replay_ms(gan, real, replays=1) > 0 and emulated_gpu.graph_launches >= 1
    assert launched == set(bench_gemm.products(16))
    monkeypatch.setattr(cupy_step, "launch_gemm", launch_gemm)
    launches = profile(gan, real)
    assert len(launches) == 44 and gan.fused.side is not None and gan.fused.use_graph
    assert [stream for *_, stream, _ in launches].count("main") == 32  # the side stream's 12 off the critical path



def test_benchmark_processes_share_their_tiles_through_a_file(emulated_gpu, tmp_path):
    """examples/benchmark.py --tiles: the first process writes its step's tiles there; the next takes each one that
    can run its product (here every product but one named with no tile shape and one with a tile its split count
    does not fit) and times only the others; a file that is not one stops it with one line."""
    import argparse
    import json

    from benchmark import setup_minigan

    from minigan.cupy_step import split_k, tile_fits

    tiles = tmp_path / "tiles.jsonl"
    args = argparse.Namespace(backend="cupy", k=1, warmup=1, tiles=tiles)
    real = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    first, _, _ = setup_minigan(args, real)
    records = [json.loads(line) for line in tiles.read_text().splitlines()]
    assert first["tiles"] == {"file": str(tiles), "written": True, "taken": 0, "timed": 22} and len(records) == 22
    assert {record["tile"] for record in records} == {"32x32_4x4"}  # the emulated timer's ties: the first kept
    sms = GAN(get_backend("cupy"), seed=0).fused.sms
    unfit = next(i for i, r in enumerate(records) if not tile_fits("32x32_4x4_s4", split_k(*r["product"][1:], sms)))
    for i, record in enumerate(records):
        record["tile"] = "no such tile" if i == 0 else "32x32_4x4_s4" if i == unfit else "64x64_4x4"
    records.append({"product": ["linear_forward", 99, 9, 9], "tile": "64x64_4x4"})  # not the step's: not counted
    tiles.write_text("".join(json.dumps(record) + "\n" for record in records))
    second, _, _ = setup_minigan(args, real)
    assert second["tiles"] == {"file": str(tiles), "written": False, "taken": 20, "timed": 2}
    assert second["gemm_tiles"] == {"64x64_4x4": 20, "32x32_4x4": 2}  # the two left to timing
    tiles.write_text('{"product": ["linear_forward", 16, 256], "tile": "64x64_4x4"}\n')
    with pytest.raises(SystemExit, match=r"^benchmark.py: error: --tiles .*tiles.jsonl: not a file of tiles that "
                                         r"write_tiles wrote \(ValueError\)$"):
        setup_minigan(args, real)


def test_a_gpu_with_a_tile_table_takes_its_tiles_and_times_none(emulated_gpu, tmp_path, monkeypatch):
    """minigan/tiles/: where a table is named after the GPU, the step takes each product's tile from it, times and
    tunes none of them, and benchmark.py says so; --tiles FILE sets the table aside (every product timed, then
    written to FILE); a table that is not one stops the GAN's construction with one line naming it."""
    import argparse

    import bench_gemm
    from benchmark import setup_minigan

    from minigan import cupy_step

    monkeypatch.setattr(cupy_step, "TILE_TABLES", tmp_path / "tables")
    (tmp_path / "tables").mkdir()
    table = cupy_step.tile_table("emulated GPU (the kernels compiled for the CPU)")
    assert table == tmp_path / "tables" / "emulated-GPU-the-kernels-compiled-for-the-CPU.jsonl"
    cupy_step.write_tiles(table, dict.fromkeys(bench_gemm.step_products(16), "64x64_4x4"))
    real = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    meta, _, _ = setup_minigan(argparse.Namespace(backend="cupy", k=1, warmup=1, tiles=None), real)
    assert meta["tiles"] == {"file": str(table), "written": False, "taken": 22, "timed": 0}
    assert meta["gemm_tiles"] == {"64x64_4x4": 22} and meta["step_tuning"]["trials"] == 0
    written = tmp_path / "tiles.jsonl"
    meta, _, _ = setup_minigan(argparse.Namespace(backend="cupy", k=1, warmup=1, tiles=written), real)
    assert meta["tiles"] == {"file": str(written), "written": True, "taken": 0, "timed": 22}
    assert meta["gemm_tiles"] == {"32x32_4x4": 22}  # the emulated timer's ties, as without a table
    table.write_text("not a tile\n")
    with pytest.raises(BackendError, match=r"^the GPU's tile table .*emulated-GPU-the-kernels-compiled-for-the-CPU"
                                           r".jsonl: not a file of tiles that write_tiles wrote \(JSONDecodeError\)$"):
        GAN(get_backend("cupy"), seed=0)


def test_search_tiles_writes_the_table_it_found_on_the_emulated_gpu(emulated_gpu, tmp_path, capsys, monkeypatch):
    """examples/search_tiles.py at batch 16, from a --start file of one tile everywhere (taken: nothing timed or
    tuned), with another tile twice as fast in the graph: that one is kept on the products it can run, the others
    stay, and --out is that table (the last line says so). Without --start, the tiles the first steps time and
    tune are where it starts (every tile alike: nothing kept). A --start that is not a file of tiles stops it
    with one line. (Two tile shapes, not sixteen: an emulated capture takes ~0.5 s, a trial one capture.)"""
    import json

    import bench_gemm
    import search_tiles

    from minigan import cupy_step
    from minigan.cupy_step import DEFAULT_TILE, read_tiles, write_tiles

    monkeypatch.setattr(cupy_step, "GEMM_TILES", (DEFAULT_TILE, "64x64_8x8"))
    monkeypatch.setattr(cupy_step, "CLUSTER_TILES", ())

    begin = tmp_path / "begin.jsonl"
    write_tiles(begin, dict.fromkeys(bench_gemm.step_products(16), DEFAULT_TILE))
    emulated_gpu.graph_timings = {"64x64_8x8": 0.5}
    out = tmp_path / "searched.jsonl"
    assert search_tiles.main(["--out", str(out), "--start", str(begin), "--batch", "16", "--rounds", "2",
                              "--replays", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    start, trials, last = lines[0], lines[1:-1], lines[-1]
    assert start["start"] == str(begin) and start["products"] == 22 and start["batch"] == 16
    kept = {tuple(trial["product"]) for trial in trials if trial["kept"]}
    assert kept and all(trial["tile"] == "64x64_8x8" for trial in trials if trial["kept"])
    assert len(trials) == 22 and all(len(trial["ratios"]) == 2 for trial in trials) and last["kept"] == len(kept)
    assert last["trials"] == len(trials) and last["searched_over_start"] < 1 and last["out"] == str(out)
    table = read_tiles(out)
    assert len(table) == 22 and {key for key, tile in table.items() if tile == "64x64_8x8"} == kept
    assert set(table.values()) <= {"64x64_8x8", DEFAULT_TILE}
    emulated_gpu.graph_timings = {}
    assert search_tiles.main(["--out", str(tmp_path / "tuned.jsonl"), "--batch", "16", "--rounds", "1",
                              "--replays", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["start"] == "timed and tuned" and lines[-1]["kept"] == 0 and lines[-1]["trials"] > 0
    begin.write_text("no tiles\n")
    assert search_tiles.main(["--out", str(out), "--start", str(begin), "--batch", "16"]) == 1
    assert capsys.readouterr().err == (f"search_tiles.py: error: {begin}: not a file of tiles that write_tiles "
                                       "wrote (JSONDecodeError)\n")
    assert read_tiles(out) == table  # the searched table, untouched


def test_compare_kernels_steps_with_the_other_trees_kernels(emulated_gpu, tmp_path, capsys):
    """examples/compare_kernels.py: against this checkout's own kernels the two steps leave the same bits; against a
    copy whose Adam takes half its step, the step called "other" ran the copy's kernels, and every array but the
    counters differs.
    (The copy's kernels use a name only its own tests/cuda_host.h defines: the emulator builds a tree's kernels with
    the tree's host header.)"""
    import json
    import shutil

    from compare_kernels import main
    from kernel_host import KERNELS, ROOT

    halved = tmp_path / "kernels"
    shutil.copytree(KERNELS, halved)
    optim, update = (halved / "optim.cu").read_text(), "p -= m / fmaf(sqrtf(v), c.inv_scale, c.eps_scaled);"
    assert optim.count(update) == 1
    (halved / "optim.cu").write_text(optim.replace(update, "p -= HALF * m / fmaf(sqrtf(v), c.inv_scale, c.eps_scaled);"))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "cuda_host.h").write_text((ROOT / "tests" / "cuda_host.h").read_text() + "#define HALF 0.5f\n")
    for other, same in ((KERNELS.parent, True), (tmp_path, False)):
        assert main([str(other), "--rounds", "1", "--replays", "1", "--batch", "16"]) == 0
        meta, this, theirs, ratio, bits = map(json.loads, capsys.readouterr().out.splitlines())
        assert meta["other"] == str(other.resolve() / "kernels") and sum(meta["gemm_tiles"].values()) == 22
        assert (this["step"], theirs["step"], len(this["rounds"]), len(theirs["rounds"])) == ("this", "other", 1, 1)
        assert ratio["rounds"] == 1 and len(ratio["round_ratios"]) == 1
        assert bits["same_bits"] is same and bits["steps"] == 4 and bits["arrays"] == 18
        # every array but the device counters, which count the same steps
        assert len(bits["max_abs_difference"]) == (0 if same else 15)
        assert not {"step", "t_G", "t_D"} & set(bits["max_abs_difference"])


def test_bench_gemm_checks_and_times_every_tile_on_the_emulated_gpu(emulated_gpu, monkeypatch, capsys):
    """examples/bench_gemm.py, on one product of each kind at batch 16 (a split-K one among them),
    with the GPU timer standing in: every tile at every split is checked against the reference product, and
    a tile that computes something else stops it with a one-line error."""
    import json

    import bench_gemm

    from minigan import cupy_step

    every = bench_gemm.products(16)
    chosen = [next(p for p in every if p[0] == kind and (kind == "weight" or p[2] > 1)) for kind in
              ("forward", "weight", "input")]
    monkeypatch.setattr(bench_gemm, "products", lambda: chosen)

    def one_microsecond(cupy, kernel, launch, reps):  # the stand-in timer still launches what it times
        launch()
        return 1e-6

    monkeypatch.setattr(cupy_step, "gpu_seconds_per_launch", one_microsecond)
    bench_gemm.main([])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["sms"] == 132
    assert [(r["product"], r["rows"], r["cols"], r["inner"], r["activation"]) for r in lines[1:]] == chosen
    for result in lines[1:]:
        fitting = {tile for tile in cupy_step.GEMM_TILES + cupy_step.CLUSTER_TILES  # (the emulated GPU's clusters)
                   if cupy_step.tile_fits(tile, result["splits"])}
        assert set(result["us"]) == fitting and result["cublas_us"] == 1.0
        assert set(result["best_us_at_splits"]) == {"1", "2", "4", "8", "16"}
    assert any(r["splits"] > 1 for r in lines[1:])

    # a tile whose kernel leaves its output untouched is caught by the check against cuBLAS
    real_launch = cupy_step.launch_gemm
    monkeypatch.setattr(cupy_step, "launch_gemm", lambda kernel, name, tile, *rest: None if tile == "64x64_8x8"
                        else real_launch(kernel, name, tile, *rest))
    with pytest.raises(SystemExit, match="64x64_8x8 splits 1 .* is wrong"):
        bench_gemm.main([])

    # and so is a weight gradient's tile whose bias gradient (summed by the same blocks) is off
    def bias_off(kernel, name, tile, rows, cols, splits, args):
        real_launch(kernel, name, tile, rows, cols, splits, args)
        if name == "linear_backward_weight" and splits == 2:
            db = args[1]
            db[0] += 1e-3 * np.abs(db).max()

    monkeypatch.setattr(cupy_step, "launch_gemm", bias_off)
    with pytest.raises(SystemExit, match="linear_backward_weight 32x32_4x4 splits 2 .* is wrong"):
        bench_gemm.main([])


def test_bench_gemm_narrows_to_one_product_tile_and_split(emulated_gpu, capsys):
    """--only, --tile and --splits: the one launch a profiler is pointed at (.ci/gpu-checks's ncu stage)."""
    import json

    import bench_gemm

    bench_gemm.main(["--only", "weight", "40", "24", "70", "--tile", "32x32_4x4_s2", "--splits", "2"])
    _, line = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert (result["product"], result["rows"], result["cols"], result["inner"]) == ("weight", 40, 24, 70)
    assert set(result["best_us_at_splits"]) == {"2"} and set(result["us"]) <= {"32x32_4x4_s2"}
    with pytest.raises(SystemExit, match="tile 32x32_4x4_s4 cannot run 2 splits"):
        bench_gemm.main(["--tile", "32x32_4x4_s4", "--splits", "2"])
    with pytest.raises(SystemExit):
        bench_gemm.main(["--only", "backward", "1", "2", "3"])
    assert "KIND is forward, weight or input" in capsys.readouterr().err


def test_resuming_on_the_emulated_gpu_is_bit_exact(emulated_gpu, tmp_path):
    """1 epoch, then --resume for a 2nd, equals 2 epochs straight, on the GPU backend: the Philox stream's
    state and the Adam counts come back from the checkpoint to the device."""
    from minigan import train

    write_mnist(tmp_path, n=32)
    common = ["--backend", "cupy", "--data-dir", str(tmp_path), "--batch-size", "16"]
    assert train.main(common + ["--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert train.main(common + ["--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert train.main(["--backend", "cupy", "--resume", str(tmp_path / "resumed"), "--epochs", "2",
                       "--data-dir", str(tmp_path)]) == 0
    straight, resumed = (ckpt.load_npz(tmp_path / name / "checkpoint.npz") for name in ("straight", "resumed"))
    assert int(resumed["epoch"]) == 2
    compared = [name for name, a in straight.items() if name != "history"]  # the history holds timings
    assert {"G/params", "D/params", "opt_D/v", "rng"} <= set(compared)
    for name in compared:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_a_gpu_run_stopped_mid_epoch_resumes_bit_exact(emulated_gpu, tmp_path):
    """SIGINT after a step (as the StopFlag sets it): the mid-epoch checkpoint of the GPU run, resumed, ends
    where the uninterrupted run does: the in-epoch position, partial sums and device counters come back."""
    import signal

    from minigan.data import load_mnist
    from minigan.train import RECIPE, Interrupted, Run

    write_mnist(tmp_path, n=48)
    images = load_mnist(tmp_path)[0]
    config = {**RECIPE, "batch_size": 16, "epochs": 1}  # 3 steps
    runs = {}
    for name in ("straight", "stopped"):
        (tmp_path / name / "samples").mkdir(parents=True)
        runs[name] = Run(config, get_backend("cupy"), images, tmp_path / name, log=lambda s: None)
    runs["straight"].train()

    class StopAfterOneStep:  # what StopFlag holds once SIGINT arrived during the first step
        signum = signal.SIGINT

    with pytest.raises(Interrupted):
        runs["stopped"].train(StopAfterOneStep())
    arrays = ckpt.load_npz(tmp_path / "stopped" / "checkpoint.npz")
    assert (int(arrays["epoch"]), int(arrays["step"])) == (0, 1)
    resumed = Run(config, get_backend("cupy"), images, tmp_path / "stopped", arrays, log=lambda s: None)
    resumed.train()
    for ours, straight in ((resumed.gan.G, runs["straight"].gan.G), (resumed.gan.D, runs["straight"].gan.D)):
        np.testing.assert_array_equal(ours.params, straight.params)
    assert resumed.history[-1]["loss_D"] == runs["straight"].history[-1]["loss_D"]
