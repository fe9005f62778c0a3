//! The query builder: [`LazyFrame`] → aggregate or transform queries, lowered to fused
//! programs and run by `exec::run` on a [`Device`].

use std::path::Path;

use crate::accum::{Accumulator, ColumnStats, StatsAcc};
use crate::backend::Device;
use crate::backend::cpu::Cpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{self, PassOutput, RunOptions};
use crate::expr::Expr;
use crate::fit::{Fit, Step, StepOp};
use crate::ops::{Op, VType};
use crate::program::{Builder, FusedProgram, HistSpec, OutSpec, Scale, Source, Value};
use crate::sink::table::{OutputColumn, OutputFormat, TableWriter};
use crate::source::Dataset;

/// A query under construction over a dataset: filters and computed columns so far.
#[derive(Debug, Clone)]
pub struct LazyFrame {
    ds: Dataset,
    filters: Vec<Expr>,
    with: Vec<(String, Expr)>,
}

impl Dataset {
    /// Starts a query over this dataset.
    pub fn lazy(&self) -> LazyFrame {
        LazyFrame { ds: self.clone(), filters: Vec::new(), with: Vec::new() }
    }
}

/// An aggregate to compute.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// count, nan/inf counts, sum, mean, min, max, var, std of each named column (all
    /// numeric columns when the list is empty).
    Stats(Vec<String>),
    /// An equal-width histogram of one column.
    Hist {
        /// The column.
        column: String,
        /// Number of bins.
        bins: u32,
        /// `(lo, hi)`; the column's finite min/max (a first pass) when `None`.
        range: Option<(f64, f64)>,
    },
}

/// Statistics of the named columns (all numeric columns when empty).
pub fn all_stats<I, S>(columns: I) -> Aggregate
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Aggregate::Stats(columns.into_iter().map(Into::into).collect())
}

/// A histogram of `column` with `bins` bins over its finite range.
pub fn hist(column: impl Into<String>, bins: u32) -> Aggregate {
    Aggregate::Hist { column: column.into(), bins, range: None }
}

impl Aggregate {
    /// For a histogram: fixes its range instead of using the column's min/max.
    pub fn range(self, lo: f64, hi: f64) -> Aggregate {
        match self {
            Aggregate::Hist { column, bins, .. } => Aggregate::Hist { column, bins, range: Some((lo, hi)) },
            other => other,
        }
    }
}

/// How a query ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunReport {
    /// The device every tile ran on.
    pub device: String,
    /// Passes over the data.
    pub passes: u32,
    /// Tiles run, over all passes.
    pub tiles: u64,
    /// Rows per tile (of the last pass; less than it started with when the driver had to
    /// shrink its tiles for memory).
    pub tile_rows: u64,
    /// Bytes of column data read, over all passes.
    pub bytes_read: u64,
}

/// A histogram's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// The column.
    pub column: String,
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Per-bin counts.
    pub counts: Vec<u64>,
    /// Selected values below `lo`.
    pub below: u64,
    /// Selected values above `hi`.
    pub above: u64,
    /// Selected NaN values.
    pub nan: u64,
    /// Rows selected by the filter.
    pub rows_selected: u64,
}

/// One group of a group-by.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    /// The key value.
    pub key: i128,
    /// Selected rows with this key.
    pub rows: u64,
    /// Per column, in query order.
    pub columns: Vec<(String, ColumnStats)>,
}

/// The result of an aggregate query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AggregateResult {
    /// Rows in the dataset.
    pub rows: u64,
    /// Rows that passed the filters.
    pub rows_selected: u64,
    /// Per column statistics (without group-by), in query order.
    pub columns: Vec<(String, ColumnStats)>,
    /// Per key, sorted by key (with group-by); groups with no selected row are left out.
    pub groups: Vec<GroupStats>,
    /// Histograms, in query order.
    pub histograms: Vec<Histogram>,
    /// How it ran.
    pub report: RunReport,
}

