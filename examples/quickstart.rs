//! Statistics of every column of a dataset, in one pass.
//!
//! `cargo run --release --example quickstart [FILE]` (generates a small dataset when no file
//! is given).

use tilestream::{Dataset, Device, all_stats};

fn main() -> tilestream::Result<()> {
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = std::env::temp_dir().join("tilestream-quickstart.safetensors");
            tilestream::synth::generate(&p, 1_000_000, 4, 1, true)?;
            p
        }
    };
    let ds = Dataset::open(&path)?;
    let r = ds.lazy().aggregate([all_stats(Vec::<String>::new())]).collect(&Device::auto())?;
    println!("{} rows on {}", r.rows, r.report.device);
    for (name, s) in &r.columns {
        println!(
            "{name:>8}: count {:>9}  nan {:>6}  mean {:>12.6?}  std {:>12.6?}  min {:?}  max {:?}",
            s.count, s.nan_count, s.mean, s.std, s.min, s.max
        );
    }
    Ok(())
}
