//! The CPU backend: blocks of rows in parallel on rayon, each evaluated column-wise with
//! loops the compiler vectorizes; the whole block body is compiled three times (AVX-512,
//! AVX2+FMA, baseline x86-64) and picked at run time from the CPU's features.

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::cpu_simd::{self, GW, GroupLanes};
use super::{Backend, BlockPartial, GroupPartials, TileOut, TileResult};
use crate::accum::{BlockStats, HistAcc, bin_scale};
use crate::backend::KeyMap;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::GROUP_BLOCK_ROWS;
use crate::ops::{Cmp, Op, VType, cpu as k};
use crate::program::{FusedProgram, HistSpec, Instr, OutSpec, Scale, Source, Value};
use crate::source::Column;
use crate::source::Dataset;

/// Which vector code the CPU runs.
pub(crate) fn simd_level() -> &'static str {
    match level() {
        Level::Avx512 => "avx512",
        Level::Avx2 => "avx2+fma",
        Level::Base => "sse2",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    Base,
}

/// The best vector code this CPU runs, capped by `TILESTREAM_SIMD` (`avx2` or `sse2`: run
/// the code of an older CPU, to test or compare it).
fn level() -> Level {
    let cap = match std::env::var("TILESTREAM_SIMD").as_deref() {
        Ok("sse2") => Level::Base,
        Ok("avx2") => Level::Avx2,
        _ => Level::Avx512,
    };
    #[cfg(target_arch = "x86_64")]
    {
        if cap == Level::Avx512
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
        {
            return Level::Avx512;
        }
        if cap != Level::Base && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return Level::Avx2;
        }
    }
    Level::Base
}

/// The CPU device, with its own thread pool when a thread count was asked for.
pub(crate) struct Cpu {
    pool: Option<rayon::ThreadPool>,
    level: Level,
    /// The run's memory budget (`RunOptions::memory_budget`).
    budget: u64,
}

impl Cpu {
    /// A CPU backend on `threads` threads (all cores when `None`) for runs under a memory
    /// budget of `budget` bytes.
    pub(crate) fn new(threads: Option<usize>, budget: u64) -> Result<Cpu> {
        let pool = match threads {
            None => None,
            Some(n) if !(1..=crate::exec::MAX_THREADS).contains(&n) => {
                return Err(Error::plan(format!("{n} threads asked for: a run takes 1 to {}", crate::exec::MAX_THREADS)));
            }
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| Error::plan(format!("cannot start {n} threads: {e}")))?,
            ),
        };
        Ok(Cpu { pool, level: level(), budget })
    }

    /// Threads the backend runs on.
    fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads()).max(1)
    }
}

/// Rows per partial on the CPU of a group-by that computes nothing per row (no filter, no
/// expression) and reads its columns in place: four GPU units. Every partial carries each
/// group's statistics, and merging them (serial, in row order) and setting a unit up cost
/// the same whatever its rows: with 262,144 rows a 64-key group-by of 8 columns ran 12 %
/// faster than with 65,536 on two cores, while a unit's slot codes (1 MiB; 8-bit keys over
/// f32 columns make theirs 8,192 rows at a time, `Slots::Key8`) still fit in L2 (with
/// 1,048,576 rows it was slower again). Other group-bys keep `GROUP_BLOCK_ROWS`:
/// each thread holds a unit of every expression's values, and of every column it converts
/// (f16, bf16) or gathers (strided, unaligned). A GPU keeps the smaller unit too: a unit is
/// one thread block there, and fewer would leave a large GPU idle.
pub(crate) const CPU_GROUP_BLOCK_ROWS: u64 = 4 * GROUP_BLOCK_ROWS;

/// Rows a block's kernels would take at a time on the CPU were its working buffers small:
/// `CPU_GROUP_BLOCK_ROWS` for a group-by without instructions whose columns `make_view`
/// reads in place, else the GPUs' unit.
fn natural_block_rows(prog: &FusedProgram, ds: &Dataset) -> u64 {
    let read_as_is = |&c: &usize| {
        let col = &ds.columns()[c];
        !matches!(col.dtype, DType::F16 | DType::BF16) && zero_copy(col)
    };
    if prog.key.is_some() && prog.instrs.is_empty() && prog.inputs.iter().all(read_as_is) {
        CPU_GROUP_BLOCK_ROWS
    } else {
        crate::exec::unit_rows(prog)
    }
}

/// Most bytes of working buffers one thread's block may hold (its gathered and converted
/// columns, its expressions' values): a group-by over a row-major [N, 768] f32 matrix (a
/// table of embeddings) gathered 65,536 rows at a time held 200 MB per thread, whatever
/// the budget. Fixed rather than taken from the budget, so that the blocks, and the bits
/// of every result, are the same under any budget.
const BLOCK_SCRATCH_BYTES: u64 = 8 << 20;

/// The fewest rows of a block, however wide its rows.
const MIN_BLOCK_ROWS: u64 = 64;

/// Rows a block's kernels take at a time on the CPU: `natural_block_rows`, halved while
/// the block's working buffers exceed `BLOCK_SCRATCH_BYTES`.
fn block_rows(prog: &FusedProgram, ds: &Dataset) -> u64 {
    let per_row = block_bytes_per_row(prog, ds);
    let mut rows = natural_block_rows(prog, ds);
    while rows > MIN_BLOCK_ROWS && rows * per_row > BLOCK_SCRATCH_BYTES {
        rows /= 2;
    }
    rows
}

/// Bytes per row of a block's working buffers, at most: each gathered column's values, an
/// f32 per f16/bf16 value, 8 bytes per expression register, and 16 for key slots, group
/// order and selected rows.
fn block_bytes_per_row(prog: &FusedProgram, ds: &Dataset) -> u64 {
    let inputs: u64 = prog
        .inputs
        .iter()
        .map(|&c| {
            let col = &ds.columns()[c];
            let gathered = if zero_copy(col) { 0 } else { col.dtype.size() as u64 };
            let converted = if matches!(col.dtype, DType::F16 | DType::BF16) { 4 } else { 0 };
            gathered + converted
        })
        .sum();
    inputs + 8 * prog.instrs.len() as u64 + 16
}

/// Rows per partial of a group-by whose key is wider than 8 bits, on the CPU: its blocks
/// join their groups into one partial (`BlockStats::append`, slots numbered for the whole
/// unit). Such a key may have 65,536 groups, and every partial carries each group's
/// statistics, which the driver merges serially: with a partial per block, 20M rows in
/// 60,000 groups made 4.6M group partials (nearly one per four rows) and took 8.5 s.
const WIDE_KEY_UNIT_ROWS: u64 = 8 * CPU_GROUP_BLOCK_ROWS;

/// Groups each of `units` units in flight may hold within half of `budget`.
fn group_allowance(budget: u64, units: u64, prog: &FusedProgram, ds: &Dataset) -> usize {
    (budget / 2 / units.max(1) / crate::exec::group_bytes(prog, ds)) as usize
}

/// How many groups a unit of a group-by may hold, and what holding more means.
#[derive(Clone, Copy)]
struct GroupLimit {
    /// Most groups a unit may hold: its equal share of half the budget.
    groups: usize,
    /// Bytes each group holds while its unit runs (`exec::group_bytes`).
    group_bytes: u64,
    /// Rows per unit.
    unit_rows: u64,
    /// Whether the tile holds several units, so that the driver can run its rows again in
    /// smaller tiles (`DeviceOutOfMemory`); a tile of one unit cannot shrink, and the query
    /// is refused.
    shrinkable: bool,
}

impl GroupLimit {
    /// Whether a unit may hold `g` groups.
    fn check(&self, g: usize) -> Result<()> {
        if g <= self.groups {
            return Ok(());
        }
        let mib = |groups: usize| (groups as u64 * self.group_bytes).div_ceil(1 << 20);
        let message = format!(
            "a group-by unit of {} rows holds {g} groups, whose statistics need {} MiB, more than its share of the memory budget ({} MiB)",
            self.unit_rows,
            mib(g),
            mib(self.groups)
        );
        if self.shrinkable {
            Err(Error::DeviceOutOfMemory { device: "cpu".into(), message })
        } else {
            Err(Error::plan(format!("{message}; raise --memory-budget or select fewer --columns")))
        }
    }
}

/// The fewest groups per unit worth a tile of one unit per thread (`Cpu::tile_rows`).
const MIN_GROUP_ALLOWANCE: usize = 256;

/// Rows per tile on the CPU on `threads` threads: the driver's (`exec::tile_rows`), or one
/// unit per thread (as many as the rows' mapped bytes allow) for a group-by by a wide key
/// whose worst case (65,536 groups per unit) leaves fewer units to a tile than threads:
/// each unit may then hold a share of the
/// budget's groups (`Prepared::group_limit`), and a unit with more makes the driver run
/// its rows again in smaller tiles. (With the worst case, a group-by of eight columns ran
/// on one thread under the default budget.)
pub(crate) fn tile_rows(prog: &FusedProgram, ds: &Dataset, budget: u64, threads: usize) -> u64 {
    let unit = unit_rows(prog, ds);
    let safe = crate::exec::tile_rows(prog, ds, budget, unit);
    // Never more units than the rows' input bytes allow (the bound `safe` shares).
    let units = (threads as u64).min(crate::exec::row_units(prog, ds, budget, unit));
    if wide_key(prog, ds) && safe < units * unit && group_allowance(budget, units, prog, ds) >= MIN_GROUP_ALLOWANCE {
        units * unit
    } else {
        safe
    }
}

/// Whether a program is a group-by by a key wider than 8 bits.
fn wide_key(prog: &FusedProgram, ds: &Dataset) -> bool {
    prog.key.is_some_and(|k| ds.columns()[prog.inputs[k]].dtype.size() > 1) && prog.outputs.is_empty()
}

/// Rows per partial of a program on the CPU: for a group-by, `WIDE_KEY_UNIT_ROWS` by a key
/// wider than 8 bits, a block's natural rows by an 8-bit key (`natural_block_rows`), halved
/// while the unit spans more of the files than `UNIT_MAPPED_BYTES` allows; else a block
/// (`block_rows`).
pub(crate) fn unit_rows(prog: &FusedProgram, ds: &Dataset) -> u64 {
    let (unit, most) = match prog.key {
        _ if wide_key(prog, ds) => (WIDE_KEY_UNIT_ROWS, UNIT_MAPPED_BYTES),
        // Wide rows make blocks smaller, not the partials of an 8-bit key more numerous:
        // a unit's blocks join their groups.
        Some(_) => (natural_block_rows(prog, ds), UNIT_MAPPED_BYTES / 4),
        None => return block_rows(prog, ds),
    };
    // A tile holds at least one unit: rows of a wide matrix must not make it map gigabytes.
    let per_row = ds.mapped_bytes_per_row(&prog.inputs);
    let mut rows = unit;
    while rows > MIN_BLOCK_ROWS && rows * per_row > most {
        rows /= 2;
    }
    rows
}

/// Most bytes of the files a group-by's unit by a wide key may span
/// (`Dataset::mapped_bytes_per_row`; a quarter of it by an 8-bit key, whose units are
/// smaller anyway): 2,097,152 rows of a [N, 768] f32 matrix are 6 GiB, and a tile holds at
/// least a unit. Half the default budget, so that the default budget's tiles hold two
/// units (one per thread here) and the usual group-bys keep their units (a unit of half
/// the rows made one of 60,000 keys over eight f32 columns 45 % slower); fixed rather than
/// taken from the budget, so that units, and the bits of every result, are the same under
/// any budget.
const UNIT_MAPPED_BYTES: u64 = 128 << 20;

/// A program checked against the dataset.
pub(crate) struct Prepared {
    prog: FusedProgram,
    dtypes: Vec<DType>,
    steps: Vec<Step>,
    /// Rows per partial.
    unit: u64,
    /// Rows the kernels take at a time: the unit, or a whole fraction of it.
    block: u64,
    /// Most groups a unit may hold: each unit of a tile gets an equal share of half the
    /// budget (no less than the worst case when the tile is the driver's own and holds
    /// several; a tile larger than that, `Cpu::tile_rows`, may fall short); a unit with more
    /// groups fails with `DeviceOutOfMemory`, and the driver runs its rows again in smaller
    /// tiles, down to one unit, whose excess refuses the query.
    group_limit: GroupLimit,
    /// How each block gathers the columns it cannot read in place.
    gather: GatherPlan,
    /// Per statistics entry: read in place from the mapping (an input column stored
    /// contiguously in a type the kernels take as is: any but f16/bf16, and those too with
    /// AVX-512, whose kernel widens them in registers) in a pass without filter or key, so a
    /// task of several blocks runs it column by column after the blocks' other work
    /// (`run_group`). With a filter, grouping measured slower (the filter's columns are
    /// read twice, the masks kept per block).
    direct: Vec<bool>,
    /// Per input slot: read only by in-place statistics, so blocks make no view of it (an
    /// f16/bf16 view would be converted for nothing).
    direct_only: Vec<bool>,
    /// Per-thread buffers kept between tiles (allocating and zeroing them per tile costs
    /// more than the work on small tiles): one slot per pool thread, so that a run holds at
    /// most one set per thread (with one per rayon fold split, a 16M-bin histogram's
    /// counters were allocated some 15 times on two threads, 3 GiB; a pool shared by all
    /// threads, locked per task, made histograms 7 % slower). A group-by's large per-unit
    /// state is freed after each unit (`UnitGroups::take`).
    scratch: Vec<ScratchSlot>,
}

/// How the CPU evaluates one instruction.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// As written.
    Plain,
    /// Not needed: a load whose only use reads the column directly (below).
    Skip,
    /// `column cmp constant` straight from the column's block, without a loaded register.
    CmpColumnF { slot: usize, cmp: Cmp, k: f32 },
    /// The same for integer columns.
    CmpColumnI { slot: usize, cmp: Cmp, k: i64 },
}

