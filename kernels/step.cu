// Bookkeeping of the fused step, on the device so that a captured CUDA graph can be replayed unchanged:
// the step counter (which feeds the random streams), the batch index within the epoch, and the losses.

// The batch of this step: out[r, j] = images[perm[*batch_index * batch_size + r], j] / 255.
// Launch: rows * dim threads.
extern "C" __global__ void gather_step_batch(float* out, const unsigned char* images, const long long* perm,
                                             const unsigned long long* batch_index, int batch_size, int rows,
                                             int dim) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * dim) return;
    long long r = i / dim, j = i % dim;
    long long start = (long long)(*batch_index) * batch_size;
    out[i] = (float)images[perm[start + r] * dim + j] / 255.0f;
}

// Zero the step's 4 statistics [loss_D, loss_G, D(x), D(G(z))]. Launch: 1 block of 4 threads.
extern "C" __global__ void stats_reset(float* stats) {
    if (threadIdx.x < 4) stats[threadIdx.x] = 0.0f;
}

// End of step: step_stats[*batch_index] = stats, epoch_sums += stats * rows, then advance *batch_index and
// *step. Launch: 1 block of 4 threads.
extern "C" __global__ void step_finish(float* step_stats, double* epoch_sums, const float* stats,
                                       unsigned long long* batch_index, unsigned long long* step, int rows) {
    int k = threadIdx.x;
    if (k < 4) {
        step_stats[*batch_index * 4 + k] = stats[k];
        epoch_sums[k] += (double)stats[k] * rows;
    }
    __syncthreads();
    if (k == 0) {
        *batch_index += 1;
        *step += 1;
    }
}
