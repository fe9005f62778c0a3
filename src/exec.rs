//! The streaming driver: walks the dataset in tiles, runs each tile on a backend, merges
//! the partials in row order and hands output rows to the sink.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::accum::{Accumulator, HistAcc, StatsAcc};
use crate::backend::{Backend, KeyMap, TileOut};
use crate::error::{Error, Result};
use crate::program::FusedProgram;
use crate::sink::table::TableWriter;
use crate::source::Dataset;

/// Rows per block: the unit of parallel work and of partial results. Every tile is a whole
/// number of blocks, so results do not depend on the tile size or the thread count.
pub const BLOCK_ROWS: u64 = 8192;

/// The most distinct keys a group-by may have.
pub const MAX_GROUPS: usize = 65_536;

/// Rows per partial of a group-by: eight blocks, so that the fixed cost of each group's
/// partial is spread over more rows. Also a fixed unit, so results stay independent of the
/// tile size and thread count. (The CPU takes larger units for some group-bys: see
/// `backend::cpu::unit_rows`.)
pub const GROUP_BLOCK_ROWS: u64 = 8 * BLOCK_ROWS;

/// Rows per partial (the unit of parallel work) of a program on a GPU (the default of
/// `Backend::unit_rows`).
pub(crate) fn unit_rows(prog: &FusedProgram) -> u64 {
    if prog.key.is_some() { GROUP_BLOCK_ROWS } else { BLOCK_ROWS }
}

/// The most CPU threads a run may ask for (`RunOptions::threads`): each is an OS thread
/// with its own stack and buffers, and 100,000 of them aborted the process.
pub const MAX_THREADS: usize = 1024;

/// The least budget a query is refused against for want of memory (a smaller one only makes
/// tiles smaller).
pub(crate) const MIN_REFUSAL_BUDGET: u64 = 64 << 20;

/// The error of a group-by with more than `MAX_GROUPS` keys.
pub(crate) fn too_many_groups() -> Error {
    Error::plan(format!("the group-by key has more than {MAX_GROUPS} distinct values"))
}

/// A callback told how many rows of a pass are done: `(done, total)`.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How a query runs: memory budget, threads, cancellation and progress.
#[derive(Clone)]
pub struct RunOptions {
    /// Anonymous memory the run may use for tiles, in bytes (default 256 MiB).
    pub memory_budget: u64,
    /// CPU threads, 1 to [`MAX_THREADS`] (`None`: all cores).
    pub threads: Option<usize>,
    /// Set to `true` (e.g. from a SIGINT handler) to stop the run with [`Error::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called after every tile.
    pub progress: Option<Progress>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { memory_budget: 256 << 20, threads: None, cancel: None, progress: None }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions").field("memory_budget", &self.memory_budget).field("threads", &self.threads).finish_non_exhaustive()
    }
}

/// What one pass produced, merged.
#[derive(Debug, Default)]
pub(crate) struct PassOutput {
    pub rows_selected: u64,
    pub stats: Vec<StatsAcc>,
    pub groups: BTreeMap<i128, (u64, Vec<StatsAcc>)>,
    pub hists: Vec<HistAcc>,
    pub out_counts: Vec<(u64, u64)>,
    pub rows_written: u64,
    pub tiles: u64,
    pub tile_rows: u64,
}

/// Rows per tile for a program under a memory budget: output buffers for a whole tile
/// must fit, and a tile is a whole number of `unit`s (the backend's rows per partial).
pub(crate) fn tile_rows(prog: &FusedProgram, ds: &Dataset, budget: u64, unit: u64) -> u64 {
    let mut units = row_units(prog, ds, budget, unit);
    if let Some(k) = prog.key {
        // A tile's group partials are held until the tile is merged: at worst every row of a
        // unit is its own group (8/16-bit keys have at most 256/65536 values, and a unit
        // with more than MAX_GROUPS keys is an error), so keep a tile's worth of partials
        // within half the budget.
        let keys = match ds.columns()[prog.inputs[k]].dtype.size() {
            1 => 256,
            _ => MAX_GROUPS as u64,
        };
        let worst = unit.min(keys) * group_bytes(prog, ds);
        units = units.min(budget / 2 / worst);
    }
    units.clamp(1, ((1 << 20) * BLOCK_ROWS / unit).max(1)) * unit
}

