// galley-train's attention kernels: the causal softmax and its backward pass (ops_cuda.rs).
// Compiled after galley-model's prelude.cuh by NVRTC on a GPU, and by galley-cuda-emu in tests.
// Row r of (rows, t) is query position r % t: keys after it get probability 0.
template <typename T>
__device__ void fwd(const T* s, T* p, int t, float scale) {
    long long row = blockIdx.x;
    int pos = (int)(row % t);
    const T* x = s + row * t;
    T* y = p + row * t;
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, ld(x, j) * scale);
    m = block_red(m, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) sum += __expf(ld(x, j) * scale - m);
    float inv = 1.0f / block_red(sum, false);
    for (int j = threadIdx.x; j < t; j += blockDim.x)
        st(y, j, j <= pos ? __expf(ld(x, j) * scale - m) * inv : 0.0f);
}
// ds = scale * p * (dp - sum(p * dp)) over the row's visible keys.
template <typename T>
__device__ void bwd(const T* p, const T* dp, T* ds, int t, float scale) {
    long long row = blockIdx.x;
    int pos = (int)(row % t);
    long long o = row * t;
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) dot += ld(p, o + j) * ld(dp, o + j);
    dot = block_red(dot, false);
    for (int j = threadIdx.x; j < t; j += blockDim.x)
        st(ds, o + j, j <= pos ? scale * ld(p, o + j) * (ld(dp, o + j) - dot) : 0.0f);
}
extern "C" __global__ void causal_softmax_f32(const float* s, float* p, int t, float scale) { fwd(s, p, t, scale); }
extern "C" __global__ void causal_softmax_bf16(const bf16_t* s, bf16_t* p, int t, float scale) { fwd(s, p, t, scale); }
extern "C" __global__ void causal_softmax_bwd_f32(const float* p, const float* dp, float* ds, int t, float scale) { bwd(p, dp, ds, t, scale); }
extern "C" __global__ void causal_softmax_bwd_bf16(const bf16_t* p, const bf16_t* dp, bf16_t* ds, int t, float scale) { bwd(p, dp, ds, t, scale); }
