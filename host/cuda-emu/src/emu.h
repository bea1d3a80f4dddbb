// galley-cuda-emu: enough of CUDA's device-side C++ to run galley's kernels on the CPU in
// tests. Each thread of a block is a fiber (ucontext) that runs until it reaches a barrier
// (__syncthreads, or a warp's rendezvous in a shuffle) and then yields; a barrier opens when
// every thread of its block (or warp) that has not returned waits at it, as on the GPU. The
// scheduling is deterministic, and a barrier that can never open is reported at once. A
// __shared__ array is a thread_local static: the blocks of a launch run in parallel on a few
// worker threads, each running one block at a time. Only for checking what a kernel
// computes: nothing here says how fast it is on a GPU.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <functional>
#include <thread>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>

#ifdef GALLEY_EMU_SCAN
// The scanning pass marks kernels so the host can find them after macro expansion.
#define __global__ __galley_emu_kernel__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// A worker thread runs one block at a time: its thread_local statics are the block's memory.
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

namespace galley_emu {

enum State { READY, AT_BLOCK, AT_WARP, DONE };

// One block in flight on a worker thread: its fibers, their states, the warps' exchange
// slots and the dynamic shared memory.
struct Block {
    unsigned int n = 0;
    std::vector<ucontext_t> ctx;
    std::vector<State> state;
    std::vector<char*> stacks;
    std::vector<unsigned long long> slot;  // one per thread, for warp shuffles
    std::vector<unsigned char> dyn;
    ucontext_t sched;
    unsigned int current = 0;
    const std::function<void()>* kernel = nullptr;
};

inline thread_local Block* blk = nullptr;
inline thread_local unsigned int lane_ = 0, warp_ = 0;
}  // namespace galley_emu

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
static const int warpSize = 32;

namespace galley_emu {
// The running fiber waits in state `st` until the scheduler opens its barrier.
inline void wait_at(State st) {
    Block& b = *blk;
    unsigned int me = b.current;
    b.state[me] = st;
    swapcontext(&b.ctx[me], &b.sched);
}
inline void* dyn_shared() { return blk->dyn.data(); }
// Every lane of the warp publishes v, then reads lane `src` (its own value when src is
// outside the warp, as CUDA does).
template <typename T>
inline T exchange(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Block& b = *blk;
    unsigned int me = b.current, base = me - lane_;
    std::memcpy(&b.slot[me], &v, sizeof(T));
    wait_at(AT_WARP);
    T out = v;
    if (src >= 0 && src < 32 && base + (unsigned)src < b.n) std::memcpy(&out, &b.slot[base + src], sizeof(T));
    wait_at(AT_WARP);
    return out;
}
}  // namespace galley_emu

inline void __syncthreads() { galley_emu::wait_at(galley_emu::AT_BLOCK); }
inline void __syncwarp(unsigned int = 0xffffffffu) { galley_emu::wait_at(galley_emu::AT_WARP); }