/// Peephole for the commonest filter shape, `column cmp literal`: compare straight from
/// the mapped block instead of first converting the column into a register.
fn plan_steps(prog: &FusedProgram, dtypes: &[DType]) -> Vec<Step> {
    let mut uses = vec![0usize; prog.instrs.len()];
    for ins in &prog.instrs {
        if let Instr::Op { op, args } = ins {
            for &a in &args[..op.signature().0.len()] {
                uses[a] += 1;
            }
        }
    }
    let sources = prog.stats.iter().chain(prog.hists.iter().map(|h| &h.source)).chain(prog.outputs.iter().map(|o| &o.source));
    for src in sources {
        if let Source::Reg(r) = src {
            uses[*r] += 1;
        }
    }
    if let Some(m) = prog.mask {
        uses[m] += 1;
    }
    let mut steps = vec![Step::Plain; prog.instrs.len()];
    for (r, ins) in prog.instrs.iter().enumerate() {
        let Instr::Op { op: Op::CmpF(cmp) | Op::CmpI(cmp), args } = ins else { continue };
        let (a, b) = (args[0], args[1]);
        let (load, konst, cmp) = match (&prog.instrs[a], &prog.instrs[b]) {
            (Instr::Load { .. }, Instr::Const(_)) => (a, b, *cmp),
            (Instr::Const(_), Instr::Load { .. }) => (b, a, cmp.flip()),
            _ => continue,
        };
        let Instr::Load { slot, .. } = prog.instrs[load] else { continue };
        steps[r] = match prog.instrs[konst] {
            Instr::Const(Value::F(k)) if matches!(dtypes[slot], DType::F32 | DType::F16 | DType::BF16) => Step::CmpColumnF { slot, cmp, k },
            Instr::Const(Value::I(k)) if dtypes[slot].is_int() => Step::CmpColumnI { slot, cmp, k },
            _ => continue,
        };
        if uses[load] == 1 {
            steps[load] = Step::Skip;
        }
    }
    steps
}

impl Cpu {
    /// Runs the program over rows `tile` (which starts on a block boundary).
    pub(crate) fn run_tile(&self, prep: &Prepared, ds: &Dataset, tile: Range<u64>, out: Option<&mut TileOut>) -> Result<TileResult> {
        let unit = prep.unit;
        let nblocks = (tile.end - tile.start).div_ceil(unit) as usize;
        let mut per_block: Vec<Vec<&mut [u8]>> = (0..nblocks).map(|_| Vec::new()).collect();
        if let Some(out) = out {
            for (col, spec) in out.columns.iter_mut().zip(&prep.prog.outputs) {
                for (b, chunk) in col.chunks_mut(unit as usize * spec.dtype.size()).enumerate().take(nblocks) {
                    per_block[b].push(chunk);
                }
            }
        }
        let level = self.level;
        let threads = self.threads();
        let group = group_blocks(prep, nblocks, threads);
        let work = || {
            let mut per_block = per_block;
            per_block
                .par_chunks_mut(group)
                .enumerate()
                .fold(Vec::new, |mut done, (g, outs)| {
                    let r0 = tile.start + (g * group) as u64 * unit;
                    let rows = (tile.end - r0).min(unit * outs.len() as u64) as usize;
                    // The running thread's own buffers: no other thread takes this slot (and
                    // if one did, it would wait: nothing here nests rayon work that could
                    // re-enter it on this thread). A fold, not a flat map: one list of
                    // partials per split (a list per task made histograms 3 % slower).
                    let slot = rayon::current_thread_index().unwrap_or(0) % prep.scratch.len();
                    let mut held = prep.scratch[slot].0.lock().unwrap_or_else(|e| e.into_inner());
                    let s = held.get_or_insert_with(|| Scratch::new(&prep.prog, prep.block as usize));
                    let parts = run_group(level, prep, ds, r0, rows, s, outs);
                    done.extend(parts.into_iter().enumerate().map(|(j, r)| (g * group + j, r)));
                    done
                })
                .collect::<Vec<_>>()
        };
        let parts = match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        };
        let mut hists: Vec<HistAcc> = prep.prog.hists.iter().map(|h| HistAcc::new(h.bins)).collect();
        if !hists.is_empty() {
            for slot in &prep.scratch {
                if let Some(scratch) = slot.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    for (h, ext) in hists.iter_mut().zip(scratch.hists.iter_mut()) {
                        ext.drain_into(h);
                    }
                }
            }
        }
        let mut blocks: Vec<(usize, BlockPartial)> = Vec::with_capacity(nblocks);
        for (b, r) in parts.into_iter().flatten() {
            blocks.push((b, r?));
        }
        blocks.sort_by_key(|(b, _)| *b);
        Ok(TileResult { blocks: blocks.into_iter().map(|(_, p)| p).collect(), hists })
    }
}

impl Backend for Cpu {
    type Prepared = Prepared;
    type Ticket = TileResult;

    fn unit_rows(&self, prog: &FusedProgram, ds: &Dataset) -> u64 {
        unit_rows(prog, ds)
    }

    fn tile_rows(&self, prog: &FusedProgram, ds: &Dataset, budget: u64) -> u64 {
        tile_rows(prog, ds, budget, self.threads())
    }

    fn submit(&self, prep: &Prepared, ds: &Dataset, tile: Range<u64>, out: Option<&mut TileOut>) -> Result<TileResult> {
        self.run_tile(prep, ds, tile, out)
    }

    fn collect(&self, _prep: &Prepared, ticket: TileResult, _out: Option<&mut TileOut>) -> Result<TileResult> {
        Ok(ticket)
    }

    fn prepare(&self, prog: &FusedProgram, ds: &Dataset, tile_rows: u64) -> Result<Prepared> {
        let unit = self.unit_rows(prog, ds);
        let dtypes: Vec<DType> = prog.inputs.iter().map(|&c| ds.columns()[c].dtype).collect();
        let steps = plan_steps(prog, &dtypes);
        let gather = GatherPlan::new(prog, ds, self.level);
        let direct = prog
            .stats
            .iter()
            .map(|src| match *src {
                Source::Slot(i) => {
                    prog.key.is_none()
                        && prog.mask.is_none()
                        && zero_copy(&ds.columns()[prog.inputs[i]])
                        && (self.level == Level::Avx512 || !matches!(dtypes[i], DType::F16 | DType::BF16))
                }
                Source::Reg(_) => false,
            })
            .collect::<Vec<bool>>();
        let direct_only = (0..prog.inputs.len())
            .map(|i| {
                let slot = |src: &Source| *src == Source::Slot(i);
                // (A key's column is never direct-only: with a key no statistics are direct.)
                let other_use =
                    prog.instrs.iter().any(|ins| matches!(ins, Instr::Load { slot, .. } | Instr::LoadKey { slot } if *slot == i))
                        || prog.hists.iter().any(|h| slot(&h.source))
                        || prog.outputs.iter().any(|o| slot(&o.source))
                        || prog.stats.iter().zip(&direct).any(|(src, &d)| !d && slot(src));
                !other_use && prog.stats.iter().any(slot)
            })
            .collect();
        Ok(Prepared {
            prog: prog.clone(),
            dtypes,
            steps,
            unit,
            block: block_rows(prog, ds).min(unit),
            // Each unit of the tile its share (at least the worst case when the tile is the
            // driver's own and holds several units, `exec::tile_rows`); a tile of one unit,
            // like every refusal, no less than 64 MiB's share (a tiny budget sizes tiles).
            group_limit: {
                let units = tile_rows.div_ceil(unit).max(1);
                let budget = if units > 1 { self.budget } else { self.budget.max(crate::exec::MIN_REFUSAL_BUDGET) };
                GroupLimit {
                    groups: group_allowance(budget, units, prog, ds),
                    group_bytes: crate::exec::group_bytes(prog, ds),
                    unit_rows: unit,
                    shrinkable: units > 1,
                }
            },
            gather,
            direct,
            direct_only,
            scratch: (0..self.threads()).map(|_| ScratchSlot(std::sync::Mutex::new(None))).collect(),
        })
    }
}

/// One thread's buffers (`Prepared::scratch`), on cache lines of their own: another
/// thread's lock word beside them would take their line away at every task.
#[repr(align(128))]
struct ScratchSlot(std::sync::Mutex<Option<Scratch>>);

/// A task's buffers, reused by the tasks that follow it (`Prepared::scratch`).
struct Scratch {
    gather: Vec<Vec<u64>>,
    conv: Vec<Vec<f32>>,
    regs: Vec<Reg>,
    /// Per histogram: bin counts plus below, above, NaN and unselected.
    hists: Vec<HistCounts>,
    codes: Vec<u32>,
    order: Vec<u32>,
    gbuf: Vec<f32>,
    sel: Vec<u32>,
    keys: Vec<i128>,
    slots: Vec<u32>,
    key_table: Vec<u32>,
    key_map: KeyMap,
    unit_groups: UnitGroups,
    fbuf: Vec<f32>,
    dbuf: Vec<f64>,
    hbuf: Vec<u16>,
}

/// Counts `codes` into `COPIES` interleaved copies of `stride` counters: code k of the slice
/// in copy `k % COPIES`, so that runs of one code do not wait on each other's increments.
/// Shared by the portable histogram and the AVX-512 one (`cpu_simd::hist_count_f32`).
///
/// # Safety
/// Every code is below `stride`; they index unchecked.
#[inline(always)]
pub(crate) unsafe fn count_codes<const COPIES: usize>(codes: &[u32], counts: &mut [u32], stride: usize) {
    // Every copy is a full `stride` long (the unchecked indexing below).
    assert_eq!(counts.len(), COPIES * stride, "count_codes: bad shapes");
    let runs = codes.chunks_exact(COPIES);
    let tail = runs.remainder();
    for run in runs {
        for (k, &c) in run.iter().enumerate() {
            debug_assert!((c as usize) < stride);
            // SAFETY: c < stride (the caller's promise) and k < COPIES, so the counter lies
            // inside `counts` (asserted above).
            unsafe { *counts.get_unchecked_mut(k * stride + c as usize) += 1 };
        }
    }
    for (k, &c) in tail.iter().enumerate() {
        // SAFETY: as above.
        unsafe { *counts.get_unchecked_mut(k * stride + c as usize) += 1 };
    }
}

/// One thread's counts of a histogram's codes (bins, then below, above, NaN, unselected):
/// u32 counters in `hist_copies` interleaved copies (a third less time per count than u64
/// ones), added into u64 totals before any of them could overflow.
struct HistCounts {
    /// `copies * stride` counters, copy k at `k * stride`.
    copies: Vec<u32>,
    /// Codes per copy: bins + 4.
    stride: usize,
    /// Totals of earlier flushes.
    wide: Vec<u64>,
    /// Values counted into `copies` since the last flush (bounds every counter).
    pending: u64,
}

impl HistCounts {
    fn new(bins: u32) -> HistCounts {
        let stride = bins as usize + 4;
        HistCounts { copies: vec![0; hist_copies(bins) * stride], stride, wide: vec![0; stride], pending: 0 }
    }

    /// Makes room for `n` more values: flushes first if a counter could pass u32::MAX.
    fn reserve(&mut self, n: usize) {
        // A block's values (at most a unit of rows) always fit.
        debug_assert!(n <= u32::MAX as usize);
        if self.pending + n as u64 > u32::MAX as u64 {
            self.flush();
        }
        self.pending += n as u64;
    }

    fn flush(&mut self) {
        for copy in self.copies.chunks_exact_mut(self.stride) {
            for (w, c) in self.wide.iter_mut().zip(copy.iter_mut()) {
                *w += *c as u64;
                *c = 0;
            }
        }
        self.pending = 0;
    }

    /// Counts `codes` into the interleaved copies (eight for small histograms), so that runs
    /// of one bin do not serialize on a single memory location.
    ///
    /// # Safety
    /// Every code is at most `bins + 3` (as `hist_codes` makes them); they index unchecked.
    unsafe fn add(&mut self, codes: &[u32], bins: u32) {
        let (counts, stride) = self.room(codes.len());
        // Every code is at most bins + 3 < stride = bins + 4.
        assert!(stride > bins as usize + 3);
        // SAFETY: codes < stride (above); `counts` holds 1 or HIST_COPIES copies of `stride`.
        unsafe {
            if counts.len() == stride { count_codes::<1>(codes, counts, stride) } else { count_codes::<HIST_COPIES>(codes, counts, stride) }
        }
    }

    /// The counters, with room for `n` more values (flushed first if needed), and their
    /// stride (bins + 4).
    fn room(&mut self, n: usize) -> (&mut [u32], usize) {
        self.reserve(n);
        (&mut self.copies, self.stride)
    }

    /// Adds the totals so far into `h` (bins, then below, above and NaN; unselected rows are
    /// not reported) and starts again from zero, allocating nothing (a histogram may have
    /// millions of bins).
    fn drain_into(&mut self, h: &mut HistAcc) {
        self.flush();
        let bins = self.stride - 4;
        h.counts.resize(bins, 0);
        for (a, w) in h.counts.iter_mut().zip(&self.wide[..bins]) {
            *a += *w;
        }
        h.below += self.wide[bins];
        h.above += self.wide[bins + 1];
        h.nan += self.wide[bins + 2];
        self.wide.fill(0);
    }
}

enum Reg {
    F(Vec<f32>),
    I(Vec<i64>),
    B(Vec<u8>),
}

impl Scratch {
    /// Empties the group-by state for a new unit: its key slots are numbered afresh (the
    /// last unit's 16-bit keys leave the table, which is all zeros between units).
    fn start_unit(&mut self) {
        if !self.key_table.is_empty() {
            for &kv in &self.keys {
                self.key_table[(kv + KEY_OFFSET as i128) as usize] = 0;
            }
        }
        self.keys.clear();
        self.key_map.next_unit();
        self.unit_groups.clear();
    }

