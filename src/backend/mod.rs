//! Devices: the public [`Device`] enum and the crate-private [`Backend`] trait that the
//! streaming driver (`exec::run`) runs every query through.

pub(crate) mod cpu;
mod cpu_simd;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(all(test, feature = "cuda"))]
mod cuda_emu_tests;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_gen;
#[cfg(feature = "cuda")]
pub(crate) mod nvrtc;
#[cfg(all(test, any(feature = "wgpu", feature = "cuda")))]
pub(crate) mod test_corpus;
#[cfg(feature = "wgpu")]
pub(crate) mod wgpu;
#[cfg(feature = "wgpu")]
pub(crate) mod wgsl;

use std::ops::Range;

use crate::accum::{BlockStats, HistAcc};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::program::FusedProgram;
use crate::source::Dataset;

/// Inputs smaller than this stay on the CPU under `auto`: a GPU's start-up would not pay.
pub const GPU_MIN_BYTES: u64 = 64 << 20;

/// Where a query runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// The CPU, on a rayon thread pool, with vector code chosen at run time.
    Cpu,
    /// The wgpu adapter with this index (`tilestream devices` lists them): Vulkan, Metal
    /// or DX12.
    Wgpu(usize),
    /// The CUDA device with this ordinal: kernels compiled by NVRTC for its architecture.
    Cuda(usize),
}

impl Device {
    /// The best device present: a CUDA device that initializes (with an NVRTC that fits
    /// its driver), else a real (non-software) GPU through wgpu, discrete before
    /// integrated, else the CPU. Never a CPU or software adapter, unless the environment
    /// variable `TILESTREAM_AUTO_GPU=wgpu:N` (or `cuda:N`) names one (for tests, or to pin
    /// a device).
    pub fn auto() -> Device {
        if let Ok(name) = std::env::var("TILESTREAM_AUTO_GPU")
            && let Ok(d @ (Device::Wgpu(_) | Device::Cuda(_))) = Device::from_name(&name)
        {
            return d;
        }
        #[cfg(feature = "cuda")]
        if let Some(i) = cuda::best() {
            return Device::Cuda(i);
        }
        #[cfg(feature = "wgpu")]
        if let Some(i) = wgpu::best_hardware() {
            return Device::Wgpu(i);
        }
        Device::Cpu
    }

    /// [`Device::auto`] for a dataset: inputs under [`GPU_MIN_BYTES`] stay on the CPU.
    pub fn auto_for(ds: &Dataset) -> Device {
        let bytes: u64 = ds.column_bytes(&(0..ds.columns().len()).collect::<Vec<_>>());
        if bytes < GPU_MIN_BYTES { Device::Cpu } else { Device::auto() }
    }

    /// Parses `auto`, `cpu`, `wgpu[:N]` or `cuda[:N]`; a device that is not available here is
    /// an [`Error::BackendUnavailable`]. `wgpu` alone takes the best adapter, software
    /// ones included.
    pub fn from_name(name: &str) -> Result<Device> {
        let (kind, index) = match name.split_once(':') {
            Some((k, i)) => (k, Some(i)),
            None => (name, None),
        };
        match (kind, index) {
            ("auto", None) => Ok(Device::auto()),
            ("cpu", None) => Ok(Device::Cpu),
            ("wgpu", _) => wgpu_named(name, index),
            ("cuda", _) => cuda_named(name, index),
            _ => Err(Error::plan(format!("unknown device `{name}`: expected auto, cpu, wgpu[:N] or cuda[:N]"))),
        }
    }

