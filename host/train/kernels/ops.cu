// galley-train's attention kernels: the causal softmax and its backward pass (ops_cuda.rs).
// Compiled after galley-model's prelude.cuh by NVRTC on a GPU, and by galley-cuda-emu in tests.
// Row r of (rows, t) is query position r % t: keys after it get probability 0, and under a
// sliding window (window > 0, Gemma's local layers) so do keys window or more before it.
// Under a soft cap (cap > 0, Gemma 2) a score x becomes cap tanh(scale x / cap) before the
// softmax; otherwise scale x.
__device__ __forceinline__ int sm_first(int pos, int window) {
    return window > 0 ? max(0, pos - window + 1) : 0;
}
__device__ __forceinline__ float sm_score(float x, float scale, float cap) {
    return cap > 0.0f ? cap * tanhf(x * scale / cap) : x * scale;
}
template <typename T>
__device__ void fwd(const T* s, T* p, int t, float scale, int window, float cap) {
    long long row = blockIdx.x;
    int pos = (int)(row % t), lo = sm_first(pos, window);
    const T* x = s + row * t;
    T* y = p + row * t;
    float m = __int_as_float(0xff800000);
    for (int j = lo + threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, sm_score(ld(x, j), scale, cap));
    m = block_red(m, true);
    float sum = 0.0f;
    for (int j = lo + threadIdx.x; j <= pos; j += blockDim.x) sum += __expf(sm_score(ld(x, j), scale, cap) - m);
    float inv = 1.0f / block_red(sum, false);
    for (int j = threadIdx.x; j < t; j += blockDim.x)
        st(y, j, j >= lo && j <= pos ? __expf(sm_score(ld(x, j), scale, cap) - m) * inv : 0.0f);
}
// dz = p * (dp - sum(p * dp)) over the row's visible keys, and ds = dz scale, times the cap's
// slope 1 - tanh^2 (read from the scores s) under a cap.
template <typename T>
__device__ void bwd(const T* s, const T* p, const T* dp, T* ds, int t, float scale, int window,
                    float cap) {
    long long row = blockIdx.x;
    int pos = (int)(row % t), lo = sm_first(pos, window);
    long long o = row * t;
    float dot = 0.0f;
    for (int j = lo + threadIdx.x; j <= pos; j += blockDim.x) dot += ld(p, o + j) * ld(dp, o + j);
    dot = block_red(dot, false);
    for (int j = threadIdx.x; j < t; j += blockDim.x) {
        float g = 0.0f;
        if (j >= lo && j <= pos) {
            g = scale * ld(p, o + j) * (ld(dp, o + j) - dot);
            if (cap > 0.0f) {
                const float th = tanhf(ld(s, o + j) * scale / cap);
                g *= 1.0f - th * th;
            }
        }
        st(ds, o + j, g);
    }
}
extern "C" __global__ void causal_softmax_f32(const float* s, float* p, int t, float scale, int window, float cap) { fwd(s, p, t, scale, window, cap); }
extern "C" __global__ void causal_softmax_bf16(const bf16_t* s, bf16_t* p, int t, float scale, int window, float cap) { fwd(s, p, t, scale, window, cap); }
extern "C" __global__ void causal_softmax_bwd_f32(const float* s, const float* p, const float* dp, float* ds, int t, float scale, int window, float cap) { bwd(s, p, dp, ds, t, scale, window, cap); }
extern "C" __global__ void causal_softmax_bwd_bf16(const bf16_t* s, const bf16_t* p, const bf16_t* dp, bf16_t* ds, int t, float scale, int window, float cap) { bwd(s, p, dp, ds, t, scale, window, cap); }

