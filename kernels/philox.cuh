// Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
// a counter-based generator. philox4x32(counter, key) is a bijection of the 128-bit counter for each 64-bit
// key, so any thread can draw any word of any stream with no state of its own. Shared by random.cu
// (noise, uniforms) and linear.cu (dropout masks regenerated in forward and backward).
// tests/test_kernels.py checks it against Random123's known-answer vectors.
#pragma once

struct uint4x32 {
    unsigned int v[4];
};

__host__ __device__ __forceinline__ unsigned int mulhilo32(unsigned int a, unsigned int b, unsigned int* hi) {
    unsigned long long product = (unsigned long long)a * (unsigned long long)b;
    *hi = (unsigned int)(product >> 32);
    return (unsigned int)product;
}

__host__ __device__ __forceinline__ uint4x32 philox4x32(unsigned int c0, unsigned int c1, unsigned int c2,
                                                        unsigned int c3, unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; ++round) {
        unsigned int hi0, hi1;
        unsigned int lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
        unsigned int lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
        unsigned int n0 = hi1 ^ c1 ^ k0;
        unsigned int n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    uint4x32 r = {{c0, c1, c2, c3}};
    return r;
}

// A uniform float in [0, 1) from the top 24 bits of a word: a multiple of 2^-24, exact in float32.
__host__ __device__ __forceinline__ float uniform_from_bits(unsigned int bits) {
    return (float)(bits >> 8) * 5.9604644775390625e-08f;
}

// The fused step's streams: word 0 of philox((index, draw, step_lo, step_hi), seed), for element `index`
// of the `draw`-th random tensor of training step `step`. Every (step, draw, element) has its own counter,
// so a dropout mask is regenerated exactly in the backward pass and a replayed CUDA graph, which reads
// `step` from device memory, draws fresh numbers each time.
__host__ __device__ __forceinline__ float step_uniform(unsigned long long seed, unsigned long long step,
                                                       unsigned int draw, unsigned int index) {
    uint4x32 r = philox4x32(index, draw, (unsigned int)step, (unsigned int)(step >> 32), (unsigned int)seed,
                            (unsigned int)(seed >> 32));
    return uniform_from_bits(r.v[0]);
}