    /// A short name for reports (`cpu`, `wgpu:0 NVIDIA H200`).
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(i) => match wgpu::adapters().get(*i) {
                Some(a) => format!("wgpu:{i} {}", a.info.name),
                None => format!("wgpu:{i}"),
            },
            #[cfg(not(feature = "wgpu"))]
            Device::Wgpu(i) => format!("wgpu:{i}"),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => match cuda::driver().ok().and_then(|d| d.devices.get(*i)) {
                Some(info) => format!("cuda:{i} {}", info.name),
                None => format!("cuda:{i}"),
            },
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(i) => format!("cuda:{i}"),
        }
    }

    /// Every device found on this machine, with a line on why `auto` does or does not pick it.
    pub fn survey() -> Vec<(String, String)> {
        let mut v = vec![("cpu".to_string(), format!("{} threads, vector code: {}", rayon::current_num_threads(), cpu::simd_level()))];
        #[cfg(feature = "cuda")]
        v.extend(cuda::survey());
        #[cfg(not(feature = "cuda"))]
        v.push(("cuda".to_string(), "not built in (the `cuda` feature is off)".to_string()));
        #[cfg(feature = "wgpu")]
        {
            let list = wgpu::adapters();
            if list.is_empty() {
                v.push(("wgpu".to_string(), "no adapter found (no Vulkan/Metal/DX12 driver)".to_string()));
            }
            for (i, a) in list.iter().enumerate() {
                let why = if a.is_hardware() { "a GPU: auto may pick it" } else { "not a GPU: auto never picks it (use --device wgpu:N)" };
                v.push((format!("wgpu:{i}"), format!("{}; {why}", a.describe())));
            }
        }
        #[cfg(not(feature = "wgpu"))]
        v.push(("wgpu".to_string(), "not built in (the `wgpu` feature is off)".to_string()));
        v
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_named(name: &str, index: Option<&str>) -> Result<Device> {
    let n = wgpu::adapters().len();
    match index {
        None => wgpu::best_any().map(Device::Wgpu).ok_or_else(|| Error::BackendUnavailable {
            device: name.to_string(),
            reason: "no wgpu adapter found: install a Vulkan driver (on Debian, mesa-vulkan-drivers gives a software one)".to_string(),
        }),
        Some(i) => match i.parse::<usize>() {
            Ok(i) if i < n => Ok(Device::Wgpu(i)),
            Ok(_) => Err(Error::BackendUnavailable {
                device: name.to_string(),
                reason: format!("there are {n} wgpu adapters on this machine (`tilestream devices` lists them)"),
            }),
            Err(_) => Err(Error::plan(format!("unknown device `{name}`: N in wgpu:N must be an adapter number"))),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda_named(name: &str, index: Option<&str>) -> Result<Device> {
    let n = cuda::driver().map_err(|reason| Error::BackendUnavailable { device: name.to_string(), reason })?.devices.len();
    match index.map(|i| i.parse::<usize>()) {
        None => Ok(Device::Cuda(0)),
        Some(Ok(i)) if i < n => Ok(Device::Cuda(i)),
        Some(Ok(_)) => Err(Error::BackendUnavailable {
            device: name.to_string(),
            reason: format!("there are {n} CUDA devices on this machine (`tilestream devices` lists them)"),
        }),
        Some(Err(_)) => Err(Error::plan(format!("unknown device `{name}`: N in cuda:N must be a device number"))),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_named(name: &str, _index: Option<&str>) -> Result<Device> {
    Err(Error::BackendUnavailable { device: name.to_string(), reason: "this build of tilestream has the `cuda` feature off".to_string() })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_named(name: &str, _index: Option<&str>) -> Result<Device> {
    Err(Error::BackendUnavailable { device: name.to_string(), reason: "this build of tilestream has the `wgpu` feature off".to_string() })
}

/// How a GPU group-by kernel numbers the values of its key: the slots of its sweeps. A key
/// wider than 8 bits is read on the host first (`group_keys`).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeySlots {
    /// The keys `lo..=hi`: slot `key - lo`.
    Range(i64, i64),
    /// These sorted distinct keys: slot = the key's index, found by a binary search per row
    /// (fewer sweeps than their range, or a range wider than `MAX_GROUPS` values).
    Table(Vec<i64>),
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl KeySlots {
    /// The key of slot `j`.
    pub(crate) fn key(&self, j: usize) -> i128 {
        match self {
            KeySlots::Range(lo, _) => *lo as i128 + j as i128,
            KeySlots::Table(keys) => keys[j] as i128,
        }
    }
}

/// Calls `f` with every value of an integer key column as an i64 (a host pass over the
/// column; u64 values beyond i64 are `Unsupported`). `device` names the backend in errors.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn each_key(ds: &Dataset, col: usize, device: &str, mut f: impl FnMut(i64) -> Result<()>) -> Result<()> {
    let c = &ds.columns()[col];
    let span = ds.column_span(col, 0, ds.rows());
    let stride = c.stride as usize;
    let at = |r: usize| -> Option<i64> {
        let b = &span[r * stride..r * stride + c.dtype.size()];
        Some(match c.dtype {
            DType::I8 => b[0] as i8 as i64,
            DType::U8 | DType::Bool => b[0] as i64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            DType::U16 => u16::from_le_bytes([b[0], b[1]]) as i64,
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            DType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            DType::I64 => i64::from_le_bytes(b.try_into().ok()?),
            DType::U64 => i64::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()?,
            _ => return None,
        })
    };
    for r in 0..ds.rows() as usize {
        f(at(r).ok_or_else(|| Error::Unsupported(format!("group-by on a {} key beyond i64 on the {device} backend", c.dtype)))?)?;
    }
    ds.check_faults()
}

/// The smallest and largest value of an integer key column (a host pass over the column):
/// `group_keys` sizes a GPU group-by's key sweeps from it. `device` names the backend in errors.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn key_range(ds: &Dataset, col: usize, device: &str) -> Result<(i64, i64)> {
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    each_key(ds, col, device, |v| {
        lo = lo.min(v);
        hi = hi.max(v);
        Ok(())
    })?;
    Ok(if lo > hi { (0, 0) } else { (lo, hi) })
}

/// The sorted distinct keys of an integer key column whose values lie in `range` (from
/// `key_range`; a second host pass), when a GPU group-by taking `per_sweep` keys per sweep
/// needs fewer sweeps over them than over the range, or the range spans more than
/// `MAX_GROUPS` values; `None` when the range does as well. More than `MAX_GROUPS` distinct
/// keys is `Unsupported` (the CPU runs such a query, or says that its groups are too many).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn key_table(ds: &Dataset, col: usize, range: (i64, i64), per_sweep: u64, device: &str) -> Result<Option<Vec<i64>>> {
    let max = crate::exec::MAX_GROUPS;
    let (lo, hi) = range;
    let span = (hi as i128 - lo as i128 + 1) as u128;
    if span <= per_sweep as u128 {
        return Ok(None);
    }
    let keys = if span <= max as u128 {
        // A bit per value of the range.
        let mut seen = vec![0u64; (span as usize).div_ceil(64)];
        each_key(ds, col, device, |k| {
            if k < lo || k > hi {
                // The file changed since `key_range` read it.
                ds.check_unchanged()?;
                return Err(Error::plan("the group-by key column changed while it was being read"));
            }
            // lo <= k <= hi, whose span fits in usize.
            let j = (k - lo) as usize;
            seen[j / 64] |= 1 << (j % 64);
            Ok(())
        })?;
        (0..span as usize).filter(|&j| seen[j / 64] >> (j % 64) & 1 != 0).map(|j| lo + j as i64).collect()
    } else {
        // Open addressing in 2^18 slots, never more than a quarter full (at most `max` keys).
        const BITS: u32 = 18;
        let (mut slots, mut used) = (vec![0i64; 1 << BITS], vec![false; 1 << BITS]);
        let mut keys: Vec<i64> = Vec::new();
        let mut last = None;
        each_key(ds, col, device, |k| {
            if last == Some(k) {
                return Ok(());
            }
            last = Some(k);
            let mut h = ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS)) as usize;
            while used[h] {
                if slots[h] == k {
                    return Ok(());
                }
                h = (h + 1) & ((1 << BITS) - 1);
            }
            if keys.len() == max {
                return Err(Error::Unsupported(format!("group-by on more than {max} distinct keys on the {device} backend")));
            }
            (used[h], slots[h]) = (true, k);
            keys.push(k);
            Ok(())
        })?;
        keys.sort_unstable();
        keys
    };
    let sweeps = |n: u128| n.div_ceil(per_sweep as u128);
    Ok((span > max as u128 || sweeps(keys.len() as u128) < sweeps(span)).then_some(keys))
}

/// How a GPU group-by taking `per_sweep` keys per sweep numbers the keys of integer column
/// `col` wider than 8 bits: by their range, or by a table of their distinct values when that
/// takes fewer sweeps or the range spans more than `MAX_GROUPS` values (one or two host
/// passes over the column).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn group_keys(ds: &Dataset, col: usize, per_sweep: u64, device: &str) -> Result<KeySlots> {
    let (lo, hi) = key_range(ds, col, device)?;
    Ok(match key_table(ds, col, (lo, hi), per_sweep, device)? {
        Some(table) => KeySlots::Table(table),
        None => KeySlots::Range(lo, hi),
    })
}

/// A failure injected into the GPU backends for tests, from `TILESTREAM_GPU_FAULT`:
/// `tile:N` fails the submission of tile N (counting from 0) of every pass, as a lost device
/// would; `oom:ROWS` makes preparing tiles of more than ROWS rows run out of device memory.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InjectedFault {
    /// Fail at this tile.
    Tile(u64),
    /// Out of memory above this many rows per tile.
    OomAbove(u64),
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl InjectedFault {
    /// The fault the environment asks for, read once per process.
    pub(crate) fn get() -> Option<InjectedFault> {
        static FAULT: std::sync::OnceLock<Option<InjectedFault>> = std::sync::OnceLock::new();
        *FAULT.get_or_init(|| {
            let v = std::env::var("TILESTREAM_GPU_FAULT").ok()?;
            let (kind, n) = v.split_once(':')?;
            let n = n.parse().ok()?;
            match kind {
                "tile" => Some(InjectedFault::Tile(n)),
                "oom" => Some(InjectedFault::OomAbove(n)),
                _ => None,
            }
        })
    }

    /// The error of an injected failure at tile `index`, if one is asked for.
    pub(crate) fn at_tile(device: &str, index: usize) -> Result<()> {
        match InjectedFault::get() {
            Some(InjectedFault::Tile(n)) if n == index as u64 => {
                Err(Error::Device { device: device.to_string(), message: format!("injected failure at tile {n} (TILESTREAM_GPU_FAULT)") })
            }
            _ => Ok(()),
        }
    }

    /// The error of an injected out-of-memory for tiles of `rows` rows, if one is asked for.
    pub(crate) fn at_prepare(device: &str, rows: u64) -> Result<()> {
        match InjectedFault::get() {
            Some(InjectedFault::OomAbove(n)) if rows > n => Err(Error::DeviceOutOfMemory {
                device: device.to_string(),
                message: format!("injected for tiles over {n} rows (TILESTREAM_GPU_FAULT)"),
            }),
            _ => Ok(()),
        }
    }
}

/// What one tile of a query produced: one partial per block of rows, in row order, plus
/// order-independent counts.
#[derive(Debug, Default)]
pub(crate) struct TileResult {
    /// Per block, in row order.
    pub blocks: Vec<BlockPartial>,
    /// One per histogram of the program (integer counts: merge order does not matter).
    pub hists: Vec<HistAcc>,
}

/// The partial results of one block of rows.
#[derive(Debug, Default)]
pub(crate) struct BlockPartial {
    /// Rows that passed the filter.
    pub selected: u64,
    /// One per stats aggregate (ungrouped).
    pub stats: Vec<BlockStats>,
    /// Per group key seen in this block, in first-seen order.
    pub groups: Vec<(i128, u64, Vec<BlockStats>)>,
    /// Per output column: (NaN count, overflow count) of the rows written.
    pub out_counts: Vec<(u64, u64)>,
}

/// Output buffers of one tile: per output column, room for every row of the tile; the
/// tile's unit b (`Backend::unit_rows`) writes its selected rows, packed, from row
/// `b * unit` on.
#[derive(Debug, Default)]
pub(crate) struct TileOut {
    /// One byte buffer per output column.
    pub columns: Vec<Vec<u8>>,
}

/// A compute backend. `prepare` once per query (compile or cache); then per tile, in row
/// order, `submit` (start the work) and `collect` (wait for it and take its results). Up to
/// `depth()` tiles are submitted before the oldest is collected, so a GPU stages the next
/// tile while it computes this one.
pub(crate) trait Backend: Sync {
    /// The compiled form of a program.
    type Prepared: Sync;
    /// A tile in flight.
    type Ticket;
    /// Rows per partial of a program over a dataset (a whole number of blocks): the unit
    /// of parallel work and of results.
    fn unit_rows(&self, prog: &FusedProgram, _ds: &Dataset) -> u64 {
        crate::exec::unit_rows(prog)
    }
    /// Rows per tile under a memory budget (a whole number of the program's units).
    fn tile_rows(&self, prog: &FusedProgram, ds: &Dataset, budget: u64) -> u64 {
        crate::exec::tile_rows(prog, ds, budget, self.unit_rows(prog, ds))
    }
    /// Tiles that may be in flight at once.
    fn depth(&self) -> usize {
        1
    }
    /// Compiles (or fetches from a cache) the program for this device, for tiles of at
    /// most `tile_rows` rows.
    fn prepare(&self, prog: &FusedProgram, ds: &Dataset, tile_rows: u64) -> Result<Self::Prepared>;
    /// Starts the program over rows `tile` (which starts on a block boundary). A backend of
    /// depth 1 may do all the work here, writing outputs into `out`.
    fn submit(&self, prep: &Self::Prepared, ds: &Dataset, tile: Range<u64>, out: Option<&mut TileOut>) -> Result<Self::Ticket>;
    /// Waits for a submitted tile; its output rows land in `out`.
    fn collect(&self, prep: &Self::Prepared, ticket: Self::Ticket, out: Option<&mut TileOut>) -> Result<TileResult>;
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::sink::table::{OutputColumn, OutputFormat, TableWriter};
    use crate::synth::{Rng, test_seed};
    use std::collections::BTreeSet;

    /// `key_table` of a one-column dataset of `values` stored as `dtype`.
    fn table_of(dtype: DType, values: &[i128]) -> Result<Option<Vec<i64>>> {
        let dir = std::env::temp_dir().join(format!("tilestream-keys-{}-{dtype}-{}", std::process::id(), values.len()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        let path = dir.join("k.safetensors");
        let bytes: Vec<u8> = values.iter().flat_map(|&v| v.to_le_bytes()[..dtype.size()].to_vec()).collect();
        let mut w = TableWriter::create(
            &path,
            OutputFormat::Safetensors,
            vec![OutputColumn { name: "k".into(), dtype }],
            values.len() as u64,
            true,
        )
        .expect("writer");
        w.write_tile(values.len(), &[&bytes]).expect("write");
        w.finish().expect("finish");
        let ds = Dataset::open(&path).expect("open");
        let t = key_range(&ds, 0, "wgpu").and_then(|range| key_table(&ds, 0, range, 256, "wgpu"));
        let _ = std::fs::remove_dir_all(&dir);
        t
    }

    #[test]
    fn key_tables_hold_every_distinct_key_when_they_save_sweeps() {
        let seed = test_seed();
        let mut rng = Rng::new(seed);
        let mut pick = |n: usize, draw: &mut dyn FnMut(&mut Rng) -> i128, rows: usize| -> Vec<i128> {
            let keys: Vec<i128> = (0..n).map(|_| draw(&mut rng)).collect();
            (0..rows).map(|_| keys[(rng.uniform() * rng.uniform() * n as f64) as usize]).collect()
        };
        let table = |v: &[i128]| Some(v.iter().map(|&k| k as i64).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>());
        // Over the whole i64 range (the hash set), its ends included.
        let mut v = pick(300, &mut |r| r.next_u64() as i64 as i128, 20_000);
        v.extend([i64::MIN as i128, i64::MAX as i128, i64::MIN as i128]);
        assert_eq!(table_of(DType::I64, &v).expect("i64"), table(&v), "seed {seed}: i64 keys");
        // 40 u16 keys over 0..65535 (the bitmap): one sweep instead of 256.
        let v = pick(40, &mut |r| (r.next_u64() % 65_536) as i128, 5_000);
        assert_eq!(table_of(DType::U16, &v).expect("u16"), table(&v), "seed {seed}: u16 keys");
        // i32 keys over ~8 million values, then a dense 0..700: no table (3 sweeps either way).
        let v = pick(2_000, &mut |r| (r.normal() * 2e6) as i32 as i128, 30_000);
        assert_eq!(table_of(DType::I32, &v).expect("i32"), table(&v), "seed {seed}: i32 keys");
        let v: Vec<i128> = (0..7_000).map(|i| (i * 13 % 700) as i128).collect();
        assert_eq!(table_of(DType::I16, &v).expect("dense"), None, "a dense range needs no table");
        let v: Vec<i128> = (0..7_000).map(|i| (i % 200) as i128 - 100).collect();
        assert_eq!(table_of(DType::I16, &v).expect("one sweep"), None, "a range of one sweep needs no table");
        // More than 65,536 distinct keys, and u64 keys beyond i64: typed refusals.
        let v: Vec<i128> = (0..70_000).map(|i| i * 1_000_003).collect();
        assert!(matches!(table_of(DType::I64, &v), Err(Error::Unsupported(_))), "70,000 keys");
        let v: Vec<i128> = (0..65_536).map(|i| i * 3).collect();
        assert_eq!(table_of(DType::U32, &v).expect("65,536 keys").map(|t| t.len()), Some(65_536), "exactly 65,536 keys");
        assert!(matches!(table_of(DType::U64, &[1, u64::MAX as i128]), Err(Error::Unsupported(_))), "u64 beyond i64");
    }
}
