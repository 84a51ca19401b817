"""The quality metrics: Fréchet distance, precision/recall and mode histogram on known cases; the feature
classifier on real MNIST (>= 98% test accuracy); the plots of a run folder."""

import json

import numpy as np
import pytest
from test_cli import one_line_error, run_cli
from test_data import write_mnist

from minigan import evaluate as ev
from minigan.backend import get_backend
from minigan.train import RECIPE, Run


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(ev.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), expected, rtol=1e-10)


def test_frechet_distance_of_full_covariances_is_symmetric_and_zero_on_itself():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((500, 6)), rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) + 1
    sa, sb = ev.gaussian_stats(a), ev.gaussian_stats(b)
    assert abs(ev.frechet_distance(*sa, *sa)) < 1e-8
    np.testing.assert_allclose(ev.frechet_distance(*sa, *sb), ev.frechet_distance(*sb, *sa), rtol=1e-8)
    assert ev.frechet_distance(*sa, *sb) > 1


def test_precision_and_recall_see_quality_and_mode_dropping():
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((10, 8)) * 10
    real = centers[rng.integers(0, 10, 2000)] + rng.standard_normal((2000, 8))
    same = centers[rng.integers(0, 10, 2000)] + rng.standard_normal((2000, 8))
    p, r = ev.precision_recall(real, same)
    assert p > 0.75 and r > 0.75  # k = 3 balls in 8-D cover most, not all, of a same-distribution sample
    one_mode = centers[np.zeros(2000, int)] + rng.standard_normal((2000, 8))
    p, r = ev.precision_recall(real, one_mode)
    assert p > 0.75 and r < 0.2  # good samples of one digit: precise, no recall
    far = real + 100
    assert ev.precision_recall(real, far) == (0.0, 0.0)


def test_class_histogram_kl():
    uniform = np.eye(10)[np.arange(1000) % 10]
    counts, kl = ev.class_histogram(uniform)
    assert counts.tolist() == [100] * 10 and abs(kl) < 1e-12
    _, kl = ev.class_histogram(np.eye(10)[np.zeros(50, int)])
    np.testing.assert_allclose(kl, np.log(10))
    _, kl = ev.class_histogram(np.eye(10)[np.arange(50) % 2])  # two digits only: KL = log(10 / 2)
    np.testing.assert_allclose(kl, np.log(5))


def test_the_metrics_in_batches_equal_one_batch_and_their_balls_are_closed():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((25, 4))
    mu, sigma = ev.gaussian_stats(x)  # per feature, over the rows
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.T), rtol=1e-12)
    brute = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(ev._squared_distances(x, x), brute, atol=1e-12)  # 0 on each point itself
    radii = ev.knn_radii(x, 3)
    np.testing.assert_allclose(radii, np.sort(brute, axis=1)[:, 3], atol=1e-12)  # the 3rd nearest other row
    np.testing.assert_array_equal(ev.knn_radii(x, 3, batch=7), radii)
    assert ev.coverage(y, x, radii, batch=4) == ev.coverage(y, x, radii) > 0
    # a k-NN ball holds its boundary (Kynkaenniemi et al. 2019): points 0..3 on a line, each ball of radius 1
    line = np.arange(4.0)[:, None]
    line_radii = ev.knn_radii(line, 1)
    np.testing.assert_array_equal(line_radii, [1, 1, 1, 1])
    assert ev.coverage(np.array([[4.0]]), line, line_radii) == 1.0
    assert ev.coverage(np.array([[4.5]]), line, line_radii) == 0.0
    # the classifier's features are the output of its second LeakyReLU, batch by batch as in one pass
    model = ev.make_classifier(np.random.default_rng(4))
    images = rng.uniform(0, 1, (23, 784)).astype(np.float32)
    features, logits = ev.features_and_logits(model, images)
    hidden = images
    for layer in model.layers[: ev.FEATURE_LAYER + 1]:
        hidden = layer.forward(hidden)
    np.testing.assert_allclose(features, hidden, rtol=1e-5, atol=1e-6)  # float32 products: blocking may differ
    assert features.shape == (23, 256) and logits.shape == (23, 10)
    batched = ev.features_and_logits(model, images, batch=5)
    np.testing.assert_allclose(batched[0], features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1], logits, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory, shared_mnist_module):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIGAN_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def shared_mnist_module():
    from conftest import SHARED_MNIST

    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not present at {SHARED_MNIST}")
    return SHARED_MNIST


