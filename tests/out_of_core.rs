//! The out-of-core and atomic-write contracts, checked on the `tilestream` CLI run as a
//! subprocess:
//!
//! * memory: on a generated file of about 560 MB (more than 8× a 64 MiB budget), the peak
//!   anonymous memory (`RssAnon`, sampled from `/proc/<pid>/status` every ~5 ms) of stats,
//!   a filtered group-by, a histogram and two transforms stays under budget + 64 MiB;
//! * atomic writes: SIGINT, SIGKILL, a read-only folder, a full disk and `RLIMIT_FSIZE`
//!   leave nothing at OUT and no temporary files (after SIGKILL: none after the next run);
//! * independent read-back: outputs parsed by the `safetensors` crate and, when python3
//!   has numpy and safetensors, by `numpy.load` and `safetensors.numpy.load_file`.
//!
//! The tests run one at a time (they time signals and measure memory) and share the large
//! input, which is removed when the test process exits. Peaks are printed with eprintln:
//! run with `-- --nocapture` to see them.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tilestream::DType;
use tilestream::sink::table::{OutputColumn, OutputFormat, TableWriter};

const BIN: &str = env!("CARGO_BIN_EXE_tilestream");

/// The large input: 17e6 rows × (8 f32 + 1 u8) = 561 MB, more than 8 × 64 MiB.
const BIG_ROWS: u64 = 17_000_000;
const BIG_COLS: usize = 8;
/// The small input of the failure and read-back tests: 6.6 MB.
const SMALL_ROWS: u64 = 200_000;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The memory budget of the out-of-core runs and the slack the contract allows above it.
const BUDGET: u64 = 64 * MIB;
const SLACK: u64 = 64 * MIB;

/// No single CLI run here should take longer; a hang fails the test instead of stalling it.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Folders, the shared input and test serialization
// ---------------------------------------------------------------------------------------

/// A temporary folder `ts-ooc-{tag}-{pid}-{n}`, removed (with everything in it) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ts-ooc-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes `ts-ooc-*-{pid}-*` folders of test processes that no longer exist (a test run
/// killed from outside cannot clean up its 560 MB input).
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ts-ooc-") else { continue };
        let parts: Vec<&str> = rest.split('-').collect();
        let [_, pid, _] = parts.as_slice() else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The tests run one at a time: they measure memory and time signals, and the machine
/// has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The folder of the large input, created on first use and dropped (removed) when the
/// test process exits, pass or fail.
static BIG: Mutex<Option<TempDir>> = Mutex::new(None);

extern "C" fn drop_big_input() {
    if let Ok(mut g) = BIG.try_lock() {
        g.take();
    }
}

/// The large input, generated once per test process.
fn big_input() -> PathBuf {
    let mut g = BIG.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        sweep_stale_dirs();
        let dir = TempDir::new("big");
        let path = dir.path("big.safetensors");
        let t = Instant::now();
        generate(&path, BIG_ROWS, BIG_COLS, 7);
        let len = fs::metadata(&path).unwrap().len();
        eprintln!("generated {} ({len} bytes) in {:.1} s", path.display(), t.elapsed().as_secs_f64());
        assert!(len >= 8 * BUDGET, "the large input must be at least 8x the budget: {len} bytes");
        // SAFETY: registering a plain `extern "C" fn` with no preconditions.
        let rc = unsafe { libc::atexit(drop_big_input) };
        assert_eq!(rc, 0, "atexit");
        *g = Some(dir);
    }
    g.as_ref().map(|d| d.path("big.safetensors")).unwrap()
}

/// `tilestream gen PATH --rows N --cols C --seed S`.
fn generate(path: &Path, rows: u64, cols: usize, seed: u64) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--quiet").arg("gen").arg(path).args(["--rows", &rows.to_string(), "--cols", &cols.to_string(), "--seed", &seed.to_string()]);
    Proc::spawn(cmd).finish("gen", false).ok("gen");
}

/// A small input (`SMALL_ROWS` rows, f0..f7 and `key`) in `dir`.
fn small_input(dir: &TempDir) -> PathBuf {
    let p = dir.path("small.safetensors");
    generate(&p, SMALL_ROWS, 8, 3);
    p
}

/// Names of temporary files of tilestream's atomic writer in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tilestream-") && n.ends_with(".tmp"))
        .collect();
    v.sort();
    v
}

/// Everything in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Running the CLI, with memory sampling
// ---------------------------------------------------------------------------------------

/// Peaks seen in `/proc/<pid>/status`, in kB, after the child had exec'd the binary.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    rss_anon: u64,
    rss_file: u64,
    vm_hwm: u64,
    samples: u32,
}

/// One sample of `/proc/<pid>/status`: (Name, RssAnon, RssFile, VmHWM).
fn proc_status(pid: u32) -> Option<(String, u64, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut name = None;
    let (mut anon, mut file, mut hwm) = (None, None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let kb = || v.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
        match k {
            "Name" => name = Some(v.trim().to_string()),
            "RssAnon" => anon = kb(),
            "RssFile" => file = kb(),
            "VmHWM" => hwm = kb(),
            _ => {}
        }
    }
    Some((name?, anon?, file?, hwm?))
}

/// A running CLI process whose stdout and stderr are collected by threads. Dropping it
/// kills the process if it still runs.
struct Proc {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    start: Instant,
}