/// The units of a tile whose rows' input columns and output buffers fit the budget (the
/// other bound of `tile_rows`, for group partials, aside).
pub(crate) fn row_units(prog: &FusedProgram, ds: &Dataset, budget: u64, unit: u64) -> u64 {
    // The bytes a tile maps: a few columns of a wide matrix map its whole rows.
    let in_bytes = ds.mapped_bytes_per_row(&prog.inputs);
    let out_bytes: u64 = prog.outputs.iter().map(|o| o.dtype.size() as u64).sum();
    let per_row = (in_bytes + 2 * out_bytes).max(1);
    budget / per_row / unit
}

/// Bytes one group of a group-by holds per unit in flight, as the CPU (the largest of the
/// backends) holds them: its partial per statistic, and the task's working state while the
/// unit runs: for f32 statistics (f16/bf16 columns and expressions too) the row-wise
/// lanes, 320 bytes per run of eight, and a ±inf count; for others, the unit's and the
/// block's statistics beside the partial.
pub(crate) fn group_bytes(prog: &FusedProgram, ds: &Dataset) -> u64 {
    let stat = std::mem::size_of::<crate::accum::BlockStats>() as u64;
    let f32_like = |src: &crate::program::Source| match *src {
        crate::program::Source::Slot(i) => {
            matches!(ds.columns()[prog.inputs[i]].dtype, crate::dtype::DType::F32 | crate::dtype::DType::F16 | crate::dtype::DType::BF16)
        }
        crate::program::Source::Reg(r) => prog.reg_type(r) == crate::ops::VType::F32,
    };
    let f32s = prog.stats.iter().filter(|s| f32_like(s)).count() as u64;
    let others = prog.stats.len() as u64 - f32s;
    f32s * (stat + 8) + f32s.div_ceil(8) * 320 + others * 3 * stat + std::mem::size_of::<(i128, u64)>() as u64
}

/// Bytes one group of a group-by's result holds once finished (`GroupStats`, and per
/// statistic its column's name, a short string on the heap, beside its `ColumnStats`). The
/// merged `StatsAcc`s it is made from are smaller, and freed group by group as it is made.
fn group_result_bytes(stats: usize) -> u64 {
    use std::mem::size_of;
    (size_of::<crate::plan::GroupStats>() + stats * (size_of::<(String, crate::accum::ColumnStats)>() + 32)) as u64
}

/// Whether a group-by's result of `groups` groups of `stats` statistics fits in its half
/// of the memory budget (the other half is for the units in flight, `group_bytes`).
fn check_group_result(groups: usize, stats: usize, budget: u64) -> Result<()> {
    let budget = budget.max(MIN_REFUSAL_BUDGET);
    let need = groups as u64 * group_result_bytes(stats);
    if need <= budget / 2 {
        return Ok(());
    }
    Err(Error::plan(format!(
        "the group-by's result outgrows half of the memory budget ({} MiB): {groups} groups of {stats} columns already need {} MiB; \
         raise --memory-budget or select fewer --columns",
        (budget / 2) >> 20,
        need.div_ceil(1 << 20)
    )))
}

/// What the pager does with a range of rows of the program's input columns.
#[derive(Clone, Copy)]
enum Paging {
    /// Read them ahead and map them (`madvise(POPULATE_READ)`).
    ReadAhead,
    /// Release their mapped pages (`madvise(DONTNEED)`; they stay in the page cache).
    Release,
}

