"""The training and sampling programs end to end: run folder, resume, signals, NaN, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from test_data import write_mnist

from minigan import checkpoint as ckpt
from minigan import train
from minigan.backend import get_backend

ROOT = Path(__file__).resolve().parent.parent


def run_cli(script, *args, timeout=120, pythonpath=()):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, pythonpath)])}
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(proc, code):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, n=300, seed=3)
    return folder


def final_arrays(run_dir):
    return ckpt.load_npz(run_dir / "checkpoint.npz")


def test_train_writes_the_run_folder(data_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train_mnist.py", "--data-dir", data_dir, "--epochs", 2, "--batch-size", 64, "--out", out)
    assert proc.returncode == 0, proc.stderr
    epoch_lines = [l for l in proc.stdout.splitlines() if l.startswith("Epoch [")]
    assert len(epoch_lines) == 2
    for field in ("Loss_D:", "Loss_G:", "D(x):", "D(G(z)):", " s |", "img/s"):
        assert field in epoch_lines[0]
    done = re.search(r"minigan: done: 2 epochs in ([0-9.]+) s after ([0-9.]+) s of start-up", proc.stdout)
    assert done, proc.stdout  # the wall-time figure the GPU target is stated in
    epoch_seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert float(done[1]) >= sum(epoch_seconds) - 0.1
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss_D"]) and m["loss_G"] > 0 and 0 < m["D_x"] < 1 for m in metrics)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    png = (out / "samples" / "epoch_001.png").read_bytes()
    assert png.startswith(b"\x89PNG") and b"IEND" in png
    import matplotlib.image

    assert matplotlib.image.imread(out / "samples" / "epoch_002.png").shape == (4 * 30 + 2, 8 * 30 + 2)
    config = json.loads((out / "config.json").read_text())
    assert config["batch_size"] == 64 and config["epochs"] == 2 and config["seed"] == 666
    gen = ckpt.load_npz(out / "generator.npz")
    assert gen["G/params"].shape == final_arrays(out)["G/params"].shape
    assert not list(out.glob(".*.tmp"))

    # sampling, both formats, from the generator file and from the run folder
    proc = run_cli("sample.py", "--checkpoint", out / "generator.npz", "--n", 10, "--out", tmp_path / "s.npy")
    assert proc.returncode == 0, proc.stderr
    samples = np.load(tmp_path / "s.npy", allow_pickle=False)
    assert samples.shape == (10, 784) and samples.dtype == np.uint8
    from minigan.sample import load_generator, to_uint8  # G in eval mode on --seed 0's noise, 255 v rounded half up

    G, config = load_generator(out / "generator.npz", get_backend("numpy"))
    z = np.random.default_rng(0).standard_normal((10, config["latent_dim"]), dtype=np.float32)
    np.testing.assert_array_equal(samples, np.floor(G.forward(z).astype(np.float64) * 255 + 0.5))
    assert to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 0, 255, 255]  # clipped, never wrapped
    proc = run_cli("sample.py", "--checkpoint", out, "--n", 10, "--seed", 1, "--out", tmp_path / "s.png")
    assert proc.returncode == 0 and (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def hand_clock(monkeypatch):
    """train's clock (time.perf_counter), in seconds, moved by hand: set hand_clock[0]."""
    now = [0.0]
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def make_run(data_dir, run_dir, epochs, **recipe):
    from minigan.data import load_mnist

    config = {**train.RECIPE, "batch_size": 64, "epochs": epochs, **recipe}
    images = load_mnist(data_dir, download=False)[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    arrays = ckpt.load_npz(run_dir / "checkpoint.npz") if (run_dir / "checkpoint.npz").exists() else None
    return train.Run(config, get_backend("numpy"), images, run_dir, arrays, log=lambda s: None)


def test_resume_is_bit_exact(data_dir, tmp_path):
    """2 epochs, then resume for 2 more == 4 uninterrupted epochs, bit for bit (the partial last batch included)."""
    make_run(data_dir, tmp_path / "straight", 4).train()
    make_run(data_dir, tmp_path / "split", 2).train()
    proc = run_cli("train_mnist.py", "--data-dir", data_dir, "--resume", tmp_path / "split", "--epochs", 4)
    assert proc.returncode == 0, proc.stderr
    assert "minigan: done: 2 epochs in" in proc.stdout  # the epochs this process ran
    a, b = final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "split")
    assert int(b["epoch"]) == 4
    for key in a:
        if key not in ("config", "history"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    history_a, history_b = (ckpt.json_entry(arrays, "history", "checkpoint", list) for arrays in (a, b))
    assert [h["loss_G"] for h in history_a] == [h["loss_G"] for h in history_b]
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 4


def test_resume_refuses_a_changed_recipe_and_a_finished_run(data_dir, tmp_path):
    make_run(data_dir, tmp_path / "r", 1).train()
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--resume", tmp_path / "r",
                                  "--epochs", 3, "--lr", 1e-3), 2)
    assert "--lr" in line and "keeps its recipe" in line
    # --out may name the run's own folder, however spelled (here the check that fails next is the recipe's)
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--resume", tmp_path / "r",
                                  "--out", tmp_path / "r" / ".." / "r", "--lr", 1e-3), 2)
    assert "--lr" in line and "keeps its recipe" in line
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--resume", tmp_path / "r",
                                  "--out", tmp_path / "other"), 2)
    assert "--out and --resume name different folders" in line
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--resume", tmp_path / "r"), 2)
    assert "already trained 1 epochs" in line
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--out", tmp_path / "r"), 2)
    assert "already holds a run" in line


