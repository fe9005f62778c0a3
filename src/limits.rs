//! The machine's limits, measured in the same run as a benchmark: how fast this machine
//! can read mapped bytes (a SIMD sum on all threads) and copy them into a new file.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::source::Dataset;

/// Bytes of the given columns, as contiguous spans of the mapping (strided columns count
/// their whole span).
fn spans<'a>(ds: &'a Dataset, columns: &[usize]) -> Vec<&'a [u8]> {
    columns.iter().map(|&c| ds.column_span(c, 0, ds.rows())).collect()
}

#[inline(always)]
fn sum_words(b: &[u8]) -> u64 {
    let (head, words, tail) = bytemuck::pod_align_to::<u8, u64>(b);
    let mut acc = [0u64; 8];
    for c in words.chunks_exact(8) {
        for l in 0..8 {
            acc[l] = acc[l].wrapping_add(c[l]);
        }
    }
    let rest = words.chunks_exact(8).remainder();
    let mut s = acc.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    s = rest.iter().fold(s, |a, &b| a.wrapping_add(b));
    head.iter().chain(tail).fold(s, |a, &b| a.wrapping_add(b as u64))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_words_avx2(b: &[u8]) -> u64 {
    sum_words(b)
}

fn sum_any(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { sum_words_avx2(b) };
    }
    sum_words(b)
}

/// Read bandwidth in bytes/s: a vectorized integer sum of the columns' bytes over the
/// (already faulted) mapping, on all threads of the current pool. Best of `reps`.
pub fn read_limit(ds: &Dataset, columns: &[usize], reps: usize) -> f64 {
    let spans = spans(ds, columns);
    let total: usize = spans.iter().map(|s| s.len()).sum();
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let s: u64 = spans.iter().map(|s| s.par_chunks(1 << 20).map(sum_any).reduce(|| 0, u64::wrapping_add)).fold(0, u64::wrapping_add);
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    total as f64 / best.max(1e-9)
}

/// Write bandwidth in bytes/s: the columns' bytes copied from the mapping into a new file
/// in `dir`, fsync included. The file is removed afterwards.
pub fn copy_limit(ds: &Dataset, columns: &[usize], dir: &Path) -> Result<f64> {
    let spans = spans(ds, columns);
    let total: usize = spans.iter().map(|s| s.len()).sum();
    let path = dir.join(format!(".tilestream-copy-limit-{}", std::process::id()));
    let t = Instant::now();
    let run = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path)?);
        for s in &spans {
            f.write_all(s)?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    let r = run();
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    r.map_err(|e| Error::io(&path, e))?;
    Ok(total as f64 / secs.max(1e-9))
}

/// Host → device bandwidth in bytes/s: the same bytes as `columns`, uploaded in chunks of
/// at most 64 MiB to a device buffer, the best of `reps` runs. `None` for the CPU.
pub fn upload_limit(device: &crate::Device, ds: &Dataset, columns: &[usize], reps: usize) -> Result<Option<f64>> {
    match device {
        #[cfg(feature = "wgpu")]
        crate::Device::Wgpu(i) => {
            let spans: Vec<&[u8]> = columns.iter().map(|&c| ds.column_span(c, 0, ds.rows())).collect();
            let bytes: u64 = spans.iter().map(|s| s.len() as u64).sum();
            let mut best = f64::INFINITY;
            for _ in 0..reps.max(1) {
                let t = Instant::now();
                crate::backend::wgpu::upload(*i, &spans, 64 << 20)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(Some(bytes as f64 / best.max(1e-9)))
        }
        #[cfg(feature = "cuda")]
        crate::Device::Cuda(i) => Ok(Some(crate::backend::cuda::bandwidths(*i, ds.column_bytes(columns), reps)?.0)),
        _ => {
            let _ = (ds, columns, reps);
            Ok(None)
        }
    }
}