/// What a finished run produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    peaks: Peaks,
    secs: f64,
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        Proc { child, stdout, stderr, start: Instant::now() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Waits for the process; with `sample`, reads `/proc/<pid>/status` every ~5 ms and
    /// keeps the peaks of the samples taken after exec (Name == "tilestream"), so the
    /// forked copy of the test process is not measured.
    fn finish(&mut self, what: &str, sample: bool) -> Run {
        let pid = self.pid();
        let mut peaks = Peaks::default();
        let status = loop {
            if sample
                && let Some((name, anon, file, hwm)) = proc_status(pid)
                && name == "tilestream"
            {
                peaks.rss_anon = peaks.rss_anon.max(anon);
                peaks.rss_file = peaks.rss_file.max(file);
                peaks.vm_hwm = peaks.vm_hwm.max(hwm);
                peaks.samples += 1;
            }
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => panic!("{what}: wait: {e}"),
            }
            if self.start.elapsed() > RUN_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{what}: still running after {RUN_TIMEOUT:?}; killed");
            }
            thread::sleep(Duration::from_millis(if sample { 5 } else { 2 }));
        };
        let secs = self.start.elapsed().as_secs_f64();
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Run { status, stdout, stderr, peaks, secs }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Run {
    fn ok(&self, what: &str) -> &Run {
        assert!(self.status.success(), "{what}: {:?}\nstderr: {}", self.status, self.stderr);
        self
    }
    fn json(&self, what: &str) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", self.stdout))
    }
    /// Asserts exit code 2 and one line on stderr that contains every one of `needles`.
    fn fails_with(&self, what: &str, needles: &[&str]) {
        assert_eq!(self.status.code(), Some(2), "{what}: expected exit 2, got {:?}\nstderr: {}", self.status, self.stderr);
        let msg = self.stderr.trim();
        assert_eq!(msg.lines().count(), 1, "{what}: expected one line on stderr, got:\n{msg}");
        for n in needles {
            assert!(msg.contains(n), "{what}: stderr should mention `{n}`: {msg}");
        }
    }
}

fn cli<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.args(args);
    c
}

/// Runs `tilestream --memory-budget 64MiB ARGS` while sampling its memory, prints the
/// peaks and asserts RssAnon < budget + 64 MiB.
fn run_within_budget(label: &str, args: &[&OsStr]) -> Run {
    let run = run_sampled_within_budget(label, args);
    run.ok(label);
    run
}

/// `run_within_budget`, for a run that may fail.
fn run_sampled_within_budget(label: &str, args: &[&OsStr]) -> Run {
    let mut cmd = cli(["--memory-budget", "64MiB"]);
    cmd.args(args);
    let run = Proc::spawn(cmd).finish(label, true);
    let p = run.peaks;
    eprintln!(
        "peak memory {label:<52} RssAnon {:>7} kB  RssFile {:>7} kB  VmHWM {:>7} kB  ({} samples, {:.2} s)",
        p.rss_anon, p.rss_file, p.vm_hwm, p.samples, run.secs
    );
    assert!(p.samples > 0, "{label}: no sample of /proc/<pid>/status was taken");
    let limit_kb = (BUDGET + SLACK) / KIB;
    assert!(p.rss_anon < limit_kb, "{label}: peak RssAnon {} kB is not under budget + 64 MiB = {limit_kb} kB", p.rss_anon);
    // Mapped pages behind the read position are released: resident file pages stay far
    // below the 535 MiB input (a loose bound; the contract itself is on RssAnon).
    let file_kb = 4 * BUDGET / KIB;
    assert!(
        p.rss_file < file_kb,
        "{label}: peak RssFile {} kB >= {file_kb} kB: are mapped pages released behind the read position?",
        p.rss_file
    );
    run
}

// ---------------------------------------------------------------------------------------
// Reading outputs back
// ---------------------------------------------------------------------------------------

fn dtype_of(name: &str) -> Dtype {
    match name {
        "f32" => Dtype::F32,
        "f16" => Dtype::F16,
        "bf16" => Dtype::BF16,
        "f64" => Dtype::F64,
        "i8" => Dtype::I8,
        "i16" => Dtype::I16,
        "i32" => Dtype::I32,
        "i64" => Dtype::I64,
        "u8" => Dtype::U8,
        "u16" => Dtype::U16,
        "u32" => Dtype::U32,
        "u64" => Dtype::U64,
        "bool" => Dtype::BOOL,
        other => panic!("unknown dtype name `{other}` in the --json report"),
    }
}

/// Element values as u64 little-endian words of `size` bytes.
fn words(data: &[u8], size: usize) -> impl Iterator<Item = u64> + '_ {
    data.chunks_exact(size).map(move |c| {
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(c);
        u64::from_le_bytes(w)
    })
}

/// Element values as f64 for the float dtypes.
fn floats(data: &[u8], dtype: Dtype) -> Vec<f64> {
    match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f64()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64()).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        other => panic!("not a float dtype: {other:?}"),
    }
}

/// Bytes per element.
fn width(d: Dtype) -> usize {
    d.bitsize() / 8
}

