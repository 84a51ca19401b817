// Linear layers for the fused step: a tiled SGEMM with the neighbouring elementwise ops fused into its
// epilogue, so an activation never makes a round trip through memory on its own.
//
//   linear_forward         Y = act(X W^T + b)            act: none | LeakyReLU | LeakyReLU+Dropout | Sigmoid
//   linear_backward_input  dX = (dY W) * act'(Y_prev)    act' of the layer *before* (its output is X)
//   linear_backward_weight dW = dY^T X, and db = sum over rows of dY from the same tiles
//
// Shapes: X (M, K), W (N, K), b (N,), Y (M, N), all row-major float32. Dropout masks are not stored: the
// epilogues regenerate them from philox counters (element, draw, *step) (philox.cuh). Because the stored
// output is the post-dropout Y, whose sign is the LeakyReLU output's wherever the mask keeps it, Y alone
// gives both derivatives. The semantics are minigan/layers.py's; tests/test_kernels.py runs these kernels
// on the CPU against the NumPy layers, tests/test_cupy.py on the GPU.
//
// Launch (all GEMMs): 256 threads, grid (ceil(cols / tile), ceil(rows / tile)) of the output, tile 64 or 32.
// Each block computes a tile x tile patch in steps of 16 along the inner dimension through shared memory
// (loads coalesced, stores free of bank conflicts); each thread a (tile / 16)^2 patch. Register blocking wider than 4 x 4, vectorised loads,
// double buffering and split-K for the small-M shapes are the next steps, to be measured on the GPU
// against cuBLAS.
#include "philox.cuh"

#define TILE_K 16
#define THREADS 256

enum Activation { ACT_NONE = 0, ACT_LEAKY = 1, ACT_LEAKY_DROPOUT = 2, ACT_SIGMOID = 3 };

// C (rows, cols) = A (rows, inner) B (inner, cols) with A(i, k) = A[i * a_i + k * a_k] and
// B(k, j) = B[k * b_k + j * b_j]: the strides express every transpose the layers need.
// Calls epilogue(i, j, value) for each element of the block's tile inside the matrix.
// If a_row_sums is not null, the blocks of the first column of tiles also write the row sums of A
// (sum over k of A(i, k)) from the tiles they load anyway: the bias gradient, for free.
// TILE is 64 (each of the 16 x 16 threads computes 4 x 4 outputs) or 32 (2 x 2 outputs each): the smaller
// tile gives 4x the blocks, for the small-M products that would otherwise leave most SMs idle.
template <int TILE, class Epilogue>
__device__ __forceinline__ void gemm_tile(const float* A, long long a_i, long long a_k, const float* B, long long b_k,
                                          long long b_j, int rows, int cols, int inner, float* a_row_sums,
                                          Epilogue epilogue) {
    // +1 column of padding: a warp storing down a column of As or Bs hits 32 different banks
    __shared__ float As[TILE_K][TILE + 1];  // As[k][i]
    __shared__ float Bs[TILE_K][TILE + 1];  // Bs[k][j]
    constexpr int PER = TILE / 16;  // outputs per thread along each side
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[PER][PER];
    for (int r = 0; r < PER; ++r)
        for (int c = 0; c < PER; ++c) acc[r][c] = 0.0f;
    // Consecutive threads load consecutive addresses (coalesced): along k where that stride is 1, else along
    // the row (or column) index. The choice is the same for the whole block, so no thread diverges.
    bool a_along_k = a_k == 1, b_along_k = b_k == 1;
    bool sums_rows = a_row_sums != nullptr && blockIdx.x == 0 && threadIdx.x < TILE;
    float row_sum = 0.0f;
    for (int k0 = 0; k0 < inner; k0 += TILE_K) {
        for (int l = threadIdx.x; l < TILE * TILE_K; l += THREADS) {
            int kk = a_along_k ? l % TILE_K : l / TILE, t = a_along_k ? l / TILE_K : l % TILE;
            int k = k0 + kk, i = row0 + t;
            As[kk][t] = (i < rows && k < inner) ? A[i * a_i + k * a_k] : 0.0f;
            kk = b_along_k ? l % TILE_K : l / TILE;
            t = b_along_k ? l / TILE_K : l % TILE;
            k = k0 + kk;
            int j = col0 + t;
            Bs[kk][t] = (j < cols && k < inner) ? B[k * b_k + j * b_j] : 0.0f;
        }
        __syncthreads();
        if (sums_rows)
            for (int kk = 0; kk < TILE_K; ++kk) row_sum += As[kk][threadIdx.x];
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[PER], b[PER];
            for (int r = 0; r < PER; ++r) a[r] = As[kk][ty * PER + r];
            for (int c = 0; c < PER; ++c) b[c] = Bs[kk][tx * PER + c];
            for (int r = 0; r < PER; ++r)
                for (int c = 0; c < PER; ++c) acc[r][c] += a[r] * b[c];
        }
        __syncthreads();
    }
    if (sums_rows && row0 + (int)threadIdx.x < rows) a_row_sums[row0 + threadIdx.x] = row_sum;
    for (int r = 0; r < PER; ++r)
        for (int c = 0; c < PER; ++c) {
            int i = row0 + ty * PER + r, j = col0 + tx * PER + c;
            if (i < rows && j < cols) epilogue(i, j, acc[r][c]);
        }
}

