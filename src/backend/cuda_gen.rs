//! CUDA C code generation: a [`FusedProgram`] becomes one kernel, `kernels/lib.cu`
//! followed by the template `kernels/fused.cu` (or `kernels/groupby.cu` for a group-by)
//! with the row program spliced in. NVRTC compiles it at run time (`nvrtc.rs`).
//!
//! One thread block handles one block of [`BLOCK_ROWS`] rows and writes one partial per
//! block, so the driver merges CUDA partials exactly as it merges the CPU's. Arithmetic is
//! IEEE f32 as on the CPU (the kernel is compiled with `--fmad=false`); statistics sum
//! `x - pivot` in f64.

use std::fmt::Write as _;

use crate::accum::{BlockStats, HistAcc, bin_scale};
use crate::backend::cpu::is_raw_copy;
use crate::backend::{BlockPartial, KeySlots, TileResult};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{BLOCK_ROWS, GROUP_BLOCK_ROWS};
use crate::ops::{Cmp, Op, VType};
use crate::program::{FusedProgram, Instr, OutSpec, Scale, Source, Value};

const LIBRARY: &str = include_str!("../../kernels/lib.cu");
const FUSED: &str = include_str!("../../kernels/fused.cu");
const GROUPBY: &str = include_str!("../../kernels/groupby.cu");

/// Threads per block.
pub(crate) const THREADS: u32 = 256;
/// Words (u64) per statistic in a partial.
pub(crate) const STAT_WORDS: usize = 12;
/// Histogram slots (bins + below, above, NaN, over all histograms) counted in shared memory.
const SHARED_HIST_SLOTS: u64 = 4096;
/// The most key slots of a group-by on CUDA (one sweep of 256 slots per block row).
pub(crate) const MAX_KEY_SPAN: u64 = 65_536;
/// Byte alignment of each column in the input and output buffers.
const ALIGN: u64 = 256;

/// How a statistic's values are held in the kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Domain {
    /// A float (f32, f16, bf16 or f64), as an f64.
    Float,
    /// A signed integer (every integer dtype but u64, and booleans), as an i64.
    Int,
    /// A u64.
    U64,
}

/// A generated kernel and where everything lives in its buffers.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// The CUDA C source.
    pub source: String,
    /// The kernel function's name (`fused` or `groupby`).
    pub entry: &'static str,
    /// Byte offset of each input slot's column in the input buffer (rows packed, no stride).
    pub in_offsets: Vec<u64>,
    /// Bytes of the input buffer for a full tile.
    pub in_bytes: u64,
    /// Words (u64) per partial: per block, or per (unit, sweep, key) of a group-by.
    pub part_words: u64,
    /// Domain of each statistic.
    pub stat_domains: Vec<Domain>,
    /// Offset (in u64 words) of each histogram's counts in the histogram buffer.
    pub hist_offsets: Vec<u64>,
    /// Words of the histogram buffer.
    pub hist_words: u64,
    /// Byte offset of each output column in the output buffer.
    pub out_offsets: Vec<u64>,
    /// Bytes of the output buffer for a full tile.
    pub out_bytes: u64,
    /// For a group-by: the keys of its slots (thread t of sweep w owns slot `256 w + t`); a
    /// table of keys lies at the start of the input buffer, as i64.
    pub group_keys: Option<KeySlots>,
    /// For a group-by: sweeps of 256 keys per unit.
    pub sweeps: u64,
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported(format!("{} on the cuda backend", what.into()))
}

fn f32_lit(v: f32) -> String {
    format!("__uint_as_float(0x{:08x}u)", v.to_bits())
}

fn f64_lit(v: f64) -> String {
    format!("d_from_bits(0x{:016x}ull)", v.to_bits())
}

/// `template` with its `//@NAME` lines replaced, after the library.
fn assemble(template: &str, pieces: &[(&str, &str)]) -> String {
    let mut src = String::with_capacity(LIBRARY.len() + template.len() + 8192);
    src.push_str(LIBRARY);
    for line in template.lines() {
        match pieces.iter().find(|(name, _)| line.trim() == *name) {
            Some((_, piece)) => src.push_str(piece),
            None => {
                src.push_str(line);
                src.push('\n');
            }
        }
    }
    src
}

/// Byte offsets of columns of `sizes` bytes per row, for `cap_rows` rows, and the total.
fn offsets(sizes: impl Iterator<Item = usize>, cap_rows: u64) -> (Vec<u64>, u64) {
    let mut at = 0u64;
    let offs = sizes
        .map(|s| {
            let o = at;
            at += (cap_rows * s as u64).next_multiple_of(ALIGN);
            o
        })
        .collect();
    (offs, at.max(ALIGN))
}