/// Element values as f64 for float, integer and bool dtypes.
fn numeric(data: &[u8], dtype: Dtype) -> Vec<f64> {
    let w = width(dtype);
    match dtype {
        Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64 => {
            let shift = 64 - 8 * w as u32;
            words(data, w).map(|u| (((u << shift) as i64) >> shift) as f64).collect()
        }
        Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::U64 | Dtype::BOOL => words(data, w).map(|u| u as f64).collect(),
        d => floats(data, d),
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// A column checksum both Rust and numpy can compute exactly: the sum of the elements'
/// bit patterns as unsigned integers, and the NaN count for floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checksum {
    bits: u128,
    nan: u64,
}

fn checksum(data: &[u8], dtype: Dtype) -> Checksum {
    let size = width(dtype);
    let bits = words(data, size).map(u128::from).sum();
    let nan = if is_float(dtype) { floats(data, dtype).iter().filter(|x| x.is_nan()).count() as u64 } else { 0 };
    Checksum { bits, nan }
}

/// Reads a whole safetensors file with the `safetensors` crate and returns, in file
/// (offset) order, each tensor's name, dtype, shape and bytes.
fn read_safetensors(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: the safetensors crate rejects it: {e:?}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert!(meta.metadata().is_none(), "{}: unexpected __metadata__", path.display());
    meta.offset_keys()
        .into_iter()
        .map(|name| {
            let t = st.tensor(&name).unwrap();
            (name, t.dtype(), t.shape().to_vec(), t.data().to_vec())
        })
        .collect()
}

/// An npy header: (data start, descr, shape, fortran_order).
fn npy_header(path: &Path) -> (u64, String, Vec<u64>, bool) {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut head = vec![0u8; 64 * KIB as usize];
    let n = f.read(&mut head).unwrap();
    head.truncate(n);
    assert!(head.starts_with(b"\x93NUMPY"), "{}: no npy magic", path.display());
    let (dict_at, len) = match head[6] {
        1 => (10, u16::from_le_bytes([head[8], head[9]]) as usize),
        2 | 3 => (12, u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize),
        v => panic!("{}: npy version {v}", path.display()),
    };
    let start = dict_at + len;
    assert_eq!(start % 64, 0, "{}: npy data start {start} is not 64-aligned", path.display());
    let dict = std::str::from_utf8(&head[dict_at..start]).unwrap();
    assert!(dict.ends_with('\n'), "{}: npy header does not end in a newline: {dict:?}", path.display());
    let field = |key: &str| -> &str {
        let at = dict.find(&format!("'{key}': ")).unwrap_or_else(|| panic!("{}: no `{key}` in {dict:?}", path.display()));
        &dict[at + key.len() + 4..]
    };
    let descr = field("descr").trim_start_matches('\'').split('\'').next().unwrap().to_string();
    let fortran = field("fortran_order").starts_with("True");
    let shape_text = field("shape");
    let shape_text = &shape_text[1..shape_text.find(')').unwrap()];
    let shape = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    (start as u64, descr, shape, fortran)
}

/// Bytes of each column of a row-major `[rows, cols]` npy matrix of `size`-byte elements.
fn npy_columns(path: &Path, size: usize) -> (Vec<u64>, Vec<Vec<u8>>) {
    let (start, _, shape, _) = npy_header(path);
    let bytes = fs::read(path).unwrap();
    let data = &bytes[start as usize..];
    let cols = shape[1] as usize;
    let mut out = vec![Vec::with_capacity(shape[0] as usize * size); cols];
    for row in data.chunks_exact(cols * size) {
        for (j, c) in out.iter_mut().enumerate() {
            c.extend_from_slice(&row[j * size..(j + 1) * size]);
        }
    }
    (shape, out)
}

// ---------------------------------------------------------------------------------------
// 1. Memory
// ---------------------------------------------------------------------------------------

/// A group-by of 65,536 keys and a histogram of 1.5M bins, whose results and per-thread
/// state are large whatever the file's size, stay within the budget too: their output is
/// printed piece by piece, and each thread holds one set of buffers (with one per rayon
/// split, and the output built whole as a JSON tree, both took several times the budget);
/// a group-by whose groups would outgrow the budget is refused.
#[test]
fn many_groups_and_bins_stay_within_the_memory_budget() {
    let _serial = serial();
    let dir = TempDir::new("groups");
    let path = dir.path("ids.safetensors");
    // 3M rows: four f32 columns and an i32 `id` taking each of 65,536 values about 46 times.
    let rows = 3_000_000usize;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut cols: Vec<(String, DType, Vec<u8>)> = (0..4)
        .map(|c| (format!("f{c}"), DType::F32, (0..rows).flat_map(|_| ((next() >> 40) as f32 / 1e4 - 800.0).to_le_bytes()).collect()))
        .collect();
    cols.push((
        "id".into(),
        DType::I32,
        (0..rows).flat_map(|i| (((i as u64 * 2_654_435_761) % 65_536) as i32 - 1000).to_le_bytes()).collect(),
    ));
    let spec = cols.iter().map(|(n, d, _)| OutputColumn { name: n.clone(), dtype: *d }).collect();
    let mut w = TableWriter::create(&path, OutputFormat::Safetensors, spec, rows as u64, true).expect("create");
    w.write_tile(rows, &cols.iter().map(|c| c.2.as_slice()).collect::<Vec<_>>()).expect("write");
    w.finish().expect("finish");
    drop(cols);
    let file = path.as_os_str();

    // One column: each unit's 65,536 groups hold ~30 MB, within half of the budget.
    let r = run_within_budget(
        "stats --by id --columns f3 (65,536 groups)",
        &[OsStr::new("stats"), file, OsStr::new("--by"), OsStr::new("id"), OsStr::new("--columns"), OsStr::new("f3"), OsStr::new("--json")],
    );
    let v = r.json("stats --by id");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 65_536);
    assert_eq!(groups.iter().map(|g| g["rows"].as_u64().unwrap()).sum::<u64>(), rows as u64);
    assert_eq!((groups[0]["key"].as_i64(), groups[65_535]["key"].as_i64()), (Some(-1000), Some(64_535)));
    for g in groups {
        assert_eq!(g["columns"]["f3"]["count"], g["rows"], "no NaN");
    }
    // Four columns need ~54 MB per unit: refused (it held ~100 MiB before), still within
    // the budget while it finds out.
    run_sampled_within_budget("stats --by id (4 columns)", &[OsStr::new("stats"), file, OsStr::new("--by"), OsStr::new("id")])
        .fails_with("stats --by id (4 columns)", &["65536 groups", "raise --memory-budget"]);

    // Two threads: 1.5M bins need 40 bytes each (two threads' u32 counters and u64 totals,
    // the tile's and the pass's counts), 60 MB, within the budget; more threads would not be.
    let r = run_within_budget(
        "hist --bins 1500000",
        &[
            OsStr::new("--threads"),
            OsStr::new("2"),
            OsStr::new("hist"),
            file,
            OsStr::new("--column"),
            OsStr::new("f0"),
            OsStr::new("--bins"),
            OsStr::new("1500000"),
            OsStr::new("--json"),
        ],
    );
    let v = r.json("hist");
    let counted: u64 = v["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!((v["bins"].as_u64(), counted), (Some(1_500_000), rows as u64));
}

/// The columns of a wide row-major matrix (a table of embeddings) are gathered a block of a
/// few MiB at a time on each thread, and advised to the kernel once per tile, not once per
/// column: a group-by over [66,000, 768] f32 gathered 65,536 rows, 201 MB, at once whatever
/// the budget, and statistics of a [400,000, 768] one kept the whole file mapped.
#[test]
fn a_wide_matrix_is_gathered_within_the_memory_budget() {
    let _serial = serial();
    let dir = TempDir::new("widematrix");
    let path = dir.path("emb.safetensors");
    let (rows, k) = (66_000usize, 768usize);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let emb: Vec<u8> = (0..rows * k)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / 1e6 - 8.0).to_le_bytes()
        })
        .collect();
    let key: Vec<u8> = (0..rows).map(|i| (i % 37) as u8).collect();
    let tensors = vec![
        ("emb", safetensors::tensor::TensorView::new(Dtype::F32, vec![rows, k], &emb).unwrap()),
        ("key", safetensors::tensor::TensorView::new(Dtype::U8, vec![rows], &key).unwrap()),
    ];
    safetensors::serialize_to_file(tensors, None, &path).unwrap();
    drop(emb);
    let file = path.as_os_str();
    let r = run_within_budget("stats of a [66000, 768] matrix", &[OsStr::new("stats"), file, OsStr::new("--json")]);
    let v = r.json("stats");
    assert_eq!(v["columns"].as_object().map(|c| c.len()), Some(k + 1));
    assert_eq!(v["columns"]["emb:767"]["count"].as_u64(), Some(rows as u64));
    let r = run_within_budget(
        "stats --by key of a [66000, 768] matrix",
        &[OsStr::new("stats"), file, OsStr::new("--by"), OsStr::new("key"), OsStr::new("--json")],
    );
    let v = r.json("stats --by key");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 37);
    assert_eq!(groups.iter().map(|g| g["columns"]["emb:517"]["count"].as_u64().unwrap()).sum::<u64>(), rows as u64);
}