    fn new(prog: &FusedProgram, unit: usize) -> Scratch {
        let regs = prog
            .instrs
            .iter()
            .enumerate()
            .map(|(r, ins)| match ins {
                Instr::Const(Value::F(v)) => Reg::F(vec![*v; unit]),
                Instr::Const(Value::I(v)) => Reg::I(vec![*v; unit]),
                Instr::Const(Value::B(v)) => Reg::B(vec![*v as u8; unit]),
                _ => match prog.reg_type(r) {
                    VType::F32 => Reg::F(vec![0.0; unit]),
                    VType::Int => Reg::I(vec![0; unit]),
                    VType::Bool => Reg::B(vec![0; unit]),
                },
            })
            .collect();
        Scratch {
            gather: prog.inputs.iter().map(|_| Vec::new()).collect(),
            conv: prog.inputs.iter().map(|_| Vec::new()).collect(),
            regs,
            hists: prog.hists.iter().map(|h| HistCounts::new(h.bins)).collect(),
            codes: Vec::new(),
            order: Vec::new(),
            gbuf: Vec::new(),
            sel: Vec::new(),
            keys: Vec::new(),
            slots: Vec::new(),
            key_table: Vec::new(),
            key_map: KeyMap::new(),
            unit_groups: UnitGroups::default(),
            fbuf: Vec::new(),
            dbuf: Vec::new(),
            hbuf: Vec::new(),
        }
    }
}

/// A block of one input column in a native type (f16/bf16 converted to f32, bool as u8);
/// an empty `U8` for a column only in-place statistics read (`Prepared::direct_only`).
#[derive(Clone, Copy)]
enum View<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I8(&'a [i8]),
    U8(&'a [u8]),
    I16(&'a [i16]),
    U16(&'a [u16]),
    I32(&'a [i32]),
    U32(&'a [u32]),
    I64(&'a [i64]),
    U64(&'a [u64]),
}

macro_rules! on_view {
    ($v:expr, $x:ident => $e:expr) => {
        match $v {
            View::F32($x) => $e,
            View::F64($x) => $e,
            View::I8($x) => $e,
            View::U8($x) => $e,
            View::I16($x) => $e,
            View::U16($x) => $e,
            View::I32($x) => $e,
            View::U32($x) => $e,
            View::I64($x) => $e,
            View::U64($x) => $e,
        }
    };
}

/// Element types a view can hold.
trait Elem: Copy + PartialOrd + Send + Sync + 'static {
    const FLOAT: bool;
    fn f64(self) -> f64;
    fn f32(self) -> f32;
    fn i64(self) -> i64;
    /// The range of an 8- or 16-bit integer type, as i64 (only those use it; wider types
    /// and floats give a range clipped to i64's).
    const RANGE: (i64, i64);
    /// `k as Self`, for `k` in `RANGE` (integers only).
    fn from_i64(k: i64) -> Self;
    fn i128(self) -> i128;
    fn is_nan(self) -> bool;
    fn is_inf(self) -> bool;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const FLOAT: bool = false;
            #[inline(always)] fn f64(self) -> f64 { self as f64 }
            #[inline(always)] fn f32(self) -> f32 { self as f32 }
            // u64 values above i64::MAX saturate (documented in README's expression notes).
            #[inline(always)] fn i64(self) -> i64 { i64::try_from(self).unwrap_or(i64::MAX) }
            const RANGE: (i64, i64) = (<$t>::MIN as i64, if <$t>::MAX as u64 > i64::MAX as u64 { i64::MAX } else { <$t>::MAX as i64 });
            #[inline(always)] fn from_i64(k: i64) -> Self { k as $t }
            #[inline(always)] fn i128(self) -> i128 { self as i128 }
            #[inline(always)] fn is_nan(self) -> bool { false }
            #[inline(always)] fn is_inf(self) -> bool { false }
        }
    )*};
}
int_elem!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! float_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const FLOAT: bool = true;
            #[inline(always)] fn f64(self) -> f64 { self as f64 }
            #[inline(always)] fn f32(self) -> f32 { self as f32 }
            #[inline(always)] fn i64(self) -> i64 { self as i64 }
            const RANGE: (i64, i64) = (i64::MIN, i64::MAX);
            #[inline(always)] fn from_i64(k: i64) -> Self { k as $t }
            #[inline(always)] fn i128(self) -> i128 { self as i128 }
            #[inline(always)] fn is_nan(self) -> bool { self.is_nan() }
            #[inline(always)] fn is_inf(self) -> bool { self.is_infinite() }
        }
    )*};
}
float_elem!(f32, f64);

/// Reads rows `[r0, r0+n)` of a column as a typed slice: zero-copy when the column is
/// contiguous and aligned, else the rows `gather_block` gathered into `buf`; f16/bf16 are
/// converted into `conv`.
/// Inlined into the callers compiled for each vector level, so that the conversions
/// vectorize with its instructions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn make_view<'a>(
    ds: &'a Dataset,
    col: usize,
    dtype: DType,
    r0: u64,
    n: usize,
    buf: &'a mut Vec<u64>,
    conv: &'a mut Vec<f32>,
    level: Level,
) -> View<'a> {
    let c = &ds.columns()[col];
    let size = dtype.size();
    let span = ds.column_span(col, r0, r0 + n as u64);
    let bytes: &'a [u8] = if in_place(c, span) { span } else { &bytemuck::cast_slice(buf.as_slice())[..n * size] };
    if let DType::F16 | DType::BF16 = dtype {
        conv.resize(n, 0.0);
        let (src, dst) = (bytemuck::cast_slice::<u8, u16>(bytes), &mut conv[..n]);
        if dtype == DType::BF16 {
            bf16_to_f32(src, dst)
        } else {
            f16_to_f32(src, dst, level)
        }
        return View::F32(&conv[..n]);
    }
    typed_view(bytes, dtype)
}

/// Packed values of a type the kernels take as they are (not f16/bf16, which `make_view`
/// converts) as a view.
#[inline(always)]
fn typed_view(bytes: &[u8], dtype: DType) -> View<'_> {
    match dtype {
        DType::F32 => View::F32(bytemuck::cast_slice(bytes)),
        DType::F64 => View::F64(bytemuck::cast_slice(bytes)),
        DType::I8 => View::I8(bytemuck::cast_slice(bytes)),
        DType::U8 | DType::Bool => View::U8(bytes),
        DType::I16 => View::I16(bytemuck::cast_slice(bytes)),
        DType::U16 => View::U16(bytemuck::cast_slice(bytes)),
        DType::I32 => View::I32(bytemuck::cast_slice(bytes)),
        DType::U32 => View::U32(bytemuck::cast_slice(bytes)),
        DType::I64 => View::I64(bytemuck::cast_slice(bytes)),
        DType::U64 => View::U64(bytemuck::cast_slice(bytes)),
        DType::F16 | DType::BF16 => unreachable!("make_view converts halves; the in-place pass reads them with wide_stats"),
    }
}

/// bf16 values (as bits) to f32: the top half of the f32's bits, a NaN's quiet bit set as
/// `half`'s `bf16::to_f32` does (so the same bits), in a loop that vectorizes (`half`'s
/// converts one value at a time) and prefetches (without, the loop misses the cache: with
/// both, statistics of bf16 columns ran 1.8 times faster, measured).
#[inline(always)]
fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    const LINE: usize = 32;
    for (k, (d, h)) in dst.chunks_mut(LINE).zip(src.chunks(LINE)).enumerate() {
        prefetch(src, k * LINE + PREFETCH_F32);
        for (d, &h) in d.iter_mut().zip(h) {
            let quiet = if h & 0x7FFF > 0x7F80 { 0x40 } else { 0 };
            *d = f32::from_bits(((h | quiet) as u32) << 16);
        }
    }
}

/// f16 values (as bits) to f32: F16C's conversion at the vector levels, else `half`'s.
#[inline(always)]
fn f16_to_f32(src: &[u16], dst: &mut [f32], level: Level) {
    #[cfg(target_arch = "x86_64")]
    if level != Level::Base {
        // SAFETY: both vector levels include F16C (`level()` checks it).
        return unsafe { cpu_simd::f16_to_f32(src, dst) };
    }
    bytemuck::cast_slice::<u16, f16>(src).convert_to_f32_slice(dst);
}

/// True when a column's rows `span` are read as a typed slice of the mapping. An empty
/// span's pointer is dangling, not aligned: it takes the (empty) copy.
#[inline(always)]
fn in_place(c: &Column, span: &[u8]) -> bool {
    zero_copy(c) && !span.is_empty()
}

/// The columns a block gathers (those `make_view` cannot read in place), in the order of
/// their place in the files, and how many each step takes: eight 2-, 4- or 8-byte columns
/// side by side in every row (a row-major matrix's) are transposed together at the vector
/// levels; any other column is gathered alone. The same for every block of a query.
struct GatherPlan {
    /// Input slots, by (file, offset).
    inputs: Vec<usize>,
    /// How many of `inputs` each step takes, in order: 1 or 8.
    steps: Vec<usize>,
}

impl GatherPlan {
    fn new(prog: &FusedProgram, ds: &Dataset, level: Level) -> GatherPlan {
        let col = |i: usize| &ds.columns()[prog.inputs[i]];
        let mut inputs: Vec<usize> = (0..prog.inputs.len()).filter(|&i| !zero_copy(col(i))).collect();
        inputs.sort_unstable_by_key(|&i| (col(i).file, col(i).offset));
        // Column k of the eight holds row r's value at `first.offset + r * stride + size * k`.
        let side_by_side = |eight: &[usize]| {
            let first = col(eight[0]);
            let size = first.dtype.size() as u64;
            matches!(size, 2 | 4 | 8)
                && eight.iter().enumerate().all(|(k, &i)| {
                    let c = col(i);
                    c.file == first.file
                        && c.stride == first.stride
                        && c.dtype.size() as u64 == size
                        && c.offset == first.offset + size * k as u64
                })
        };
        let vector = cfg!(target_arch = "x86_64") && level != Level::Base;
        let mut steps = Vec::new();
        let mut j = 0;
        while j < inputs.len() {
            let take = if vector && j + 8 <= inputs.len() && side_by_side(&inputs[j..j + 8]) { 8 } else { 1 };
            steps.push(take);
            j += take;
        }
        GatherPlan { inputs, steps }
    }
}

/// A gathered column's rows in a block: `size`-byte values `stride` bytes apart from the
/// start of `rows`, to be packed into `dst`.
struct Strided<'a> {
    rows: &'a [u8],
    stride: usize,
    size: usize,
    dst: &'a mut [u8],
}

/// Gathers rows `[r0, r0+n)` of the columns of `prep`'s gather plan into their buffers in
/// `bufs`, 64 rows at a time across all of them: the columns of a row-major matrix share
/// their rows' cache lines, which are then read from memory once rather than once per
/// column, and the plan's runs of eight are transposed (statistics of all columns of a
/// [4M, 64] f32 .npy matrix: 0.30 s with one memmove call per element, 0.14 s with
/// `gather`'s loops per element size, 0.104 s in chunks, 0.067 s with the transposes).
#[inline(always)]
fn gather_block(prep: &Prepared, ds: &Dataset, r0: u64, n: usize, bufs: &mut [Vec<u64>]) {
    let plan = &prep.gather;
    if plan.inputs.is_empty() || n == 0 {
        return;
    }
    let mut bufs: Vec<Option<&mut Vec<u64>>> = bufs.iter_mut().map(Some).collect();
    let mut cols: Vec<Strided> = Vec::with_capacity(plan.inputs.len());
    for &i in &plan.inputs {
        let c = prep.prog.inputs[i];
        let size = prep.dtypes[i].size();
        let buf = bufs[i].take().expect("an input slot appears once in the plan");
        buf.resize((n * size).div_ceil(8), 0);
        let dst = &mut bytemuck::cast_slice_mut(buf.as_mut_slice())[..n * size];
        cols.push(Strided { rows: ds.column_span(c, r0, r0 + n as u64), stride: ds.columns()[c].stride as usize, size, dst });
    }
    // 64 rows of a [N, 64] f32 matrix are 16 KiB, L1-resident while every column takes
    // its values (16 rows ran 8 % slower, all rows at once, as before, 25 %).
    const ROWS: usize = 64;
    for start in (0..n).step_by(ROWS) {
        let m = ROWS.min(n - start);
        let mut rest = &mut cols[..];
        for &take in &plan.steps {
            let (now, later) = rest.split_at_mut(take);
            rest = later;
            #[cfg(target_arch = "x86_64")]
            if let [a, b, c, d, e, f, g, h] = now {
                let (stride, size) = (a.stride, a.size);
                let first = a.rows[start * stride..].as_ptr();
                let dst = [a, b, c, d, e, f, g, h].map(|x| &mut x.dst[start * size..]);
                // SAFETY: the plan takes eight only at the vector levels, where `level()`
                // saw AVX2; row r's 8 * size bytes from `first` are the eight columns'
                // values of row start + r, each inside its column's span.
                unsafe {
                    match size {
                        2 => cpu_simd::transpose8_u16(first, stride, m, dst),
                        4 => cpu_simd::transpose8(first, stride, m, dst),
                        _ => cpu_simd::transpose8_u64(first, stride, m, dst),
                    }
                };
                continue;
            }
            for x in now.iter_mut() {
                gather(&x.rows[start * x.stride..], x.stride, x.size, m, &mut x.dst[start * x.size..]);
            }
        }
    }
}

/// True when a column's rows can be read as a typed slice of the mapping: packed, and (the
/// mapping starting on a page boundary) aligned to their size.
fn zero_copy(c: &Column) -> bool {
    c.is_contiguous() && c.offset.is_multiple_of(c.dtype.size() as u64)
}

/// Copies n elements of `size` bytes, `stride` apart in `src`, to be packed in `dst`.
#[inline(always)]
fn gather(src: &[u8], stride: usize, size: usize, n: usize, dst: &mut [u8]) {
    gather_rows(src, stride, size, 0..n, &mut dst[..n * size]);
}

/// Copies the elements of `size` bytes at `rows` (`stride` bytes apart in `src`) to be
/// packed in `dst` (one element per row): one loop per element size, so that each copy is
/// one load and one store (a copy of a run-time size is a call to memmove per element:
/// statistics of a row-major [N, 64] f32 matrix spent 71 % of their time there).
#[inline(always)]
fn gather_rows(src: &[u8], stride: usize, size: usize, rows: impl Iterator<Item = usize>, dst: &mut [u8]) {
    match size {
        1 => gather_sized::<1>(src, stride, rows, dst),
        2 => gather_sized::<2>(src, stride, rows, dst),
        4 => gather_sized::<4>(src, stride, rows, dst),
        8 => gather_sized::<8>(src, stride, rows, dst),
        _ => unreachable!("element sizes are 1, 2, 4 or 8 bytes"),
    }
}

