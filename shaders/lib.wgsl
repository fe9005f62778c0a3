// tilestream WGSL library: helpers every generated kernel includes.
//
// Rules this file keeps (see DESIGN.md §6):
// - A driver may assume floats are never NaN or inf, so every NaN/inf test and every
//   ordering decision works on the bits (`bitcast<u32>`), never on a float comparison.
// - Core WGSL has no 64-bit types: 64-bit values travel as vec2<u32> (x = low word,
//   y = high word) and are handled with integer arithmetic.
// - It is appended to fused.wgsl, whose `params` uniform it reads (`opaque`).
// - Conversions round to nearest even by integer bit operations, so they give the same
//   bits as the CPU path on every driver (denormals included).

// ---------------------------------------------------------------- f32 bits

fn f_is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn f_is_inf(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u; }
fn f_is_finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) < 0x7f800000u; }
fn f_nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
fn f_inf(neg: bool) -> f32 { return bitcast<f32>(select(0x7f800000u, 0xff800000u, neg)); }

// Order key of a non-NaN f32 as a u32, with -0 equal to +0.
fn f_key(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if (b == 0x80000000u) { b = 0u; }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn f_from_key(k: u32) -> u32 { return select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u); }

fn f_lt(a: f32, b: f32) -> bool { return !f_is_nan(a) && !f_is_nan(b) && f_key(a) < f_key(b); }
fn f_le(a: f32, b: f32) -> bool { return !f_is_nan(a) && !f_is_nan(b) && f_key(a) <= f_key(b); }
fn f_eq(a: f32, b: f32) -> bool { return !f_is_nan(a) && !f_is_nan(b) && f_key(a) == f_key(b); }
fn f_ne(a: f32, b: f32) -> bool { return !f_is_nan(a) && !f_is_nan(b) && f_key(a) != f_key(b); }

fn f_neg(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) ^ 0x80000000u); }
fn f_abs(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) & 0x7fffffffu); }
fn f_min(a: f32, b: f32) -> f32 {
    if (f_is_nan(a) || f_is_nan(b)) { return f_nan(); }
    return select(a, b, f_key(b) < f_key(a));
}
fn f_max(a: f32, b: f32) -> f32 {
    if (f_is_nan(a) || f_is_nan(b)) { return f_nan(); }
    return select(a, b, f_key(b) > f_key(a));
}
// clip: NaN stays NaN; a NaN bound leaves that side open.
fn f_clip(x: f32, lo: f32, hi: f32) -> f32 {
    let v = select(x, lo, f_lt(x, lo));
    return select(v, hi, f_lt(hi, v));
}

// ---------------------------------------------------------------- 64-bit integers

fn u64_add(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
fn u64_neg(a: vec2<u32>) -> vec2<u32> { return u64_add(vec2<u32>(~a.x, ~a.y), vec2<u32>(1u, 0u)); }
fn u64_sub(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> { return u64_add(a, u64_neg(b)); }
fn u64_lt(a: vec2<u32>, b: vec2<u32>) -> bool { return a.y < b.y || (a.y == b.y && a.x < b.x); }
fn u64_is_zero(a: vec2<u32>) -> bool { return (a.x | a.y) == 0u; }
fn u64_shr(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) { return a; }
    if (s < 32u) { return vec2<u32>((a.x >> s) | (a.y << (32u - s)), a.y >> s); }
    if (s < 64u) { return vec2<u32>(a.y >> (s - 32u), 0u); }
    return vec2<u32>(0u, 0u);
}
fn u64_shl(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) { return a; }
    if (s < 32u) { return vec2<u32>(a.x << s, (a.y << s) | (a.x >> (32u - s))); }
    if (s < 64u) { return vec2<u32>(0u, a.x << (s - 32u)); }
    return vec2<u32>(0u, 0u);
}
fn u64_clz(a: vec2<u32>) -> u32 { return select(32u + countLeadingZeros(a.x), countLeadingZeros(a.y), a.y != 0u); }

