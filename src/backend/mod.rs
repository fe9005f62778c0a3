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

/// Dense slots of integer keys in first-seen order: an open-addressing table of the keys'
/// 64-bit patterns with Fibonacci hashing (every key in -2^63 ..= 2^64 - 1 has its own),
/// kept by a CPU thread from unit to unit, the driver's merge of the groups' partials
/// (`exec::run`), and the GPU group-bys' host pass over a key
/// column (`group_keys`). Runs of one key (sorted or clustered keys) skip the table. Each
/// entry carries the generation of the unit that wrote it, so that a unit starts with an
/// empty table without clearing it (`next_unit`). Several times faster than a `HashMap`
/// (SipHash) per row: a group-by of 20M rows by 1,000 i32 or i64 ids went from 0.53 to 0.13 s.
pub(crate) struct KeyMap {
    /// (key bits, generation, slot) per entry; a power-of-two count, at most a quarter full
    /// (half full, probes mispredicted enough to cost a third of the time with random keys).
    entries: Vec<(u64, u32, u32)>,
    generation: u32,
    /// The last key looked up and its slot.
    last: Option<(u64, u32)>,
}

impl KeyMap {
    /// An empty table (its entries are of generation 0).
    pub(crate) fn new() -> KeyMap {
        KeyMap { entries: vec![(0, 0, 0); 1024], generation: 1, last: None }
    }

    /// Empties the table for the next unit of rows.
    pub(crate) fn next_unit(&mut self) {
        self.last = None;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // After 2^32 units, entries of generation 1 could still be there.
            self.entries.fill((0, 0, 0));
            self.generation = 1;
        }
    }

    /// The entry that holds, or would hold, key bits `k`.
    #[inline(always)]
    fn find(&self, k: u64) -> usize {
        let mask = self.entries.len() - 1;
        let mut h = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.entries.len().trailing_zeros())) as usize;
        // The table is never full: the probe ends at the key or an empty entry.
        while self.entries[h].1 == self.generation && self.entries[h].0 != k {
            h = (h + 1) & mask;
        }
        h
    }

    /// The slot of `key`: a new key takes the next slot and is pushed on `keys`; more than
    /// `MAX_GROUPS` keys is the query's error.
    #[inline(always)]
    pub(crate) fn slot(&mut self, key: i128, keys: &mut Vec<i128>) -> Result<u32> {
        let k = key as u64;
        if let Some((b, slot)) = self.last
            && b == k
        {
            return Ok(slot);
        }
        let slot = self.insert(k, key, keys)?;
        self.last = Some((k, slot));
        Ok(slot)
    }

    /// `slot` past the run shortcut, `k` being `value`'s bits.
    #[inline(always)]
    fn insert(&mut self, k: u64, value: i128, keys: &mut Vec<i128>) -> Result<u32> {
        let h = self.find(k);
        if self.entries[h].1 == self.generation {
            return Ok(self.entries[h].2);
        }
        // A unit's partial holds at most MAX_GROUPS groups (the tile size counts on it): more
        // is the query's error anyway.
        if keys.len() == crate::exec::MAX_GROUPS {
            return Err(crate::exec::too_many_groups());
        }
        let slot = keys.len() as u32;
        keys.push(value);
        self.entries[h] = (k, self.generation, slot);
        if keys.len() * 4 > self.entries.len() {
            let bigger = vec![(0, 0, 0); self.entries.len() * 2];
            let old = std::mem::replace(&mut self.entries, bigger);
            for e in old.into_iter().filter(|e| e.1 == self.generation) {
                let h = self.find(e.0);
                self.entries[h] = e;
            }
        }
        Ok(slot)
    }
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
    /// A kernel's keys: an 8-bit (or bool) key is its own range; a wider one needs `keys`,
    /// read from the column by `group_keys` (`None` without them).
    pub(crate) fn of(dtype: DType, keys: Option<KeySlots>) -> Option<KeySlots> {
        match dtype {
            DType::U8 | DType::Bool => Some(KeySlots::Range(0, 255)),
            DType::I8 => Some(KeySlots::Range(-128, 127)),
            _ => keys,
        }
    }

    /// The slots a kernel's sweeps cover: the range's values or the table's keys (at least 1).
    pub(crate) fn count(&self) -> u64 {
        match self {
            KeySlots::Range(lo, hi) => (*hi as i128 - *lo as i128 + 1).max(1) as u64,
            KeySlots::Table(t) => t.len().max(1) as u64,
        }
    }

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

