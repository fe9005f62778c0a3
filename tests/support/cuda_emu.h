// Runs a generated CUDA kernel on the CPU, for tests on machines without a GPU: every
// thread of a block is an OS thread, `__shared__` variables are statics (blocks run one
// at a time), `__syncthreads` is a barrier over the block, and warp votes and shuffles
// exchange values through per-warp slots between two warp barriers. Float intrinsics map
// to the host's IEEE operations (compiled with -ffp-contract=off), so a kernel's results
// can be compared with the CPU backend's bit for bit where the CPU's are exact.
//
// Usage: g++ -std=c++20 -O1 -ffp-contract=off -pthread -include cuda_emu.h kernel.cu emu_main.cpp

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __shared__ static

struct EmuDim3 {
    unsigned x, y, z;
};
inline thread_local EmuDim3 threadIdx;
inline thread_local EmuDim3 blockIdx;
inline EmuDim3 blockDim;
inline EmuDim3 gridDim;

namespace emu {
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::barrier<>*> warp_barriers;
inline uint64_t warp_slots[64][32];

inline unsigned lane() { return threadIdx.x & 31u; }
inline unsigned warp() { return threadIdx.x >> 5; }

// Every lane publishes 8 bytes, then reads what it needs; the second barrier keeps the
// slots until every lane has read them.
template <class F>
inline auto exchange(uint64_t mine, F read) {
    warp_slots[warp()][lane()] = mine;
    warp_barriers[warp()]->arrive_and_wait();
    auto r = read(warp_slots[warp()]);
    warp_barriers[warp()]->arrive_and_wait();
    return r;
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline unsigned __ballot_sync(unsigned, bool pred) {
    return emu::exchange(pred ? 1u : 0u, [](const uint64_t* s) {
        unsigned b = 0;
        for (unsigned l = 0; l < 32; l++) b |= (s[l] ? 1u : 0u) << l;
        return b;
    });
}

template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned o) {
    static_assert(sizeof(T) <= 8, "8-byte values at most");
    uint64_t mine = 0;
    std::memcpy(&mine, &v, sizeof(T));
    uint64_t got = emu::exchange(mine, [o](const uint64_t* s) { return emu::lane() + o < 32 ? s[emu::lane() + o] : s[emu::lane()]; });
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x == 0 ? 32 : __builtin_clz(x); }

inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline long long __double_as_longlong(double x) { long long u; std::memcpy(&u, &x, 8); return u; }
inline double __longlong_as_double(long long u) { double x; std::memcpy(&x, &u, 8); return x; }
inline double __ll2double_rn(long long x) { return (double)x; }
inline double __ull2double_rn(unsigned long long x) { return (double)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline float __double2float_rn(double x) { return (float)x; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }

inline unsigned atomicMin(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

// Runs `kernel` over a grid of (gx, gy) blocks of `threads` threads, one block at a time.
template <class K>
inline void emu_launch(unsigned gx, unsigned gy, unsigned threads, K kernel) {
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, 1};
    std::barrier<> block(threads);
    emu::block_barrier = &block;
    std::vector<std::barrier<>*> warps;
    for (unsigned w = 0; w < threads / 32; w++) warps.push_back(new std::barrier<>(32));
    emu::warp_barriers = warps;
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned bx = 0; bx < gx; bx++) {
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < threads; t++) {
                ts.emplace_back([=] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    kernel();
                });
            }
            for (auto& th : ts) th.join();
        }
    }
    for (auto* w : warps) delete w;
}
