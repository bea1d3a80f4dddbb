// galley-model's fused decode-step kernels (see cuda_decode.rs for why each exists).
// Compiled after prelude.cuh by NVRTC on a GPU, and by galley-cuda-emu on the CPU in tests.
// v as the element type would hold it (f32: itself; bf16: rounded), as an op that stores
// its result before the next reads it.
__device__ __forceinline__ float ld_round(float v, const float*) { return v; }
__device__ __forceinline__ float ld_round(float v, const bf16_t*) {
    bf16_t b;
    st(&b, 0, v);
    return ld(&b, 0);
}
// Block (row, head) of the fused projection (row, 1, (H + 2 KV) D): a query head (h < H) is
// rotated into q (row, H, 1, D); a key head is rotated into the key cache (row, KV, cap, D)
// at *slot, its value copied into the value cache there. HF's RoPE layout: dimension i pairs
// with i + D/2.
template <typename T>
__device__ void rope_kv(const T* qkv, const T* cs, const T* sn, const unsigned int* slot,
                        T* q, T* kc, T* vc, int H, int KV, int D, int cap) {
    const int row = blockIdx.x, h = blockIdx.y, half = D / 2;
    const long long W = (long long)(H + 2 * KV) * D;
    const T* x = qkv + row * W + (long long)h * D;
    const long long s = slot[0];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c = ld(cs, (long long)row * half + i), n = ld(sn, (long long)row * half + i);
        float x1 = ld(x, i), x2 = ld(x, i + half);
        float o1 = x1 * c - x2 * n, o2 = x2 * c + x1 * n;
        if (h < H) {
            long long o = ((long long)row * H + h) * D;
            st(q, o + i, o1);
            st(q, o + i + half, o2);
        } else {
            int k = h - H;
            long long o = (((long long)row * KV + k) * cap + s) * D;
            st(kc, o + i, o1);
            st(kc, o + i + half, o2);
            const T* v = qkv + row * W + (long long)(H + KV) * D + (long long)k * D;
            st(vc, o + i, ld(v, i));
            st(vc, o + i + half, ld(v, i + half));
        }
    }
}
// Block (row, head): softmax(q k^T scale + mask) v over every slot of the cache, into
// out (row, 1, H D). Masked slots (-inf) are skipped. Dynamic shared memory: cap + D floats.
template <typename T>
__device__ void attend(const T* q, const T* kc, const T* vc, const T* mask, T* out,
                       int H, int KV, int D, int cap, float scale) {
    extern __shared__ float sm[];
    float* sc = sm;
    float* qs = sm + cap;
    const int row = blockIdx.x, h = blockIdx.y, kh = h / (H / KV);
    const float ninf = __int_as_float(0xff800000);
    for (int i = threadIdx.x; i < D; i += blockDim.x) qs[i] = ld(q, ((long long)row * H + h) * D + i);
    __syncthreads();
    const long long base = ((long long)row * KV + kh) * cap * D;
    float mx = ninf;
    for (int j = threadIdx.x; j < cap; j += blockDim.x) {
        float m = ld(mask, (long long)row * cap + j), a = ninf;
        if (m != ninf) {
            float acc = 0.0f;
            for (int d = 0; d < D; d++) acc += qs[d] * ld(kc, base + (long long)j * D + d);
            a = acc * scale + m;
        }
        sc[j] = a;
        mx = fmaxf(mx, a);
    }
    mx = block_red(mx, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cap; j += blockDim.x) {
        float e = sc[j] == ninf ? 0.0f : expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = block_red(sum, false);
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < cap; j++) acc += sc[j] * ld(vc, base + (long long)j * D + d);
        st(out, ((long long)row * H + h) * D + d, acc / sum);
    }
}
// Row r of x and d (rows, n): h = x + d into out's first half, rms_norm(h) * w into its second.
template <typename T>
__device__ void add_rms(const T* x, const T* d, const T* w, T* out, int n, float eps, int rows) {
    const long long r = blockIdx.x;
    T* hr = out + r * n;
    T* nr = out + ((long long)rows + r) * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        st(hr, i, ld(x, r * n + i) + ld(d, r * n + i));
        float h = ld(hr, i);
        ss += h * h;
    }
    ss = block_red(ss, false);
    const float inv = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) st(nr, i, ld(hr, i) * inv * ld(w, i));
}
// Row r of the fused gate/up product (rows, 2 I): silu(gate) * up, (rows, I).
template <typename T>
__device__ void silu_mul(const T* gu, T* out, int inter) {
    const long long r = blockIdx.x;
    for (int i = threadIdx.x; i < inter; i += blockDim.x) {
        float g = ld(gu, r * 2 * inter + i), u = ld(gu, r * 2 * inter + inter + i);
        float s = g / (1.0f + expf(-g));
        st(out, r * inter + i, ld_round(s, out) * u);
    }
}
#define BOTH(T, S) \
extern "C" __global__ void rope_kv_##S(const T* qkv, const T* cs, const T* sn, const unsigned int* slot, T* q, T* kc, T* vc, int H, int KV, int D, int cap) { rope_kv(qkv, cs, sn, slot, q, kc, vc, H, KV, D, cap); } \
extern "C" __global__ void attend_##S(const T* q, const T* kc, const T* vc, const T* mask, T* out, int H, int KV, int D, int cap, float scale) { attend(q, kc, vc, mask, out, H, KV, D, cap, scale); } \
extern "C" __global__ void add_rms_##S(const T* x, const T* d, const T* w, T* out, int n, float eps, int rows) { add_rms(x, d, w, out, n, eps, rows); } \
extern "C" __global__ void silu_mul_##S(const T* gu, T* out, int inter) { silu_mul(gu, out, inter); }
BOTH(float, f32)
BOTH(bf16_t, bf16)