/// Every command on a 561 MB file under `--memory-budget 64MiB` keeps RssAnon under
/// budget + 64 MiB, and writes outputs of the right size.
#[test]
fn out_of_core_runs_stay_within_the_memory_budget() {
    let _serial = serial();
    let big = big_input();
    let big = big.as_os_str();
    let dir = TempDir::new("mem");
    let rows = BIG_ROWS;

    // stats over every column.
    let r = run_within_budget("stats (all columns)", &[OsStr::new("stats"), big, OsStr::new("--json")]);
    let v = r.json("stats");
    assert_eq!(v["rows"], rows);
    assert_eq!(v["rows_selected"], rows);
    let cols = v["columns"].as_object().unwrap();
    let names: Vec<&str> = cols.keys().map(String::as_str).collect();
    assert_eq!(names, ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "key"]);
    for (name, c) in cols {
        assert_eq!(c["count"].as_u64().unwrap() + c["nan_count"].as_u64().unwrap(), rows, "stats {name}: count + nan_count");
    }

    // Filtered group-by.
    let r = run_within_budget(
        "stats --by key --where 'f0 > 0'",
        &[
            OsStr::new("stats"),
            big,
            OsStr::new("--by"),
            OsStr::new("key"),
            OsStr::new("--where"),
            OsStr::new("f0 > 0"),
            OsStr::new("--json"),
        ],
    );
    let v = r.json("stats --by");
    assert_eq!(v["rows"], rows);
    let selected = v["rows_selected"].as_u64().unwrap();
    assert!(selected > rows / 3 && selected < rows * 2 / 3, "about half of N(0,1) is > 0: {selected}");
    let groups = v["groups"].as_array().unwrap();
    assert!(!groups.is_empty() && groups.len() <= 64, "{} groups", groups.len());
    let keys: Vec<u64> = groups.iter().map(|g| g["key"].as_u64().unwrap()).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "groups sorted by key: {keys:?}");
    assert_eq!(groups.iter().map(|g| g["rows"].as_u64().unwrap()).sum::<u64>(), selected, "group rows add up to rows_selected");
    for g in groups {
        assert!(g["columns"].get("key").is_none(), "the key is not among the columns");
        assert_eq!(g["columns"]["f0"]["count"], g["rows"], "f0 > 0 has no NaN");
    }

    // Histogram (two passes: range, then counts).
    let r =
        run_within_budget("hist --column f1", &[OsStr::new("hist"), big, OsStr::new("--column"), OsStr::new("f1"), OsStr::new("--json")]);
    let v = r.json("hist");
    assert_eq!(v["bins"], 256);
    assert_eq!(v["rows_selected"], rows);
    let counted: u64 = v["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    let total = counted + v["below"].as_u64().unwrap() + v["above"].as_u64().unwrap() + v["nan"].as_u64().unwrap();
    assert_eq!(total, rows, "every row lands in a bin, below, above or nan");

    // Fit + standardize all -> f16, written as safetensors.
    let out = dir.path("out.safetensors");
    let r = run_within_budget(
        "transform --standardize all --cast f16 -o .safetensors",
        &[
            OsStr::new("transform"),
            big,
            OsStr::new("--standardize"),
            OsStr::new("all"),
            OsStr::new("--cast"),
            OsStr::new("f16"),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("--json"),
        ],
    );
    let v = r.json("transform f16");
    assert_eq!(v["rows_written"], rows, "an unfiltered transform writes every row");
    let tensors = read_safetensors(&out);
    let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "key"]);
    for (name, dtype, shape, data) in &tensors {
        let want = if name == "key" { Dtype::U8 } else { Dtype::F16 };
        assert_eq!(*dtype, want, "{name}");
        assert_eq!(shape, &[rows as usize], "{name}");
        assert_eq!(data.len() as u64, rows * width(want) as u64, "{name}");
    }
    let data_bytes = rows * (BIG_COLS as u64 * 2 + 1);
    let len = fs::metadata(&out).unwrap().len();
    assert!(len > data_bytes && len - data_bytes < 4096, "file size {len} vs data {data_bytes}: header too large?");
    drop(tensors);
    fs::remove_file(&out).unwrap();

    // Filtered, selected transform to npy.
    let npy = dir.path("out.npy");
    let r = run_within_budget(
        "transform --where 'f0 > 0' --select f0,f1,f2 -o .npy",
        &[
            OsStr::new("transform"),
            big,
            OsStr::new("--where"),
            OsStr::new("f0 > 0"),
            OsStr::new("-o"),
            npy.as_os_str(),
            OsStr::new("--select"),
            OsStr::new("f0,f1,f2"),
            OsStr::new("--json"),
        ],
    );
    let v = r.json("transform npy");
    assert_eq!(v["rows_written"], selected, "the filtered transform writes the rows stats selected");
    let (start, descr, shape, fortran) = npy_header(&npy);
    assert_eq!(descr, "<f4");
    assert!(!fortran);
    assert_eq!(shape, [selected, 3]);
    assert_eq!(fs::metadata(&npy).unwrap().len(), start + selected * 12, "npy size = header + rows x 3 x 4");
    assert!(temp_files(&dir.0).is_empty(), "temporary files left: {:?}", temp_files(&dir.0));
}

