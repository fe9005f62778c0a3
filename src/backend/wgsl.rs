//! WGSL code generation: a [`FusedProgram`] becomes one compute kernel, the template
//! `shaders/fused.wgsl` with the row program spliced in, followed by `shaders/lib.wgsl`.
//!
//! One workgroup handles one block of [`BLOCK_ROWS`] rows and writes one partial per
//! block, so the driver merges GPU partials exactly as it merges the CPU's.

use std::fmt::Write as _;

use crate::accum::{Outside, bin_of, bin_scale};
use crate::backend::KeySlots;
use crate::backend::cpu::is_raw_copy;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{Cmp, Op, VType};
use crate::program::{FusedProgram, HistSpec, Instr, OutSpec, Scale, Source, Value};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const FUSED: &str = include_str!("../../shaders/fused.wgsl");
const GROUPBY: &str = include_str!("../../shaders/groupby.wgsl");
const LIBRARY: &str = include_str!("../../shaders/lib.wgsl");

/// Key slots of the group-by kernel: one per thread of a workgroup.
pub(crate) const GROUP_SLOTS: u64 = 256;

/// Counters per statistic in a block partial: count, NaN, +inf, -inf, flag.
pub(crate) const STAT_COUNTERS: u64 = 5;
/// Words per statistic after the counters: pivot, sum, sum of squares, min, max, finite
/// min, finite max (two words each).
pub(crate) const STAT_WORDS: u64 = 14;
/// Histogram slots (bins + below, above, NaN) that fit in workgroup memory.
const LOCAL_HIST_SLOTS: u64 = 1024;
/// The most bins a histogram may have on wgpu (its thresholds are searched on the host).
pub(crate) const MAX_BINS: u32 = 65_536;

/// How a statistic's or histogram's values are represented in the kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Domain {
    /// f32 (also f16 and bf16 inputs, exactly).
    F32,
    /// f64, as two words.
    F64,
    /// Signed integers (every integer dtype but u64, and booleans), as an i64 in two words.
    Int,
    /// u64, as two words.
    U64,
}

impl Domain {
    fn wgsl_type(self) -> &'static str {
        if self == Domain::F32 { "f32" } else { "vec2<u32>" }
    }
    fn zero(self) -> &'static str {
        if self == Domain::F32 { "0.0" } else { "vec2<u32>(0u, 0u)" }
    }
    /// A WGSL expression: is `x` neither NaN nor infinite.
    fn finite(self, x: &str) -> String {
        match self {
            Domain::F32 => format!("f_is_finite({x})"),
            Domain::F64 => format!("(!d_is_nan({x}) && !d_is_inf({x}))"),
            Domain::Int | Domain::U64 => "true".to_string(),
        }
    }
    fn is_nan(self, x: &str) -> String {
        match self {
            Domain::F32 => format!("f_is_nan({x})"),
            Domain::F64 => format!("d_is_nan({x})"),
            Domain::Int | Domain::U64 => "false".to_string(),
        }
    }
    /// The order key (vec2<u32>, high word first) of a non-NaN value.
    fn key(self, x: &str) -> String {
        match self {
            Domain::F32 => format!("vec2<u32>(f_key({x}), 0u)"),
            Domain::F64 => format!("d_key({x})"),
            Domain::Int => format!("i64_key({x})"),
            Domain::U64 => format!("vec2<u32>({x}.y, {x}.x)"),
        }
    }
    /// The value of a 64-bit order key, as the CPU path sees it (f64).
    pub(crate) fn key_value(self, k: u64) -> f64 {
        match self {
            Domain::F32 => f32::from_bits(f32_from_key((k >> 32) as u32)) as f64,
            Domain::F64 => f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k }),
            Domain::Int => ((k ^ (1 << 63)) as i64) as f64,
            Domain::U64 => k as f64,
        }
    }
    /// The exact integer of a key of an integer domain.
    pub(crate) fn key_int(self, k: u64) -> i128 {
        match self {
            Domain::U64 => k as i128,
            _ => ((k ^ (1 << 63)) as i64) as i128,
        }
    }
    /// The range of keys of non-NaN values.
    fn key_range(self) -> (u64, u64) {
        match self {
            Domain::F32 => ((0x007f_ffffu64) << 32, (0xff80_0000u64) << 32),
            Domain::F64 => (0x000f_ffff_ffff_ffff, 0xfff0_0000_0000_0000),
            Domain::Int | Domain::U64 => (0, u64::MAX),
        }
    }
}

/// The f32 bits of an f32 order key (the inverse of `f_key` in lib.wgsl).
pub(crate) fn f32_from_key(k: u32) -> u32 {
    if k & 0x8000_0000 != 0 { k & 0x7fff_ffff } else { !k }
}

/// A generated kernel and where everything lives in its buffers (all offsets in 32-bit words).
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// The WGSL source.
    pub source: String,
    /// Offset of each input slot's column in the input buffer.
    pub slot_offsets: Vec<u64>,
    /// Size of the input buffer.
    pub inp_words: u64,
    /// Words at the start of the input buffer: histogram thresholds, or a group-by's table
    /// of keys.
    pub thresholds: Vec<u32>,
    /// Words per block partial.
    pub part_words: u64,
    /// Counters at the start of each block partial.
    pub counters: u64,
    /// Domain of each statistic.
    pub stat_domains: Vec<Domain>,
    /// Offset of each histogram's counts in the atomic buffer.
    pub hist_offsets: Vec<u64>,
    /// Offset of each output column in the atomic buffer.
    pub out_offsets: Vec<u64>,
    /// Size of the atomic buffer.
    pub atom_words: u64,
    /// For a group-by: the keys of its slots (slot s of sweep w is number `256 w + s`).
    pub group_keys: Option<KeySlots>,
    /// For a group-by: sweeps of 256 keys per unit (the second dispatch dimension).
    pub sweeps: u64,
}

