// Helpers of every generated CUDA kernel. NVRTC compiles this with no CUDA header: only
// built-in types and intrinsics. Floats are classified by their bits, NaN payloads are
// kept where the CPU path keeps them, and conversions round to nearest even, so that a
// kernel writes the CPU's bytes.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef short i16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ bool f_is_nan(float x) { return (__float_as_uint(x) & 0x7fffffffu) > 0x7f800000u; }
__device__ __forceinline__ bool f_is_inf(float x) { return (__float_as_uint(x) & 0x7fffffffu) == 0x7f800000u; }
__device__ __forceinline__ bool f_is_finite(float x) { return (__float_as_uint(x) & 0x7fffffffu) < 0x7f800000u; }
__device__ __forceinline__ u64 d_bits(double x) { return (u64)__double_as_longlong(x); }
__device__ __forceinline__ bool d_is_nan(double x) { return (d_bits(x) & 0x7fffffffffffffffull) > 0x7ff0000000000000ull; }
__device__ __forceinline__ bool d_is_inf(double x) { return (d_bits(x) & 0x7fffffffffffffffull) == 0x7ff0000000000000ull; }
__device__ __forceinline__ bool d_is_finite(double x) { return (d_bits(x) & 0x7fffffffffffffffull) < 0x7ff0000000000000ull; }
__device__ __forceinline__ double d_from_bits(u64 b) { return __longlong_as_double((i64)b); }

// ---------------------------------------------------------------- f32 ops (as ops.rs)

__device__ __forceinline__ float f_neg(float x) { return __uint_as_float(__float_as_uint(x) ^ 0x80000000u); }
__device__ __forceinline__ float f_abs(float x) { return __uint_as_float(__float_as_uint(x) & 0x7fffffffu); }
__device__ __forceinline__ float f_min(float a, float b) {
    if (f_is_nan(a) || f_is_nan(b)) return __uint_as_float(0x7fc00000u);
    return b < a ? b : a;
}
__device__ __forceinline__ float f_max(float a, float b) {
    if (f_is_nan(a) || f_is_nan(b)) return __uint_as_float(0x7fc00000u);
    return b > a ? b : a;
}
// NaN stays NaN; a NaN bound leaves that side open.
__device__ __forceinline__ float f_clip(float x, float lo, float hi) {
    float v = x < lo ? lo : x;
    return v > hi ? hi : v;
}
// `!=` is false when either side is NaN, like every comparison.
__device__ __forceinline__ bool f_ne(float a, float b) { return a != b && !f_is_nan(a) && !f_is_nan(b); }

// ---------------------------------------------------------------- conversions

__device__ __forceinline__ float f16_to_f32(u32 h) {
    u32 sign = (h & 0x8000u) << 16;
    u32 e = (h >> 10) & 0x1fu;
    u32 m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0u) {
        if (m == 0u) return __uint_as_float(sign);
        // Subnormal: shift the mantissa up until bit 10 is set.
        u32 shift = (u32)__clz(m) - 21u;
        u32 mm = (m << shift) & 0x3ffu;
        return __uint_as_float(sign | ((113u - shift) << 23) | (mm << 13));
    }
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

__device__ __forceinline__ float bf16_to_f32(u32 h) { return __uint_as_float(h << 16); }

// f32 to binary16 bits, round to nearest even; NaN keeps its top payload bits, made quiet.
__device__ __forceinline__ u32 f32_to_f16(float x) {
    u32 b = __float_as_uint(x);
    u32 sign = (b >> 16) & 0x8000u;
    u32 a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        u32 m = a & 0x7fffffu;
        return sign | 0x7c00u | (m != 0u ? (0x200u | (m >> 13)) : 0u);
    }
    if (a >= 0x47800000u) return sign | 0x7c00u;
    if (a >= 0x38800000u) {
        u32 m = a - 0x38000000u;
        return sign | ((m + 0xfffu + ((m >> 13) & 1u)) >> 13);
    }
    if (a < 0x33000000u) return sign;
    u32 e = a >> 23;
    u32 mant = (a & 0x7fffffu) | 0x800000u;
    u32 shift = 126u - e;
    u32 q = mant >> shift;
    u32 rem = mant & ((1u << shift) - 1u);
    u32 half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u) == 1u)) q = q + 1u;
    return sign | q;
}

