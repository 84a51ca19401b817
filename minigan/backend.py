"""Backends: the array module a model computes with, and the few ops a backend may replace.

The NumPy backend is the reference. A backend is an object with

- ``xp``: the array module (``numpy`` or ``cupy``); layers write their maths with it, so one formula
  serves both devices (the Chainer habit: split only at the leaf where the devices differ);
- ``name`` and ``device``: what to print;
- ``asarray`` / ``to_numpy``: moving arrays on and off the device;
- ``rng(seed)``: the random stream for noise, dropout masks and shuffling, and ``rng_state`` /
  ``set_rng_state`` to save and restore it;
- ``upload_images`` / ``gather_batch``: where the uint8 dataset lives and how a batch is cut from it;
- ``fused_step(gan)``: the backend's own implementation of the whole training step, or None;
- ``synchronize()``: wait for queued device work (timing, reading losses).

A faster backend overrides ops where it has something better (fused kernels, a captured step);
everything it does not override runs the NumPy formulas through its own ``xp``.
"""

import platform

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be used on this machine; the message is one line for the user."""


class NumpyBackend:
    name = "numpy"
    xp = np

    @property
    def device(self):
        return f"cpu ({platform.machine()}, numpy {np.__version__})"

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def rng(self, seed):
        return np.random.default_rng(seed)

    def rng_state(self, rng):
        """The stream's state as JSON-able data, tagged with the backend that can restore it."""
        return {"backend": self.name, "state": rng.bit_generator.state}

    def set_rng_state(self, rng, state):
        rng.bit_generator.state = state["state"]

    def fused_step(self, gan):
        """A faster implementation of gan's whole training step, or None: the layers are the step here."""
        return None

    def upload_images(self, images):
        """The uint8 dataset where gather_batch reads it (on the host here; on the GPU for CuPy)."""
        return images

    def gather_batch(self, images, perm, start, count, out):
        """out[:count] = images[perm[start:start+count]] / 255, a training batch in [0, 1]."""
        from minigan.data import to_unit_interval

        return to_unit_interval(images[perm[start : start + count]], out=out[:count])

    def synchronize(self):
        pass


BACKENDS = ("numpy", "cupy")


def to_host(a):
    """A NumPy array of ``a``, copied from the device when it lives there."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def same_array(a, b):
    """Whether ``a`` and ``b`` are the same elements of the same memory: start, shape, strides and dtype."""

    def address(x):  # CuPy's data is a device pointer; NumPy's a buffer
        return x.data.ptr if hasattr(x.data, "ptr") else x.__array_interface__["data"][0]

    return (type(a) is type(b) and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and address(a) == address(b))


def array_module(a):
    """numpy or cupy, whichever ``a`` belongs to (without importing CuPy for NumPy arrays)."""
    if isinstance(a, (np.ndarray, np.generic)):
        return np
    import cupy

    return cupy.get_array_module(a)


def get_backend(name):
    """Return the backend called ``name``; raise BackendError with a one-line reason if it cannot run."""
    if name == "numpy":
        return NumpyBackend()
    if name == "cupy":
        from minigan.cupy_backend import CupyBackend

        return CupyBackend()
    raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
