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

/// The smallest and largest value of an integer key column (a host pass over the column):
/// a GPU group-by sizes its key sweeps from it. `device` names the backend in errors.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn key_range(ds: &Dataset, col: usize, device: &str) -> Result<(i64, i64)> {
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
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for r in 0..ds.rows() as usize {
        let v = at(r).ok_or_else(|| Error::Unsupported(format!("group-by on a {} key beyond i64 on the {device} backend", c.dtype)))?;
        lo = lo.min(v);
        hi = hi.max(v);
    }
    ds.check_faults()?;
    Ok(if lo > hi { (0, 0) } else { (lo, hi) })
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