// f32 to bfloat16 bits, round to nearest even; NaN made quiet.
__device__ __forceinline__ u32 f32_to_bf16(float x) {
    u32 b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (b >> 16) | 0x40u;
    u32 r = 0x8000u;
    return (b >> 16) + (((b & r) != 0u && (b & (3u * r - 1u)) != 0u) ? 1u : 0u);
}

// f64 to f32, round to nearest even; a NaN keeps its sign and top payload bits, made quiet
// (what the CPU's conversion does; the hardware's gives one canonical NaN).
__device__ __forceinline__ float d_to_f32(double x) {
    if (d_is_nan(x)) {
        u64 b = d_bits(x);
        return __uint_as_float(((u32)(b >> 32) & 0x80000000u) | 0x7fc00000u | (u32)((b >> 29) & 0x7fffffu));
    }
    return __double2float_rn(x);
}

// f64 to f32 rounded to odd (truncated, the last bit set when inexact; ±FLT_MAX beyond
// the range): rounded on to f16 or bf16 to nearest even, it gives the f64's own nearest
// value, where two roundings to nearest may not (`f32_round_odd` on the host).
__device__ __forceinline__ float d_to_f32_odd(double x) {
    const float f = d_to_f32(x);
    if (d_is_nan(x) || (double)f == x) return f;
    const u32 b = __float_as_uint(f) - (fabs((double)f) > fabs(x) ? 1u : 0u);
    return __uint_as_float(b | 1u);
}

// The order key of an f64's bits (`f64_order_key` on the host): f64 values compare as the
// floats do (-0 made 0; NaN keys lie outside those of -inf..=inf).
__device__ __forceinline__ i64 f64_order_key(u64 b) {
    const i64 s = (i64)b;
    return s >= 0 ? s : (b == 0x8000000000000000ull ? 0 : (s ^ 0x7fffffffffffffffll));
}
// u64 to i64, saturating (as the CPU loads u64 columns into integer registers).
__device__ __forceinline__ i64 u64_sat(u64 x) { return x > 0x7fffffffffffffffull ? 0x7fffffffffffffffll : (i64)x; }

// ---------------------------------------------------------------- statistics

// One thread's (then one block's) partial statistics of a column: sums of x - pivot in
// f64, counts, bounds. `imn`/`imx` hold exact integer bounds (as u64 bits for u64 columns).
struct Acc {
    u64 count, nan, inf;
    double sum, sum2, mn, mx, fmn, fmx;
    i64 imn, imx;
};

__device__ __forceinline__ void acc_init(Acc& a, bool unsig) {
    a.count = 0; a.nan = 0; a.inf = 0;
    a.sum = 0.0; a.sum2 = 0.0;
    a.mn = d_from_bits(0x7ff0000000000000ull); a.mx = d_from_bits(0xfff0000000000000ull);
    a.fmn = a.mn; a.fmx = a.mx;
    a.imn = unsig ? (i64)0xffffffffffffffffull : 0x7fffffffffffffffll;
    a.imx = unsig ? 0ll : (i64)0x8000000000000000ull;
}

// A non-NaN value v: counts, sums of v - p, bounds.
__device__ __forceinline__ void acc_value(Acc& a, double v, double p) {
    double d = v - p;
    a.count++;
    a.sum += d;
    a.sum2 += d * d;
    if (v < a.mn) a.mn = v;
    if (v > a.mx) a.mx = v;
}

__device__ __forceinline__ void acc_finite(Acc& a, double v) {
    if (v < a.fmn) a.fmn = v;
    if (v > a.fmx) a.fmx = v;
}

__device__ __forceinline__ void acc_f(Acc& a, double v, double p) {
    if (d_is_nan(v)) { a.nan++; return; }
    acc_value(a, v, p);
    if (d_is_inf(v)) { a.inf++; return; }
    acc_finite(a, v);
}

// An integer x (T is i64 or u64; the exact bounds hold T's bits) whose f64 value is v.
template <class T>
__device__ __forceinline__ void acc_int(Acc& a, T x, double v, double p) {
    acc_value(a, v, p);
    acc_finite(a, v);
    if (x < (T)a.imn) a.imn = (i64)x;
    if (x > (T)a.imx) a.imx = (i64)x;
}

__device__ __forceinline__ void acc_i(Acc& a, i64 x, double p) { acc_int(a, x, __ll2double_rn(x), p); }
__device__ __forceinline__ void acc_u(Acc& a, u64 x, double p) { acc_int(a, x, __ull2double_rn(x), p); }

