//! Devices: the public [`Device`] enum and the crate-private [`Backend`] trait that the
//! streaming driver (`exec::run`) runs every query through.

pub(crate) mod cpu;

use std::ops::Range;

use crate::accum::{BlockStats, HistAcc};
use crate::error::{Error, Result};
use crate::program::FusedProgram;
use crate::source::Dataset;

/// Where a query runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Device {
    /// The CPU, on a rayon thread pool, with vector code chosen at run time.
    Cpu,
}

impl Device {
    /// The best device present: a CUDA device, then a real (non-software) GPU through wgpu,
    /// else the CPU. GPU backends are not built yet, so today this is always the CPU.
    pub fn auto() -> Device {
        Device::Cpu
    }

    /// Parses `auto`, `cpu`, `wgpu[:N]` or `cuda[:N]`; a device that is not available here is
    /// an [`Error::BackendUnavailable`].
    pub fn from_name(name: &str) -> Result<Device> {
        let kind = name.split(':').next().unwrap_or("");
        match kind {
            "auto" => Ok(Device::auto()),
            "cpu" => Ok(Device::Cpu),
            "wgpu" | "cuda" => Err(Error::BackendUnavailable {
                device: name.to_string(),
                reason: format!("the {kind} backend is not built into this version of tilestream yet"),
            }),
            _ => Err(Error::plan(format!("unknown device `{name}`: expected auto, cpu, wgpu[:N] or cuda[:N]"))),
        }
    }

    /// A short name for reports (`cpu`).
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
        }
    }

    /// Every device found on this machine, with a line on why `auto` does or does not pick it.
    pub fn survey() -> Vec<(String, String)> {
        vec![
            ("cpu".to_string(), format!("{} threads, vector code: {}", rayon::current_num_threads(), cpu::simd_level())),
            ("cuda".to_string(), "not built into this version (GPU backends are planned)".to_string()),
            ("wgpu".to_string(), "not built into this version (GPU backends are planned)".to_string()),
        ]
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

/// Output buffers of one tile: per output column, room for every row of the tile; block b
/// writes its selected rows, packed, from row `b * BLOCK_ROWS` on.
#[derive(Debug, Default)]
pub(crate) struct TileOut {
    /// One byte buffer per output column.
    pub columns: Vec<Vec<u8>>,
}

/// A compute backend. `prepare` once per query (compile or cache), `run_tile` once per tile.
pub(crate) trait Backend: Sync {
    /// The compiled form of a program.
    type Prepared: Sync;
    /// Compiles (or fetches from a cache) the program for this device.
    fn prepare(&self, prog: &FusedProgram, ds: &Dataset) -> Result<Self::Prepared>;
    /// Runs the program over rows `tile` (which starts on a block boundary).
    fn run_tile(&self, prep: &Self::Prepared, ds: &Dataset, tile: Range<u64>, out: Option<&mut TileOut>) -> Result<TileResult>;
}
