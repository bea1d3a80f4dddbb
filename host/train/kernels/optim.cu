// galley-train's optimizer kernels: fused AdamW and SGD updates, the gradient norm's sum of
// squares (optim_cuda.rs). Compiled by NVRTC on a GPU, and by galley-cuda-emu in tests.
extern "C" __global__ void galley_adamw(float* p, const float* g, float* m, float* v,
        unsigned long long n, float decay, float step, float b1, float b2, float omb1,
        float omb2, float sbc2, float eps, float gscale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
            i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
        float gi = g[i] * gscale;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (sqrtf(vi) / sbc2 + eps);
    }
}
extern "C" __global__ void galley_sgd(float* p, const float* g, float* buf,
        unsigned long long n, float decay, float lr, float mu, float gscale, int momentum) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
            i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
        float gi = g[i] * gscale;
        if (momentum) {
            gi = mu * buf[i] + gi;
            buf[i] = gi;
        }
        p[i] = p[i] * decay - lr * gi;
    }
}
// Each block's sum of squares (in f64) into partial[blockIdx.x]: the host adds the blocks in
// order, so the norm does not depend on scheduling.
extern "C" __global__ void galley_sumsq(const float* g, unsigned long long n, double* partial) {
    __shared__ double sh[32];
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
            i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
        double x = (double)g[i];
        acc += x * x;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = acc;
    __syncthreads();
    if (w == 0) {
        acc = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) partial[blockIdx.x] = acc;
    }
}
