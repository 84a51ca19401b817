"""Layers, each a forward and a backward pass written out by hand.

Conventions (all layers):

- ``x`` is (N, C_in), ``y`` is (N, C_out): a batch of N row vectors.
- ``forward(x)`` returns ``y`` and caches exactly what ``backward`` needs.
- ``backward(dy, input_grad=True, param_grads=True)`` takes dL/dy and returns dL/dx (or None when
  ``input_grad`` is False). Parameter gradients are *written* into ``self.grads`` (not accumulated),
  so there is no zero_grad; ``param_grads=False`` skips them (the generator step needs dL/dx through
  the discriminator, not the discriminator's own gradients).
- Parameters are in ``self.params``, their gradients in ``self.grads`` under the same names;
  running statistics are buffers in ``self.buffers``, never parameters.
- Arrays come from ``xp`` (numpy or cupy), so the formulas below serve both backends.

The semantics are PyTorch's defaults (see ``REFERENCE.md`` in the project's shared notes).
"""

import math

import numpy as np


class Layer:
    """Base class: mode flag, parameter dicts, and reusable work buffers."""

    def __init__(self, xp=np, dtype=np.float32):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self._work = {}

    def _buffer(self, key, shape, dtype=None):
        """A work array kept between calls, so a training step does not allocate.

        An array handed out under ``key`` is overwritten by the next call that asks for the same key and
        shape, i.e. by the next forward (or backward) of this layer on a batch of the same size.
        """
        shape = tuple(shape)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        a = self._work.get((key, shape, dtype))
        if a is None:
            a = self.xp.empty(shape, dtype=dtype)
            self._work[(key, shape, dtype)] = a
        return a

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, input_grad=True, param_grads=True):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    r"""Fully connected layer.

    .. math::
        y = x W^T + b

    Backward, with :math:`\delta = \partial L/\partial y`:

    .. math::
        \partial L/\partial W = \delta^T x, \qquad
        \partial L/\partial b = \textstyle\sum_n \delta_n, \qquad
        \partial L/\partial x = \delta W

    Shapes: x (N, in), W (out, in), b (out,), y (N, out).
    Init as PyTorch's ``nn.Linear``: W, b ~ U(-1/sqrt(in), 1/sqrt(in)), the bound that
    ``kaiming_uniform_(a=sqrt(5))`` gives for W.
    """

    def __init__(self, in_features, out_features, rng=None, xp=np, dtype=np.float32):
        super().__init__(xp, dtype)
        self.in_features, self.out_features = in_features, out_features
        rng = np.random.default_rng() if rng is None else rng
        bound = 1.0 / math.sqrt(in_features)
        W = rng.uniform(-bound, bound, size=(out_features, in_features))
        b = rng.uniform(-bound, bound, size=(out_features,))
        self.params = {"W": xp.asarray(W, dtype=dtype), "b": xp.asarray(b, dtype=dtype)}
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x):
        W, b = self.params["W"], self.params["b"]
        y = self._buffer("y", (x.shape[0], self.out_features))
        self.xp.matmul(x, W.T, out=y)
        y += b
        self.x = x
        return y

    def backward(self, dy, input_grad=True, param_grads=True):
        xp, W = self.xp, self.params["W"]
        if param_grads:
            xp.matmul(dy.T, self.x, out=self.grads["W"])  # dW = dy^T x
            dy.sum(axis=0, out=self.grads["b"])  # db = sum_n dy_n
        if not input_grad:
            return None
        dx = self._buffer("dx", (dy.shape[0], self.in_features))
        xp.matmul(dy, W, out=dx)  # dx = dy W
        return dx

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"


