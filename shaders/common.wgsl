// tilestream kernels, common part: bindings, input access and per-thread statistics.
// `src/backend/wgsl.rs` builds a kernel as this file, then a kernel template (`fused.wgsl`
// or `groupby.wgsl`) with generated code spliced in at its `//@NAME` lines, then
// `lib.wgsl`. Only core WGSL is used: no f16, f64, i64 or subgroup capability, and at most
// 4 storage buffers.

struct Params {
    rows: u32,
    blocks: u32,
    // Always 0: see `opaque` in lib.wgsl.
    zero: u32,
    zero2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// Histogram thresholds, then every input column of the tile, each as little-endian words.
@group(0) @binding(1) var<storage, read> inp: array<u32>;
// Partials. fused.wgsl, per block: the counters (selected rows; per statistic count, NaN,
// +inf, -inf, flag; per output NaN, overflow), then per statistic its pivot, sums and
// min/max keys (14 words). groupby.wgsl, per unit and key slot: rows, then per statistic
// its 5 counters and 14 words.
@group(0) @binding(2) var<storage, read_write> part: array<u32>;
// Histogram counts of the tile, then the output columns (packed per block).
@group(0) @binding(3) var<storage, read_write> atom: array<atomic<u32>>;

const WG: u32 = 256u;

fn half_at(off: u32, i: u32) -> u32 { return (inp[off + (i >> 1u)] >> ((i & 1u) * 16u)) & 0xffffu; }
fn byte_at(off: u32, i: u32) -> u32 { return (inp[off + (i >> 2u)] >> ((i & 3u) * 8u)) & 0xffu; }
fn pair_at(off: u32, i: u32) -> vec2<u32> { return vec2<u32>(inp[off + 2u * i], inp[off + 2u * i + 1u]); }

// ---------------------------------------------------------------- per-thread statistics

struct Acc {
    cnt: u32,
    nan: u32,
    pinf: u32,
    ninf: u32,
    flag: u32,
    sum: vec2<f32>,
    sq: vec2<f32>,
    mn: vec2<u32>,
    mx: vec2<u32>,
    fmn: vec2<u32>,
    fmx: vec2<u32>,
}

fn acc_new() -> Acc {
    let none = vec2<u32>(0xffffffffu, 0xffffffffu);
    let zero = vec2<u32>(0u, 0u);
    return Acc(0u, 0u, 0u, 0u, 0u, vec2<f32>(0.0, 0.0), vec2<f32>(0.0, 0.0), none, zero, none, zero);
}
fn key_lt(a: vec2<u32>, b: vec2<u32>) -> bool { return a.x < b.x || (a.x == b.x && a.y < b.y); }
fn key_min(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> { return select(a, b, key_lt(b, a)); }
fn key_max(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> { return select(a, b, key_lt(a, b)); }

fn acc_key(a: ptr<function, Acc>, k: vec2<u32>, finite: bool) {
    (*a).mn = key_min((*a).mn, k);
    (*a).mx = key_max((*a).mx, k);
    if (finite) {
        (*a).fmn = key_min((*a).fmn, k);
        (*a).fmx = key_max((*a).fmx, k);
    }
}
// Adds x - pivot (as dd) and its square.
// Sums or squares that leave the f32 range (|x - pivot| beyond about 1.8e19) set the flag:
// the host then refuses the result rather than report an overflowed one.
fn acc_dd(a: ptr<function, Acc>, d: Dd) {
    if (!d.ok) { (*a).flag = 1u; return; }
    let sum = dd_add((*a).sum, d.v);
    let sq = dd_add((*a).sq, dd_square(d.v));
    if (!f_is_finite(sum.x) || !f_is_finite(sq.x)) { (*a).flag = 1u; return; }
    (*a).sum = sum;
    (*a).sq = sq;
}
fn acc_f32(a: ptr<function, Acc>, x: f32, p: f32) {
    if (f_is_nan(x)) { (*a).nan = (*a).nan + 1u; return; }
    (*a).cnt = (*a).cnt + 1u;
    let fin = f_is_finite(x);
    acc_key(a, vec2<u32>(f_key(x), 0u), fin);
    if (!fin) {
        if ((bitcast<u32>(x) & 0x80000000u) != 0u) { (*a).ninf = (*a).ninf + 1u; } else { (*a).pinf = (*a).pinf + 1u; }
        return;
    }
    let s = two_sum(x, f_neg(p));
    acc_dd(a, Dd(s, f_is_finite(s.x)));
}
fn acc_f64(a: ptr<function, Acc>, x: vec2<u32>, p: vec2<u32>) {
    if (d_is_nan(x)) { (*a).nan = (*a).nan + 1u; return; }
    (*a).cnt = (*a).cnt + 1u;
    let fin = !d_is_inf(x);
    acc_key(a, d_key(x), fin);
    if (!fin) {
        if ((x.y & 0x80000000u) != 0u) { (*a).ninf = (*a).ninf + 1u; } else { (*a).pinf = (*a).pinf + 1u; }
        return;
    }
    acc_dd(a, d_sub_dd(x, p));
}
fn acc_int(a: ptr<function, Acc>, x: vec2<u32>, p: vec2<u32>, key: vec2<u32>) {
    (*a).cnt = (*a).cnt + 1u;
    acc_key(a, key, true);
    let d = u64_sub(x, p);
    if ((((x.y ^ p.y) & (x.y ^ d.y)) & 0x80000000u) != 0u) { (*a).flag = 1u; return; }
    acc_dd(a, mag_to_dd(i64_abs(d), 0, i64_is_neg(d)));
}
fn acc_i64(a: ptr<function, Acc>, x: vec2<u32>, p: vec2<u32>) { acc_int(a, x, p, i64_key(x)); }
// u64 values at or above 2^63 are flagged: the host then refuses the run (typed error).
fn acc_u64(a: ptr<function, Acc>, x: vec2<u32>, p: vec2<u32>) {
    if ((x.y & 0x80000000u) != 0u) { (*a).flag = 1u; return; }
    acc_int(a, x, p, vec2<u32>(x.y, x.x));
}


// Writes a statistic's 5 counters and 14 words at part[q..q + 19].
fn write_acc(q: u32, a: Acc, piv: vec2<u32>) {
    part[q] = a.cnt;
    part[q + 1u] = a.nan;
    part[q + 2u] = a.pinf;
    part[q + 3u] = a.ninf;
    part[q + 4u] = a.flag;
    part[q + 5u] = piv.x;
    part[q + 6u] = piv.y;
    part[q + 7u] = bitcast<u32>(a.sum.x);
    part[q + 8u] = bitcast<u32>(a.sum.y);
    part[q + 9u] = bitcast<u32>(a.sq.x);
    part[q + 10u] = bitcast<u32>(a.sq.y);
    part[q + 11u] = a.mn.x;
    part[q + 12u] = a.mn.y;
    part[q + 13u] = a.mx.x;
    part[q + 14u] = a.mx.y;
    part[q + 15u] = a.fmn.x;
    part[q + 16u] = a.fmn.y;
    part[q + 17u] = a.fmx.x;
    part[q + 18u] = a.fmx.y;
}
