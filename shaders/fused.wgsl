// tilestream fused kernel template: one workgroup per block of BLOCK rows of a tile.
// `src/backend/wgsl.rs` fills the `//@NAME` lines with code generated from the query's
// FusedProgram; `lib.wgsl` is appended. Only core WGSL is used: no f16, f64, i64 or
// subgroup capability, and at most 4 storage buffers.

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
// Per block: the counters (selected rows; per statistic count, NaN, +inf, -inf, flag; per
// output NaN, overflow), then per statistic its pivot, sums and min/max keys (14 words).
@group(0) @binding(2) var<storage, read_write> part: array<u32>;
// Histogram counts of the tile, then the output columns (packed per block).
@group(0) @binding(3) var<storage, read_write> atom: array<atomic<u32>>;

const WG: u32 = 256u;
const BLOCK: u32 = 8192u;
const STEPS: u32 = 32u;

//@CONSTS

var<workgroup> wg_cnt: array<atomic<u32>, NCNT>;
var<workgroup> wg_first: array<atomic<u32>, NFIRST>;
var<workgroup> wg_hist: array<atomic<u32>, NLHIST>;
var<workgroup> wg_ballot: array<atomic<u32>, 24>;
var<workgroup> wg_sum: array<vec4<f32>, 256>;
var<workgroup> wg_key: array<vec4<u32>, 256>;

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
fn acc_dd(a: ptr<function, Acc>, d: Dd) {
    if (!d.ok) { (*a).flag = 1u; return; }
    (*a).sum = dd_add((*a).sum, d.v);
    (*a).sq = dd_add((*a).sq, vec2<f32>(d.v.x * d.v.x, 2.0 * d.v.x * d.v.y));
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

// Merges every thread's statistic and writes the block's partial at word q (thread 0
// writes). Called in uniform control flow: it holds workgroup barriers.
fn reduce_stat(a: Acc, piv: vec2<u32>, lid: u32, q: u32) {
    wg_sum[lid] = vec4<f32>(a.sum, a.sq);
    wg_key[lid] = vec4<u32>(a.mn, a.mx);
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            let x = wg_sum[lid];
            let y = wg_sum[lid + w];
            wg_sum[lid] = vec4<f32>(dd_add(x.xy, y.xy), dd_add(x.zw, y.zw));
            let kx = wg_key[lid];
            let ky = wg_key[lid + w];
            wg_key[lid] = vec4<u32>(key_min(kx.xy, ky.xy), key_max(kx.zw, ky.zw));
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let s = wg_sum[0];
        let k = wg_key[0];
        part[q] = piv.x;
        part[q + 1u] = piv.y;
        part[q + 2u] = bitcast<u32>(s.x);
        part[q + 3u] = bitcast<u32>(s.y);
        part[q + 4u] = bitcast<u32>(s.z);
        part[q + 5u] = bitcast<u32>(s.w);
        part[q + 6u] = k.x;
        part[q + 7u] = k.y;
        part[q + 8u] = k.z;
        part[q + 9u] = k.w;
    }
    workgroupBarrier();
    wg_key[lid] = vec4<u32>(a.fmn, a.fmx);
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            let kx = wg_key[lid];
            let ky = wg_key[lid + w];
            wg_key[lid] = vec4<u32>(key_min(kx.xy, ky.xy), key_max(kx.zw, ky.zw));
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let k = wg_key[0];
        part[q + 10u] = k.x;
        part[q + 11u] = k.y;
        part[q + 12u] = k.z;
        part[q + 13u] = k.w;
    }
    workgroupBarrier();
}

// ---------------------------------------------------------------- histograms

fn th_key(t: u32, j: u32) -> vec2<u32> { return vec2<u32>(inp[t + 2u * j], inp[t + 2u * j + 1u]); }
// The slot of key k in a histogram whose thresholds start at word t: a bin, or bins
// (below), bins + 1 (above).
fn hist_slot(k: vec2<u32>, t: u32, bins: u32) -> u32 {
    if (key_lt(k, th_key(t, 0u))) { return bins; }
    if (!key_lt(k, th_key(t, 1u))) { return bins + 1u; }
    var lo = 0u;
    var hi = bins - 1u;
    while (lo < hi) {
        let mid = (lo + hi + 1u) / 2u;
        if (key_lt(k, th_key(t, mid + 1u))) { hi = mid - 1u; } else { lo = mid; }
    }
    return lo;
}
fn hist_add(slot: u32) {
    if (LOCAL_HIST) { atomicAdd(&wg_hist[slot], 1u); } else { atomicAdd(&atom[slot], 1u); }
}

// ---------------------------------------------------------------- generated row program

struct Row {
    mask: bool,
//@ROW_FIELDS
}

fn eval_row(i: u32) -> Row {
    var row: Row;
//@EVAL
    return row;
}

fn write_outputs(row: Row, e: u32) {
//@WRITE
}

// ---------------------------------------------------------------- the kernel

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.x;
    let r0 = block * BLOCK;
    let n = min(BLOCK, params.rows - min(r0, params.rows));
    for (var j = lid; j < NCNT; j = j + WG) { atomicStore(&wg_cnt[j], 0u); }
    for (var j = lid; j < NFIRST; j = j + WG) { atomicStore(&wg_first[j], 0xffffffffu); }
    for (var j = lid; j < NLHIST; j = j + WG) { atomicStore(&wg_hist[j], 0u); }
    if (lid < 24u) { atomicStore(&wg_ballot[lid], 0u); }
    workgroupBarrier();

    // Phase 1: the pivot of each statistic is its first selected finite value in the block.
//@PIVOT_SEARCH
    workgroupBarrier();
//@PIVOT_LOAD

    // Phase 2: one pass over the block's rows.
    var selected = 0u;
    var base = 0u;
    var oc: array<u32, NOC>;
    for (var k = 0u; k < STEPS; k = k + 1u) {
        let j = lid + k * WG;
        let valid = j < n;
        var row: Row;
        if (valid) { row = eval_row(r0 + j); }
        let sel = valid && row.mask;
        if (sel) {
            selected = selected + 1u;
//@ACCUMULATE
        }
//@OUTPUT
    }

    // Phase 3: merge the threads' partials and write the block's.
    atomicAdd(&wg_cnt[0], selected);
//@COUNTERS
    workgroupBarrier();
//@REDUCE
    if (lid == 0u) {
        let pb = block * PART_WORDS;
        for (var c = 0u; c < NCNT; c = c + 1u) { part[pb + c] = atomicLoad(&wg_cnt[c]); }
    }
    if (LOCAL_HIST) {
        for (var j = lid; j < NLHIST; j = j + WG) {
            let c = atomicLoad(&wg_hist[j]);
            if (c != 0u) { atomicAdd(&atom[j], c); }
        }
    }
}
