// galley-cuda-emu: enough of CUDA's device-side C++ to run galley's kernels on the CPU in
// tests. Each thread of a block is a fiber (ucontext) that runs until it reaches a barrier
// (__syncthreads, or a warp's rendezvous in a shuffle) and then yields; a barrier opens when
// every thread of its block (or warp) that has not returned waits at it, as on the GPU, and
// the threads it frees run first. The scheduling is deterministic (first to last thread, or
// last to first: the host runs both and compares), and a barrier that can never open is
// reported at once. Shared memory is per block and starts as NaN bytes; the blocks of a
// launch run in parallel on a few worker threads, each running one block at a time. Only for
// checking what a kernel computes: nothing here says how fast it is on a GPU.
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
// Every `__shared__` declaration is rewritten by the host (galley-cuda-emu) into a slot of the
// running block's arena, poisoned (NaN bytes) when the block starts, so a read of a value no
// thread of this block wrote shows. The macro covers any the rewrite could not see.
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
    // Static __shared__ arrays: (declaration site, offset) and the bytes they take.
    std::vector<unsigned char> arena;
    std::vector<std::pair<int, size_t>> slots;
    size_t used = 0;
    ucontext_t sched;
    unsigned int current = 0;
    const std::function<void()>* kernel = nullptr;
    // Run the threads between barriers last to first: a kernel whose result depends on the
    // order (a missing __syncthreads or __syncwarp) shows as a difference between the orders.
    bool reverse = false;
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
// The block's copy of the __shared__ declaration at `site`: every thread of the block gets the
// same bytes, allocated when the first thread reaches the declaration.
inline void* shared_slot(size_t bytes, size_t align, int site) {
    Block& b = *blk;
    for (auto& s : b.slots)
        if (s.first == site) return b.arena.data() + s.second;
    size_t off = (b.used + align - 1) / align * align;
    if (off + bytes > b.arena.size()) {
        std::fprintf(stderr, "galley-cuda-emu: more than %zu bytes of static __shared__ memory\n", b.arena.size());
        std::abort();
    }
    b.slots.emplace_back(site, off);
    b.used = off + bytes;
    return b.arena.data() + off;
}
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
    // Shared memory starts as poison (NaN bytes): nothing carries over from another block.
    std::memset(b.arena.data(), 0xFF, b.arena.size());
    std::memset(b.dyn.data(), 0xFF, b.dyn.size());
    b.slots.clear();
    b.used = 0;
    blockIdx = {(unsigned)(id % d[0]), (unsigned)((id / d[0]) % d[1]), (unsigned)(id / ((unsigned long long)d[0] * d[1]))};
    for (unsigned int t = 0; t < b.n; t++) {
        getcontext(&b.ctx[t]);
        b.ctx[t].uc_stack.ss_sp = b.stacks[t];
        b.ctx[t].uc_stack.ss_size = STACK;
        b.ctx[t].uc_link = nullptr;
        makecontext(&b.ctx[t], fiber_main, 0);
        b.state[t] = READY;
    }
    // A barrier opens as soon as its last live thread reaches it, and the threads it frees run
    // before any thread that has not reached it yet: a thread never sees more of its block's
    // progress than the barriers it passed guarantee (a missing barrier shows as a read of
    // poison or of a partial result, which then differs between the two thread orders).
    auto warp_open = [&](unsigned int w) {
        bool any = false;
        for (unsigned int t = w * 32; t < std::min(b.n, w * 32 + 32); t++) {
            if (b.state[t] == DONE) continue;
            if (b.state[t] != AT_WARP) return false;
            any = true;
        }
        return any;
    };
    auto block_open = [&] {
        bool any = false;
        for (unsigned int t = 0; t < b.n; t++) {
            if (b.state[t] == DONE) continue;
            if (b.state[t] != AT_BLOCK) return false;
            any = true;
        }
        return any;
    };
    auto release = [&](State st, unsigned int lo, unsigned int hi) {
        for (unsigned int t = lo; t < hi; t++) if (b.state[t] == st) b.state[t] = READY;
    };
    for (;;) {
        bool ran = false;
        for (unsigned int i = 0; i < b.n; i++) {
            const unsigned int t = b.reverse ? b.n - 1 - i : i;
            if (b.state[t] != READY) continue;
            b.current = t;
            lane_ = t % 32;
            warp_ = t / 32;
            threadIdx = {t % d[3], (t / d[3]) % d[4], t / (d[3] * d[4])};
            swapcontext(&b.sched, &b.ctx[t]);
            ran = true;
            // Its warp's barrier (a shuffle, __syncwarp) or the block's may have just opened:
            // then the freed threads go first (the scan restarts).
            const unsigned int w = t / 32;
            if (warp_open(w)) {
                release(AT_WARP, w * 32, std::min(b.n, w * 32 + 32));
                break;
            }
            if (block_open()) {
                release(AT_BLOCK, 0, b.n);
                break;
            }
        }
        if (ran) continue;
        bool live = false;
        for (unsigned int t = 0; t < b.n; t++) live = live || b.state[t] != DONE;
        if (!live) return;
        std::fprintf(stderr, "galley-cuda-emu: block (%u, %u, %u) can never pass a barrier: "
                     "some threads wait at __syncthreads, others in a warp shuffle or __syncwarp "
                     "their warp-mates never reach\n", blockIdx.x, blockIdx.y, blockIdx.z);
        std::abort();
    }
}

// Runs the grid: blocks in CUDA's order (x fastest) handed out to up to 4 worker threads.
// Returns the most shared memory a block took, static and dynamic together (on the GPU their
// sum must fit the per-block limit).
inline unsigned long long launch(const unsigned int* d, unsigned long long shmem, bool reverse, const std::function<void()>& k) {
    const unsigned int n = d[3] * d[4] * d[5];
    std::atomic<unsigned long long> most{0};
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
        b.dyn.assign(shmem, 0xFF);
        b.arena.assign(64 * 1024, 0xFF);
        b.kernel = &k;
        b.reverse = reverse;
        for (unsigned int t = 0; t < n; t++) {
            void* m = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) { std::perror("galley-cuda-emu: fiber stack"); std::abort(); }
            b.stacks.push_back((char*)m);
        }
        blk = &b;
        blockDim = {d[3], d[4], d[5]};
        gridDim = {d[0], d[1], d[2]};
        for (unsigned long long id; (id = next.fetch_add(1)) < blocks;) {
            run_block(b, d, id);
            unsigned long long took = b.used + shmem, seen = most.load();
            while (took > seen && !most.compare_exchange_weak(seen, took)) {}
        }
        for (char* m : b.stacks) munmap(m, STACK);
        blk = nullptr;
    };
    std::vector<std::thread> ts;
    for (unsigned int w = 1; w < workers; w++) ts.emplace_back(work);
    work();
    for (auto& t : ts) t.join();
    return most.load();
}
}  // namespace galley_emu