def test_classifier_and_metrics_on_real_mnist(classifier_cache, shared_mnist_module):
    from minigan.data import load_mnist, to_unit_interval

    train, test = load_mnist(shared_mnist_module), load_mnist(shared_mnist_module, "test")
    model, accuracy = ev.load_or_train_classifier(train, test, log=lambda s: None)
    assert accuracy >= ev.MIN_ACCURACY
    assert len(list(classifier_cache.glob("mnist-classifier-*.npz"))) == 1
    again, cached_accuracy = ev.load_or_train_classifier(train, test, log=pytest.fail)  # from the cache
    assert cached_accuracy == accuracy
    np.testing.assert_array_equal(again.params, model.params)

    # real training images score like real data; noise and a single repeated digit do not
    real = ev.evaluate_images(to_unit_interval(train[0][-3000:]), shared_mnist_module, log=lambda s: None)
    assert real["n_generated"] == 3000 and real["n_real"] == 10000
    # the classifier named by its weights: the cached one is the one trained, another one is another
    assert real["classifier_sha256"] == ev.classifier_id(model) == ev.classifier_id(again)
    other = ev.make_classifier(np.random.default_rng(1))
    assert len(real["classifier_sha256"]) == 16 and ev.classifier_id(other) != real["classifier_sha256"]
    assert real["fid_mnist"] < 5 * max(real["fid_mnist_floor"], 1e-3) + 1
    assert real["class_kl_from_uniform"] < 0.01 and real["precision"] > 0.6 and real["recall"] > 0.6
    noise = ev.evaluate_images(np.random.default_rng(0).random((3000, 784), dtype=np.float32),
                               shared_mnist_module, log=lambda s: None)
    # (precision alone is fooled by the k-NN balls of real outliers, which swallow some noise; FID is not)
    assert noise["fid_mnist"] > 20 * real["fid_mnist"] and noise["precision"] < 0.5 * real["precision"]
    ones = to_unit_interval(train[0][train[1] == 1][:3000])
    single = ev.evaluate_images(ones, shared_mnist_module, log=lambda s: None)
    assert single["class_kl_from_uniform"] > 2.0 and single["recall"] < 0.3
    for name, r in (("real", real), ("noise", noise), ("ones", single)):
        print(f"\n{name}: FID-MNIST {r['fid_mnist']}, KL {r['class_kl_from_uniform']}, precision {r['precision']}, "
              f"recall {r['recall']}")


def test_evaluate_program_on_a_trained_run(classifier_cache, shared_mnist_module, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train_mnist.py", "--data-dir", shared_mnist_module, "--train-size", 512, "--epochs", 1,
                   "--out", out, "--evaluate", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "evaluation.json").read_text())
    assert result["n_generated"] == 10000 and result["fid_mnist"] > 0 and sum(result["class_counts"]) == 10000
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    proc = run_cli("evaluate.py", "--checkpoint", out, "--data-dir", shared_mnist_module, "--n", 2000,
                   "--out", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_generated"] == 2000 and result == json.loads((tmp_path / "e.json").read_text())


def test_plots_of_a_run_folder(tmp_path, monkeypatch):
    write_mnist(tmp_path, n=100)
    from minigan.data import load_mnist

    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    config = {**RECIPE, "batch_size": 50, "epochs": 3}
    Run(config, get_backend("numpy"), load_mnist(tmp_path)[0], run_dir, log=lambda s: None).train()
    from minigan.plots import write_plots

    write_plots(run_dir)
    from PIL import Image

    gif = Image.open(run_dir / "samples.gif")
    assert gif.n_frames == 3
    assert Image.open(run_dir / "losses.png").size[0] > 500
    assert Image.open(run_dir / "interpolation.png").size == (10 * 30 + 2, 8 * 30 + 2)
    # redrawn by a program killed in the middle of a picture's write, the folder keeps the last whole picture
    import os

    from matplotlib.figure import Figure

    import minigan.plots

    pictures = {name: (run_dir / name).read_bytes() for name in ("losses.png", "samples.gif")}

    def killed_mid_write(self, file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            file = open(file, "wb")  # noqa: SIM115 (left open, as by a killed process)
        file.write(b"half a picture")
        file.flush()
        raise KeyboardInterrupt

    # the GIF's frames are written by Pillow's Image.save, and so is matplotlib's PNG: the losses are left out there
    for cls, method, left_out in ((Figure, "savefig", None), (Image.Image, "save", "plot_losses")):
        with monkeypatch.context() as patch:
            patch.setattr(cls, method, killed_mid_write)
            if left_out:
                patch.setattr(minigan.plots, left_out, lambda *args: None)
            with pytest.raises(KeyboardInterrupt):
                write_plots(run_dir)
    assert {name: (run_dir / name).read_bytes() for name in pictures} == pictures
    assert not [path.name for path in run_dir.iterdir() if path.name.endswith(".tmp")]


def test_slerp_goes_along_the_great_circle_at_an_even_rate():
    """Between two vectors of one norm, every point keeps that norm and turns from the first by t times the angle
    between them, in their plane; vectors in one direction (no circle to follow) get the straight line."""
    from minigan.plots import slerp

    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 100))
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    angle = lambda u, v: np.arccos(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))  # noqa: E731
    omega = angle(a, b)
    for t in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        z = slerp(a, b, t)
        np.testing.assert_allclose(np.linalg.norm(z), np.linalg.norm(a), rtol=1e-12)
        np.testing.assert_allclose([angle(a, z), angle(z, b)], [t * omega, (1 - t) * omega], atol=1e-7)
        coefficients = np.linalg.lstsq(np.stack([a, b], axis=1), z, rcond=None)[0]
        np.testing.assert_allclose(np.stack([a, b], axis=1) @ coefficients, z, atol=1e-12)  # in a and b's plane
    np.testing.assert_array_equal(slerp(a, b, 0.0), a)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-12)
    # at a small angle still the circle, not the chord (whose midpoint falls short of the norm by ~angle² / 8)
    u = a / np.linalg.norm(a)
    v = b - (b @ u) * u
    near = np.linalg.norm(a) * (np.cos(0.005) * u + np.sin(0.005) * v / np.linalg.norm(v))
    np.testing.assert_allclose(np.linalg.norm(slerp(a, near, 0.5)), np.linalg.norm(a), rtol=1e-9)
    for c in np.random.default_rng(0).standard_normal((20, 100)):  # cos(c, 3c) rounds above 1 for some of them
        np.testing.assert_allclose(slerp(c, 3 * c, 0.25), 1.5 * c, rtol=1e-12)  # (1 - t) c + t 3c