def test_checkpoint_loads_on_a_fresh_process_and_checks_its_version(data_dir, tmp_path):
    make_run(data_dir, tmp_path / "r", 1).train()
    arrays = final_arrays(tmp_path / "r")
    arrays["format_version"] = np.int64(99)
    ckpt.save_npz(tmp_path / "old.npz", arrays)
    with pytest.raises(ckpt.CheckpointError, match="format version 99"):
        ckpt.load_npz(tmp_path / "old.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ckpt.CheckpointError, match="junk.npz"):
        ckpt.load_npz(tmp_path / "junk.npz")
    line = one_line_error(run_cli("sample.py", "--checkpoint", tmp_path / "junk.npz", "--out", tmp_path / "x.png"), 1)
    assert "junk.npz" in line


def test_the_training_loop_gathers_each_batch_where_the_step_reads_it(data_dir, tmp_path, monkeypatch):
    """Every batch, the epoch's last and smaller one too, is gathered into GAN.batch_input: the step copies none."""
    from minigan.backend import same_array

    run = make_run(data_dir, tmp_path / "r", 1)  # 300 images: four batches of 64, then one of 44
    real_step, rows = run.gan.train_step, []

    def step(real):
        rows.append((len(real), same_array(real, run.gan.batch_input(len(real)))))
        return real_step(real)

    monkeypatch.setattr(run.gan, "train_step", step)
    run.train()
    assert rows == [(64, True)] * 4 + [(44, True)]


def test_an_epochs_metrics_are_its_steps_means_over_its_images(data_dir, tmp_path, monkeypatch):
    """Each epoch's Loss_D, Loss_G, D(x), D(G(z)) in the history and metrics.jsonl: its steps' values weighted by
    their batches' images (the last batch of 44 counts 44/300), from nothing at every epoch's start."""
    run = make_run(data_dir, tmp_path / "r", 2)
    real_step, steps = run.gan.train_step, []

    def step(real):
        stats = real_step(real)
        steps.append((len(real), np.array(stats, dtype=np.float64)))
        return stats

    monkeypatch.setattr(run.gan, "train_step", step)
    run.train()
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines == run.history and [r["epoch"] for r in lines] == [1, 2]
    for epoch, record in enumerate(lines):
        epoch_steps = steps[5 * epoch: 5 * epoch + 5]
        assert [count for count, _ in epoch_steps] == [64, 64, 64, 64, 44]
        expected = sum(count * stats for count, stats in epoch_steps) / 300
        np.testing.assert_allclose([record[k] for k in ckpt.METRICS], expected, rtol=1e-12, atol=0)


def test_an_epochs_seconds_and_rate_are_what_this_process_trained_of_it(data_dir, tmp_path, monkeypatch,
                                                                          hand_clock):
    """On a clock that moves 0.1234 s a step: stopped after 2 of epoch 1's 5 steps and resumed, the epoch's
    seconds and images/s are its last 3 steps' (172 images in 0.3702 s), not the whole epoch's."""
    stop = types.SimpleNamespace(signum=None)

    def timed(run, stop_after=None):
        real_step = run.gan.train_step

        def step(real):
            hand_clock[0] += 0.1234
            if run.step + 1 == stop_after:
                stop.signum = signal.SIGINT
            return real_step(real)

        monkeypatch.setattr(run.gan, "train_step", step)
        return run

    with pytest.raises(train.Interrupted):
        timed(make_run(data_dir, tmp_path / "r", 2), stop_after=2).train(stop)
    stop.signum = None
    run = timed(make_run(data_dir, tmp_path / "r", 2))
    assert run.step == 2
    run.train(stop)
    assert [(r["seconds"], r["images_per_s"]) for r in run.history] == [(0.37, 464.6), (0.617, 486.2)]


def test_nan_stops_with_the_epoch_and_step_and_keeps_the_last_checkpoint(data_dir, tmp_path, monkeypatch):
    run = make_run(data_dir, tmp_path / "r", 3)
    real_step = run.gan.train_step
    calls = []

    def step_going_bad(real):
        calls.append(1)
        stats = real_step(real)
        if len(calls) == 7:  # epoch 2 (5 steps per epoch), step 2
            stats = stats.copy()
            stats[1] = np.nan
        return stats

    def slow_save(path, arrays):  # epoch 1's checkpoint still being written in the background when NaN comes
        time.sleep(1)
        save_npz(path, arrays)

    save_npz = ckpt.save_npz
    monkeypatch.setattr(run.gan, "train_step", step_going_bad)
    monkeypatch.setattr(ckpt, "save_npz", slow_save)
    with pytest.raises(train.TrainingError, match=r"non-finite loss at epoch 2 step 2 .*epoch 1\)"):
        run.train()
    assert int(final_arrays(tmp_path / "r")["epoch"]) == 1


def test_exploding_run_ends_with_one_line(data_dir, tmp_path):
    proc = run_cli("train_mnist.py", "--data-dir", data_dir, "--epochs", 3, "--lr", 1e38, "--batch-size", 64,
                   "--out", tmp_path / "r")
    line = one_line_error(proc, 1)
    assert "non-finite" in line and "epoch" in line


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "-5"], "--batch-size must be at least 2"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--k", "0"], "--k must be at least 1"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--epochs", "two"], "invalid int value"),
    (["--batch-size", "1000"], "exceeds the 300 training images"),
    (["--batch-size", "299"], "leave a last batch of 1"),
    (["--train-size", "301"], "--train-size 301 exceeds the 300 training images"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_arguments_are_refused_before_training(data_dir, tmp_path, args, message):
    out = tmp_path / "r"
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--out", out, *args), 2)
    assert message in line
    assert not out.exists()  # a refused run leaves no folder behind


def test_all_the_images_in_one_batch_are_allowed(data_dir, tmp_path, capsys):
    """--train-size and --batch-size equal to the data's 300 images: the last values allowed (301 is refused)."""
    out = tmp_path / "r"
    assert train.main(["--data-dir", str(data_dir), "--out", str(out), "--train-size", "300", "--batch-size", "300",
                       "--epochs", "1"]) == 0, capsys.readouterr().err
    assert "300 images, 1 step per epoch" in capsys.readouterr().out
    assert ckpt.count(final_arrays(out), "epoch", out / "checkpoint.npz") == 1


def test_each_rule_of_the_recipe_allows_its_last_value_and_refuses_the_next():
    """minigan.recipe's rules at their bounds, for the command line and checkpoints alike."""
    from minigan.recipe import DEFAULT_EPOCHS, RECIPE, first_broken_rule

    bounds = {"epochs": (1, 0), "batch_size": (2, 1), "lr": (1e-300, 0.0), "beta1": (0.0, -1e-9),
              "k": (1, 0), "latent_dim": (1, 0), "seed": (0, -1), "train_size": (2, 1)}
    recipe = {**RECIPE, "epochs": DEFAULT_EPOCHS}
    assert first_broken_rule(recipe) is None and set(bounds) == set(recipe)
    for key, (allowed, refused) in bounds.items():
        assert first_broken_rule({**recipe, key: allowed}) is None, key
        assert first_broken_rule({**recipe, key: refused}) == key
        assert first_broken_rule({k: v for k, v in recipe.items() if k != key}) == key  # missing
    assert first_broken_rule({**recipe, "beta1": 0.999999}) is None
    for key, value in [("beta1", 1.0), ("lr", float("inf")), ("latent_dim", 100.0), ("k", True), ("seed", "1")]:
        assert first_broken_rule({**recipe, key: value}) == key, (key, value)


@pytest.mark.parametrize("program", ["train_mnist.py", "sample.py", "evaluate.py"])
def test_out_of_memory_is_one_line(program, data_dir, tmp_path, monkeypatch, capsys):
    """A model or a sample too large for the machine (NumPy's MemoryError; CuPy's OutOfMemoryError is one too)."""
    from minigan import evaluate, sample

    def too_large(*args):
        raise MemoryError("Unable to allocate 191. GiB for an array with shape (256, 100000000)")

    monkeypatch.setattr(train, "GAN", too_large)
    monkeypatch.setattr(sample, "load_generator", too_large)  # evaluate.py's too
    main, args = {"train_mnist.py": (train.main, ["--data-dir", str(data_dir), "--out", str(tmp_path / "r")]),
                  "sample.py": (sample.main, ["--checkpoint", str(tmp_path), "--out", str(tmp_path / "s.png")]),
                  "evaluate.py": (evaluate.main, ["--checkpoint", str(tmp_path)])}[program]
    assert main(args) == 1
    assert capsys.readouterr().err == f"{program}: error: out of memory (Unable to allocate 191. GiB for an " \
        "array with shape (256, 100000000))\n"


def test_unwritable_run_folder_and_missing_data(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--out", blocker / "run"), 2)
    assert "not writable" in line
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", tmp_path / "empty", "--out", tmp_path / "r"), 1)
    assert "empty" in line and "not found" in line
    assert not (tmp_path / "r").exists()


def test_corrupt_data_file_ends_with_one_line(tmp_path):
    write_mnist(tmp_path, n=10)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", tmp_path, "--out", tmp_path / "r"), 1)
    assert str(path) in line
    assert not (tmp_path / "r").exists()


def test_cupy_backend_without_a_gpu_is_one_line(data_dir, tmp_path):
    pytest.importorskip("numpy")
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    line = one_line_error(run_cli("train_mnist.py", "--backend", "cupy", "--data-dir", data_dir,
                                  "--out", tmp_path / "r"), 1)
    assert "--backend cupy needs" in line
    assert one_line_error(run_cli("benchmark.py", "--backend", "cupy"), 1).startswith(
        "benchmark.py: error: --backend cupy needs")


def test_cupy_that_finds_no_gpu_is_one_line(monkeypatch):
    """What CUDA says when CuPy imports but finds no GPU: no device at all; an error (no driver), told by the
    first line of its message, or by its type where it has none."""
    from minigan.backend import BackendError

    def cupy_counting(count):
        return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count)))

    def refusal(error):
        def count():
            raise error
        return count

    cases = [(lambda: 0, "CUDA reports none"),
             (refusal(RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected\nat init")),
              "CUDA reports none (cudaErrorNoDevice: no CUDA-capable device is detected)"),
             (refusal(OSError()), "CUDA reports none (OSError)")]
    for count, reason in cases:
        monkeypatch.setitem(sys.modules, "cupy", cupy_counting(count))
        with pytest.raises(BackendError) as error:
            get_backend("cupy")
        assert str(error.value) == f"--backend cupy needs an NVIDIA GPU, and {reason}"
    monkeypatch.setitem(sys.modules, "cupy", cupy_counting(lambda: 1))
    assert get_backend("cupy").xp is sys.modules["cupy"]


def start_training(data_dir, out, epochs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "examples" / "train_mnist.py"), "--data-dir", str(data_dir),
                             "--epochs", str(epochs), "--batch-size", "16", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist_big")
    write_mnist(folder, n=1600, seed=4)  # 100 steps of 16 per epoch: a signal lands inside an epoch
    return folder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_saves_and_resumes_exactly(slow_data, tmp_path, signum):
    out = tmp_path / "r"
    proc = start_training(slow_data, out, 3)
    wait_for(out / "checkpoint.npz", proc)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0] and "--resume" in lines[0]
    arrays = final_arrays(out)
    assert int(arrays["step"]) > 0  # stopped inside an epoch, and saved where it stood
    stopped_at = (int(arrays["epoch"]), int(arrays["step"]))

    proc = run_cli("train_mnist.py", "--data-dir", slow_data, "--resume", out)
    assert proc.returncode == 0, proc.stderr
    straight = tmp_path / "straight"
    assert run_cli("train_mnist.py", "--data-dir", slow_data, "--epochs", 3, "--batch-size", 16,
                   "--out", straight).returncode == 0
    a, b = final_arrays(straight), final_arrays(out)
    for key in ("G/params", "D/params", "opt_G/m", "opt_D/v", "G/8.running_var", "rng"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} after a stop at {stopped_at}")
    losses = lambda arrs: [h["loss_D"] for h in ckpt.json_entry(arrs, "history", "checkpoint", list)]  # noqa: E731
    np.testing.assert_allclose(losses(a), losses(b), rtol=1e-12)


