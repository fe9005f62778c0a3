//! The `tilestream` command-line tool: dataset info, statistics, histograms, transforms,
//! synthetic data, the demo and the benchmark.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use tilestream::fit::json_f64;
use tilestream::{
    AggregateResult, Cols, ColumnStats, DType, Dataset, Device, Error, FileKind, Fit, LazyFrame, Number, RunOptions, SinkOptions,
    Transform, all_stats, hist, parse_expr,
};

#[derive(Parser)]
#[command(
    name = "tilestream",
    version,
    about = "Stream memory-mapped datasets larger than RAM through fused filter, aggregate and transform kernels."
)]
#[command(after_help = "Expressions (--where, --with): columns (`x:0` in backticks), numbers, inf, nan, true, false, \
+ - * /, < <= > >= == !=, && || ! (or and or not), abs sqrt exp log log1p isnan isinf isfinite min max clip.\n\
Exit codes: 0 ok, 2 error, 130 interrupted.")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Global {
    /// Device to run on: auto, cpu, wgpu[:N], cuda[:N].
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// Memory for tiles, e.g. 256MiB, 1GiB, 512KiB.
    #[arg(long, global = true, default_value = "256MiB", value_parser = parse_size)]
    memory_budget: u64,
    /// CPU threads, 1 to 1024 (default: all cores).
    #[arg(long, global = true, value_parser = parse_threads)]
    threads: Option<usize>,
    /// No progress bars or notes on stderr.
    #[arg(long, global = true)]
    quiet: bool,
    /// Read inputs as headerless row-major binary: DTYPE:COLS, e.g. f32:16.
    #[arg(long, global = true, value_parser = parse_raw)]
    raw: Option<FileKind>,
}

