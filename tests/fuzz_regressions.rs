//! Replays every input under `tests/fuzz_regressions/` through the checks of the matching
//! fuzz target in `fuzz/fuzz_targets/` (file names start with the target's name), so inputs
//! that once crashed stay fixed without a nightly toolchain in CI.

use std::path::Path;

use tilestream::DType;
use tilestream::source::{npy, raw, safetensors};

fn check(target: &str, data: &[u8]) {
    match target {
        "safetensors" | "npy" => {
            let parsed = if target == "npy" {
                npy::parse_npy(Path::new("fuzz.npy"), "fuzz", data)
            } else {
                safetensors::parse_safetensors(Path::new("fuzz.safetensors"), data)
            };
            if let Ok(f) = parsed {
                for c in &f.columns {
                    let last = c.offset + f.rows.saturating_sub(1) * c.stride + c.dtype.size() as u64;
                    assert!(f.rows == 0 || last <= data.len() as u64, "column `{}` runs past the file", c.name);
                }
            }
        }
        "raw" => {
            if data.len() < 10 {
                return;
            }
            let dtype = DType::ALL[data[0] as usize % DType::ALL.len()];
            let cols = u64::from_le_bytes(data[1..9].try_into().unwrap()) >> (data[9] % 64);
            let len = (data.len() as u64).wrapping_mul(0x9E37_79B9) >> (data[9] % 32);
            if let Ok(f) = raw::parse_raw(Path::new("fuzz.bin"), "fuzz", len, dtype, cols) {
                assert_eq!(f.rows * cols * dtype.size() as u64, len);
            }
        }
        "expr" => {
            let Ok(text) = std::str::from_utf8(data) else { return };
            if let Ok(e) = tilestream::parse_expr(text) {
                let printed = e.to_string();
                assert_eq!(tilestream::parse_expr(&printed).expect("printed expression parses").to_string(), printed);
            }
        }
        other => panic!("no fuzz target named `{other}`"),
    }
}

#[test]
fn fuzz_regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let target = name.split('-').next().unwrap().to_string();
        check(&target, &std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 4, "expected at least one input per target in {}", dir.display());
}