def test_sigkill_leaves_a_loadable_checkpoint(slow_data, tmp_path):
    out = tmp_path / "r"
    proc = start_training(slow_data, out, 50)
    wait_for(out / "checkpoint.npz", proc)
    # kill repeatedly at random moments of the next epochs, some of them mid-write
    deadline = time.time() + 1.0 + np.random.default_rng().random()
    while time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    arrays = final_arrays(out)
    assert int(arrays["epoch"]) >= 1
    proc = run_cli("train_mnist.py", "--data-dir", slow_data, "--resume", out, "--epochs", int(arrays["epoch"]) + 1)
    assert proc.returncode == 0, proc.stderr
    assert int(final_arrays(out)["epoch"]) == int(arrays["epoch"]) + 1


def test_progress_bar_draws_on_a_terminal_only(hand_clock):
    import io

    stream = io.StringIO()
    bar = train.Progress(10, "Epoch 1/2", stream, enabled=True)
    for i, t in enumerate([0.05, 0.09, 0.12, 0.15, 0.2, 0.25, 0.3, 0.33, 0.34, 0.35], start=1):
        hand_clock[0] = t
        bar.update(i, i * 128)
    bar.close()
    text = stream.getvalue()
    # redrawn at most 10 times a second (at 0.12 and 0.25 s), and at the last step whenever it comes
    assert [draw.split(" [")[0] for draw in text.split("\r")[1:-1]] == ["Epoch 1/2 3/10", "Epoch 1/2 6/10",
                                                                         "Epoch 1/2 10/10"]
    assert "Epoch 1/2 10/10 [" + "=" * 30 + "] 3,657 img/s" in text and text.endswith("\r\033[K")
    quiet = io.StringIO()  # a pipe or a file: no bar
    bar = train.Progress(10, "x", quiet)
    bar.update(10, 1280)
    bar.close()
    assert quiet.getvalue() == ""