// Every GEMM kernel takes `tile` (64 or 32; the same for the whole grid) and the matching grid.
template <class Epilogue>
__device__ __forceinline__ void gemm(int tile, const float* A, long long a_i, long long a_k, const float* B,
                                     long long b_k, long long b_j, int rows, int cols, int inner, float* a_row_sums,
                                     Epilogue epilogue) {
    if (tile == 32)
        gemm_tile<32>(A, a_i, a_k, B, b_k, b_j, rows, cols, inner, a_row_sums, epilogue);
    else
        gemm_tile<64>(A, a_i, a_k, B, b_k, b_j, rows, cols, inner, a_row_sums, epilogue);
}

struct ForwardEpilogue {
    float* Y;
    const float* b;
    int N, activation;
    float slope, drop_p, drop_scale;
    unsigned long long seed, step;
    unsigned int draw;
    __device__ __forceinline__ void operator()(int i, int j, float v) const {
        v += b[j];
        if (activation == ACT_LEAKY || activation == ACT_LEAKY_DROPOUT) v = v > 0.0f ? v : v * slope;
        if (activation == ACT_LEAKY_DROPOUT)
            v = step_uniform(seed, step, draw, (unsigned int)(i * N + j)) >= drop_p ? v * drop_scale : 0.0f;
        if (activation == ACT_SIGMOID) v = 1.0f / (1.0f + expf(-v));  // exp overflows to inf: exactly 0
        Y[(long long)i * N + j] = v;
    }
};

// Y (M, N) = act(X (M, K) W (N, K)^T + b). Grid (ceil(N / tile), ceil(M / tile)).
extern "C" __global__ void linear_forward(float* Y, const float* X, const float* W, const float* b, int M, int N,
                                          int K, int activation, float slope, float drop_p, float drop_scale,
                                          unsigned long long seed, const unsigned long long* step,
                                          unsigned int draw, int tile) {
    ForwardEpilogue epilogue = {Y, b, N, activation, slope, drop_p, drop_scale, seed, *step, draw};
    gemm(tile, X, K, 1, W, 1, K, M, N, K, nullptr, epilogue);
}

struct InputGradEpilogue {
    float* dX;
    const float* Y_prev;
    int K, activation;
    float slope, drop_p, drop_scale;
    unsigned long long seed, step;
    unsigned int draw;
    __device__ __forceinline__ void operator()(int i, int j, float v) const {
        long long at = (long long)i * K + j;
        if (activation == ACT_LEAKY_DROPOUT) {
            // Dropout's backward, then LeakyReLU's, in the NumPy layers' order
            bool keep = step_uniform(seed, step, draw, (unsigned int)at) >= drop_p;
            v = keep ? (v * drop_scale) * (Y_prev[at] > 0.0f ? 1.0f : slope) : 0.0f;
        } else if (activation == ACT_LEAKY) {
            v *= Y_prev[at] > 0.0f ? 1.0f : slope;
        } else if (activation == ACT_SIGMOID) {
            float y = Y_prev[at];
            v *= y * (1.0f - y);
        }
        dX[at] = v;
    }
};

// dX (M, K) = (dY (M, N) W (N, K)) * act'(Y_prev), Y_prev (M, K) the output of the layer before (its
// activation `activation`, its dropout draw `draw`). Grid (ceil(K / tile), ceil(M / tile)).
extern "C" __global__ void linear_backward_input(float* dX, const float* dY, const float* W, const float* Y_prev,
                                                 int M, int N, int K, int activation, float slope, float drop_p,
                                                 float drop_scale, unsigned long long seed,
                                                 const unsigned long long* step, unsigned int draw, int tile) {
    InputGradEpilogue epilogue = {dX, Y_prev, K, activation, slope, drop_p, drop_scale, seed, *step, draw};
    gemm(tile, dY, N, 1, W, K, 1, M, K, N, nullptr, epilogue);
}

struct StoreEpilogue {
    float* C;
    int cols;
    __device__ __forceinline__ void operator()(int i, int j, float v) const { C[(long long)i * cols + j] = v; }
};

// dW (N, K) = dY (M, N)^T X (M, K) and db (N,) = sum over the M rows of dY. Grid (ceil(K / tile), ceil(N / tile)).
extern "C" __global__ void linear_backward_weight(float* dW, float* db, const float* dY, const float* X, int M, int N,
                                                  int K, int tile) {
    StoreEpilogue epilogue = {dW, K};
    gemm(tile, dY, 1, N, X, K, 1, N, K, M, db, epilogue);
}