template <typename T> inline T __shfl_xor_sync(unsigned int, T v, int m, int = 32) {
    return galley_emu::exchange(v, (int)(galley_emu::lane_ ^ (unsigned)m));
}
template <typename T> inline T __shfl_down_sync(unsigned int, T v, unsigned int d, int = 32) {
    int src = (int)(galley_emu::lane_ + d);
    return galley_emu::exchange(v, src < 32 ? src : (int)galley_emu::lane_);
}
template <typename T> inline T __shfl_up_sync(unsigned int, T v, unsigned int d, int = 32) {
    int src = (int)galley_emu::lane_ - (int)d;
    return galley_emu::exchange(v, src >= 0 ? src : (int)galley_emu::lane_);
}
template <typename T> inline T __shfl_sync(unsigned int, T v, int src, int = 32) {
    return galley_emu::exchange(v, src & 31);
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned int __float_as_uint(float f) { unsigned int i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
using std::max;
using std::min;

// Atomics on plain memory: other threads of the launch touch the same words.
inline float atomicAdd(float* p, float v) {
    float old, want; __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
inline double atomicAdd(double* p, double v) {
    double old, want; __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline float atomicMax(float* p, float v) {
    float old, want; __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = std::max(old, v); } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}

namespace galley_emu {
constexpr size_t STACK = 256 * 1024;

inline void fiber_main() {
    Block& b = *blk;
    (*b.kernel)();
    b.state[b.current] = DONE;
    swapcontext(&b.ctx[b.current], &b.sched);
}

// Runs block `id` on this worker thread. d: grid x, y, z then block x, y, z.
inline void run_block(Block& b, const unsigned int* d, unsigned long long id) {
    blockIdx = {(unsigned)(id % d[0]), (unsigned)((id / d[0]) % d[1]), (unsigned)(id / ((unsigned long long)d[0] * d[1]))};
    for (unsigned int t = 0; t < b.n; t++) {
        getcontext(&b.ctx[t]);
        b.ctx[t].uc_stack.ss_sp = b.stacks[t];
        b.ctx[t].uc_stack.ss_size = STACK;
        b.ctx[t].uc_link = nullptr;
        makecontext(&b.ctx[t], fiber_main, 0);
        b.state[t] = READY;
    }
    const unsigned int warps = (b.n + 31) / 32;
    for (;;) {
        bool ran = false;
        for (unsigned int t = 0; t < b.n; t++) {
            if (b.state[t] != READY) continue;
            b.current = t;
            lane_ = t % 32;
            warp_ = t / 32;
            threadIdx = {t % d[3], (t / d[3]) % d[4], t / (d[3] * d[4])};
            swapcontext(&b.sched, &b.ctx[t]);
            ran = true;
        }
        // Open every barrier at which all its live threads now wait.
        bool opened = false, live = false;
        for (unsigned int w = 0; w < warps; w++) {
            unsigned int lo = w * 32, hi = std::min(b.n, lo + 32);
            bool all = true, any = false;
            for (unsigned int t = lo; t < hi; t++) {
                if (b.state[t] == DONE) continue;
                any = true;
                if (b.state[t] != AT_WARP) all = false;
            }
            if (any && all) {
                for (unsigned int t = lo; t < hi; t++) if (b.state[t] == AT_WARP) b.state[t] = READY;
                opened = true;
            }
        }
        bool all_block = true;
        for (unsigned int t = 0; t < b.n; t++) {
            if (b.state[t] == DONE) continue;
            live = true;
            if (b.state[t] != AT_BLOCK) all_block = false;
        }
        if (!live) return;
        if (live && all_block) {
            for (unsigned int t = 0; t < b.n; t++) if (b.state[t] == AT_BLOCK) b.state[t] = READY;
            opened = true;
        }
        if (!ran && !opened) {
            std::fprintf(stderr, "galley-cuda-emu: block (%u, %u, %u) can never pass a barrier: "
                         "some threads wait at __syncthreads, others in a warp shuffle or __syncwarp "
                         "their warp-mates never reach\n", blockIdx.x, blockIdx.y, blockIdx.z);
            std::abort();
        }
    }
}

// Runs the grid: blocks in CUDA's order (x fastest) handed out to up to 4 worker threads.
inline void launch(const unsigned int* d, unsigned long long shmem, const std::function<void()>& k) {
    const unsigned int n = d[3] * d[4] * d[5];
    const unsigned long long blocks = (unsigned long long)d[0] * d[1] * d[2];
    std::atomic<unsigned long long> next{0};
    unsigned int workers = std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
    if (blocks < workers) workers = (unsigned int)blocks;
    auto work = [&] {
        Block b;
        b.n = n;
        b.ctx.resize(n);
        b.state.resize(n);
        b.slot.resize(n);
        b.dyn.assign(shmem, 0xA5);  // not zeroed, as on the GPU: a kernel must not rely on it
        b.kernel = &k;
        for (unsigned int t = 0; t < n; t++) {
            void* m = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) { std::perror("galley-cuda-emu: fiber stack"); std::abort(); }
            b.stacks.push_back((char*)m);
        }
        blk = &b;
        blockDim = {d[3], d[4], d[5]};
        gridDim = {d[0], d[1], d[2]};
        for (unsigned long long id; (id = next.fetch_add(1)) < blocks;) run_block(b, d, id);
        for (char* m : b.stacks) munmap(m, STACK);
        blk = nullptr;
    };
    std::vector<std::thread> ts;
    for (unsigned int w = 1; w < workers; w++) ts.emplace_back(work);
    work();
    for (auto& t : ts) t.join();
}
}  // namespace galley_emu