impl AggregateResult {
    /// Statistics of a column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnStats> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

/// A group-by under construction.
#[derive(Debug, Clone)]
pub struct GroupBy {
    lf: LazyFrame,
    key: String,
}

impl GroupBy {
    /// The aggregates to compute per key (statistics only).
    pub fn aggregate(self, aggs: impl IntoIterator<Item = Aggregate>) -> AggregateQuery {
        AggregateQuery { lf: self.lf, key: Some(self.key), aggs: aggs.into_iter().collect() }
    }
}

/// A histogram asked for: column, bins, range if given.
type HistRequest = (String, u32, Option<(f64, f64)>);
/// A histogram with its range known.
type HistFixed = (String, u32, (f64, f64));

/// An aggregate query, ready to run.
#[derive(Debug, Clone)]
pub struct AggregateQuery {
    lf: LazyFrame,
    key: Option<String>,
    aggs: Vec<Aggregate>,
}

impl LazyFrame {
    /// Keeps the rows where `predicate` is true (NaN comparisons are false).
    pub fn filter(mut self, predicate: Expr) -> LazyFrame {
        self.filters.push(predicate);
        self
    }

    /// Adds (or replaces) a column computed from the raw values of earlier ones.
    pub fn with_column(mut self, name: impl Into<String>, expr: Expr) -> LazyFrame {
        self.with.push((name.into(), expr));
        self
    }

    /// Computes aggregates over the selected rows.
    pub fn aggregate(self, aggs: impl IntoIterator<Item = Aggregate>) -> AggregateQuery {
        AggregateQuery { lf: self, key: None, aggs: aggs.into_iter().collect() }
    }

    /// Groups the selected rows by an integer column (up to 65,536 distinct values).
    pub fn group_by(self, key: impl Into<String>) -> GroupBy {
        GroupBy { lf: self, key: key.into() }
    }

    /// Describes a transform to write with [`TransformQuery::sink`].
    pub fn transform(self, transform: Transform) -> TransformQuery {
        TransformQuery { lf: self, t: transform }
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.ds
    }

    /// A builder with the filters and `with` columns applied.
    /// Filters and `with` columns see the raw dataset columns only (the pipeline runs
    /// filter → with); later aggregates and outputs see the `with` columns by name.
    fn builder(&self) -> Result<Builder<'_>> {
        let mut b = Builder::new(&self.ds);
        for f in &self.filters {
            b.filter(f)?;
        }
        let mut defined = Vec::with_capacity(self.with.len());
        for (name, e) in &self.with {
            defined.push((name, b.expr(e)?));
        }
        for (name, r) in defined {
            b.define(name, r);
        }
        Ok(b)
    }

    /// The register or column a name refers to.
    fn source_of(&self, b: &mut Builder<'_>, name: &str) -> Result<(Source, Option<VType>)> {
        if let Some((_, e)) = self.with.iter().rev().find(|(n, _)| n == name) {
            let r = b.expr(&crate::expr::col(name.to_string()).with_source_of(e))?;
            return Ok((Source::Reg(r), Some(b.prog.reg_type(r))));
        }
        let c = self.ds.column_index(name)?;
        Ok((Source::Slot(b.slot(c)), None))
    }

    /// Numeric dataset columns in file order.
    fn numeric_columns(&self) -> Vec<String> {
        self.ds.columns().iter().filter(|c| c.dtype != DType::Bool).map(|c| c.name.clone()).collect()
    }
}

impl Expr {
    fn with_source_of(mut self, other: &Expr) -> Expr {
        self.pos = other.pos;
        self.source = other.source.clone();
        self
    }
}

/// Runs one pass on a device.
pub(crate) fn run_pass(
    device: &Device,
    prog: &FusedProgram,
    ds: &Dataset,
    opts: &RunOptions,
    sink: Option<&mut TableWriter>,
) -> Result<PassOutput> {
    match device {
        Device::Cpu => exec::run(&Cpu::new(opts.threads, opts.memory_budget)?, prog, ds, opts, sink),
        #[cfg(feature = "wgpu")]
        Device::Wgpu(i) => exec::run(&crate::backend::wgpu::Wgpu::new(*i)?, prog, ds, opts, sink),
        #[cfg(not(feature = "wgpu"))]
        Device::Wgpu(i) => Err(Error::BackendUnavailable { device: format!("wgpu:{i}"), reason: "the `wgpu` feature is off".into() }),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => exec::run(&crate::backend::cuda::Cuda::new(*i)?, prog, ds, opts, sink),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(i) => Err(Error::BackendUnavailable { device: format!("cuda:{i}"), reason: "the `cuda` feature is off".into() }),
    }
}