// ---------------------------------------------------------------------------------------
// 2. Atomic writes
// ---------------------------------------------------------------------------------------

/// Waits until the atomic writer's temporary file in `dir` exists and holds data, i.e.
/// the write pass is under way. Panics if the process ends first.
fn wait_for_temp_data(p: &mut Proc, dir: &Path, what: &str) -> PathBuf {
    loop {
        for name in temp_files(dir) {
            let path = dir.join(&name);
            if fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false) {
                return path;
            }
        }
        if p.exited() {
            let r = p.finish(what, false);
            panic!("{what}: the run ended ({:?}) before its temporary file got data; stderr: {}", r.status, r.stderr);
        }
        assert!(p.start.elapsed() < RUN_TIMEOUT, "{what}: no temporary file appeared");
        thread::sleep(Duration::from_millis(1));
    }
}

/// SIGINT in the middle of the write pass: exit 130, nothing at OUT, no temporary file.
#[test]
fn sigint_during_transform_leaves_nothing() {
    let _serial = serial();
    let big = big_input();
    let dir = TempDir::new("sigint");
    let out = dir.path("out.safetensors");
    let mut cmd = cli(["--memory-budget", "4MiB", "--threads", "1", "transform"]);
    cmd.arg(&big).args(["--standardize", "all", "-o"]).arg(&out);
    let mut p = Proc::spawn(cmd);
    let temp = wait_for_temp_data(&mut p, &dir.0, "transform (SIGINT)");
    // At least ~300 ms in, and inside the write pass (the temp file has data).
    if let Some(rest) = Duration::from_millis(300).checked_sub(p.start.elapsed()) {
        thread::sleep(rest);
    }
    let at = p.start.elapsed();
    let temp_len = fs::metadata(&temp).map(|m| m.len()).unwrap_or(0);
    p.signal(libc::SIGINT);
    let r = p.finish("transform (SIGINT)", false);
    eprintln!("SIGINT after {:.3} s (temp file {temp_len} bytes); exited after {:.3} s with {:?}", at.as_secs_f64(), r.secs, r.status);
    assert_eq!(r.status.code(), Some(130), "SIGINT must exit 130 (a 0 means it landed after the last tile); stderr: {}", r.stderr);
    assert!(r.stderr.contains("interrupted"), "stderr: {}", r.stderr);
    assert!(!out.exists(), "an interrupted run left a file at OUT");
    assert_eq!(listing(&dir.0), Vec::<String>::new(), "an interrupted run left files behind");
}

/// SIGKILL in the middle: nothing at OUT; the temporary file stays (nothing can remove
/// it), and the next run writing the same OUT removes it and writes a valid file.
#[test]
fn sigkill_leaves_a_stale_temp_that_the_next_run_removes() {
    let _serial = serial();
    let big = big_input();
    let dir = TempDir::new("sigkill");
    let out = dir.path("out.safetensors");
    let mut cmd = cli(["--memory-budget", "4MiB", "--threads", "1", "transform"]);
    cmd.arg(&big).arg("-o").arg(&out);
    let mut p = Proc::spawn(cmd);
    wait_for_temp_data(&mut p, &dir.0, "transform (SIGKILL)");
    p.signal(libc::SIGKILL);
    let r = p.finish("transform (SIGKILL)", false);
    assert_eq!(r.status.signal(), Some(libc::SIGKILL), "{:?}", r.status);
    assert!(!out.exists(), "a killed run left a file at OUT");
    let stale = temp_files(&dir.0);
    eprintln!("after SIGKILL: {stale:?}");
    assert_eq!(stale.len(), 1, "the killed run's temporary file should still be there: {:?}", listing(&dir.0));

    let mut cmd = cli(["--memory-budget", "64MiB", "transform"]);
    cmd.arg(&big).args(["--select", "f0,key", "--json", "-o"]).arg(&out);
    let r = Proc::spawn(cmd).finish("transform after SIGKILL", false);
    let v = r.ok("transform after SIGKILL").json("transform after SIGKILL");
    assert_eq!(v["rows_written"], BIG_ROWS);
    assert_eq!(listing(&dir.0), ["out.safetensors"], "the stale temporary file should be gone");
    let tensors = read_safetensors(&out);
    let got: Vec<(&str, Dtype, &[usize])> = tensors.iter().map(|t| (t.0.as_str(), t.1, t.2.as_slice())).collect();
    let rows = [BIG_ROWS as usize];
    assert_eq!(got, [("f0", Dtype::F32, &rows[..]), ("key", Dtype::U8, &rows[..])]);
}