// Folds b into a (both over the same pivot).
__device__ __forceinline__ void acc_merge(Acc& a, const Acc& b, bool unsig) {
    a.count += b.count; a.nan += b.nan; a.inf += b.inf;
    a.sum += b.sum; a.sum2 += b.sum2;
    if (b.mn < a.mn) a.mn = b.mn;
    if (b.mx > a.mx) a.mx = b.mx;
    if (b.fmn < a.fmn) a.fmn = b.fmn;
    if (b.fmx > a.fmx) a.fmx = b.fmx;
    if (unsig) {
        if ((u64)b.imn < (u64)a.imn) a.imn = b.imn;
        if ((u64)b.imx > (u64)a.imx) a.imx = b.imx;
    } else {
        if (b.imn < a.imn) a.imn = b.imn;
        if (b.imx > a.imx) a.imx = b.imx;
    }
}

// The 12 words of a partial: count, nan, inf, pivot, sum, sum2, min, max, fmin, fmax, imin, imax.
__device__ __forceinline__ void acc_write(const Acc& a, double p, u64* w) {
    w[0] = a.count; w[1] = a.nan; w[2] = a.inf; w[3] = d_bits(p);
    w[4] = d_bits(a.sum); w[5] = d_bits(a.sum2); w[6] = d_bits(a.mn); w[7] = d_bits(a.mx);
    w[8] = d_bits(a.fmn); w[9] = d_bits(a.fmx); w[10] = (u64)a.imn; w[11] = (u64)a.imx;
}

__device__ __forceinline__ Acc acc_shfl_down(const Acc& a, u32 o) {
    Acc b;
    b.count = __shfl_down_sync(FULL_MASK, a.count, o);
    b.nan = __shfl_down_sync(FULL_MASK, a.nan, o);
    b.inf = __shfl_down_sync(FULL_MASK, a.inf, o);
    b.sum = __shfl_down_sync(FULL_MASK, a.sum, o);
    b.sum2 = __shfl_down_sync(FULL_MASK, a.sum2, o);
    b.mn = __shfl_down_sync(FULL_MASK, a.mn, o);
    b.mx = __shfl_down_sync(FULL_MASK, a.mx, o);
    b.fmn = __shfl_down_sync(FULL_MASK, a.fmn, o);
    b.fmx = __shfl_down_sync(FULL_MASK, a.fmx, o);
    b.imn = __shfl_down_sync(FULL_MASK, a.imn, o);
    b.imx = __shfl_down_sync(FULL_MASK, a.imx, o);
    return b;
}

// Reduces every thread's `a` in a fixed order (a tree in each warp, then the warps in
// order) and has thread 0 write the 12 words at `w`. Every thread of the block must call it.
__device__ __forceinline__ void acc_reduce(Acc a, bool unsig, double p, Acc* sh, u64* w) {
    for (u32 o = 16; o > 0; o >>= 1) {
        Acc b = acc_shfl_down(a, o);
        acc_merge(a, b, unsig);
    }
    if ((threadIdx.x & 31u) == 0u) sh[threadIdx.x >> 5] = a;
    __syncthreads();
    if (threadIdx.x == 0u) {
        Acc t = sh[0];
        for (u32 k = 1; k < blockDim.x / 32u; k++) acc_merge(t, sh[k], unsig);
        acc_write(t, p, w);
    }
    __syncthreads();
}

// The block's sum of every thread's `v`, in a fixed order; valid in thread 0.
__device__ __forceinline__ u64 sum_reduce(u64 v, u64* sh) {
    for (u32 o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    if ((threadIdx.x & 31u) == 0u) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    u64 t = 0;
    if (threadIdx.x == 0u)
        for (u32 k = 0; k < blockDim.x / 32u; k++) t += sh[k];
    __syncthreads();
    return t;
}

// ---------------------------------------------------------------- histograms

// The slot of a value in a histogram of `bins` bins: its bin (the normative formula, in
// f64), or bins (below), bins + 1 (above), bins + 2 (NaN).
__device__ __forceinline__ u32 bin_code(double v, double lo, double hi, double scale, u32 bins) {
    if (d_is_nan(v)) return bins + 2u;
    if (v < lo) return bins;
    if (v > hi) return bins + 1u;
    double t = floor((v - lo) * scale);
    return t >= (double)(bins - 1u) ? bins - 1u : (u32)t;
}
