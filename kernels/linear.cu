// Linear layers for the fused step: a tiled SGEMM with the neighbouring elementwise ops fused into its
// epilogue, so an activation never makes a round trip through memory on its own.
//
//   linear_forward         Y = act(X W^T + b)            act: none | LeakyReLU | LeakyReLU+Dropout | Sigmoid
//   linear_backward_input  dX = (dY W) * act'(Y_prev)    act' of the layer *before* (its output is X)
//   linear_backward_weight dW = dY^T X, and db = sum over rows of dY from the same tiles
//
// Shapes: X (M, K), W (N, K), b (N,), Y (M, N), all row-major float32. Dropout masks are not stored: the
// epilogues regenerate them from philox counters (element / 4, draw, *step) (philox.cuh), four neighbours of a
// row from one Philox block: an epilogue takes a thread's outputs four columns at a time. Because the stored
// output is the post-dropout Y, whose sign is the LeakyReLU output's wherever the mask keeps it, Y alone
// gives both derivatives. The semantics are minigan/layers.py's; tests/test_fused_step.py runs these kernels
// on the CPU against the NumPy layers, tests/test_cupy.py on the GPU.
//
// Each kernel exists once per tile shape BMxBN_TMxTN (the list at the bottom, mirrored by
// minigan.cupy_step.GEMM_TILES): a block computes a BM x BN patch of the output with (BM/TM)(BN/TN) threads,
// each thread TM x TN outputs. Launch: grid (ceil(cols / BN), ceil(rows / BM), splits), that many threads.
// Every tile shape adds the products of each output in the same order (k = 0, 1, ... within a split), so
// they give bit-identical results and the step may pick whichever is fastest on the GPU at hand. `splits`
// > 1 cuts the inner dimension into that many ranges, for the products whose output has too few tiles to
// fill the GPU; the partial sums are added in split order (deterministic) before the epilogue.
#include "dependent_launch.cuh"
#include "philox.cuh"

#define TILE_K 16

enum Activation { ACT_NONE = 0, ACT_LEAKY = 1, ACT_LEAKY_DROPOUT = 2, ACT_SIGMOID = 3 };

// How a block reads one operand, X(t, k) = X[t * t_stride + k * k_stride]: consecutive threads take
// consecutive addresses (coalesced), one float each or, where the layout keeps four neighbours aligned and
// whole inside the matrix, four at once (a quarter of the load instructions). The mode is the same for the
// whole block, so no thread diverges.
enum FetchMode { SCALAR_ALONG_K, SCALAR_ALONG_T, QUAD_ALONG_K, QUAD_ALONG_T };

__device__ __forceinline__ int fetch_mode(const float* X, long long t_stride, long long k_stride, int t_end,
                                          int k_end) {
    bool aligned = (reinterpret_cast<unsigned long long>(X) & 15) == 0;
    if (k_stride == 1) return aligned && t_stride % 4 == 0 && k_end % 4 == 0 ? QUAD_ALONG_K : SCALAR_ALONG_K;
    return aligned && t_stride == 1 && k_stride % 4 == 0 && t_end % 4 == 0 ? QUAD_ALONG_T : SCALAR_ALONG_T;
}

// Element u of a thread's LOADS for a slice of TILE_K along k by EXTENT along t: its (kk, t) in the slice.
// A quad's four elements are u = 4q .. 4q + 3, neighbours along k or t.
template <int EXTENT, int THREADS>
__device__ __forceinline__ void slice_position(int mode, int tid, int u, int& kk, int& t) {
    if (mode == QUAD_ALONG_K || mode == QUAD_ALONG_T) {
        int q = tid + (u / 4) * THREADS;
        if (mode == QUAD_ALONG_K) kk = 4 * (q % (TILE_K / 4)) + u % 4, t = q / (TILE_K / 4);
        else kk = q / (EXTENT / 4), t = 4 * (q % (EXTENT / 4)) + u % 4;
    } else {
        int l = tid + u * THREADS;
        if (mode == SCALAR_ALONG_K) kk = l % TILE_K, t = l / TILE_K;
        else kk = l / EXTENT, t = l % EXTENT;
    }
}

