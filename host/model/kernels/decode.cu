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
// with i + D/2. slot (rows,): each row's own slot (a sliding layer's ring slot follows the
// row's own token count); a slot outside the cache writes nothing there. With `has_norm` (Qwen3, Gemma 3), each query and key head is RMS-normed by
// qn / kn first (rounded to T, as the unfused norm stores it); every thread sums the head's
// squares itself (D values), so the block needs no reduction and may be narrower than a warp.
template <typename T>
__device__ void rope_kv(const T* qkv, const T* cs, const T* sn, const unsigned int* slot,
                        T* q, T* kc, T* vc, int H, int KV, int D, int cap, const T* qn,
                        const T* kn, int has_norm, float eps) {
    const int row = blockIdx.x, h = blockIdx.y, half = D / 2;
    const long long W = (long long)(H + 2 * KV) * D;
    const T* x = qkv + row * W + (long long)h * D;
    const long long s = slot[row];
    const bool put = s < cap;
    const T* nw = has_norm ? (h < H ? qn : kn) : nullptr;
    float inv = 1.0f;
    if (nw) {
        float ss = 0.0f;
        for (int j = 0; j < D; j++) { const float v = ld(x, j); ss += v * v; }
        inv = rsqrtf(ss / (float)D + eps);
    }
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c = ld(cs, (long long)row * half + i), n = ld(sn, (long long)row * half + i);
        float x1 = ld(x, i), x2 = ld(x, i + half);
        if (nw) {
            x1 = ld_round(x1 * inv * ld(nw, i), x);
            x2 = ld_round(x2 * inv * ld(nw, i + half), x);
        }
        float o1 = x1 * c - x2 * n, o2 = x2 * c + x1 * n;
        if (h < H) {
            long long o = ((long long)row * H + h) * D;
            st(q, o + i, o1);
            st(q, o + i + half, o2);
        } else if (put) {
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
// Block (row, head): softmax(c(q k^T scale) + mask) v over every slot of the cache, into
// out (row, 1, H D), c(x) = softcap tanh(x / softcap) under Gemma 2's soft cap (softcap > 0),
// else x. Masked slots (-inf) are skipped. Dynamic shared memory: cap + D floats.
template <typename T>
__device__ void attend(const T* q, const T* kc, const T* vc, const T* mask, T* out,
                       int H, int KV, int D, int cap, float scale, float softcap) {
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
            a = acc * scale;
            if (softcap > 0.0f) a = softcap * tanhf(a / softcap);
            a += m;
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
// ---- The fused decode step for small batches (b <= DG_MAX_ROWS rows): each layer is
// qkv_step, attend, gemv (o), mlp_up_step, gemv (down). A "step" kernel takes the residual
// stream h and the previous sublayer's output d, and every block recomputes h + d and its RMS
// norm (b x n values, cheap) into shared memory, so the norm needs no kernel of its own;
// block (0, 0) writes h + d out as the new stream. Each warp then multiplies weight rows
// (read once for all b rows) by the normed rows. Values are rounded to T where the unfused
// step stores them (the stream, the norm, the projections), so both steps agree.
#define DG_MAX_ROWS 8
#define DG_WARPS 8

// a (b, n) in shared = rms_norm(h + d) * w per row; hout = h + d when `write`. With `dw`
// (Gemma's output norms) the sublayer's output d is itself normed first: h + rms_norm(d) dw.
template <typename T>
__device__ void dg_norm_rows(const T* h, const T* d, const T* dw, const T* w, T* hout, float* a,
                             int n, int b, float eps, bool write) {
    for (int r = 0; r < b; r++) {
        const long long o = (long long)r * n;
        float dinv = 1.0f;
        if (dw) {
            float sd = 0.0f;
            for (int i = threadIdx.x; i < n; i += blockDim.x) { float v = ld(d, o + i); sd += v * v; }
            dinv = rsqrtf(block_red(sd, false) / (float)n + eps);
        }
        float ss = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float dv = dw ? ld_round(ld(d, o + i) * dinv * ld(dw, i), h) : ld(d, o + i);
            float v = ld_round(ld(h, o + i) + dv, h);
            a[o + i] = v;
            ss += v * v;
            if (write) st(hout, o + i, v);
        }
        const float inv = rsqrtf(block_red(ss, false) / (float)n + eps);
        for (int i = threadIdx.x; i < n; i += blockDim.x) a[o + i] = ld_round(a[o + i] * inv * ld(w, i), h);
    }
    __syncthreads();
}

// Weight rows r1 and r2 (of n) times each of the b shared rows of a: the sums, complete in
// every lane.
template <typename T>
__device__ void dg_dot2(const T* W, long long r1, long long r2, const float* a, int n, int b,
                        float* x1, float* x2) {
    float s1[DG_MAX_ROWS], s2[DG_MAX_ROWS];
    for (int r = 0; r < DG_MAX_ROWS; r++) { s1[r] = 0.0f; s2[r] = 0.0f; }
    for (int k = threadIdx.x & 31; k < n; k += 32) {
        const float w1 = ld(W, r1 * n + k), w2 = ld(W, r2 * n + k);
        for (int r = 0; r < DG_MAX_ROWS; r++) {
            if (r < b) {
                s1[r] += w1 * a[(long long)r * n + k];
                s2[r] += w2 * a[(long long)r * n + k];
            }
        }
    }
    for (int r = 0; r < DG_MAX_ROWS; r++) {
        if (r < b) {
            x1[r] = warp_red(s1[r], false);
            x2[r] = warp_red(s2[r], false);
        }
    }
}

// grid (H + 2 KV, ceil(D/2 / 8)), 256 threads; dynamic shared b n floats. Warp w of block
// (head, y) takes dimension pair (i, i + D/2), i = 8 y + w, of the fused q|k|v projection
// W ((H + 2 KV) D, n; bias optional, `has_bias`): queries rotated into q (b, H, 1, D), keys
// rotated and values copied into the caches (b, KV, cap, D) at each row's slot[r] (none
// outside the cache). out: the new stream.
// `has_dw`: d normed by dw first (dg_norm_rows). `raw` (heads that are normed before their
// rotation, Gemma 3's): the projection as it is into q (b, 1, (H + 2 KV) D), for rope_kv.
template <typename T>
__device__ void qkv_step(const T* h, const T* d, const T* dw, int has_dw, const T* nw, T* hout,
                         const T* W, const T* bias, int has_bias, const T* cs, const T* sn,
                         const unsigned int* slot, T* q, T* kc, T* vc, int n, int b, float eps,
                         int H, int KV, int D, int cap, int raw) {
    extern __shared__ float dsm[];
    dg_norm_rows(h, d, has_dw ? dw : (const T*)nullptr, nw, hout, dsm, n, b, eps,
                 blockIdx.x == 0 && blockIdx.y == 0);
    const int half = D / 2, head = blockIdx.x, i = blockIdx.y * DG_WARPS + (threadIdx.x >> 5);
    if (i >= half) return;
    const long long r1 = (long long)head * D + i, r2 = r1 + half;
    float x1[DG_MAX_ROWS], x2[DG_MAX_ROWS];
    dg_dot2(W, r1, r2, dsm, n, b, x1, x2);
    if ((threadIdx.x & 31) != 0) return;
    for (int r = 0; r < b && r < DG_MAX_ROWS; r++) {
        const long long s = slot[r];
        float a1 = x1[r], a2 = x2[r];
        if (has_bias) { a1 = ld_round(a1, W) + ld(bias, r1); a2 = ld_round(a2, W) + ld(bias, r2); }
        a1 = ld_round(a1, W);
        a2 = ld_round(a2, W);
        if (raw) {
            const long long o = ((long long)r * (H + 2 * KV) + head) * D;
            st(q, o + i, a1);
            st(q, o + i + half, a2);
            continue;
        }
        if (head >= H && s >= cap) continue;
        if (head >= H + KV) {
            const long long o = (((long long)r * KV + (head - H - KV)) * cap + s) * D;
            st(vc, o + i, a1);
            st(vc, o + i + half, a2);
            continue;
        }
        const float c = ld(cs, (long long)r * half + i), sn_ = ld(sn, (long long)r * half + i);
        const float o1 = a1 * c - a2 * sn_, o2 = a2 * c + a1 * sn_;
        if (head < H) {
            const long long o = ((long long)r * H + head) * D;
            st(q, o + i, o1);
            st(q, o + i + half, o2);
        } else {
            const long long o = (((long long)r * KV + (head - H)) * cap + s) * D;
            st(kc, o + i, o1);
            st(kc, o + i + half, o2);
        }
    }
}

// grid (ceil(I / 8)), 256 threads; dynamic shared b n floats. Warp w takes i = 8 x + w: rows
// i (gate) and I + i (up) of the fused W (2 I, n) against the normed h + d; act (b, I) =
// silu(gate) * up, or GELU's tanh form with `gelu` (Gemma). `has_dw`: d normed by dw first.
// out: the new stream.
template <typename T>
__device__ void mlp_up_step(const T* h, const T* d, const T* dw, int has_dw, const T* nw,
                            T* hout, const T* W, T* act, int n, int b, float eps, int I,
                            int gelu) {
    extern __shared__ float dsm[];
    dg_norm_rows(h, d, has_dw ? dw : (const T*)nullptr, nw, hout, dsm, n, b, eps,
                 blockIdx.x == 0);
    const int i = blockIdx.x * DG_WARPS + (threadIdx.x >> 5);
    if (i >= I) return;
    float g[DG_MAX_ROWS], u[DG_MAX_ROWS];
    dg_dot2(W, i, (long long)I + i, dsm, n, b, g, u);
    if ((threadIdx.x & 31) != 0) return;
    for (int r = 0; r < b && r < DG_MAX_ROWS; r++) {
        const float gv = ld_round(g[r], W), uv = ld_round(u[r], W);
        const float a = gelu
            ? 0.5f * gv * (1.0f + tanhf(0.7978845608028654f * (gv + 0.044715f * gv * gv * gv)))
            : gv / (1.0f + expf(-gv));
        st(act, (long long)r * I + i, ld_round(a, W) * uv);
    }
}

// grid (ceil(out / 8)), 256 threads: y (b, out) = x (b, n) W^T (+ bias), a warp per row of W.
template <typename T>
__device__ void gemv_rows(const T* x, const T* W, const T* bias, int has_bias, T* y, int n,
                          int out, int b) {
    const int row = blockIdx.x * DG_WARPS + (threadIdx.x >> 5);
    if (row >= out) return;
    float s[DG_MAX_ROWS];
    for (int r = 0; r < DG_MAX_ROWS; r++) s[r] = 0.0f;
    for (int k = threadIdx.x & 31; k < n; k += 32) {
        const float w = ld(W, (long long)row * n + k);
        for (int r = 0; r < DG_MAX_ROWS; r++) if (r < b) s[r] += w * ld(x, (long long)r * n + k);
    }
    for (int r = 0; r < DG_MAX_ROWS; r++) {
        if (r >= b) break;
        float v = warp_red(s[r], false);
        if (has_bias) v = ld_round(v, W) + ld(bias, row);
        if ((threadIdx.x & 31) == 0) st(y, (long long)r * out + row, v);
    }
}

#define BOTH(T, S) \
extern "C" __global__ void rope_kv_##S(const T* qkv, const T* cs, const T* sn, const unsigned int* slot, T* q, T* kc, T* vc, int H, int KV, int D, int cap, const T* qn, const T* kn, int has_norm, float eps) { rope_kv(qkv, cs, sn, slot, q, kc, vc, H, KV, D, cap, qn, kn, has_norm, eps); } \
extern "C" __global__ void attend_##S(const T* q, const T* kc, const T* vc, const T* mask, T* out, int H, int KV, int D, int cap, float scale, float softcap) { attend(q, kc, vc, mask, out, H, KV, D, cap, scale, softcap); } \
extern "C" __global__ void add_rms_##S(const T* x, const T* d, const T* w, T* out, int n, float eps, int rows) { add_rms(x, d, w, out, n, eps, rows); } \
extern "C" __global__ void silu_mul_##S(const T* gu, T* out, int inter) { silu_mul(gu, out, inter); } \
extern "C" __global__ void qkv_step_##S(const T* h, const T* d, const T* dw, int has_dw, const T* nw, T* hout, const T* W, const T* bias, int has_bias, const T* cs, const T* sn, const unsigned int* slot, T* q, T* kc, T* vc, int n, int b, float eps, int H, int KV, int D, int cap, int raw) { qkv_step(h, d, dw, has_dw, nw, hout, W, bias, has_bias, cs, sn, slot, q, kc, vc, n, b, eps, H, KV, D, cap, raw); } \
extern "C" __global__ void mlp_up_step_##S(const T* h, const T* d, const T* dw, int has_dw, const T* nw, T* hout, const T* W, T* act, int n, int b, float eps, int I, int gelu) { mlp_up_step(h, d, dw, has_dw, nw, hout, W, act, n, b, eps, I, gelu); } \
extern "C" __global__ void gemv_rows_##S(const T* x, const T* W, const T* bias, int has_bias, T* y, int n, int out, int b) { gemv_rows(x, W, bias, has_bias, y, n, out, b); }
BOTH(float, f32)
BOTH(bf16_t, bf16)