fn i64_is_neg(a: vec2<u32>) -> bool { return (a.y & 0x80000000u) != 0u; }
fn i64_lt(a: vec2<u32>, b: vec2<u32>) -> bool {
    let ah = bitcast<i32>(a.y);
    let bh = bitcast<i32>(b.y);
    return ah < bh || (ah == bh && a.x < b.x);
}
fn i64_eq(a: vec2<u32>, b: vec2<u32>) -> bool { return a.x == b.x && a.y == b.y; }
fn i64_abs(a: vec2<u32>) -> vec2<u32> { return select(a, u64_neg(a), i64_is_neg(a)); }
fn i64_from_i32(v: i32) -> vec2<u32> { return vec2<u32>(bitcast<u32>(v), select(0u, 0xffffffffu, v < 0)); }
fn i64_from_u32(v: u32) -> vec2<u32> { return vec2<u32>(v, 0u); }
// A u64 as the CPU loads it into an i64 register: values above i64::MAX saturate.
fn i64_from_u64(v: vec2<u32>) -> vec2<u32> {
    return select(v, vec2<u32>(0xffffffffu, 0x7fffffffu), (v.y & 0x80000000u) != 0u);
}
// The order key of an f64's bits (`f64_order_key` on the host), an i64: f64 values compare
// as the floats do (-0 made 0; NaN keys lie outside those of -inf..=inf).
fn f64_order_key(b: vec2<u32>) -> vec2<u32> {
    if ((b.y & 0x80000000u) == 0u) { return b; }
    if (b.x == 0u && b.y == 0x80000000u) { return vec2<u32>(0u, 0u); }
    return vec2<u32>(~b.x, b.y ^ 0x7fffffffu);
}
// Order key (high word first) of an i64.
fn i64_key(a: vec2<u32>) -> vec2<u32> { return vec2<u32>(a.y ^ 0x80000000u, a.x); }

// Unsigned 64-bit magnitude to f32, rounding to nearest even.
fn u64_to_f32_bits(m: vec2<u32>) -> u32 {
    if (u64_is_zero(m)) { return 0u; }
    let top = 63u - u64_clz(m);
    if (top <= 23u) { return bitcast<u32>(f32(m.x)); }
    let shift = top - 23u;
    var q = u64_shr(m, shift).x;
    let rem = u64_sub(m, u64_shl(vec2<u32>(q, 0u), shift));
    let half = u64_shl(vec2<u32>(1u, 0u), shift - 1u);
    if (u64_lt(half, rem) || (i64_eq(rem, half) && (q & 1u) == 1u)) { q = q + 1u; }
    var e = top;
    if (q == 0x1000000u) { q = q >> 1u; e = e + 1u; }
    return ((e + 127u) << 23u) | (q & 0x7fffffu);
}
fn i64_to_f32(a: vec2<u32>) -> f32 {
    let neg = i64_is_neg(a);
    return bitcast<f32>(u64_to_f32_bits(i64_abs(a)) | select(0u, 0x80000000u, neg));
}

// ---------------------------------------------------------------- narrow floats

fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
    if (e == 0u) {
        if (m == 0u) { return bitcast<f32>(sign); }
        // Subnormal: shift the mantissa up until bit 10 is set.
        let shift = countLeadingZeros(m) - 21u;
        let mm = (m << shift) & 0x3ffu;
        return bitcast<f32>(sign | ((113u - shift) << 23u) | (mm << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// f32 to binary16 bits, round to nearest even (the same bits as the `half` crate).
fn f32_to_f16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        let m = a & 0x7fffffu;
        return sign | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    if (a >= 0x47800000u) { return sign | 0x7c00u; }
    if (a >= 0x38800000u) {
        let m = a - 0x38000000u;
        return sign | ((m + 0xfffu + ((m >> 13u) & 1u)) >> 13u);
    }
    if (a < 0x33000000u) { return sign; }
    let e = a >> 23u;
    let mant = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    var q = mant >> shift;
    let rem = mant & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u) == 1u)) { q = q + 1u; }
    return sign | q;
}