class LeakyReLU(Layer):
    r"""Leaky rectifier.

    .. math::
        y = \begin{cases} x & x > 0 \\ \alpha x & x \le 0 \end{cases}, \qquad
        \partial L/\partial x = \delta \cdot \begin{cases} 1 & x > 0 \\ \alpha & x \le 0 \end{cases}

    At exactly x = 0 the gradient takes the alpha branch, as PyTorch's ``leaky_relu_backward``
    (``x > 0 ? dy : dy * alpha``). Backward keeps y, not x: for 0 < alpha, y > 0 exactly when x > 0.
    Shapes: x, y (N, C).
    """

    def __init__(self, negative_slope=0.2, xp=np, dtype=np.float32):
        super().__init__(xp, dtype)
        self.negative_slope = negative_slope

    def forward(self, x):
        xp = self.xp
        y = self._buffer("y", x.shape)
        # max(x, alpha x) is the leaky rectifier for 0 < alpha < 1, in two passes and no mask.
        xp.multiply(x, self.dtype.type(self.negative_slope), out=y)
        xp.maximum(x, y, out=y)
        self.y = y
        return y

    def backward(self, dy, input_grad=True, param_grads=True):
        xp, f = self.xp, self.dtype.type
        # gain = alpha + (1 - alpha) [y > 0], then dx = dy * gain: whole-array passes, no masked copy
        # (numpy's copyto(where=) is 5x slower here).
        positive = self._buffer("positive", dy.shape, np.bool_)
        xp.greater(self.y, 0, out=positive)
        gain = self._buffer("gain", dy.shape)
        xp.multiply(positive, f(1 - self.negative_slope), out=gain)
        gain += f(self.negative_slope)
        dx = self._buffer("dx", dy.shape)
        xp.multiply(dy, gain, out=dx)
        return dx

    def __repr__(self):
        return f"LeakyReLU({self.negative_slope})"


