// Runs CUDA kernels on the CPU, for tests on machines without a GPU (tests/kernel_host.py builds it).
// One fiber (a ucontext with a stack of its own) per CUDA thread of a block, all on one OS thread; the blocks
// are shared out among an OS thread per usable core, each taking the next in a scrambled order. The threads of a
// block run in turn (in an order scrambled anew at every barrier), each until it reaches __syncthreads or its
// end, and none passes a __syncthreads before all have reached it. __shared__ is function-static storage of the
// OS thread (thread_local). (With an OS thread per CUDA thread, until 2026-11-28, most of the tests' time went to
// waking 64-256 threads on 2 cores at every barrier; with the blocks one after another on one OS thread, until
// 2026-11-29, the tests' emulated kernels used one core of CI's two.)
// A launch in clusters of blocks along z (launch's `cluster`) runs each cluster's blocks at once, each block
// on an OS thread of its own, so each has its shared memory: cluster_sync() waits for every thread of the
// cluster, and cluster_peer() reads a peer block's shared memory, at the same offset in that OS thread's
// thread-local storage.
// Only what minigan's kernels use is here: they avoid warp-synchronous code (no shuffles, no implicit warp
// sync), so this schedule is one of the many a GPU may choose, and a kernel that is correct under every
// schedule is correct under this one. Speed means nothing here.
#pragma once
#include <sched.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3_ {
    unsigned int x, y, z;
};

inline thread_local uint3_ threadIdx, blockIdx;  // the running fiber's: set before it resumes
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
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

namespace cuda_host {
enum Wait { RUNS, AT_SYNCTHREADS, AT_CLUSTER_SYNC };
struct Fiber {
    ucontext_t context;
    bool done;
    Wait wait;
};
inline thread_local ucontext_t scheduler;  // the block's: where a fiber goes at a barrier and at its end
inline thread_local Fiber* running = nullptr;
inline void (*body_of_block)(void*) = nullptr;
inline void* body_argument = nullptr;
// The launch's clusters: blocks per cluster, their OS threads' barrier, and each block's thread-local storage
// (the address of tls_anchor in its OS thread), by its rank in the cluster
inline unsigned int cluster_size = 1;
inline std::barrier<>* cluster_barrier = nullptr;
inline thread_local char tls_anchor;
inline std::vector<char*> tls_of_rank;

inline void fiber_main() {
    body_of_block(body_argument);
    running->done = true;  // (uc_link: back to the scheduler)
}
template <class Body>
void call(void* body) {
    (*static_cast<Body*>(body))();
}
}  // namespace cuda_host