/// Generates the kernel of `prog` over columns of `dtypes` (one per input slot), for tiles
/// of `cap_rows` rows. A group-by on a key wider than 8 bits needs `keys`.
pub(crate) fn generate(prog: &FusedProgram, dtypes: &[DType], cap_rows: u64, keys: Option<KeySlots>) -> Result<Kernel> {
    let g = Gen { prog, dtypes };
    let (in_offsets, in_bytes) = offsets(dtypes.iter().map(|d| d.size()), cap_rows);
    if prog.key.is_some() {
        return g.group_by(in_offsets, in_bytes, keys);
    }
    let s = prog.stats.len();
    let o = prog.outputs.len();
    let part_words = (1 + STAT_WORDS * s + 2 * o) as u64;
    let mut hist_offsets = Vec::new();
    let mut hist_words = 0u64;
    for h in &prog.hists {
        hist_offsets.push(hist_words);
        hist_words += h.bins as u64 + 3;
    }
    let shared_hist = hist_words > 0 && hist_words <= SHARED_HIST_SLOTS;
    let (out_offsets, out_bytes) = offsets(prog.outputs.iter().map(|o| o.dtype.size()), cap_rows);

    // The row: every register, then what the statistics, histograms and outputs read.
    let mut fields = String::from("    bool mask;\n");
    let mut eval = g.row_prelude(&in_offsets)?;
    let mut stat_domains = Vec::with_capacity(s);
    for (i, src) in prog.stats.iter().enumerate() {
        let (dom, ty, e) = g.stat_value(*src, &in_offsets)?;
        stat_domains.push(dom);
        let _ = writeln!(fields, "    {ty} s{i};");
        let _ = writeln!(eval, "    row.s{i} = {e};");
    }
    for (i, h) in prog.hists.iter().enumerate() {
        let _ = writeln!(fields, "    double h{i};");
        let _ = writeln!(eval, "    row.h{i} = {};", g.f64_value(h.source, &in_offsets)?);
    }
    let mut write = String::new();
    for (i, spec) in prog.outputs.iter().enumerate() {
        let _ = writeln!(fields, "    u64 o{i};\n    bool o{i}n;\n    bool o{i}v;");
        eval.push_str(&g.output(i, spec, &in_offsets)?);
        let off = out_offsets[i];
        let ty = match spec.dtype.size() {
            8 => "u64",
            4 => "u32",
            2 => "u16",
            _ => "u8",
        };
        let _ = writeln!(write, "    (({ty}*)(out + {off}ull))[e] = ({ty})row.o{i};");
    }
    let defs = format!(
        "#define WG {THREADS}u\n#define BLOCK_ROWS {BLOCK_ROWS}u\n#define PART_WORDS {part_words}ull\n#define NS {}u\n\nstruct Row {{\n{fields}}};\n\n\
         __device__ __forceinline__ void eval_row(const u8* __restrict__ in, u32 i, Row& row) {{\n{eval}}}\n\n\
         __device__ __forceinline__ void write_out(u8* __restrict__ out, u32 e, const Row& row) {{\n{write}}}\n",
        s.max(1)
    );

    // Phase 1: pivots.
    let mut search = String::new();
    let mut store = String::new();
    if s > 0 {
        for i in 0..s {
            let _ = writeln!(search, "    u32 c{i} = 0xffffffffu;\n    double v{i} = 0.0;");
        }
        let _ = writeln!(
            search,
            "    {{\n        u32 todo = {s}u;\n        #pragma unroll 1\n        for (u32 k = 0; k < BLOCK_ROWS / WG && todo > 0u; k++) {{\n            const u32 j = k * WG + lid;\n            if (j >= n) break;\n            Row row;\n            eval_row(in, r0 + j, row);\n            if (row.mask) {{"
        );
        for (i, dom) in stat_domains.iter().enumerate() {
            let x = format!("row.s{i}");
            let finite = if *dom == Domain::Float { format!("d_is_finite({x})") } else { "true".to_string() };
            let _ =
                writeln!(search, "                if (c{i} == 0xffffffffu && {finite}) {{ c{i} = j; v{i} = {}; todo--; }}", dom.to_f64(&x));
        }
        search.push_str("            }\n        }\n    }\n");
        for i in 0..s {
            let _ = writeln!(search, "    if (c{i} != 0xffffffffu) atomicMin(&sh_first[{i}], c{i});");
            let _ = writeln!(store, "    if (c{i} != 0xffffffffu && c{i} == sh_first[{i}]) sh_pivot[{i}] = v{i};");
        }
    }

    // Phase 2.
    let mut init = String::new();
    let mut acc = String::new();
    for (i, dom) in stat_domains.iter().enumerate() {
        let _ = writeln!(init, "    Acc a{i};\n    acc_init(a{i}, {});\n    const double p{i} = sh_pivot[{i}];", *dom == Domain::U64);
        let _ = writeln!(acc, "            {}(a{i}, row.s{i}, p{i});", dom.acc_fn());
    }
    for (i, h) in prog.hists.iter().enumerate() {
        let code = format!(
            "{}u + bin_code(row.h{i}, {}, {}, {}, {}u)",
            hist_offsets[i],
            f64_lit(h.lo),
            f64_lit(h.hi),
            f64_lit(bin_scale(h.lo, h.hi, h.bins)),
            h.bins
        );
        let _ = if shared_hist {
            writeln!(acc, "            atomicAdd(&sh_hist[{code}], 1u);")
        } else {
            writeln!(acc, "            atomicAdd(&hist[{code}], 1ull);")
        };
    }
    for i in 0..o {
        let _ = writeln!(init, "    u64 on{i} = 0, ov{i} = 0;");
        let _ = writeln!(acc, "            on{i} += row.o{i}n ? 1u : 0u;\n            ov{i} += row.o{i}v ? 1u : 0u;");
    }
    let output = if o == 0 {
        String::new()
    } else if prog.mask.is_some() {
        // Rows are written packed, in row order: a ballot gives each selected row its place.
        "        {
            const u32 ballot = __ballot_sync(FULL_MASK, sel);
            if ((lid & 31u) == 0u) sh_warp[lid >> 5] = __popc(ballot);
            __syncthreads();
            u32 before = __popc(ballot & ((1u << (lid & 31u)) - 1u));
            u32 all = 0;
            for (u32 q = 0; q < WG / 32u; q++) {
                if (q < (lid >> 5)) before += sh_warp[q];
                all += sh_warp[q];
            }
            if (sel) write_out(out, r0 + written + before, row);
            written += all;
            __syncthreads();
        }
"
        .to_string()
    } else {
        "        if (sel) write_out(out, r0 + j, row);\n".to_string()
    };

    // Phase 3.
    let mut reduce = String::new();
    for (i, dom) in stat_domains.iter().enumerate() {
        let _ = writeln!(reduce, "    acc_reduce(a{i}, {}, p{i}, sh_acc, w + {});", *dom == Domain::U64, 1 + STAT_WORDS * i);
    }
    for i in 0..o {
        let at = 1 + STAT_WORDS * s + 2 * i;
        let _ = writeln!(reduce, "    {{ u64 t = sum_reduce(on{i}, sh_sum); if (lid == 0u) w[{at}] = t; }}");
        let _ = writeln!(reduce, "    {{ u64 t = sum_reduce(ov{i}, sh_sum); if (lid == 0u) w[{}] = t; }}", at + 1);
    }
    let (hist_init, hist_flush) = if shared_hist {
        (
            format!("    __shared__ u32 sh_hist[{hist_words}];\n    for (u32 q = lid; q < {hist_words}u; q += WG) sh_hist[q] = 0u;\n"),
            format!(
                "    __syncthreads();\n    for (u32 q = lid; q < {hist_words}u; q += WG)\n        if (sh_hist[q] != 0u) atomicAdd(&hist[q], (u64)sh_hist[q]);\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let source = assemble(
        FUSED,
        &[
            ("//@DEFS", &defs),
            ("//@HIST_INIT", &hist_init),
            ("//@PIVOT_SEARCH", &search),
            ("//@PIVOT_STORE", &store),
            ("//@ACC_INIT", &init),
            ("//@ACCUMULATE", &acc),
            ("//@OUTPUT", &output),
            ("//@REDUCE", &reduce),
            ("//@HIST_FLUSH", &hist_flush),
        ],
    );
    Ok(Kernel {
        source,
        entry: "fused",
        in_offsets,
        in_bytes,
        part_words,
        stat_domains,
        hist_offsets,
        hist_words: hist_words.max(1),
        out_offsets,
        out_bytes,
        group_keys: None,
        sweeps: 1,
    })
}

impl Domain {
    fn acc_fn(self) -> &'static str {
        match self {
            Domain::Float => "acc_f",
            Domain::Int => "acc_i",
            Domain::U64 => "acc_u",
        }
    }
    /// A C expression: the f64 value of `x`, a value of this domain.
    fn to_f64(self, x: &str) -> String {
        match self {
            Domain::Float => x.to_string(),
            Domain::Int => format!("__ll2double_rn({x})"),
            Domain::U64 => format!("__ull2double_rn({x})"),
        }
    }
    fn c_type(self) -> &'static str {
        match self {
            Domain::Float => "double",
            Domain::Int => "i64",
            Domain::U64 => "u64",
        }
    }
}