#[derive(Subcommand)]
enum Command {
    /// Show columns, dtypes, shapes, layout, rows and bytes; validates the files.
    Info {
        /// Input files (several of one row count form one dataset).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Per-column count, nan_count, inf_count, sum, mean, min, max, var (population), std.
    Stats {
        /// Input files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Columns (comma list; default: every numeric column).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Keep rows where EXPR is true.
        #[arg(long = "where", value_name = "EXPR", allow_hyphen_values = true)]
        filter: Option<String>,
        /// Group by an integer column (up to 65,536 distinct values).
        #[arg(long, value_name = "KEY")]
        by: Option<String>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Equal-width histogram: bin = floor((x - LO) * (BINS / (HI - LO))), computed in f64.
    Hist {
        /// Input files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The column.
        #[arg(long)]
        column: String,
        /// Number of bins.
        #[arg(long, default_value_t = 256)]
        bins: u32,
        /// LO:HI (default: the column's finite min and max, found in a first pass).
        #[arg(long, value_parser = parse_range, allow_hyphen_values = true)]
        range: Option<(f64, f64)>,
        /// Keep rows where EXPR is true.
        #[arg(long = "where", value_name = "EXPR", allow_hyphen_values = true)]
        filter: Option<String>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a transformed copy: --where → --with → --clip → --log1p → fit → --standardize /
    /// --minmax → --fill-nan → --cast.
    Transform(Box<TransformArgs>),
    /// Write a synthetic safetensors dataset: f32 columns f0.. and a skewed u8 `key`.
    Gen {
        /// Output .safetensors file.
        out: PathBuf,
        /// Rows.
        #[arg(long)]
        rows: u64,
        /// f32 feature columns.
        #[arg(long, default_value_t = 8)]
        cols: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// The main job on generated data (about 1 GiB): stats, a filtered group-by, a histogram
    /// and a fit+transform to f16, with a timing table.
    Demo {
        /// Rows to generate (default: about 1 GiB of data).
        #[arg(long)]
        rows: Option<u64>,
    },
    /// Throughput of each query kind on this machine, as a ratio to its measured limits.
    Bench {
        /// Rows to generate (default: 2 GiB of f32 feature data).
        #[arg(long)]
        rows: Option<u64>,
        /// Folder for the generated data (default: the system temp folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use this file (made by `tilestream gen`, 8 columns) instead of generating one.
        #[arg(long, conflicts_with = "rows")]
        data: Option<PathBuf>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the devices found and which one `auto` picks.
    Devices,
}

#[derive(Args)]
struct TransformArgs {
    /// Input files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output file (.safetensors, or .npy when every column has one dtype).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    out: PathBuf,
    /// Keep rows where EXPR is true.
    #[arg(long = "where", value_name = "EXPR", allow_hyphen_values = true)]
    filter: Option<String>,
    /// Output only these input columns (comma list), plus --with columns.
    #[arg(long, value_delimiter = ',')]
    select: Option<Vec<String>>,
    /// Standardize with the fitted mean and std: a comma list or `all` (all float columns).
    #[arg(long, value_name = "COLS")]
    standardize: Option<String>,
    /// Scale to [0, 1] with the fitted min and max: COLS or `all`.
    #[arg(long, value_name = "COLS")]
    minmax: Option<String>,
    /// Replace by ln(1 + x): COLS or `all`.
    #[arg(long, value_name = "COLS")]
    log1p: Option<String>,
    /// Clamp a column: C=LO:HI (repeatable).
    #[arg(long, value_name = "C=LO:HI", allow_hyphen_values = true)]
    clip: Vec<String>,
    /// Add or replace a column: NAME=EXPR over raw values (repeatable).
    #[arg(long = "with", value_name = "NAME=EXPR", allow_hyphen_values = true)]
    with: Vec<String>,
    /// Replace NaN in every float column written.
    #[arg(long, value_name = "V", allow_hyphen_values = true)]
    fill_nan: Option<f64>,
    /// Cast every float column written: f16, bf16 or f32.
    #[arg(long)]
    cast: Option<String>,
    /// Save the fitted transform as JSON.
    #[arg(long, value_name = "FIT.json")]
    save_fit: Option<PathBuf>,
    /// Replay a saved transform (no fit pass; no other transform flags).
    #[arg(long, value_name = "FIT.json")]
    apply: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// One JSON line on stdout: rows written and per-column NaN/overflow counts.
    #[arg(long)]
    json: bool,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=tilestream::MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a thread count from 1 to {}", tilestream::MAX_THREADS)),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("bad size `{s}`: expected e.g. 256MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        u => return Err(format!("bad size unit `{u}`: use KiB, MiB or GiB")),
    };
    let bytes = v * mult as f64;
    if !(1.0..1e18).contains(&bytes) {
        return Err(format!("size `{s}` is out of range"));
    }
    Ok(bytes as u64)
}

fn parse_raw(s: &str) -> Result<FileKind, String> {
    let (d, c) = s.split_once(':').ok_or("expected DTYPE:COLS, e.g. f32:16")?;
    let dtype = DType::from_name(d).ok_or_else(|| format!("unknown dtype `{d}`"))?;
    let cols: u64 = c.parse().map_err(|_| format!("bad column count `{c}`"))?;
    Ok(FileKind::Raw { dtype, cols })
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = split_range(s).ok_or("expected LO:HI, e.g. 0:1 or -5:5")?;
    if !(a.is_finite() && b.is_finite() && a <= b) {
        return Err(format!("range {s} must be finite with LO <= HI"));
    }
    Ok((a, b))
}

/// Splits `LO:HI` where either side may be negative or in scientific notation.
fn split_range(s: &str) -> Option<(f64, f64)> {
    let bytes = s.as_bytes();
    (1..s.len()).filter(|&i| bytes[i] == b':').find_map(|i| Some((s[..i].trim().parse().ok()?, s[i + 1..].trim().parse().ok()?)))
}

fn main() {
    // Mesa's Vulkan device-select layer, which Vulkan loads into every instance, connects to
    // a Wayland or X display to find the one a desktop shows, and on a headless machine
    // prints "XDG_RUNTIME_DIR is invalid" errors; its only job is to reorder the adapters,
    // which tilestream lists and picks itself (`devices`, `--device wgpu:N`). Turned off
    // unless the user set it, which also keeps the adapter numbers independent of the display.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: nothing else runs yet (first statement of `main`, no thread started), so no
        // thread can read the environment while it changes.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    // The first Ctrl-C asks the run to stop cleanly (exit 130, no output left behind); a
    // second one exits at once.
    let _ = signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, Arc::clone(&cancel));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&cancel));
    let code = match run(&cli, &cancel) {
        Ok(()) => 0,
        Err(e) => {
            // A Ctrl-C that also closed the pipe stdout was blocked on (the reader got it
            // too) is an interruption, not the reader's early exit.
            let interrupted = cancel.load(std::sync::atomic::Ordering::Relaxed);
            if is_broken_pipe(&e) && !interrupted {
                0
            } else if interrupted || e.downcast_ref::<Error>().is_some_and(|t| matches!(t, Error::Interrupted)) {
                err_line("tilestream: interrupted");
                130
            } else {
                err_line(&format!("tilestream: {}", chain(&e)));
                2
            }
        }
    };
    std::process::exit(code);
}

/// Writes one line to stderr; a closed stderr is not an error worth a panic.
fn err_line(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(line.as_bytes()).and_then(|_| e.write_all(b"\n"));
}

fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Prints to stdout, turning a closed pipe into an error that exits 0.
fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.write_all(b"\n")?;
    o.flush()?;
    Ok(())
}

/// Stdout written piece by piece through a buffer, so that a long result (a group-by's
/// 65,536 groups, a histogram's millions of bins) is never held whole in memory as text or
/// as a JSON tree (a 60,000-group `stats --json` of 8 columns held 0.9 GiB that way).
/// After a Ctrl-C the next piece stops with `Interrupted`.
struct Printer<'a> {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
    cancel: Option<&'a AtomicBool>,
}

impl Printer<'_> {
    fn new(ctx: &Ctx) -> Printer<'_> {
        Printer { w: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()), cancel: ctx.opts.cancel.as_deref() }
    }

    /// Writes `text` as it is.
    fn put(&mut self, text: &str) -> Result<()> {
        self.put_bytes(text.as_bytes())
    }

    /// Writes `bytes` as they are.
    fn put_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Error::Interrupted.into());
        }
        self.w.write_all(bytes)?;
        Ok(())
    }

    /// Flushes what is left.
    fn finish(mut self) -> Result<()> {
        self.w.flush()?;
        Ok(())
    }
}

struct Ctx {
    device: Device,
    /// `--device auto`: small inputs stay on the CPU, and a GPU that fails hands the whole
    /// query to the CPU.
    auto: bool,
    opts: RunOptions,
    quiet: bool,
    raw: Option<FileKind>,
}

impl Ctx {
    fn open(&self, paths: &[PathBuf]) -> Result<Dataset> {
        Ok(Dataset::open_many(paths, self.raw.unwrap_or(FileKind::Auto))?)
    }

