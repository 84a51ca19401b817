// Adam over a model's flat parameter buffer: one launch per model and step.
// The same update, in the same grouping, as minigan/optim.py::Adam (PyTorch's):
//   m <- m + (1 - beta1) (g - m);  v <- beta2 v + (1 - beta2) g^2
//   p <- p - m / (sqrt(v) * inv_scale + eps_scaled),
// with inv_scale = 1 / (sqrt(1 - beta2^t) * step_size), eps_scaled = eps / step_size and
// step_size = lr / (1 - beta1^t), computed in double precision (on the host for adam_step).
//
// A thread updates four neighbours, elements 4q .. 4q + 3, with one 16-byte load of each of p, g, m, v and one
// store of each of p, m, v: Adam is bound by memory, and a thread's four loads then bring 64 bytes instead of
// 16 in one round trip. (Where a buffer is not 16-byte aligned, or past the last whole quad, it takes them a
// float at a time: the same arithmetic, element by element.)
#include "dependent_launch.cuh"

struct AdamConstants {
    float one_minus_beta1, beta2, one_minus_beta2, inv_scale, eps_scaled;
};

// Written as the fused multiply-adds a GPU runs. A sum of two products can be fused either way, and nvcc chose by
// context: the quads below fused beta2 v and rounded (1 - beta2) g^2 first, the element-by-element path the
// reverse, and a kernel with other loads around the same update (exp/l2-keep, run 20) gave other bits again.
// Written out, the update is fused the same way in every kernel, and in the CPU build (tests/cuda_host.h).
__device__ __forceinline__ void adam_update(float& p, float g, float& m, float& v, const AdamConstants& c) {
    m = fmaf(c.one_minus_beta1, g - m, m);
    v = fmaf(c.beta2, v, c.one_minus_beta2 * (g * g));
    p -= m / fmaf(sqrtf(v), c.inv_scale, c.eps_scaled);
}

__device__ __forceinline__ bool quads_aligned(const float* p, const float* g, const float* m, const float* v) {
    return ((reinterpret_cast<unsigned long long>(p) | reinterpret_cast<unsigned long long>(g) |
             reinterpret_cast<unsigned long long>(m) | reinterpret_cast<unsigned long long>(v)) & 15) == 0;
}

// Elements 4q .. 4q + 3 of the n. `aligned` (quads_aligned) is the same for every quad of a launch.
__device__ __forceinline__ void adam_quad(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                          float* __restrict__ v, long long q, long long n, bool aligned,
                                          const AdamConstants& c) {
    long long first = 4 * q;
    if (aligned && first + 4 <= n) {
        float4 P = reinterpret_cast<float4*>(p)[q], M = reinterpret_cast<float4*>(m)[q];
        float4 V = reinterpret_cast<float4*>(v)[q];
        const float4 G = reinterpret_cast<const float4*>(g)[q];
        adam_update(P.x, G.x, M.x, V.x, c);
        adam_update(P.y, G.y, M.y, V.y, c);
        adam_update(P.z, G.z, M.z, V.z, c);
        adam_update(P.w, G.w, M.w, V.w, c);
        reinterpret_cast<float4*>(p)[q] = P, reinterpret_cast<float4*>(m)[q] = M, reinterpret_cast<float4*>(v)[q] = V;
    } else {
        for (long long i = first; i < first + 4 && i < n; ++i) adam_update(p[i], g[i], m[i], v[i], c);
    }
}

// Launch: ceil(n / 4) threads in blocks of 256.
extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, long long n,
                                     float one_minus_beta1, float beta2, float one_minus_beta2,
                                     float inv_scale, float eps_scaled) {
    after_previous_kernels();
    long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    AdamConstants c = {one_minus_beta1, beta2, one_minus_beta2, inv_scale, eps_scaled};
    if (4 * q < n) adam_quad(p, g, m, v, q, n, quads_aligned(p, g, m, v), c);
}

// The fused step's Adam: as adam_step, with the step count in device memory, so a replayed CUDA graph
// applies the right bias corrections: this is update number *t + t_offset + 1 (t_offset: the D iteration
// within a step; kernels/step.cu::step_finish advances *t at the end of the step). The corrections are computed in
// double, as the host computes them for adam_step, once per block rather than once per parameter.
// Launch: any number of blocks of 256 threads (a grid-stride loop over the quads; ceil(n / 4) threads at most).
extern "C" __global__ void adam_step_counted(float* p, const float* g, float* m, float* v, long long n, double lr,
                                             double beta1, double beta2, double eps, const long long* t,
                                             int t_offset) {
    after_previous_kernels();
    __shared__ float inv_scale, eps_scaled;
    if (threadIdx.x == 0) {
        double step = (double)(*t + t_offset + 1);
        double step_size = lr / (1.0 - pow(beta1, step));
        double bias_correction2_sqrt = sqrt(1.0 - pow(beta2, step));
        inv_scale = (float)(1.0 / (bias_correction2_sqrt * step_size));
        eps_scaled = (float)(eps / step_size);
    }
    __syncthreads();
    AdamConstants c = {(float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), inv_scale, eps_scaled};
    bool aligned = quads_aligned(p, g, m, v);
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; 4 * q < n; q += (long long)gridDim.x * blockDim.x)
        adam_quad(p, g, m, v, q, n, aligned, c);
}