/// `COMMON`, then `template` with its `//@NAME` lines replaced, then `LIBRARY`.
fn assemble(template: &str, pieces: &[(&str, &str)]) -> String {
    let mut src = String::with_capacity(COMMON.len() + template.len() + LIBRARY.len() + 4096);
    src.push_str(COMMON);
    for line in template.lines() {
        match pieces.iter().find(|(name, _)| line.trim() == *name) {
            Some((_, piece)) => src.push_str(piece),
            None => {
                src.push_str(line);
                src.push('\n');
            }
        }
    }
    src.push_str(LIBRARY);
    src
}

fn words(rows: u64, dtype: DType) -> u64 {
    (rows * dtype.size() as u64).div_ceil(4)
}

/// The offset of each input column after `start` words, for tiles of `cap_rows` rows, and
/// the words used in all.
fn column_offsets(dtypes: &[DType], cap_rows: u64, start: u64) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(dtypes.len());
    let mut at = start;
    for &d in dtypes {
        offsets.push(at);
        at += words(cap_rows, d);
    }
    (offsets, at.max(1))
}

/// A group-by's `key_code` over a table of `KEY_COUNT` sorted order keys at the start of
/// the input buffer.
const KEY_SEARCH: &str = "fn table_key(j: u32) -> vec2<u32> { return vec2<u32>(inp[2u * j], inp[2u * j + 1u]); }
// Key k's slot: its index in the table (a binary search), or all ones for a key not there
// (none: the host read the table from the whole column).
fn key_code(k: vec2<u32>) -> vec2<u32> {
    let o = i64_key(k);
    var lo = 0u;
    var hi = KEY_COUNT;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (key_lt(table_key(mid), o)) { lo = mid + 1u; } else { hi = mid; }
    }
    if (lo < KEY_COUNT && all(table_key(lo) == o)) { return vec2<u32>(lo, 0u); }
    return vec2<u32>(0xffffffffu, 0xffffffffu);
}
";

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported(format!("{} on the wgpu backend", what.into()))
}

