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