// A thread's share of the operand's slice [t0, t0 + EXTENT) x [k0, k0 + TILE_K) into registers, zero outside
// [.., t_end) x [.., k_end) (a quad is wholly inside or outside: fetch_mode's conditions).
template <int EXTENT, int LOADS, int THREADS>
__device__ __forceinline__ void fetch_slice(float (&out)[LOADS], int mode, const float* X, long long t_stride,
                                            long long k_stride, int t0, int t_end, int k0, int k_end, int tid) {
    static_assert(LOADS % 4 == 0 && EXTENT % 4 == 0, "whole quads per thread");
    if (mode == QUAD_ALONG_K || mode == QUAD_ALONG_T) {
#pragma unroll
        for (int u = 0; u < LOADS; u += 4) {
            int kk, t;
            slice_position<EXTENT, THREADS>(mode, tid, u, kk, t);
            int i = t0 + t, k = k0 + kk;
            float4 v = i < t_end && k < k_end ? *reinterpret_cast<const float4*>(&X[i * t_stride + k * k_stride])
                                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            out[u] = v.x, out[u + 1] = v.y, out[u + 2] = v.z, out[u + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int u = 0; u < LOADS; ++u) {
            int kk, t;
            slice_position<EXTENT, THREADS>(mode, tid, u, kk, t);
            int i = t0 + t, k = k0 + kk;
            out[u] = (i < t_end && k < k_end) ? X[i * t_stride + k * k_stride] : 0.0f;
        }
    }
}

// ... and into shared memory, as S[k][t].
template <int EXTENT, int LOADS, int THREADS>
__device__ __forceinline__ void store_slice(float (*S)[EXTENT + 4], const float (&in)[LOADS], int mode, int tid) {
    if (mode == QUAD_ALONG_T) {  // a quad is four neighbours of one row of S
#pragma unroll
        for (int u = 0; u < LOADS; u += 4) {
            int kk, t;
            slice_position<EXTENT, THREADS>(mode, tid, u, kk, t);
            *reinterpret_cast<float4*>(&S[kk][t]) = make_float4(in[u], in[u + 1], in[u + 2], in[u + 3]);
        }
    } else {
#pragma unroll
        for (int u = 0; u < LOADS; ++u) {
            int kk, t;
            slice_position<EXTENT, THREADS>(mode, tid, u, kk, t);
            S[kk][t] = in[u];
        }
    }
}

// A fence that orders this thread's memory operations before and after it for every thread of the GPU
// (release and acquire; cheaper than __threadfence's sequentially consistent one). Through a block barrier
// it also orders the other threads' writes before it (CUTLASS's split-K semaphore relies on the same).
__device__ __forceinline__ void fence_acq_rel_gpu() {
#ifdef __CUDA_ARCH__
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
#else
    __threadfence();
#endif
}

// Thread block clusters (Hopper): the blocks of one cluster run at once, on one GPC, and each may read the
// others' shared memory. minigan/cupy_step.py launches a split product's blocks along z as one cluster where a
// "+cluster" tile shape was timed faster; launched otherwise, a kernel is its own cluster of one. The CPU build
// (tests/cuda_host.h) provides the same three calls.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ unsigned int cluster_blocks() {
#if __CUDA_ARCH__ >= 900
    unsigned int blocks;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(blocks));
    return blocks;
#else
    return 1;
#endif
}

// Every thread of the cluster's blocks arrives before any goes on; shared memory written before it is seen by
// the peers' reads after it (release, acquire).
__device__ __forceinline__ void cluster_sync() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// The address of *p (this block's shared memory) in the shared memory of the cluster's block `rank`.
__device__ __forceinline__ const float* cluster_peer(const float* p, unsigned int rank) {
#if __CUDA_ARCH__ >= 900
    unsigned long long peer;
    asm volatile("mapa.u64 %0, %1, %2;" : "=l"(peer) : "l"(p), "r"(rank));
    return reinterpret_cast<const float*>(peer);
#else
    return p;
#endif
}
#endif

// Whether a tile's groups' sums and row sums fit over its stages (gemm), where its blocks hand over in a cluster:
// every tile shape but 128x64_8x4 and 128x128_8x8 (minigan.cupy_step.cluster_parks says the same).
__host__ __device__ constexpr bool cluster_parks(int bm, int bn, int slices) {
    return slices * bm * (bn + 1) <= slices * 2 * TILE_K * (bm + bn + 8);
}