/// Generates the kernel of `prog` over columns of `dtypes` (one per input slot), for tiles
/// of `cap_rows` rows. A group-by on a key wider than 8 bits needs `keys`.
pub(crate) fn generate_with_keys(prog: &FusedProgram, dtypes: &[DType], cap_rows: u64, keys: Option<KeySlots>) -> Result<Kernel> {
    let g = Gen { prog, dtypes };
    if let Some(key) = prog.key {
        return g.group_by(key, cap_rows, keys);
    }
    let s = prog.stats.len() as u64;
    let o = prog.outputs.len() as u64;
    let counters = 1 + STAT_COUNTERS * s + 2 * o;
    let part_words = counters + STAT_WORDS * s;

    // Input buffer: thresholds, then columns.
    let mut thresholds = Vec::new();
    let mut hist_th = Vec::new();
    let mut hist_domains = Vec::new();
    for h in &prog.hists {
        if h.bins > MAX_BINS {
            return Err(unsupported(format!("a histogram of more than {MAX_BINS} bins")));
        }
        let dom = g.domain(h.source)?;
        hist_th.push(thresholds.len() as u64);
        hist_domains.push(dom);
        thresholds.extend(histogram_thresholds(h, dom));
    }
    let (slot_offsets, inp_words) = column_offsets(dtypes, cap_rows, thresholds.len() as u64);

    // Atomic buffer: histogram counts, then output columns.
    let mut hist_offsets = Vec::new();
    let mut at = 0u64;
    for h in &prog.hists {
        hist_offsets.push(at);
        at += h.bins as u64 + 3;
    }
    let hist_words = at;
    let local_hist = hist_words > 0 && hist_words <= LOCAL_HIST_SLOTS;
    let mut out_offsets = Vec::new();
    for spec in &prog.outputs {
        out_offsets.push(at);
        at += words(cap_rows, spec.dtype);
    }
    let atom_words = at.max(1);

    let mut stat_domains = Vec::new();
    let mut fields = String::new();
    let mut eval = g.row_prelude(&slot_offsets)?;
    for (i, src) in prog.stats.iter().enumerate() {
        let (dom, e) = g.source_value_at(*src, &slot_offsets)?;
        stat_domains.push(dom);
        let _ = writeln!(fields, "    s{i}: {},", dom.wgsl_type());
        let _ = writeln!(eval, "    row.s{i} = {e};");
    }
    for (i, h) in prog.hists.iter().enumerate() {
        let (dom, e) = g.source_value_at(h.source, &slot_offsets)?;
        let _ = writeln!(fields, "    h{i}: {},", dom.wgsl_type());
        let _ = writeln!(eval, "    row.h{i} = {e};");
    }
    let mut write = String::new();
    for (i, spec) in prog.outputs.iter().enumerate() {
        let _ = writeln!(fields, "    o{i}: vec2<u32>,\n    o{i}n: bool,\n    o{i}v: bool,");
        eval.push_str(&g.output(i, spec, &slot_offsets)?);
        let off = out_offsets[i];
        let _ = match spec.dtype.size() {
            8 => writeln!(
                write,
                "    atomicStore(&atom[{off}u + 2u * e], row.o{i}.x);\n    atomicStore(&atom[{off}u + 2u * e + 1u], row.o{i}.y);"
            ),
            4 => writeln!(write, "    atomicStore(&atom[{off}u + e], row.o{i}.x);"),
            2 => writeln!(write, "    atomicOr(&atom[{off}u + (e >> 1u)], (row.o{i}.x & 0xffffu) << ((e & 1u) * 16u));"),
            _ => writeln!(write, "    atomicOr(&atom[{off}u + (e >> 2u)], (row.o{i}.x & 0xffu) << ((e & 3u) * 8u));"),
        };
    }

    // Phase 1 and the pivots.
    let mut search = String::new();
    let mut pivots = String::new();
    if s > 0 {
        let _ = writeln!(search, "    {{\n        var todo = {s}u;");
        for i in 0..s {
            let _ = writeln!(search, "        var f{i} = false;");
        }
        search.push_str(
            "        for (var k = 0u; k < STEPS; k = k + 1u) {\n            let j = lid + k * WG;\n            if (j >= n || todo == 0u) { break; }\n            let row = eval_row(r0 + j);\n            if (row.mask) {\n",
        );
        for (i, dom) in stat_domains.iter().enumerate() {
            let _ = writeln!(
                search,
                "                if (!f{i} && {}) {{ f{i} = true; todo = todo - 1u; atomicMin(&wg_first[{i}], j); }}",
                dom.finite(&format!("row.s{i}"))
            );
        }
        search.push_str("            }\n        }\n    }\n");
        for (i, dom) in stat_domains.iter().enumerate() {
            let _ = writeln!(
                pivots,
                "    let j{i} = atomicLoad(&wg_first[{i}]);\n    var p{i}: {} = {};\n    if (j{i} != 0xffffffffu) {{ p{i} = eval_row(r0 + j{i}).s{i}; }}\n    var a{i} = acc_new();",
                dom.wgsl_type(),
                dom.zero()
            );
        }
    }

    // Phase 2: accumulate selected rows.
    let mut acc = String::new();
    for (i, dom) in stat_domains.iter().enumerate() {
        let _ = writeln!(acc, "            {}(&a{i}, row.s{i}, p{i});", acc_fn(*dom));
    }
    for (i, h) in prog.hists.iter().enumerate() {
        let dom = hist_domains[i];
        let x = format!("row.h{i}");
        let _ = writeln!(
            acc,
            "            if ({}) {{ hist_add({}u); }} else {{ hist_add({}u + hist_slot({}, {}u, {}u)); }}",
            dom.is_nan(&x),
            hist_offsets[i] + h.bins as u64 + 2,
            hist_offsets[i],
            dom.key(&x),
            hist_th[i],
            h.bins
        );
    }
    for i in 0..o {
        let _ = writeln!(acc, "            if (row.o{i}n) {{ oc[{}] = oc[{}] + 1u; }}", 2 * i, 2 * i);
        let _ = writeln!(acc, "            if (row.o{i}v) {{ oc[{}] = oc[{}] + 1u; }}", 2 * i + 1, 2 * i + 1);
    }
    let mut output = String::new();
    if o > 0 {
        if prog.mask.is_some() {
            output.push_str(
                "        // Rows are written packed, in row order: a ballot gives each selected row its place.
        let buf = k % 3u;
        if (sel) { atomicOr(&wg_ballot[buf * 8u + (lid >> 5u)], 1u << (lid & 31u)); }
        workgroupBarrier();
        var before = 0u;
        var total = 0u;
        for (var w = 0u; w < 8u; w = w + 1u) {
            let bits = atomicLoad(&wg_ballot[buf * 8u + w]);
            total = total + countOneBits(bits);
            if (w < (lid >> 5u)) { before = before + countOneBits(bits); }
        }
        before = before + countOneBits(atomicLoad(&wg_ballot[buf * 8u + (lid >> 5u)]) & ((1u << (lid & 31u)) - 1u));
        if (lid < 8u) { atomicStore(&wg_ballot[((k + 2u) % 3u) * 8u + lid], 0u); }
        if (sel) { write_outputs(row, r0 + base + before); }
        base = base + total;
",
            );
        } else {
            output.push_str("        if (sel) { write_outputs(row, r0 + j); }\n");
        }
    }

    // Phase 3: counters and reductions.
    let mut counters_code = String::new();
    for i in 0..s {
        let c = 1 + STAT_COUNTERS * i;
        for (k, field) in ["cnt", "nan", "pinf", "ninf"].iter().enumerate() {
            let _ = writeln!(counters_code, "    if (a{i}.{field} != 0u) {{ atomicAdd(&wg_cnt[{}u], a{i}.{field}); }}", c + k as u64);
        }
        let _ = writeln!(counters_code, "    if (a{i}.flag != 0u) {{ atomicOr(&wg_cnt[{}u], 1u); }}", c + 4);
    }
    for i in 0..o {
        let c = 1 + STAT_COUNTERS * s + 2 * i;
        let _ = writeln!(counters_code, "    if (oc[{}] != 0u) {{ atomicAdd(&wg_cnt[{c}u], oc[{}]); }}", 2 * i, 2 * i);
        let _ = writeln!(counters_code, "    if (oc[{}] != 0u) {{ atomicAdd(&wg_cnt[{}u], oc[{}]); }}", 2 * i + 1, c + 1, 2 * i + 1);
    }
    let mut reduce = String::new();
    for (i, dom) in stat_domains.iter().enumerate() {
        let piv = if *dom == Domain::F32 { format!("vec2<u32>(bitcast<u32>(p{i}), 0u)") } else { format!("p{i}") };
        let _ = writeln!(reduce, "    reduce_stat(a{i}, {piv}, lid, block * PART_WORDS + {}u);", counters + STAT_WORDS * i as u64);
    }

    let consts = format!(
        "const NCNT: u32 = {counters}u;\nconst PART_WORDS: u32 = {part_words}u;\nconst NFIRST: u32 = {}u;\nconst NLHIST: u32 = {}u;\nconst LOCAL_HIST: bool = {local_hist};\nconst NOC: u32 = {}u;",
        s.max(1),
        if local_hist { hist_words } else { 1 },
        (2 * o).max(1)
    );
    let src = assemble(
        FUSED,
        &[
            ("//@CONSTS", &consts),
            ("//@ROW_FIELDS", &fields),
            ("//@EVAL", &eval),
            ("//@WRITE", &write),
            ("//@PIVOT_SEARCH", &search),
            ("//@PIVOT_LOAD", &pivots),
            ("//@ACCUMULATE", &acc),
            ("//@OUTPUT", &output),
            ("//@COUNTERS", &counters_code),
            ("//@REDUCE", &reduce),
        ],
    );
    Ok(Kernel {
        source: src,
        slot_offsets,
        inp_words,
        thresholds,
        part_words,
        counters,
        stat_domains,
        hist_offsets,
        out_offsets,
        atom_words,
        group_keys: None,
        sweeps: 1,
    })
}

