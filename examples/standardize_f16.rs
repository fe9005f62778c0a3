//! Fit + transform: log1p a skewed column, standardize every float column with statistics
//! fitted on the data, fill NaN, and write f16 — then save the fit and replay it.
//!
//! `cargo run --release --example standardize_f16`

use tilestream::{Cols, DType, Dataset, Device, RunOptions, SinkOptions, Transform, apply_fit};

fn main() -> tilestream::Result<()> {
    let dir = std::env::temp_dir().join("tilestream-standardize");
    std::fs::create_dir_all(&dir).map_err(|e| tilestream::Error::Io { path: dir.clone(), source: e })?;
    let input = dir.join("train.safetensors");
    tilestream::synth::generate(&input, 1_000_000, 5, 3, true)?;
    let ds = Dataset::open(&input)?;
    let t = Transform {
        log1p: Cols::List(vec!["f2".into()]),
        standardize: Cols::All,
        fill_nan: Some(0.0),
        cast: Some(DType::F16),
        ..Transform::default()
    };
    let out = dir.join("train-f16.safetensors");
    let (fit, report) = ds.lazy().transform(t).sink(&out, &SinkOptions { force: true }, &Device::auto(), &RunOptions::default())?;
    println!("wrote {} rows to {}", report.rows_written, out.display());
    for (name, dtype, nan, overflow) in &report.columns {
        println!("  {name:>4} {dtype}  nan {nan}  overflow {overflow}");
    }
    // The fitted means/stds, saved, and applied to another file exactly as fitted.
    let fit_path = dir.join("fit.json");
    fit.save(&fit_path, true)?;
    let other = dir.join("test.safetensors");
    tilestream::synth::generate(&other, 100_000, 5, 4, true)?;
    let test_out = dir.join("test-f16.safetensors");
    let r = apply_fit(
        &Dataset::open(&other)?.lazy(),
        &tilestream::Fit::load(&fit_path)?,
        &test_out,
        &SinkOptions { force: true },
        &Device::auto(),
        &RunOptions::default(),
    )?;
    println!("applied {} to {} rows", fit_path.display(), r.rows_written);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
