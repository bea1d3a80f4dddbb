// galley-train's fused causal attention for long sequences (flash_cuda.rs): the forward pass
// and its backward pass never hold a (rows x keys) score matrix, only each row's log-sum-exp.
// Layout (galley's grouped-query layout): q, o (B*KV, R = G*T, D), row r being query head
// r / T of the group at position r % T; k, v (B*KV, T, D). f32 arithmetic on f32 or bf16
// data; D a multiple of 32, at most 256 (Gemma's heads are 256 wide: past 128 the kernels
// take more than 48 KiB of shared memory, which the launch opts in to). Keys are read in
// chunks of 32 staged in shared memory, rows padded to D + 1 floats so that a warp reading one dimension of 32 keys hits 32
// banks. The backward pass is deterministic: dK and dV come from one block per key chunk that
// walks the query rows in order, dQ from one block per query tile (no atomics).
// Gemma's attention: under a sliding window (window > 0) a row at position pos sees keys
// pos - window + 1 .. pos, and key chunks no row of a tile sees are skipped; under a soft cap
// (cap > 0) a scaled score x becomes cap tanh(x / cap), and the backward pass multiplies dS
// by the cap's slope 1 - tanh^2.
// Compiled after galley-model's prelude.cuh by NVRTC on a GPU, and by galley-cuda-emu in tests.
#define FA_BK 32
#define FA_ROWS 16
#define FA_QB 8
// Output dimensions a lane owns at most (D / 32).
#define FA_ND 8

// The furthest position among rows r0 .. r0 + FA_ROWS - 1 (the keys the tile needs).
__device__ __forceinline__ int fa_maxpos(int r0, int R, int t) {
    int mp = 0;
    for (int i = 0; i < FA_ROWS; i++) {
        int r = r0 + i;
        if (r < R) mp = max(mp, r % t);
    }
    return mp;
}
// The first key a row at `pos` sees.
__device__ __forceinline__ int fa_lo(int pos, int window) {
    return window > 0 ? max(0, pos - window + 1) : 0;
}
// The first key chunk any row of the tile sees.
__device__ __forceinline__ int fa_first_chunk(int r0, int R, int t, int window) {
    if (window <= 0) return 0;
    int lo = t;
    for (int i = 0; i < FA_ROWS; i++) {
        int r = r0 + i;
        if (r < R) lo = min(lo, fa_lo(r % t, window));
    }
    return lo / FA_BK * FA_BK;
}
// A scaled score under the soft cap, and the cap's slope at it (1 without one).
__device__ __forceinline__ float fa_cap(float x, float cap, float* slope) {
    if (cap <= 0.0f) { *slope = 1.0f; return x; }
    const float th = tanhf(x / cap);
    *slope = 1.0f - th * th;
    return cap * th;
}

// Keys and values j0 .. j0 + 31 of one (b, kv) into Ks, Vs (zeros past the end).
template <typename T>
__device__ void fa_load_kv(const T* kb, const T* vb, float* Ks, float* Vs, int j0, int t, int D) {
    const int P = D + 1;
    for (int x = threadIdx.x; x < FA_BK * D; x += blockDim.x) {
        int jj = x / D, d = x % D, j = j0 + jj;
        Ks[jj * P + d] = j < t ? ld(kb, (long long)j * D + d) : 0.0f;
        Vs[jj * P + d] = j < t ? ld(vb, (long long)j * D + d) : 0.0f;
    }
}

// Forward. grid (ceil(R / 16), B*KV), 128 threads; warp w takes rows r0 + 4w .. r0 + 4w + 3,
// lane l scores key j0 + l and owns output dimensions l, l + 32, ... (up to 8 of them). Online
// softmax per row.
// Shared: (2 * 32 * (D + 1) + 4 * D) floats.
template <typename T>
__device__ void fa_fwd(const T* q, const T* k, const T* v, T* o, float* lse, int R, int t,
                       int D, float scale, int window, float cap) {
    extern __shared__ float fsm[];
    const int P = D + 1, ND = D / 32;
    float* Ks = fsm;
    float* Vs = Ks + FA_BK * P;
    float* Qs = Vs + FA_BK * P;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long bh = blockIdx.y;
    const T* qb = q + bh * R * D;
    const T* kb = k + bh * t * D;
    const T* vb = v + bh * t * D;
    const int r0 = blockIdx.x * FA_ROWS, maxpos = fa_maxpos(r0, R, t);
    const float ninf = __int_as_float(0xff800000);
    float acc[4][FA_ND], m[4], l[4];
    for (int i = 0; i < 4; i++) {
        m[i] = ninf;
        l[i] = 0.0f;
        for (int e = 0; e < FA_ND; e++) acc[i][e] = 0.0f;
    }
    float* qs = Qs + warp * D;
    for (int j0 = fa_first_chunk(r0, R, t, window); j0 <= maxpos; j0 += FA_BK) {
        __syncthreads();
        fa_load_kv(kb, vb, Ks, Vs, j0, t, D);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + warp * 4 + i;
            if (r >= R) continue;  // the whole warp
            const int pos = r % t, lo = fa_lo(pos, window);
            if (j0 > pos || j0 + FA_BK <= lo) continue;  // the whole warp
            __syncwarp();
            for (int d = lane; d < D; d += 32) qs[d] = ld(qb, (long long)r * D + d) * scale;
            __syncwarp();
            const int j = j0 + lane;
            const bool seen = j <= pos && j >= lo;
            float s = ninf;
            if (seen) {
                float a = 0.0f, slope;
                for (int d = 0; d < D; d++) a += qs[d] * Ks[lane * P + d];
                s = fa_cap(a, cap, &slope);
            }
            // The chunk holds a key in lo .. pos, so its maximum is finite.
            const float mx = fmaxf(m[i], warp_red(s, true));
            const float alpha = __expf(m[i] - mx);
            const float p = seen ? __expf(s - mx) : 0.0f;
            l[i] = l[i] * alpha + warp_red(p, false);
            for (int e = 0; e < FA_ND; e++) if (e < ND) acc[i][e] *= alpha;
            for (int jj = 0; jj < FA_BK; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
                for (int e = 0; e < FA_ND; e++) if (e < ND) acc[i][e] += pj * Vs[jj * P + lane + 32 * e];
            }
            m[i] = mx;
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = r0 + warp * 4 + i;
        if (r >= R) continue;
        const long long row = bh * R + r;
        for (int e = 0; e < FA_ND; e++) if (e < ND) st(o, row * D + lane + 32 * e, acc[i][e] / l[i]);
        if (lane == 0) lse[row] = m[i] + logf(l[i]);
    }
}