// C (rows, cols) = A (rows, inner) B (inner, cols) with A(i, k) = A[i * a_i + k * a_k] and
// B(k, j) = B[k * b_k + j * b_j]: the strides express every transpose the layers need.
// Calls epilogue(i, j, v, count, operands) for each run v of four neighbours (i, j .. j + 3) of the block's
// tile, j a multiple of 4, count (1 .. 4) of them inside the matrix, after epilogue.load(i, j, count, operands)
// has read what the run needs from memory (once per column where Epilogue::per_column).
//
// Split-K: the inner dimension is cut into splits = gridDim.z * SLICES ranges of whole TILE_K slices; split s
// is taken by thread group s % SLICES (each of (BM/TM)(BN/TN) threads) of block z = s / SLICES. Within a
// split the products are added in k order; the splits' sums are then added in split order, through shared
// memory where one block holds them all (gridDim.z == 1), else by the last of the tile's blocks to finish,
// from `partials` (splits x tiles x BM x BN floats, then splits x rows for the row sums below; `tile_counters`,
// one zero per tile, is left zero again), or, where the tile's blocks were launched as one cluster, by all of
// them, each a share of the tile, from the sums every block parked in its shared memory. The bits therefore
// depend on the number of splits only, not on the tile shape or on how the splits are shared between blocks
// and groups.
// If a_row_sums is not null, the blocks of the first column of tiles also write the row sums of A (sum over
// k of A(i, k)) from the slices they load anyway: the bias gradient, for free. They are split like the
// products, each split's sum in k order, and added in split order the same way.
template <int BM, int BN, int TM, int TN, int SLICES, class Epilogue>
__device__ __forceinline__ void gemm(const float* A, long long a_i, long long a_k, const float* B, long long b_k,
                                     long long b_j, int rows, int cols, int inner, float* a_row_sums,
                                     float* partials, unsigned int* tile_counters, Epilogue epilogue) {
    constexpr int TX = BN / TN, TY = BM / TM, THREADS = TX * TY;  // per group
    constexpr int A_LOADS = BM * TILE_K / THREADS, B_LOADS = BN * TILE_K / THREADS;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "threads read their operands as float4");
    static_assert(A_LOADS * THREADS == BM * TILE_K && B_LOADS * THREADS == BN * TILE_K, "whole loads per thread");
    static_assert(THREADS >= BM, "one thread per row for the row sums");
    static_assert((SLICES - 1) * BM * (BN + 1) <= SLICES * 2 * TILE_K * (BM + 4), "groups' sums fit where A was");
    // Two stages per group: the next slice of A and B is fetched from global memory into registers while
    // this one is multiplied, then stored into the other stage. +4 columns of padding keep float4 reads
    // aligned and spread the column-wise stores over the banks. A's stages, then B's, in one array: where the
    // tile's blocks are a cluster, every group's sums are parked over both.
    constexpr int A_STAGES = SLICES * 2 * TILE_K * (BM + 4), STAGES = A_STAGES + SLICES * 2 * TILE_K * (BN + 4);
    __shared__ __align__(16) float stages[STAGES];
    auto As = reinterpret_cast<float(*)[2][TILE_K][BM + 4]>(stages);  // As[group][stage][k][i]
    auto Bs = reinterpret_cast<float(*)[2][TILE_K][BN + 4]>(stages + A_STAGES);  // Bs[group][stage][k][j]
    int group = threadIdx.x / THREADS, tid = threadIdx.x % THREADS, tx = tid % TX, ty = tid / TX;
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    // This group's split of the inner dimension, in whole TILE_K slices. Every group of the block runs as
    // many iterations as its first group's split has slices (the barriers are the block's), reading zeros
    // past its own split's end: adding 0 * 0 leaves a sum unchanged.
    int splits = gridDim.z * SLICES, split = blockIdx.z * SLICES + group;
    int per_split = ((inner + TILE_K - 1) / TILE_K + splits - 1) / splits;
    int k_begin = split * per_split * TILE_K, k_end = min(inner, k_begin + per_split * TILE_K);
    int first_k = blockIdx.z * SLICES * per_split * TILE_K;
    int iterations = first_k < inner ? min(per_split, (inner - first_k + TILE_K - 1) / TILE_K) : 0;
    int a_mode = fetch_mode(A, a_i, a_k, rows, inner), b_mode = fetch_mode(B, b_j, b_k, cols, inner);
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
    fetch_slice<BM, A_LOADS, THREADS>(a_next, a_mode, A, a_i, a_k, row0, rows, k_begin, k_end, tid);
    fetch_slice<BN, B_LOADS, THREADS>(b_next, b_mode, B, b_j, b_k, col0, cols, k_begin, k_end, tid);
    store_slice<BM, A_LOADS, THREADS>(As[group][0], a_next, a_mode, tid);
    store_slice<BN, B_LOADS, THREADS>(Bs[group][0], b_next, b_mode, tid);
    __syncthreads();
    for (int slice = 0, stage = 0; slice < iterations; ++slice, stage ^= 1) {
        int k0 = k_begin + slice * TILE_K;
        bool more = slice + 1 < iterations;
        if (more) {  // in flight during the products below
            fetch_slice<BM, A_LOADS, THREADS>(a_next, a_mode, A, a_i, a_k, row0, rows, k0 + TILE_K, k_end, tid);
            fetch_slice<BN, B_LOADS, THREADS>(b_next, b_mode, B, b_j, b_k, col0, cols, k0 + TILE_K, k_end, tid);
        }
        if (sums_rows)
            for (int kk = 0; kk < TILE_K; ++kk) row_sum += As[group][stage][kk][tid];
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int q = 0; q < TM / 4; ++q) {
                float4 v = *reinterpret_cast<const float4*>(&As[group][stage][kk][q * TY * 4 + ty * 4]);
                a[4 * q] = v.x, a[4 * q + 1] = v.y, a[4 * q + 2] = v.z, a[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int q = 0; q < TN / 4; ++q) {
                float4 v = *reinterpret_cast<const float4*>(&Bs[group][stage][kk][q * TX * 4 + tx * 4]);
                b[4 * q] = v.x, b[4 * q + 1] = v.y, b[4 * q + 2] = v.z, b[4 * q + 3] = v.w;
            }
#pragma unroll
            for (int r = 0; r < TM; ++r)
#pragma unroll
                for (int c = 0; c < TN; ++c) acc[r][c] += a[r] * b[c];
        }
        if (more) {  // the other stage was last read before the previous barrier
            store_slice<BM, A_LOADS, THREADS>(As[group][stage ^ 1], a_next, a_mode, tid);
            store_slice<BN, B_LOADS, THREADS>(Bs[group][stage ^ 1], b_next, b_mode, tid);
        }
        __syncthreads();
    }
    if (splits == 1 && sums_rows && row0 + tid < rows) a_row_sums[row0 + tid] = row_sum;
    // The output row (column) of acc[r][c] within the tile
    auto tile_row = [&](int r) { return (r / 4) * TY * 4 + ty * 4 + r % 4; };
    auto tile_col = [&](int c) { return (c / 4) * TX * 4 + tx * 4 + c % 4; };
    // One split's sums of the tile, a row-major BM x BN buffer (in shared or global memory): acc into it, or
    // added to acc from it (shared memory)
    auto store_sums = [&](float* sums) {
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TN; c += 4)
                *reinterpret_cast<float4*>(&sums[tile_row(r) * BN + tile_col(c)]) =
                    make_float4(acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3]);
    };
    auto add_sums = [&](const float* sums) {
#pragma unroll
        for (int r = 0; r < TM; ++r)
#pragma unroll
            for (int c = 0; c < TN; c += 4) {
                float4 v = *reinterpret_cast<const float4*>(&sums[tile_row(r) * BN + tile_col(c)]);
                acc[r][c] += v.x, acc[r][c + 1] += v.y, acc[r][c + 2] += v.z, acc[r][c + 3] += v.w;
            }
    };
    if (splits > 1 && gridDim.z == 1) {
        // Every split is this block's: groups 1.. park their sums (and row sums) where A's slices were (the
        // loop's last barrier is behind every read of them), and group 0 adds them in split order
        float* parked = &As[0][0][0][0];
        float* parked_rows = parked + (SLICES - 1) * BM * BN;
        if (group > 0) {
            store_sums(parked + (group - 1) * BM * BN);
            if (sums_rows) parked_rows[(group - 1) * BM + tid] = row_sum;
        }
        __syncthreads();
        if (group > 0) return;
        for (int g = 1; g < SLICES; ++g) {
            add_sums(parked + (g - 1) * BM * BN);
            if (sums_rows) row_sum += parked_rows[(g - 1) * BM + tid];
        }
        if (sums_rows && row0 + tid < rows) a_row_sums[row0 + tid] = row_sum;
    } else if (cluster_parks(BM, BN, SLICES) && splits > 1 && cluster_blocks() == gridDim.z) {
        // The tile's blocks are one cluster: each parks its groups' sums (and row sums) over its stages (the
        // loop's last barrier is behind every read of them); after the cluster's barrier, each adds up every
        // gridDim.z-th run of four neighbours of the tile, from the first of its own, over the splits in split
        // order, reading each split's sums from the shared memory of the block that holds it, and applies the
        // epilogue. (A thread's runs are whole rows of runs apart: they share a column.)
        float* parked = stages;  // [group][BM * BN], then [group][BM] row sums
        store_sums(parked + group * BM * BN);
        if (sums_rows) parked[SLICES * BM * BN + group * BM + tid] = row_sum;
        cluster_sync();
        constexpr int BLOCK = THREADS * SLICES, RUNS = BM * BN / 4;
        static_assert(BLOCK % (BN / 4) == 0, "a thread's runs share a column");
        if (sums_rows && blockIdx.z == 0 && group == 0 && row0 + tid < rows) {
            row_sum = 0.0f;
            for (int s = 0; s < splits; ++s)
                row_sum += cluster_peer(parked, s / SLICES)[SLICES * BM * BN + (s % SLICES) * BM + tid];
            a_row_sums[row0 + tid] = row_sum;
        }
        for (int run = blockIdx.z * BLOCK + threadIdx.x; run < RUNS; run += gridDim.z * BLOCK) {
            int i = row0 + run / (BN / 4), j = col0 + 4 * (run % (BN / 4));
            if (i >= rows || j >= cols) continue;
            typename Epilogue::Operands operands;
            epilogue.load(i, j, min(4, cols - j), operands);
            float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            for (int s = 0; s < splits; ++s) {
                float4 v = *reinterpret_cast<const float4*>(cluster_peer(parked, s / SLICES) + (s % SLICES) * BM * BN +
                                                            4 * run);
                sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
            }
            float values[4] = {sum.x, sum.y, sum.z, sum.w};
            epilogue(i, j, values, min(4, cols - j), operands);
        }
        cluster_sync();  // the peers' reads of this block's shared memory are done before it ends
        return;
    } else if (splits > 1) {
        // Splits over several blocks: publish every group's sums; the tile's last block to arrive adds them
        int tile = blockIdx.y * gridDim.x + blockIdx.x, tiles = gridDim.x * gridDim.y;
        auto part = [&](int s) { return partials + ((long long)s * tiles + tile) * (BM * BN); };
        auto row_part = [&](int s) { return partials + (long long)splits * tiles * (BM * BN) + (long long)s * rows; };
        store_sums(part(split));
        if (sums_rows && row0 + tid < rows) row_part(split)[row0 + tid] = row_sum;
        __syncthreads();  // every group's sums are written...
        __shared__ unsigned int arrived;
        if (threadIdx.x == 0) {
            fence_acq_rel_gpu();  // ... and ordered before the count for every block
            arrived = atomicAdd(&tile_counters[tile], 1u);
            fence_acq_rel_gpu();  // the sums of the blocks counted before are read after it
        }
        __syncthreads();
        if (arrived != gridDim.z - 1) return;
        if (threadIdx.x == 0) tile_counters[tile] = 0;  // ready for the next launch (and graph replay)
        if (sums_rows && group == 0 && row0 + tid < rows) {
            row_sum = 0.0f;
            for (int s = 0; s < splits; ++s) row_sum += __ldcg(&row_part(s)[row0 + tid]);
            a_row_sums[row0 + tid] = row_sum;
        }
        // Every thread of the last block, whatever its group, adds up RUNS_PER_THREAD runs of four neighbours
        // of the tile (in the order of the sums' layout, row-major), each over the splits in split order, with
        // the loads of 16 runs' worth in flight: a block of 128 threads reads 8 splits of a 32 x 32 tile in one
        // round trip. Then it applies the epilogue to them.
        constexpr int BLOCK = THREADS * SLICES, RUNS_PER_THREAD = BM * BN / 4 / BLOCK;
        constexpr int SPLITS_IN_FLIGHT = RUNS_PER_THREAD >= 16 ? 1 : 16 / RUNS_PER_THREAD;
        static_assert(RUNS_PER_THREAD * BLOCK * 4 == BM * BN, "whole runs per thread");
        auto run_at = [&](int u, int& i, int& j) {
            int run = threadIdx.x + u * BLOCK;
            i = row0 + run / (BN / 4), j = col0 + 4 * (run % (BN / 4));
            return i < rows && j < cols;
        };
        float4 sums[RUNS_PER_THREAD];
#pragma unroll
        for (int u = 0; u < RUNS_PER_THREAD; ++u) sums[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int first = 0; first < splits; first += SPLITS_IN_FLIGHT)
#pragma unroll
            for (int s = first; s < first + SPLITS_IN_FLIGHT; ++s)
#pragma unroll
                for (int u = 0; u < RUNS_PER_THREAD; ++u)
                    if (s < splits) {
                        float4 v = __ldcg(reinterpret_cast<const float4*>(part(s)) + threadIdx.x + u * BLOCK);
                        sums[u].x += v.x, sums[u].y += v.y, sums[u].z += v.z, sums[u].w += v.w;
                    }
        // Every run's operands are loaded before any run is stored (as below); a thread's runs are whole rows of
        // runs apart, so they share their column and its operands where Epilogue::per_column.
        static_assert(BLOCK % (BN / 4) == 0, "a thread's runs share a column");
        constexpr int OPERAND_RUNS = Epilogue::per_column ? 1 : RUNS_PER_THREAD;
        typename Epilogue::Operands run_operands[OPERAND_RUNS];
#pragma unroll
        for (int u = 0; u < OPERAND_RUNS; ++u) {
            int i, j;
            if (run_at(u, i, j) || (Epilogue::per_column && j < cols))
                epilogue.load(i, j, min(4, cols - j), run_operands[u]);
        }
#pragma unroll
        for (int u = 0; u < RUNS_PER_THREAD; ++u) {
            int i, j;
            float values[4] = {sums[u].x, sums[u].y, sums[u].z, sums[u].w};
            if (run_at(u, i, j)) epilogue(i, j, values, min(4, cols - j), run_operands[Epilogue::per_column ? 0 : u]);
        }
        return;
    }
    // Every run's operands are loaded before any run is stored: the compiler moves no guarded load above a
    // store, so a load between two runs' stores would cost a round trip to memory of its own. Operands that
    // depend on the column only (Epilogue::per_column) are loaded once for all of the thread's rows.
    constexpr int OPERAND_ROWS = Epilogue::per_column ? 1 : TM;
    typename Epilogue::Operands run_operands[OPERAND_ROWS][TN / 4];
