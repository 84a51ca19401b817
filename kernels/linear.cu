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
// gives both derivatives. The semantics are minigan/layers.py's; tests/test_fused_step.py runs these kernels
// on the CPU against the NumPy layers, tests/test_cupy.py on the GPU.
//
// Each kernel exists once per tile shape BMxBN_TMxTN (the list at the bottom, mirrored by
// minigan.cupy_step.GEMM_TILES): a block computes a BM x BN patch of the output with (BM/TM)(BN/TN) threads,
// each thread TM x TN outputs. Launch: grid (ceil(cols / BN), ceil(rows / BM), splits), that many threads.
// Every tile shape adds the products of each output in the same order (k = 0, 1, ... within a split), so
// they give bit-identical results and the step may pick whichever is fastest on the GPU at hand. `splits`
// > 1 (forward and input gradient only) cuts the inner dimension into that many ranges, one block each,
// for the products whose output has too few tiles to fill the GPU; the last block of a tile to finish adds
// the partial sums in split order (deterministic) and runs the epilogue.
#include "philox.cuh"

#define TILE_K 16

enum Activation { ACT_NONE = 0, ACT_LEAKY = 1, ACT_LEAKY_DROPOUT = 2, ACT_SIGMOID = 3 };

// One operand's slice of TILE_K along the inner dimension by EXTENT along its other (row or column) index t,
// X(t, k) = X[t * t_stride + k * k_stride], t in [t0, t0 + EXTENT), zero outside [.., t_end) x [.., k_end).
// Each of the THREADS threads fetches LOADS elements into registers; consecutive threads take consecutive
// addresses (coalesced): along k where that stride is 1, else along t. The choice is the same for the whole
// block, so no thread diverges.
template <int EXTENT, int LOADS, int THREADS>
__device__ __forceinline__ void fetch_slice(float (&out)[LOADS], const float* X, long long t_stride, long long k_stride,
                                            int t0, int t_end, int k0, int k_end) {
    bool along_k = k_stride == 1;
#pragma unroll
    for (int u = 0; u < LOADS; ++u) {
        int l = threadIdx.x + u * THREADS;
        int kk = along_k ? l % TILE_K : l / EXTENT, t = along_k ? l / TILE_K : l % EXTENT;
        int k = k0 + kk, i = t0 + t;
        out[u] = (i < t_end && k < k_end) ? X[i * t_stride + k * k_stride] : 0.0f;
    }
}

// ... and into shared memory, as S[k][t].
template <int EXTENT, int LOADS, int THREADS>
__device__ __forceinline__ void store_slice(float (*S)[EXTENT + 4], const float (&in)[LOADS], bool along_k) {
#pragma unroll
    for (int u = 0; u < LOADS; ++u) {
        int l = threadIdx.x + u * THREADS;
        S[along_k ? l % TILE_K : l / EXTENT][along_k ? l / TILE_K : l % EXTENT] = in[u];
    }
}

