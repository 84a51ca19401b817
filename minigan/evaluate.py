"""How good is a generator? Metrics in the feature space of an MNIST classifier trained with minigan itself.

- **FID-MNIST**: the Fréchet distance between Gaussians fitted to classifier features of generated images
  and of the 10,000 MNIST test images (Heusel et al., 2017, with our classifier in place of Inception):

  .. math:: d^2 = \\lVert \\mu_g - \\mu_r \\rVert^2 + \\mathrm{Tr}\\big(\\Sigma_g + \\Sigma_r - 2 (\\Sigma_g \\Sigma_r)^{1/2}\\big)

  It depends on the classifier and on the number of samples, so it is comparable only between minigan
  evaluations with the same sample counts and the same classifier (``classifier_sha256``). The same distance
  between 10,000 *training* images and the test images is reported as the floor a perfect generator would
  reach.
- **Mode coverage**: the histogram of the classes the classifier predicts for the generated images, and
  its KL divergence from the uniform distribution (0 when all ten digits are equally frequent; log 10 =
  2.30 when only one digit is ever drawn).
- **Precision and recall** (Kynkäänniemi et al., 2019): each set's support is the union of balls around
  its points, of radius the distance to the point's k-th nearest neighbour in the same set; precision is
  the share of generated points inside the real support, recall the share of real points inside the
  generated support.

The classifier (784-1024-256-10 MLP, LeakyReLU, dropout, softmax cross-entropy, Adam) is trained once and
cached in ``$MINIGAN_CACHE`` (default ``~/.cache/minigan``); it must reach 98% test accuracy.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from minigan import checkpoint as ckpt
from minigan.data import load_mnist, to_unit_interval
from minigan.layers import Dropout, LeakyReLU, Linear
from minigan.losses import cross_entropy_backward
from minigan.model import Sequential
from minigan.optim import Adam

CLASSIFIER_RECIPE = {"hidden": [1024, 256], "slope": 0.01, "dropout": 0.3, "epochs": 10, "lr": 1e-3,
                     "lr_decay": 0.7, "batch_size": 128, "seed": 0, "version": 1}
FEATURE_LAYER = 4  # output of the second LeakyReLU: the 256 features
MIN_ACCURACY = 0.98


class EvaluationError(RuntimeError):
    """The metrics cannot be computed (the classifier did not reach MIN_ACCURACY); one line for the user."""


def make_classifier(rng, dtype=np.float32):
    h1, h2 = CLASSIFIER_RECIPE["hidden"]
    slope, p = CLASSIFIER_RECIPE["slope"], CLASSIFIER_RECIPE["dropout"]
    return Sequential(
        Linear(784, h1, rng, dtype=dtype), LeakyReLU(slope, dtype=dtype), Dropout(p, rng, dtype=dtype),
        Linear(h1, h2, rng, dtype=dtype), LeakyReLU(slope, dtype=dtype), Dropout(p, rng, dtype=dtype),
        Linear(h2, 10, rng, dtype=dtype),
    )


def features_and_logits(model, images, batch=2000):
    """Eval-mode features (N, 256) and logits (N, 10) of images (N, 784) in [0, 1]."""
    model.eval()
    feats, logits = [], []
    for lo in range(0, len(images), batch):
        x = np.asarray(images[lo : lo + batch], np.float32)
        for i, layer in enumerate(model.layers):
            x = layer.forward(x)
            if i == FEATURE_LAYER:
                feats.append(x.astype(np.float64))
        logits.append(x.copy())
    return np.concatenate(feats), np.concatenate(logits)


def train_classifier(train_x, train_y, test_x, test_y, log=print):
    """Train the feature classifier on uint8 images; return (model, test accuracy)."""
    r = CLASSIFIER_RECIPE
    rng = np.random.default_rng(r["seed"])
    model = make_classifier(rng)
    opt = Adam(model.params, model.grads, lr=r["lr"], betas=(0.9, 0.999))
    batch = np.empty((r["batch_size"], 784), np.float32)
    for epoch in range(r["epochs"]):
        opt.lr = r["lr"] * r["lr_decay"] ** epoch  # a decaying step settles the last half percent of accuracy
        model.train()
        perm = rng.permutation(len(train_x))
        for lo in range(0, len(perm), r["batch_size"]):
            idx = perm[lo : lo + r["batch_size"]]
            x = to_unit_interval(train_x[idx], out=batch[: len(idx)])
            logits = model.forward(x)
            model.backward(cross_entropy_backward(logits, train_y[idx]), input_grad=False)
            opt.step()
        accuracy = float((features_and_logits(model, to_unit_interval(test_x))[1].argmax(1) == test_y).mean())
        log(f"classifier epoch {epoch + 1}/{r['epochs']}: test accuracy {accuracy:.4f}")
    return model, accuracy


def cache_dir():
    return Path(os.environ.get("MINIGAN_CACHE") or Path.home() / ".cache" / "minigan")


def _fingerprint(*arrays):
    h = hashlib.sha256(json.dumps(CLASSIFIER_RECIPE, sort_keys=True).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def load_or_train_classifier(train, test, log=print):
    """The cached classifier for this data and recipe, training and caching it first if needed."""
    fingerprint = _fingerprint(train[1], test[1], train[0][::997], test[0][::997])
    path = cache_dir() / f"mnist-classifier-{fingerprint}.npz"
    model = make_classifier(np.random.default_rng(0))
    if path.exists():
        try:
            arrays = ckpt.load_npz(path)
            ckpt.load_model(arrays, "classifier", model, path)
            return model, float(ckpt.array(arrays, "test_accuracy", path, ()))
        except ckpt.CheckpointError as e:
            log(f"retraining the classifier: {e}")
    log(f"training the feature classifier once (cached in {path})")
    model, accuracy = train_classifier(*train, *test, log=log)
    if accuracy < MIN_ACCURACY:
        raise EvaluationError(f"the feature classifier reached only {accuracy:.4f} test accuracy (< {MIN_ACCURACY})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt.save_npz(path, {"format_version": np.int64(ckpt.FORMAT_VERSION), "test_accuracy": np.float64(accuracy),
                             "recipe": ckpt.text(CLASSIFIER_RECIPE), **ckpt.model_arrays("classifier", model)})
    except OSError as e:  # a cache that cannot be written costs the next evaluation a retraining, not this one
        log(f"the classifier is not cached: {path}: {e.strerror or e}")
    return model, accuracy


def gaussian_stats(features):
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with Tr (S1 S2)^(1/2) = sum of the square roots of
    the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2) (similar to S1 S2, so the same eigenvalues)."""
    w, V = np.linalg.eigh(sigma1)
    sqrt1 = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    middle = sqrt1 @ sigma2 @ sqrt1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _squared_distances(a, b):
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0, out=d)


