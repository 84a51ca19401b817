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

// The fused step's streams: element `index` of the `draw`-th random tensor of training step `step` is word
// index % 4 of step_block(index / 4): philox((index / 4, draw, step_lo, step_hi), seed), four elements to a
// block, as random.cu's noise draws them. Every (step, draw, element) has its own word, so a dropout mask is
// regenerated exactly in the backward pass, and a replayed CUDA graph, which reads `step` from device memory,
// draws fresh numbers each time.
__host__ __device__ __forceinline__ uint4x32 step_block(unsigned long long seed, unsigned long long step,
                                                        unsigned int draw, unsigned int block) {
    return philox4x32(block, draw, (unsigned int)step, (unsigned int)(step >> 32), (unsigned int)seed,
                      (unsigned int)(seed >> 32));
}

// Word w (0 .. 7) of two consecutive blocks, by selects rather than an indexed array (which would live in
// local memory)
__host__ __device__ __forceinline__ unsigned int word_of(const uint4x32& first, const uint4x32& second, int w) {
    int v = w & 3;  // (selecting words, not a reference to either block, which may also put both in local memory)
    unsigned int a = v == 0 ? first.v[0] : v == 1 ? first.v[1] : v == 2 ? first.v[2] : first.v[3];
    unsigned int b = v == 0 ? second.v[0] : v == 1 ? second.v[1] : v == 2 ? second.v[2] : second.v[3];
    return w < 4 ? a : b;
}

// u[q] = the uniform of element index + q, q = 0 .. 3: one Philox block where index is a multiple of 4 (a
// row of a tensor whose width is), two otherwise.
__host__ __device__ __forceinline__ void step_uniforms4(unsigned long long seed, unsigned long long step,
                                                        unsigned int draw, unsigned int index, float (&u)[4]) {
    uint4x32 first = step_block(seed, step, draw, index / 4), second = first;
    int offset = index % 4;
    if (offset != 0) second = step_block(seed, step, draw, index / 4 + 1);
#pragma unroll
    for (int q = 0; q < 4; ++q) u[q] = uniform_from_bits(word_of(first, second, offset + q));
}