// f32 to bfloat16 bits, round to nearest even (the same bits as the `half` crate).
fn f32_to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }
    let r = 0x8000u;
    return (b >> 16u) + select(0u, 1u, (b & r) != 0u && (b & (3u * r - 1u)) != 0u);
}

// ---------------------------------------------------------------- f64 bits

fn d_is_nan(x: vec2<u32>) -> bool {
    let h = x.y & 0x7fffffffu;
    return h > 0x7ff00000u || (h == 0x7ff00000u && x.x != 0u);
}
fn d_is_inf(x: vec2<u32>) -> bool { return (x.y & 0x7fffffffu) == 0x7ff00000u && x.x == 0u; }
// Order key (high word first) of a non-NaN f64, with -0 equal to +0.
fn d_key(x: vec2<u32>) -> vec2<u32> {
    var v = x;
    if (v.y == 0x80000000u && v.x == 0u) { v.y = 0u; }
    if ((v.y & 0x80000000u) != 0u) { return vec2<u32>(~v.y, ~v.x); }
    return vec2<u32>(v.y | 0x80000000u, v.x);
}

// f64 to f32, round to nearest even.
fn d_to_f32(x: vec2<u32>) -> f32 {
    let sign = x.y & 0x80000000u;
    let ah = x.y & 0x7fffffffu;
    let e = ah >> 20u;
    if (e == 0x7ffu) {
        if (((ah & 0xfffffu) | x.x) != 0u) { return bitcast<f32>(sign | 0x7fc00000u | ((ah & 0xfffffu) << 3u) | (x.x >> 29u)); }
        return bitcast<f32>(sign | 0x7f800000u);
    }
    let fe = i32(e) - 896; // the f32 biased exponent
    if (fe >= 255) { return bitcast<f32>(sign | 0x7f800000u); }
    if (fe >= 1) {
        let m23 = ((ah & 0xfffffu) << 3u) | (x.x >> 29u);
        let rest = x.x & 0x1fffffffu;
        var bits = (u32(fe) << 23u) | m23;
        if (rest > 0x10000000u || (rest == 0x10000000u && (m23 & 1u) == 1u)) { bits = bits + 1u; }
        return bitcast<f32>(sign | min(bits, 0x7f800000u));
    }
    if (fe < -23 || e == 0u) { return bitcast<f32>(sign); }
    // A subnormal f32: the 53-bit mantissa in units of 2^-149.
    let m = vec2<u32>(x.x, (ah & 0xfffffu) | 0x100000u);
    let shift = u32(30 - fe);
    var q = u64_shr(m, shift).x;
    let rem = u64_sub(m, u64_shl(vec2<u32>(q, 0u), shift));
    let half = u64_shl(vec2<u32>(1u, 0u), shift - 1u);
    if (u64_lt(half, rem) || (i64_eq(rem, half) && (q & 1u) == 1u)) { q = q + 1u; }
    return bitcast<f32>(sign | q);
}

// f64 to f32 rounded to odd (truncated, the last bit set when inexact; ±f32 max beyond the
// range): rounded on to f16 or bf16 to nearest even, it gives the f64's own nearest value,
// where two roundings to nearest may not (`f32_round_odd` on the host).
fn d_to_f32_odd(x: vec2<u32>) -> f32 {
    let f = d_to_f32(x);
    if (d_is_nan(x)) { return f; }
    let back = f_to_d(f);
    if (back.x == x.x && back.y == x.y) { return f; }
    var b = bitcast<u32>(f);
    if (u64_lt(vec2<u32>(x.x, x.y & 0x7fffffffu), vec2<u32>(back.x, back.y & 0x7fffffffu))) { b = b - 1u; }
    return bitcast<f32>(b | 1u);
}