def test_benchmark_script_prints_its_json_lines():
    """A smoke run of examples/benchmark.py (correctness of its output, not a timing)."""
    pytest.importorskip("torch")
    proc = run_cli("benchmark.py", "--steps", 2, "--warmup", 1, "--repeats", 1, "--compare-torch")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line.get("impl") for line in lines[:2]] == ["minigan-numpy", "torch-eager"]
    assert all(line["ms_per_step"] > 0 and line["batch"] == 128 for line in lines[:2])
    ms = {line["impl"]: line["ms_per_step"] for line in lines[:2]}  # each ratio is the times printed above it
    assert lines[2]["ratio_vs_torch_eager"] == {impl: round(t / ms["torch-eager"], 3) for impl, t in ms.items()}
    assert lines[3]["ratio_vs_fastest_torch"] == {"baseline": "torch-eager",
                                                  "minigan-numpy": round(ms["minigan-numpy"] / ms["torch-eager"], 3)}


def test_benchmark_times_its_steps_in_ms_between_synchronisations(monkeypatch):
    """time_steps on a clock moved by hand: 5 steps of 4 ms each are 4 ms a step, timed from a synchronised device to
    one synchronised after the last step."""
    import benchmark

    now, synchronised = [100.0], []  # perf_counter's zero is arbitrary
    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def step():
        now[0] += 0.004

    assert benchmark.time_steps(step, 5, lambda: synchronised.append(now[0])) == pytest.approx(4.0)
    assert synchronised == [100.0, pytest.approx(100.02)]