def knn_radii(x, k, batch=1000):
    """Squared distance from each row of x to its k-th nearest other row."""
    radii = np.empty(len(x))
    for lo in range(0, len(x), batch):
        d = _squared_distances(x[lo : lo + batch], x)
        radii[lo : lo + batch] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def coverage(queries, support, support_radii, batch=1000):
    """Share of query rows that lie within the k-NN ball of at least one support row."""
    inside = 0
    for lo in range(0, len(queries), batch):
        d = _squared_distances(queries[lo : lo + batch], support)
        inside += int((d <= support_radii[None, :]).any(axis=1).sum())
    return inside / len(queries)


def precision_recall(real, fake, k=3):
    real, fake = real.astype(np.float32), fake.astype(np.float32)
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def class_histogram(logits):
    counts = np.bincount(logits.argmax(axis=1), minlength=10)
    q = counts / counts.sum()
    kl = float(np.sum(q[q > 0] * np.log(q[q > 0] * 10)))
    return counts, kl


def classifier_id(model):
    """The classifier's fingerprint: its recipe's and its weights'. The classifier is seeded, but its float32
    training rounds as the machine's BLAS does, so two machines may train two classifiers (test accuracy
    0.9848 and 0.9843 in this project's runs): metrics compare only under the same one."""
    return _fingerprint(model.params)


