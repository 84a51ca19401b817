// Programmatic dependent launch (Hopper and later): the gaps between the step's kernels.
//
// A kernel normally starts once the kernel before it has finished and drained, and its blocks are then
// scheduled: 0.8 to 1.7 us on every edge of the step's graph on an H200 (examples/bench_launch.py, with 1 and
// 1024 blocks; 0.5 to 1.7 us this way). minigan/cupy_backend.py launches the
// fused step's kernels with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION instead, which lets a
// kernel's blocks be scheduled while the kernels it depends on still run. Every kernel therefore begins
// with after_previous_kernels(), before it touches memory:
//   griddepcontrol.wait              until every kernel it depends on has completed, its writes visible;
//   griddepcontrol.launch_dependents the kernels that depend on this one may now be scheduled.
// In that order, so that a kernel sitting resident in its wait waits only on kernels whose blocks have all
// started (they passed the same wait): it cannot hold the SM room those kernels need, and the side stream's
// kernels are never queued behind more than one waiting kernel per stream.
// Launched without the attribute (plain CuPy, an older GPU, the CPU build of tests/cuda_host.h) both are
// no-ops. tests/test_kernels.py checks that every kernel begins with it.
#pragma once

__device__ __forceinline__ void after_previous_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