/// The per-thread accumulate function of a domain.
fn acc_fn(dom: Domain) -> &'static str {
    match dom {
        Domain::F32 => "acc_f32",
        Domain::F64 => "acc_f64",
        Domain::Int => "acc_i64",
        Domain::U64 => "acc_u64",
    }
}

struct Gen<'a> {
    prog: &'a FusedProgram,
    dtypes: &'a [DType],
}

fn f32_lit(v: f32) -> String {
    format!("bitcast<f32>(0x{:08x}u)", v.to_bits())
}
fn pair_lit(v: u64) -> String {
    format!("vec2<u32>(0x{:08x}u, 0x{:08x}u)", v as u32, (v >> 32) as u32)
}

impl Gen<'_> {
    /// The group-by kernel: statistics per key per unit of `GROUP_BLOCK_ROWS` rows, in
    /// sweeps of 256 key slots.
    fn group_by(&self, key: usize, cap_rows: u64, keys: Option<KeySlots>) -> Result<Kernel> {
        let prog = self.prog;
        if !prog.hists.is_empty() || !prog.outputs.is_empty() {
            return Err(unsupported("histograms or output columns in a group-by"));
        }
        let d = self.dtypes[key];
        let keys = KeySlots::of(d, keys).ok_or_else(|| unsupported(format!("group-by on a {d} key without its keys")))?;
        let slots = keys.count();
        if slots > crate::exec::MAX_GROUPS as u64 {
            return Err(unsupported(format!("group-by on {slots} key slots (at most {})", crate::exec::MAX_GROUPS)));
        }
        // The key's slot as WGSL (`key_code`), and the key table's words.
        let (key_code, table) = match &keys {
            KeySlots::Range(lo, _) => (
                format!(
                    "const KEY_BASE: vec2<u32> = {};\n// Key k's slot: its distance from the smallest key.\nfn key_code(k: vec2<u32>) -> vec2<u32> {{ return u64_sub(k, KEY_BASE); }}\n",
                    pair_lit(*lo as u64)
                ),
                Vec::new(),
            ),
            // Order keys (`i64_key` in lib.wgsl): high word with its sign bit flipped first.
            KeySlots::Table(t) => (
                format!("const KEY_COUNT: u32 = {}u;\n{KEY_SEARCH}", t.len()),
                t.iter().flat_map(|&k| [((k as u64) >> 32) as u32 ^ 0x8000_0000, k as u32]).collect(),
            ),
        };
        let sweeps = slots.div_ceil(GROUP_SLOTS);
        let (slot_offsets, inp_words) = column_offsets(self.dtypes, cap_rows, table.len() as u64);
        let code = self.int_load(key, &slot_offsets, true)?;
        let mut fields = String::new();
        let mut eval = self.row_prelude(&slot_offsets)?;
        let _ = writeln!(eval, "    row.key = {code};");
        let (mut decl, mut stage, mut acc, mut write) = (String::new(), String::new(), String::new(), String::new());
        let mut stat_domains = Vec::new();
        let mut val_words = 0u64;
        for (i, src) in prog.stats.iter().enumerate() {
            let (dom, e) = self.source_value_at(*src, &slot_offsets)?;
            stat_domains.push(dom);
            let _ = writeln!(fields, "    s{i}: {},", dom.wgsl_type());
            let _ = writeln!(eval, "    row.s{i} = {e};");
            let _ = writeln!(decl, "    var a{i} = acc_new();\n    var p{i}: {} = {};\n    var h{i} = false;", dom.wgsl_type(), dom.zero());
            let at = val_words;
            let load = if dom == Domain::F32 {
                let _ = writeln!(stage, "                atomicStore(&atom[b + {at}u], bitcast<u32>(row.s{i}));");
                val_words += 1;
                format!("bitcast<f32>(atomicLoad(&atom[b + {at}u]))")
            } else {
                let _ = writeln!(
                    stage,
                    "                atomicStore(&atom[b + {at}u], row.s{i}.x);\n                atomicStore(&atom[b + {}u], row.s{i}.y);",
                    at + 1
                );
                val_words += 2;
                format!("vec2<u32>(atomicLoad(&atom[b + {at}u]), atomicLoad(&atom[b + {}u]))", at + 1)
            };
            let _ = writeln!(
                acc,
                "                {{\n                    let v = {load};\n                    if (!h{i} && {}) {{ p{i} = v; h{i} = true; }}\n                    {}(&a{i}, v, p{i});\n                }}",
                dom.finite("v"),
                acc_fn(dom)
            );
            let piv = if dom == Domain::F32 { format!("vec2<u32>(bitcast<u32>(p{i}), 0u)") } else { format!("p{i}") };
            let _ = writeln!(write, "    write_acc(q + {}u, a{i}, {piv});", 1 + (STAT_COUNTERS + STAT_WORDS) * i as u64);
        }
        let group_words = 1 + (STAT_COUNTERS + STAT_WORDS) * prog.stats.len() as u64;
        let val_words = val_words.max(1);
        let consts = format!("const GROUP_WORDS: u32 = {group_words}u;\nconst VAL_WORDS: u32 = {val_words}u;\n{key_code}");
        let source = assemble(
            GROUPBY,
            &[
                ("//@CONSTS", &consts),
                ("//@ROW_FIELDS", &fields),
                ("//@EVAL", &eval),
                ("//@GROUP_DECL", &decl),
                ("//@STAGE", &stage),
                ("//@GROUP_ACC", &acc),
                ("//@GROUP_WRITE", &write),
            ],
        );
        let units = cap_rows.div_ceil(crate::exec::GROUP_BLOCK_ROWS);
        Ok(Kernel {
            source,
            slot_offsets,
            inp_words,
            thresholds: table,
            part_words: sweeps * GROUP_SLOTS * group_words,
            counters: 0,
            stat_domains,
            hist_offsets: Vec::new(),
            out_offsets: Vec::new(),
            // Scratch for the staged values of every workgroup's current sub-block.
            atom_words: sweeps * units * GROUP_SLOTS * val_words,
            group_keys: Some(keys),
            sweeps,
        })
    }

    /// The start of `eval_row`: every register, then the filter mask.
    fn row_prelude(&self, offs: &[u64]) -> Result<String> {
        let mut eval = String::new();
        for (r, ins) in self.prog.instrs.iter().enumerate() {
            let (ty, e) = self.instr(r, ins, offs)?;
            let _ = writeln!(eval, "    let r{r}: {ty} = {e};");
        }
        let _ = writeln!(eval, "    row.mask = {};", self.prog.mask.map_or("true".to_string(), |m| format!("r{m}")));
        Ok(eval)
    }

    /// A register's WGSL type.
    fn reg_type(&self, r: usize) -> &'static str {
        match self.prog.reg_type(r) {
            VType::F32 => "f32",
            VType::Int => "vec2<u32>",
            VType::Bool => "bool",
        }
    }

    /// The load of input slot `slot` (row `i`) into a register of type `ty`.
    fn load(&self, slot: usize, ty: VType, offs: &[u64]) -> Result<String> {
        let off = offs[slot];
        let d = self.dtypes[slot];
        Ok(match (ty, d) {
            (VType::F32, DType::F32) => format!("bitcast<f32>(inp[{off}u + i])"),
            (VType::F32, DType::F16) => format!("f16_to_f32(half_at({off}u, i))"),
            (VType::F32, DType::BF16) => format!("bitcast<f32>(half_at({off}u, i) << 16u)"),
            (VType::F32, DType::F64) => format!("d_to_f32(pair_at({off}u, i))"),
            (VType::Int, _) => self.int_load(slot, offs, true)?,
            (VType::Bool, DType::Bool) => format!("(byte_at({off}u, i) != 0u)"),
            _ => return Err(unsupported(format!("loading a {d} column as {ty:?}"))),
        })
    }

    /// An integer column's value at row `i` as an i64 (u64 saturated when `saturate`).
    fn int_load(&self, slot: usize, offs: &[u64], saturate: bool) -> Result<String> {
        let off = offs[slot];
        Ok(match self.dtypes[slot] {
            DType::I8 => format!("i64_from_i32(bitcast<i32>(byte_at({off}u, i) << 24u) >> 24u)"),
            DType::U8 | DType::Bool => format!("i64_from_u32(byte_at({off}u, i))"),
            DType::I16 => format!("i64_from_i32(bitcast<i32>(half_at({off}u, i) << 16u) >> 16u)"),
            DType::U16 => format!("i64_from_u32(half_at({off}u, i))"),
            DType::I32 => format!("i64_from_i32(bitcast<i32>(inp[{off}u + i]))"),
            DType::U32 => format!("i64_from_u32(inp[{off}u + i])"),
            DType::I64 => format!("pair_at({off}u, i)"),
            DType::U64 if saturate => format!("i64_from_u64(pair_at({off}u, i))"),
            DType::U64 => format!("pair_at({off}u, i)"),
            d => return Err(unsupported(format!("reading a {d} column as an integer"))),
        })
    }

    fn instr(&self, r: usize, ins: &Instr, offs: &[u64]) -> Result<(&'static str, String)> {
        let ty = self.reg_type(r);
        let e = match ins {
            Instr::Load { slot, ty } => self.load(*slot, *ty, offs)?,
            Instr::LoadKey { slot } if self.dtypes[*slot] == DType::F64 => format!("f64_order_key(pair_at({}u, i))", offs[*slot]),
            // An f32 (f16, bf16) column's values as f64s, exactly.
            Instr::LoadKey { slot } => format!("f64_order_key(f_to_d({}))", self.load(*slot, VType::F32, offs)?),
            Instr::Const(Value::F(v)) => f32_lit(*v),
            Instr::Const(Value::I(v)) => pair_lit(*v as u64),
            Instr::Const(Value::B(b)) => b.to_string(),
            Instr::Op { op, args } => {
                let a = |k: usize| format!("r{}", args[k]);
                match op {
                    Op::Neg => format!("f_neg({})", a(0)),
                    Op::Abs => format!("f_abs({})", a(0)),
                    Op::Sqrt => format!("f_sqrt({})", a(0)),
                    Op::Exp => format!("f_exp({})", a(0)),
                    Op::Log => format!("f_log({})", a(0)),
                    Op::Log1p => format!("f_log1p({})", a(0)),
                    // Operands go through two different opaque zeros: see lib.wgsl.
                    Op::Add => format!("(opaque({}) + opaque2({}))", a(0), a(1)),
                    Op::Sub => format!("(opaque({}) - opaque2({}))", a(0), a(1)),
                    Op::Mul => format!("(opaque({}) * opaque2({}))", a(0), a(1)),
                    Op::Div => format!("f_div({}, {})", a(0), a(1)),
                    Op::Min => format!("f_min({}, {})", a(0), a(1)),
                    Op::Max => format!("f_max({}, {})", a(0), a(1)),
                    Op::Clip => format!("f_clip({}, {}, {})", a(0), a(1), a(2)),
                    Op::CmpF(c) => match c {
                        Cmp::Lt => format!("f_lt({}, {})", a(0), a(1)),
                        Cmp::Le => format!("f_le({}, {})", a(0), a(1)),
                        Cmp::Gt => format!("f_lt({}, {})", a(1), a(0)),
                        Cmp::Ge => format!("f_le({}, {})", a(1), a(0)),
                        Cmp::Eq => format!("f_eq({}, {})", a(0), a(1)),
                        Cmp::Ne => format!("f_ne({}, {})", a(0), a(1)),
                    },
                    Op::CmpI(c) => match c {
                        Cmp::Lt => format!("i64_lt({}, {})", a(0), a(1)),
                        Cmp::Le => format!("!i64_lt({}, {})", a(1), a(0)),
                        Cmp::Gt => format!("i64_lt({}, {})", a(1), a(0)),
                        Cmp::Ge => format!("!i64_lt({}, {})", a(0), a(1)),
                        Cmp::Eq => format!("i64_eq({}, {})", a(0), a(1)),
                        Cmp::Ne => format!("!i64_eq({}, {})", a(0), a(1)),
                    },
                    Op::IsNan => format!("f_is_nan({})", a(0)),
                    Op::IsInf => format!("f_is_inf({})", a(0)),
                    Op::IsFinite => format!("f_is_finite({})", a(0)),
                    Op::And => format!("({} && {})", a(0), a(1)),
                    Op::Or => format!("({} || {})", a(0), a(1)),
                    Op::Not => format!("!{}", a(0)),
                    Op::IntToF => format!("i64_to_f32({})", a(0)),
                    Op::BoolToI => format!("vec2<u32>(select(0u, 1u, {}), 0u)", a(0)),
                }
            }
        };
        Ok((ty, e))
    }

    /// The domain of a statistic's, histogram's or output's source.
    fn domain(&self, src: Source) -> Result<Domain> {
        Ok(match src {
            Source::Slot(i) => match self.dtypes[i] {
                DType::F32 | DType::F16 | DType::BF16 => Domain::F32,
                DType::F64 => Domain::F64,
                DType::U64 => Domain::U64,
                _ => Domain::Int,
            },
            Source::Reg(r) => match self.prog.reg_type(r) {
                VType::F32 => Domain::F32,
                VType::Int | VType::Bool => Domain::Int,
            },
        })
    }

    /// The domain and WGSL value (at row `i`) of a statistic's or histogram's source.
    fn source_value_at(&self, src: Source, offs: &[u64]) -> Result<(Domain, String)> {
        let dom = self.domain(src)?;
        let e = match src {
            Source::Slot(i) => match dom {
                Domain::F32 => self.load(i, VType::F32, offs)?,
                Domain::F64 => format!("pair_at({}u, i)", offs[i]),
                Domain::Int | Domain::U64 => self.int_load(i, offs, false)?,
            },
            Source::Reg(r) => match self.prog.reg_type(r) {
                VType::Bool => format!("vec2<u32>(select(0u, 1u, r{r}), 0u)"),
                _ => format!("r{r}"),
            },
        };
        Ok((dom, e))
    }

    /// The code that fills `row.o{i}`, `row.o{i}n` (NaN) and `row.o{i}v` (overflow).
    fn output(&self, i: usize, spec: &OutSpec, offs: &[u64]) -> Result<String> {
        if let Source::Slot(slot) = spec.source
            && is_raw_copy(spec, self.dtypes[slot])
        {
            let off = offs[slot];
            let d = self.dtypes[slot];
            let raw = match d.size() {
                8 => format!("pair_at({off}u, i)"),
                4 => format!("vec2<u32>(inp[{off}u + i], 0u)"),
                2 => format!("vec2<u32>(half_at({off}u, i), 0u)"),
                _ => format!("vec2<u32>(byte_at({off}u, i), 0u)"),
            };
            let nan = match d {
                DType::F32 => format!("f_is_nan(bitcast<f32>(row.o{i}.x))"),
                DType::F64 => format!("d_is_nan(row.o{i})"),
                DType::F16 => format!("(row.o{i}.x & 0x7fffu) > 0x7c00u"),
                DType::BF16 => format!("(row.o{i}.x & 0x7fffu) > 0x7f80u"),
                _ => "false".to_string(),
            };
            return Ok(format!("    row.o{i} = {raw};\n    row.o{i}n = {nan};\n"));
        }
        let dom = self.domain(spec.source)?;
        let (_, x) = self.source_value_at(spec.source, offs)?;
        match spec.dtype {
            DType::I64 | DType::Bool => {
                let v = if spec.dtype == DType::Bool {
                    match spec.source {
                        Source::Reg(r) if self.prog.reg_type(r) == VType::Bool => format!("vec2<u32>(select(0u, 1u, r{r}), 0u)"),
                        _ => return Err(unsupported("a boolean output from a number")),
                    }
                } else if dom == Domain::Int {
                    x
                } else {
                    return Err(unsupported(format!("an i64 output from {dom:?} values")));
                };
                return Ok(format!("    row.o{i} = {v};\n"));
            }
            DType::F64 => {
                if dom != Domain::F64 || spec.scale.is_some() {
                    return Err(unsupported("a computed f64 output"));
                }
                let fill = pair_lit(spec.fill_nan.unwrap_or(f64::NAN).to_bits());
                return Ok(format!(
                    "    {{\n        let x = {x};\n        row.o{i} = select(x, {fill}, d_is_nan(x));\n        row.o{i}n = d_is_nan(row.o{i});\n    }}\n"
                ));
            }
            DType::F32 | DType::F16 | DType::BF16 => {}
            d => return Err(unsupported(format!("a computed {d} output"))),
        }
        // A float output: y = scaled value in f32, then fill-NaN, then the cast.
        let as_d = match dom {
            Domain::F32 => "f_to_d(x)",
            Domain::F64 => "x",
            Domain::Int => "i64_to_d(x)",
            Domain::U64 => "u64_to_d(x)",
        };
        let plain = match dom {
            Domain::F32 => "x".to_string(),
            // Rounded once to f16/bf16 (`d_to_f32_odd`), as on the CPU.
            Domain::F64 if matches!(spec.dtype, DType::F16 | DType::BF16) => "d_to_f32_odd(x)".to_string(),
            Domain::F64 => "d_to_f32(x)".to_string(),
            Domain::Int => "i64_to_f32(x)".to_string(),
            Domain::U64 => "bitcast<f32>(u64_to_f32_bits(x))".to_string(),
        };
        let finite = dom.finite("x");
        let nan = dom.is_nan("x");
        let (y, ovf) = match spec.scale {
            None => {
                let ovf = if dom == Domain::F32 { "false".to_string() } else { format!("({finite} && f_is_inf(y))") };
                (plain, ovf)
            }
            Some(sc) => {
                let (m, s) = match sc {
                    Scale::Standardize { mean, std } => (mean, std),
                    Scale::MinMax { min, max } => (min, max - min),
                };
                let y = if !(s > 0.0 || s.is_nan()) {
                    format!("select(0.0, f_nan(), {nan})")
                } else {
                    let inv = 1.0 / s;
                    let i1 = inv as f32;
                    let i2 = (inv - i1 as f64) as f32;
                    let invl = format!("vec2<f32>({}, {})", f32_lit(i1), f32_lit(i2));
                    if !m.is_finite() {
                        format!("(opaque({plain}) - opaque2({})) * opaque2({})", f32_lit(m as f32), f32_lit(i1))
                    } else if dom == Domain::F32 {
                        let m1 = m as f32;
                        let m2 = (m - m1 as f64) as f32;
                        let m3 = (m - m1 as f64 - m2 as f64) as f32;
                        format!("scale_f32(x, vec3<f32>({}, {}, {}), {invl})", f32_lit(m1), f32_lit(m2), f32_lit(m3))
                    } else {
                        format!("scale_d({as_d}, {}, {invl})", pair_lit(m.to_bits()))
                    }
                };
                (y, format!("({finite} && f_is_inf(y))"))
            }
        };
        let mut code = format!("    {{\n        let x = {x};\n        var y: f32 = {y};\n        let ovf = {ovf};\n");
        if let Some(fill) = spec.fill_nan {
            let _ = writeln!(code, "        if (f_is_nan(y)) {{ y = {}; }}", f32_lit(crate::backend::fill_f32(fill, spec.dtype)));
        }
        let _ = match spec.dtype {
            DType::F16 => writeln!(
                code,
                "        let h = f32_to_f16(y);\n        row.o{i} = vec2<u32>(h, 0u);\n        row.o{i}v = ovf || (f_is_finite(y) && (h & 0x7fffu) == 0x7c00u);"
            ),
            DType::BF16 => writeln!(
                code,
                "        let h = f32_to_bf16(y);\n        row.o{i} = vec2<u32>(h, 0u);\n        row.o{i}v = ovf || (f_is_finite(y) && (h & 0x7fffu) == 0x7f80u);"
            ),
            _ => writeln!(code, "        row.o{i} = vec2<u32>(bitcast<u32>(y), 0u);\n        row.o{i}v = ovf;"),
        };
        let _ = writeln!(code, "        row.o{i}n = f_is_nan(y);\n    }}");
        Ok(code)
    }
}

