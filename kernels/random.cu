// Counter-based random numbers for the CuPy backend: Philox4x32-10 (Salmon, Moraes, Dror & Shaw,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
//
// A stream is a 64-bit key (the seed); its k-th block of four 32-bit words is philox(counter k, key), so
// any thread can draw any part of the stream with no state of its own, and a draw of n numbers starting at
// block `offset` is reproducible from (seed, offset) alone. The host advances offset by ceil(n / 4) after
// each draw (minigan/cupy_backend.py::PhiloxRng). tests/test_kernels.py checks philox4x32 against the
// published known-answer vectors by compiling this file for the host.

#ifndef MINIGAN_RANDOM_CU
#define MINIGAN_RANDOM_CU

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MG_HD __host__ __device__ __forceinline__
#else
#define MG_HD inline
#endif

struct uint4x32 {
    unsigned int v[4];
};

MG_HD unsigned int mulhilo32(unsigned int a, unsigned int b, unsigned int* hi) {
    unsigned long long product = (unsigned long long)a * (unsigned long long)b;
    *hi = (unsigned int)(product >> 32);
    return (unsigned int)product;
}

// Ten rounds of Philox4x32 on counter (c0, c1, c2, c3) with key (k0, k1).
MG_HD uint4x32 philox4x32(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                          unsigned int k0, unsigned int k1) {
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

// Block k of stream `seed`: the counter is the 64-bit block index, the key the 64-bit seed.
MG_HD uint4x32 philox_block(unsigned long long seed, unsigned long long k) {
    return philox4x32((unsigned int)k, (unsigned int)(k >> 32), 0u, 0u, (unsigned int)seed,
                      (unsigned int)(seed >> 32));
}

// A uniform float in [0, 1) from the top 24 bits of a word: every value is a multiple of 2^-24, exactly
// representable in float32.
MG_HD float uniform_from_bits(unsigned int bits) { return (float)(bits >> 8) * 5.9604644775390625e-08f; }

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

// out[i] ~ U[0, 1), i < n. Launch: one thread per block of 4 numbers, i.e. ceil(n / 4) threads.
extern "C" __global__ void uniform_fill(float* out, long long n, unsigned long long seed,
                                        unsigned long long offset) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * t >= n) return;
    uint4x32 r = philox_block(seed, offset + (unsigned long long)t);
    for (int j = 0; j < 4 && 4 * t + j < n; ++j) out[4 * t + j] = uniform_from_bits(r.v[j]);
}

// out[i] ~ N(0, 1), i < n, by Box-Muller on pairs of words. Launch: ceil(n / 4) threads.
extern "C" __global__ void normal_fill(float* out, long long n, unsigned long long seed,
                                       unsigned long long offset) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * t >= n) return;
    uint4x32 r = philox_block(seed, offset + (unsigned long long)t);
    for (int pair = 0; pair < 2; ++pair) {
        // u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1)
        float u1 = uniform_from_bits(r.v[2 * pair]) + 5.9604644775390625e-08f;
        float u2 = uniform_from_bits(r.v[2 * pair + 1]);
        float radius = sqrtf(-2.0f * logf(u1));
        float s, c;
        sincospif(2.0f * u2, &s, &c);
        long long i = 4 * t + 2 * pair;
        if (i < n) out[i] = radius * c;
        if (i + 1 < n) out[i + 1] = radius * s;
    }
}

#endif  // __CUDACC__
#endif  // MINIGAN_RANDOM_CU
