"""Philox4x32-10 in NumPy: the reference that kernels/random.cu is checked against (on the host here,
on the GPU in tests/test_cupy.py)."""

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
MASK = np.uint64(0xFFFFFFFF)


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Ten rounds on uint32 arrays (broadcast together); returns four uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint32) for c in (c0, c1, c2, c3))
    k0, k1 = np.asarray(k0, np.uint32), np.asarray(k1, np.uint32)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = M0 * c0.astype(np.uint64)
            p1 = M1 * c2.astype(np.uint64)
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & MASK).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & MASK).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0, k1 = k0 + W0, k1 + W1
    return c0, c1, c2, c3


def stream_words(seed, offset, n):
    """The first n 32-bit words of stream ``seed`` from block ``offset`` on, as kernels/random.cu draws them."""
    blocks = np.arange(offset, offset + (n + 3) // 4, dtype=np.uint64)
    words = philox4x32(blocks & MASK, blocks >> np.uint64(32), 0, 0, np.uint64(seed) & MASK, np.uint64(seed) >> np.uint64(32))
    return np.stack(words, axis=1).reshape(-1)[:n]


def uniforms(seed, offset, n):
    return (stream_words(seed, offset, n) >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def normals(seed, offset, n):
    u = (stream_words(seed, offset, 4 * ((n + 3) // 4)) >> np.uint32(8)).astype(np.float64) * 2.0**-24
    u1, u2 = u[0::2] + 2.0**-24, u[1::2]
    radius = np.sqrt(-2 * np.log(u1))
    return np.stack([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)], axis=1).reshape(-1)[:n]


def step_uniforms(seed, step, draw, shape, first=0):
    """The fused step's uniform of every element of an array of ``shape`` (row-major index, counted from
    ``first``): element i is word i % 4 of kernels/philox.cuh::step_block(i // 4)."""
    size = int(np.prod(shape))
    blocks = np.arange(first // 4, (first + size + 3) // 4, dtype=np.uint64)
    seed, step = np.uint64(seed), np.uint64(step)
    words = philox4x32(blocks, draw, step & MASK, step >> np.uint64(32), seed & MASK, seed >> np.uint64(32))
    words = np.stack(words, axis=1).reshape(-1)[first % 4:first % 4 + size]
    return ((words >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)).reshape(shape)


def step_normals(seed, step, draw, n):
    """kernels/random.cu::normal_step_fill's n normals (Box-Muller in float64; the kernel's float32 is close)."""
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    seed, step = np.uint64(seed), np.uint64(step)
    words = philox4x32(blocks, draw, step & MASK, step >> np.uint64(32), seed & MASK, seed >> np.uint64(32))
    u = [(w >> np.uint32(8)).astype(np.float64) * 2.0**-24 for w in words]
    out = []
    for a, b in ((u[0], u[1]), (u[2], u[3])):
        radius = np.sqrt(-2 * np.log(a + 2.0**-24))
        out += [radius * np.cos(2 * np.pi * b), radius * np.sin(2 * np.pi * b)]
    return np.stack(out, axis=1).reshape(-1)[:n]


class StepReplay:
    """A stand-in random stream for a NumPy-backend GAN that draws what the fused step draws: per step, for
    each D iteration the noise then three dropout masks over 2n rows, then three over n rows for the G step
    (minigan/cupy_step.py's draw ids), and a permutation from a NumPy generator of the run's seed."""

    def __init__(self, seed, k, run_seed):
        from minigan.cupy_step import draw_ids

        self.seed, self.k, self.step = seed, k, 0
        self.noise, self.d_step, self.g_step = draw_ids(k)
        self.calls = []
        self.host = np.random.default_rng(run_seed)

    def _next(self):
        if not self.calls:
            for i in range(self.k):
                self.calls += [("normal", self.noise[i])] + [("uniform", d) for d in self.d_step[i]]
            self.calls += [("uniform", d) for d in self.g_step] + [("end", None)]
        return self.calls.pop(0)

    def standard_normal(self, shape, dtype=np.float64):
        kind, draw = self._next()
        assert kind == "normal"
        return step_normals(self.seed, self.step, draw, int(np.prod(shape))).reshape(shape).astype(dtype)

    def random(self, shape, dtype=np.float64):
        kind, draw = self._next()
        assert kind == "uniform"
        u = step_uniforms(self.seed, self.step, draw, shape).astype(dtype)
        if self.calls == [("end", None)]:
            self.calls.clear()
            self.step += 1
        return u

    def permutation(self, n):
        return self.host.permutation(n)

    @property
    def bit_generator(self):  # what the NumPy backend's checkpoints save of a stream: here, the shuffling's
        return self.host.bit_generator