/// Undoes a way of making a folder unwritable.
enum Unwritable {
    Mount(PathBuf),
    Immutable(PathBuf),
    Mode(PathBuf),
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        match self {
            Unwritable::Mount(d) => {
                let ok = Command::new("umount").arg(&*d).status().is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(&*d).status();
                }
            }
            Unwritable::Immutable(d) => {
                let _ = Command::new("chattr").arg("-i").arg(&*d).status();
            }
            Unwritable::Mode(d) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(&*d, fs::Permissions::from_mode(0o755));
            }
        }
    }
}

/// `mount -t tmpfs -o OPTS tmpfs DIR`, or why not.
fn mount_tmpfs(dir: &Path, opts: &str) -> Result<Unwritable, String> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() {
        Ok(Unwritable::Mount(dir.to_path_buf()))
    } else {
        let msg = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        Err(format!("mount exited with {}: {msg}", out.status.code().map_or("a signal".to_string(), |c| c.to_string())))
    }
}

/// True if a file can be created in `dir` (and removes it again).
fn writable(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let ok = fs::write(&probe, b"x").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// Makes `dir` unwritable for this process: a read-only tmpfs over it (root), else
/// `chattr +i` (root), else mode 0555 (not root). Returns the guard and the error text
/// a write there gives.
fn make_unwritable(dir: &Path) -> Result<(Unwritable, &'static str), String> {
    let mount_err = match mount_tmpfs(dir, "ro,size=1m") {
        Ok(g) if !writable(dir) => return Ok((g, "Read-only file system")),
        Ok(_) => "a read-only tmpfs was writable".to_string(),
        Err(e) => e,
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if Command::new("chattr").arg("+i").arg(dir).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            let g = Unwritable::Immutable(dir.to_path_buf());
            if !writable(dir) {
                return Ok((g, "Operation not permitted"));
            }
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(|e| e.to_string())?;
        let g = Unwritable::Mode(dir.to_path_buf());
        if !writable(dir) {
            return Ok((g, "Permission denied"));
        }
    }
    Err(mount_err)
}

/// A read-only target folder: exit 2, one line naming the output and the problem,
/// nothing written.
#[test]
fn read_only_target_folder_fails_cleanly() {
    let _serial = serial();
    let dir = TempDir::new("ro");
    let input = small_input(&dir);
    let ro = dir.path("ro");
    fs::create_dir(&ro).unwrap();
    let (_guard, problem) = match make_unwritable(&ro) {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("skipped: cannot mount tmpfs ({reason})");
            return;
        }
    };
    for name in ["out.safetensors", "out.npy"] {
        let out = ro.join(name);
        let mut cmd = cli(["transform"]);
        cmd.arg(&input).args(["--select", "f0,f1", "-o"]).arg(&out);
        let r = Proc::spawn(cmd).finish("transform into a read-only folder", false);
        eprintln!("read-only folder ({problem}): {}", r.stderr.trim());
        r.fails_with("transform into a read-only folder", &[name, problem]);
        assert!(!out.exists());
        assert!(listing(&ro).is_empty(), "{:?}", listing(&ro));
    }
}

/// A full file system (a 2 MiB tmpfs) under a 6.6 MB output: exit 2, "No space left",
/// nothing at OUT, no temporary file.
#[test]
fn full_disk_fails_cleanly() {
    let _serial = serial();
    let dir = TempDir::new("enospc");
    let input = small_input(&dir);
    let full = dir.path("full");
    fs::create_dir(&full).unwrap();
    let _mount = match mount_tmpfs(&full, "size=2m") {
        Ok(m) => m,
        Err(reason) => {
            eprintln!("skipped: cannot mount tmpfs ({reason})");
            return;
        }
    };
    for (name, extra) in [("out.safetensors", &[][..]), ("out.npy", &["--select", "f0,f1,f2,f3,f4,f5,f6,f7"][..])] {
        let out = full.join(name);
        let mut cmd = cli(["transform"]);
        cmd.arg(&input).args(extra).arg("-o").arg(&out);
        let r = Proc::spawn(cmd).finish("transform onto a full disk", false);
        eprintln!("full disk: {}", r.stderr.trim());
        r.fails_with("transform onto a full disk", &[name, "No space left"]);
        assert!(!out.exists());
        assert!(listing(&full).is_empty(), "files left on the full disk: {:?}", listing(&full));
    }
    // With --force over an existing file, a failed run leaves the old file as it was.
    let old = full.join("old.safetensors");
    fs::write(&old, b"old contents").unwrap();
    let mut cmd = cli(["transform"]);
    cmd.arg(&input).args(["--force", "-o"]).arg(&old);
    let r = Proc::spawn(cmd).finish("transform --force onto a full disk", false);
    r.fails_with("transform --force onto a full disk", &["old.safetensors", "No space left"]);
    assert_eq!(fs::read(&old).unwrap(), b"old contents", "a failed --force run changed the existing OUT");
    assert_eq!(listing(&full), ["old.safetensors"], "files left on the full disk");
}