// C (rows, cols) = A (rows, inner) B (inner, cols) with A(i, k) = A[i * a_i + k * a_k] and
// B(k, j) = B[k * b_k + j * b_j]: the strides express every transpose the layers need.
// Calls epilogue(i, j, value) for each element of the block's tile inside the matrix.
// If a_row_sums is not null (and splits == 1), the blocks of the first column of tiles also write the row
// sums of A (sum over k of A(i, k)) from the tiles they load anyway: the bias gradient, for free.
// With splits > 1, `partials` holds splits x tiles x BM x BN floats and `tile_counters` one zero per tile
// (left zero again on exit).
template <int BM, int BN, int TM, int TN, class Epilogue>
__device__ __forceinline__ void gemm(const float* A, long long a_i, long long a_k, const float* B, long long b_k,
                                     long long b_j, int rows, int cols, int inner, float* a_row_sums,
                                     float* partials, unsigned int* tile_counters, Epilogue epilogue) {
    constexpr int TX = BN / TN, TY = BM / TM, THREADS = TX * TY;
    constexpr int A_LOADS = BM * TILE_K / THREADS, B_LOADS = BN * TILE_K / THREADS;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "threads read their operands as float4");
    static_assert(A_LOADS * THREADS == BM * TILE_K && B_LOADS * THREADS == BN * TILE_K, "whole loads per thread");
    static_assert(THREADS >= BM, "one thread per row for the row sums");
    // Two stages: the next slice of A and B is fetched from global memory into registers while this one is
    // multiplied, then stored into the other stage. +4 columns of padding keep float4 reads aligned and
    // spread the column-wise stores over the banks.
    __shared__ __align__(16) float As[2][TILE_K][BM + 4];  // As[stage][k][i]
    __shared__ __align__(16) float Bs[2][TILE_K][BN + 4];  // Bs[stage][k][j]
    int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    // This block's range of the inner dimension, in whole TILE_K slices
    int slices = (inner + TILE_K - 1) / TILE_K, per_split = (slices + gridDim.z - 1) / gridDim.z;
    int k_begin = blockIdx.z * per_split * TILE_K, k_end = min(inner, k_begin + per_split * TILE_K);
    // A thread's outputs come in 4 x 4 groups spaced TY * 4 rows and TX * 4 columns apart, so a warp's
    // float4 reads of a shared row are consecutive (no bank conflicts).
    float acc[TM][TN];
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[r][c] = 0.0f;
    float a_next[A_LOADS], b_next[B_LOADS];
    bool sums_rows = a_row_sums != nullptr && blockIdx.x == 0 && tid < BM;
    float row_sum = 0.0f;
    fetch_slice<BM, A_LOADS, THREADS>(a_next, A, a_i, a_k, row0, rows, k_begin, k_end);
    fetch_slice<BN, B_LOADS, THREADS>(b_next, B, b_j, b_k, col0, cols, k_begin, k_end);
    store_slice<BM, A_LOADS, THREADS>(As[0], a_next, a_k == 1);
    store_slice<BN, B_LOADS, THREADS>(Bs[0], b_next, b_k == 1);
    __syncthreads();
    int stage = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K, stage ^= 1) {
        bool more = k0 + TILE_K < k_end;
        if (more) {  // in flight during the products below
            fetch_slice<BM, A_LOADS, THREADS>(a_next, A, a_i, a_k, row0, rows, k0 + TILE_K, k_end);
            fetch_slice<BN, B_LOADS, THREADS>(b_next, B, b_j, b_k, col0, cols, k0 + TILE_K, k_end);
        }
        if (sums_rows)
            for (int kk = 0; kk < TILE_K; ++kk) row_sum += As[stage][kk][tid];
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int q = 0; q < TM / 4; ++q) {
                float4 v = *reinterpret_cast<const float4*>(&As[stage][kk][q * TY * 4 + ty * 4]);
                a[4 * q] = v.x, a[4 * q + 1] = v.y, a[4 * q + 2] = v.z, a[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < TN / 4; ++q) {
                float4 v = *reinterpret_cast<const float4*>(&Bs[stage][kk][q * TX * 4 + tx * 4]);
                b[4 * q] = v.x, b[4 * q + 1] = v.y, b[4 * q + 2] = v.z, b[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int r = 0; r < TM; ++r)
#pragma unroll
                for (int c = 0; c < TN; ++c) acc[r][c] += a[r] * b[c];
        }
        if (more) {  // the other stage was last read before the previous barrier
            store_slice<BM, A_LOADS, THREADS>(As[stage ^ 1], a_next, a_k == 1);
            store_slice<BN, B_LOADS, THREADS>(Bs[stage ^ 1], b_next, b_k == 1);
        }
        __syncthreads();
    }
    if (sums_rows && row0 + tid < rows) a_row_sums[row0 + tid] = row_sum;
    // The output row (column) of acc[r][c] within the tile
    auto tile_row = [&](int r) { return (r / 4) * TY * 4 + ty * 4 + r % 4; };
    auto tile_col = [&](int c) { return (c / 4) * TX * 4 + tx * 4 + c % 4; };
    if (gridDim.z > 1) {
        // Split-K: publish this block's partial sums; the tile's last block to arrive adds them all
        int tile = blockIdx.y * gridDim.x + blockIdx.x;
        long long tile_floats = (long long)BM * BN;
        float* mine = partials + ((long long)blockIdx.z * gridDim.x * gridDim.y + tile) * tile_floats;
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TN; c += 4)
                *reinterpret_cast<float4*>(&mine[tile_row(r) * BN + tile_col(c)]) =
                    make_float4(acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3]);
        __threadfence();  // the partial sums are visible to every block before the count says so
        __syncthreads();
        __shared__ unsigned int arrived;
        if (tid == 0) arrived = atomicAdd(&tile_counters[tile], 1u);
        __syncthreads();
        if (arrived != gridDim.z - 1) return;
        __threadfence();
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TN; c += 4) {
                float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                for (int split = 0; split < (int)gridDim.z; ++split) {  // in split order, whoever is last
                    const float* part = partials + ((long long)split * gridDim.x * gridDim.y + tile) * tile_floats;
                    float4 v = split == (int)blockIdx.z
                                   ? make_float4(acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3])
                                   : __ldcg(reinterpret_cast<const float4*>(&part[tile_row(r) * BN + tile_col(c)]));
                    sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
                }
                acc[r][c] = sum.x, acc[r][c + 1] = sum.y, acc[r][c + 2] = sum.z, acc[r][c + 3] = sum.w;
            }
        if (tid == 0) tile_counters[tile] = 0;  // ready for the next launch (and graph replay)
    }
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) {
            int i = row0 + tile_row(r), j = col0 + tile_col(c);
            if (i < rows && j < cols) epilogue(i, j, acc[r][c]);
        }
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

