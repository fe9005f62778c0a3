#![no_main]
//! A raw file's length, dtype and column count from the input: an error or a valid layout.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let dtype = tilestream::DType::ALL[data[0] as usize % tilestream::DType::ALL.len()];
    let cols = u64::from_le_bytes(data[1..9].try_into().unwrap_or([0; 8])) >> (data[9] % 64);
    let len = (data.len() as u64).wrapping_mul(0x9E37_79B9) >> (data[9] % 32);
    if let Ok(f) = tilestream::source::raw::parse_raw(std::path::Path::new("fuzz.bin"), "fuzz", len, dtype, cols) {
        assert_eq!(f.rows * cols * dtype.size() as u64, len);
    }
});