/// The thresholds of a histogram as order keys (two words each, high word first): the
/// smallest key not below `lo`, the smallest key above `hi`, then for each bin m ≥ 1 the
/// smallest key the CPU's `bin_of` puts in bin m or later. The kernel's bin is then the
/// number of thresholds at or below a value, the CPU's exactly.
fn histogram_thresholds(h: &HistSpec, dom: Domain) -> Vec<u32> {
    let scale = bin_scale(h.lo, h.hi, h.bins);
    let (kmin, kmax) = dom.key_range();
    // In the f32 domain only the high word varies.
    let step_shift = if dom == Domain::F32 { 32 } else { 0 };
    let first = |lo: u64, hi: u64, pred: &dyn Fn(f64) -> bool| -> u64 {
        let (mut a, mut b) = (lo >> step_shift, hi >> step_shift);
        if a > b || !pred(dom.key_value(b << step_shift)) {
            return u64::MAX;
        }
        while a < b {
            let mid = a + (b - a) / 2;
            if pred(dom.key_value(mid << step_shift)) {
                b = mid;
            } else {
                a = mid + 1;
            }
        }
        a << step_shift
    };
    let lo_t = first(kmin, kmax, &|x| x >= h.lo);
    let hi_t = first(kmin, kmax, &|x| x > h.hi);
    let end = if hi_t == u64::MAX { kmax } else { hi_t.saturating_sub(1 << step_shift) };
    let mut keys = vec![lo_t, hi_t];
    for m in 1..h.bins as usize {
        let t = if lo_t == u64::MAX || lo_t > end {
            u64::MAX
        } else {
            first(lo_t, end, &|x| match bin_of(x, h.lo, h.hi, scale, h.bins) {
                Ok(b) => b >= m,
                Err(Outside::Above) => true,
                Err(_) => false,
            })
        };
        keys.push(t);
    }
    keys.iter().flat_map(|&k| [(k >> 32) as u32, k as u32]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::BLOCK_ROWS;

    fn generate(prog: &FusedProgram, dtypes: &[DType], cap_rows: u64) -> Result<Kernel> {
        generate_with_keys(prog, dtypes, cap_rows, None)
    }

    /// Parses and validates WGSL with naga, with no optional capability (what every
    /// adapter, Metal and old cards included, accepts).
    fn validate(src: &str) {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("parse: {}\n{src}", e.emit_to_string(src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("validate: {e:?}\n{src}"));
    }

    #[test]
    fn every_generated_kernel_validates_without_optional_capabilities() {
        for (prog, dtypes) in crate::backend::test_corpus::corpus() {
            let k = generate(&prog, &dtypes, 4 * BLOCK_ROWS).expect("generate");
            validate(&k.source);
        }
    }

    #[test]
    fn group_by_key_ranges() {
        let prog = FusedProgram { inputs: vec![0], key: Some(0), ..FusedProgram::default() };
        assert!(matches!(generate(&prog, &[DType::U16], BLOCK_ROWS), Err(Error::Unsupported(_))), "a wide key needs its range");
        assert_eq!(generate(&prog, &[DType::U8], BLOCK_ROWS).map(|k| k.sweeps).ok(), Some(1));
        let k = generate_with_keys(&prog, &[DType::I64], BLOCK_ROWS, Some(KeySlots::Range(-5, 600))).expect("606 keys");
        assert_eq!((k.group_keys.as_ref().map(|g| g.key(0)), k.sweeps, k.thresholds.len()), (Some(-5), 3, 0));
        validate(&k.source);
        let wide = generate_with_keys(&prog, &[DType::I32], BLOCK_ROWS, Some(KeySlots::Range(0, 70_000)));
        assert!(matches!(wide, Err(Error::Unsupported(_))), "a range of more than 65,536 keys");
        // A table: one sweep per 256 keys, two words per key before the columns.
        let table = crate::backend::test_corpus::key_table();
        let k = generate_with_keys(&prog, &[DType::I64], BLOCK_ROWS, Some(KeySlots::Table(table.clone()))).expect("302 keys");
        assert_eq!((k.sweeps, k.thresholds.len(), k.slot_offsets[0]), (2, 604, 604));
        assert_eq!(k.group_keys.as_ref().map(|g| (g.key(0), g.key(301))), Some((i64::MIN as i128, i64::MAX as i128)));
        // Order keys ascend as the keys do.
        let order: Vec<u64> = k.thresholds.chunks(2).map(|w| (w[0] as u64) << 32 | w[1] as u64).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "order keys ascend");
        validate(&k.source);
        let many = generate_with_keys(&prog, &[DType::I64], BLOCK_ROWS, Some(KeySlots::Table((0..70_000).collect())));
        assert!(matches!(many, Err(Error::Unsupported(_))), "more than 65,536 keys");
    }

    #[test]
    fn f32_keys_round_trip_and_order() {
        let vals = [f32::NEG_INFINITY, -1e30, -1.0, -1e-40, 0.0, 1e-45, 1.0, 3e38, f32::INFINITY];
        let key = |v: f32| {
            let b = if v.to_bits() == 0x8000_0000 { 0 } else { v.to_bits() };
            if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 }
        };
        for w in vals.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{} < {}", w[0], w[1]);
        }
        for v in vals {
            assert_eq!(f32_from_key(key(v)), v.to_bits());
            assert_eq!(Domain::F32.key_value((key(v) as u64) << 32), v as f64);
        }
    }
}
