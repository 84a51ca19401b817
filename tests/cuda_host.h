// Runs CUDA kernels on the CPU, for tests on machines without a GPU (tests/kernel_host.py builds it).
// One std::thread per CUDA thread of a block; blocks run one after another, in a scrambled order;
// __syncthreads is a std::barrier over the block's threads; __shared__ is function-static storage, safe
// because one block runs at a time.
// Only what minigan's kernels use is here: they avoid warp-synchronous code (no shuffles, no implicit warp
// sync), so this schedule is one of the many a GPU may choose, and a kernel that is correct under every
// schedule is correct under this one. Speed means nothing here.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3_ {
    unsigned int x, y, z;
};

inline thread_local uint3_ threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
using std::min;
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline long long clock64() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void sincospif(float x, float* s, float* c) {
    *s = (float)std::sin(M_PI * (double)x);
    *c = (float)std::cos(M_PI * (double)x);
}
template <class T>
inline T atomicAdd(T* address, T value) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    T old = *address;
    *address = old + value;
    return old;
}

template <class Body>
void launch(dim3 grid, dim3 block, Body body) {
    blockDim = block;
    gridDim = grid;
    unsigned int threads = block.x * block.y * block.z, blocks = grid.x * grid.y * grid.z;
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    std::vector<std::thread> pool;
    for (unsigned int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned int i = 0; i < blocks; ++i) {
                // blocks in a scrambled order (a GPU promises none): a split-K tile's last block to arrive
                // is then any of its splits, not always the last (a permutation: 1000003 is prime)
                unsigned int b = (unsigned int)(((unsigned long long)i * 1000003ull) % blocks);
                blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
                body();
                barrier.arrive_and_wait();  // the whole block is done before the next reuses __shared__
            }
        });
    }
    for (auto& thread : pool) thread.join();
}
