// The training batch, gathered on the GPU from the uint8 dataset uploaded once.
// out[r, j] = images[perm[start + r], j] / 255 for r < rows, j < dim: pixels to [0, 1] by a true
// division, as torchvision's ToTensor. Launch: rows * dim threads (one per output pixel).
#include "dependent_launch.cuh"

extern "C" __global__ void gather_batch(float* out, const unsigned char* images, const long long* perm,
                                        long long start, int rows, int dim) {
    after_previous_kernels();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * dim) return;
    long long r = i / dim, j = i % dim;
    out[i] = (float)images[perm[start + r] * dim + j] / 255.0f;
}