fn account(report: &mut RunReport, device: &Device, prog: &FusedProgram, ds: &Dataset, out: &PassOutput) {
    report.device = device.name();
    report.passes += 1;
    report.tiles += out.tiles;
    report.tile_rows = out.tile_rows;
    report.bytes_read += ds.column_bytes(&prog.inputs);
}

impl AggregateQuery {
    /// Runs the query with default options.
    pub fn collect(&self, device: &Device) -> Result<AggregateResult> {
        self.collect_with(device, &RunOptions::default())
    }

    /// The stats columns and histogram specs, resolved.
    fn resolve(&self) -> Result<(Vec<String>, Vec<HistRequest>)> {
        let mut stats = Vec::new();
        let mut hists = Vec::new();
        for a in &self.aggs {
            match a {
                Aggregate::Stats(cols) if cols.is_empty() => {
                    let key = self.key.as_deref();
                    stats.extend(self.lf.numeric_columns().into_iter().filter(|c| Some(c.as_str()) != key));
                }
                Aggregate::Stats(cols) => stats.extend(cols.iter().cloned()),
                Aggregate::Hist { column, bins, range } => {
                    if self.key.is_some() {
                        return Err(Error::Unsupported("histograms per group".into()));
                    }
                    if *bins == 0 || *bins > 1 << 24 {
                        return Err(Error::plan(format!("--bins must be between 1 and {}, got {bins}", 1 << 24)));
                    }
                    if let Some((lo, hi)) = range {
                        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                            return Err(Error::plan(format!("histogram range {lo}:{hi} must be finite with LO <= HI")));
                        }
                        check_hist_width(column, *lo, *hi)?;
                    }
                    hists.push((column.clone(), *bins, *range));
                }
            }
        }
        Ok((stats, hists))
    }

    /// Builds the main program, with histogram ranges given.
    fn program(&self, stats: &[String], hists: &[(String, u32, (f64, f64))]) -> Result<FusedProgram> {
        let mut b = self.lf.builder()?;
        if let Some(key) = &self.key {
            let c = self.lf.ds.column_index(key)?;
            if !self.lf.ds.columns()[c].dtype.is_int() {
                return Err(Error::plan(format!("group-by key `{key}` must be an integer column, not {}", self.lf.ds.columns()[c].dtype)));
            }
            b.prog.key = Some(b.slot(c));
        }
        for name in stats {
            let (src, ty) = self.lf.source_of(&mut b, name)?;
            if ty == Some(VType::Bool) {
                return Err(Error::plan(format!("statistics of `{name}` need a numeric column")));
            }
            b.prog.stats.push(src);
        }
        for (name, bins, (lo, hi)) in hists {
            let (source, _) = self.lf.source_of(&mut b, name)?;
            b.prog.hists.push(HistSpec { source, lo: *lo, hi: *hi, bins: *bins });
        }
        Ok(b.prog)
    }

    /// Histogram ranges: given, or the finite min/max of the selected values (first pass).
    fn hist_ranges(&self, hists: &[HistRequest], device: &Device, opts: &RunOptions, report: &mut RunReport) -> Result<Vec<HistFixed>> {
        let missing: Vec<String> = hists.iter().filter(|h| h.2.is_none()).map(|h| h.0.clone()).collect();
        let mut found = Vec::new();
        if !missing.is_empty() {
            let mut b = self.lf.builder()?;
            b.prog.finite_range = true;
            for name in &missing {
                let (src, _) = self.lf.source_of(&mut b, name)?;
                b.prog.stats.push(src);
            }
            let out = run_pass(device, &b.prog, &self.lf.ds, opts, None)?;
            account(report, device, &b.prog, &self.lf.ds, &out);
            for (name, acc) in missing.iter().zip(&out.stats) {
                let r = acc
                    .finite_range()
                    .ok_or_else(|| Error::NoData(format!("column `{name}` has no finite value to set a histogram range")))?;
                check_hist_width(name, r.0, r.1)?;
                found.push(r);
            }
        }
        let mut found = found.into_iter();
        hists
            .iter()
            .map(|(c, bins, r)| {
                Ok((c.clone(), *bins, r.or_else(|| found.next()).ok_or_else(|| Error::plan("internal: missing histogram range"))?))
            })
            .collect()
    }

    /// Runs the query.
    pub fn collect_with(&self, device: &Device, opts: &RunOptions) -> Result<AggregateResult> {
        let (stats, hists) = self.resolve()?;
        let threads = opts.threads.unwrap_or_else(rayon::current_num_threads) as u64;
        // Per bin: a u32 counter and a u64 total in each thread, the tile's and the pass's u64
        // counts (`backend::cpu::HistCounts`, `exec::run`).
        let hist_bytes: u64 = hists.iter().map(|h| (h.1 as u64 + 4) * (12 * threads + 16)).sum();
        if hist_bytes > opts.memory_budget.max(crate::exec::MIN_REFUSAL_BUDGET) {
            return Err(Error::plan(format!(
                "histograms of this many bins need {} MiB on {threads} threads; raise --memory-budget or use fewer --bins",
                hist_bytes >> 20
            )));
        }
        let mut report = RunReport::default();
        let hists = self.hist_ranges(&hists, device, opts, &mut report)?;
        let prog = self.program(&stats, &hists)?;
        let mut out = run_pass(device, &prog, &self.lf.ds, opts, None)?;
        account(&mut report, device, &prog, &self.lf.ds, &out);
        let finish = |accs: &[StatsAcc]| stats.iter().cloned().zip(accs.iter().map(|a| a.finish())).collect::<Vec<_>>();
        // Counts and groups are moved out of the pass's output, not copied: a histogram of
        // millions of bins or 65,536 groups of many columns is not held twice.
        let histograms = hists
            .iter()
            .zip(std::mem::take(&mut out.hists))
            .map(|((column, _, (lo, hi)), h)| Histogram {
                column: column.clone(),
                lo: *lo,
                hi: *hi,
                counts: h.counts,
                below: h.below,
                above: h.above,
                nan: h.nan,
                rows_selected: out.rows_selected,
            })
            .collect();
        let columns = if self.key.is_some() { Vec::new() } else { finish(&out.stats) };
        let groups: Vec<GroupStats> = std::mem::take(&mut out.groups)
            .into_iter()
            .map(|(key, (rows, accs))| GroupStats { key, rows, columns: finish(&accs) })
            .collect();
        for (name, c) in columns.iter().chain(groups.iter().flat_map(|g| &g.columns)) {
            if c.overflowed() {
                return Err(overflow_error(name, c));
            }
        }
        Ok(AggregateResult { rows: self.lf.ds.rows(), rows_selected: out.rows_selected, columns, groups, histograms, report })
    }

    /// The fused program(s) this query runs, as text.
    pub fn explain(&self) -> Result<String> {
        let (stats, hists) = self.resolve()?;
        let ranged: Vec<_> = hists.iter().map(|(c, b, r)| (c.clone(), *b, r.unwrap_or((f64::NAN, f64::NAN)))).collect();
        let prog = self.program(&stats, &ranged)?;
        let mut s = String::new();
        if hists.iter().any(|h| h.2.is_none()) {
            s.push_str("pass 1: finite min/max of the histogram columns (same filters)\npass 2:\n");
        }
        s.push_str(&explain_program(&prog, &self.lf.ds));
        Ok(s)
    }
}