// An f32 as f64 bits (exact).
fn f_to_d(x: f32) -> vec2<u32> {
    let b = bitcast<u32>(x);
    let sign = b & 0x80000000u;
    let a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) { return vec2<u32>((a & 0x7u) << 29u, sign | 0x7ff00000u | ((a & 0x7fffffu) >> 3u)); }
    if (a == 0u) { return vec2<u32>(0u, sign); }
    var e = i32(a >> 23u);
    var m = a & 0x7fffffu;
    if (e == 0) {
        let shift = countLeadingZeros(m) - 8u;
        m = (m << shift) & 0x7fffffu;
        e = 1 - i32(shift);
    }
    return vec2<u32>(m << 29u, sign | (u32(e + 896) << 20u) | (m >> 3u));
}

// An unsigned 64-bit integer as f64 bits (truncating beyond 53 significant bits).
fn u64_to_d(m: vec2<u32>) -> vec2<u32> {
    if (u64_is_zero(m)) { return vec2<u32>(0u, 0u); }
    let top = 63u - u64_clz(m);
    let n = u64_shl(m, 63u - top); // MSB at bit 63
    let frac = u64_shr(n, 11u);    // 53 bits with the hidden bit at 52
    return vec2<u32>(frac.x, ((top + 1023u) << 20u) | (frac.y & 0xfffffu));
}
fn i64_to_d(a: vec2<u32>) -> vec2<u32> {
    let d = u64_to_d(i64_abs(a));
    return vec2<u32>(d.x, d.y | (a.y & 0x80000000u));
}

// ---------------------------------------------------------------- double-f32 (dd)
// A dd value is hi + lo with |lo| <= ulp(hi)/2; sums carry about 48 bits.

// Compilers may treat float ops as real-number algebra (Mesa's NIR turns (a + b) - a into b
// unless an op is marked exact, and naga marks none), which would erase the rounding
// errors these functions capture. `opaque` hides a value behind an XOR with a uniform
// zero (`params.zero`, set by the host), so no such rewrite can see through it.
fn opaque(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) ^ params.zero); }
// The same with a second uniform zero: `opaque(x) - opaque2(x)` is not provably x - x, so
// inf - inf stays NaN and x * 0 stays NaN for x = inf, as IEEE arithmetic (and the CPU) says.
fn opaque2(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) ^ params.zero2); }

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = opaque(s - a);
    return vec2<f32>(s, (a - opaque(s - bb)) + (b - bb));
}
fn dd_add(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let s = two_sum(a.x, b.x);
    let e = s.y + (a.y + b.y);
    let h = opaque(s.x + e);
    return vec2<f32>(h, e - opaque(h - s.x));
}
// The square of a dd value as dd: hi^2 exactly (Veltkamp's split into two 12-bit halves
// makes every partial product exact in f32), plus 2 hi lo. Squares of values far from the
// pivot then lose nothing before Σd² - (Σd)²/n cancels.
fn dd_square(d: vec2<f32>) -> vec2<f32> {
    if (!f_lt(f_abs(d.x), 1e30)) { return vec2<f32>(d.x * d.x, 2.0 * d.x * d.y); }
    let c = opaque(4097.0 * d.x);
    let hi = opaque(c - opaque(c - d.x));
    let lo = opaque2(d.x - hi);
    let s = two_sum(hi * hi, 2.0 * hi * lo);
    return dd_add(s, vec2<f32>(lo * lo, 2.0 * d.x * d.y));
}
// An unsigned 64-bit magnitude times 2^e as dd, truncated to 48 bits. `ok` is false when
// the value is beyond the f32 range.
struct Dd { v: vec2<f32>, ok: bool }
fn mag_to_dd(m: vec2<u32>, e: i32, neg: bool) -> Dd {
    if (u64_is_zero(m)) { return Dd(vec2<f32>(0.0, 0.0), true); }
    let lz = u64_clz(m);
    let n = u64_shl(m, lz);
    let h24 = n.y >> 8u;
    let l24 = ((n.y & 0xffu) << 16u) | (n.x >> 16u);
    let eh = e + 63 - i32(lz); // exponent of the leading bit
    if (eh > 127) { return Dd(vec2<f32>(0.0, 0.0), false); }
    let s = select(1.0, -1.0, neg);
    return Dd(vec2<f32>(s * ldexp(f32(h24), eh - 23), s * ldexp(f32(l24), eh - 47)), true);
}
// Finite f64 x - y, exactly to 48 bits, as dd.
fn d_sub_dd(x: vec2<u32>, y: vec2<u32>) -> Dd {
    let ex = i32((x.y >> 20u) & 0x7ffu);
    let ey = i32((y.y >> 20u) & 0x7ffu);
    // Mantissas shifted up by 10 bits (63 bits used), value = m * 2^(e - 1085).
    var mx = u64_shl(vec2<u32>(x.x, (x.y & 0xfffffu) | select(0x100000u, 0u, ex == 0)), 10u);
    var my = u64_shl(vec2<u32>(y.x, (y.y & 0xfffffu) | select(0x100000u, 0u, ey == 0)), 10u);
    let ax = max(ex, 1);
    let ay = max(ey, 1);
    var e = ax;
    if (ax >= ay) { my = u64_shr(my, u32(min(ax - ay, 64))); } else { mx = u64_shr(mx, u32(min(ay - ax, 64))); e = ay; }
    let nx = (x.y & 0x80000000u) != 0u;
    let ny = (y.y & 0x80000000u) == 0u; // the sign of -y
    if (nx == ny) { return mag_to_dd(u64_add(mx, my), e - 1085, nx); }
    if (u64_lt(mx, my)) { return mag_to_dd(u64_sub(my, mx), e - 1085, ny); }
    return mag_to_dd(u64_sub(mx, my), e - 1085, nx);
}