def evaluate_images(images, data_dir=None, log=print, k=3):
    """All metrics of generated images (N, 784) in [0, 1] against the MNIST test set."""
    train = load_mnist(data_dir, "train")
    test = load_mnist(data_dir, "test")
    model, accuracy = load_or_train_classifier(train, test, log)
    real_features, _ = features_and_logits(model, to_unit_interval(test[0]))
    floor_features, _ = features_and_logits(model, to_unit_interval(train[0][: len(test[0])]))
    fake_features, fake_logits = features_and_logits(model, images)
    real_stats = gaussian_stats(real_features)
    counts, kl = class_histogram(fake_logits)
    precision, recall = precision_recall(real_features, fake_features, k)
    return {
        "n_generated": len(images), "n_real": len(test[0]),
        "fid_mnist": round(frechet_distance(*gaussian_stats(fake_features), *real_stats), 4),
        "fid_mnist_floor": round(frechet_distance(*gaussian_stats(floor_features), *real_stats), 4),
        "class_counts": counts.tolist(), "class_kl_from_uniform": round(kl, 4),
        "precision": round(precision, 4), "recall": round(recall, 4), "k": k,
        "classifier_test_accuracy": round(accuracy, 4), "classifier_sha256": classifier_id(model),
        "note": "FID-MNIST uses minigan's own MNIST classifier: compare only between minigan evaluations "
                "with the same sample counts and the same classifier_sha256",
    }


def generate(G, latent_dim, n, backend, seed=0, batch=2000):
    """n images (N, 784) from G in eval mode; z ~ N(0, I) from a seeded NumPy stream, the same on every backend."""
    z = np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)
    G.eval()
    # np.array copies: G.forward returns its output buffer, which the next batch overwrites
    return np.concatenate([np.array(backend.to_numpy(G.forward(backend.asarray(z[lo : lo + batch]))))
                           for lo in range(0, n, batch)])


def main(argv=None):
    """``examples/evaluate.py``: print the metrics of a checkpoint's generator as one JSON line."""
    import sys

    from minigan.backend import BACKENDS, BackendError, get_backend
    from minigan.cli import ArgumentParser
    from minigan.data import DataError
    from minigan.sample import load_generator

    prog = "evaluate.py"
    p = ArgumentParser(prog=prog, description="FID-MNIST, mode coverage, precision/recall of a generator.")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.npz, generator.npz or a run folder")
    p.add_argument("--n", type=int, default=10000, help="generated images (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--data-dir", type=Path, help="MNIST folder (default $MINIGAN_DATA, else ./data)")
    p.add_argument("--backend", default="numpy", choices=BACKENDS)
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.n < 10:
        p.error(f"--n must be at least 10, got {args.n}")
    if args.seed < 0:
        p.error(f"--seed must be non-negative, got {args.seed}")
    if args.out is not None and not args.out.parent.is_dir():  # known before the minutes the metrics take
        p.error(f"{args.out.parent}: folder does not exist")
    try:
        backend = get_backend(args.backend)
        G, config = load_generator(args.checkpoint, backend)
        images = generate(G, config["latent_dim"], args.n, backend, args.seed)
        result = {"checkpoint": str(args.checkpoint),
                  **evaluate_images(images, args.data_dir, log=lambda s: print(s, file=sys.stderr))}
    except (BackendError, DataError, ckpt.CheckpointError, EvaluationError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # --n beyond the machine's or the GPU's memory
        print(f"{prog}: error: out of memory ({e})", file=sys.stderr)
        return 1
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        from minigan.fileio import atomic_write_bytes

        try:
            atomic_write_bytes(args.out, (line + "\n").encode())
        except OSError as e:  # the metrics are on stdout above: not lost
            print(f"{prog}: error: {args.out}: not written ({e.strerror or e}); the metrics are the line above",
                  file=sys.stderr)
            return 1
    return 0