#pragma unroll
    for (int r = 0; r < OPERAND_ROWS; ++r)
#pragma unroll
        for (int c = 0; c < TN; c += 4) {
            int i = row0 + tile_row(r), j = col0 + tile_col(c);
            if ((Epilogue::per_column || i < rows) && j < cols)
                epilogue.load(i, j, min(4, cols - j), run_operands[r][c / 4]);
        }
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; c += 4) {
            int i = row0 + tile_row(r), j = col0 + tile_col(c);
            float run[4] = {acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3]};
            if (i < rows && j < cols)
                epilogue(i, j, run, min(4, cols - j), run_operands[Epilogue::per_column ? 0 : r][c / 4]);
        }
}

// Four neighbours X[at .. at + 3], of which the first count are inside the matrix: one 16-byte access where
// all four are and X + at is aligned (a row whose width is a multiple of 4), else a float at a time.
__device__ __forceinline__ bool whole_run(const float* X, long long at, int count) {
    return count == 4 && (reinterpret_cast<unsigned long long>(X + at) & 15) == 0;
}

__device__ __forceinline__ void load_run(float (&v)[4], const float* X, long long at, int count) {
    if (whole_run(X, at, count)) {
        float4 q = *reinterpret_cast<const float4*>(X + at);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) v[q] = q < count ? X[at + q] : 0.0f;
    }
}

