#![no_main]
//! Any bytes as a .safetensors file: an error or a valid layout, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = tilestream::source::safetensors::parse_safetensors(std::path::Path::new("fuzz.safetensors"), data) {
        for c in &f.columns {
            // Every row of every column lies inside the file.
            let last = c.offset + f.rows.saturating_sub(1) * c.stride + c.dtype.size() as u64;
            assert!(f.rows == 0 || last <= data.len() as u64);
        }
    }
});
