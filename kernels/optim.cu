// Adam over a model's flat parameter buffer: one launch per model and step.
// The same update, in the same grouping, as minigan/optim.py::Adam (PyTorch's):
//   m <- m + (1 - beta1) (g - m);  v <- beta2 v + (1 - beta2) g^2
//   p <- p - m / (sqrt(v) * inv_scale + eps_scaled),
// with inv_scale = 1 / (sqrt(1 - beta2^t) * step_size), eps_scaled = eps / step_size and
// step_size = lr / (1 - beta1^t), computed in double precision (on the host for adam_step).
#include "dependent_launch.cuh"

__device__ __forceinline__ void adam_update(float* p, const float* g, float* m, float* v, long long i,
                                            float one_minus_beta1, float beta2, float one_minus_beta2,
                                            float inv_scale, float eps_scaled) {
    float gi = g[i];
    float mi = m[i] + one_minus_beta1 * (gi - m[i]);
    float vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] -= mi / (sqrtf(vi) * inv_scale + eps_scaled);
}

// Launch: n threads in blocks of 256.
extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, long long n,
                                     float one_minus_beta1, float beta2, float one_minus_beta2,
                                     float inv_scale, float eps_scaled) {
    after_previous_kernels();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) adam_update(p, g, m, v, i, one_minus_beta1, beta2, one_minus_beta2, inv_scale, eps_scaled);
}

// The fused step's Adam: as adam_step, with the step count in device memory, so a replayed CUDA graph
// applies the right bias corrections: this is update number *t + t_offset + 1 (t_offset: the D iteration
// within a step; kernels/step.cu::step_finish advances *t at the end of the step). The corrections are computed in
// double, as the host computes them for adam_step, once per block rather than once per parameter.
// Launch: any number of blocks of 256 threads (a grid-stride loop; one block per 256 parameters at most).
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
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        adam_update(p, g, m, v, i, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), inv_scale, eps_scaled);
}