/// Runs one pass of `prog` over the whole dataset on `backend`.
///
/// The page advice (read the next tile ahead, release the last one) is given by a helper
/// thread: the kernel's page-table work then overlaps the computation, instead of leaving
/// every compute thread idle between tiles (about a fifth of a pass over cached data on two
/// cores). Without a helper thread (it could not be started) the advice is given inline.
pub(crate) fn run<B: Backend>(
    backend: &B,
    prog: &FusedProgram,
    ds: &Dataset,
    opts: &RunOptions,
    sink: Option<&mut TableWriter>,
) -> Result<PassOutput> {
    let advise_now = |what: Paging, r0: u64, r1: u64| match what {
        Paging::ReadAhead => ds.read_ahead(&prog.inputs, r0, r1),
        Paging::Release => ds.done_with(&prog.inputs, r0, r1),
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(Paging, u64, u64)>();
        let pager = std::thread::Builder::new().name("tilestream-pager".into()).spawn_scoped(scope, move || {
            for (what, r0, r1) in rx {
                advise_now(what, r0, r1);
            }
        });
        match pager {
            // The sender is dropped when `run_tiles` returns, which ends the helper.
            Ok(_) => run_tiles(backend, prog, ds, opts, sink, &move |what, r0, r1| {
                let _ = tx.send((what, r0, r1));
            }),
            Err(_) => run_tiles(backend, prog, ds, opts, sink, &advise_now),
        }
    })
}