#[inline(always)]
fn gather_sized<const SIZE: usize>(src: &[u8], stride: usize, rows: impl Iterator<Item = usize>, dst: &mut [u8]) {
    for (d, i) in dst.chunks_exact_mut(SIZE).zip(rows) {
        d.copy_from_slice(&src[i * stride..i * stride + SIZE]);
    }
}

/// Blocks one task runs: up to `GROUP_BLOCKS` when statistics read columns in place (a
/// task reads each such column's rows of all its blocks in one stretch: 5-8 % faster
/// statistics over eight columns than block after block, where every block switches
/// between eight streams), else 2, and 1 for units of several blocks (a tile may hold only
/// two of them); fewer when the tile is small, so that every thread gets several tasks.
/// Only the scheduling: every unit still has its own partial.
fn group_blocks(prep: &Prepared, nblocks: usize, threads: usize) -> usize {
    if prep.unit > prep.block {
        return 1;
    }
    if !prep.direct.contains(&true) {
        return 2;
    }
    (nblocks / (4 * threads.max(1))).clamp(1, GROUP_BLOCKS)
}

/// At most this many blocks per task (`group_blocks`): 16 blocks of 8,192 rows are 512 KiB
/// of an f32 column (8 and 32 measured the same; larger tasks leave threads idle longer at
/// the end of a tile).
const GROUP_BLOCKS: usize = 16;