__device__ __forceinline__ void store_run(float* X, long long at, const float (&v)[4], int count) {
    if (whole_run(X, at, count)) {
        *reinterpret_cast<float4*>(X + at) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int q = 0; q < 4; ++q)
            if (q < count) X[at + q] = v[q];
    }
}

struct ForwardEpilogue {
    float* Y;
    const float* b;
    int N, activation;
    float slope, drop_p, drop_scale;
    unsigned long long seed, step;
    unsigned int draw;
    int first_row;  // the batch's row that Y's row 0 is: the dropout counters count the whole batch's elements
    static constexpr bool per_column = true;
    struct Operands { float bias[4]; };
    __device__ __forceinline__ void load(int, int j, int count, Operands& o) const { load_run(o.bias, b, j, count); }
    __device__ __forceinline__ void operator()(int i, int j, float (&v)[4], int count, const Operands& o) const {
        const float(&bias)[4] = o.bias;
        float u[4];
        if (activation == ACT_LEAKY_DROPOUT)
            step_uniforms4(seed, step, draw, (unsigned int)((first_row + i) * N + j), u);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            v[q] += bias[q];
            if (activation == ACT_LEAKY || activation == ACT_LEAKY_DROPOUT) v[q] = v[q] > 0.0f ? v[q] : v[q] * slope;
            if (activation == ACT_LEAKY_DROPOUT) v[q] = u[q] >= drop_p ? v[q] * drop_scale : 0.0f;
            if (activation == ACT_SIGMOID) v[q] = 1.0f / (1.0f + expf(-v[q]));  // exp overflows to inf: exactly 0
        }
        store_run(Y, (long long)i * N + j, v, count);
    }
};

