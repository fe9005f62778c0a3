//! Writers: atomically written `.safetensors` and `.npy` tables, streamed tile by tile.

pub mod atomic;
pub mod table;