/// Runs consecutive blocks from row `r0` (`rows` rows, whole blocks but the tile's last)
/// with the CPU's widest instructions; `outs[j]` receives block j's output columns. One
/// partial per block.
fn run_group(
    level: Level,
    prep: &Prepared,
    ds: &Dataset,
    r0: u64,
    rows: usize,
    s: &mut Scratch,
    outs: &mut [Vec<&mut [u8]>],
) -> Vec<Result<BlockPartial>> {
    #[cfg(target_arch = "x86_64")]
    {
        match level {
            // SAFETY: `level()` saw these features on this CPU.
            Level::Avx512 => return unsafe { run_group_avx512(prep, ds, r0, rows, s, outs) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { run_group_avx2(prep, ds, r0, rows, s, outs) },
            Level::Base => {}
        }
    }
    run_group_impl(Level::Base, prep, ds, r0, rows, s, outs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
fn run_group_avx512(
    prep: &Prepared,
    ds: &Dataset,
    r0: u64,
    rows: usize,
    s: &mut Scratch,
    outs: &mut [Vec<&mut [u8]>],
) -> Vec<Result<BlockPartial>> {
    run_group_impl(Level::Avx512, prep, ds, r0, rows, s, outs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
fn run_group_avx2(
    prep: &Prepared,
    ds: &Dataset,
    r0: u64,
    rows: usize,
    s: &mut Scratch,
    outs: &mut [Vec<&mut [u8]>],
) -> Vec<Result<BlockPartial>> {
    run_group_impl(Level::Avx2, prep, ds, r0, rows, s, outs)
}

/// Every block's work but the in-place statistics, block after block, then the in-place
/// statistics column after column.
#[inline(always)]
fn run_group_impl(
    level: Level,
    prep: &Prepared,
    ds: &Dataset,
    r0: u64,
    rows: usize,
    s: &mut Scratch,
    outs: &mut [Vec<&mut [u8]>],
) -> Vec<Result<BlockPartial>> {
    let unit = prep.unit as usize;
    // Unit j: its first row and its rows.
    let block = |j: usize| (r0 + (j * unit) as u64, (rows - j * unit).min(unit));
    let mut parts = Vec::with_capacity(outs.len());
    for (j, o) in outs.iter_mut().enumerate() {
        let (b0, n) = block(j);
        parts.push(if prep.prog.key.is_some() {
            run_groups_unit(level, prep, ds, b0, n, s)
        } else {
            run_block_impl(level, prep, ds, b0, n, s, o)
        });
    }
    let finite = prep.prog.finite_range;
    for (k, src) in prep.prog.stats.iter().enumerate() {
        // `direct` holds only input slots.
        let (true, Source::Slot(i)) = (prep.direct[k], *src) else { continue };
        for (j, part) in parts.iter_mut().enumerate() {
            let Ok(part) = part else { continue };
            let (b0, n) = block(j);
            let span = ds.column_span(prep.prog.inputs[i], b0, b0 + n as u64);
            part.stats[k] = match prep.dtypes[i] {
                #[cfg(target_arch = "x86_64")]
                DType::F16 => wide_stats::<half::f16>(bytemuck::cast_slice(span), finite, level),
                #[cfg(target_arch = "x86_64")]
                DType::BF16 => wide_stats::<half::bf16>(bytemuck::cast_slice(span), finite, level),
                d => view_stats(typed_view(span, d), None, n as u64, finite, level),
            };
        }
    }
    parts
}

/// A group-by's unit of `n` rows from row `r0`, `prep.block` rows at a time: the blocks'
/// groups joined into one partial (`UnitGroups`).
#[inline(always)]
fn run_groups_unit(level: Level, prep: &Prepared, ds: &Dataset, r0: u64, n: usize, s: &mut Scratch) -> Result<BlockPartial> {
    let block = prep.block as usize;
    let mut part = BlockPartial::default();
    s.start_unit();
    for b in (0..n).step_by(block) {
        // A group-by writes no output columns.
        let p = run_block_impl(level, prep, ds, r0 + b as u64, block.min(n - b), s, &mut [])?;
        part.selected += p.selected;
    }
    part.groups = s.unit_groups.take();
    Ok(part)
}

/// One block of `n` rows from row `r0`: everything but the in-place statistics (left at
/// their defaults for `run_group_impl`); a group-by's groups go to `Scratch::unit_groups`.
#[inline(always)]
fn run_block_impl(
    level: Level,
    prep: &Prepared,
    ds: &Dataset,
    r0: u64,
    n: usize,
    s: &mut Scratch,
    outs: &mut [&mut [u8]],
) -> Result<BlockPartial> {
    let prog = &prep.prog;
    let Scratch { gather, conv, regs, hists, codes, order, gbuf, sel, keys, slots, key_table, key_map, unit_groups, fbuf, dbuf, hbuf } = s;
    // A loop, not a closure: a closure is a function of its own, compiled without this
    // function's target features (the f16/bf16 conversions would not vectorize).
    gather_block(prep, ds, r0, n, gather);
    let mut views: Vec<View> = Vec::with_capacity(gather.len());
    for (i, (buf, cv)) in gather.iter_mut().zip(conv.iter_mut()).enumerate() {
        // Nothing in this function reads a direct-only column's view.
        views.push(if prep.direct_only[i] { View::U8(&[]) } else { make_view(ds, prog.inputs[i], prep.dtypes[i], r0, n, buf, cv, level) });
    }

    eval_instrs(prog, &prep.steps, &views, regs, n);

    let mask: Option<&[u8]> = match prog.mask {
        Some(m) => match &regs[m] {
            Reg::B(b) => Some(&b[..n]),
            _ => unreachable!("program.rs types the mask as bool"),
        },
        None => None,
    };
    let selected = mask.map_or(n as u64, count_selected);
    let mut part = BlockPartial { selected, ..BlockPartial::default() };

    let source_view = |src: &Source| -> View {
        match *src {
            Source::Slot(i) => views[i],
            Source::Reg(r) => match &regs[r] {
                Reg::F(v) => View::F32(&v[..n]),
                Reg::I(v) => View::I64(&v[..n]),
                Reg::B(v) => View::U8(&v[..n]),
            },
        }
    };

    if let Some(key_slot) = prog.key {
        let bufs = GroupBufs { keys, slots, table: key_table, map: key_map, order, gbuf, unit: unit_groups };
        group_block(views[key_slot], mask, prog.stats.iter().map(source_view), bufs, prep.group_limit, level)?;
    } else if selected == 0 {
        // What every kernel returns for a block the filter drops whole.
        part.stats = vec![BlockStats::default(); prog.stats.len()];
    } else {
        part.stats.reserve(prog.stats.len());
        for (src, &direct) in prog.stats.iter().zip(&prep.direct) {
            part.stats.push(if direct {
                BlockStats::default()
            } else {
                view_stats(source_view(src), mask, selected, prog.finite_range, level)
            });
        }
    }
    for (h, acc) in prog.hists.iter().zip(hists.iter_mut()) {
        on_view!(source_view(&h.source), x => hist_any(x, mask, h, acc, codes, level));
    }
    if !prog.outputs.is_empty() {
        sel.clear();
        if let Some(m) = mask {
            sel.extend((0..n as u32).filter(|&i| m[i as usize] != 0));
        }
        let sel = mask.map(|_| sel.as_slice());
        for (k, spec) in prog.outputs.iter().enumerate() {
            let counts = match spec.source {
                Source::Slot(i) if is_raw_copy(spec, prep.dtypes[i]) => {
                    let col = prog.inputs[i];
                    let c = &ds.columns()[col];
                    let span = ds.column_span(col, r0, r0 + n as u64);
                    copy_raw(span, c.stride as usize, c.dtype.size(), n, sel, outs[k]);
                    let m = sel.map_or(n, |s| s.len());
                    (count_nan(c.dtype, &outs[k][..m * c.dtype.size()]), 0)
                }
                _ => write_output(spec, source_view(&spec.source), n, sel, fbuf, dbuf, hbuf, outs[k]),
            };
            part.out_counts.push(counts);
        }
    }
    Ok(part)
}

/// Statistics of f16/bf16 values read in place, widened in the AVX-512 kernel's registers:
/// the same bits as over the converted values (`Prepared::direct` takes halves only at
/// that level).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn wide_stats<H: cpu_simd::Wide16 + Into<f32>>(x: &[H], finite: bool, level: Level) -> BlockStats {
    let n = x.len() as u64;
    if finite { stats_avx512::<H, true>(x, None, n, level) } else { stats_avx512::<H, false>(x, None, n, level) }
}

/// Statistics of a block of f32 values, or of halves widened in registers, by the AVX-512
/// kernel (`selected`: rows the mask keeps).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn stats_avx512<S: cpu_simd::Wide16 + Into<f32>, const FINITE: bool>(
    x: &[S],
    mask: Option<&[u8]>,
    selected: u64,
    level: Level,
) -> BlockStats {
    assert_eq!(level, Level::Avx512, "stats_avx512: needs AVX-512");
    let pivot = f32_pivot(x, mask);
    // SAFETY (both): `level` is Avx512 (asserted), which `level()` gives only when it saw
    // AVX-512 F/BW/VL/DQ and F16C on this CPU; the mask covers the block.
    match mask {
        None => {
            reduce_lanes::<S, false, FINITE>(x, &[], pivot, selected, unsafe { cpu_simd::stats_f32::<S, false, FINITE>(x, &[], pivot) })
        }
        Some(m) => reduce_lanes::<S, true, FINITE>(x, m, pivot, selected, unsafe { cpu_simd::stats_f32::<S, true, FINITE>(x, m, pivot) }),
    }
}

/// The shift of the f32 kernels' sums: the block's first selected finite value.
#[inline(always)]
fn f32_pivot<S: Copy + Into<f32>>(x: &[S], mask: Option<&[u8]>) -> f64 {
    first_finite(x, mask, |v| v.into().is_finite()).map_or(0.0, |v| v.into() as f64)
}

/// A block's statistics of one source (`selected`: rows the mask keeps).
#[inline(always)]
fn view_stats(view: View, mask: Option<&[u8]>, selected: u64, finite_range: bool, level: Level) -> BlockStats {
    match view {
        View::F32(x) if finite_range => stats_f32_any::<true>(x, mask, selected, level),
        View::F32(x) => stats_f32_any::<false>(x, mask, selected, level),
        View::F64(x) => stats_f64_any(x, mask, level),
        other => on_view!(other, x => stats_any(x, mask)),
    }
}

/// `stats_any` for f64 values, in AVX-512 registers where the CPU has them (the same bits).
#[inline(always)]
fn stats_f64_any(x: &[f64], mask: Option<&[u8]>, level: Level) -> BlockStats {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        let pivot = first_finite(x, mask, |v| v.is_finite()).unwrap_or(0.0);
        // SAFETY: `level()` saw AVX-512 F/BW/VL/DQ on this CPU; the mask covers the block.
        return match mask {
            None => finish_lanes::<f64, false>(x, &[], pivot, unsafe { cpu_simd::stats_f64_lanes::<false>(x, &[], pivot) }),
            Some(m) => finish_lanes::<f64, true>(x, m, pivot, unsafe { cpu_simd::stats_f64_lanes::<true>(x, m, pivot) }),
        };
    }
    stats_any(x, mask)
}

/// Rows a mask keeps. Mask bytes are 0 or 1 (comparisons and logic ops write nothing
/// else), so a word's set bits are its 1 bytes: one popcount per 8 bytes (2-4 % faster
/// filtered stats than a byte-wise sum widened to u64).
#[inline(always)]
fn count_selected(m: &[u8]) -> u64 {
    let words = m.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|&b| b as u64).sum();
    // chunks_exact(8) yields 8-byte slices.
    words.map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")).count_ones() as u64).sum::<u64>() + tail
}

/// True when an output is the input column's bytes unchanged (every backend copies those).
pub(crate) fn is_raw_copy(spec: &OutSpec, dtype: DType) -> bool {
    spec.scale.is_none() && spec.dtype == dtype && (spec.fill_nan.is_none() || !dtype.is_float())
}

#[inline(always)]
fn eval_instrs(prog: &FusedProgram, steps: &[Step], views: &[View], regs: &mut [Reg], n: usize) {
    for (r, ins) in prog.instrs.iter().enumerate() {
        let (before, after) = regs.split_at_mut(r);
        let out = &mut after[0];
        match (steps[r], &mut *out) {
            (Step::Skip, _) => continue,
            (Step::CmpColumnF { slot, cmp, k }, Reg::B(o)) => {
                if let View::F32(x) = views[slot] {
                    k::compare_f_const(cmp, x, k, &mut o[..n]);
                }
                continue;
            }
            (Step::CmpColumnI { slot, cmp, k }, Reg::B(o)) => {
                on_view!(views[slot], x => compare_i_const(cmp, x, k, &mut o[..n]));
                continue;
            }
            _ => {}
        }
        match ins {
            Instr::Const(_) => {}
            Instr::Load { slot, ty } => load(views[*slot], *ty, out, n),
            Instr::LoadKey { slot } => match (views[*slot], out) {
                (View::F64(x), Reg::I(o)) => o[..n].iter_mut().zip(x).for_each(|(o, &v)| *o = crate::program::f64_order_key(v)),
                // f16/bf16 columns are viewed converted (exactly) to f32.
                (View::F32(x), Reg::I(o)) => o[..n].iter_mut().zip(x).for_each(|(o, &v)| *o = crate::program::f64_order_key(v as f64)),
                _ => unreachable!("program.rs takes order keys of float columns into integer registers"),
            },
            Instr::Op { op, args } => {
                let f = |i: usize| match &before[args[i]] {
                    Reg::F(v) => &v[..n],
                    _ => unreachable!("program.rs types op arguments"),
                };
                let int = |i: usize| match &before[args[i]] {
                    Reg::I(v) => &v[..n],
                    _ => unreachable!("program.rs types op arguments"),
                };
                let b = |i: usize| match &before[args[i]] {
                    Reg::B(v) => &v[..n],
                    _ => unreachable!("program.rs types op arguments"),
                };
                match (op, out) {
                    (Op::Neg | Op::Abs | Op::Sqrt | Op::Exp | Op::Log | Op::Log1p, Reg::F(o)) => k::unary_f(*op, f(0), o),
                    (Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Min | Op::Max, Reg::F(o)) => k::binary_f(*op, f(0), f(1), o),
                    (Op::Clip, Reg::F(o)) => k::clip(f(0), f(1), f(2), o),
                    (Op::CmpF(c), Reg::B(o)) => k::compare_f(*c, f(0), f(1), o),
                    (Op::CmpI(c), Reg::B(o)) => k::compare_i(*c, int(0), int(1), o),
                    (Op::IsNan | Op::IsInf | Op::IsFinite, Reg::B(o)) => k::classify(*op, f(0), o),
                    (Op::And | Op::Or, Reg::B(o)) => k::logic(*op, b(0), b(1), o),
                    (Op::Not, Reg::B(o)) => k::logic(*op, b(0), b(0), o),
                    (Op::IntToF, Reg::F(o)) => o[..n].iter_mut().zip(int(0)).for_each(|(o, &x)| *o = x as f32),
                    (Op::BoolToI, Reg::I(o)) => o[..n].iter_mut().zip(b(0)).for_each(|(o, &x)| *o = x as i64),
                    _ => unreachable!("program.rs gives every op a register of its result type"),
                }
            }
        }
    }
}

#[inline(always)]
fn load(v: View, ty: VType, out: &mut Reg, n: usize) {
    match (ty, out) {
        (VType::F32, Reg::F(o)) => on_view!(v, x => load_f32(x, &mut o[..n])),
        (VType::Int, Reg::I(o)) => on_view!(v, x => load_i64(x, &mut o[..n])),
        (VType::Bool, Reg::B(o)) => on_view!(v, x => load_bool(x, &mut o[..n])),
        _ => unreachable!("program.rs gives every load a register of its type"),
    }
}

/// `x cmp k` for an integer column block, compared in i64.
#[inline(always)]
fn compare_i_const<T: Elem>(c: Cmp, x: &[T], k: i64, o: &mut [u8]) {
    let o = &mut o[..x.len()];
    if !T::FLOAT && std::mem::size_of::<T>() <= 2 {
        // 8/16-bit values compare in their own type (64 or 32 lanes per AVX-512 compare);
        // a literal outside the type's range puts every value on one side of it.
        let (lo, hi) = T::RANGE;
        if k < lo || k > hi {
            let below = k > hi;
            let all = match c {
                Cmp::Lt | Cmp::Le => below,
                Cmp::Gt | Cmp::Ge => !below,
                Cmp::Eq => false,
                Cmp::Ne => true,
            };
            o.fill(all as u8);
            return;
        }
        compare_const(c, x, T::from_i64(k), o, |v| v);
        return;
    }
    compare_const(c, x, k, o, |v| v.i64());
}

/// `o[i] = f(x[i]) cmp k` as 0/1 bytes, one loop per operator (the match outside the loops,
/// so that each vectorizes).
#[inline(always)]
fn compare_const<T: Copy, U: PartialOrd + Copy>(c: Cmp, x: &[T], k: U, o: &mut [u8], f: impl Fn(T) -> U) {
    match c {
        Cmp::Lt => cmp_loop(x, o, |v| f(v) < k),
        Cmp::Le => cmp_loop(x, o, |v| f(v) <= k),
        Cmp::Gt => cmp_loop(x, o, |v| f(v) > k),
        Cmp::Ge => cmp_loop(x, o, |v| f(v) >= k),
        Cmp::Eq => cmp_loop(x, o, |v| f(v) == k),
        Cmp::Ne => cmp_loop(x, o, |v| f(v) != k),
    }
}

#[inline(always)]
fn cmp_loop<T: Copy>(x: &[T], o: &mut [u8], f: impl Fn(T) -> bool) {
    for (o, &v) in o.iter_mut().zip(x) {
        *o = f(v) as u8;
    }
}

#[inline(always)]
fn load_f32<T: Elem>(x: &[T], o: &mut [f32]) {
    let o = &mut o[..x.len()];
    for i in 0..x.len() {
        o[i] = x[i].f32();
    }
}

#[inline(always)]
fn load_i64<T: Elem>(x: &[T], o: &mut [i64]) {
    let o = &mut o[..x.len()];
    for i in 0..x.len() {
        o[i] = x[i].i64();
    }
}

#[inline(always)]
fn load_bool<T: Elem>(x: &[T], o: &mut [u8]) {
    let o = &mut o[..x.len()];
    for i in 0..x.len() {
        o[i] = (x[i].f64() != 0.0) as u8;
    }
}

/// Statistics of one block of values; `mask` selects rows.
#[inline(always)]
fn stats_any<T: Elem>(x: &[T], mask: Option<&[u8]>) -> BlockStats {
    let first = first_finite(x, mask, |v| !v.is_nan() && !v.is_inf());
    if !T::FLOAT && std::mem::size_of::<T>() <= 2 && x.len() <= SMALL_INT_ROWS {
        let pivot = first.map_or(0, |v| v.i64());
        return match mask {
            None => small_int_stats::<T, false>(x, &[], pivot),
            Some(m) => small_int_stats::<T, true>(x, m, pivot),
        };
    }
    let pivot = first.map_or(0.0, |v| v.f64());
    match mask {
        None => stats_lanes::<T, false>(x, &[], pivot),
        Some(m) => stats_lanes::<T, true>(x, m, pivot),
    }
}

/// Most rows `small_int_stats` takes: 65,536 squares of differences of 16-bit integers
/// (each below 2^32) sum to less than 2^53.
const SMALL_INT_ROWS: usize = 1 << 16;

/// `stats_lanes` for 8- and 16-bit integers, in integer sums: `x - pivot`, its square and
/// every partial sum of either are integers below 2^53, exact in f64 too, so these are the
/// same values `stats_lanes` gives (tested), several times faster (integer lanes, no
/// NaN/inf classification, one pass for the exact bounds).
#[inline(always)]
fn small_int_stats<T: Elem, const MASKED: bool>(x: &[T], mask: &[u8], pivot: i64) -> BlockStats {
    let (mut count, mut s, mut s2, mut lo, mut hi) = (0u64, 0i64, 0u64, i64::MAX, i64::MIN);
    for (i, &v) in x.iter().enumerate() {
        let on = !MASKED || mask[i] != 0;
        let v = v.i64();
        let d = if on { v - pivot } else { 0 };
        count += on as u64;
        s += d;
        s2 += (d * d) as u64;
        lo = lo.min(if on { v } else { i64::MAX });
        hi = hi.max(if on { v } else { i64::MIN });
    }
    if count == 0 {
        return BlockStats { pivot: pivot as f64, ..BlockStats::default() };
    }
    let (min, max) = (lo as f64, hi as f64);
    BlockStats {
        count,
        nan: 0,
        inf: 0,
        pivot: pivot as f64,
        sum_d: s as f64,
        sum_d2: s2 as f64,
        min,
        max,
        fmin: min,
        fmax: max,
        imin: lo as i128,
        imax: hi as i128,
    }
}

/// The block's first selected finite value: the shift of its sums. A value the filter
/// drops (a sentinel like 3e38, say) must never be the shift of the values it keeps.
///
/// Runs of 64 values without one are skipped by a branch-free test that vectorizes: a
/// value-by-value search through a block that a filter keeps little of (or a column that is
/// mostly NaN) took longer than the statistics themselves (a filter that kept no row made
/// a stats pass three times slower than no filter).
#[inline(always)]
fn first_finite<T: Copy>(x: &[T], mask: Option<&[u8]>, finite: impl Fn(T) -> bool) -> Option<T> {
    const RUN: usize = 64;
    match mask {
        None => {
            x.chunks(RUN).find(|c| c.iter().fold(false, |any, &v| any | finite(v))).and_then(|c| c.iter().copied().find(|&v| finite(v)))
        }
        Some(m) => x
            .chunks(RUN)
            .zip(m.chunks(RUN))
            .find(|(c, mc)| c.iter().zip(*mc).fold(false, |any, (&v, &on)| any | (on != 0 && finite(v))))
            .and_then(|(c, mc)| c.iter().zip(mc).find(|&(&v, &on)| on != 0 && finite(v)).map(|(&v, _)| v)),
    }
}

/// How far ahead (in f32 elements) the kernels prefetch: the loop body is long, so the
/// out-of-order window alone keeps too few cache misses in flight to reach full bandwidth.
pub(crate) const PREFETCH_F32: usize = 2048;

/// Prefetches the cache line holding `x[i]`; `i` may run past the slice (into the next
/// block of a contiguous column): a prefetch never faults.
#[inline(always)]
pub(crate) fn prefetch<T>(x: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is a hint; it reads nothing and cannot fault on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(x.as_ptr().wrapping_add(i) as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
}

/// Statistics of a block of f32 values; `FINITE` also tracks the finite min/max.
#[inline(always)]
fn stats_f32_any<const FINITE: bool>(x: &[f32], mask: Option<&[u8]>, selected: u64, level: Level) -> BlockStats {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        return stats_avx512::<f32, FINITE>(x, mask, selected, level);
    }
    let pivot = f32_pivot(x, mask);
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 {
        // SAFETY: `level()` saw AVX2 on this CPU; the mask covers the block.
        return match mask {
            None => reduce_lanes::<_, false, FINITE>(
                x,
                &[],
                pivot,
                x.len() as u64,
                unsafe { cpu_simd::stats_f32_avx2::<false, FINITE>(x, &[], pivot) }.into(),
            ),
            Some(m) => reduce_lanes::<_, true, FINITE>(
                x,
                m,
                pivot,
                selected,
                unsafe { cpu_simd::stats_f32_avx2::<true, FINITE>(x, m, pivot) }.into(),
            ),
        };
    }
    match mask {
        None => stats_f32_lanes::<false, FINITE>(x, &[], pivot, x.len() as u64),
        Some(m) => stats_f32_lanes::<true, FINITE>(x, m, pivot, selected),
    }
}

/// The f32 stats kernel: 16 lanes; classification and min/max in f32, sums of
/// `x - pivot` and its square in f64. `selected`: the rows the mask keeps.
#[inline(always)]
fn stats_f32_lanes<const MASKED: bool, const FINITE: bool>(x: &[f32], mask: &[u8], pivot: f64, selected: u64) -> BlockStats {
    const L: usize = 16;
    let mut s = [0f64; L];
    let mut s2 = [0f64; L];
    let mut mn = [f32::INFINITY; L];
    let mut mx = [f32::NEG_INFINITY; L];
    let mut fmn = [f32::INFINITY; L];
    let mut fmx = [f32::NEG_INFINITY; L];
    let mut cnt = [0u32; L];
    let n = x.len();
    let full = n / L * L;
    let ones = [1u8; L];
    let mut i = 0;
    while i < n {
        prefetch(x, i + PREFETCH_F32);
        // The tail runs through the same loop body with a partial chunk padded by NaN.
        let (xs, ms): ([f32; L], [u8; L]) = if i < full {
            (x[i..i + L].try_into().expect("L elements"), if MASKED { mask[i..i + L].try_into().expect("L elements") } else { ones })
        } else {
            let mut xs = [f32::NAN; L];
            let mut ms = [0u8; L];
            xs[..n - i].copy_from_slice(&x[i..]);
            if MASKED {
                ms[..n - i].copy_from_slice(&mask[i..]);
            } else {
                ms[..n - i].fill(1);
            }
            (xs, ms)
        };
        for l in 0..L {
            let v = xs[l];
            let on = ms[l] != 0;
            let ok = on & !v.is_nan();
            let d = if ok { v as f64 - pivot } else { 0.0 };
            s[l] += d;
            s2[l] += d * d;
            mn[l] = if ok & (v < mn[l]) { v } else { mn[l] };
            mx[l] = if ok & (v > mx[l]) { v } else { mx[l] };
            if FINITE {
                let fin = ok & (v.abs() != f32::INFINITY);
                fmn[l] = if fin & (v < fmn[l]) { v } else { fmn[l] };
                fmx[l] = if fin & (v > fmx[l]) { v } else { fmx[l] };
            }
            cnt[l] += ok as u32;
        }
        i += L;
    }
    let count: u64 = cnt.iter().map(|&c| c as u64).sum();
    let lanes = LaneStats { count, s, s2, mn, mx, fmn, fmx };
    reduce_lanes::<_, MASKED, FINITE>(x, mask, pivot, selected, lanes)
}

/// Per-lane results of the f32 stats kernels (portable, AVX-512, and AVX2 padded to 16
/// lanes), reduced by `reduce_lanes`.
pub(crate) struct LaneStats {
    /// Selected non-NaN values.
    pub(crate) count: u64,
    /// Lane sums of `x - pivot`.
    pub(crate) s: [f64; 16],
    /// Lane sums of `(x - pivot)²`.
    pub(crate) s2: [f64; 16],
    /// Lane minima.
    pub(crate) mn: [f32; 16],
    /// Lane maxima.
    pub(crate) mx: [f32; 16],
    /// Lane minima of the finite values.
    pub(crate) fmn: [f32; 16],
    /// Lane maxima of the finite values.
    pub(crate) fmx: [f32; 16],
}

/// The block's statistics from the f32 kernels' lanes over `x` (f32, or halves the AVX-512
/// kernel widened; `selected`: rows the mask keeps).
#[inline(always)]
fn reduce_lanes<T: Copy + Into<f32>, const MASKED: bool, const FINITE: bool>(
    x: &[T],
    mask: &[u8],
    pivot: f64,
    selected: u64,
    lanes: LaneStats,
) -> BlockStats {
    let LaneStats { count, s, s2, mn, mx, fmn, fmx } = lanes;
    const L: usize = 16;
    let n = x.len();
    // ±inf make the sum of squares infinite (finite f32 values cannot overflow it), so
    // infinities are counted only in the rare blocks that have them.
    let s2_finite = s2.iter().all(|v| v.is_finite());
    let inf_count = if s2_finite { 0 } else { (0..n).filter(|&j| (!MASKED || mask[j] != 0) && x[j].into().is_infinite()).count() as u64 };
    let sum = |a: &[f64; L]| {
        let h: [f64; 8] = std::array::from_fn(|j| a[j] + a[j + 8]);
        pairwise(&h)
    };
    let fold_min = |a: &[f32; L]| a.iter().fold(f64::INFINITY, |m, &v| m.min(v as f64));
    let fold_max = |a: &[f32; L]| a.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    BlockStats {
        count,
        nan: selected - count,
        inf: inf_count,
        pivot,
        sum_d: sum(&s),
        sum_d2: sum(&s2),
        min: fold_min(&mn),
        max: fold_max(&mx),
        fmin: if FINITE { fold_min(&fmn) } else { f64::INFINITY },
        fmax: if FINITE { fold_max(&fmx) } else { f64::NEG_INFINITY },
        ..BlockStats::default()
    }
}

/// The stats kernel: 8 independent lanes of f64 sums of `x - pivot` and its square.
/// Written without closures so that the whole loop inherits the caller's target features;
/// prefetching (statistics of eight f64 columns ran 1.2 times faster with it).
#[inline(always)]
fn stats_lanes<T: Elem, const MASKED: bool>(x: &[T], mask: &[u8], pivot: f64) -> BlockStats {
    const L: usize = 8;
    let mut s = [0f64; L];
    let mut s2 = [0f64; L];
    let mut mn = [f64::INFINITY; L];
    let mut mx = [f64::NEG_INFINITY; L];
    let mut fmn = [f64::INFINITY; L];
    let mut fmx = [f64::NEG_INFINITY; L];
    let mut cnt = [0u32; L];
    let mut sel = [0u32; L];
    let mut inf = [0u32; L];
    let n = x.len();
    let full = n / L * L;
    let ones = [1u8; L];
    for i in (0..full).step_by(L) {
        // Once per 64-byte line, 8 KiB ahead, whatever the element size.
        let size = std::mem::size_of::<T>();
        if size == 8 || (i * size).is_multiple_of(64) {
            prefetch(x, i + PREFETCH_F32 * 4 / size);
        }
        let xs: &[T; L] = x[i..i + L].try_into().expect("slice of L elements");
        let ms: &[u8; L] = if MASKED { mask[i..i + L].try_into().expect("slice of L elements") } else { &ones };
        for l in 0..L {
            let v = xs[l];
            let on = ms[l] != 0;
            let ok = on & !v.is_nan();
            let f = v.f64();
            let d = if ok { f - pivot } else { 0.0 };
            s[l] += d;
            s2[l] += d * d;
            mn[l] = if ok & (f < mn[l]) { f } else { mn[l] };
            mx[l] = if ok & (f > mx[l]) { f } else { mx[l] };
            let is_inf = v.is_inf();
            let fin = ok & !is_inf;
            fmn[l] = if fin & (f < fmn[l]) { f } else { fmn[l] };
            fmx[l] = if fin & (f > fmx[l]) { f } else { fmx[l] };
            cnt[l] += ok as u32;
            sel[l] += on as u32;
            inf[l] += (ok & is_inf) as u32;
        }
    }
    finish_lanes::<T, MASKED>(x, mask, pivot, Lanes8 { s, s2, mn, mx, fmn, fmx, cnt, sel, inf })
}

/// The per-lane state of `stats_lanes` after its whole steps (lane l holds the values at
/// indices l mod 8).
pub(crate) struct Lanes8 {
    /// Sums of `x - pivot` (0 for the values left out).
    pub(crate) s: [f64; 8],
    /// Sums of its squares.
    pub(crate) s2: [f64; 8],
    /// Minima and maxima of the selected non-NaN values.
    pub(crate) mn: [f64; 8],
    pub(crate) mx: [f64; 8],
    /// The same of the finite ones.
    pub(crate) fmn: [f64; 8],
    pub(crate) fmx: [f64; 8],
    /// Selected non-NaN values, selected values, selected infinities.
    pub(crate) cnt: [u32; 8],
    pub(crate) sel: [u32; 8],
    pub(crate) inf: [u32; 8],
}

/// `stats_lanes` from its lanes on: the tail (past the last whole step of 8, into lane 0),
/// then the block's statistics.
#[inline(always)]
fn finish_lanes<T: Elem, const MASKED: bool>(x: &[T], mask: &[u8], pivot: f64, lanes: Lanes8) -> BlockStats {
    let Lanes8 { mut s, mut s2, mut mn, mut mx, mut fmn, mut fmx, mut cnt, mut sel, mut inf } = lanes;
    let n = x.len();
    for i in n / 8 * 8..n {
        let v = x[i];
        let on = !MASKED || mask[i] != 0;
        let ok = on & !v.is_nan();
        let f = v.f64();
        let d = if ok { f - pivot } else { 0.0 };
        s[0] += d;
        s2[0] += d * d;
        mn[0] = if ok & (f < mn[0]) { f } else { mn[0] };
        mx[0] = if ok & (f > mx[0]) { f } else { mx[0] };
        let is_inf = v.is_inf();
        let fin = ok & !is_inf;
        fmn[0] = if fin & (f < fmn[0]) { f } else { fmn[0] };
        fmx[0] = if fin & (f > fmx[0]) { f } else { fmx[0] };
        cnt[0] += ok as u32;
        sel[0] += on as u32;
        inf[0] += (ok & is_inf) as u32;
    }
    let count: u64 = cnt.iter().map(|&c| c as u64).sum();
    let selected: u64 = sel.iter().map(|&c| c as u64).sum();
    let mut b = BlockStats {
        count,
        nan: selected - count,
        inf: inf.iter().map(|&c| c as u64).sum(),
        pivot,
        sum_d: pairwise(&s),
        sum_d2: pairwise(&s2),
        min: mn.iter().fold(f64::INFINITY, |a, &b| a.min(b)),
        max: mx.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)),
        fmin: fmn.iter().fold(f64::INFINITY, |a, &b| a.min(b)),
        fmax: fmx.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b)),
        ..BlockStats::default()
    };
    if !T::FLOAT && count > 0 {
        // Exact integer bounds (i64/u64 values need not be exact in f64).
        let (mut lo, mut hi) = (i128::MAX, i128::MIN);
        for i in 0..n {
            if !MASKED || mask[i] != 0 {
                let v = x[i].i128();
                lo = if v < lo { v } else { lo };
                hi = if v > hi { v } else { hi };
            }
        }
        b.imin = lo;
        b.imax = hi;
    }
    b
}

