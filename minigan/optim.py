r"""Adam (Kingma & Ba, 2015) over one flat parameter buffer, with PyTorch's ``torch.optim.Adam`` update.

.. math::
    m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2

    \theta \leftarrow \theta - \frac{\mathrm{lr}}{1-\beta_1^t}\cdot
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

(the same grouping as PyTorch, so eps is added after the bias correction of v). No weight decay.
Because the model keeps all its parameters in one flat buffer and all gradients in another, a step is
a handful of whole-buffer operations, not a loop over layers.
"""

import math

import numpy as np

from minigan.backend import array_module


class Adam:
    # The update is a dozen whole-array passes; on the CPU, running them over blocks that stay in the
    # L2 cache (64K floats = 256 KiB per array) instead of over the 6 MB buffers makes a step ~1.6x faster.
    block = 1 << 16

    def __init__(self, params, grads, lr=2e-4, betas=(0.5, 0.999), eps=1e-8):
        """params, grads: flat 1-D arrays of the same size (the model's flat buffers), updated in place."""
        if params.shape != grads.shape or params.ndim != 1:
            raise ValueError("Adam takes a model's flat parameter and gradient buffers")
        self.params, self.grads = params, grads
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        xp = array_module(params)
        self.m = xp.zeros_like(params)
        self.v = xp.zeros_like(params)
        self.t = 0
        self._tmp = xp.empty(min(self.block, params.size), params.dtype)  # scratch for one block, stays in cache

    def step(self):
        beta1, beta2 = self.betas
        self.t += 1
        step_size = self.lr / (1 - beta1**self.t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.t)
        if array_module(self.params) is not np:
            from minigan.cupy_backend import adam_step  # the same update as one GPU kernel

            return adam_step(self, step_size, bias_correction2_sqrt)
        n = self.params.size
        for lo in range(0, n, self.block):
            block = slice(lo, min(lo + self.block, n))
            self._update(self.params[block], self.grads[block], self.m[block], self.v[block],
                         self._tmp[: block.stop - block.start], step_size, bias_correction2_sqrt)

    def _update(self, p, g, m, v, tmp, step_size, bias_correction2_sqrt):
        xp = array_module(p)
        beta1, beta2 = self.betas
        f = p.dtype.type
        # m <- m + (1-beta1)(g - m), v <- beta2 v + (1-beta2) g^2
        xp.subtract(g, m, out=tmp)
        tmp *= f(1 - beta1)
        m += tmp
        xp.multiply(g, g, out=tmp)
        tmp *= f(1 - beta2)
        v *= f(beta2)
        v += tmp
        # theta <- theta - step_size * m / (sqrt(v) / sqrt(bc2) + eps), as
        # theta <- theta - m / (sqrt(v) / (sqrt(bc2) step_size) + eps / step_size): one pass fewer
        xp.sqrt(v, out=tmp)
        tmp *= f(1 / (bias_correction2_sqrt * step_size))
        tmp += f(self.eps / step_size)
        xp.divide(m, tmp, out=tmp)
        p -= tmp

    def state(self):
        return {"m": self.m, "v": self.v, "t": np.int64(self.t)}

    def load_state(self, state):
        """Load ``state()``'s output, from host or device arrays alike."""
        xp = array_module(self.m)
        self.m[...] = xp.asarray(state["m"])
        self.v[...] = xp.asarray(state["v"])
        self.t = int(state["t"])
