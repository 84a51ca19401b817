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
