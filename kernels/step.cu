// Bookkeeping of the fused step, on the device so that a captured CUDA graph can be replayed unchanged.
#include "dependent_launch.cuh"

// End of step: advance the step counter that feeds the random streams and the optimizers' step counts
// (G's by one, D's by its k updates). Launch: 1 thread.
extern "C" __global__ void step_finish(unsigned long long* step, long long* t_G, long long* t_D, int k) {
    after_previous_kernels();
    *step += 1;
    *t_G += 1;
    *t_D += k;
}

// A barrier of every block of the grid, whose blocks must all be resident at once (a cooperative launch):
// `arrived` counts the blocks' arrivals over all such barriers, from 0, so each waits until it reaches the next
// multiple of the grid's size. As cooperative groups' grid sync: the block's writes before it are seen by every
// block's reads after it (read those through L2, __ldcg: an SM's L1 may hold an older copy).
__device__ __forceinline__ void grid_barrier(unsigned int* arrived) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int blocks = gridDim.x * gridDim.y * gridDim.z;
        __threadfence();
        unsigned int ticket = atomicAdd(arrived, 1u), target = ticket - ticket % blocks + blocks;
        while ((int)(*reinterpret_cast<volatile unsigned int*>(arrived) - target) < 0) {  // (not cached in L1)
        }
        __threadfence();
    }
    __syncthreads();
}

// examples/bench_grid_sync.py's kernel, for what a grid barrier costs against a kernel boundary: pieces
// first_piece .. first_piece + pieces - 1, a grid barrier between each two, each `work` dependent FMAs a thread and
// then, for a check of the order, count[(p + 1) % 2][i] = count[p % 2][the same thread of the next block] + 1
// (count: 2 x the grid's threads). A chain of launches of one piece each, or one cooperative launch of all of them,
// leaves the counts as the order of the pieces says. Launch: any grid (its blocks in x, then y, then z order), a
// 1-D block.
extern "C" __global__ void grid_sync_probe(unsigned int* count, float* sink, unsigned int* arrived, int first_piece,
                                           int pieces, int work) {
    after_previous_kernels();
    unsigned int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned int threads = gridDim.x * gridDim.y * gridDim.z * blockDim.x, i = block * blockDim.x + threadIdx.x;
    float v = (float)i;
    for (int p = first_piece; p < first_piece + pieces; ++p) {
        if (p > first_piece) grid_barrier(arrived);
        for (int w = 0; w < work; ++w) v = fmaf(v, 0.999f, 1.0f);
        unsigned int next = (i + blockDim.x) % threads;
        count[(p + 1) % 2 * threads + i] = __ldcg(&count[p % 2 * threads + next]) + 1u;
    }
    if (v == -1.0f) sink[i] = v;  // (never: keeps the work)
}

// Keep the stream busy for `cycles` clock cycles. The GEMM tuner (minigan/cupy_step.py) queues its timed
// launches behind this, so that its events time the GPU's work rather than the host's launch rate.
// Launch: 1 thread.
extern "C" __global__ void hold(long long cycles) {
    after_previous_kernels();
    long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

// examples/bench_launch.py's kernel, for the cost of a kernel boundary alone: one thread adds one to *counter.
// Launch: any grid; launches in a chain each add after the one before (the count checks the order held).
extern "C" __global__ void count_launch(unsigned int* counter) {
    after_previous_kernels();
    if (blockIdx.x == 0 && threadIdx.x == 0) *counter += 1;
}