def test_benchmark_refuses_a_count_below_its_least_and_times_a_step_at_the_least(capsys):
    """--steps, --warmup, --repeats and --k of 0 and a --batch of 1 are refused in one line, status 2; every count at
    its least (1; a batch of 2, which BatchNorm needs) times a step."""
    import benchmark

    least = {"--steps": 1, "--warmup": 1, "--repeats": 1, "--k": 1, "--batch": 2}

    def argv(counts):
        return [str(a) for option, count in counts.items() for a in (option, count)]

    for option in least:
        with pytest.raises(SystemExit) as refused:
            benchmark.main(argv({**least, option: least[option] - 1}))
        assert refused.value.code == 2
        error = capsys.readouterr().err  # (in this process, argparse names the program after sys.argv[0])
        assert error.count("\n") == 1 and error.endswith(
            ": error: --steps, --warmup, --repeats and --k must be at least 1, --batch at least 2\n")
    assert benchmark.main(argv(least)) == 0
    line = json.loads(capsys.readouterr().out)
    assert (line["impl"], line["batch"], line["steps"]) == ("minigan-numpy", 2, 1)


def test_benchmark_takes_its_first_step_then_the_warmup_then_the_timed_steps(monkeypatch, capsys):
    import benchmark

    from minigan.gan import GAN

    batches, train_step = [], GAN.train_step

    def counted_train_step(gan, real):
        batches.append(len(real))
        return train_step(gan, real)

    monkeypatch.setattr(GAN, "train_step", counted_train_step)
    assert benchmark.main(["--batch", "2", "--warmup", "3", "--steps", "2", "--repeats", "2"]) == 0
    # the first step (on a GPU it compiles the kernels and times the tiles), 3 of warm-up, 2 timings of 2 steps
    assert batches == [2] * (1 + 3 + 2 * 2)
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_benchmark_compare_torch_without_torch_is_one_line(monkeypatch, capsys):
    import benchmark

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert benchmark.main(["--batch", "2", "--steps", "1", "--warmup", "1", "--repeats", "1", "--compare-torch"]) == 1
    assert capsys.readouterr().err == "benchmark.py: error: --compare-torch needs torch (pip install torch)\n"


def test_benchmark_tiles_are_the_gpu_steps_only(tmp_path):
    assert one_line_error(run_cli("benchmark.py", "--tiles", tmp_path / "tiles.jsonl"), 2) == (
        "benchmark.py: error: --tiles is the fused step's GEMM tiles: it needs --backend cupy")
    assert not (tmp_path / "tiles.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--seed", "-1"], "--seed must be non-negative"),
    (["--out", "grid.jpg"], "must end in .png or .npy"),
    (["--backend", "tpu"], "unknown backend"),
])
def test_sample_refuses_bad_arguments(tmp_path, args, message):
    base = {"--checkpoint": str(tmp_path), "--out": str(tmp_path / "s.png")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value if flag != "--out" else str(tmp_path / value)
    line = one_line_error(run_cli("sample.py", *[x for kv in base.items() for x in kv]), 2)
    assert message in line


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    from minigan.fileio import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.bin").read_bytes() == b"x" and len(list(tmp_path.iterdir())) == 1


def test_the_file_writer_writes_in_order_and_only_the_newest_of_a_file_not_yet_begun(tmp_path):
    from minigan.fileio import FileWriter

    files, begun, go_on, done = FileWriter(), threading.Event(), threading.Event(), []

    def held(path):
        begun.set()
        assert go_on.wait(30)
        done.append(path)

    files.put("a", held)
    assert begun.wait(30)
    for path, version in [("b", 1), ("c", 1), ("b", 2)]:
        files.put(path, lambda path, version=version: done.append((path, version)))
    go_on.set()
    files.wait()
    assert done == ["a", ("b", 2), ("c", 1)]
    files.put("a", lambda path: done.append(path))  # a file already written is written again
    files.wait()
    assert done[-1] == "a"


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ValueError("a bug in a write")])
def test_the_file_writer_raises_a_failed_write_and_drops_what_it_held(error):
    from minigan.fileio import FileWriter

    files, go_on, done = FileWriter(), threading.Event(), []

    def fails(path):
        assert go_on.wait(30)
        raise error

    files.put("a", fails)
    files.put("b", done.append)
    go_on.set()
    files.wait()  # returns: nothing is left held
    assert done == []
    with pytest.raises(type(error), match=str(error.args[-1])):
        files.put("c", done.append)
    files.put("c", done.append)  # raised once; the writer goes on
    files.wait()
    assert done == ["c"]


