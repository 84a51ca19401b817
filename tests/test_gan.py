"""The GAN's step: the one-pass D(real; fake) equivalence, the whole-chain gradient, flat buffers."""

import numpy as np
from conftest import RecordingRng, numeric_grad

from minigan.backend import get_backend, same_array
from minigan.gan import GAN, make_discriminator, make_generator
from minigan.layers import Dropout
from minigan.losses import bce_backward, bce_forward


def test_one_pass_over_real_and_fake_equals_two_passes():
    """D has no BatchNorm, so D([real; fake]) with masks [m_r; m_f] is D(real) with m_r and D(fake) with m_f:
    the same loss and the same parameter gradient as the reference's two passes."""
    rng = np.random.default_rng(0)
    n = 6
    D = make_discriminator(rng=rng, dtype=np.float64)
    masks = RecordingRng(1)
    for layer in D.layers:
        if isinstance(layer, Dropout):
            layer.rng = masks
    real, fake = rng.random((n, 784)), rng.random((n, 784))

    p = D.forward(np.concatenate([real, fake])).copy()
    loss_one = float(bce_forward(p[:n], 1.0) + bce_forward(p[n:], 0.0))
    dp = np.concatenate([bce_backward(p[:n], 1.0), bce_backward(p[n:], 0.0)])
    D.backward(dp, input_grad=False)
    grads_one = D.grads.copy()

    uniforms = [u for _, u in masks.draws]
    grads_two = np.zeros_like(grads_one)
    loss_two = 0.0
    for rows, target in ((slice(0, n), 1.0), (slice(n, 2 * n), 0.0)):
        replay = RecordingRng()
        replay.random = lambda shape, dtype, it=iter(u[rows] for u in uniforms): next(it)
        for layer in D.layers:
            if isinstance(layer, Dropout):
                layer.rng = replay
        x = real if target == 1.0 else fake
        q = D.forward(x)
        np.testing.assert_allclose(q, p[rows], rtol=1e-12)
        loss_two += float(bce_forward(q, target))
        D.backward(bce_backward(q, target), input_grad=False)
        grads_two += D.grads
    np.testing.assert_allclose(loss_one, loss_two, rtol=1e-12)
    np.testing.assert_allclose(grads_one, grads_two, rtol=1e-10, atol=1e-14)


def test_generator_step_gradient_through_whole_chain():
    """dL/dtheta_G for L = BCE(D(G(z)), 1), z -> G -> D -> BCE, against central differences in float64,
    on a random sample of coordinates from every parameter of G."""
    rng = np.random.default_rng(2)
    G = make_generator(100, rng, dtype=np.float64)
    D = make_discriminator(rng=rng, dtype=np.float64)
    frozen = RecordingRng(3, frozen=True)  # the same dropout masks at every evaluation
    for layer in D.layers:
        if isinstance(layer, Dropout):
            layer.rng = frozen
    for layer in G.layers:  # BatchNorm gamma, beta away from their init so their gradients are generic
        if "gamma" in layer.params:
            layer.params["gamma"][...] = rng.uniform(0.5, 1.5, layer.params["gamma"].shape)
            layer.params["beta"][...] = rng.normal(0, 0.2, layer.params["beta"].shape)
    z = rng.standard_normal((5, 100))

    def loss():
        return float(bce_forward(D.forward(G.forward(z)), 1.0))

    p = D.forward(G.forward(z))
    d_fake = D.backward(bce_backward(p, 1.0), param_grads=False)
    G.backward(d_fake, input_grad=False)
    analytic = G.grads.copy()
    for name, (offset, shape) in G.slices.items():
        size = int(np.prod(shape))
        picks = rng.choice(size, size=min(size, 12), replace=False) + offset
        numeric = numeric_grad(loss, G.params, h=1e-5, indices=picks)
        np.testing.assert_allclose(analytic[picks], numeric, rtol=1e-5, atol=1e-9, err_msg=name)
    assert np.abs(analytic).max() > 0


def test_parameters_live_in_one_flat_buffer():
    G = make_generator(100, np.random.default_rng(0))
    assert G.params.size == 100 * 256 + 256 + 2 * 256 + 256 * 512 + 512 + 2 * 512 + 512 * 1024 + 1024 \
        + 2 * 1024 + 1024 * 784 + 784
    W = G.layers[0].params["W"]
    assert np.shares_memory(W, G.params) and np.shares_memory(G.layers[0].grads["W"], G.grads)
    G.params[0] = 42.0
    assert W.flat[0] == 42.0
    names = [k for k, _ in G.named_buffers()]
    assert names == ["2.running_mean", "2.running_var", "5.running_mean", "5.running_var",
                     "8.running_mean", "8.running_var"]  # buffers, not parameters
    assert all(not k.endswith(("running_mean", "running_var")) for k, _ in G.named_parameters())


def test_train_step_reduces_discriminator_loss_on_a_fixed_batch():
    gan = GAN(get_backend("numpy"), seed=0)
    real = np.random.default_rng(1).random((32, 784), dtype=np.float32)
    first = gan.train_step(real)
    for _ in range(5):
        last = gan.train_step(real)
    assert np.all(np.isfinite(last))
    assert last[0] < first[0]  # D learns to separate this batch from G's samples
    assert 0 < last[2] <= 1 and 0 <= last[3] < 1


def test_same_array_is_the_same_elements_of_the_same_memory():
    x = np.zeros((6, 4), np.float32)
    assert same_array(x[:3], x[:3]) and same_array(x, x)
    for other in (x[:3].copy(), x[1:4], x[:2], x[:3, :2], x[:3].view(np.int32), x[:3, ::-1]):
        assert not same_array(x[:3], other)


def test_a_batch_written_into_batch_input_trains_as_one_passed_from_elsewhere():
    """The layers' step reads a batch in GAN.batch_input(n) where it lies (the training loop gathers into it),
    and gives the bits it gives when the batch is copied in from another array."""
    data = np.random.default_rng(2).random((3, 16, 784), dtype=np.float32)
    in_place, copied = GAN(get_backend("numpy"), seed=4), GAN(get_backend("numpy"), seed=4)
    for batch in data:
        rows = in_place.batch_input(16)
        rows[...] = batch
        np.testing.assert_array_equal(in_place.train_step(rows), copied.train_step(batch))
        assert same_array(rows, in_place.batch_input(16)) and not same_array(batch, copied.batch_input(16))
    for model in ("G", "D"):
        np.testing.assert_array_equal(getattr(in_place, model).params, getattr(copied, model).params)


def test_generate_uses_eval_mode_and_restores_training():
    gan = GAN(get_backend("numpy"), seed=0)
    z = gan.sample_noise(4)
    a = gan.generate(z)
    b = gan.generate(z[:1])
    np.testing.assert_allclose(a[:1], b, rtol=1e-6)  # eval BatchNorm: a row does not depend on the others
    assert gan.G.training