fn explain_program(prog: &FusedProgram, ds: &Dataset) -> String {
    let unit = crate::backend::cpu::unit_rows(prog, ds);
    let tile = crate::backend::cpu::tile_rows(prog, ds, RunOptions::default().memory_budget, rayon::current_num_threads());
    format!(
        "fused program (one kernel per tile; {} of {} columns read, {} rows per tile on the CPU at the default budget, {}-row blocks; group-by: {}):\n{}",
        prog.inputs.len(),
        ds.columns().len(),
        tile,
        exec::BLOCK_ROWS,
        if prog.key.is_some() {
            format!(
                "on the CPU, per {unit}-row unit dense key slots (direct table for 8/16-bit keys, hash map otherwise; a unit of a \
                 key wider than 8 bits is read in blocks of at most {} rows whose groups join), f32 columns added row by row to \
                 their group's accumulators eight columns at a time, or four for four or fewer (with AVX2 or AVX-512; else \
                 gathered into key order); tiles hold as many units as the budget keeps partials of {} groups for, or one per thread \
                 with a share of the budget's groups each (a unit with more runs again in smaller tiles); on wgpu and CUDA, one workgroup per {}-row unit and per sweep of 256 key slots, \
                 one thread per key walking its rows in order (a key wider than 8 bits is read on the host first: its slot is its distance \
                 from the smallest key, or its index among the column's sorted distinct keys, found by binary search, when those take fewer \
                 sweeps or the range spans more than {} values; at most that many distinct keys); partials merged in unit order",
                crate::backend::cpu::CPU_GROUP_BLOCK_ROWS,
                exec::MAX_GROUPS,
                exec::GROUP_BLOCK_ROWS,
                exec::MAX_GROUPS
            )
        } else {
            "none".to_string()
        },
        prog.describe(ds)
    )
}

