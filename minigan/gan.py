"""The GAN of Goodfellow et al. (2014) as the reference PyTorch program builds it, and its training step.

Generator (activation *before* BatchNorm, as in the reference):
    z (N, 100) -> Linear 256 -> LeakyReLU .2 -> BN -> Linear 512 -> LeakyReLU .2 -> BN
               -> Linear 1024 -> LeakyReLU .2 -> BN -> Linear 784 -> Sigmoid
Discriminator:
    x (N, 784) -> [Linear -> LeakyReLU .2 -> Dropout .3] x 3 (1024, 512, 256) -> Linear 1 -> Sigmoid

One training step (the reference loop, K discriminator updates then one generator update):

    repeat K times:
        z ~ N(0, I);  fake = G(z)
        loss_D = BCE(D(real), 1) + BCE(D(fake), 0)          # no gradient into G
        update D
    loss_G = BCE(D(fake), 1)                                 # fake of the last D iteration; new dropout
    update G                                                 # masks; D's own gradients are not needed

D(real) and D(fake) run as one pass over the 2N rows [real; fake]. That is exact because no layer of D
mixes rows (no BatchNorm in D): each row's output, and so each term of the loss, is the same as in two
separate passes, and the parameter gradient of the sum is the sum of the two passes' gradients.
tests/test_gan.py checks this equivalence.
"""

import numpy as np

from minigan.backend import same_array
from minigan.layers import BatchNorm1d, Dropout, LeakyReLU, Linear, Sigmoid
from minigan.losses import bce_backward, bce_forward
from minigan.model import Sequential
from minigan.optim import Adam

IMAGE_SIZE = 28 * 28


def make_generator(latent_dim=100, rng=None, xp=np, dtype=np.float32):
    rng = np.random.default_rng() if rng is None else rng
    layers = []
    sizes = [latent_dim, 256, 512, 1024]
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [
            Linear(n_in, n_out, rng, xp, dtype),
            LeakyReLU(0.2, xp, dtype),
            BatchNorm1d(n_out, xp=xp, dtype=dtype),
        ]
    layers += [Linear(sizes[-1], IMAGE_SIZE, rng, xp, dtype), Sigmoid(xp, dtype)]
    return Sequential(*layers)


def make_discriminator(dropout=0.3, rng=None, xp=np, dtype=np.float32):
    rng = np.random.default_rng() if rng is None else rng
    layers = []
    sizes = [IMAGE_SIZE, 1024, 512, 256]
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [
            Linear(n_in, n_out, rng, xp, dtype),
            LeakyReLU(0.2, xp, dtype),
            Dropout(dropout, rng, xp, dtype),
        ]
    layers += [Linear(sizes[-1], 1, rng, xp, dtype), Sigmoid(xp, dtype)]
    return Sequential(*layers)


class GAN:
    """Generator, discriminator, their two Adam optimizers, and the random stream of a run.

    ``rng`` draws everything random in training (z, dropout masks, and the data shuffle in the
    training loop), so saving its state with the weights makes a resumed run continue bit for bit.
    """

    def __init__(self, backend, latent_dim=100, lr=2e-4, betas=(0.5, 0.999), k=1, seed=666,
                 dtype=np.float32):
        self.backend, self.xp = backend, backend.xp
        self.latent_dim, self.k, self.dtype = latent_dim, k, np.dtype(dtype)
        self.rng = backend.rng(seed)
        init_rng = np.random.default_rng(seed)  # weights are drawn on the host, the same on every backend
        self.G = make_generator(latent_dim, init_rng, self.xp, dtype)
        self.D = make_discriminator(0.3, init_rng, self.xp, dtype)
        for layer in self.D.layers:
            if isinstance(layer, Dropout):
                layer.rng = self.rng
        self.opt_G = Adam(self.G.params, self.G.grads, lr, betas)
        self.opt_D = Adam(self.D.params, self.D.grads, lr, betas)
        self._real_fake = {}  # n -> (D's input [real; fake], d loss / d D's output) of the layers' step
        self.fused = backend.fused_step(self)  # the GPU's own kernels for the whole step, where it has them

    def sample_noise(self, n):
        return self.rng.standard_normal((n, self.latent_dim), dtype=self.dtype)

    def batch_input(self, n):
        """The (n, 784) array that train_step reads a batch of n rows from: the real rows of D's input. A batch
        written here (the training loop gathers each batch straight into it) is not copied again."""
        if self.fused is not None:
            return self.fused.batch_input(n)
        return self._step_buffers(n)[0][:n]

    def _step_buffers(self, n):
        if n not in self._real_fake:
            self._real_fake[n] = (self.xp.empty((2 * n, IMAGE_SIZE), self.dtype), self.xp.empty((2 * n, 1), self.dtype))
        return self._real_fake[n]

    def train_step(self, real):
        """One step on a batch ``real`` (N, 784) in [0, 1] (batch_input(N), or any array of that shape).

        Returns a length-4 array of this module: [loss_D (summed over the K D-steps), loss_G,
        mean D(x), mean D(G(z))], the last two from the final D step, before its update.
        """
        if self.fused is not None:
            return self.fused.train_step(real)
        G, D = self.G, self.D
        n = real.shape[0]
        G.train()
        D.train()
        x, dp = self._step_buffers(n)
        if not same_array(real, x[:n]):
            x[:n] = real
        loss_D = 0.0
        for _ in range(self.k):
            fake = G.forward(self.sample_noise(n))
            x[n:] = fake
            p = D.forward(x)  # D(real) and D(fake) in one pass; see the module docstring
            p_real, p_fake = p[:n], p[n:]
            loss_D = loss_D + bce_forward(p_real, 1.0) + bce_forward(p_fake, 0.0)
            d_x, d_g_z = p_real.mean(), p_fake.mean()
            bce_backward(p_real, 1.0, out=dp[:n])
            bce_backward(p_fake, 0.0, out=dp[n:])
            D.backward(dp, input_grad=False)
            self.opt_D.step()

        p = D.forward(fake)
        loss_G = bce_forward(p, 1.0)
        d_fake = D.backward(bce_backward(p, 1.0), param_grads=False)
        G.backward(d_fake, input_grad=False)
        self.opt_G.step()
        return self.xp.stack([self.xp.asarray(v, dtype=np.float64) for v in (loss_D, loss_G, d_x, d_g_z)])

    def generate(self, z):
        """G(z) in eval mode (running BatchNorm statistics), as the reference does for its sample grids."""
        was_training = self.G.training
        self.G.eval()
        try:
            return self.G.forward(z).copy()
        finally:
            if was_training:
                self.G.train()