class BatchNorm1d(Layer):
    r"""Batch normalisation over the batch axis (Ioffe & Szegedy, 2015), PyTorch's ``BatchNorm1d``.

    Training mode, with :math:`\mu_B`, :math:`\sigma_B^2` the batch mean and *biased* variance:

    .. math::
        \hat x = (x - \mu_B)\,r, \quad r = 1/\sqrt{\sigma_B^2 + \epsilon}, \qquad y = \gamma \hat x + \beta

    Backward (the closed form, N rows):

    .. math::
        \partial L/\partial \gamma = \textstyle\sum_n \delta_n \hat x_n, \qquad
        \partial L/\partial \beta = \textstyle\sum_n \delta_n, \qquad
        \partial L/\partial x = \frac{\gamma r}{N}\left(N\delta - \partial L/\partial\beta
                                 - \hat x\,\partial L/\partial\gamma\right)

    Running statistics are buffers, updated in training mode with momentum m = 0.1:
    ``running_mean = (1-m) running_mean + m mu_B`` and
    ``running_var = (1-m) running_var + m sigma_B^2 N/(N-1)`` (the *unbiased* variance, as PyTorch).
    Eval mode normalises with the running statistics instead; then ``dx = dy * gamma * r_running``.
    Shapes: x, y (N, C); gamma, beta, running_mean, running_var (C,). Init gamma=1, beta=0, mean 0, var 1.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, xp=np, dtype=np.float32):
        super().__init__(xp, dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.params = {"gamma": xp.ones(num_features, dtype), "beta": xp.zeros(num_features, dtype)}
        self.grads = {k: xp.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {
            "running_mean": xp.zeros(num_features, dtype),
            "running_var": xp.ones(num_features, dtype),
        }

    def forward(self, x):
        xp = self.xp
        n = x.shape[0]
        gamma, beta = self.params["gamma"], self.params["beta"]
        x_hat = self._buffer("x_hat", x.shape)
        if self.training:
            if n < 2:
                raise ValueError("BatchNorm1d in training mode needs at least 2 rows per batch")
            mu = x.mean(axis=0)
            xp.subtract(x, mu, out=x_hat)
            var = (x_hat * x_hat).mean(axis=0)  # biased batch variance
            inv_std = 1.0 / xp.sqrt(var + self.eps)
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - m
            rm += m * mu
            rv *= 1 - m
            rv += (m * n / (n - 1)) * var  # unbiased variance into the running estimate
        else:
            xp.subtract(x, self.buffers["running_mean"], out=x_hat)
            inv_std = 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)
        x_hat *= inv_std
        y = self._buffer("y", x.shape)
        xp.multiply(x_hat, gamma, out=y)
        y += beta
        self.x_hat, self.inv_std = x_hat, inv_std.astype(self.dtype, copy=False)
        return y

    def backward(self, dy, input_grad=True, param_grads=True):
        xp = self.xp
        n = dy.shape[0]
        gamma, x_hat = self.params["gamma"], self.x_hat
        dgamma = (dy * x_hat).sum(axis=0)
        dbeta = dy.sum(axis=0)
        if param_grads:
            self.grads["gamma"][...] = dgamma
            self.grads["beta"][...] = dbeta
        if not input_grad:
            return None
        dx = self._buffer("dx", dy.shape)
        if not self.training:
            xp.multiply(dy, gamma * self.inv_std, out=dx)
            return dx
        # dx = (gamma r / N) (N dy - dbeta - x_hat dgamma)
        xp.multiply(x_hat, dgamma, out=dx)
        dx += dbeta
        dx *= -1.0 / n
        dx += dy
        dx *= gamma * self.inv_std
        return dx

    def __repr__(self):
        return f"BatchNorm1d({self.num_features})"


class Dropout(Layer):
    r"""Inverted dropout, PyTorch's ``nn.Dropout(p)``.

    .. math::
        y = x \cdot m / (1-p), \quad m_{ij} \sim \mathrm{Bernoulli}(1-p), \qquad
        \partial L/\partial x = \delta \cdot m / (1-p)

    A fresh mask per forward in training mode (drawn as u ~ U[0,1), kept where u >= p); the identity in
    eval mode. The mask is kept pre-scaled, so forward and backward are one multiply each.
    Shapes: x, y (N, C).
    """

    def __init__(self, p=0.3, rng=None, xp=np, dtype=np.float32):
        super().__init__(xp, dtype)
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng() if rng is None else rng

    def forward(self, x):
        if not self.training or self.p == 0:
            self.scaled_mask = None
            return x
        xp = self.xp
        u = self.rng.random(x.shape, dtype=self.dtype)
        scaled_mask = self._buffer("mask", x.shape)
        xp.greater_equal(u, self.dtype.type(self.p), out=scaled_mask)  # m in {0, 1}
        scaled_mask *= self.dtype.type(1.0 / (1.0 - self.p))
        y = self._buffer("y", x.shape)
        xp.multiply(x, scaled_mask, out=y)
        self.scaled_mask = scaled_mask
        return y

    def backward(self, dy, input_grad=True, param_grads=True):
        if self.scaled_mask is None:
            return dy
        dx = self._buffer("dx", dy.shape)
        self.xp.multiply(dy, self.scaled_mask, out=dx)
        return dx

    def __repr__(self):
        return f"Dropout({self.p})"


class Sigmoid(Layer):
    r"""Logistic function.

    .. math::
        y = \frac{1}{1 + e^{-x}}, \qquad \partial L/\partial x = \delta\, y (1 - y)

    Computed literally, as PyTorch does in float32: for x below about -88, e^{-x} overflows to +inf
    and y is exactly 0 (IEEE gives 1/inf = 0, never NaN). That exact 0 is what makes the reference
    run saturate (BCE's log clamped at -100, zero gradient through the sigmoid), so we keep it rather
    than a form that returns denormals there. Backward keeps y only. Shapes: x, y (N, C).
    """

    def forward(self, x):
        xp = self.xp
        y = self._buffer("y", x.shape)
        with np.errstate(over="ignore"):
            xp.negative(x, out=y)
            xp.exp(y, out=y)
        y += 1
        xp.reciprocal(y, out=y)
        self.y = y
        return y

    def backward(self, dy, input_grad=True, param_grads=True):
        y = self.y
        dx = self._buffer("dx", dy.shape)
        self.xp.multiply(dy, y * (1 - y), out=dx)
        return dx

    def __repr__(self):
        return "Sigmoid()"