/// Which columns a transform step applies to.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Cols {
    /// None.
    #[default]
    None,
    /// Every float column written.
    All,
    /// These columns.
    List(Vec<String>),
}

impl Cols {
    fn resolve(&self, floats: &[String]) -> Vec<String> {
        match self {
            Cols::None => Vec::new(),
            Cols::All => floats.to_vec(),
            Cols::List(l) => l.clone(),
        }
    }
}

/// A feature transform: `with` → `clip` → `log1p` → fit → `standardize`/`minmax` →
/// `fill_nan` → `cast`, on the rows the filters select.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transform {
    /// Output only these input columns (and the `with` columns); all when `None`.
    pub select: Option<Vec<String>>,
    /// Computed columns, from raw values.
    pub with: Vec<(String, Expr)>,
    /// `(column, lo, hi)`.
    pub clip: Vec<(String, f64, f64)>,
    /// Columns to replace by ln(1 + x).
    pub log1p: Cols,
    /// Columns to standardize with the fitted mean and std.
    pub standardize: Cols,
    /// Columns to scale to [0, 1] with the fitted min and max.
    pub minmax: Cols,
    /// Replace NaN in every float column written.
    pub fill_nan: Option<f64>,
    /// Cast every float column written (f32, f16 or bf16).
    pub cast: Option<DType>,
}

/// A transform over a frame, ready to fit and write.
#[derive(Debug, Clone)]
pub struct TransformQuery {
    lf: LazyFrame,
    t: Transform,
}

/// What writing a transform produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkReport {
    /// Rows written.
    pub rows_written: u64,
    /// Per output column: (name, dtype, NaN count, overflow-to-inf count).
    pub columns: Vec<(String, DType, u64, u64)>,
    /// How it ran.
    pub report: RunReport,
}

/// Options for writing an output file.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// Replace an existing output file.
    pub force: bool,
}

impl TransformQuery {
    /// Resolves the transform to per-column steps and fits the parameters of
    /// standardize/minmax over the selected rows (one pass, when any are asked).
    pub fn fit(&self, device: &Device, opts: &RunOptions) -> Result<Fit> {
        let mut fit = self.resolve()?;
        fit_params(&self.lf, &mut fit, device, opts, &mut RunReport::default())?;
        Ok(fit)
    }

