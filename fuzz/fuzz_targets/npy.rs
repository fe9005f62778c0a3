#![no_main]
//! Any bytes as a .npy file: an error or a valid layout, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = tilestream::source::npy::parse_npy(std::path::Path::new("fuzz.npy"), "fuzz", data) {
        for c in &f.columns {
            let last = c.offset + f.rows.saturating_sub(1) * c.stride + c.dtype.size() as u64;
            assert!(f.rows == 0 || last <= data.len() as u64);
        }
    }
});