// ---- RMS norm over rows of n: y = x rsqrt(mean(x^2) + eps) w, stored in y's type (the
// forward pass casts the norm's output down to the products' type in the same write).
template <typename X, typename Y>
__device__ void rms_fwd(const X* x, const float* w, Y* y, int n, float eps) {
    const long long r = blockIdx.x;
    const X* xr = x + r * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) { float v = ld(xr, i); ss += v * v; }
    const float rs = rsqrtf(block_red(ss, false) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) st(y + r * n, i, ld(xr, i) * rs * w[i]);
}
// Block b takes rows b, b + gridDim.x, ...: dx = rs g w - rs^3 (g.w.x / n) x per row, and its
// share of dw (sum of g x rs over its rows) into part[b] (n floats); rms_dw adds the shares in
// block order, so dw does not depend on scheduling.
template <typename X, typename G>
__device__ void rms_bwd(const X* x, const float* w, const G* g, X* dx, float* part, int n,
                        float eps, long long rows) {
    float* pr = part + (long long)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) pr[i] = 0.0f;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const X* xr = x + r * n;
        const G* gr = g + r * n;
        float ss = 0.0f, dot = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float xv = ld(xr, i);
            ss += xv * xv;
            dot += ld(gr, i) * w[i] * xv;
        }
        const float rs = rsqrtf(block_red(ss, false) / (float)n + eps);
        dot = block_red(dot, false);
        const float k = rs * rs * rs * dot / (float)n;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float xv = ld(xr, i), gv = ld(gr, i);
            st(dx + r * n, i, rs * gv * w[i] - k * xv);
            pr[i] += gv * xv * rs;
        }
    }
}
extern "C" __global__ void rms_dw(const float* part, float* dw, int n, int parts) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        float s = 0.0f;
        for (int b = 0; b < parts; b++) s += part[(long long)b * n + i];
        dw[i] = s;
    }
}
#define RMS(X, Y, SX, SY) \
extern "C" __global__ void rms_fwd_##SX##_##SY(const X* x, const float* w, Y* y, int n, float eps) { rms_fwd(x, w, y, n, eps); } \
extern "C" __global__ void rms_bwd_##SX##_##SY(const X* x, const float* w, const Y* g, X* dx, float* part, int n, float eps, long long rows) { rms_bwd(x, w, g, dx, part, n, eps, rows); }
RMS(float, float, f32, f32)
RMS(float, bf16_t, f32, bf16)
RMS(bf16_t, bf16_t, bf16, bf16)

// ---- The MLP's gates: y = act(g) u elementwise, and its backward (du = dy act(g),
// dg = dy u act'(g)). SiLU: act = g s with s = sigmoid(g), act' = s (1 + g (1 - s)).
// GELU, tanh form (Gemma's gelu_pytorch_tanh): act = g (1 + th) / 2 with
// th = tanh(k (g + 0.044715 g^3)), k = sqrt(2 / pi);
// act' = (1 + th) / 2 + g (1 - th^2) k (1 + 3 0.044715 g^2) / 2.
struct Silu {
    __device__ static float f(float g) { return g / (1.0f + __expf(-g)); }
    __device__ static float df(float g) {
        const float s = 1.0f / (1.0f + __expf(-g));
        return s * (1.0f + g * (1.0f - s));
    }
};
struct GeluTanh {
    __device__ static float th(float g) {
        return tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g));
    }
    __device__ static float f(float g) { return 0.5f * g * (1.0f + th(g)); }
    __device__ static float df(float g) {
        const float t = th(g);
        return 0.5f * (1.0f + t) +
               0.5f * g * (1.0f - t * t) * 0.7978845608028654f * (1.0f + 0.134145f * g * g);
    }
};
template <typename A, typename T>
__device__ void gate(const T* g, const T* u, T* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x)
        st(y, i, A::f(ld(g, i)) * ld(u, i));
}
template <typename A, typename T>
__device__ void gate_bwd(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        float gv = ld(g, i), d = ld(dy, i);
        st(du, i, d * A::f(gv));
        st(dg, i, d * ld(u, i) * A::df(gv));
    }
}

// ---- Rotary embedding fused with the head transpose (HF layout: dimension i pairs with
// i + d/2). to_heads: x (B, t, h, d) -> y (B, h, t, d) rotated by +angle (the forward pass);
// else dy (B, h, t, d) -> dx (B, t, h, d) rotated by -angle (its backward). cs, sn:
// (positions, d/2) f32 tables.
template <typename T>
__device__ void rope_heads(const T* x, const float* cs, const float* sn, T* y, int B, int t,
                           int h, int d, int to_heads) {
    const int half = d / 2;
    const float sign = to_heads ? 1.0f : -1.0f;
    const long long total = (long long)B * t * h * half;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < total;
         k += (long long)blockDim.x * gridDim.x) {
        const int i = (int)(k % half);
        const long long row = k / half;
        long long tt, src;
        if (to_heads) {
            tt = row % t;
            long long hh = (row / t) % h, bb = row / ((long long)t * h);
            src = (bb * t + tt) * h + hh;
        } else {
            long long hh = row % h;
            tt = (row / h) % t;
            long long bb = row / ((long long)t * h);
            src = (bb * h + hh) * t + tt;
        }
        const float c = cs[tt * half + i], s = sign * sn[tt * half + i];
        const float a = ld(x, src * d + i), b = ld(x, src * d + half + i);
        st(y, row * d + i, a * c - b * s);
        st(y, row * d + half + i, b * c + a * s);
    }
}