    fn resolve(&self) -> Result<Fit> {
        let t = &self.t;
        if let Some(c) = t.cast
            && !matches!(c, DType::F32 | DType::F16 | DType::BF16)
        {
            return Err(Error::plan(format!("--cast must be f32, f16 or bf16, not {c}")));
        }
        let mut lf = self.lf.clone();
        lf.with.extend(t.with.iter().cloned());
        let ds = &lf.ds;
        let mut out_cols: Vec<String> = match &t.select {
            Some(sel) => {
                for (i, s) in sel.iter().enumerate() {
                    if sel[..i].contains(s) {
                        return Err(Error::plan(format!("--select lists `{s}` twice")));
                    }
                    if !t.with.iter().any(|(n, _)| n == s) {
                        ds.column_index(s)?;
                    }
                }
                ds.columns().iter().filter(|c| sel.contains(&c.name)).map(|c| c.name.clone()).collect()
            }
            None => ds.columns().iter().map(|c| c.name.clone()).collect(),
        };
        for (name, _) in &t.with {
            if !out_cols.contains(name) {
                out_cols.push(name.clone());
            }
        }
        // Types of the `with` columns decide which are float.
        let mut b = lf.builder()?;
        let mut floats = Vec::new();
        for name in &out_cols {
            let is_float = match lf.source_of(&mut b, name)? {
                (_, Some(ty)) => ty == VType::F32,
                (Source::Slot(s), None) => ds.columns()[b.prog.inputs[s]].dtype.is_float(),
                _ => false,
            };
            if is_float {
                floats.push(name.clone());
            }
        }
        let log1p = t.log1p.resolve(&floats);
        let standardize = t.standardize.resolve(&floats);
        let minmax = t.minmax.resolve(&floats);
        if let Some(c) = standardize.iter().find(|c| minmax.contains(c)) {
            return Err(Error::plan(format!("column `{c}` cannot be both standardized and min-max scaled")));
        }
        let mut steps = Vec::new();
        for (name, e) in &t.with {
            steps.push(Step { column: name.clone(), op: StepOp::With { expr: e.to_string() } });
        }
        let named: Vec<&String> = t.clip.iter().map(|c| &c.0).chain(&log1p).chain(&standardize).chain(&minmax).collect();
        for name in named {
            if !out_cols.contains(name) {
                ds.column_index(name)?;
                return Err(Error::plan(format!("column `{name}` is transformed but not selected for output")));
            }
            if !floats.contains(name) {
                let (src, ty) = lf.source_of(&mut b, name)?;
                let numeric = match (src, ty) {
                    (Source::Slot(s), None) => ds.columns()[b.prog.inputs[s]].dtype.is_int(),
                    (_, ty) => ty == Some(VType::Int),
                };
                if !numeric {
                    return Err(Error::plan(format!("column `{name}` is not numeric and cannot be transformed")));
                }
            }
        }
        for name in &out_cols {
            for (c, lo, hi) in &t.clip {
                if c == name {
                    if lo.is_nan() || hi.is_nan() || lo > hi {
                        return Err(Error::plan(format!("--clip {c}={lo}:{hi} needs LO <= HI")));
                    }
                    steps.push(Step { column: c.clone(), op: StepOp::Clip { lo: *lo, hi: *hi } });
                }
            }
            if log1p.contains(name) {
                steps.push(Step { column: name.clone(), op: StepOp::Log1p });
            }
            if standardize.contains(name) {
                steps.push(Step { column: name.clone(), op: StepOp::Standardize { mean: None, std: None } });
            }
            if minmax.contains(name) {
                steps.push(Step { column: name.clone(), op: StepOp::MinMax { min: None, max: None } });
            }
        }
        Ok(Fit { columns: out_cols, selected: t.select.is_some(), steps, fill_nan: t.fill_nan, cast: t.cast })
    }

    /// Fits (if needed: one pass) and writes the output file (a second pass).
    pub fn sink(&self, path: &Path, sink: &SinkOptions, device: &Device, opts: &RunOptions) -> Result<(Fit, SinkReport)> {
        let mut fit = self.resolve()?;
        let mut report = RunReport::default();
        fit_params(&self.lf, &mut fit, device, opts, &mut report)?;
        let out = write(&self.lf, &fit, path, sink, device, opts, report)?;
        Ok((fit, out))
    }

    /// The fit and write programs, as text.
    pub fn explain(&self) -> Result<String> {
        let fit = self.resolve()?;
        let mut s = String::new();
        if let Some(prog) = fit_program(&self.lf, &fit)? {
            s.push_str("pass 1 (fit): ");
            s.push_str(&explain_program(&prog, &self.lf.ds));
            s.push_str("pass 2 (write): ");
        }
        let (prog, _) = write_program(&self.lf, &fit)?;
        s.push_str(&explain_program(&prog, &self.lf.ds));
        Ok(s)
    }
}

/// Refuses a histogram range whose width overflows f64 (HI - LO beyond ~1.8e308): the
/// normative bin formula, computed in f64, would put every value in bin 0.
fn check_hist_width(column: &str, lo: f64, hi: f64) -> Result<()> {
    if crate::accum::range_too_wide(lo, hi) {
        Err(Error::plan(format!("histogram of `{column}`: its range {lo:e}:{hi:e} is wider than f64 can hold; give a narrower --range")))
    } else {
        Ok(())
    }
}

/// The refusal of statistics whose f64 sums overflowed (`ColumnStats::overflowed`).
fn overflow_error(name: &str, c: &ColumnStats) -> Error {
    let (lo, hi) = c.range_f64();
    Error::plan(format!(
        "statistics of `{name}`: its values (from {lo:e} to {hi:e}) overflow the f64 arithmetic behind its mean, variance or width; leave the column out or scale it"
    ))
}