struct Gen<'a> {
    prog: &'a FusedProgram,
    dtypes: &'a [DType],
}

impl Gen<'_> {
    /// The group-by kernel: statistics per key per unit of `GROUP_BLOCK_ROWS` rows, in
    /// sweeps of 256 keys.
    fn group_by(&self, in_offsets: Vec<u64>, in_bytes: u64, keys: Option<KeySlots>) -> Result<Kernel> {
        let prog = self.prog;
        let key = prog.key.unwrap_or(0);
        if !prog.hists.is_empty() || !prog.outputs.is_empty() {
            return Err(unsupported("histograms or output columns in a group-by"));
        }
        let d = self.dtypes[key];
        let keys = KeySlots::of(d, keys).ok_or_else(|| unsupported(format!("group-by on a {d} key without its keys")))?;
        let slots = keys.count();
        if slots > MAX_KEY_SPAN {
            return Err(unsupported(format!("a group-by on {slots} key slots (at most {MAX_KEY_SPAN})")));
        }
        // The bytes of the key table before the columns.
        let table_bytes = match &keys {
            KeySlots::Table(t) => (t.len() as u64 * 8).next_multiple_of(ALIGN),
            KeySlots::Range(..) => 0,
        };
        let in_offsets: Vec<u64> = in_offsets.iter().map(|o| o + table_bytes).collect();
        let in_bytes = in_bytes + table_bytes;
        let sweeps = slots.div_ceil(THREADS as u64);
        let s = prog.stats.len();
        let rec_words = 1 + STAT_WORDS * s;
        let mut fields = String::from("    bool mask;\n    i64 key;\n");
        let mut eval = self.row_prelude(&in_offsets)?;
        let key_dom = self.domain(Source::Slot(key))?;
        if key_dom == Domain::Float {
            return Err(unsupported("a group-by on a float key"));
        }
        let _ = writeln!(eval, "    row.key = (i64){};", self.slot_value(key, &in_offsets)?);
        let mut stat_domains = Vec::with_capacity(s);
        let (mut stage_decl, mut stage, mut init, mut acc, mut write) =
            (String::new(), String::new(), String::new(), String::new(), String::new());
        for (i, src) in prog.stats.iter().enumerate() {
            let (dom, ty, e) = self.stat_value(*src, &in_offsets)?;
            stat_domains.push(dom);
            let _ = writeln!(fields, "    {ty} s{i};");
            let _ = writeln!(eval, "    row.s{i} = {e};");
            let _ = writeln!(stage_decl, "    __shared__ {ty} sh_s{i}[STAGE];");
            let _ = writeln!(stage, "            sh_s{i}[lid] = row.s{i};");
            let _ = writeln!(
                init,
                "    Acc a{i};\n    acc_init(a{i}, {});\n    double p{i} = 0.0;\n    bool has_p{i} = false;",
                dom == Domain::U64
            );
            let x = format!("sh_s{i}[t]");
            let finite = if dom == Domain::Float { format!("d_is_finite({x})") } else { "true".to_string() };
            let _ = writeln!(
                acc,
                "                if (!has_p{i} && {finite}) {{ has_p{i} = true; p{i} = {}; }}\n                {}(a{i}, {x}, p{i});",
                dom.to_f64(&x),
                dom.acc_fn()
            );
            let _ = writeln!(write, "    acc_write(a{i}, p{i}, w + {});", 1 + STAT_WORDS * i);
        }
        // Rows staged at once: 8 bytes per statistic and 9 for the key and flag each, within
        // about 40 KB of the 48 KB of static shared memory every device has.
        let stage_rows = (40_000 / (8 * s as u64 + 9)).min(THREADS as u64);
        if stage_rows < 32 {
            return Err(unsupported(format!("a group-by of {s} statistics (their rows would not fit in shared memory)")));
        }
        let key_count = match &keys {
            KeySlots::Table(t) => format!("#define KEY_COUNT {}u\n", t.len()),
            KeySlots::Range(..) => String::new(),
        };
        let defs = format!(
            "#define WG {THREADS}u\n#define STAGE {stage_rows}u\n#define UNIT_ROWS {GROUP_BLOCK_ROWS}u\n#define REC_WORDS {rec_words}ull\n{key_count}\nstruct Row {{\n{fields}}};\n\n\
             __device__ __forceinline__ void eval_row(const u8* __restrict__ in, u32 i, Row& row) {{\n{eval}}}\n"
        );
        let source = assemble(
            GROUPBY,
            &[
                ("//@DEFS", &defs),
                ("//@STAGE_DECL", &stage_decl),
                ("//@ACC_INIT", &init),
                ("//@STAGE", &stage),
                ("//@ACCUMULATE", &acc),
                ("//@WRITE", &write),
            ],
        );
        Ok(Kernel {
            source,
            entry: "groupby",
            in_offsets,
            in_bytes,
            part_words: rec_words as u64,
            stat_domains,
            hist_offsets: Vec::new(),
            hist_words: 1,
            out_offsets: Vec::new(),
            out_bytes: ALIGN,
            group_keys: Some(keys),
            sweeps,
        })
    }

    /// Every register of the program, as C locals `v0`, `v1`, ..., then the mask.
    fn row_prelude(&self, offs: &[u64]) -> Result<String> {
        let mut eval = String::new();
        for (r, ins) in self.prog.instrs.iter().enumerate() {
            let ty = match self.prog.reg_type(r) {
                VType::F32 => "float",
                VType::Int => "i64",
                VType::Bool => "bool",
            };
            let _ = writeln!(eval, "    const {ty} v{r} = {};", self.instr(ins, offs)?);
        }
        let _ = writeln!(eval, "    row.mask = {};", self.prog.mask.map_or("true".to_string(), |m| format!("v{m}")));
        Ok(eval)
    }

    /// The C expression reading row `i` of input slot `slot` in its own dtype.
    fn slot_value(&self, slot: usize, offs: &[u64]) -> Result<String> {
        let off = offs[slot];
        let at = |ty: &str| format!("((const {ty}*)(in + {off}ull))[i]");
        Ok(match self.dtypes[slot] {
            DType::F32 => at("float"),
            DType::F16 => format!("f16_to_f32({})", at("u16")),
            DType::BF16 => format!("bf16_to_f32({})", at("u16")),
            DType::F64 => at("double"),
            DType::I8 => format!("(i64){}", at("i8")),
            DType::U8 | DType::Bool => format!("(i64){}", at("u8")),
            DType::I16 => format!("(i64){}", at("i16")),
            DType::U16 => format!("(i64){}", at("u16")),
            DType::I32 => format!("(i64){}", at("i32")),
            DType::U32 => format!("(i64){}", at("u32")),
            DType::I64 => at("i64"),
            DType::U64 => at("u64"),
        })
    }

    /// The raw bits of row `i` of input slot `slot`, as a u64.
    fn slot_bits(&self, slot: usize, offs: &[u64]) -> String {
        let ty = match self.dtypes[slot].size() {
            8 => "u64",
            4 => "u32",
            2 => "u16",
            _ => "u8",
        };
        format!("(u64)((const {ty}*)(in + {}ull))[i]", offs[slot])
    }

    /// The load of input slot `slot` into a register of type `ty` (as the CPU loads it).
    fn load(&self, slot: usize, ty: VType, offs: &[u64]) -> Result<String> {
        let d = self.dtypes[slot];
        let x = self.slot_value(slot, offs)?;
        Ok(match (ty, d) {
            (VType::F32, DType::F32 | DType::F16 | DType::BF16) => x,
            (VType::F32, DType::F64) => format!("d_to_f32({x})"),
            (VType::Int, DType::U64) => format!("u64_sat({x})"),
            (VType::Int, d) if !d.is_float() => x,
            (VType::Bool, DType::Bool) => format!("({x} != 0)"),
            _ => return Err(unsupported(format!("loading a {d} column as {ty:?}"))),
        })
    }

    fn instr(&self, ins: &Instr, offs: &[u64]) -> Result<String> {
        Ok(match ins {
            Instr::Load { slot, ty } => self.load(*slot, *ty, offs)?,
            Instr::LoadKey { slot } if self.dtypes[*slot] == DType::F64 => format!("f64_order_key({})", self.slot_bits(*slot, offs)),
            // An f32 (f16, bf16) column's values as f64s, exactly.
            Instr::LoadKey { slot } => format!("f64_order_key(d_bits((double){}))", self.load(*slot, VType::F32, offs)?),
            Instr::Const(Value::F(v)) => f32_lit(*v),
            Instr::Const(Value::I(v)) => format!("(i64)0x{:016x}ull", *v as u64),
            Instr::Const(Value::B(b)) => b.to_string(),
            Instr::Op { op, args } => {
                let a = |k: usize| format!("v{}", args[k]);
                match op {
                    Op::Neg => format!("f_neg({})", a(0)),
                    Op::Abs => format!("f_abs({})", a(0)),
                    Op::Sqrt => format!("__fsqrt_rn({})", a(0)),
                    Op::Exp => format!("expf({})", a(0)),
                    Op::Log => format!("logf({})", a(0)),
                    Op::Log1p => format!("log1pf({})", a(0)),
                    Op::Add => format!("__fadd_rn({}, {})", a(0), a(1)),
                    Op::Sub => format!("__fsub_rn({}, {})", a(0), a(1)),
                    Op::Mul => format!("__fmul_rn({}, {})", a(0), a(1)),
                    Op::Div => format!("__fdiv_rn({}, {})", a(0), a(1)),
                    Op::Min => format!("f_min({}, {})", a(0), a(1)),
                    Op::Max => format!("f_max({}, {})", a(0), a(1)),
                    Op::Clip => format!("f_clip({}, {}, {})", a(0), a(1), a(2)),
                    Op::CmpF(Cmp::Ne) => format!("f_ne({}, {})", a(0), a(1)),
                    Op::CmpF(c) | Op::CmpI(c) => format!("({} {} {})", a(0), cmp_text(*c), a(1)),
                    Op::IsNan => format!("f_is_nan({})", a(0)),
                    Op::IsInf => format!("f_is_inf({})", a(0)),
                    Op::IsFinite => format!("f_is_finite({})", a(0)),
                    Op::And => format!("({} && {})", a(0), a(1)),
                    Op::Or => format!("({} || {})", a(0), a(1)),
                    Op::Not => format!("(!{})", a(0)),
                    Op::IntToF => format!("__ll2float_rn({})", a(0)),
                    Op::BoolToI => format!("({} ? 1ll : 0ll)", a(0)),
                }
            }
        })
    }

    /// How a statistic's source is held.
    fn domain(&self, src: Source) -> Result<Domain> {
        Ok(match src {
            Source::Slot(i) => match self.dtypes[i] {
                d if d.is_float() => Domain::Float,
                DType::U64 => Domain::U64,
                _ => Domain::Int,
            },
            Source::Reg(r) => match self.prog.reg_type(r) {
                VType::F32 => Domain::Float,
                VType::Int | VType::Bool => Domain::Int,
            },
        })
    }

    /// The domain, C type and C value (at row `i`) of a statistic's source.
    fn stat_value(&self, src: Source, offs: &[u64]) -> Result<(Domain, &'static str, String)> {
        let dom = self.domain(src)?;
        let e = match src {
            Source::Slot(i) => match self.dtypes[i] {
                DType::F32 | DType::F16 | DType::BF16 => format!("(double){}", self.slot_value(i, offs)?),
                _ => self.slot_value(i, offs)?,
            },
            Source::Reg(r) => match self.prog.reg_type(r) {
                VType::F32 => format!("(double)v{r}"),
                VType::Int => format!("v{r}"),
                VType::Bool => format!("(v{r} ? 1ll : 0ll)"),
            },
        };
        Ok((dom, dom.c_type(), e))
    }

    /// The f64 value of a source (as the CPU's `f64()` gives it).
    fn f64_value(&self, src: Source, offs: &[u64]) -> Result<String> {
        let (dom, _, e) = self.stat_value(src, offs)?;
        Ok(dom.to_f64(&e))
    }

    /// The code that fills `row.o{i}` (the bits written), `row.o{i}n` (NaN after filling)
    /// and `row.o{i}v` (overflow to ±inf), as the CPU's `write_output` does.
    fn output(&self, i: usize, spec: &OutSpec, offs: &[u64]) -> Result<String> {
        let mut c = String::new();
        if let Source::Slot(slot) = spec.source
            && is_raw_copy(spec, self.dtypes[slot])
        {
            let nan = match self.dtypes[slot] {
                DType::F32 => format!("(row.o{i} & 0x7fffffffull) > 0x7f800000ull"),
                DType::F64 => format!("(row.o{i} & 0x7fffffffffffffffull) > 0x7ff0000000000000ull"),
                DType::F16 => format!("(row.o{i} & 0x7fffull) > 0x7c00ull"),
                DType::BF16 => format!("(row.o{i} & 0x7fffull) > 0x7f80ull"),
                _ => "false".to_string(),
            };
            let _ = writeln!(c, "    row.o{i} = {};\n    row.o{i}n = {nan};\n    row.o{i}v = false;", self.slot_bits(slot, offs));
            return Ok(c);
        }
        let reg_type = match spec.source {
            Source::Reg(r) => Some(self.prog.reg_type(r)),
            Source::Slot(_) => None,
        };
        match spec.dtype {
            DType::I64 => {
                let Source::Reg(r) = spec.source else { return Err(unsupported("an i64 output from a column of another type")) };
                if reg_type != Some(VType::Int) {
                    return Err(unsupported("an i64 output from a non-integer value"));
                }
                let _ = writeln!(c, "    row.o{i} = (u64)v{r};\n    row.o{i}n = false;\n    row.o{i}v = false;");
            }
            DType::Bool => {
                let Source::Reg(r) = spec.source else { return Err(unsupported("a boolean output from a column of another type")) };
                if reg_type != Some(VType::Bool) {
                    return Err(unsupported("a boolean output from a number"));
                }
                let _ = writeln!(c, "    row.o{i} = v{r} ? 1ull : 0ull;\n    row.o{i}n = false;\n    row.o{i}v = false;");
            }
            DType::F64 => {
                let x = self.f64_value(spec.source, offs)?;
                let _ = writeln!(c, "    {{\n        double y = {};", scaled(spec.scale, &x));
                if let Some(fill) = spec.fill_nan {
                    let _ = writeln!(c, "        if (d_is_nan(y)) y = {};", f64_lit(fill));
                }
                let _ = writeln!(c, "        row.o{i} = d_bits(y);\n        row.o{i}n = d_is_nan(y);\n        row.o{i}v = false;\n    }}");
            }
            DType::F32 | DType::F16 | DType::BF16 => {
                let _ = writeln!(c, "    {{");
                let float_source = match spec.source {
                    Source::Reg(r) if reg_type == Some(VType::F32) => Some(format!("v{r}")),
                    Source::Slot(s) if matches!(self.dtypes[s], DType::F32 | DType::F16 | DType::BF16) => Some(self.slot_value(s, offs)?),
                    _ => None,
                };
                match (spec.scale, float_source) {
                    (None, Some(x)) => {
                        let _ = writeln!(c, "        float f = {x};\n        bool over = false;");
                    }
                    _ => {
                        let x = self.f64_value(spec.source, offs)?;
                        // Rounded once to f16/bf16 (`d_to_f32_odd`), as on the host.
                        let to_f32 = if matches!(spec.dtype, DType::F16 | DType::BF16) { "d_to_f32_odd" } else { "d_to_f32" };
                        let _ = writeln!(
                            c,
                            "        const double y = {};\n        float f = {to_f32}(y);\n        bool over = d_is_finite(y) && f_is_inf(f);",
                            scaled(spec.scale, &x)
                        );
                    }
                }
                if let Some(fill) = spec.fill_nan {
                    let _ = writeln!(c, "        if (f_is_nan(f)) f = {};", f32_lit(crate::backend::fill_f32(fill, spec.dtype)));
                }
                let _ = writeln!(c, "        row.o{i}n = f_is_nan(f);");
                let _ = match spec.dtype {
                    DType::F16 => writeln!(
                        c,
                        "        const u32 h = f32_to_f16(f);\n        over = over || (f_is_finite(f) && (h & 0x7fffu) == 0x7c00u);\n        row.o{i} = h;"
                    ),
                    DType::BF16 => writeln!(
                        c,
                        "        const u32 h = f32_to_bf16(f);\n        over = over || (f_is_finite(f) && (h & 0x7fffu) == 0x7f80u);\n        row.o{i} = h;"
                    ),
                    _ => writeln!(c, "        row.o{i} = __float_as_uint(f);"),
                };
                let _ = writeln!(c, "        row.o{i}v = over;\n    }}");
            }
            d => return Err(unsupported(format!("a computed {d} output"))),
        }
        Ok(c)
    }
}