def test_the_interpolation_grid_rows_go_from_one_noise_vector_to_another(tmp_path):
    """interpolation.png: 8 rows of 10 images, row r G's images along slerp from the r-th pair of the seed's
    noise vectors to the other, in eval mode."""
    from minigan.gan import make_generator
    from minigan.plots import interpolation_grid, slerp

    G = make_generator(100, np.random.default_rng(0), np)
    G.train()
    inputs, real_forward = [], G.forward

    def forward(z):  # what G is given, and whether in training mode
        inputs.append((z, G.training))
        return real_forward(z)

    G.forward = forward
    path = tmp_path / "interpolation.png"
    interpolation_grid(G, 100, path, get_backend("numpy"))
    (z, training), = inputs
    ends = np.random.default_rng(0).standard_normal((8, 2, 100))
    assert z.shape == (80, 100) and z.dtype == np.float32 and not training
    np.testing.assert_array_equal(z[0::10], ends[:, 0].astype(np.float32))
    np.testing.assert_allclose(z[9::10], ends[:, 1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z[3], slerp(ends[0, 0], ends[0, 1], 3 / 9), rtol=1e-6, atol=1e-6)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_generate_in_batches_equals_one_pass():
    from minigan.gan import make_generator

    G = make_generator(100, np.random.default_rng(0))
    backend = get_backend("numpy")
    batched = ev.generate(G, 100, 50, backend, seed=1, batch=20)
    whole = ev.generate(G, 100, 50, backend, seed=1, batch=50)
    assert len(np.unique(batched.round(6), axis=0)) == 50
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)  # eval-mode BatchNorm: rows independent


@pytest.mark.parametrize("args, message", [
    (["--n", "5"], "--n must be at least 10, got 5"),
    (["--seed", "-1"], "--seed must be non-negative, got -1"),
    (["--out", "missing/e.json"], "missing: folder does not exist"),
])
def test_evaluate_refuses_bad_arguments_before_loading_anything(tmp_path, args, message):
    args = [str(tmp_path / a) if a.startswith("missing/") else a for a in args]
    line = one_line_error(run_cli("evaluate.py", "--checkpoint", tmp_path / "none.npz", *args), 2)
    assert line.startswith("evaluate.py: error: ") and line.endswith(message)


def test_evaluate_keeps_its_metrics_when_the_out_file_cannot_be_written(tmp_path, monkeypatch, capsys):
    """The metrics take minutes: a write that fails after them leaves them on stdout, with one line of error."""
    from minigan import fileio

    images = np.zeros((2, 784), np.uint8)
    Run({**RECIPE, "epochs": 1}, get_backend("numpy"), images, tmp_path, log=lambda s: None).save_generator()

    def disk_full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ev, "evaluate_images", lambda images, data_dir, log: {"fid_mnist": 1.5, "n": len(images)})
    monkeypatch.setattr(fileio, "atomic_write_bytes", disk_full)
    status = ev.main(["--checkpoint", str(tmp_path / "generator.npz"), "--n", "10", "--out", str(tmp_path / "e.json")])
    out, err = capsys.readouterr()
    assert status == 1
    assert json.loads(out) == {"checkpoint": str(tmp_path / "generator.npz"), "fid_mnist": 1.5, "n": 10}
    assert err.count("\n") == 1 and "e.json: not written (No space left on device)" in err


def test_a_classifier_cache_that_cannot_be_written_costs_only_the_cache(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MINIGAN_CACHE", str(tmp_path / "a-file" / "cache"))  # below a file: no folder there
    trained = ev.make_classifier(np.random.default_rng(1))
    monkeypatch.setattr(ev, "train_classifier", lambda *data, log: (trained, 0.99))
    images, labels = np.zeros((4, 784), np.uint8), np.arange(4, dtype=np.uint8)
    logged = []
    model, accuracy = ev.load_or_train_classifier((images, labels), (images, labels), logged.append)
    assert model is trained and accuracy == 0.99
    assert logged[-1].startswith("the classifier is not cached: ") and str(tmp_path / "a-file") in logged[-1]