/// Applies a fitted transform to the frame's rows and writes `path`.
pub fn apply_fit(lf: &LazyFrame, fit: &Fit, path: &Path, sink: &SinkOptions, device: &Device, opts: &RunOptions) -> Result<SinkReport> {
    if fit.columns.is_empty() {
        // No column list: every input column, then the `with` columns.
        let mut fit = fit.clone();
        fit.columns = lf.ds.columns().iter().map(|c| c.name.clone()).collect();
        for s in &fit.steps {
            if matches!(s.op, StepOp::With { .. }) && !fit.columns.contains(&s.column) {
                fit.columns.push(s.column.clone());
            }
        }
        // Every step's column must be there (a step on a missing column is not skipped).
        for s in &fit.steps {
            if !fit.columns.contains(&s.column) {
                lf.ds.column_index(&s.column)?;
            }
        }
        return write(lf, &fit, path, sink, device, opts, RunReport::default());
    }
    write(lf, fit, path, sink, device, opts, RunReport::default())
}

/// Per output column: the register or column holding its value before scaling, and the
/// scaling step (if any).
struct Lowered {
    sources: Vec<(String, Source, Option<usize>)>,
}

/// Lowers `with`, `clip` and `log1p` steps onto a builder.
fn lower_steps(lf: &LazyFrame, fit: &Fit, b: &mut Builder<'_>) -> Result<Lowered> {
    let mut sources = Vec::new();
    for name in &fit.columns {
        let mut src: Option<Source> = None;
        let mut scale = None;
        for (i, step) in fit.steps.iter().enumerate().filter(|(_, s)| &s.column == name) {
            let reg_of = |b: &mut Builder<'_>, src: Option<Source>| -> Result<usize> {
                let r = match src {
                    Some(Source::Reg(r)) => r,
                    _ => b.load_column(lf.ds.column_index(name)?),
                };
                b.to_f32(r, &crate::expr::col(name.clone()))
            };
            match &step.op {
                StepOp::With { .. } => {
                    // Registered on the builder by `with` already.
                    let (s, _) = lf.source_of(b, name)?;
                    src = Some(s);
                }
                StepOp::Clip { lo, hi } => {
                    let r = reg_of(b, src)?;
                    let (lo, hi) = (b.constant(Value::F(*lo as f32)), b.constant(Value::F(*hi as f32)));
                    src = Some(Source::Reg(b.float_op(Op::Clip, &[r, lo, hi], &crate::expr::col(name.clone()))?));
                }
                StepOp::Log1p => {
                    let r = reg_of(b, src)?;
                    src = Some(Source::Reg(b.float_op(Op::Log1p, &[r], &crate::expr::col(name.clone()))?));
                }
                StepOp::Standardize { .. } | StepOp::MinMax { .. } => {
                    if src.is_none() {
                        let (s, _) = lf.source_of(b, name)?;
                        src = Some(s);
                    }
                    scale = Some(i);
                }
            }
        }
        let src = match src {
            Some(s) => s,
            None => lf.source_of(b, name)?.0,
        };
        sources.push((name.clone(), src, scale));
    }
    Ok(Lowered { sources })
}

fn frame_with(lf: &LazyFrame, fit: &Fit) -> Result<LazyFrame> {
    let mut lf = lf.clone();
    for s in &fit.steps {
        if let StepOp::With { expr } = &s.op {
            lf.with.push((s.column.clone(), crate::parse::parse_expr(expr)?));
        }
    }
    Ok(lf)
}

fn fit_program(lf: &LazyFrame, fit: &Fit) -> Result<Option<FusedProgram>> {
    if !fit.steps.iter().any(|s| s.op.needs_fit()) {
        return Ok(None);
    }
    let lf = frame_with(lf, fit)?;
    let mut b = lf.builder()?;
    let lowered = lower_steps(&lf, fit, &mut b)?;
    for (_, src, scale) in &lowered.sources {
        if scale.is_some() {
            b.prog.stats.push(*src);
        }
    }
    Ok(Some(b.prog))
}

