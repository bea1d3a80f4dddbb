// The CUDA source every module of galley's kernels starts with (see galley_model::cuda_src).
typedef unsigned short bf16_t;
__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = 0x7fc0; return; }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    p[i] = (bf16_t)(u >> 16);
}
__device__ __forceinline__ float warp_red(float v, bool mx) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = mx ? fmaxf(v, w) : v + w;
    }
    return v;
}
// Every thread of the block gets the block's max (mx) or sum.
__device__ float block_red(float v, bool mx) {
    __shared__ float sh[32];
    const float id = mx ? __int_as_float(0xff800000) : 0.0f;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_red(v, mx);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : id;
    if (w == 0) v = warp_red(v, mx);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    return sh[0];
}
