// tilestream fused kernel (after common.wgsl): one workgroup per block of BLOCK rows of a
// tile, for filters, ungrouped statistics, histograms and output columns.

const BLOCK: u32 = 8192u;
const STEPS: u32 = 32u;

//@CONSTS

var<workgroup> wg_cnt: array<atomic<u32>, NCNT>;
var<workgroup> wg_first: array<atomic<u32>, NFIRST>;
var<workgroup> wg_hist: array<atomic<u32>, NLHIST>;
var<workgroup> wg_ballot: array<atomic<u32>, 24>;
var<workgroup> wg_sum: array<vec4<f32>, 256>;
var<workgroup> wg_key: array<vec4<u32>, 256>;

// Merges every thread's (min key, max key) pair into wg_key[0]. Called in uniform control
// flow: it holds workgroup barriers.
fn reduce_keys(lid: u32, mn: vec2<u32>, mx: vec2<u32>) {
    wg_key[lid] = vec4<u32>(mn, mx);
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            let kx = wg_key[lid];
            let ky = wg_key[lid + w];
            wg_key[lid] = vec4<u32>(key_min(kx.xy, ky.xy), key_max(kx.zw, ky.zw));
        }
        workgroupBarrier();
    }
}

// Merges every thread's statistic and writes the block's partial at word q (thread 0
// writes). Called in uniform control flow: it holds workgroup barriers.
fn reduce_stat(a: Acc, piv: vec2<u32>, lid: u32, q: u32) {
    wg_sum[lid] = vec4<f32>(a.sum, a.sq);
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid < w) {
            let x = wg_sum[lid];
            let y = wg_sum[lid + w];
            wg_sum[lid] = vec4<f32>(dd_add(x.xy, y.xy), dd_add(x.zw, y.zw));
        }
        workgroupBarrier();
    }
    reduce_keys(lid, a.mn, a.mx);
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
    reduce_keys(lid, a.fmn, a.fmx);
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