// ---------------------------------------------------------------- libm in f32
// Own forms so that every driver gives the same few-ulp results (WGSL's built-in log is
// only accurate to 2^-21 absolute near 1).

const LN2_HI: f32 = 0.693145751953125;
const LN2_LO: f32 = 1.428606765330187e-06;

// 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 0.172.
fn atanh2(s: f32) -> f32 {
    let z = s * s;
    let p = z * (0.33333334 + z * (0.2 + z * (0.14285715 + z * (0.11111111 + z * 0.09090909))));
    return 2.0 * s + 2.0 * s * p;
}
fn f_log(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    if (f_is_nan(x) || ((b & 0x80000000u) != 0u && (b & 0x7fffffffu) != 0u)) { return f_nan(); }
    if ((b & 0x7fffffffu) == 0u) { return f_inf(true); }
    if (b == 0x7f800000u) { return x; }
    var e = i32(b >> 23u) - 127;
    var m = b & 0x7fffffu;
    if ((b >> 23u) == 0u) { // subnormal
        let shift = countLeadingZeros(m) - 8u;
        m = (m << shift) & 0x7fffffu;
        e = -126 - i32(shift);
    }
    var f = bitcast<f32>(m | 0x3f800000u); // [1, 2)
    if (f > 1.4142135) { f = f * 0.5; e = e + 1; }
    let s = (f - 1.0) / (f + 1.0);
    let fe = f32(e);
    return fe * LN2_HI + (atanh2(s) + fe * LN2_LO);
}
fn f_log1p(x: f32) -> f32 {
    if (f_is_nan(x) || f_lt(x, -1.0)) { return f_nan(); }
    if (f_eq(x, -1.0)) { return f_inf(true); }
    if (bitcast<u32>(x) == 0x7f800000u) { return x; }
    if (f_lt(f_abs(x), 0.41421357)) {
        if (f_lt(f_abs(x), 1e-30)) { return x; }
        return atanh2(x / (2.0 + x));
    }
    return f_log(1.0 + x);
}
fn f_exp(x: f32) -> f32 {
    if (f_is_nan(x)) { return x; }
    if (f_lt(88.72284, x)) { return f_inf(false); }
    if (f_lt(x, -103.97208)) { return 0.0; }
    let k = round(x * 1.442695);
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.16666667 + r * (0.041666668 + r * (0.008333334 + r * (0.0013888889 + r * 0.0001984127))))));
    let ki = i32(k);
    // Scale by 2^k in two steps so that neither factor leaves the normal range.
    let k1 = ki / 2;
    return (p * bitcast<f32>(u32(k1 + 127) << 23u)) * bitcast<f32>(u32(ki - k1 + 127) << 23u);
}
// Correctly rounded square root by integer arithmetic.
fn f_sqrt(x: f32) -> f32 {
    let b = bitcast<u32>(x);
    if (f_is_nan(x)) { return x; }
    if ((b & 0x7fffffffu) == 0u) { return x; }
    if ((b & 0x80000000u) != 0u) { return f_nan(); }
    if (b == 0x7f800000u) { return x; }
    var e = i32(b >> 23u) - 127;
    var m = b & 0x7fffffu;
    if ((b >> 23u) == 0u) {
        let shift = countLeadingZeros(m) - 8u;
        m = (m << shift) & 0x7fffffu;
        e = -126 - i32(shift);
    }
    m = m | 0x800000u; // value = m * 2^(e - 23)
    // Make the exponent even; then sqrt = sqrt(m * 2^(k)) * 2^((e - 23 - k) / 2).
    // The radicand m << sh (sh = 24 or 25, making e - 23 - sh even) has 48..49 bits, so its
    // root has 24..25 bits.
    var sh = 24u;
    if (((e - 23) & 1) != 0) { sh = 25u; }
    let rad = u64_shl(vec2<u32>(m, 0u), sh);
    // Bit-by-bit integer square root of a 64-bit radicand.
    var rem = vec2<u32>(0u, 0u);
    var root = 0u;
    for (var i = 0u; i < 32u; i = i + 1u) {
        let two = u64_shr(rad, 62u - 2u * i) ;
        rem = u64_add(u64_shl(rem, 2u), vec2<u32>(two.x & 3u, 0u));
        let trial = u64_add(u64_shl(vec2<u32>(root, 0u), 2u), vec2<u32>(1u, 0u));
        root = root << 1u;
        if (!u64_lt(rem, trial)) { rem = u64_sub(rem, trial); root = root | 1u; }
    }
    // root = floor(sqrt(rad)), 24..25 bits; round with the remainder.
    let exact = u64_is_zero(rem);
    let top = 31u - countLeadingZeros(root);
    let drop = top - 23u;
    var q = root >> drop;
    var up = false;
    if (drop == 1u) {
        let lowbit = root & 1u;
        up = lowbit == 1u && (!exact || (q & 1u) == 1u);
    } else {
        // drop == 0: the next bit decides: sqrt(rad) > root + 1/2 <=> rem > root.
        up = u64_lt(vec2<u32>(root, 0u), rem);
    }
    if (up) { q = q + 1u; }
    var re = (e - 23 - i32(sh)) / 2 + i32(drop) + 23;
    if (q == 0x1000000u) { q = q >> 1u; re = re + 1; }
    return bitcast<f32>((u32(re + 127) << 23u) | (q & 0x7fffffu));
}

