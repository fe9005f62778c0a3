//! Synthetic datasets: f32 feature columns of several distributions (some NaN) and a
//! skewed u8 `key` column, written as safetensors. Deterministic for a seed.

use std::path::Path;

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::sink::table::{OutputColumn, OutputFormat, TableWriter};

/// Rows generated per chunk (for 8 columns; fewer for wider tables, so that a tile of
/// chunks stays near 64 MiB). Each chunk has its own seeded stream, so the output does not
/// depend on the thread count.
const CHUNK_CELLS: u64 = 1 << 19;

/// The most feature columns `gen` writes.
pub const MAX_GEN_COLUMNS: usize = 65_536;

/// A fresh seed for a randomized unit test (`TILESTREAM_SEED` repeats a run), printed.
#[cfg(test)]
pub(crate) fn test_seed() -> u64 {
    let s = std::env::var("TILESTREAM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7));
    eprintln!("seed {s} (TILESTREAM_SEED={s} repeats this run)");
    s
}

/// A small, fast, seedable generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The value of feature column `j` for one row.
fn feature(j: usize, rng: &mut Rng) -> f32 {
    let nan = |rng: &mut Rng, p: f64| rng.uniform() < p;
    match j % 5 {
        0 => {
            if nan(rng, 0.005) {
                f32::NAN
            } else {
                rng.normal() as f32
            }
        }
        1 => rng.uniform() as f32,
        2 => (rng.normal() * 1.5).exp() as f32,
        3 => (10_000.0 + rng.normal()) as f32,
        _ => {
            if nan(rng, 0.01) {
                f32::NAN
            } else {
                (rng.uniform() * 200.0 - 100.0) as f32
            }
        }
    }
}

/// Writes `rows` rows of `cols` f32 columns `f0..` (normal, uniform, log-normal,
/// N(10000, 1), uniform with NaN, repeating) and a u8 `key` in 0..64 skewed towards 0.
pub fn generate(path: &Path, rows: u64, cols: usize, seed: u64, force: bool) -> Result<()> {
    generate_with(path, rows, cols, seed, force, &|_, _| {}, None)
}

/// [`generate`] with a progress callback `(rows done, rows)` and a cancel flag (checked
/// between tiles; a cancelled run leaves nothing at `path`).
pub fn generate_with(
    path: &Path,
    rows: u64,
    cols: usize,
    seed: u64,
    force: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<()> {
    if OutputFormat::from_path(path)? != OutputFormat::Safetensors {
        return Err(Error::plan(format!("gen writes .safetensors files, not {}", path.display())));
    }
    if cols > MAX_GEN_COLUMNS {
        return Err(Error::plan(format!("--cols must be at most {MAX_GEN_COLUMNS}, got {cols}")));
    }
    let mut columns: Vec<OutputColumn> = (0..cols).map(|j| OutputColumn { name: format!("f{j}"), dtype: DType::F32 }).collect();
    columns.push(OutputColumn { name: "key".into(), dtype: DType::U8 });
    let chunk = (CHUNK_CELLS / (cols as u64 + 1)).max(1);
    let mut writer = TableWriter::create(path, OutputFormat::Safetensors, columns, rows, force)?;
    let chunks_per_tile = 32u64;
    let mut r0 = 0;
    while r0 < rows {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let r1 = (r0 + chunk * chunks_per_tile).min(rows);
        let chunks: Vec<(Vec<Vec<f32>>, Vec<u8>)> = (r0..r1)
            .step_by(chunk as usize)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|c0| {
                let n = (r1 - c0).min(chunk) as usize;
                let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (c0 / chunk));
                let mut feats = vec![Vec::with_capacity(n); cols];
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    for (j, f) in feats.iter_mut().enumerate() {
                        f.push(feature(j, &mut rng));
                    }
                    let u = rng.uniform();
                    keys.push((u * u * 64.0) as u8);
                }
                (feats, keys)
            })
            .collect();
        let n = (r1 - r0) as usize;
        let mut tile: Vec<Vec<u8>> = (0..=cols).map(|j| Vec::with_capacity(n * if j < cols { 4 } else { 1 })).collect();
        for (feats, keys) in &chunks {
            for (j, f) in feats.iter().enumerate() {
                tile[j].extend_from_slice(bytemuck::cast_slice(f));
            }
            tile[cols].extend_from_slice(keys);
        }
        let slices: Vec<&[u8]> = tile.iter().map(|t| t.as_slice()).collect();
        writer.write_tile(n, &slices)?;
        r0 = r1;
        progress(r0, rows);
    }
    writer.finish_unless(cancel)?;
    Ok(())
}
