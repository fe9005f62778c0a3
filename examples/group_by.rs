//! A filtered group-by: per-key statistics of two columns over the rows where
//! `f0 > 0 && key < 8`, in one fused pass.
//!
//! `cargo run --release --example group_by`

use tilestream::{Dataset, Device, all_stats, parse_expr};

fn main() -> tilestream::Result<()> {
    let path = std::env::temp_dir().join("tilestream-group-by.safetensors");
    tilestream::synth::generate(&path, 2_000_000, 3, 2, true)?;
    let ds = Dataset::open(&path)?;
    let r =
        ds.lazy().filter(parse_expr("f0 > 0 && key < 8")?).group_by("key").aggregate([all_stats(["f1", "f2"])]).collect(&Device::auto())?;
    println!("{} of {} rows selected", r.rows_selected, r.rows);
    for g in &r.groups {
        let f1 = &g.columns[0].1;
        let f2 = &g.columns[1].1;
        println!(
            "key {:>2}: {:>7} rows  mean f1 {:.4}  mean f2 {:.4}",
            g.key,
            g.rows,
            f1.mean.unwrap_or(f64::NAN),
            f2.mean.unwrap_or(f64::NAN)
        );
    }
    std::fs::remove_file(&path).ok();
    Ok(())
}