/// `RLIMIT_FSIZE` of 1 MiB with SIGXFSZ ignored (writes fail with EFBIG): exit 2 with a
/// clear message, nothing at OUT, no temporary file.
#[test]
fn file_size_limit_fails_cleanly() {
    let _serial = serial();
    let dir = TempDir::new("fsize");
    let input = small_input(&dir);
    let outdir = dir.path("out");
    fs::create_dir(&outdir).unwrap();
    for (name, extra) in [("out.safetensors", &[][..]), ("out.npy", &["--select", "f0,f1,f2,f3,f4,f5,f6,f7"][..])] {
        let out = outdir.join(name);
        let mut cmd = cli(["transform"]);
        cmd.arg(&input).args(extra).arg("-o").arg(&out);
        // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: MIB as libc::rlim_t, rlim_max: MIB as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
        let r = Proc::spawn(cmd).finish("transform over RLIMIT_FSIZE", false);
        eprintln!("RLIMIT_FSIZE: {}", r.stderr.trim());
        r.fails_with("transform over RLIMIT_FSIZE", &[name, "File too large"]);
        assert!(!out.exists());
        assert!(listing(&outdir).is_empty(), "files left: {:?}", listing(&outdir));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Independent read-back
// ---------------------------------------------------------------------------------------

/// Checks `(shape, checksum per column)` with numpy and safetensors.numpy, if python3 has
/// them. Returns false (skipped) when they are missing, unless REQUIRE_NUMPY=1.
fn python_check(npy: &Path, npy_expect: (&[u64], &[Checksum]), st: &Path, st_expect: &[(String, Dtype, u64, Checksum)]) -> bool {
    let probe =
        Command::new("python3").args(["-c", "import numpy, safetensors.numpy"]).stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let missing = match &probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("").to_string()),
        Err(e) => Some(format!("python3: {e}")),
    };
    if let Some(why) = missing {
        assert!(std::env::var("REQUIRE_NUMPY").as_deref() != Ok("1"), "REQUIRE_NUMPY=1 but numpy/safetensors cannot be imported: {why}");
        eprintln!("skipped: numpy/safetensors not installed ({why})");
        return false;
    }
    const SCRIPT: &str = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file

def col(a):
    a = np.ascontiguousarray(a)
    bits = int(a.view('<u%d' % a.dtype.itemsize).astype(np.uint64).sum(dtype=np.uint64)) if a.size else 0
    nan = int(np.isnan(a).sum()) if a.dtype.kind == 'f' else 0
    return {"kind": a.dtype.kind, "itemsize": a.dtype.itemsize, "bits": bits, "nan": nan}

m = np.load(sys.argv[1], mmap_mode='r')
npy = {"shape": list(m.shape), "descr": m.dtype.str, "columns": [col(m[:, j]) for j in range(m.shape[1])]}
st = {name: dict(col(a), shape=list(a.shape)) for name, a in load_file(sys.argv[2]).items()}
print(json.dumps({"npy": npy, "st": st}))
"#;
    let out = Command::new("python3").arg("-c").arg(SCRIPT).arg(npy).arg(st).output().expect("python3");
    assert!(out.status.success(), "python read-back failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    eprintln!("numpy/safetensors read-back: {}", String::from_utf8_lossy(&out.stdout).trim());

    let (shape, sums) = npy_expect;
    assert_eq!(v["npy"]["shape"], serde_json::json!(shape), "numpy: npy shape");
    assert_eq!(v["npy"]["descr"], "<f4", "numpy: npy dtype");
    for (j, want) in sums.iter().enumerate() {
        let got = &v["npy"]["columns"][j];
        assert_eq!(got["bits"].as_u64().map(u128::from), Some(want.bits), "numpy: npy column {j} checksum");
        assert_eq!(got["nan"].as_u64(), Some(want.nan), "numpy: npy column {j} NaN count");
    }
    let st_names: Vec<&String> = v["st"].as_object().unwrap().keys().collect();
    assert_eq!(st_names.len(), st_expect.len(), "safetensors.numpy: tensors {st_names:?}");
    for (name, dtype, rows, want) in st_expect {
        let got = &v["st"][name];
        let kind = match dtype {
            Dtype::BOOL => "b",
            Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::U64 => "u",
            Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64 => "i",
            _ => "f",
        };
        assert_eq!(got["shape"], serde_json::json!([rows]), "safetensors.numpy: {name} shape");
        assert_eq!(got["kind"], kind, "safetensors.numpy: {name} kind");
        assert_eq!(got["itemsize"].as_u64(), Some(width(*dtype) as u64), "safetensors.numpy: {name} itemsize");
        assert_eq!(got["bits"].as_u64().map(u128::from), Some(want.bits), "safetensors.numpy: {name} checksum");
        assert_eq!(got["nan"].as_u64(), Some(want.nan), "safetensors.numpy: {name} NaN count");
    }
    true
}

/// A safetensors and an npy output read back by the `safetensors` crate (and by numpy and
/// safetensors.numpy when available): names, order, dtypes and shapes as the `--json`
/// report says; values as computed here from the input.
#[test]
fn outputs_read_back_with_independent_readers() {
    let _serial = serial();
    let dir = TempDir::new("readback");
    let input = small_input(&dir);
    let rows = SMALL_ROWS as usize;
    let src = read_safetensors(&input);
    let src_col = |name: &str| -> Vec<f64> {
        let t = src.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("input has no {name}"));
        match t.1 {
            Dtype::U8 => t.3.iter().map(|&b| b as f64).collect(),
            d => floats(&t.3, d),
        }
    };
    let src_bytes = |name: &str| -> &[u8] { &src.iter().find(|t| t.0 == name).unwrap().3 };

    // safetensors: standardize two columns, log1p one, two new columns, everything float to f16.
    let st = dir.path("a.safetensors");
    let mut cmd = cli(["transform"]);
    cmd.arg(&input)
        .args(["--standardize", "f0,f1", "--log1p", "f2", "--with", "g=f0 > 0", "--with", "k2=key * 2", "--cast", "f16", "--json", "-o"])
        .arg(&st);
    let r = Proc::spawn(cmd).finish("transform a.safetensors", false);
    let report = r.ok("transform a.safetensors").json("transform a.safetensors");
    assert_eq!(report["rows_written"], rows as u64);
    let tensors = read_safetensors(&st);
    let report_cols = report["columns"].as_object().unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "key", "g", "k2"], "input order, new columns last");
    assert_eq!(report_cols.keys().map(String::as_str).collect::<Vec<_>>(), names, "the --json report lists the columns written");
    let mut st_expect = Vec::new();
    for (name, dtype, shape, data) in &tensors {
        let rep = &report_cols[name];
        assert_eq!(*dtype, dtype_of(rep["dtype"].as_str().unwrap()), "{name}: dtype in the file vs the --json report");
        assert_eq!(shape, &[rows], "{name}: shape");
        st_expect.push((name.clone(), *dtype, rows as u64, checksum(data, *dtype)));
    }
    let get = |name: &str| tensors.iter().find(|t| t.0 == name).unwrap();
    for f in ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"] {
        assert_eq!(get(f).1, Dtype::F16, "{f}: --cast f16 converts every float column");
    }
    assert_eq!(get("key").1, Dtype::U8, "integer columns keep their dtype");
    assert_eq!(get("g").1, Dtype::BOOL, "a comparison is a bool column");
    // Values: standardized f0 against an f64 reference (within f16 rounding).
    let x = src_col("f0");
    let finite: Vec<f64> = x.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    let std = (finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / finite.len() as f64).sqrt();
    let got = floats(&get("f0").3, Dtype::F16);
    for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
        let want = (v - mean) / std;
        assert!(
            (g.is_nan() && v.is_nan()) || (g - want).abs() <= 1e-3 * want.abs().max(1.0),
            "row {i}: standardized f0 = {g}, f64 reference {want}"
        );
    }
    let f4_16: Vec<f64> = src_col("f4").iter().map(|&v| half::f16::from_f64(v).to_f64()).collect();
    let got = floats(&get("f4").3, Dtype::F16);
    assert!(got.iter().zip(&f4_16).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())), "f4 is the input cast to f16");
    let g_want: Vec<u8> = x.iter().map(|&v| u8::from(v > 0.0)).collect();
    assert!(get("g").3 == g_want, "g = f0 > 0");
    // `key * 2` is computed in f32 today (then cast to f16); any dtype holding it exactly will do.
    let k2 = get("k2");
    let k2_vals = numeric(&k2.3, k2.1);
    let k2_want: Vec<f64> = src_bytes("key").iter().map(|&k| 2.0 * k as f64).collect();
    assert!(k2_vals == k2_want, "k2 = key * 2 (dtype {:?})", k2.1);

    // npy: filtered, selected, passed through as f32.
    let npy = dir.path("b.npy");
    let mut cmd = cli(["transform"]);
    cmd.arg(&input).args(["--where", "f1 > 0.5", "--select", "f0,f4,f5", "--json", "-o"]).arg(&npy);
    let r = Proc::spawn(cmd).finish("transform b.npy", false);
    let report = r.ok("transform b.npy").json("transform b.npy");
    let keep: Vec<bool> = src_col("f1").iter().map(|&v| v > 0.5).collect();
    let selected = keep.iter().filter(|&&k| k).count() as u64;
    assert_eq!(report["rows_written"], selected);
    let (shape, columns) = npy_columns(&npy, 4);
    assert_eq!(shape, [selected, 3]);
    let mut npy_sums = Vec::new();
    for (j, name) in ["f0", "f4", "f5"].iter().enumerate() {
        let want: Vec<u8> = src_bytes(name).chunks_exact(4).zip(&keep).filter(|(_, k)| **k).flat_map(|(b, _)| b.to_vec()).collect();
        assert!(columns[j] == want, "npy column {j} ({name}) is the input's selected rows, in order");
        assert_eq!(report["columns"][name]["dtype"], "f32");
        npy_sums.push(checksum(&columns[j], Dtype::F32));
    }

    python_check(&npy, (&shape, &npy_sums), &st, &st_expect);
}