    /// The device of a benchmark: `auto` takes the best device whatever the input's size.
    fn bench_device(&self) -> Device {
        if self.auto { Device::auto() } else { self.device.clone() }
    }

    /// Runs a query on the device. Under `--device auto` the device depends on the input's
    /// size, and a GPU that fails or cannot run the query is reported on stderr and the whole
    /// query runs again on the CPU (an output file is rewritten from scratch). With an
    /// explicit device its error is the answer.
    fn on_device<T>(&self, ds: &Dataset, run: impl Fn(&Device) -> tilestream::Result<T>) -> Result<T> {
        let dev = if self.auto { Device::auto_for(ds) } else { self.device.clone() };
        match run(&dev) {
            Err(
                e @ (tilestream::Error::Device { .. }
                | tilestream::Error::DeviceOutOfMemory { .. }
                | tilestream::Error::Compile { .. }
                | tilestream::Error::Unsupported(_)),
            ) if self.auto && dev != Device::Cpu => {
                err_line(&format!("tilestream: {} could not run the query ({e}); running it again on the CPU", dev.name()));
                Ok(run(&Device::Cpu)?)
            }
            r => Ok(r?),
        }
    }

    /// Run options with a progress bar labelled `what`, shown after a second on a terminal.
    fn with_progress(&self, what: &str) -> (RunOptions, ProgressBar) {
        let pb = ProgressBar::hidden();
        let mut opts = self.opts.clone();
        if !self.quiet && std::io::stderr().is_terminal() {
            pb.set_style(
                ProgressStyle::with_template("{msg:>12} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_message(what.to_string());
            let start = Instant::now();
            let bar = pb.clone();
            opts.progress = Some(Arc::new(move |done, total| {
                bar.set_length(total.max(1));
                bar.set_position(done);
                if bar.is_hidden() && start.elapsed().as_secs_f64() > 1.0 {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
            }));
        }
        (opts, pb)
    }
}

fn run(cli: &Cli, cancel: &Arc<AtomicBool>) -> Result<()> {
    let g = &cli.global;
    // `auto` is resolved per input (small inputs stay on the CPU), so that commands that
    // need no device never start a GPU driver.
    let device = if g.device == "auto" { Device::Cpu } else { Device::from_name(&g.device)? };
    // --threads sizes the global pool once, rather than a pool per pass.
    let pooled = g.threads.is_some_and(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_ok());
    let threads = if pooled { None } else { g.threads };
    let opts = RunOptions { memory_budget: g.memory_budget, threads, cancel: Some(Arc::clone(cancel)), progress: None };
    let ctx = Ctx { device, auto: g.device == "auto", opts, quiet: g.quiet, raw: g.raw };
    match &cli.command {
        Command::Info { paths, json } => info(&ctx, paths, *json),
        Command::Stats { paths, columns, filter, by, json } => stats(&ctx, paths, columns, filter.as_deref(), by.as_deref(), *json),
        Command::Hist { paths, column, bins, range, filter, json } => {
            histogram(&ctx, paths, column, *bins, *range, filter.as_deref(), *json)
        }
        Command::Transform(t) => transform(&ctx, t),
        Command::Gen { out, rows, cols, seed, force } => generate_cmd(&ctx, out, *rows, *cols, *seed, *force),
        Command::Demo { rows } => demo(&ctx, *rows),
        Command::Bench { rows, dir, data, json } => bench(&ctx, *rows, dir.as_deref(), data.as_deref(), *json),
        Command::Devices => devices(),
    }
}

fn info(ctx: &Ctx, paths: &[PathBuf], json: bool) -> Result<()> {
    let ds = ctx.open(paths)?;
    if json {
        let files: Vec<Value> = ds
            .files()
            .iter()
            .map(|f| {
                json!({
                    "path": f.path().display().to_string(),
                    "format": f.format(),
                    "bytes": f.len(),
                    "tensors": f.tensors().iter().map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "offset": t.offset, "bytes": t.bytes})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let cols: Vec<Value> = ds
            .columns()
            .iter()
            .map(|c| {
                json!({"name": c.name, "dtype": c.dtype.name(), "file": c.file, "offset": c.offset, "stride": c.stride,
                       "layout": if c.is_contiguous() { "contiguous" } else { "strided" }, "bytes": c.dtype.size() as u64 * ds.rows()})
            })
            .collect();
        return out(&json!({"rows": ds.rows(), "files": files, "columns": cols}).to_string());
    }
    let mut s = String::new();
    for f in ds.files() {
        s += &format!("{}: {}, {} bytes, {} tensor(s)\n", f.path().display(), f.format(), f.len(), f.tensors().len());
        for t in f.tensors() {
            s += &format!("  tensor {:<24} {:<5} shape {:?}  offset {}  {} bytes\n", t.name, t.dtype.name(), t.shape, t.offset, t.bytes);
        }
    }
    s += &format!("rows: {}\ncolumns: {}\n", ds.rows(), ds.columns().len());
    for c in ds.columns() {
        let layout = if c.is_contiguous() { "contiguous".to_string() } else { format!("strided ({} B)", c.stride) };
        s += &format!("  {:<24} {:<5} {layout}\n", c.name, c.dtype.name());
    }
    out(s.trim_end())
}

fn frame(ds: &Dataset, filter: Option<&str>) -> Result<LazyFrame> {
    let mut lf = ds.lazy();
    if let Some(f) = filter {
        lf = lf.filter(parse_expr(f).context("--where")?);
    }
    Ok(lf)
}

/// Appends `n` as JSON: an integer, a float as `json_f64` writes it, or null (no value, or
/// an integer beyond u64).
fn put_num(buf: &mut Vec<u8>, n: Option<Number>) {
    match n {
        Some(Number::Int(i)) if i64::try_from(i).is_ok() || u64::try_from(i).is_ok() => buf.extend_from_slice(i.to_string().as_bytes()),
        Some(Number::Int(_)) | None => buf.extend_from_slice(b"null"),
        Some(Number::Float(f)) => put_f64(buf, Some(f)),
    }
}

/// Appends `v` as `json_f64` writes it, without building a `Value` (a 60,000-group result
/// of 8 columns took longer to print through `Value`s than to compute).
fn put_f64(buf: &mut Vec<u8>, v: Option<f64>) {
    match v {
        Some(v) if v.is_finite() => {
            // Writing into a Vec cannot fail.
            serde_json::to_writer(&mut *buf, &v).expect("JSON into memory");
        }
        v => buf.extend_from_slice(json_f64(v).to_string().as_bytes()),
    }
}

/// Appends `{"name": {"count": .., ..}, ..}` for `stats --json`.
fn put_columns(buf: &mut Vec<u8>, cols: &[(String, ColumnStats)]) {
    buf.push(b'{');
    for (k, (name, s)) in cols.iter().enumerate() {
        if k > 0 {
            buf.push(b',');
        }
        // A string into memory cannot fail either.
        serde_json::to_writer(&mut *buf, name).expect("JSON into memory");
        buf.extend_from_slice(
            format!(":{{\"count\":{},\"nan_count\":{},\"inf_count\":{},\"sum\":", s.count, s.nan_count, s.inf_count).as_bytes(),
        );
        put_f64(buf, Some(s.sum));
        buf.extend_from_slice(b",\"mean\":");
        put_f64(buf, s.mean);
        buf.extend_from_slice(b",\"min\":");
        put_num(buf, s.min);
        buf.extend_from_slice(b",\"max\":");
        put_num(buf, s.max);
        buf.extend_from_slice(b",\"var\":");
        put_f64(buf, s.var);
        buf.extend_from_slice(b",\"std\":");
        put_f64(buf, s.std);
        buf.push(b'}');
    }
    buf.push(b'}');
}

fn fmt_num(n: Option<Number>) -> String {
    match n {
        None => "-".into(),
        Some(Number::Int(i)) => i.to_string(),
        Some(Number::Float(f)) => fmt_f(Some(f)),
    }
}

fn fmt_f(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_nan() => "nan".into(),
        Some(v) if v.is_infinite() => if v > 0.0 { "inf" } else { "-inf" }.into(),
        Some(v) if v != 0.0 && (v.abs() >= 1e7 || v.abs() < 1e-4) => format!("{v:.6e}"),
        Some(v) => format!("{v:.6}"),
    }
}

fn stats_table(cols: &[(String, ColumnStats)]) -> String {
    let mut s = format!(
        "{:<16} {:>12} {:>8} {:>6} {:>16} {:>14} {:>14} {:>14} {:>14} {:>14}\n",
        "column", "count", "nan", "inf", "sum", "mean", "min", "max", "var", "std"
    );
    for (name, c) in cols {
        s += &format!(
            "{:<16} {:>12} {:>8} {:>6} {:>16} {:>14} {:>14} {:>14} {:>14} {:>14}\n",
            name,
            c.count,
            c.nan_count,
            c.inf_count,
            fmt_f(Some(c.sum)),
            fmt_f(c.mean),
            fmt_num(c.min),
            fmt_num(c.max),
            fmt_f(c.var),
            fmt_f(c.std)
        );
    }
    s
}

fn stats(ctx: &Ctx, paths: &[PathBuf], columns: &[String], filter: Option<&str>, by: Option<&str>, json: bool) -> Result<()> {
    if let Some((i, c)) = columns.iter().enumerate().find(|(i, c)| columns[..*i].contains(c)) {
        bail!("--columns lists `{c}` twice (at {} and {})", columns.iter().position(|x| x == c).unwrap_or(0) + 1, i + 1);
    }
    let ds = ctx.open(paths)?;
    if let Some(k) = by
        && columns.iter().any(|c| c == k)
    {
        bail!("--columns lists the group-by key `{k}`");
    }
    let lf = frame(&ds, filter)?;
    let aggs = [all_stats(columns.iter().cloned())];
    let q = match by {
        Some(k) => lf.group_by(k).aggregate(aggs),
        None => lf.aggregate(aggs),
    };
    let (opts, pb) = ctx.with_progress("stats");
    let r = ctx.on_device(&ds, |d| q.collect_with(d, &opts))?;
    pb.finish_and_clear();
    print_stats(ctx, &r, by.is_some(), json)
}

fn print_stats(ctx: &Ctx, r: &AggregateResult, grouped: bool, json: bool) -> Result<()> {
    let mut p = Printer::new(ctx);
    if json {
        p.put(&format!("{{\"rows\":{},\"rows_selected\":{}", r.rows, r.rows_selected))?;
        if grouped {
            p.put(",\"groups\":[")?;
            let mut buf = Vec::new();
            for (i, g) in r.groups.iter().enumerate() {
                buf.clear();
                buf.extend_from_slice(if i == 0 { b"{\"key\":" } else { b",{\"key\":" });
                put_num(&mut buf, Some(Number::Int(g.key)));
                buf.extend_from_slice(format!(",\"rows\":{},\"columns\":", g.rows).as_bytes());
                put_columns(&mut buf, &g.columns);
                buf.push(b'}');
                p.put_bytes(&buf)?;
            }
            p.put("]")?;
        } else {
            let mut buf = b",\"columns\":".to_vec();
            put_columns(&mut buf, &r.columns);
            p.put_bytes(&buf)?;
        }
        p.put("}\n")?;
        return p.finish();
    }
    let counted = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    p.put(&format!(
        "rows: {}  selected: {}  ({} on {}, {})\n",
        r.rows,
        r.rows_selected,
        counted(r.report.passes as u64, "pass", "passes"),
        r.report.device,
        counted(r.report.tiles, "tile", "tiles")
    ))?;
    if grouped {
        for g in &r.groups {
            p.put(&format!("\nkey {} ({} rows)\n{}", g.key, g.rows, stats_table(&g.columns)))?;
        }
    } else {
        p.put(&stats_table(&r.columns))?;
    }
    p.finish()
}

fn histogram(
    ctx: &Ctx,
    paths: &[PathBuf],
    column: &str,
    bins: u32,
    range: Option<(f64, f64)>,
    filter: Option<&str>,
    json: bool,
) -> Result<()> {
    let ds = ctx.open(paths)?;
    let mut h = hist(column, bins);
    if let Some((lo, hi)) = range {
        h = h.range(lo, hi);
    }
    let (opts, pb) = ctx.with_progress("hist");
    let q = frame(&ds, filter)?.aggregate([h]);
    let r = ctx.on_device(&ds, |d| q.collect_with(d, &opts))?;
    pb.finish_and_clear();
    let h = r.histograms.first().ok_or_else(|| anyhow!("internal: no histogram"))?;
    // Edges of an integer column are JSON integers, like its min/max in `stats`.
    let int_column = ds.column(column).is_ok_and(|c| c.dtype.is_int());
    let bound = |v: f64| if int_column && v.fract() == 0.0 && v.abs() < 9.0e15 { json!(v as i64) } else { json_f64(Some(v)) };
    let mut p = Printer::new(ctx);
    if json {
        p.put(&format!(
            "{{\"column\":{},\"min\":{},\"max\":{},\"bins\":{},\"counts\":[",
            json!(h.column),
            bound(h.lo),
            bound(h.hi),
            h.counts.len()
        ))?;
        for (i, chunk) in h.counts.chunks(4096).enumerate() {
            let mut line = String::with_capacity(chunk.len() * 8);
            for (k, c) in chunk.iter().enumerate() {
                if i + k > 0 {
                    line.push(',');
                }
                line += &c.to_string();
            }
            p.put(&line)?;
        }
        p.put(&format!("],\"below\":{},\"above\":{},\"nan\":{},\"rows_selected\":{}}}\n", h.below, h.above, h.nan, h.rows_selected))?;
        return p.finish();
    }
    let peak = h.counts.iter().copied().max().unwrap_or(0).max(1);
    let width = if h.hi > h.lo { (h.hi - h.lo) / h.counts.len() as f64 } else { 0.0 };
    p.put(&format!(
        "{}: {} bins over [{}, {}], {} rows selected, below {}, above {}, nan {}\n",
        h.column,
        h.counts.len(),
        h.lo,
        h.hi,
        h.rows_selected,
        h.below,
        h.above,
        h.nan
    ))?;
    for (i, c) in h.counts.iter().enumerate() {
        let bar = "#".repeat((c * 50 / peak) as usize);
        let bar = if bar.is_empty() { bar } else { format!(" {bar}") };
        p.put(&format!("{:>14} {:>12}{bar}\n", fmt_f(Some(h.lo + width * i as f64)), c))?;
    }
    p.finish()
}

/// A `COLS` argument of flag `flag`: a comma list or `all`; an empty list is a usage error
/// (`--standardize ''` would silently do nothing).
fn cols_arg(flag: &str, v: &Option<String>) -> Result<Cols> {
    Ok(match v.as_deref() {
        None => Cols::None,
        Some("all") => Cols::All,
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            if names.is_empty() {
                bail!("{flag} needs column names (a comma list) or `all`");
            }
            Cols::List(names)
        }
    })
}

fn transform(ctx: &Ctx, a: &TransformArgs) -> Result<()> {
    let ds = ctx.open(&a.paths)?;
    let lf = frame(&ds, a.filter.as_deref())?;
    let sink = SinkOptions { force: a.force };
    let t0 = Instant::now();
    let (opts, pb) = ctx.with_progress("transform");
    let report = if let Some(fit_path) = &a.apply {
        let extra = a.select.is_some()
            || a.standardize.is_some()
            || a.minmax.is_some()
            || a.log1p.is_some()
            || !a.clip.is_empty()
            || !a.with.is_empty()
            || a.fill_nan.is_some()
            || a.cast.is_some()
            || a.save_fit.is_some();
        if extra {
            bail!("--apply replays a saved transform; it takes no other transform flags (only --where, -o, --force, --json)");
        }
        let fit = Fit::load(fit_path)?;
        ctx.on_device(&ds, |d| tilestream::apply_fit(&lf, &fit, &a.out, &sink, d, &opts))?
    } else {
        let mut t = Transform {
            select: a.select.clone(),
            log1p: cols_arg("--log1p", &a.log1p)?,
            standardize: cols_arg("--standardize", &a.standardize)?,
            minmax: cols_arg("--minmax", &a.minmax)?,
            fill_nan: a.fill_nan,
            ..Transform::default()
        };
        if let Some(c) = &a.cast {
            t.cast = Some(
                DType::from_name(c)
                    .filter(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16))
                    .ok_or_else(|| anyhow!("--cast must be f16, bf16 or f32, not `{c}`"))?,
            );
        }
        for c in &a.clip {
            let (name, range) = c.rsplit_once('=').ok_or_else(|| anyhow!("--clip expects C=LO:HI, got `{c}`"))?;
            let (lo, hi) = split_range(range).ok_or_else(|| anyhow!("--clip expects C=LO:HI, got `{c}`"))?;
            if t.clip.iter().any(|(n, _, _)| n == name) {
                bail!("--clip is given twice for `{name}`");
            }
            t.clip.push((name.to_string(), lo, hi));
        }
        for w in &a.with {
            let (name, expr) = w.split_once('=').ok_or_else(|| anyhow!("--with expects NAME=EXPR, got `{w}`"))?;
            let name = name.trim();
            if name.is_empty() {
                bail!("--with expects NAME=EXPR, got `{w}`");
            }
            if t.with.iter().any(|(n, _)| n == name) {
                bail!("--with defines `{name}` twice");
            }
            t.with.push((name.to_string(), parse_expr(expr).with_context(|| format!("--with {name}"))?));
        }
        let q = lf.clone().transform(t);
        if let Some(p) = &a.save_fit {
            // The fit file must not clobber an input or the output. It is created before the
            // passes (an unwritable path fails before any output), written after the fit pass
            // and renamed into place once the output is complete: a failed run leaves neither
            // file changed.
            if a.paths.iter().chain([&a.out]).any(|q| same_path(p, q)) {
                bail!("--save-fit {} is an input or the output; choose another path", p.display());
            }
            if p.exists() && !a.force {
                bail!("{}: fit file exists; pass --force to overwrite", p.display());
            }
            let pending = tilestream::sink::atomic::AtomicFile::create(p, a.force)?;
            let report = ctx.on_device(&ds, |d| {
                let fit = q.fit(d, &opts)?;
                fit.write_into(&pending)?;
                tilestream::apply_fit(&lf, &fit, &a.out, &sink, d, &opts)
            })?;
            if let Err(e) = pending.commit() {
                let _ = std::fs::remove_file(&a.out);
                return Err(e.into());
            }
            report
        } else {
            ctx.on_device(&ds, |d| q.sink(&a.out, &sink, d, &opts))?.1
        }
    };
    pb.finish_and_clear();
    if a.json {
        let mut cols = Map::new();
        for (name, dtype, nan, overflow) in &report.columns {
            cols.insert(name.clone(), json!({"dtype": dtype.name(), "nan_count": nan, "overflow_count": overflow}));
        }
        return out(
            &json!({"rows_written": report.rows_written, "columns": cols, "device": report.report.device, "tiles": report.report.tiles})
                .to_string(),
        );
    }
    if !ctx.quiet {
        err_line(&format!(
            "wrote {} rows x {} columns to {} in {:.2} s",
            report.rows_written,
            report.columns.len(),
            a.out.display(),
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// True when two paths name the same file (or the same path, for files not there yet).
fn same_path(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => {
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            abs(a) == abs(b)
        }
    }
}

fn generate_cmd(ctx: &Ctx, out_path: &Path, rows: u64, cols: usize, seed: u64, force: bool) -> Result<()> {
    let pb = ProgressBar::hidden();
    if !ctx.quiet && std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        pb.set_length(rows.max(1));
    }
    tilestream::synth::generate_with(out_path, rows, cols, seed, force, &|d, _| pb.set_position(d), ctx.opts.cancel.as_deref())?;
    pb.finish_and_clear();
    Ok(())
}

fn devices() -> Result<()> {
    let auto = Device::auto();
    let mut s = String::new();
    for (name, what) in Device::survey() {
        s += &format!("{name:<6} {what}\n");
    }
    s += &if matches!(auto, Device::Cpu) {
        "auto picks: cpu (no GPU that auto may pick)".to_string()
    } else {
        format!("auto picks: {} for inputs of {} MiB or more, the CPU for smaller ones", auto.name(), tilestream::GPU_MIN_BYTES >> 20)
    };
    out(&s)
}

/// One timed query for the demo and bench tables.
struct Row {
    name: String,
    secs: f64,
    bytes: u64,
    limit: f64,
    limit_name: &'static str,
}

fn table(rows: &[Row], device: &str) -> String {
    let mut s = format!("{:<34} {:>7} {:>8} {:>9} {:>12} {:>7}\n", "query", "device", "seconds", "GB/s", "limit GB/s", "ratio");
    for r in rows {
        let gbs = r.bytes as f64 / r.secs / 1e9;
        s += &format!(
            "{:<34} {:>7} {:>8.3} {:>9.2} {:>7.2} {:<4} {:>7.2}\n",
            r.name,
            device,
            r.secs,
            gbs,
            r.limit / 1e9,
            r.limit_name,
            gbs * 1e9 / r.limit
        );
    }
    s
}

fn temp_dir(tag: &str, base: Option<&Path>) -> Result<PathBuf> {
    let dir = base.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir).join(format!("tilestream-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Removes a folder when dropped (also on error).
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn note(ctx: &Ctx, msg: &str) {
    if !ctx.quiet {
        err_line(msg);
    }
}

fn demo(ctx: &Ctx, rows: Option<u64>) -> Result<()> {
    let cols = 8;
    let rows = rows.unwrap_or((1u64 << 30) / (cols as u64 * 4 + 1));
    let dir = temp_dir("demo", None)?;
    let _cleanup = Cleanup(dir.clone());
    let data = dir.join("demo.safetensors");
    note(ctx, &format!("generating {rows} rows x {cols} f32 columns + u8 key in {} ...", dir.display()));
    generate_cmd(ctx, &data, rows, cols, 7, true)?;
    let ds = Dataset::open(&data)?;
    let floats: Vec<usize> = (0..cols).map(|j| ds.column_index(&format!("f{j}"))).collect::<tilestream::Result<_>>()?;
    let _ = tilestream::limits::read_limit(&ds, &floats, 1);
    let limit = tilestream::limits::read_limit(&ds, &floats, 2);
    let dev = &ctx.bench_device();
    let opts = &ctx.opts;
    let mut rows_out = Vec::new();
    let bytes = |names: &[&str]| -> u64 { names.iter().filter_map(|n| ds.column_index(n).ok()).map(|c| ds.column_bytes(&[c])).sum() };
    let all: Vec<String> = (0..cols).map(|j| format!("f{j}")).collect();
    let all_ref: Vec<&str> = all.iter().map(String::as_str).collect();

    let (r, secs) = timed(|| Ok(ds.lazy().aggregate([all_stats(all.clone())]).collect_with(dev, opts)?))?;
    rows_out.push(Row { name: "stats, 8 float columns".into(), secs, bytes: bytes(&all_ref), limit, limit_name: "read" });
    let f3 = r.column("f3").and_then(|s| s.mean).unwrap_or(f64::NAN);

    let filt = parse_expr("f0 > 0 && key < 32")?;
    let (g, secs) =
        timed(|| Ok(ds.lazy().filter(filt.clone()).group_by("key").aggregate([all_stats(["f1", "f2"])]).collect_with(dev, opts)?))?;
    rows_out.push(Row {
        name: "where f0>0 && key<32, by key".into(),
        secs,
        bytes: bytes(&["f0", "f1", "f2", "key"]),
        limit,
        limit_name: "read",
    });

    let (h, secs) = timed(|| Ok(ds.lazy().aggregate([hist("f2", 256)]).collect_with(dev, opts)?))?;
    rows_out.push(Row { name: "histogram f2, 256 bins (2 passes)".into(), secs, bytes: 2 * bytes(&["f2"]), limit, limit_name: "read" });

    let out_path = dir.join("demo-f16.safetensors");
    let t = Transform {
        log1p: Cols::List(vec!["f2".into()]),
        standardize: Cols::All,
        fill_nan: Some(0.0),
        cast: Some(DType::F16),
        ..Transform::default()
    };
    let (w, secs) = timed(|| Ok(ds.lazy().transform(t).sink(&out_path, &SinkOptions { force: true }, dev, opts)?))?;
    let copy = tilestream::limits::copy_limit(&ds, &floats, &dir)?;
    rows_out.push(Row {
        name: "fit + standardize -> f16, write".into(),
        secs,
        bytes: bytes(&all_ref) + bytes(&["key"]),
        limit: copy,
        limit_name: "copy",
    });

    let mut s = format!(
        "tilestream demo: {} rows, {:.2} GB of f32 features, memory budget {} MiB\n\n",
        ds.rows(),
        bytes(&all_ref) as f64 / 1e9,
        opts.memory_budget >> 20
    );
    s += &table(&rows_out, dev.name().split_whitespace().next().unwrap_or("?"));
    s += &format!(
        "\nmean of f3 (N(10000,1)): {f3:.6}; groups: {}; histogram of f2: {} bins, {} NaN; wrote {} rows to f16\n",
        g.groups.len(),
        h.histograms.first().map_or(0, |h| h.counts.len()),
        h.histograms.first().map_or(0, |h| h.nan),
        w.1.rows_written
    );
    s += "ratio: GB/s of input over the machine's limit measured in this run: read = a SIMD sum of the same bytes on all threads;\n       copy = the same bytes copied into a new file, fsync included";
    out(&s)
}

fn bench(ctx: &Ctx, rows: Option<u64>, dir: Option<&Path>, given: Option<&Path>, json: bool) -> Result<()> {
    let cols = 8;
    let rows = rows.unwrap_or((2u64 << 30) / (cols as u64 * 4));
    let dir = temp_dir("bench", dir)?;
    let _cleanup = Cleanup(dir.clone());
    let data = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let data = dir.join("bench.safetensors");
            note(ctx, &format!("generating {rows} rows x {cols} f32 columns + u8 key in {} ...", dir.display()));
            generate_cmd(ctx, &data, rows, cols, 11, true)?;
            data
        }
    };
    let ds = Dataset::open(&data)?;
    let idx = |n: &str| ds.column_index(n);
    let floats: Vec<usize> = (0..cols).map(|j| idx(&format!("f{j}"))).collect::<tilestream::Result<_>>()?;
    let key = idx("key")?;
    let all: Vec<String> = (0..cols).map(|j| format!("f{j}")).collect();
    let dev = &ctx.bench_device();
    let opts = &ctx.opts;
    // The read limit runs on a mapping of its own, faulted once and kept (a query releases
    // the pages of its mapping behind it), its runs interleaved with the query's so that
    // both see the same moments of a shared, noisy machine: best of 7 each. Best of 3 for
    // the writing queries.
    let limit_ds = Dataset::open(&data)?;
    let _ = tilestream::limits::read_limit(&limit_ds, &[floats.clone(), vec![key]].concat(), 1);
    let read_and_limit = |c: &[usize], f: &dyn Fn() -> Result<()>| -> Result<(f64, f64)> {
        let (mut secs, mut limit) = (f64::INFINITY, 0f64);
        for _ in 0..7 {
            limit = limit.max(tilestream::limits::read_limit(&limit_ds, c, 1));
            secs = secs.min(timed(f)?.1);
        }
        Ok((secs, limit))
    };
    let best_write = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        let mut b = f64::INFINITY;
        for _ in 0..3 {
            b = b.min(timed(f)?.1);
        }
        Ok(b)
    };
    let mut rows_out = Vec::new();

    let c_all = floats.clone();
    let (secs, limit) =
        read_and_limit(&c_all, &|| Ok(ds.lazy().aggregate([all_stats(all.clone())]).collect_with(dev, opts).map(|_| ())?))?;
    rows_out.push(Row { name: "stats, all float columns".into(), secs, bytes: ds.column_bytes(&c_all), limit, limit_name: "read" });

    let filt = parse_expr("f0 > 0 && key < 32")?;
    let c = [floats.clone(), vec![key]].concat();
    let (secs, limit) = read_and_limit(&c, &|| {
        Ok(ds.lazy().filter(filt.clone()).aggregate([all_stats(all.clone())]).collect_with(dev, opts).map(|_| ())?)
    })?;
    rows_out.push(Row { name: "stats where f0>0 && key<32".into(), secs, bytes: ds.column_bytes(&c), limit, limit_name: "read" });

    // A query the device cannot run is skipped with its reason, not timed on another device.
    let mut skipped = Vec::new();
    match read_and_limit(&c, &|| Ok(ds.lazy().group_by("key").aggregate([all_stats(all.clone())]).collect_with(dev, opts).map(|_| ())?)) {
        Ok((secs, limit)) => rows_out.push(Row {
            name: "group-by key (64 keys), all stats".into(),
            secs,
            bytes: ds.column_bytes(&c),
            limit,
            limit_name: "read",
        }),
        Err(e) if matches!(e.downcast_ref::<tilestream::Error>(), Some(tilestream::Error::Unsupported(_))) => {
            skipped.push(format!("group-by key: {e}"))
        }
        Err(e) => return Err(e),
    }

    let c1 = [idx("f1")?];
    let (secs, limit) =
        read_and_limit(&c1, &|| Ok(ds.lazy().aggregate([hist("f1", 256).range(0.0, 1.0)]).collect_with(dev, opts).map(|_| ())?))?;
    rows_out.push(Row { name: "histogram f1, 256 bins".into(), secs, bytes: ds.column_bytes(&c1), limit, limit_name: "read" });

    let out_path = dir.join("out.safetensors");
    let copy = tilestream::limits::copy_limit(&ds, &c, &dir)?;
    let t = Transform { standardize: Cols::All, cast: Some(DType::F16), ..Transform::default() };
    let secs = best_write(&|| Ok(ds.lazy().transform(t.clone()).sink(&out_path, &SinkOptions { force: true }, dev, opts).map(|_| ())?))?;
    rows_out.push(Row {
        name: "fit + standardize -> f16, write".into(),
        secs,
        bytes: ds.column_bytes(&c),
        limit: copy,
        limit_name: "copy",
    });

    let secs = best_write(&|| {
        Ok(ds
            .lazy()
            .filter(parse_expr("f0 > 0")?)
            .transform(Transform::default())
            .sink(&out_path, &SinkOptions { force: true }, dev, opts)
            .map(|_| ())?)
    })?;
    rows_out.push(Row { name: "filter f0>0, write all columns".into(), secs, bytes: ds.column_bytes(&c), limit: copy, limit_name: "copy" });

    // On a GPU the limit is the host -> device upload of the same bytes, measured now (a
    // query that writes a file is also bound by the copy limit).
    if let Some(upload) = tilestream::limits::upload_limit(dev, &ds, &c, 3)? {
        for r in &mut rows_out {
            if r.limit_name == "copy" && r.limit < upload {
                continue;
            }
            r.limit = upload;
            r.limit_name = "upload";
        }
    }
    if json {
        let v: Vec<Value> = rows_out
            .iter()
            .map(|r| json!({"query": r.name, "seconds": r.secs, "gb_per_s": r.bytes as f64 / r.secs / 1e9, "limit_gb_per_s": r.limit / 1e9, "limit": r.limit_name, "ratio": r.bytes as f64 / r.secs / r.limit}))
            .collect();
        return out(
            &json!({"device": dev.name(), "rows": ds.rows(), "threads": rayon::current_num_threads(), "results": v, "skipped": skipped})
                .to_string(),
        );
    }
    let mut s = format!(
        "tilestream bench: {} rows, {:.2} GB of f32 features (+ u8 key), {} threads, device {}\n\n",
        ds.rows(),
        ds.column_bytes(&floats) as f64 / 1e9,
        rayon::current_num_threads(),
        dev.name()
    );
    s += &table(&rows_out, dev.name().split_whitespace().next().unwrap_or("?"));
    for k in &skipped {
        s += &format!("skipped: {k}\n");
    }
    s += "\nread limit: a SIMD sum of the same bytes over the mapping on all threads; copy limit: the same bytes copied to a new file, fsync included; upload limit (GPUs): the same bytes uploaded to the device.\nGB/s counts the bytes of every column the query reads (fit + transform reads them twice but counts them once).";
    out(&s)
}