/// The tile loop of `run`; `advise` gives page advice for rows of the input columns.
fn run_tiles<B: Backend>(
    backend: &B,
    prog: &FusedProgram,
    ds: &Dataset,
    opts: &RunOptions,
    mut sink: Option<&mut TableWriter>,
    advise: &(dyn Fn(Paging, u64, u64) + Sync),
) -> Result<PassOutput> {
    // Each thread holds one block of every register: a huge expression must not outgrow the
    // budget unnoticed.
    let threads = opts.threads.unwrap_or_else(rayon::current_num_threads).max(1) as u64;
    let unit = backend.unit_rows(prog, ds);
    // (The rows a thread evaluates at a time are `unit_rows(prog)`, also where the CPU's
    // partials are larger: `backend::cpu::unit_rows`.)
    let reg_bytes = prog.instrs.len() as u64 * unit_rows(prog) * 8 * threads;
    if reg_bytes > opts.memory_budget.max(MIN_REFUSAL_BUDGET) {
        return Err(Error::plan(format!(
            "the query's expressions need {} MiB of working memory on {threads} threads (more than --memory-budget); simplify them or raise the budget",
            reg_bytes >> 20
        )));
    }
    let rows = ds.rows();
    // No buffer larger than the dataset needs.
    let mut tile = backend.tile_rows(prog, ds, opts.memory_budget).min(rows.div_ceil(unit).max(1) * unit);
    // A device short of memory gets smaller tiles, down to one unit, before it fails.
    let prepare = |tile: &mut u64| loop {
        match backend.prepare(prog, ds, *tile) {
            Err(Error::DeviceOutOfMemory { .. }) if *tile > unit => *tile = (*tile / 2 / unit).max(1) * unit,
            r => break r,
        }
    };
    let mut prep = prepare(&mut tile)?;
    let mut out = PassOutput {
        stats: vec![StatsAcc::default(); prog.stats.len()],
        hists: prog.hists.iter().map(|h| HistAcc::new(h.bins)).collect(),
        out_counts: vec![(0, 0); prog.outputs.len()],
        tile_rows: tile,
        ..PassOutput::default()
    };
    // Groups as they are first seen, found by key through the open-addressing `KeyMap` (a
    // B-tree lookup per unit and group made group-bys of many keys slow, and SipHash in a
    // `HashMap` cost a tenth of a 60,000-key group-by), ordered by key at the end.
    let mut groups: Vec<(u64, Vec<StatsAcc>)> = Vec::new();
    let mut group_keys: Vec<i128> = Vec::new();
    let mut group_of = KeyMap::new();
    // Columns whose values are checked tile by tile (`Dataset::check_values`): BOOL inputs,
    // and U64 ones that expressions read.
    let checked: Vec<usize> = prog
        .inputs
        .iter()
        .enumerate()
        .filter(|&(slot, &c)| match ds.columns()[c].dtype {
            crate::dtype::DType::Bool => true,
            crate::dtype::DType::U64 => prog.instrs.iter().any(|i| matches!(*i, crate::program::Instr::Load { slot: s, .. } if s == slot)),
            _ => false,
        })
        .map(|(_, &c)| c)
        .collect();
    let mut tile_out = TileOut::default();
    if sink.is_some() {
        tile_out.columns = prog.outputs.iter().map(|o| vec![0u8; (tile.min(rows.max(1))) as usize * o.dtype.size()]).collect();
    }
    let mut r0 = 0;
    if rows > 0 {
        advise(Paging::ReadAhead, 0, tile.min(rows));
    }
    // Tiles in flight, oldest first: up to `depth` are submitted before the oldest is
    // collected, so a GPU stages one tile while it computes another.
    let depth = backend.depth().max(1);
    let mut pending: VecDeque<(u64, B::Ticket)> = VecDeque::new();
    while r0 < rows || !pending.is_empty() {
        if opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        if r0 < rows && pending.len() < depth {
            let r1 = (r0 + tile).min(rows);
            if r1 < rows {
                advise(Paging::ReadAhead, r1, (r1 + tile).min(rows));
            }
            for &c in &checked {
                ds.check_values(c, r0, r1)?;
            }
            let ticket = match backend.submit(&prep, ds, r0..r1, sink.is_some().then_some(&mut tile_out)) {
                // The tile's working memory ran short (on the CPU: a unit's groups outgrew
                // their share of the budget, `backend::cpu::Prepared::group_limit`): the
                // same rows again in smaller tiles. Nothing of the tile was merged or written.
                Err(Error::DeviceOutOfMemory { .. }) if pending.is_empty() && tile > unit => {
                    tile = (tile / 2 / unit).max(1) * unit;
                    prep = prepare(&mut tile)?;
                    continue;
                }
                r => r?,
            };
            // The tile's bytes have been read (computed, or copied to the device's staging).
            ds.check_faults()?;
            advise(Paging::Release, r0, r1);
            pending.push_back((r1, ticket));
            r0 = r1;
            continue;
        }
        let Some((r1, ticket)) = pending.pop_front() else { break };
        let res = backend.collect(&prep, ticket, sink.is_some().then_some(&mut tile_out))?;
        out.tiles += 1;
        for (h, acc) in out.hists.iter_mut().zip(&res.hists) {
            h.merge(acc);
        }
        let mut packed = 0usize;
        for (b, part) in res.blocks.iter().enumerate() {
            out.rows_selected += part.selected;
            for (acc, bs) in out.stats.iter_mut().zip(&part.stats) {
                acc.add_block(bs);
            }
            for (key, grows, bstats) in part.groups.iter() {
                // More than MAX_GROUPS keys is the query's error.
                let j = group_of.slot(key, &mut group_keys)? as usize;
                if j == groups.len() {
                    check_group_result(j + 1, bstats.len(), opts.memory_budget)?;
                    groups.push((0, vec![StatsAcc::default(); bstats.len()]));
                }
                let entry = &mut groups[j];
                entry.0 += grows;
                for (acc, bs) in entry.1.iter_mut().zip(bstats) {
                    acc.add_block(bs);
                }
            }
            for (tot, c) in out.out_counts.iter_mut().zip(&part.out_counts) {
                tot.0 += c.0;
                tot.1 += c.1;
            }
            if sink.is_some() {
                let n = part.selected as usize;
                let from = b * unit as usize;
                if from != packed {
                    for (col, spec) in tile_out.columns.iter_mut().zip(&prog.outputs) {
                        let sz = spec.dtype.size();
                        col.copy_within(from * sz..(from + n) * sz, packed * sz);
                    }
                }
                packed += n;
            }
        }
        if let Some(sink) = sink.as_deref_mut() {
            let cols: Vec<&[u8]> = tile_out.columns.iter().zip(&prog.outputs).map(|(c, o)| &c[..packed * o.dtype.size()]).collect();
            sink.write_tile(packed, &cols)?;
            out.rows_written += packed as u64;
        }
        if let Some(p) = &opts.progress {
            p(r1, rows);
        }
    }
    ds.check_unchanged()?;
    out.tile_rows = tile;
    out.groups = group_keys.into_iter().zip(groups).collect();
    Ok(out)
}