def test_a_failed_background_checkpoint_write_is_not_lost(data_dir, tmp_path, monkeypatch):
    """The epoch-end checkpoint is written by the file writer's thread; its error still stops the run."""
    run = make_run(data_dir, tmp_path / "r", 3)
    failed = threading.Event()
    real_step = run.gan.train_step

    def disk_full(path, arrays):
        failed.set()
        raise OSError(28, "No space left on device", str(path))

    def step_after_the_failure(real):  # epoch 2 starts once epoch 1's checkpoint has failed
        if run.epoch == 1:
            assert failed.wait(30)
        return real_step(real)

    monkeypatch.setattr(ckpt, "save_npz", disk_full)
    monkeypatch.setattr(run.gan, "train_step", step_after_the_failure)
    with pytest.raises(OSError, match="No space left"):
        run.train()
    assert run.epoch == 2  # stopped at the next epoch's end, not after all epochs


def test_training_does_not_wait_for_a_slow_disk(data_dir, tmp_path, monkeypatch):
    """Every epoch trains while epoch 1's checkpoint is still being written; then the newest checkpoint is
    written, once, and every epoch's sample grid (of that epoch's samples, though written epochs later) and
    metrics line are there."""
    from minigan.images import image_grid, png_bytes

    run_dir = tmp_path / "r"
    run = make_run(data_dir, run_dir, 3)
    logged, disk_free = [], threading.Event()
    written, samples = [], []
    save_npz, generate = ckpt.save_npz, run.gan.generate

    def recorded_generate(z):
        samples.append(np.array(generate(z)))
        return samples[-1]

    def slow_save(path, arrays):
        written.append((Path(path).name, int(arrays["epoch"])))
        assert disk_free.wait(30)
        save_npz(path, arrays)

    monkeypatch.setattr(ckpt, "save_npz", slow_save)
    monkeypatch.setattr(run.gan, "generate", recorded_generate)
    run.log = logged.append
    trainer = threading.Thread(target=run.train)
    trainer.start()
    try:
        deadline = time.monotonic() + 60
        while len(logged) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # all three epochs trained while epoch 1's checkpoint was held up
        assert len(logged) == 3 and written == [("checkpoint.npz", 1)]
    finally:
        disk_free.set()
    trainer.join(30)
    assert not trainer.is_alive()
    # epoch 2's checkpoint was superseded before it was begun
    assert written == [("checkpoint.npz", 1), ("checkpoint.npz", 3), ("generator.npz", 3)]
    assert int(final_arrays(run_dir)["epoch"]) == 3
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [f"epoch_00{i}.png" for i in (1, 2, 3)]
    assert len(samples) == 3 and not np.array_equal(samples[1], samples[2])
    for epoch, grid in enumerate(samples, 1):
        assert (run_dir / "samples" / f"epoch_00{epoch}.png").read_bytes() == png_bytes(image_grid(grid)), epoch
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


PROGRAMS = sorted(p.name for p in (ROOT / "examples").glob("*.py") if p.name != "torch_gan.py")  # a module


@pytest.mark.parametrize("script", PROGRAMS)
def test_every_program_refuses_an_unknown_argument_in_one_line(script):
    line = one_line_error(run_cli(script, "--no-such-flag"), 2)
    assert line.startswith(f"{script}: error: ")


