//! # tilestream
//!
//! Streams memory-mapped datasets larger than RAM, in tiles, through fused kernels that
//! filter rows, aggregate (statistics, histograms, group-bys) and transform features
//! (standardize, min-max, log1p, clip, fill-NaN, casts to f16/bf16), then write the result.
//! One pass reads each referenced byte once; memory stays near the configured budget.
//!
//! ```
//! use tilestream::{Dataset, Device, all_stats, col, lit};
//! # fn main() -> tilestream::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("tilestream-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let path = dir.join("data.safetensors");
//! tilestream::synth::generate(&path, 10_000, 3, 42, true)?;   // f0, f1, f2 and a u8 `key`
//! let ds = Dataset::open(&path)?;
//! let result = ds
//!     .lazy()
//!     .filter(col("f0").gt(lit(0.5)).and(col("key").lt(lit(32))))
//!     .aggregate([all_stats(["f1", "f2"])])
//!     .collect(&Device::auto())?;
//! let f1 = result.column("f1").unwrap();
//! assert!(f1.count <= result.rows_selected);
//! println!("{} rows selected, mean of f1 = {:?}", result.rows_selected, f1.mean);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod accum;
mod backend;
pub mod dtype;
pub mod error;
pub mod exec;
pub mod expr;
pub mod fit;
pub mod limits;
pub mod ops;
mod parse;
pub mod plan;
pub mod program;
#[doc(hidden)]
pub mod reference;
pub mod sink;
pub mod source;
pub mod synth;

pub use accum::{ColumnStats, Number};
pub use backend::{Device, GPU_MIN_BYTES};
pub use dtype::DType;
pub use error::{Error, Result};
pub use exec::{MAX_THREADS, RunOptions};
pub use expr::{Expr, col, lit};
pub use fit::Fit;
pub use parse::parse_expr;
pub use plan::{
    Aggregate, AggregateQuery, AggregateResult, Cols, GroupStats, Histogram, LazyFrame, RunReport, SinkOptions, SinkReport, Transform,
    TransformQuery, all_stats, apply_fit, hist,
};
pub use source::{Dataset, FileKind};