// Correctly rounded division by integer long division.
fn f_div(a: f32, b: f32) -> f32 {
    let ba = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    let sign = (ba ^ bb) & 0x80000000u;
    if (f_is_nan(a) || f_is_nan(b)) { return f_nan(); }
    let aa = ba & 0x7fffffffu;
    let ab = bb & 0x7fffffffu;
    if (aa == 0x7f800000u) {
        if (ab == 0x7f800000u) { return f_nan(); }
        return bitcast<f32>(sign | 0x7f800000u);
    }
    if (ab == 0x7f800000u) { return bitcast<f32>(sign); }
    if (ab == 0u) {
        if (aa == 0u) { return f_nan(); }
        return bitcast<f32>(sign | 0x7f800000u);
    }
    if (aa == 0u) { return bitcast<f32>(sign); }
    // Normalized 24-bit mantissas and exponents (value = m * 2^(e - 23)).
    var ea = i32(aa >> 23u);
    var ma = aa & 0x7fffffu;
    if (ea == 0) { let s = countLeadingZeros(ma) - 8u; ma = ma << s; ea = 1 - i32(s); } else { ma = ma | 0x800000u; }
    var eb = i32(ab >> 23u);
    var mb = ab & 0x7fffffu;
    if (eb == 0) { let s = countLeadingZeros(mb) - 8u; mb = mb << s; eb = 1 - i32(s); } else { mb = mb | 0x800000u; }
    // Make ma/mb lie in [1, 2); then the 26-bit quotient q = floor((ma << 25) / mb) comes
    // from restoring division (the remainder stays below 2 * mb < 2^25), and the result's
    // leading bit is 2^(ea - eb).
    if (ma < mb) { ma = ma << 1u; ea = ea - 1; }
    var q = 0u;
    var r = ma;
    for (var i = 0u; i < 26u; i = i + 1u) {
        q = q << 1u;
        if (r >= mb) { r = r - mb; q = q | 1u; }
        r = r << 1u;
    }
    let sticky = r != 0u;
    var be = ea - eb + 127;
    var shift = 2u; // 24 bits kept of 26
    if (be <= 0) {
        let extra = u32(1 - be);
        if (extra > 28u) { return bitcast<f32>(sign); }
        shift = shift + extra;
        be = 0;
    }
    var kept = q >> shift;
    let lost = q & ((1u << shift) - 1u);
    let halfw = 1u << (shift - 1u);
    if (lost > halfw || (lost == halfw && (sticky || (kept & 1u) == 1u))) { kept = kept + 1u; }
    // A subnormal that rounds up into bit 23 is the smallest normal, encoded the same way.
    if (be == 0) { return bitcast<f32>(sign | kept); }
    if (kept == 0x1000000u) { kept = kept >> 1u; be = be + 1; }
    if (be >= 255) { return bitcast<f32>(sign | 0x7f800000u); }
    return bitcast<f32>(sign | (u32(be) << 23u) | (kept & 0x7fffffu));
}