// dr[row] = sum_d dO[row, d] O[row, d]; a warp per row, 4 rows per block of 128.
template <typename T>
__device__ void fa_dot(const T* o, const T* dout, float* dr, long long rows, int D) {
    const long long r = blockIdx.x * 4LL + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    float a = 0.0f;
    for (int d = lane; d < D; d += 32) a += ld(o, r * D + d) * ld(dout, r * D + d);
    a = warp_red(a, false);
    if (lane == 0) dr[r] = a;
}

// dK, dV. grid (ceil(T / 32), B*KV), 32 TPK threads, TPK = 4 threads a key up to D = 128 and
// 8 past it: thread (jj = tid / TPK, c = tid % TPK) owns key j0 + jj and dimensions
// [c D/TPK, (c + 1) D/TPK), at most 32. The block walks every query row that sees its keys
// (each head of the group, positions j0 ..), FA_QB rows at a time through shared memory; a
// row's score and dP for a key are sums over the key's TPK threads (adjacent lanes).
// Shared: (2 * 32 * (D + 1) + 2 * FA_QB * (D + 1) + 2 * FA_QB) floats.
template <typename T>
__device__ void fa_bwd_kv(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                          const float* dr, T* dk, T* dv, int R, int t, int G, int D, float scale,
                          int window, float cap) {
    extern __shared__ float fsm[];
    const int tpk = blockDim.x / FA_BK, P = D + 1, W = D / tpk;
    float* Ks = fsm;
    float* Vs = Ks + FA_BK * P;
    float* Qs = Vs + FA_BK * P;
    float* Os = Qs + FA_QB * P;
    float* Ls = Os + FA_QB * P;
    float* Ds = Ls + FA_QB;
    const long long bh = blockIdx.y;
    const int j0 = blockIdx.x * FA_BK;
    const int jj = threadIdx.x / tpk, c = threadIdx.x % tpk, d0 = c * W, j = j0 + jj;
    fa_load_kv(k + bh * t * D, v + bh * t * D, Ks, Vs, j0, t, D);
    float gk[32], gv[32];
    for (int e = 0; e < 32; e++) { gk[e] = 0.0f; gv[e] = 0.0f; }
    // The last row that sees one of the chunk's keys (every later one, without a window).
    const int pend = window > 0 ? min(t, j0 + FA_BK - 1 + window) : t;
    for (int g = 0; g < G; g++) {
        for (int p0 = j0; p0 < pend; p0 += FA_QB) {
            __syncthreads();
            for (int x = threadIdx.x; x < FA_QB * D; x += blockDim.x) {
                const int ii = x / D, d = x % D, pos = p0 + ii;
                const long long row = bh * R + (long long)g * t + pos;
                Qs[ii * P + d] = pos < t ? ld(q, row * D + d) : 0.0f;
                Os[ii * P + d] = pos < t ? ld(dout, row * D + d) : 0.0f;
            }
            for (int ii = threadIdx.x; ii < FA_QB; ii += blockDim.x) {
                const int pos = p0 + ii;
                const long long row = bh * R + (long long)g * t + pos;
                Ls[ii] = pos < t ? lse[row] : 0.0f;
                Ds[ii] = pos < t ? dr[row] : 0.0f;
            }
            __syncthreads();
            for (int ii = 0; ii < FA_QB && p0 + ii < t; ii++) {
                const int pos = p0 + ii;
                float s = 0.0f, dp = 0.0f;
                for (int e = 0; e < W; e++) {
                    s += Qs[ii * P + d0 + e] * Ks[jj * P + d0 + e];
                    dp += Os[ii * P + d0 + e] * Vs[jj * P + d0 + e];
                }
                for (int o = 1; o < tpk; o <<= 1) {
                    s += __shfl_xor_sync(0xffffffffu, s, o);
                    dp += __shfl_xor_sync(0xffffffffu, dp, o);
                }
                float slope;
                const float z = fa_cap(s * scale, cap, &slope);
                const bool seen = j <= pos && j < t && (window <= 0 || pos - j < window);
                const float pr = seen ? __expf(z - Ls[ii]) : 0.0f;
                const float ds = pr * (dp - Ds[ii]) * scale * slope;
                for (int e = 0; e < 32; e++) {
                    if (e < W) {
                        gv[e] += pr * Os[ii * P + d0 + e];
                        gk[e] += ds * Qs[ii * P + d0 + e];
                    }
                }
            }
        }
    }
    if (j < t) {
        const long long row = bh * t + j;
        for (int e = 0; e < 32; e++) {
            if (e < W) {
                st(dk, row * D + d0 + e, gk[e]);
                st(dv, row * D + d0 + e, gv[e]);
            }
        }
    }
}