fn cmp_text(c: Cmp) -> &'static str {
    match c {
        Cmp::Lt => "<",
        Cmp::Le => "<=",
        Cmp::Gt => ">",
        Cmp::Ge => ">=",
        Cmp::Eq => "==",
        Cmp::Ne => "!=",
    }
}

/// The C expression of a fitted scaling of the f64 `x` (the CPU's `scaled`, with the
/// constant tests decided here).
fn scaled(scale: Option<Scale>, x: &str) -> String {
    let (shift, div) = match scale {
        None => return x.to_string(),
        Some(Scale::Standardize { mean, std }) => (mean, std),
        Some(Scale::MinMax { min, max }) => (min, max - min),
    };
    if div > 0.0 || div.is_nan() {
        format!("(({x} - {}) / {})", f64_lit(shift), f64_lit(div))
    } else {
        format!("(d_is_nan({x}) ? {x} : 0.0)")
    }
}

/// The partials of one tile of the block kernel: `part` holds `blocks` partials, `hist`
/// the histogram counts.
pub(crate) fn decode(k: &Kernel, blocks: usize, part: &[u64], hist: &[u64], hist_bins: &[u32]) -> TileResult {
    let s = k.stat_domains.len();
    let pw = k.part_words as usize;
    let mut res = TileResult::default();
    for b in 0..blocks {
        let w = &part[b * pw..(b + 1) * pw];
        let stats = k.stat_domains.iter().enumerate().map(|(i, &dom)| block_stats(dom, &w[1 + STAT_WORDS * i..][..STAT_WORDS])).collect();
        let out_counts =
            (0..(pw - 1 - STAT_WORDS * s) / 2).map(|i| (w[1 + STAT_WORDS * s + 2 * i], w[2 + STAT_WORDS * s + 2 * i])).collect();
        res.blocks.push(BlockPartial { selected: w[0], stats, groups: Default::default(), out_counts });
    }
    for (off, &bins) in k.hist_offsets.iter().zip(hist_bins) {
        let c = &hist[*off as usize..][..bins as usize + 3];
        let mut h = HistAcc::new(bins);
        h.counts.copy_from_slice(&c[..bins as usize]);
        h.below = c[bins as usize];
        h.above = c[bins as usize + 1];
        h.nan = c[bins as usize + 2];
        res.hists.push(h);
    }
    res
}

