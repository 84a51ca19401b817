// The fused step's BatchNorm1d (training mode), which reduces over the batch. Semantics and float32
// grouping follow minigan/layers.py (PyTorch's): biased batch variance to normalise, unbiased into
// running_var. (D's sigmoid + BCE head is in kernels/linear.cu, fused with D's last layer.)
#include "dependent_launch.cuh"

// BatchNorm reduces each column over the batch. A block of 256 threads takes 8 adjacent columns: thread
// (lane, column) sums rows lane, lane + 32, ... (a warp reads 8 adjacent floats, one 32-byte sector, of each
// of 4 rows), then the 32 lanes' partial sums are added in shared memory. Many lanes keep each thread's
// chain of loads short (4 rows at batch 128), and narrow blocks make many of them (32 to 128 for the step's
// layers): the batch is small, so latency, not bandwidth, sets the time.
// Launch: ceil(C / 8) blocks of 256 threads (minigan.cupy_step.BN_COLUMNS).
#define BN_COLUMNS 8
#define BN_LANES 32
// The sums of products (a * b + c) are written as fused multiply-adds (fmaf), which is what nvcc makes of them
// anyway (--fmad=true): the CPU build (tests/kernel_host.py, g++ -ffp-contract=fast) then rounds them as a GPU
// does too, where g++ left the variance's squares uncontracted.
// A thread keeps its first BN_CACHED rows in registers from one pass over the batch to the next (all of them
// up to BN_LANES * BN_CACHED = 128 rows), so each input is read from memory once, not two or three times.
// Everything else a thread reads (gamma, beta, the running statistics, the cached rows of every input) it loads
// at the start, with the first rows: the loads then wait on one round trip to memory, not one more after each
// reduction (a compiler does not move a load across a barrier).
#define BN_CACHED 4

// The sum over the block's 8 lanes of v, for this thread's column; every thread gets it.
__device__ __forceinline__ float sum_over_lanes(float v, float (*partial)[BN_COLUMNS]) {
    int column = threadIdx.x % BN_COLUMNS, lane = threadIdx.x / BN_COLUMNS;
    partial[lane][column] = v;
    __syncthreads();
    float total = 0.0f;
    for (int l = 0; l < BN_LANES; ++l) total += partial[l][column];
    __syncthreads();  // partial is reused by the next call
    return total;
}

// y = gamma (x - mu) r + beta over the M rows, r = 1 / sqrt(var + eps), var the biased batch variance;
// keeps x_hat and r for backward and updates the running statistics (unbiased variance). X, Y, X_hat (M, C).
extern "C" __global__ void batchnorm_forward(float* Y, float* X_hat, float* inv_std, const float* X,
                                             const float* gamma, const float* beta, float* running_mean,
                                             float* running_var, int M, int C, float eps, float momentum) {
    after_previous_kernels();
    __shared__ float partial[BN_LANES][BN_COLUMNS];
    int c = blockIdx.x * BN_COLUMNS + threadIdx.x % BN_COLUMNS, lane = threadIdx.x / BN_COLUMNS;
    bool inside = c < C;  // threads past the last column still take part in the barriers
    float g = inside ? gamma[c] : 0.0f, b = inside ? beta[c] : 0.0f;
    float mean_before = inside && lane == 0 ? running_mean[c] : 0.0f;
    float var_before = inside && lane == 0 ? running_var[c] : 0.0f;
    float x[BN_CACHED], sum = 0.0f;  // rows lane, lane + BN_LANES, ... in order, the cached ones first
#pragma unroll
    for (int u = 0; u < BN_CACHED; ++u) {
        int m = lane + u * BN_LANES;
        x[u] = inside && m < M ? X[(long long)m * C + c] : 0.0f;
        if (m < M) sum += x[u];
    }
    for (int m = lane + BN_CACHED * BN_LANES; inside && m < M; m += BN_LANES) sum += X[(long long)m * C + c];
    float mu = sum_over_lanes(sum, partial) / M;
    float squares = 0.0f;
#pragma unroll
    for (int u = 0; u < BN_CACHED; ++u)
        if (lane + u * BN_LANES < M) {
            float d = x[u] - mu;
            squares = fmaf(d, d, squares);
        }
    for (int m = lane + BN_CACHED * BN_LANES; inside && m < M; m += BN_LANES) {
        float d = X[(long long)m * C + c] - mu;
        squares = fmaf(d, d, squares);
    }
    float var = sum_over_lanes(squares, partial) / M;
    if (!inside) return;
    float r = 1.0f / sqrtf(var + eps);
    for (int m = lane, u = 0; m < M; m += BN_LANES, ++u) {
        long long at = (long long)m * C + c;
        float x_hat = ((u < BN_CACHED ? x[u] : X[at]) - mu) * r;
        X_hat[at] = x_hat;
        Y[at] = fmaf(x_hat, g, b);
    }
    if (lane == 0) {
        inv_std[c] = r;
        // each sum of two products fused as nvcc fuses it alone, so that no context changes its rounding
        running_mean[c] = fmaf(mean_before, 1.0f - momentum, momentum * mu);
        running_var[c] = fmaf(var_before, 1.0f - momentum, (momentum * M / (M - 1)) * var);
    }
}