struct InputGradEpilogue {
    float* dX;
    const float* Y_prev;
    int K, activation;
    float slope, drop_p, drop_scale;
    unsigned long long seed, step;
    unsigned int draw;
    static constexpr bool per_column = false;
    struct Operands { float y[4]; };
    __device__ __forceinline__ void load(int i, int j, int count, Operands& o) const {
        if (activation != ACT_NONE) load_run(o.y, Y_prev, (long long)i * K + j, count);
    }
    __device__ __forceinline__ void operator()(int i, int j, float (&v)[4], int count, const Operands& o) const {
        long long at = (long long)i * K + j;
        const float(&y)[4] = o.y;
        float u[4];
        if (activation == ACT_LEAKY_DROPOUT) step_uniforms4(seed, step, draw, (unsigned int)at, u);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            if (activation == ACT_LEAKY_DROPOUT)  // Dropout's backward, then LeakyReLU's, in the NumPy layers' order
                v[q] = u[q] >= drop_p ? (v[q] * drop_scale) * (y[q] > 0.0f ? 1.0f : slope) : 0.0f;
            else if (activation == ACT_LEAKY)
                v[q] *= y[q] > 0.0f ? 1.0f : slope;
            else if (activation == ACT_SIGMOID)
                v[q] *= y[q] * (1.0f - y[q]);
        }
        store_run(dX, at, v, count);
    }
};

struct StoreEpilogue {
    float* C;
    int cols;
    static constexpr bool per_column = true;
    struct Operands {};
    __device__ __forceinline__ void load(int, int, int, Operands&) const {}
    __device__ __forceinline__ void operator()(int i, int j, float (&v)[4], int count, const Operands&) const {
        store_run(C, (long long)i * cols + j, v, count);
    }
};

// The kernels of one tile shape TILE = BMxBN_TMxTN, or BMxBN_TMxTN_sSLICES with SLICES > 1 thread groups
// sharing the splits of the inner dimension (gemm above; THREADS = BM / TM * BN / TN * SLICES):
//   linear_forward_<TILE>:         Y (M, N) = act(X (M, K) W (N, K)^T + b), rows first_row .. first_row + M - 1
//                                  of a batch (for the dropout mask, drawn per element of the batch).
//                                  Output (M, N).
//   linear_backward_input_<TILE>:  dX (M, K) = (dY (M, N) W (N, K)) * act'(Y_prev), Y_prev (M, K) the output
//                                  of the layer before (its activation `activation`, its dropout draw `draw`).
//                                  Output (M, K).
//   linear_backward_weight_<TILE>: dW (N, K) = dY (M, N)^T X (M, K) and db (N,) = sum over the M rows of dY.
//                                  Output (N, K).
#define LINEAR_KERNELS(TILE, BM, BN, TM, TN, SLICES, THREADS, MIN_BLOCKS)                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) linear_forward_##TILE(                        \
        float* Y, const float* X, const float* W, const float* b, int M, int N, int K, int activation, float slope, \
        float drop_p, float drop_scale, unsigned long long seed, const unsigned long long* step, unsigned int draw, \
        int first_row, float* partials, unsigned int* tile_counters) {                                             \
        after_previous_kernels();                                                                                  \
        static_assert(THREADS == BM / TM * BN / TN * SLICES, "the launch bound is the block's size");             \
        ForwardEpilogue epilogue = {Y, b, N, activation, slope, drop_p, drop_scale, seed, *step, draw, first_row}; \
        gemm<BM, BN, TM, TN, SLICES>(X, K, 1, W, 1, K, M, N, K, nullptr, partials, tile_counters, epilogue);        \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) linear_backward_input_##TILE(                 \
        float* dX, const float* dY, const float* W, const float* Y_prev, int M, int N, int K, int activation,      \
        float slope, float drop_p, float drop_scale, unsigned long long seed, const unsigned long long* step,      \
        unsigned int draw, float* partials, unsigned int* tile_counters) {                                         \
        after_previous_kernels();                                                                                  \
        InputGradEpilogue epilogue = {dX, Y_prev, K, activation, slope, drop_p, drop_scale, seed, *step, draw};    \
        gemm<BM, BN, TM, TN, SLICES>(dY, N, 1, W, K, 1, M, K, N, nullptr, partials, tile_counters, epilogue);       \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) linear_backward_weight_##TILE(                \
        float* dW, float* db, const float* dY, const float* X, int M, int N, int K, float* partials,               \
        unsigned int* tile_counters) {                                                                             \
        after_previous_kernels();                                                                                  \
        StoreEpilogue epilogue = {dW, K};                                                                          \
        gemm<BM, BN, TM, TN, SLICES>(dY, 1, N, X, K, 1, N, K, M, db, partials, tile_counters, epilogue);            \
    }