/// How a GPU group-by taking `per_sweep` keys per sweep numbers the keys of integer column
/// `col` wider than 8 bits, from one host pass that finds its distinct keys: by their range,
/// or by the table of them when that takes fewer sweeps or the range spans more than
/// `MAX_GROUPS` values. More than `MAX_GROUPS` distinct keys is `Unsupported` (the CPU runs
/// such a query, or says that its groups are too many).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn group_keys(ds: &Dataset, col: usize, per_sweep: u64, device: &str) -> Result<KeySlots> {
    let max = crate::exec::MAX_GROUPS;
    let (mut map, mut found) = (KeyMap::new(), Vec::new());
    each_key(ds, col, device, |k| {
        map.slot(k as i128, &mut found)
            .map(|_| ())
            .map_err(|_| Error::Unsupported(format!("group-by on more than {max} distinct keys on the {device} backend")))
    })?;
    // `each_key` gives only values of i64.
    let mut keys: Vec<i64> = found.into_iter().map(|k| k as i64).collect();
    keys.sort_unstable();
    let (Some(&lo), Some(&hi)) = (keys.first(), keys.last()) else { return Ok(KeySlots::Range(0, 0)) };
    let span = (hi as i128 - lo as i128 + 1) as u128;
    let sweeps = |n: u128| n.div_ceil(per_sweep as u128);
    Ok(if span > max as u128 || sweeps(keys.len() as u128) < sweeps(span) { KeySlots::Table(keys) } else { KeySlots::Range(lo, hi) })
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
    /// Per group key that saw rows in this block.
    pub groups: GroupPartials,
    /// Per output column: (NaN count, overflow count) of the rows written.
    pub out_counts: Vec<(u64, u64)>,
}

/// The per-group partials of one unit: for each key that saw rows, its rows and one
/// [`BlockStats`] per statistic, held flat (a unit of a 65,536-key group-by has as many
/// groups: one allocation each made a CPU group-by of 60,000 keys spend a sixth of its
/// time in the allocator).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct GroupPartials {
    keys: Vec<(i128, u64)>,
    /// `per_group` entries from `j * per_group` for group j.
    stats: Vec<BlockStats>,
    per_group: usize,
}

impl GroupPartials {
    /// Adds group `key` with its selected rows and statistics (as many for every group).
    pub(crate) fn push(&mut self, key: i128, rows: u64, stats: impl IntoIterator<Item = BlockStats>) {
        let before = self.stats.len();
        self.stats.extend(stats);
        if self.keys.is_empty() {
            self.per_group = self.stats.len() - before;
        }
        debug_assert_eq!(self.stats.len() - before, self.per_group, "every group has the same statistics");
        self.keys.push((key, rows));
    }

    /// (key, selected rows, statistics) per group, in the order pushed.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i128, u64, &[BlockStats])> {
        let w = self.per_group;
        self.keys.iter().enumerate().map(move |(j, &(key, rows))| (key, rows, &self.stats[j * w..(j + 1) * w]))
    }
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

    /// `group_keys`' table of a one-column dataset of `values` stored as `dtype` (`None`: the
    /// range).
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
        let t = group_keys(&ds, 0, 256, "wgpu").map(|k| match k {
            KeySlots::Table(t) => Some(t),
            KeySlots::Range(..) => None,
        });
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

/// `y` as f32 rounded to odd: truncated toward zero, its last bit set when that dropped
/// anything. Rounded on to f16 or bf16 (13 or more bits fewer) to nearest even, it gives
/// `y`'s own nearest value, where two roundings to nearest may not (162.68749623224357
/// went to 162.75 through f32, to 162.625 directly). Beyond f32's range it is ±f32::MAX,
/// which both casts take to ±inf.
pub(crate) fn f32_round_odd(y: f64) -> f32 {
    let f = y as f32;
    if y.is_nan() || f as f64 == y {
        return f;
    }
    let toward_zero = f.to_bits() - ((f as f64).abs() > y.abs()) as u32;
    f32::from_bits(toward_zero | 1)
}

/// The f32 that stands for a `--fill-nan` value in an output of `dtype` before its cast:
/// rounded to odd for f16/bf16 (`f32_round_odd`), so that the fill too is rounded once.
pub(crate) fn fill_f32(fill: f64, dtype: DType) -> f32 {
    if matches!(dtype, DType::F16 | DType::BF16) { f32_round_odd(fill) } else { fill as f32 }
}