def test_plots_draws_a_run_and_refuses_a_folder_that_is_not_one_in_one_line(data_dir, tmp_path):
    run_dir = tmp_path / "r"
    make_run(data_dir, run_dir, 1).train()
    proc = run_cli("plots.py", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert all((run_dir / name).stat().st_size > 0 for name in ("losses.png", "samples.gif", "interpolation.png"))
    (tmp_path / "empty").mkdir()
    assert "checkpoint.npz" in one_line_error(run_cli("plots.py", tmp_path / "empty"), 1)
    # cut off mid-line; whole JSON lines that are not an epoch's metrics: a list, a record without D(G(z))
    good = json.loads((run_dir / "metrics.jsonl").read_text())
    del good["D_G_z"]
    for text in ('{"epoch": 1, "loss_D": 0.5}\n{"epoch": 2, "lo', "[1, 2]\n", json.dumps(good) + "\n"):
        (run_dir / "metrics.jsonl").write_text(text)
        assert "metrics.jsonl: not one JSON object" in one_line_error(run_cli("plots.py", run_dir), 1)


def test_training_whose_metrics_file_is_spoilt_by_its_end_is_one_line_and_keeps_the_generator(
        data_dir, tmp_path, monkeypatch, capsys):
    """The pictures drawn at the end read metrics.jsonl back: one changed under the run (here the run's own writer
    made to write a list) is one line, exit status 1, after the generator and the checkpoint are saved."""
    monkeypatch.setattr(train, "write_metrics", lambda path, history: path.write_text("[1, 2]\n"))
    out = tmp_path / "r"
    assert train.main(["--data-dir", str(data_dir), "--out", str(out), "--epochs", "1"]) == 1
    assert capsys.readouterr().err == f"train_mnist.py: error: {out / 'metrics.jsonl'}: not one JSON object of an " \
        "epoch's metrics a line\n"
    assert ckpt.count(ckpt.load_npz(out / "generator.npz"), "epoch", out / "generator.npz") == 1


def test_train_torch_without_torch_or_data_is_one_line(data_dir, tmp_path):
    hidden = tmp_path / "hidden" / "torch"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("No module named \'torch\'")\n')
    proc = run_cli("train_torch.py", "--data-dir", data_dir, "--out", tmp_path / "t", pythonpath=[hidden.parent])
    assert "needs torch" in one_line_error(proc, 1)
    proc = run_cli("train_torch.py", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "t")
    assert "MNIST files not found" in one_line_error(proc, 1)


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing"])
def test_resume_from_a_damaged_checkpoint_is_one_line(data_dir, tmp_path, damage):
    make_run(data_dir, tmp_path / "r", 1).train()
    path = tmp_path / "r" / "checkpoint.npz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:1000] + bytes(b ^ 0xFF for b in data[1000:1100]) + data[1100:])
    else:
        path.unlink()
    line = one_line_error(run_cli("train_mnist.py", "--data-dir", data_dir, "--resume", tmp_path / "r",
                                  "--epochs", 2), 1)
    assert "checkpoint.npz" in line


def recipe_with(**fields):
    def damage(arrays):
        config = {**ckpt.read_config(arrays), **fields}
        arrays["config"] = ckpt.text({k: v for k, v in config.items() if v is not None})
    return damage


def stopped_at(step, perm):
    def damage(arrays):
        arrays["step"], arrays["perm"] = np.int64(step), perm
    return damage


# an entry of a checkpoint that is not what minigan writes: (what is done to the arrays, what the error names,
# whether the generator is touched, so that sample.py must refuse the file too)
ENTRY_DAMAGE = {
    "no config": (lambda a: a.pop("config"), "no 'config'", True),
    "config not JSON": (lambda a: a.update(config=np.array("{latent")), "'config' is not a JSON object", True),
    "latent_dim text": (recipe_with(latent_dim="100"), "the recipe's latent_dim must be at least 1, not '100'", True),
    "latent_dim negative": (recipe_with(latent_dim=-5), "latent_dim must be at least 1, not -5", True),
    "no seed": (recipe_with(seed=None), "the recipe has no seed", True),
    "version not a number": (lambda a: a.update(format_version=np.zeros(2)), "'format_version' is float64", True),
    "G params not finite": (lambda a: a["G/params"].__setitem__(7, np.nan), "G does not fit", True),
    "G params integers": (lambda a: a.update({"G/params": a["G/params"].astype(np.int32)}), "G does not fit", True),
    "epoch negative": (lambda a: a.update(epoch=np.int64(-1)), "'epoch' is -1, not a count", False),
    "step a float": (lambda a: a.update(step=np.float64(1)), "'step' is float64 of shape ()", False),
    "Adam t a vector": (lambda a: a.update({"opt_D/t": np.array([3, 3])}), "'opt_D/t' is int64 of shape (2,)", False),
    "rng not JSON": (lambda a: a.update(rng=np.array("[1]")), "'rng' is not a JSON object", False),
    "rng not a state": (lambda a: a.update(rng=ckpt.text({"backend": "numpy", "state": 5})),
                        "'rng' is not a state of numpy's random stream", False),
    "history not metrics": (lambda a: a.update(history=ckpt.text([1, 2])), "'history' is not a list of epochs'", False),
    "fixed_z too narrow": (lambda a: a.update(fixed_z=a["fixed_z"][:, :7]), "'fixed_z' is float32 of shape (32, 7)",
                           False),
    "stopped, other data": (stopped_at(2, np.arange(299)), "'perm' is int64 of shape (299,)", False),
    "stopped, no shuffle": (stopped_at(2, np.zeros(300, np.int64)), "'step' and 'perm' are not a place", False),
    "stopped past the end": (stopped_at(5, np.arange(300)), "'step' and 'perm' are not a place", False),
}


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished")
    make_run(data_dir, run_dir, 1).train()
    return final_arrays(run_dir)


@pytest.mark.parametrize("damage", ENTRY_DAMAGE)
def test_a_checkpoint_that_is_not_what_minigan_writes_is_one_line(damage, finished_run, data_dir, tmp_path, capsys):
    """Every entry is checked as it is read: the error names the file and the entry, whichever program reads it."""
    from minigan import sample

    change, message, generator = ENTRY_DAMAGE[damage]
    arrays = {k: v.copy() for k, v in finished_run.items()}
    change(arrays)
    ckpt.save_npz(tmp_path / "checkpoint.npz", arrays)
    assert train.main(["--data-dir", str(data_dir), "--resume", str(tmp_path), "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"train_mnist.py: error: {tmp_path / 'checkpoint.npz'}: "), err
    assert message in err
    status = sample.main(["--checkpoint", str(tmp_path), "--n", "4", "--out", str(tmp_path / "s.npy")])
    err = capsys.readouterr().err
    if generator:
        assert status == 1 and err.startswith(f"sample.py: error: {tmp_path / 'checkpoint.npz'}: "), err
        assert message in err and err.count("\n") == 1
    else:
        assert status == 0 and np.load(tmp_path / "s.npy").shape == (4, 784)


def test_compile_benchmark_prints_its_json_lines_and_refuses_bad_arguments():
    """examples/bench_compile.py on two small families (NVRTC, no GPU): whole files against their parts."""
    from bench_compile import NVRTC

    if NVRTC is None:
        pytest.skip("no NVRTC library (pip install nvidia-cuda-nvrtc)")
    proc = run_cli("bench_compile.py", "--families", "step", "data", "--threads", 2)
    assert proc.returncode == 0, proc.stderr
    whole, parts, ratio = map(json.loads, proc.stdout.splitlines())
    assert whole["files"] == 2 and parts["parts"] == 2 and parts["threads"] == 2
    assert whole["seconds"] > 0 and parts["seconds"] >= parts["longest_part_seconds"] > 0
    assert set(ratio["part_seconds"]) == {"data.cu", "step.cu"} and ratio["arch"] == "sm_90"
    one_line_error(run_cli("bench_compile.py", "--threads", 0), 2)
    one_line_error(run_cli("bench_compile.py", "--families", "nothing"), 2)


def test_compare_kernels_refuses_a_folder_without_kernels_and_a_machine_without_a_gpu(tmp_path):
    """examples/compare_kernels.py: OTHER must hold kernels/linear.cu (or be such a folder); then, where CuPy or
    the GPU is missing, one line and exit status 1, as the other GPU programs."""
    assert one_line_error(run_cli("compare_kernels.py", tmp_path), 2) == (
        f"compare_kernels.py: error: {tmp_path}: no kernels/linear.cu there (OTHER is a checkout of minigan, or its "
        "kernels/ folder)")
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return  # (tests/test_cupy.py runs it on the GPU)
    except Exception:
        pass
    for other in (ROOT, ROOT / "kernels"):
        assert "--backend cupy needs" in one_line_error(run_cli("compare_kernels.py", other), 1)


def test_profile_timeline_reads_each_launch_of_the_replayed_graph():
    """examples/profile_step.py --timeline: the profiler's kernels (Chrome trace events, in no order, kernels
    outside the graph among them) cut into replays, matched to the step's launches by graph node id (by name and
    start where the ids do not give the launches' order), and each launch's medians over the replays; a replay
    short of a kernel, or with another kernel in one's place, is refused."""
    from profile_step import graph_timeline

    launches = [("linear_forward_32x32_4x4+cluster", "side"), ("normal_step_fill", "main"),
                ("linear_forward_32x32_4x4", "main"), ("step_finish", "main")]
    events = []
    for r in range(3):  # replay r: (kernel, node, start, duration); the third launch takes 9, 10, 11 us
        begin = 1000.0 * r
        events += [{"cat": "kernel", "name": name, "ts": begin + start, "dur": dur, "args": {"graph node id": node}}
                   for name, node, start, dur in (("linear_forward_32x32_4x4", 101, 2.0, 10.0),  # after the next
                                                  ("normal_step_fill", 102, 1.0, 3.0),
                                                  ("linear_forward_32x32_4x4", 103, 3.0, 9.0 + r),  # a dependent
                                                  ("step_finish", 104, 12.0 + r, 2.0))]  # launch starts early
        events.append({"cat": "kernel", "name": "cupy_copy", "ts": begin - 5, "dur": 1.0, "args": {"graph node id": 0}})
    events.reverse()
    figures, summary = graph_timeline(events, launches)
    assert figures[0] == {"start_us": 1.0, "end_us": 11.0, "us": 10.0, "adds_us": 11.0}
    assert figures[2] == {"start_us": 2.0, "end_us": 12.0, "us": 10.0, "adds_us": 9.0}  # 12 less the noise's 3
    assert figures[3] == {"start_us": 12.0, "end_us": 14.0, "us": 2.0, "adds_us": 2.0}
    assert summary == {"replays": 3, "period_us": 1000.0, "span_us": 14.0, "adds_us": {"side": 11.0, "main": 14.0},
                       "matched_by": "graph node id"}
    # without the node ids, or where they do not give the launches' order: by name, in the order of the starts
    for args in (lambda node: {}, lambda node: {"graph node id": {101: 103, 102: 101, 103: 102}.get(node, node)}):
        relabelled = [dict(event, args=args(event["args"]["graph node id"])) for event in events]
        assert graph_timeline(relabelled, launches) == (figures, dict(summary, matched_by="name and start"))
    short = [event for event in events if event["ts"] != 1013.0]  # the second replay's step_finish
    with pytest.raises(ValueError, match="whole replays"):
        graph_timeline(short, launches)
    foreign = [dict(event, name="step_finish") if event["ts"] == 1001.0 else event for event in events]
    with pytest.raises(ValueError, match="not the step's launches"):
        graph_timeline(foreign, launches)


def test_profile_timeline_without_torch_on_a_gpu_is_one_line():
    proc = run_cli("profile_step.py", "--timeline", 5)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == ("profile_step.py: error: --timeline needs torch with CUDA (its profiler records "
                                   "the graph's kernels)")


def test_search_tiles_refuses_bad_arguments_and_a_machine_without_a_gpu(tmp_path):
    """examples/search_tiles.py: --out is required and --margin a fraction (argparse's usage line, status 2); then,
    where CuPy or the GPU is missing, one line and exit status 1, as the other GPU programs."""
    for args, message in (((), "the following arguments are required: --out"),
                          (("--out", tmp_path / "t", "--margin", "1"), "--margin in [0, 1)")):
        proc = run_cli("search_tiles.py", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert message in proc.stderr.strip().splitlines()[-1]
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return  # (tests/test_cupy_emulated.py runs it on the emulated GPU)
    except Exception:
        pass
    assert "--backend cupy needs" in one_line_error(run_cli("search_tiles.py", "--out", tmp_path / "t"), 1)
    assert not (tmp_path / "t").exists()