// Tile shapes: from many small blocks for the products with few rows to wide register blocking for the
// large ones, and groups that share a tile's splits (more warps on a small output, no round trip through
// global memory). minigan.cupy_step.GEMM_TILES lists the same.
//
// MIN_BLOCKS (__launch_bounds__'s blocks per SM; 0: the compiler's choice) keeps the 32 x 32 tiles at 80
// registers a thread, 768 threads per SM: left to itself the compiler gives their forward kernels 163, so
// only 3 blocks of 128 threads fit where split_k plans 8 tiles' splits (4 blocks) per SM, and a 512-block
// product ran in two waves. 128x64_8x4 gets 128, two blocks per SM, room beside the other stream's kernels;
// 64x64_4x4 gets 64, four blocks per SM, as it had before the epilogues loaded every run's operands at once.
// None of them spills (tests/test_kernels.py).
LINEAR_KERNELS(32x32_4x4, 32, 32, 4, 4, 1, 64, 12)
LINEAR_KERNELS(64x64_4x4, 64, 64, 4, 4, 1, 256, 4)
LINEAR_KERNELS(64x64_8x8, 64, 64, 8, 8, 1, 64, 0)
LINEAR_KERNELS(128x64_8x4, 128, 64, 8, 4, 1, 256, 2)
LINEAR_KERNELS(128x128_8x8, 128, 128, 8, 8, 1, 256, 0)
LINEAR_KERNELS(32x32_4x4_s2, 32, 32, 4, 4, 2, 128, 6)
LINEAR_KERNELS(32x32_4x4_s4, 32, 32, 4, 4, 4, 256, 3)
LINEAR_KERNELS(32x64_4x8_s2, 32, 64, 4, 8, 2, 128, 0)
LINEAR_KERNELS(64x64_8x8_s2, 64, 64, 8, 8, 2, 128, 0)

// D's last Linear layer (one output) fused with the sigmoid + BCE head after it, PyTorch's semantics
// (minigan/losses.py): p = sigmoid(z), the loss's logs clamped at -100, its gradient
// (p - t) / max(p (1 - p), 1e-12) / n times sigmoid's p (1 - p). D step (g_step = 0): rows [0, n) are real
// (target 1), rows [n, 2n) fake (target 0), each half a mean over n. G step (g_step = 1): n rows, target 1.
#define HEAD_THREADS 256
#define HEAD_ROWS 8  // a block's rows: 32 threads each for the dot product (minigan.cupy_step.HEAD_ROWS)

__device__ __forceinline__ void bce_row(float z, bool real, float inv_n, float& p, float& log_term, float& dz) {
    p = 1.0f / (1.0f + expf(-z));
    log_term = real ? fmaxf(logf(p), -100.0f) : fmaxf(logf(1.0f - p), -100.0f);
    float grad = (p - (real ? 1.0f : 0.0f)) / fmaxf(p * (1.0f - p), 1e-12f);
    grad *= inv_n;
    dz = grad * (p * (1.0f - p));
}