// ---- Cross-entropy of a row of logits z (rows, V) under softmax(c(z) invT) against its
// target (0xffffffff: ignored, loss 0), c(z) = cap tanh(z / cap) under a soft cap (cap > 0,
// Gemma 2's final cap), else z. The backward pass recovers the row's log-sum-exp from the
// loss it returned (lse = nll + c(z[target]) invT), so nothing but the loss is kept.
__device__ __forceinline__ float xe_cap(float z, float cap) {
    return cap > 0.0f ? cap * tanhf(z / cap) : z;
}
template <typename T>
__device__ void xent(const T* z, const unsigned int* tg, float* nll, int V, float invT, float cap) {
    const long long r = blockIdx.x;
    const unsigned int t = tg[r];
    if (t == 0xffffffffu) {
        if (threadIdx.x == 0) nll[r] = 0.0f;
        return;
    }
    const T* zr = z + r * V;
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, xe_cap(ld(zr, j), cap) * invT);
    m = block_red(m, true);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += __expf(xe_cap(ld(zr, j), cap) * invT - m);
    s = block_red(s, false);
    if (threadIdx.x == 0) nll[r] = m + logf(s) - xe_cap(ld(zr, (long long)t), cap) * invT;
}
// dz = gout invT (softmax(c(z) invT) - onehot(target)) c'(z); 0 for ignored rows.
template <typename T>
__device__ void xent_bwd(const T* z, const unsigned int* tg, const float* nll, const float* gout,
                         T* dz, int V, float invT, float cap) {
    const long long r = blockIdx.x;
    const unsigned int t = tg[r];
    T* dr = dz + r * V;
    if (t == 0xffffffffu) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) st(dr, j, 0.0f);
        return;
    }
    const T* zr = z + r * V;
    const float lse = nll[r] + xe_cap(ld(zr, (long long)t), cap) * invT, gg = gout[r] * invT;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float zj = ld(zr, j);
        float slope = 1.0f, c = zj;
        if (cap > 0.0f) {
            const float th = tanhf(zj / cap);
            c = cap * th;
            slope = 1.0f - th * th;
        }
        const float p = __expf(c * invT - lse);
        st(dr, j, gg * (p - (j == (int)t ? 1.0f : 0.0f)) * slope);
    }
}

#define EACH(T, S) \
extern "C" __global__ void silu_gate_##S(const T* g, const T* u, T* y, long long n) { gate<Silu>(g, u, y, n); } \
extern "C" __global__ void silu_gate_bwd_##S(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) { gate_bwd<Silu>(g, u, dy, dg, du, n); } \
extern "C" __global__ void gelu_gate_##S(const T* g, const T* u, T* y, long long n) { gate<GeluTanh>(g, u, y, n); } \
extern "C" __global__ void gelu_gate_bwd_##S(const T* g, const T* u, const T* dy, T* dg, T* du, long long n) { gate_bwd<GeluTanh>(g, u, dy, dg, du, n); } \
extern "C" __global__ void rope_heads_##S(const T* x, const float* cs, const float* sn, T* y, int B, int t, int h, int d, int to_heads) { rope_heads(x, cs, sn, y, B, t, h, d, to_heads); } \
extern "C" __global__ void xent_##S(const T* z, const unsigned int* tg, float* nll, int V, float invT, float cap) { xent(z, tg, nll, V, invT, cap); } \
extern "C" __global__ void xent_bwd_##S(const T* z, const unsigned int* tg, const float* nll, const float* gout, T* dz, int V, float invT, float cap) { xent_bwd(z, tg, nll, gout, dz, V, invT, cap); }
EACH(float, f32)
EACH(bf16_t, bf16)