// dQ. grid (ceil(R / 16), B*KV), 128 threads, rows as in the forward pass: lane l computes the
// row's dS for key j0 + l, then every lane adds dS_j K_j into the dimensions it owns.
// Shared: (2 * 32 * (D + 1) + 8 * D) floats.
template <typename T>
__device__ void fa_bwd_q(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                         const float* dr, T* dq, int R, int t, int D, float scale, int window,
                         float cap) {
    extern __shared__ float fsm[];
    const int P = D + 1, ND = D / 32;
    float* Ks = fsm;
    float* Vs = Ks + FA_BK * P;
    float* Qs = Vs + FA_BK * P;
    float* Os = Qs + 4 * D;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long bh = blockIdx.y;
    const T* kb = k + bh * t * D;
    const T* vb = v + bh * t * D;
    const int r0 = blockIdx.x * FA_ROWS, maxpos = fa_maxpos(r0, R, t);
    float acc[4][FA_ND];
    for (int i = 0; i < 4; i++) for (int e = 0; e < FA_ND; e++) acc[i][e] = 0.0f;
    float* qs = Qs + warp * D;
    float* os = Os + warp * D;
    for (int j0 = fa_first_chunk(r0, R, t, window); j0 <= maxpos; j0 += FA_BK) {
        __syncthreads();
        fa_load_kv(kb, vb, Ks, Vs, j0, t, D);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + warp * 4 + i;
            if (r >= R) continue;
            const int pos = r % t, lo = fa_lo(pos, window);
            if (j0 > pos || j0 + FA_BK <= lo) continue;
            const long long row = bh * R + r;
            __syncwarp();
            for (int d = lane; d < D; d += 32) {
                qs[d] = ld(q, row * D + d);
                os[d] = ld(dout, row * D + d);
            }
            __syncwarp();
            const int j = j0 + lane;
            float ds = 0.0f;
            if (j <= pos && j >= lo) {
                float s = 0.0f, dp = 0.0f, slope;
                for (int d = 0; d < D; d++) {
                    s += qs[d] * Ks[lane * P + d];
                    dp += os[d] * Vs[lane * P + d];
                }
                const float z = fa_cap(s * scale, cap, &slope);
                ds = __expf(z - lse[row]) * (dp - dr[row]) * slope;
            }
            for (int jj = 0; jj < FA_BK; jj++) {
                const float dsj = __shfl_sync(0xffffffffu, ds, jj);
                for (int e = 0; e < FA_ND; e++) if (e < ND) acc[i][e] += dsj * Ks[jj * P + lane + 32 * e];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = r0 + warp * 4 + i;
        if (r >= R) continue;
        const long long row = bh * R + r;
        for (int e = 0; e < FA_ND; e++) if (e < ND) st(dq, row * D + lane + 32 * e, acc[i][e] * scale);
    }
}

#define FLASH(T, S) \
extern "C" __global__ void flash_fwd_##S(const T* q, const T* k, const T* v, T* o, float* lse, int R, int t, int D, float scale, int window, float cap) { fa_fwd(q, k, v, o, lse, R, t, D, scale, window, cap); } \
extern "C" __global__ void flash_dot_##S(const T* o, const T* dout, float* dr, long long rows, int D) { fa_dot(o, dout, dr, rows, D); } \
extern "C" __global__ void flash_bwd_kv_##S(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dr, T* dk, T* dv, int R, int t, int G, int D, float scale, int window, float cap) { fa_bwd_kv(q, k, v, dout, lse, dr, dk, dv, R, t, G, D, scale, window, cap); } \
extern "C" __global__ void flash_bwd_q_##S(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dr, T* dq, int R, int t, int D, float scale, int window, float cap) { fa_bwd_q(q, k, v, dout, lse, dr, dq, R, t, D, scale, window, cap); }
FLASH(float, f32)
FLASH(bf16_t, bf16)