#[inline(always)]
fn pairwise(v: &[f64; 8]) -> f64 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// Copies of a histogram's counts per thread: 8 interleaved for small histograms (a run of
/// values in one bin, or out of range, would otherwise wait on each increment), 1 for
/// large ones.
fn hist_copies(bins: u32) -> usize {
    if bins <= 4096 { HIST_COPIES } else { 1 }
}

/// Interleaved copies of a small histogram's counts (the counting loop is unrolled by it).
const HIST_COPIES: usize = 8;

/// Bin codes of a block (`bins` = below `lo`, `bins + 1` = above `hi`, `bins + 2` = NaN):
/// `floor((x - lo) * scale)` in f64, clamped to `[0, bins - 1]`.
#[inline(always)]
fn hist_codes<T: Elem>(x: &[T], lo: f64, hi: f64, scale: f64, bins: u32, codes: &mut [u32]) {
    let last = (bins - 1) as f64;
    // Runs of 64 values, each prefetching ahead first: a prefetch inside the vectorized
    // loop would stop it vectorizing.
    for (run, out) in x.chunks(64).zip(codes.chunks_mut(64)) {
        for k in (0..run.len()).step_by(64 / std::mem::size_of::<T>().clamp(1, 64)) {
            prefetch(run, k + PREFETCH_F32);
        }
        for (o, &v) in out.iter_mut().zip(run) {
            let v = v.f64();
            let t = ((v - lo) * scale).floor();
            // Clamped in f64 first so that the conversion is in range (NaN and negatives
            // are replaced below).
            let t = if t >= last {
                last
            } else if t >= 0.0 {
                t
            } else {
                0.0
            };
            // SAFETY: t is finite and in [0, bins - 1] (NaN fails both comparisons above
            // and becomes 0), so the conversion is exact; the unchecked form vectorizes.
            let c = unsafe { t.to_int_unchecked::<i32>() } as u32;
            let c = if v < lo { bins } else { c };
            let c = if v > hi { bins + 1 } else { c };
            *o = if v.is_nan() { bins + 2 } else { c };
        }
    }
}

/// Values whose bin codes are computed, then counted, at a time: short runs, so that the
/// code loop's prefetches keep the memory busy while the previous run is counted.
const HIST_RUN: usize = 512;

/// Histogram of one block: bin codes (`bins` = below, `bins+1` = above, `bins+2` = NaN,
/// `bins+3` = not selected) counted as they are computed (f32 values with AVX-512), or
/// computed by a vectorizable loop in runs of `HIST_RUN` values, then counted.
#[inline(always)]
fn hist_any<T: Elem>(x: &[T], mask: Option<&[u8]>, h: &HistSpec, acc: &mut HistCounts, codes: &mut Vec<u32>, level: Level) {
    let (lo, hi, bins) = (h.lo, h.hi, h.bins);
    let scale = bin_scale(lo, hi, bins);
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // The f32 form of the bin formula, once for the block.
        let f32_bins = cpu_simd::F32Bins::new(lo, scale, bins);
        let (counts, stride) = acc.room(x.len());
        // SAFETY: T is f32 (same TypeId), so the slice is reinterpreted as itself;
        // `level()` saw AVX-512 on this CPU; `HistCounts` keeps 1 or HIST_COPIES (8, which
        // divides 16) copies of bins + 4 counters; the mask covers the block.
        unsafe {
            let x = std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len());
            if counts.len() == stride {
                cpu_simd::hist_count_f32::<1>(x, mask, lo, hi, scale, bins, f32_bins, counts, stride)
            } else {
                cpu_simd::hist_count_f32::<HIST_COPIES>(x, mask, lo, hi, scale, bins, f32_bins, counts, stride)
            }
        };
        return;
    }
    for (k, run) in x.chunks(HIST_RUN).enumerate() {
        // Every code is written below: the buffer is not cleared first (resize only fills
        // what it adds).
        codes.resize(run.len(), 0);
        hist_codes(run, lo, hi, scale, bins, codes);
        if let Some(m) = mask {
            for (c, &on) in codes.iter_mut().zip(&m[k * HIST_RUN..]) {
                if on == 0 {
                    *c = bins + 3;
                }
            }
        }
        // SAFETY: the codes above are at most bins + 3.
        unsafe { acc.add(codes, bins) };
    }
}

/// Per-thread buffers of the group-by kernel.
struct GroupBufs<'s> {
    keys: &'s mut Vec<i128>,
    slots: &'s mut Vec<u32>,
    table: &'s mut Vec<u32>,
    map: &'s mut KeyMap,
    order: &'s mut Vec<u32>,
    gbuf: &'s mut Vec<f32>,
    unit: &'s mut UnitGroups,
}

/// The groups of a unit as its blocks add them, by slot (slots are numbered for the whole
/// unit: the key table or map is reset only when a unit starts). f32 columns accumulate row
/// by row in `f32` (where the CPU has AVX2), so a unit's sums are the same bits as if it
/// were one block; other columns add each block's partial (`BlockStats::append`).
#[derive(Default)]
struct UnitGroups {
    /// Per slot: the key and the selected rows so far.
    groups: Vec<(i128, u64)>,
    /// Per source: whether it is an f32 column the row-wise kernels take.
    row_wise: Vec<bool>,
    /// The row-wise kernels' accumulators.
    f32: F32Groups,
    /// Per slot, the statistics of the sources the row-wise kernels do not take, in source
    /// order: `others` entries from `slot * others`.
    stats: Vec<BlockStats>,
    others: usize,
}

impl UnitGroups {
    /// Empty, for a new unit.
    fn clear(&mut self) {
        self.groups.clear();
        self.row_wise.clear();
        self.f32.clear();
        self.stats.clear();
        self.others = 0;
    }

    /// Counts a block's selected rows per slot (`rows`, as many as the unit's slots so far).
    fn add_rows(&mut self, rows: &[u64], key_of: impl Fn(usize) -> i128) {
        let known = self.groups.len();
        self.groups.extend((known..rows.len()).map(|j| (key_of(j), 0)));
        for (grp, &r) in self.groups.iter_mut().zip(rows) {
            grp.1 += r;
        }
    }

