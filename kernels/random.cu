// Random numbers on the GPU from Philox4x32-10 (philox.cuh).
//
// uniform_fill / normal_fill serve minigan/cupy_backend.py::PhiloxRng (the layer-by-layer path): a stream
// is a 64-bit seed, its k-th block of four words is philox((k_lo, k_hi, 0, 0), seed), and a draw of n
// numbers starting at block `offset` is reproducible from (seed, offset); the host advances offset by
// ceil(n / 4). normal_step_fill serves the fused step (minigan/cupy_step.py), whose counters are
// (index / 4, draw, step) (philox.cuh::step_block): `step` lives in device memory, so a captured graph draws
// new noise at each replay.
#include "dependent_launch.cuh"
#include "philox.cuh"

// Box-Muller: two normals from two uniform words.
__device__ __forceinline__ void box_muller(unsigned int a, unsigned int b, float* z0, float* z1) {
    float u1 = uniform_from_bits(a) + 5.9604644775390625e-08f;  // (0, 1]: log(u1) is finite
    float u2 = uniform_from_bits(b);
    float radius = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif(2.0f * u2, &s, &c);
    *z0 = radius * c;
    *z1 = radius * s;
}

// Block k of the layer path's stream `seed`: counter (k_lo, k_hi, 0, 0).
__device__ __forceinline__ uint4x32 offset_block(unsigned long long seed, unsigned long long k) {
    return philox4x32((unsigned int)k, (unsigned int)(k >> 32), 0u, 0u, (unsigned int)seed, (unsigned int)(seed >> 32));
}

// out[i] ~ U[0, 1), i < n. Launch: ceil(n / 4) threads, one Philox block each.
extern "C" __global__ void uniform_fill(float* out, long long n, unsigned long long seed, unsigned long long offset) {
    after_previous_kernels();
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * t >= n) return;
    uint4x32 r = offset_block(seed, offset + (unsigned long long)t);
    for (int j = 0; j < 4 && 4 * t + j < n; ++j) out[4 * t + j] = uniform_from_bits(r.v[j]);
}

// out[i] ~ N(0, 1), i < n. Launch: ceil(n / 4) threads, one Philox block (two Box-Muller pairs) each.
extern "C" __global__ void normal_fill(float* out, long long n, unsigned long long seed, unsigned long long offset) {
    after_previous_kernels();
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * t >= n) return;
    uint4x32 r = offset_block(seed, offset + (unsigned long long)t);
    float z[4];
    box_muller(r.v[0], r.v[1], &z[0], &z[1]);
    box_muller(r.v[2], r.v[3], &z[2], &z[3]);
    for (int j = 0; j < 4 && 4 * t + j < n; ++j) out[4 * t + j] = z[j];
}

// The fused step's noise: out[i] ~ N(0, 1), i < n, from counters (i / 4, draw, *step) (philox.cuh::step_block).
// Launch: ceil(n / 4) threads.
extern "C" __global__ void normal_step_fill(float* out, int n, unsigned long long seed,
                                            const unsigned long long* step, unsigned int draw) {
    after_previous_kernels();
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * t >= n) return;
    uint4x32 r = step_block(seed, *step, draw, (unsigned int)t);
    float z[4];
    box_muller(r.v[0], r.v[1], &z[0], &z[1]);
    box_muller(r.v[2], r.v[3], &z[2], &z[3]);
    for (int j = 0; j < 4 && 4 * t + j < n; ++j) out[4 * t + j] = z[j];
}