/// The partials of one tile of the group-by kernel over `units` units: per unit, the keys
/// that saw rows, in key order.
pub(crate) fn decode_groups(k: &Kernel, units: usize, part: &[u64]) -> TileResult {
    let keys = k.group_keys.as_ref().unwrap_or(&KeySlots::Range(0, 0));
    let pw = k.part_words as usize;
    let threads = THREADS as usize;
    let mut res = TileResult::default();
    for u in 0..units {
        let mut bp = BlockPartial::default();
        for sweep in 0..k.sweeps as usize {
            for t in 0..threads {
                let w = &part[((sweep * units + u) * threads + t) * pw..][..pw];
                if w[0] == 0 {
                    continue;
                }
                bp.selected += w[0];
                let stats = k.stat_domains.iter().enumerate().map(|(i, &dom)| block_stats(dom, &w[1 + STAT_WORDS * i..][..STAT_WORDS]));
                bp.groups.push(keys.key(sweep * threads + t), w[0], stats);
            }
        }
        res.blocks.push(bp);
    }
    res
}

/// The 12 words of one statistic's partial.
fn block_stats(dom: Domain, w: &[u64]) -> BlockStats {
    let f = |i: usize| f64::from_bits(w[i]);
    let mut b = BlockStats {
        count: w[0],
        nan: w[1],
        inf: w[2],
        pivot: f(3),
        sum_d: f(4),
        sum_d2: f(5),
        min: f(6),
        max: f(7),
        fmin: f(8),
        fmax: f(9),
        ..BlockStats::default()
    };
    if w[0] > 0 {
        match dom {
            Domain::Int => (b.imin, b.imax) = (w[10] as i64 as i128, w[11] as i64 as i128),
            Domain::U64 => (b.imin, b.imax) = (w[10] as i128, w[11] as i128),
            Domain::Float => {}
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nvrtc;

    /// Compiles every kernel of the shared op corpus with NVRTC, for an H200 (sm_90) and
    /// for the oldest architecture the NVRTC found supports. Without NVRTC it says why, and
    /// fails when `REQUIRE_NVRTC` is set (as CI sets it).
    #[test]
    fn every_generated_kernel_compiles_with_nvrtc() {
        let found = nvrtc::all();
        if found.is_empty() {
            let why = nvrtc::search_report();
            assert!(std::env::var_os("REQUIRE_NVRTC").is_none(), "REQUIRE_NVRTC is set but no NVRTC was found:\n{why}");
            eprintln!("skipped: no NVRTC library found:\n{why}");
            return;
        }
        // Programs with many outputs are split in parts of at most 40 (compile time grows
        // faster than the output count; every output kind is still covered).
        let mut corpus = Vec::new();
        for (prog, dtypes) in crate::backend::test_corpus::corpus() {
            for part in prog.outputs.chunks(40).map(|c| FusedProgram { outputs: c.to_vec(), ..prog.clone() }) {
                corpus.push((part, dtypes.clone()));
            }
            if prog.outputs.is_empty() {
                corpus.push((prog, dtypes));
            }
        }
        // The first group-by also by a table of keys.
        if let Some(g) = corpus.iter().find(|(p, _)| p.key.is_some()).cloned() {
            corpus.push(g);
        }
        let table_from = corpus.len() - 1;
        let mut jobs = Vec::new();
        for (n, (prog, dtypes)) in corpus.iter().enumerate() {
            let keys = prog.key.map(|_| if n == table_from { KeySlots::Table(vec![-7, 3, 1 << 40]) } else { KeySlots::Range(-5, 600) });
            let k = generate(prog, dtypes, 4 * BLOCK_ROWS, keys).unwrap_or_else(|e| panic!("corpus program {n}: {e}"));
            // The first NVRTC found for an H200 and for its oldest architecture; the others for an H200.
            for (i, lib) in found.iter().enumerate() {
                let oldest = lib.supported_archs().iter().copied().min().unwrap_or(90);
                let archs = if i == 0 { vec![90, oldest] } else { vec![90] };
                for arch in archs {
                    jobs.push((n, k.source.clone(), lib, arch));
                }
            }
        }
        for lib in found {
            eprintln!("NVRTC {}.{} at {}", lib.version.0, lib.version.1, lib.path.display());
        }
        // Two at a time: NVRTC compiles distinct programs in parallel.
        std::thread::scope(|s| {
            let (left, right) = jobs.split_at(jobs.len() / 2);
            for half in [left, right] {
                s.spawn(move || {
                    for (n, src, lib, arch) in half {
                        if let Err(e) = lib.compile(src, *arch) {
                            panic!("corpus program {n} for sm_{arch} with NVRTC {}.{}: {e}", lib.version.0, lib.version.1);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn group_by_key_ranges() {
        let prog = FusedProgram { inputs: vec![0], key: Some(0), ..FusedProgram::default() };
        assert!(matches!(generate(&prog, &[DType::U16], BLOCK_ROWS, None), Err(Error::Unsupported(_))), "a wide key needs its range");
        assert_eq!(generate(&prog, &[DType::U8], BLOCK_ROWS, None).map(|k| k.sweeps).ok(), Some(1));
        let k = generate(&prog, &[DType::I64], BLOCK_ROWS, Some(KeySlots::Range(-5, 600))).expect("606 keys");
        assert_eq!((k.group_keys.as_ref().map(|g| g.key(0)), k.sweeps, k.in_offsets[0]), (Some(-5), 3, 0));
        let wide = generate(&prog, &[DType::I32], BLOCK_ROWS, Some(KeySlots::Range(0, 70_000)));
        assert!(matches!(wide, Err(Error::Unsupported(_))), "a range of more than 65,536 keys");
        // A table of 302 keys: two sweeps; the columns start after its 2,416 bytes (aligned).
        let table = crate::backend::test_corpus::key_table();
        let k = generate(&prog, &[DType::I64], BLOCK_ROWS, Some(KeySlots::Table(table))).expect("302 keys");
        assert_eq!((k.sweeps, k.in_offsets[0]), (2, 2560));
        assert!(k.source.contains("#define KEY_COUNT 302u"), "the kernel knows the table");
        let many = generate(&prog, &[DType::I64], BLOCK_ROWS, Some(KeySlots::Table((0..70_000).collect())));
        assert!(matches!(many, Err(Error::Unsupported(_))), "more than 65,536 keys");
        let float = FusedProgram { inputs: vec![0], key: Some(0), ..FusedProgram::default() };
        assert!(matches!(generate(&float, &[DType::F32], BLOCK_ROWS, Some(KeySlots::Range(0, 1))), Err(Error::Unsupported(_))));
    }

    #[test]
    fn scalings_decide_constant_divisors_here() {
        assert_eq!(scaled(Some(Scale::Standardize { mean: 1.0, std: 0.0 }), "x"), "(d_is_nan(x) ? x : 0.0)");
        assert!(scaled(Some(Scale::MinMax { min: 1.0, max: 3.0 }), "x").contains(&format!("{:016x}", 2.0f64.to_bits())));
        assert!(scaled(Some(Scale::Standardize { mean: 0.0, std: f64::NAN }), "x").contains("/"));
    }
}