struct StoreEpilogue {
    float* C;
    int cols;
    __device__ __forceinline__ void operator()(int i, int j, float v) const { C[(long long)i * cols + j] = v; }
};

// The three kernels for one tile shape.
//   linear_forward_<tile>:         Y (M, N) = act(X (M, K) W (N, K)^T + b). Output (M, N).
//   linear_backward_input_<tile>:  dX (M, K) = (dY (M, N) W (N, K)) * act'(Y_prev), Y_prev (M, K) the output
//                                  of the layer before (its activation `activation`, its dropout draw `draw`).
//                                  Output (M, K).
//   linear_backward_weight_<tile>: dW (N, K) = dY (M, N)^T X (M, K) and db (N,) = sum over the M rows of dY.
//                                  Output (N, K); splits must be 1.
#define LINEAR_KERNELS(BM, BN, TM, TN, THREADS)                                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS) linear_forward_##BM##x##BN##_##TM##x##TN(               \
        float* Y, const float* X, const float* W, const float* b, int M, int N, int K, int activation, float slope,  \
        float drop_p, float drop_scale, unsigned long long seed, const unsigned long long* step, unsigned int draw, \
        float* partials, unsigned int* tile_counters) {                                                            \
        ForwardEpilogue epilogue = {Y, b, N, activation, slope, drop_p, drop_scale, seed, *step, draw};            \
        gemm<BM, BN, TM, TN>(X, K, 1, W, 1, K, M, N, K, nullptr, partials, tile_counters, epilogue);                \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS) linear_backward_input_##BM##x##BN##_##TM##x##TN(        \
        float* dX, const float* dY, const float* W, const float* Y_prev, int M, int N, int K, int activation,      \
        float slope, float drop_p, float drop_scale, unsigned long long seed, const unsigned long long* step,      \
        unsigned int draw, float* partials, unsigned int* tile_counters) {                                         \
        InputGradEpilogue epilogue = {dX, Y_prev, K, activation, slope, drop_p, drop_scale, seed, *step, draw};    \
        gemm<BM, BN, TM, TN>(dY, N, 1, W, K, 1, M, K, N, nullptr, partials, tile_counters, epilogue);               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS) linear_backward_weight_##BM##x##BN##_##TM##x##TN(       \
        float* dW, float* db, const float* dY, const float* X, int M, int N, int K) {                              \
        StoreEpilogue epilogue = {dW, K};                                                                          \
        gemm<BM, BN, TM, TN>(dY, 1, N, X, K, 1, N, K, M, db, nullptr, nullptr, epilogue);                           \
    }

// Tile shapes (BM, BN, TM, TN, threads = BM / TM * BN / TN): from many small blocks for the products with
// few rows to wide register blocking for the large ones. minigan.cupy_step.GEMM_TILES lists the same.
LINEAR_KERNELS(32, 32, 4, 4, 64)
LINEAR_KERNELS(64, 64, 4, 4, 256)
LINEAR_KERNELS(64, 64, 8, 8, 64)
LINEAR_KERNELS(128, 64, 8, 4, 256)
LINEAR_KERNELS(128, 128, 8, 8, 256)