fn fit_params(lf: &LazyFrame, fit: &mut Fit, device: &Device, opts: &RunOptions, report: &mut RunReport) -> Result<()> {
    let Some(prog) = fit_program(lf, fit)? else { return Ok(()) };
    let out = run_pass(device, &prog, &lf.ds, opts, None)?;
    account(report, device, &prog, &lf.ds, &out);
    let mut accs = out.stats.iter();
    let order: Vec<String> = fit.columns.clone();
    for name in &order {
        if let Some(step) = fit.steps.iter_mut().find(|s| &s.column == name && s.op.needs_fit()) {
            let st = accs.next().map(|a| a.finish()).ok_or_else(|| Error::plan("internal: fit pass lost a column"))?;
            // (Min-max needs only the bounds, and a width that f64 holds.)
            let (lo, hi) = st.range_f64();
            if matches!(step.op, StepOp::Standardize { .. }) && st.overflowed()
                || matches!(step.op, StepOp::MinMax { .. }) && crate::accum::range_too_wide(lo, hi)
            {
                return Err(overflow_error(name, &st));
            }
            step.op = match step.op {
                StepOp::Standardize { .. } => StepOp::Standardize { mean: st.mean, std: st.std },
                _ => StepOp::MinMax { min: st.min.map(|m| m.as_f64()), max: st.max.map(|m| m.as_f64()) },
            };
        }
    }
    Ok(())
}

fn write_program(lf: &LazyFrame, fit: &Fit) -> Result<(FusedProgram, LazyFrame)> {
    let lf = frame_with(lf, fit)?;
    let mut b = lf.builder()?;
    let lowered = lower_steps(&lf, fit, &mut b)?;
    for (name, src, scale_step) in lowered.sources {
        let scale = scale_step.map(|i| match fit.steps[i].op {
            StepOp::Standardize { mean, std } => Scale::Standardize { mean: mean.unwrap_or(f64::NAN), std: std.unwrap_or(f64::NAN) },
            StepOp::MinMax { min, max } => Scale::MinMax { min: min.unwrap_or(f64::NAN), max: max.unwrap_or(f64::NAN) },
            _ => Scale::Standardize { mean: 0.0, std: 1.0 },
        });
        let (dtype, float) = match src {
            Source::Slot(s) => {
                let d = lf.ds.columns()[b.prog.inputs[s]].dtype;
                if scale.is_some() { (DType::F32, true) } else { (d, d.is_float()) }
            }
            Source::Reg(r) => match b.prog.reg_type(r) {
                VType::F32 => (DType::F32, true),
                // A scaled integer is a float.
                VType::Int if scale.is_some() => (DType::F32, true),
                VType::Int => (DType::I64, false),
                VType::Bool => (DType::Bool, false),
            },
        };
        let dtype = if float { fit.cast.unwrap_or(dtype) } else { dtype };
        // A finite fill value the output type cannot hold would be written as inf (the
        // kernels round it to f32 first, `fill_f32`, then to a half type).
        if let Some(v) = fit.fill_nan.filter(|v| float && v.is_finite()) {
            let f = crate::backend::fill_f32(v, dtype);
            let fits = match dtype {
                DType::F32 => f.is_finite(),
                DType::F16 => half::f16::from_f32(f).is_finite(),
                DType::BF16 => half::bf16::from_f32(f).is_finite(),
                _ => true,
            };
            if !fits {
                return Err(Error::plan(format!("--fill-nan {v:?} does not fit in {dtype} (column `{name}`): it would be written as inf")));
            }
        }
        b.prog.outputs.push(OutSpec { name, source: src, scale, fill_nan: if float { fit.fill_nan } else { None }, dtype });
    }
    Ok((b.prog, lf))
}

fn write(
    lf: &LazyFrame,
    fit: &Fit,
    path: &Path,
    sink: &SinkOptions,
    device: &Device,
    opts: &RunOptions,
    mut report: RunReport,
) -> Result<SinkReport> {
    let (prog, lf) = write_program(lf, fit)?;
    for f in lf.ds.files() {
        if same_file(f.path(), path) {
            return Err(Error::plan(format!("output {} is one of the inputs; choose another path", path.display())));
        }
    }
    let format = OutputFormat::from_path(path)?;
    let cols = prog.outputs.iter().map(|o| OutputColumn { name: o.name.clone(), dtype: o.dtype }).collect();
    let mut writer = TableWriter::create(path, format, cols, lf.ds.rows(), sink.force)?;
    let out = run_pass(device, &prog, &lf.ds, opts, Some(&mut writer))?;
    account(&mut report, device, &prog, &lf.ds, &out);
    let rows_written = writer.finish_unless(opts.cancel.as_deref())?;
    Ok(SinkReport {
        rows_written,
        columns: prog.outputs.iter().zip(&out.out_counts).map(|(o, c)| (o.name.clone(), o.dtype, c.0, c.1)).collect(),
        report,
    })
}

/// True when two paths name the same existing file (or the same path).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}
