// Adam over a model's flat parameter buffer: one launch per model and step, one thread per parameter.
// The same update, in the same grouping, as minigan/optim.py::Adam (PyTorch's):
//   m <- m + (1 - beta1) (g - m);  v <- beta2 v + (1 - beta2) g^2
//   p <- p - m / (sqrt(v) * inv_scale + eps_scaled),
// with inv_scale = 1 / (sqrt(1 - beta2^t) * step_size), eps_scaled = eps / step_size and
// step_size = lr / (1 - beta1^t), computed on the host in double precision.

extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, long long n,
                                     float one_minus_beta1, float beta2, float one_minus_beta2,
                                     float inv_scale, float eps_scaled) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = m[i] + one_minus_beta1 * (gi - m[i]);
    float vi = beta2 * v[i] + one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] -= mi / (sqrtf(vi) * inv_scale + eps_scaled);
}

// The fused step's Adam: as adam_step, with the step count t in device memory (read here, incremented by
// adam_count launched after it), so a replayed CUDA graph applies the right bias corrections. They are
// computed in double, as the host computes them for adam_step. Launch: n threads.
extern "C" __global__ void adam_step_counted(float* p, const float* g, float* m, float* v, long long n, double lr,
                                             double beta1, double beta2, double eps, const long long* t) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double step = (double)(*t + 1);
    double step_size = lr / (1.0 - pow(beta1, step));
    double bias_correction2_sqrt = sqrt(1.0 - pow(beta2, step));
    float inv_scale = (float)(1.0 / (bias_correction2_sqrt * step_size));
    float eps_scaled = (float)(eps / step_size);
    float gi = g[i];
    float mi = m[i] + (float)(1.0 - beta1) * (gi - m[i]);
    float vi = (float)beta2 * v[i] + (float)(1.0 - beta2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] -= mi / (sqrtf(vi) * inv_scale + eps_scaled);
}

// t += 1 after a counted Adam step. Launch: 1 thread.
extern "C" __global__ void adam_count(long long* t) { *t += 1; }