/// The `--json` report's per-column `nan_count` is the number of NaN values written in
/// that column, also for float columns passed through unchanged.
#[test]
fn json_nan_counts_match_the_values_written() {
    let _serial = serial();
    let dir = TempDir::new("nancount");
    let input = small_input(&dir);
    let mut wrong = Vec::new();
    for (name, extra) in [
        ("pass.safetensors", &[][..]),
        ("std.safetensors", &["--standardize", "f4"][..]),
        ("cast.safetensors", &["--cast", "f16"][..]),
        ("pass.npy", &["--select", "f0,f4,f5"][..]),
    ] {
        let out = dir.path(name);
        let label = format!("transform {}{}-o {name}", extra.join(" "), if extra.is_empty() { "" } else { " " });
        let mut cmd = cli(["transform"]);
        cmd.arg(&input).args(extra).args(["--json", "-o"]).arg(&out);
        let r = Proc::spawn(cmd).finish(&label, false);
        let report = r.ok(&label).json(&label);
        let cols = report["columns"].as_object().unwrap();
        let counts: Vec<(String, u64)> = if name.ends_with(".npy") {
            let (_, columns) = npy_columns(&out, 4);
            cols.keys().zip(&columns).map(|(n, c)| (n.clone(), checksum(c, Dtype::F32).nan)).collect()
        } else {
            read_safetensors(&out).iter().map(|(n, d, _, data)| (n.clone(), checksum(data, *d).nan)).collect()
        };
        for (col, nan) in &counts {
            let reported = cols[col]["nan_count"].as_u64().unwrap();
            if reported != *nan {
                wrong.push(format!("{label}: {col}: reported {reported}, written {nan}"));
            }
        }
    }
    assert!(wrong.is_empty(), "--json nan_count differs from the NaN values in the file:\n{}", wrong.join("\n"));
}