    /// Adds a block's statistics of the sources the row-wise kernels do not take: `acc[j]`
    /// of slot j, the block's `k`-th such source.
    fn add_stats(&mut self, k: usize, acc: &[BlockStats], rows: &[u64]) {
        let g = rows.len();
        if self.stats.len() < g * self.others {
            self.stats.resize(g * self.others, BlockStats::default());
        }
        for (j, b) in acc.iter().enumerate().filter(|&(j, _)| rows[j] > 0) {
            self.stats[j * self.others + k].append(b);
        }
    }

    /// The unit's groups that saw rows, in slot order, with their statistics per source.
    fn take(&mut self) -> GroupPartials {
        let mut out = GroupPartials::default();
        for (j, &(key, rows)) in self.groups.iter().enumerate().filter(|(_, g)| g.1 > 0) {
            let (mut f, mut o) = (0, 0);
            let stats = self.row_wise.iter().map(|&rw| {
                if rw {
                    f += 1;
                    self.f32.stats(f - 1, j, rows)
                } else {
                    o += 1;
                    self.stats[j * self.others + o - 1]
                }
            });
            out.push(key, rows, stats);
        }
        // A unit of many groups leaves its state to the allocator rather than to this
        // thread's buffers, where it would wait for a unit that may never run here (a tile
        // of one unit runs on any thread).
        if self.groups.len() > LARGE_UNIT_GROUPS {
            *self = UnitGroups::default();
        }
        self.clear();
        out
    }
}

/// Groups above which a unit's state is freed after the unit (`UnitGroups::take`): 4,096
/// groups' lanes are 1.3 MB per eight columns.
const LARGE_UNIT_GROUPS: usize = 4096;

/// A unit's row-wise accumulators of f32 columns: per run of `GW` columns, each slot's
/// lanes (and `SPARES` after them for unselected rows), and each slot's ±inf counts.
#[derive(Default)]
struct F32Groups {
    lanes: Vec<Vec<GroupLanes>>,
    /// `cols` counts from `slot * cols`.
    infs: Vec<u64>,
    cols: usize,
    /// Slots accumulated so far.
    g: usize,
}

impl F32Groups {
    fn clear(&mut self) {
        // Each run's lanes are emptied, not freed: the next unit reuses them.
        self.lanes.iter_mut().for_each(Vec::clear);
        self.infs.clear();
        self.g = 0;
    }

    /// Column c's statistics of slot j, which has `rows` selected rows.
    fn stats(&self, c: usize, j: usize, rows: u64) -> BlockStats {
        let (a, k) = (&self.lanes[c / GW][j], c % GW);
        BlockStats {
            count: rows - a.nan[k] as u64,
            nan: a.nan[k] as u64,
            inf: self.infs[j * self.cols + c],
            pivot: a.pivot[k],
            sum_d: a.s[k],
            sum_d2: a.s2[k],
            min: a.mn[k] as f64,
            max: a.mx[k] as f64,
            ..BlockStats::default()
        }
    }
}

/// Per-group statistics of one block, added to its unit's (`bufs.unit`; `Scratch::start_unit`
/// empties it and the key slots when a unit starts). An 8-bit key is its own slot (+128 for i8: 256 slots, the empty ones
/// dropped); wider keys map to dense slots in first-seen order within the unit, and more
/// than `MAX_GROUPS` of them is the query's error.
#[inline(always)]
fn group_block<'a>(
    key: View,
    mask: Option<&[u8]>,
    sources: impl Iterator<Item = View<'a>>,
    bufs: GroupBufs,
    limit: GroupLimit,
    level: Level,
) -> Result<()> {
    let GroupBufs { keys, slots, table, map, order, gbuf, unit } = bufs;
    let n = on_view!(key, x => x.len());
    let sources: Vec<View> = sources.collect();
    let f32_cols: Vec<&[f32]> = sources.iter().filter_map(|v| if let View::F32(x) = *v { Some(x) } else { None }).collect();
    // When the row-wise kernels take every source, an 8-bit key's slots are made run by run
    // (`Slots::Key8`) rather than for the whole block: the benchmark's 64-key group-by of
    // eight columns went from 19.2-19.6 to 20.6-20.8 GB/s.
    let in_runs = level != Level::Base && f32_cols.len() == sources.len();
    // 8-bit keys: `(offset, g)`, slot j holding key j - offset, and `g` slots (one past the
    // largest key's, unselected rows included).
    let direct: Option<(i64, usize)>;
    let mut slot_src = match key {
        View::U8(_) | View::I8(_) if in_runs => {
            // The slot is the key's byte, its sign bit flipped for i8 (key + 128).
            let (bytes, flip) = match key {
                View::I8(x) => (bytemuck::cast_slice::<i8, u8>(x), 0x80),
                View::U8(x) => (x, 0),
                _ => unreachable!("matched as an 8-bit key above"),
            };
            direct = Some((flip as i64, bytes.iter().fold(0u8, |m, &b| m.max(b ^ flip)) as usize + 1));
            Slots::Key8 { bytes, flip, mask, buf: slots }
        }
        _ => {
            // Every slot is written below (by `direct_slots`, `narrow_slots`, or filled
            // first for wide keys).
            if slots.len() < n {
                slots.resize(n, u32::MAX);
            }
            let slots = &mut slots[..n];
            direct = match key {
                View::U8(x) => Some((0, direct_slots(x, mask, 0, slots))),
                View::I8(x) => Some((128, direct_slots(x, mask, 128, slots))),
                View::I16(_) | View::U16(_) => {
                    if table.is_empty() {
                        table.resize(65536 + 32768, 0);
                    }
                    on_view!(key, x => narrow_slots(x, mask, table, keys, slots));
                    None
                }
                _ => {
                    on_view!(key, x => wide_slots(x, mask, map, keys, slots))?;
                    None
                }
            };
            Slots::All(slots)
        }
    };
    // The unit's slots so far (an 8-bit key's block may end below an earlier block's).
    let g = direct.map_or(keys.len(), |(_, g)| g).max(unit.groups.len());
    limit.check(g)?;
    let rows = slot_src.rows(g);
    let key_of = |j: usize| direct.map_or_else(|| keys[j], |(offset, _)| j as i128 - offset as i128);
    unit.add_rows(&rows, key_of);
    // f32 columns: row by row into the unit's per-group accumulators, where the CPU has
    // AVX2 (else gathered into group order, below).
    let row_wise = level != Level::Base;
    // Every block of a unit has the same sources: the unit's first sets their kinds.
    if unit.row_wise.len() != sources.len() {
        unit.row_wise = sources.iter().map(|v| row_wise && matches!(v, View::F32(_))).collect();
        unit.others = unit.row_wise.iter().filter(|&&rw| !rw).count();
    }
    if row_wise {
        group_rows_f32(level, &f32_cols, &mut slot_src, &rows, g, &mut unit.f32);
    }
    // The slots as a whole, for the sources below that the row-wise kernels did not take:
    // none when the slots were made run by run (every source was theirs, and 8-bit keys
    // have at most 256 groups).
    let slots: &[u32] = match slot_src {
        Slots::All(s) => s,
        Slots::Key8 { .. } => &[],
    };
    // Row indices sorted by group for the gather path, made when first needed.
    let mut start = Vec::new();
    let mut others = 0;
    for src in sources {
        let acc = match src {
            View::F32(_) if row_wise => continue,
            View::F32(x) => {
                if start.is_empty() {
                    group_order(slots, &rows, &mut start, order);
                }
                let spare = start[g] as u32;
                gbuf.clear();
                gbuf.resize(spare as usize + 1, 0.0);
                let (dst, idx, x) = (&mut gbuf[..], &order[..n], &x[..n]);
                for i in 0..n {
                    if i % 16 == 0 {
                        prefetch(x, i + PREFETCH_F32);
                    }
                    dst[idx[i] as usize] = x[i];
                }
                let mut acc = Vec::with_capacity(g);
                for j in 0..g {
                    acc.push(stats_f32_any::<false>(&gbuf[start[j]..start[j + 1]], None, rows[j], Level::Base));
                }
                acc
            }
            other => {
                let mut acc = vec![BlockStats::default(); g];
                on_view!(other, x => group_accumulate(x, slots, &mut acc));
                acc
            }
        };
        unit.add_stats(others, &acc, &rows);
        others += 1;
    }
    Ok(())
}

/// Slots of 8-bit keys: the key + `offset` (in 0..256), `u32::MAX` for an unselected row.
/// Returns the number of slots: one past the largest key's (unselected rows included).
#[inline(never)]
fn direct_slots<T: Elem>(x: &[T], mask: Option<&[u8]>, offset: i64, slots: &mut [u32]) -> usize {
    let slots = &mut slots[..x.len()];
    // One pass: each slot written, the largest kept (both loops vectorize).
    let mut top = 0;
    match mask {
        None => {
            for (s, v) in slots.iter_mut().zip(x) {
                let k = (v.i64() + offset) as u32;
                *s = k;
                top = top.max(k + 1);
            }
        }
        Some(m) => {
            for ((s, v), &on) in slots.iter_mut().zip(x).zip(m) {
                let k = (v.i64() + offset) as u32;
                *s = if on != 0 { k } else { u32::MAX };
                top = top.max(k + 1);
            }
        }
    }
    top as usize
}

/// Offset of a 16-bit key in the per-thread key table.
const KEY_OFFSET: i64 = 32768;

/// Dense group slots of a block's 16-bit keys, in first-seen order: `slots[i]` for row i
/// (`u32::MAX` when unselected), `keys[j]` for slot j. `table[key + KEY_OFFSET]` is 1 + the
/// key's slot, 0 when unseen (the caller resets the entries of `keys` afterwards).
#[inline(never)]
fn narrow_slots<T: Elem>(x: &[T], mask: Option<&[u8]>, table: &mut [u32], keys: &mut Vec<i128>, slots: &mut [u32]) {
    let slots = &mut slots[..x.len()];
    // SAFETY (the unchecked indexing below): a narrow key is in [-32768, 65535], so
    // key + KEY_OFFSET < table.len() = 65536 + 32768 (asserted).
    assert!(table.len() >= 65536 + KEY_OFFSET as usize);
    // Branch-free but for a key's first selected row (rare): a filter keeps rows at random,
    // and a branch on it would be mispredicted for every other row.
    for i in 0..x.len() {
        let on = mask.is_none_or(|m| m[i] != 0);
        let idx = (x[i].i64() + KEY_OFFSET) as usize;
        let mut e = unsafe { *table.get_unchecked(idx) };
        // One integer test (`e == 0 && on` would compile to a branch on `on`).
        if (e | (!on) as u32) == 0 {
            keys.push(x[i].i128());
            e = keys.len() as u32;
            unsafe { *table.get_unchecked_mut(idx) = e };
        }
        slots[i] = if on { e.wrapping_sub(1) } else { u32::MAX };
    }
}

/// Slots of 32/64-bit keys in first-seen order (`keys` gets each new key), `u32::MAX`
/// where the mask drops the row; more than `MAX_GROUPS` keys is the query's error.
fn wide_slots<T: Elem>(x: &[T], mask: Option<&[u8]>, map: &mut KeyMap, keys: &mut Vec<i128>, slots: &mut [u32]) -> Result<()> {
    for (i, s) in slots[..x.len()].iter_mut().enumerate() {
        *s = if mask.is_some_and(|m| m[i] == 0) { u32::MAX } else { map.slot(x[i].i128(), keys)? };
    }
    Ok(())
}

/// The groups' rows from `count_rows`'s counters.
fn rows_of_counts(counts: &[u32], g: usize) -> Vec<u64> {
    let w = g + cpu_simd::SPARES;
    (0..g).map(|j| (0..4).map(|k| counts[k * w + j] as u64).sum()).collect()
}

/// Adds each row to its group's counters: `counts` holds four interleaved counters of the
/// g groups and of `SPARES` spares (`4 * (g + SPARES)`), so that runs of one group do not
/// wait on each increment, and unselected rows (which a selective filter makes most rows)
/// go to the spares, as in the row kernels. Not inlined: in the long block function its
/// loop would spill its pointers.
#[inline(never)]
fn count_rows(slots: &[u32], g: usize, counts: &mut [u32]) {
    let w = g + cpu_simd::SPARES;
    assert_eq!(counts.len(), 4 * w, "count_rows: bad shapes");
    let quads = slots.chunks_exact(4);
    let tail = quads.remainder();
    for (r, q) in quads.enumerate() {
        for (k, &slot) in q.iter().enumerate() {
            // SAFETY: k < 4 and lane_of(..) < w, so the index is below 4 * w = counts.len().
            unsafe { *counts.get_unchecked_mut(k * w + cpu_simd::lane_of(slot, g, r)) += 1 };
        }
    }
    for &slot in tail {
        counts[(slot as usize).min(g)] += 1;
    }
}

/// `out[i]`: the slot of 8-bit key byte `keys[i]` (`keys[i] ^ flip`), or `u32::MAX` where
/// the mask drops the row. Branch-free, so that it vectorizes (with a branch on a filter's
/// random mask, a filtered group-by ran 3.6 times slower, measured).
#[inline(never)]
fn key8_slots(keys: &[u8], flip: u8, mask: Option<&[u8]>, out: &mut [u32]) {
    match mask {
        None => out.iter_mut().zip(keys).for_each(|(s, &b)| *s = (b ^ flip) as u32),
        Some(m) => out.iter_mut().zip(keys).zip(m).for_each(|((s, &b), &on)| *s = (b ^ flip) as u32 | ((on == 0) as u32).wrapping_neg()),
    }
}

/// Rows `[start, start + len)` of up to `GW` columns (empty slices past `cols.len()`).
#[inline(always)]
fn run_of<'a>(cols: &[&'a [f32]], start: usize, len: usize) -> [&'a [f32]; GW] {
    let mut run: [&[f32]; GW] = [&[]; GW];
    for (r, c) in run.iter_mut().zip(cols) {
        *r = &c[start..start + len];
    }
    run
}

/// Rows of slots made at a time from 8-bit keys: 32 KiB of slots, which stay in the L1
/// cache between being made and being read.
const KEY8_CHUNK: usize = 8192;

