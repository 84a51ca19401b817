import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # torch_gan.py, the reference program

SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

if os.environ.get("MINIGAN_EMULATE_GPU"):  # the GPU tests on the CPU (tests/fake_cupy.py), before any imports cupy
    from fake_cupy import install
    from kernel_host import HostKernels

    install(HostKernels())


class RecordingRng:
    """Stands in for a numpy Generator: draws from a seeded one and records every draw, in order.

    A test replays the recorded noise and uniforms in PyTorch, so both sides see the same z and masks.
    With ``frozen=True`` the same array comes back for the same (kind, shape): fixed dropout masks for a
    finite-difference check.
    """

    def __init__(self, seed=0, frozen=False):
        self.rng = np.random.default_rng(seed)
        self.frozen = frozen
        self.draws = []
        self._frozen = {}

    def _draw(self, kind, shape, dtype, make):
        key = (kind, tuple(shape), np.dtype(dtype))
        if self.frozen and key in self._frozen:
            return self._frozen[key]
        a = make()
        self.draws.append((kind, a))
        self._frozen[key] = a
        return a

    def standard_normal(self, shape, dtype=np.float64):
        return self._draw("normal", shape, dtype, lambda: self.rng.standard_normal(shape, dtype=dtype))

    def random(self, shape, dtype=np.float64):
        return self._draw("uniform", shape, dtype, lambda: self.rng.random(shape, dtype=dtype))

    def permutation(self, n):
        return self.rng.permutation(n)


class Replay:
    """Hands back given draws, in order, as NumPy arrays: the other side of a RecordingRng or a device stream."""

    def __init__(self, draws):
        self.draws = list(draws)

    def random(self, shape, dtype=np.float64):
        a = self.draws.pop(0)
        assert a.shape == tuple(shape), (a.shape, shape)
        return a.astype(dtype)

    standard_normal = random


def use_rng(gan, rng):
    """Make ``rng`` the GAN's random stream: its noise and every Dropout layer's masks."""
    from minigan.layers import Dropout

    gan.rng = rng
    for layer in gan.D.layers:
        if isinstance(layer, Dropout):
            layer.rng = rng


def align_state(gan, source):
    """Give ``gan`` the training state of ``source``, on its own backend: weights, BatchNorm buffers, and both
    Adams' m, v and t.

    Step comparisons align the reference before each step, so that each step is compared from one state and
    shows that step's rounding only. Without it the rounding of the steps before compounds, and Adam magnifies
    it where a gradient is small: its update is ~lr whatever the gradient's size, so a weight whose gradient
    differs by 10% between two summation orders moves ~lr/10 apart (measured on the emulated GPU: 0.3% of the
    weights ~4e-4 apart after 6 chained steps; the runs still track each other, as
    tests/test_cupy_emulated.py checks over epochs).
    """
    from minigan.backend import to_host

    for model in ("G", "D"):  # Model.state() is host copies; load_state takes them on either backend
        getattr(gan, model).load_state(getattr(source, model).state())
    for opt in ("opt_G", "opt_D"):
        getattr(gan, opt).load_state({k: to_host(v) for k, v in getattr(source, opt).state().items()})


def parameters_before(gan):
    """Host copies of every parameter tensor of G and D, for assert_step_matches."""
    from minigan.backend import to_host

    return {m: [to_host(v).copy() for _, v in getattr(gan, m).named_parameters()] for m in ("G", "D")}


def assert_step_matches(gan, reference, before, rtol=1e-2):
    """After one step of ``gan`` (any backend) and of ``reference`` (NumPy) from the same state (align_state;
    ``before`` = parameters_before), each parameter tensor's gradient and update (new - old) agree within
    ``rtol`` in relative L2 norm. Returns the largest relative difference seen.

    Not elementwise: where an input of a LeakyReLU lies within rounding of 0 (measured: D's, at 4e-8, once in
    three steps of batch 128), two summation orders take different branches, its gradient differs by the
    factor 5 between the slopes, and every weight gradient upstream moves by ~3e-3 of its size. A wrong
    kernel moves them by far more; tests/test_fused_step.py checks elementwise where the rounding is fixed.
    """
    from minigan.backend import to_host

    worst = 0.0
    for m in ("G", "D"):
        ours, theirs = getattr(gan, m), getattr(reference, m)
        tensors = [(layer_index, key) for layer_index, layer in enumerate(theirs.layers) for key in layer.params]
        for (i, key), old in zip(tensors, before[m], strict=True):
            got_layer, want_layer = ours.layers[i], theirs.layers[i]
            for what, got, want in (("gradient", to_host(got_layer.grads[key]), want_layer.grads[key]),
                                    ("update", to_host(got_layer.params[key]) - old, want_layer.params[key] - old)):
                size = float(np.linalg.norm(want))
                apart = float(np.linalg.norm(got - want)) / max(size, 1e-30)
                worst = max(worst, apart)
                assert apart < rtol, f"{m} layer {i} {key}: {what} {apart:.1e} apart (relative L2; |{what}| {size:.1e})"
    return worst


def numeric_grad(f, x, h=1e-6, indices=None):
    """Central differences of the scalar f() w.r.t. the entries of array x (modified in place and restored)."""
    flat = x.reshape(-1)
    indices = range(flat.size) if indices is None else indices
    grad = np.zeros(len(indices))
    for j, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        grad[j] = (plus - minus) / (2 * h)
    return grad


@pytest.fixture
def shared_mnist():
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not present at {SHARED_MNIST}")
    return SHARED_MNIST


def runs_beside_numpy(folder, n, batch_size, epochs):
    """The recipe on ``n`` images written to ``folder``, trained on the CuPy backend (the fused step), then on
    NumPy drawing the same numbers (philox_reference.StepReplay): {"cupy": Run, "numpy": Run}."""
    from philox_reference import StepReplay
    from test_data import write_mnist

    from minigan.backend import get_backend
    from minigan.data import load_mnist
    from minigan.train import RECIPE, Run

    write_mnist(folder, n=n, seed=5)
    images = load_mnist(folder)[0]
    config = {**RECIPE, "batch_size": batch_size, "epochs": epochs}
    runs = {}
    for name in ("cupy", "numpy"):
        (folder / name / "samples").mkdir(parents=True)
        runs[name] = Run(config, get_backend(name), images, folder / name, log=lambda s: None)
    runs["cupy"].train()
    use_rng(runs["numpy"].gan, StepReplay(RECIPE["seed"], 1, RECIPE["seed"]))
    runs["numpy"].train()
    return runs