// BatchNorm's backward, then the LeakyReLU's before it (A is the BatchNorm input = LeakyReLU output):
//   dgamma = sum dy x_hat, dbeta = sum dy, dx = ((x_hat dgamma + dbeta) (-1/M) + dy) gamma r,
//   dpre = dx * (A > 0 ? 1 : slope).
extern "C" __global__ void batchnorm_leaky_backward(float* dpre, float* dgamma, float* dbeta, const float* dY,
                                                    const float* X_hat, const float* inv_std, const float* gamma,
                                                    const float* A, int M, int C, float slope) {
    after_previous_kernels();
    __shared__ float partial[BN_LANES][BN_COLUMNS];
    int c = blockIdx.x * BN_COLUMNS + threadIdx.x % BN_COLUMNS, lane = threadIdx.x / BN_COLUMNS;
    bool inside = c < C;
    float g = inside ? gamma[c] : 0.0f, r = inside ? inv_std[c] : 0.0f;
    float dy[BN_CACHED], x_hat[BN_CACHED], a[BN_CACHED], sum_dy = 0.0f, sum_dy_x_hat = 0.0f;
#pragma unroll
    for (int u = 0; u < BN_CACHED; ++u) {
        int m = lane + u * BN_LANES;
        bool row = inside && m < M;
        dy[u] = row ? dY[(long long)m * C + c] : 0.0f;
        x_hat[u] = row ? X_hat[(long long)m * C + c] : 0.0f;
        a[u] = row ? A[(long long)m * C + c] : 0.0f;
        if (m < M) {
            sum_dy += dy[u];
            sum_dy_x_hat = fmaf(dy[u], x_hat[u], sum_dy_x_hat);
        }
    }
    for (int m = lane + BN_CACHED * BN_LANES; inside && m < M; m += BN_LANES) {
        long long at = (long long)m * C + c;
        sum_dy += dY[at];
        sum_dy_x_hat = fmaf(dY[at], X_hat[at], sum_dy_x_hat);
    }
    sum_dy = sum_over_lanes(sum_dy, partial);
    sum_dy_x_hat = sum_over_lanes(sum_dy_x_hat, partial);
    if (!inside) return;
    if (lane == 0) {
        dgamma[c] = sum_dy_x_hat;
        dbeta[c] = sum_dy;
    }
    float scale = g * r;
    for (int m = lane, u = 0; m < M; m += BN_LANES, ++u) {
        long long at = (long long)m * C + c;
        bool cached = u < BN_CACHED;
        float dx = fmaf(fmaf(cached ? x_hat[u] : X_hat[at], sum_dy_x_hat, sum_dy), -1.0f / M, cached ? dy[u] : dY[at])
                   * scale;
        dpre[at] = dx * ((cached ? a[u] : A[at]) > 0.0f ? 1.0f : slope);
    }
}
