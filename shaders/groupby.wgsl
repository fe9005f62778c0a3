// tilestream group-by kernel (after common.wgsl): one workgroup per unit of UNIT rows of a
// tile and per sweep of 256 key slots: workgroup (u, s) takes the keys of slots 256 s +
// 0..255 of unit u, and thread `lid` owns slot 256 s + lid. A key's slot is its distance
// from the smallest key or its index among the column's sorted distinct keys (the
// generated `key_code`).
// For each sub-block of SUB rows, every thread evaluates one row and stages its key slot
// (workgroup memory) and its statistic values (a scratch area of the `atom` buffer); then
// each thread walks the sub-block's slots and accumulates the rows of its own key, in row
// order. No float atomics and no sorting: the partials do not depend on scheduling.
//
// Loop trip counts stay far below 65,535 per invocation: Mesa's lavapipe stops every loop
// of an invocation once their iterations together reach that number.

const UNIT: u32 = 65536u;
const SUB: u32 = 256u;

//@CONSTS

// Key slots of a sub-block; 0xffffffff marks a row not selected (or past the end).
var<workgroup> wg_code: array<u32, 256>;

struct Row {
    mask: bool,
    key: vec2<u32>,
//@ROW_FIELDS
}

fn eval_row(i: u32) -> Row {
    var row: Row;
//@EVAL
    return row;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let unit = wid.x;
    let sweep = wid.y;
    let u0 = unit * UNIT;
    let n = min(UNIT, params.rows - min(u0, params.rows));
    let first = vec2<u32>(sweep * WG, 0u);
    let wgi = sweep * params.blocks + unit;
    // This workgroup's scratch: VAL_WORDS words per row of a sub-block.
    let vb = wgi * SUB * VAL_WORDS;
    var rows = 0u;
//@GROUP_DECL
    for (var s0 = 0u; s0 < n; s0 = s0 + SUB) {
        let j = s0 + lid;
        var code = 0xffffffffu;
        if (j < n) {
            let row = eval_row(u0 + j);
            let d = u64_sub(key_code(row.key), first);
            if (row.mask && d.y == 0u && d.x < WG) {
                code = d.x;
                let b = vb + lid * VAL_WORDS;
//@STAGE
            }
        }
        wg_code[lid] = code;
        storageBarrier();
        workgroupBarrier();
        let m = min(SUB, n - s0);
        for (var t = 0u; t < m; t = t + 4u) {
            if (wg_code[t] == lid) {
                let b = vb + t * VAL_WORDS;
                rows = rows + 1u;
//@GROUP_ACC
            }
            if (wg_code[t + 1u] == lid) {
                let b = vb + (t + 1u) * VAL_WORDS;
                rows = rows + 1u;
//@GROUP_ACC
            }
            if (wg_code[t + 2u] == lid) {
                let b = vb + (t + 2u) * VAL_WORDS;
                rows = rows + 1u;
//@GROUP_ACC
            }
            if (wg_code[t + 3u] == lid) {
                let b = vb + (t + 3u) * VAL_WORDS;
                rows = rows + 1u;
//@GROUP_ACC
            }
        }
        storageBarrier();
        workgroupBarrier();
    }
    let q = (wgi * WG + lid) * GROUP_WORDS;
    part[q] = rows;
//@GROUP_WRITE
}