// ---------------------------------------------------------------- fitted scalings
// (x - m) * inv with m given as three f32s (m.x + m.y + m.z) and inv as dd: x - m is exact
// to about 48 bits, so large means with small spreads keep their precision.
fn scale_f32(x: f32, m: vec3<f32>, inv: vec2<f32>) -> f32 {
    if (!f_is_finite(x)) { return opaque(x) * opaque2(inv.x); }
    let d = dd_add(two_sum(x, f_neg(m.x)), vec2<f32>(f_neg(m.y), f_neg(m.z)));
    return d.x * inv.x + (d.x * inv.y + d.y * inv.x);
}
// The same for a value given as f64 bits, with m as f64 bits.
fn scale_d(x: vec2<u32>, m: vec2<u32>, inv: vec2<f32>) -> f32 {
    if (d_is_nan(x)) { return f_nan(); }
    if (d_is_inf(x)) { return opaque(f_inf((x.y & 0x80000000u) != 0u)) * opaque2(inv.x); }
    let d = d_sub_dd(x, m);
    if (!d.ok) {
        let neg = (d_key(x).x < d_key(m).x) != (inv.x < 0.0);
        return f_inf(neg);
    }
    return d.v.x * inv.x + (d.v.x * inv.y + d.v.y * inv.x);
}