/// Where the row-wise group kernels find each row's group slot: all of a block's slots
/// made beforehand, or an 8-bit key column from which they are made `KEY8_CHUNK` rows at
/// a time (the block's slots as a whole, 1 MiB for 262,144 rows, were written and read
/// three times through the L2 cache).
enum Slots<'a> {
    /// Row i's slot, `u32::MAX` for an unselected row.
    All(&'a [u32]),
    /// Row i's slot is `bytes[i] ^ flip` (0x80 turns an i8 key into key + 128), unless the
    /// mask drops the row; `buf` holds one run's slots.
    Key8 { bytes: &'a [u8], flip: u8, mask: Option<&'a [u8]>, buf: &'a mut Vec<u32> },
}

/// Runs `$body` with `$f` bound to a function giving row i's slot of `$slots` (a `&Slots`),
/// one loop per kind of slots rather than a test per row.
macro_rules! with_slot_of {
    ($slots:expr, $f:ident => $body:expr) => {
        match $slots {
            Slots::All(s) => {
                let $f = |i: usize| s[i];
                $body
            }
            Slots::Key8 { bytes, flip, mask: None, .. } => {
                let $f = |i: usize| (bytes[i] ^ *flip) as u32;
                $body
            }
            Slots::Key8 { bytes, flip, mask: Some(m), .. } => {
                let $f = |i: usize| (bytes[i] ^ *flip) as u32 | ((m[i] == 0) as u32).wrapping_neg();
                $body
            }
        }
    };
}

impl Slots<'_> {
    /// Rows.
    fn len(&self) -> usize {
        match self {
            Slots::All(s) => s.len(),
            Slots::Key8 { bytes, .. } => bytes.len(),
        }
    }

    /// Calls `f(start, slots)` for consecutive runs of rows from row 0: all of them at once,
    /// or `KEY8_CHUNK` at a time.
    fn each_run(&mut self, mut f: impl FnMut(usize, &[u32])) {
        match self {
            Slots::All(s) => f(0, s),
            Slots::Key8 { bytes, flip, mask, buf } => {
                buf.resize(KEY8_CHUNK.min(bytes.len()), 0);
                for start in (0..bytes.len()).step_by(KEY8_CHUNK) {
                    let keys = &bytes[start..(start + KEY8_CHUNK).min(bytes.len())];
                    let out = &mut buf[..keys.len()];
                    key8_slots(keys, *flip, mask.map(|m| &m[start..start + keys.len()]), out);
                    f(start, out);
                }
            }
        }
    }

    /// Selected rows per group (of g).
    fn rows(&mut self, g: usize) -> Vec<u64> {
        let mut counts = vec![0u32; 4 * (g + cpu_simd::SPARES)];
        self.each_run(|_, s| count_rows(s, g, &mut counts));
        rows_of_counts(&counts, g)
    }
}

/// `order[i]`: where row i goes when the block's rows are sorted by group (a counting sort
/// that keeps row order within a group); unselected rows go to a spare last place.
/// `start[j]..start[j + 1]` are group j's places.
fn group_order(slots: &[u32], rows: &[u64], start: &mut Vec<usize>, order: &mut Vec<u32>) {
    let g = rows.len();
    start.clear();
    start.push(0);
    for j in 0..g {
        start.push(start[j] + rows[j] as usize);
    }
    let spare = start[g] as u32;
    let mut fill = start.clone();
    order.clear();
    order.resize(slots.len(), spare);
    for (i, &slot) in slots.iter().enumerate() {
        if slot != u32::MAX {
            order[i] = fill[slot as usize] as u32;
            fill[slot as usize] += 1;
        }
    }
}

/// Adds a block's f32 columns to their groups' accumulators `acc` (per slot, kept across
/// the blocks of a unit: the block's `g` slots include the unit's earlier ones), `GW`
/// columns at a time by the row-wise kernel (AVX-512 or AVX2; a pass of four columns or
/// fewer by the AVX2 four-lane one, which stores half the accumulator bytes per row: 12-14 %
/// faster group-bys of 1-4 columns, measured), so every group's sums run in row order (as
/// the CUDA kernel's), and a unit's are the same bits however it is split into blocks.
/// `slots` gives each row's group (`u32::MAX` for an unselected row); `rows[j]` is the
/// number of the block's selected rows of group j.
#[inline(always)]
fn group_rows_f32(level: Level, cols: &[&[f32]], slots: &mut Slots, rows: &[u64], g: usize, acc: &mut F32Groups) {
    assert!(level != Level::Base, "the row-wise group kernel needs AVX2 or AVX-512");
    assert!(g >= acc.g && rows.len() == g, "group_rows_f32: a unit's slots only grow");
    let n = slots.len();
    // Under 10 % of rows selected: the kernels skip steps with none selected.
    let sparse = rows.iter().sum::<u64>() * 10 < n as u64;
    acc.cols = cols.len();
    acc.lanes.resize_with(cols.len().div_ceil(GW), Vec::new);
    acc.infs.resize(g * cols.len(), 0);
    for (chunk, lanes) in cols.chunks(GW).zip(acc.lanes.iter_mut()) {
        // New slots start empty, and so do the spares after them, which take the unselected
        // rows (the old spares become slots).
        lanes.truncate(acc.g);
        lanes.resize(g + cpu_simd::SPARES, GroupLanes::EMPTY);
        // Pivots still missing among the block's groups.
        let all = ((1u16 << chunk.len()) - 1) as u8;
        let missing: usize =
            (lanes.iter().zip(rows)).filter(|&(_, &r)| r > 0).map(|(a, _)| (all & !a.has_pivot).count_ones() as usize).sum();
        if missing > 0 {
            with_slot_of!(&*slots, slot_of => cpu_simd::group_pivots(chunk, n, slot_of, g, missing, lanes));
        }
        slots.each_run(|start, s| {
            let run = run_of(chunk, start, s.len());
            let run = &run[..chunk.len()];
            // SAFETY: `level()` saw these features on this CPU; every column holds the
            // run's rows and lanes has g + SPARES entries.
            #[cfg(target_arch = "x86_64")]
            match (level, sparse) {
                _ if run.len() <= 4 && sparse => unsafe { cpu_simd::group_rows4::<true>(run, s, g, lanes) },
                _ if run.len() <= 4 => unsafe { cpu_simd::group_rows4::<false>(run, s, g, lanes) },
                (Level::Avx512, true) => unsafe { cpu_simd::group_rows::<true>(run, s, g, lanes) },
                (Level::Avx512, false) => unsafe { cpu_simd::group_rows::<false>(run, s, g, lanes) },
                (_, true) => unsafe { cpu_simd::group_rows_avx2::<true>(run, s, g, lanes) },
                (_, false) => unsafe { cpu_simd::group_rows_avx2::<false>(run, s, g, lanes) },
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("the row-wise group kernel runs only on x86-64");
        });
    }
    for (c, col) in cols.iter().enumerate() {
        // ±inf make a sum of squares infinite (finite f32 values cannot), so infinities are
        // counted only for columns that have them (in this unit so far).
        let (lanes, k) = (&acc.lanes[c / GW], c % GW);
        if lanes[..g].iter().any(|a| !a.s2[k].is_finite()) {
            let (infs, w) = (&mut acc.infs, cols.len());
            with_slot_of!(&*slots, slot_of => for (i, &x) in col[..n].iter().enumerate() {
                let slot = slot_of(i) as usize;
                if slot < g && x.is_infinite() {
                    infs[slot * w + c] += 1;
                }
            });
        }
    }
    acc.g = g;
}

#[inline(always)]
fn group_accumulate<T: Elem>(x: &[T], slots: &[u32], acc: &mut [BlockStats]) {
    // Each group's shift is its own first finite value in the block.
    let mut has_pivot = vec![false; acc.len()];
    for (i, &v) in x.iter().enumerate() {
        let slot = slots[i];
        if slot != u32::MAX && !has_pivot[slot as usize] && !v.is_nan() && !v.is_inf() {
            has_pivot[slot as usize] = true;
            acc[slot as usize].pivot = v.f64();
        }
    }
    for (i, &v) in x.iter().enumerate() {
        let slot = slots[i];
        if slot == u32::MAX {
            continue;
        }
        let a = &mut acc[slot as usize];
        if v.is_nan() {
            a.nan += 1;
            continue;
        }
        let f = v.f64();
        let d = f - a.pivot;
        a.count += 1;
        a.sum_d += d;
        a.sum_d2 += d * d;
        a.min = a.min.min(f);
        a.max = a.max.max(f);
        a.inf += v.is_inf() as u64;
        if !T::FLOAT {
            a.imin = a.imin.min(v.i128());
            a.imax = a.imax.max(v.i128());
        }
    }
}

/// NaN values among little-endian elements of a float dtype (0 for other dtypes).
#[inline(always)]
fn count_nan(dtype: DType, bytes: &[u8]) -> u64 {
    match dtype {
        DType::F32 => {
            bytes.chunks_exact(4).map(|b| (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff > 0x7f80_0000) as u64).sum()
        }
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| (u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) & (u64::MAX >> 1) > 0x7ff0_0000_0000_0000) as u64)
            .sum(),
        DType::F16 => bytes.chunks_exact(2).map(|b| (u16::from_le_bytes([b[0], b[1]]) & 0x7fff > 0x7c00) as u64).sum(),
        DType::BF16 => bytes.chunks_exact(2).map(|b| (u16::from_le_bytes([b[0], b[1]]) & 0x7fff > 0x7f80) as u64).sum(),
        _ => 0,
    }
}

/// Copies the selected rows' raw bytes.
#[inline(always)]
fn copy_raw(span: &[u8], stride: usize, size: usize, n: usize, sel: Option<&[u32]>, out: &mut [u8]) {
    match sel {
        None if stride == size => out[..n * size].copy_from_slice(&span[..n * size]),
        None => gather(span, stride, size, n, out),
        Some(sel) => gather_rows(span, stride, size, sel.iter().map(|&i| i as usize), &mut out[..sel.len() * size]),
    }
}

#[inline(always)]
fn scaled(scale: Option<Scale>, v: f64) -> f64 {
    match scale {
        None => v,
        Some(Scale::Standardize { mean, std }) => {
            if std > 0.0 || std.is_nan() {
                (v - mean) / std
            } else if v.is_nan() {
                v
            } else {
                0.0
            }
        }
        Some(Scale::MinMax { min, max }) => {
            let range = max - min;
            if range > 0.0 || range.is_nan() {
                (v - min) / range
            } else if v.is_nan() {
                v
            } else {
                0.0
            }
        }
    }
}

/// Writes one computed output column of a block; returns (NaN count, overflow count).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_output(
    spec: &OutSpec,
    src: View,
    n: usize,
    sel: Option<&[u32]>,
    fbuf: &mut Vec<f32>,
    dbuf: &mut Vec<f64>,
    hbuf: &mut Vec<u16>,
    out: &mut [u8],
) -> (u64, u64) {
    let m = sel.map_or(n, |s| s.len());
    let idx = |j: usize| sel.map_or(j, |s| s[j] as usize);
    match spec.dtype {
        DType::I64 => {
            if let View::I64(x) = src {
                for j in 0..m {
                    out[j * 8..(j + 1) * 8].copy_from_slice(&x[idx(j)].to_le_bytes());
                }
            }
            (0, 0)
        }
        DType::Bool => {
            if let View::U8(x) = src {
                for j in 0..m {
                    out[j] = x[idx(j)];
                }
            }
            (0, 0)
        }
        DType::F64 => {
            dbuf.clear();
            on_view!(src, x => dbuf.extend((0..m).map(|j| scaled(spec.scale, x[idx(j)].f64()))));
            if let Some(fill) = spec.fill_nan {
                dbuf.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = fill);
            }
            let nans = dbuf.iter().filter(|v| v.is_nan()).count() as u64;
            out[..m * 8].copy_from_slice(bytemuck::cast_slice(&dbuf[..]));
            (nans, 0)
        }
        dtype => {
            fbuf.clear();
            let mut overflow = 0u64;
            match (spec.scale, src) {
                (None, View::F32(x)) => match sel {
                    None => fbuf.extend_from_slice(&x[..m]),
                    Some(s) => fbuf.extend(s.iter().map(|&i| x[i as usize])),
                },
                // A value computed or held in f64 and written as f16/bf16 is rounded once:
                // to f32 rounded to odd, which the cast then rounds as the f64 itself.
                _ if matches!(dtype, DType::F16 | DType::BF16) => on_view!(src, x => {
                    fbuf.extend((0..m).map(|j| super::f32_round_odd(scaled(spec.scale, x[idx(j)].f64()))))
                }),
                _ => on_view!(src, x => {
                    fbuf.extend((0..m).map(|j| {
                        let y = scaled(spec.scale, x[idx(j)].f64());
                        let f = y as f32;
                        overflow += (y.is_finite() && f.is_infinite()) as u64;
                        f
                    }))
                }),
            }
            if let Some(fill) = spec.fill_nan {
                let fill = super::fill_f32(fill, dtype);
                fbuf.iter_mut().for_each(|v| *v = if v.is_nan() { fill } else { *v });
            }
            let nans = fbuf.iter().map(|v| v.is_nan() as u64).sum::<u64>();
            match dtype {
                DType::F16 | DType::BF16 => {
                    hbuf.resize(m, 0);
                    if dtype == DType::F16 {
                        bytemuck::cast_slice_mut::<u16, f16>(&mut hbuf[..]).convert_from_f32_slice(fbuf);
                        overflow += fbuf.iter().zip(hbuf.iter()).map(|(f, &h)| (f.is_finite() && h & 0x7fff == 0x7c00) as u64).sum::<u64>();
                    } else {
                        bytemuck::cast_slice_mut::<u16, bf16>(&mut hbuf[..]).convert_from_f32_slice(fbuf);
                        overflow += fbuf.iter().zip(hbuf.iter()).map(|(f, &h)| (f.is_finite() && h & 0x7fff == 0x7f80) as u64).sum::<u64>();
                    }
                    out[..m * 2].copy_from_slice(bytemuck::cast_slice(&hbuf[..]));
                }
                _ => out[..m * 4].copy_from_slice(bytemuck::cast_slice(&fbuf[..])),
            }
            (nans, overflow)
        }
    }
}

#[cfg(test)]
#[path = "cpu_kernel_tests.rs"]
mod kernel_tests;