// The critical path of the head, for the rows of H (rows, K), the output of D's previous layer:
//   z = H w^T + b (into Z), dz = d loss / d z, dH = (dz w) * act'(H) (linear_backward_input's epilogue:
//   the previous layer's activation and dropout draw);
// and in the D step, per block, sum over its rows of dz H (K floats) and of dz (1) into partials
// (blocks x (K + 1)), which head_reduce adds up to the layer's dW and db.
// Launch: ceil(rows / HEAD_ROWS) blocks of HEAD_THREADS threads.
extern "C" __global__ void __launch_bounds__(HEAD_THREADS) head_forward_backward(
    float* dH, float* Z, float* partials, const float* H, const float* w, const float* b, int rows, int n,
    int K, int g_step, int activation, float slope, float drop_p, float drop_scale, unsigned long long seed,
    const unsigned long long* step, unsigned int draw) {
    after_previous_kernels();
    __shared__ float lane_sums[HEAD_ROWS][32];
    __shared__ float dz_of[HEAD_ROWS];
    int t = threadIdx.x, row0 = blockIdx.x * HEAD_ROWS;
    float bias = b[0];  // loaded beside H, not after the sums (no load moves across a barrier)
    {  // row row0 + t / 32: its 32 threads take every 32nd product (coalesced), then the row's thread adds them
        int r = row0 + t / 32;
        float sum = 0.0f;
        for (int k = t % 32; r < rows && k < K; k += 32) sum += H[(long long)r * K + k] * w[k];
        lane_sums[t / 32][t % 32] = sum;
    }
    __syncthreads();
    if (t < HEAD_ROWS) {
        int r = row0 + t;
        float dz = 0.0f;
        if (r < rows) {
            float sum = 0.0f;
            for (int lane = 0; lane < 32; ++lane) sum += lane_sums[t][lane];
            float z = sum + bias, p, log_term;
            bce_row(z, g_step || r < n, 1.0f / n, p, log_term, dz);
            Z[r] = z;
        }
        dz_of[t] = dz;
    }
    __syncthreads();
    InputGradEpilogue epilogue = {dH, H, K, activation, slope, drop_p, drop_scale, seed, *step, draw};
    int runs = (K + 3) / 4;  // four neighbours of a row at a time, as the GEMMs' epilogues take them
    for (int at = t; at < HEAD_ROWS * runs; at += HEAD_THREADS) {
        int r = at / runs, k = 4 * (at % runs), count = min(4, K - k);
        float run[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) run[q] = q < count ? dz_of[r] * w[k + q] : 0.0f;
        if (row0 + r < rows) {
            InputGradEpilogue::Operands operands;
            epilogue.load(row0 + r, k, count, operands);
            epilogue(row0 + r, k, run, count, operands);
        }
    }
    if (g_step) return;  // the G step does not train D
    for (int k = t; k <= K; k += HEAD_THREADS) {  // k == K: the bias's sum, dz times 1
        float sum = 0.0f;
        for (int r = 0; r < HEAD_ROWS && row0 + r < rows; ++r)
            sum += dz_of[r] * (k < K ? H[(long long)(row0 + r) * K + k] : 1.0f);
        partials[(long long)blockIdx.x * (K + 1) + k] = sum;
    }
}

// The rest of the head, off the critical path: the losses and mean outputs from the logits Z into the
// step's stats [loss_D, loss_G, D(x), D(G(z))] (D step: BCE(real) + BCE(fake) into stats[0], added to it
// unless this is the step's first D update (first = 1), mean D(x) and D(G(z)) into stats[2], stats[3]; G step:
// BCE into stats[1]), and in the D step dW (K) and db (1) of the layer: head_forward_backward's partials
// added in block order. Launch: one block of HEAD_THREADS threads.
extern "C" __global__ void __launch_bounds__(HEAD_THREADS) head_reduce(float* stats, float* dW, float* db,
                                                                       const float* Z, const float* partials,
                                                                       int n, int K, int g_step, int first) {
    after_previous_kernels();
    __shared__ float loss_real[HEAD_THREADS], loss_fake[HEAD_THREADS], p_real[HEAD_THREADS], p_fake[HEAD_THREADS];
    int t = threadIdx.x, rows = g_step ? n : 2 * n;
    float inv_n = 1.0f / n, lr = 0.0f, lf = 0.0f, pr = 0.0f, pf = 0.0f;
    for (int r = t; r < rows; r += HEAD_THREADS) {
        bool real = g_step || r < n;
        float p, log_term, dz;
        bce_row(Z[r], real, inv_n, p, log_term, dz);
        if (real) {
            lr -= log_term;
            pr += p;
        } else {
            lf -= log_term;
            pf += p;
        }
    }
    loss_real[t] = lr;
    loss_fake[t] = lf;
    p_real[t] = pr;
    p_fake[t] = pf;
    __syncthreads();
    for (int half = HEAD_THREADS / 2; half > 0; half /= 2) {
        if (t < half) {
            loss_real[t] += loss_real[t + half];
            loss_fake[t] += loss_fake[t + half];
            p_real[t] += p_real[t + half];
            p_fake[t] += p_fake[t + half];
        }
        __syncthreads();
    }
    if (t == 0) {
        if (g_step) {
            stats[1] = loss_real[0] * inv_n;
        } else {
            stats[0] = (first ? 0.0f : stats[0]) + fmaf(loss_real[0], inv_n, loss_fake[0] * inv_n);  // as nvcc fuses it
            stats[2] = p_real[0] * inv_n;
            stats[3] = p_fake[0] * inv_n;
        }
    }
    if (g_step) return;
    int blocks = (rows + HEAD_ROWS - 1) / HEAD_ROWS;
    for (int k = t; k <= K; k += HEAD_THREADS) {
        float sum = 0.0f;
        for (int block = 0; block < blocks; ++block) sum += partials[(long long)block * (K + 1) + k];
        if (k < K) dW[k] = sum;
        else db[0] = sum;
    }
}