inline void __syncthreads() {
    cuda_host::running->wait = cuda_host::AT_SYNCTHREADS;
    swapcontext(&cuda_host::running->context, &cuda_host::scheduler);
}
inline unsigned int cluster_blocks() { return cuda_host::cluster_size; }
inline void cluster_sync() {
    cuda_host::running->wait = cuda_host::AT_CLUSTER_SYNC;
    swapcontext(&cuda_host::running->context, &cuda_host::scheduler);
}
inline const float* cluster_peer(const float* p, unsigned int rank) {
    const char* at = reinterpret_cast<const char*>(p);
    return reinterpret_cast<const float*>(cuda_host::tls_of_rank[rank] + (at - &cuda_host::tls_anchor));
}
inline void sincospif(float x, float* s, float* c) {
    *s = (float)std::sin(M_PI * (double)x);
    *c = (float)std::cos(M_PI * (double)x);
}
template <class T>
inline T atomicAdd(T* address, T value) {  // (the blocks of a cluster run at once)
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

namespace cuda_host {
// The fibers' stacks: STACK bytes each, below an inaccessible page, so that a kernel that overflows its stack
// stops with a segmentation fault instead of writing over another fiber's. Kept from launch to launch.
constexpr size_t STACK = 1 << 16, GUARD = 1 << 12;
constexpr char UNTOUCHED = (char)0xa5;  // what a stack holds where no fiber has written yet
inline std::vector<char*> stacks;
inline char* fiber_stack_if_any(unsigned int t) { return t < stacks.size() ? stacks[t] : nullptr; }
inline char* fiber_stack(unsigned int t) {
    while (stacks.size() <= t) {
        void* area = mmap(nullptr, GUARD + STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (area == MAP_FAILED || mprotect(area, GUARD, PROT_NONE) != 0) {
            std::perror("cuda_host.h: a fiber's stack");
            std::abort();
        }
        stacks.push_back(static_cast<char*>(area) + GUARD);
        std::fill_n(stacks.back(), STACK, UNTOUCHED);
    }
    return stacks[t];
}
}  // namespace cuda_host

// The most bytes of stack any fiber has used so far (for the tests: the room left below STACK).
extern "C" unsigned long cuda_host_deepest_stack() {
    unsigned long deepest = 0;
    for (unsigned int t = 0;; ++t) {
        char* stack = cuda_host::fiber_stack_if_any(t);
        if (stack == nullptr) return deepest;
        unsigned long untouched = std::find_if(stack, stack + cuda_host::STACK, [](char c) {
            return c != cuda_host::UNTOUCHED; }) - stack;
        deepest = std::max(deepest, (unsigned long)(cuda_host::STACK - untouched));
    }
}

namespace cuda_host {
// Block b of the grid on this OS thread, its threads' fibers on the stacks from first_stack on: a round runs each
// thread to its next barrier, in an order that changes from round to round and block to block (a permutation:
// 1031 is a prime above the most threads a block has). When every thread waits at __syncthreads, the next round
// begins; when every one waits at cluster_sync, after the cluster's other blocks' threads all do too.
inline void run_block(unsigned int b, unsigned int first_stack) {
    dim3 grid = gridDim, block = blockDim;
    unsigned int threads = block.x * block.y * block.z;
    std::vector<Fiber> fibers(threads);
    blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& fiber = fibers[t];
        fiber.done = false;
        fiber.wait = RUNS;
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = stacks[first_stack + t];
        fiber.context.uc_stack.ss_size = STACK;
        fiber.context.uc_link = &scheduler;
        makecontext(&fiber.context, fiber_main, 0);
    }
    for (unsigned int round = 0, finished = 0; finished < threads; ++round) {
        finished = 0;
        unsigned int at_cluster_sync = 0;
        for (unsigned int k = 0; k < threads; ++k) {
            unsigned int t = (unsigned int)(((unsigned long long)k * 1031u + round * 7u + b) % threads);
            running = &fibers[t];
            running->wait = RUNS;
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            swapcontext(&scheduler, &running->context);
            finished += running->done;
            at_cluster_sync += !running->done && running->wait == AT_CLUSTER_SYNC;
        }
        if (finished != 0 && finished != threads) {  // on a GPU: undefined (here it would never end)
            std::fprintf(stderr, "cuda_host.h: %u of %u threads of a block ended while the others wait at a "
                         "barrier\n", finished, threads);
            std::abort();
        }
        if (at_cluster_sync != 0 && at_cluster_sync != threads) {
            std::fprintf(stderr, "cuda_host.h: %u of %u threads of a block wait at cluster_sync, the others at "
                         "__syncthreads\n", at_cluster_sync, threads);
            std::abort();
        }
        if (at_cluster_sync != 0) {
            if (cluster_size == 1) {
                std::fprintf(stderr, "cuda_host.h: cluster_sync in a launch without clusters\n");
                std::abort();
            }
            cluster_barrier->arrive_and_wait();
        }
    }
    if (cluster_size > 1) cluster_barrier->arrive_and_drop();  // a block that ends holds no peer back
}
}  // namespace cuda_host

namespace cuda_host {
// The cores this process may run on: its CPU affinity (taskset, a container's cpuset), which
// hardware_concurrency() ignores (it counts the machine's cores: 64 OS threads, and 64 sets of fiber stacks, for
// a CI runner given 2 of a 64-core host's).
inline unsigned int usable_cores() {
    cpu_set_t cores;
    if (sched_getaffinity(0, sizeof cores, &cores) == 0) return std::max(1, CPU_COUNT(&cores));
    return std::max(1u, std::thread::hardware_concurrency());
}
}  // namespace cuda_host

// Runs body() as every thread of a grid (x, y, z) of blocks, in clusters of `cluster` blocks along z (1: none).
template <class Body>
void launch(dim3 grid, dim3 block, unsigned int cluster, Body body) {
    using namespace cuda_host;
    if (cluster == 0 || grid.z % cluster != 0) {
        std::fprintf(stderr, "cuda_host.h: clusters of %u blocks along z do not divide the grid's %u\n", cluster,
                     grid.z);
        std::abort();
    }
    blockDim = block;
    gridDim = grid;
    unsigned int threads = block.x * block.y * block.z, blocks = grid.x * grid.y * grid.z;
    body_of_block = call<Body>;
    body_argument = &body;
    for (unsigned int t = 0; t < cluster * threads; ++t) fiber_stack(t);  // before any OS thread takes one
    cluster_size = cluster;
    // blocks (or clusters) in a scrambled order (a GPU promises none): a split-K tile's last block to arrive
    // is then any of its splits, not always the last (a permutation of 0 .. n - 1: 1000003 is prime)
    auto scrambled = [](unsigned int i, unsigned int n) {
        return (unsigned int)(((unsigned long long)i * 1000003ull) % n);
    };
    if (cluster == 1) {  // the blocks shared out among the CPU's cores, each taking the next one not yet taken
        unsigned int workers = std::min(blocks, usable_cores());
        for (unsigned int t = 0; t < workers * threads; ++t) fiber_stack(t);
        std::atomic<unsigned int> next{0};
        auto work = [&](unsigned int worker) {
            for (unsigned int i; (i = next.fetch_add(1)) < blocks;) run_block(scrambled(i, blocks), worker * threads);
        };
        std::vector<std::thread> others;
        for (unsigned int worker = 1; worker < workers; ++worker) others.emplace_back(work, worker);
        work(0);
        for (auto& other : others) other.join();
        return;
    }
    unsigned int clusters = blocks / cluster, per_z = grid.x * grid.y;
    tls_of_rank.assign(cluster, nullptr);
    for (unsigned int i = 0; i < clusters; ++i) {
        unsigned int c = scrambled(i, clusters);
        unsigned int xy = c % per_z, z0 = (c / per_z) * cluster;
        std::barrier<> barrier((std::ptrdiff_t)cluster);
        cluster_barrier = &barrier;
        std::barrier<> started((std::ptrdiff_t)cluster);  // every block's tls_of_rank is known before any runs
        std::vector<std::thread> workers;
        for (unsigned int rank = 0; rank < cluster; ++rank)
            workers.emplace_back([&, rank] {
                tls_of_rank[rank] = &tls_anchor;
                started.arrive_and_wait();
                run_block(xy + (z0 + rank) * per_z, rank * threads);
            });
        for (auto& worker : workers) worker.join();
        cluster_barrier = nullptr;
    }
    cluster_size = 1;
}
