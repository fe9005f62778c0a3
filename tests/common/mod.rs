//! Shared helpers for the integration tests: seeded random data written as safetensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use tilestream::DType;
use tilestream::sink::table::{OutputColumn, OutputFormat, TableWriter};
use tilestream::synth::Rng;

/// A fresh seed from the clock (or `TEST_SEED`), printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    eprintln!("{test}: seed = {s} (rerun with TEST_SEED={s})");
    s
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ts-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// `path(name)` as a `String`, for argument lists.
    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One column of test data, as little-endian bytes.
pub struct ColData {
    pub name: String,
    pub dtype: DType,
    pub bytes: Vec<u8>,
}

/// A float with NaN / ±inf / denormals / large outliers mixed in at the given rate.
pub fn awkward(rng: &mut Rng, rate: f64) -> f64 {
    let u = rng.uniform();
    if u < rate * 0.4 {
        f64::NAN
    } else if u < rate * 0.55 {
        f64::INFINITY
    } else if u < rate * 0.7 {
        f64::NEG_INFINITY
    } else if u < rate * 0.8 {
        1e-40
    } else if u < rate {
        rng.normal() * 1e6
    } else {
        rng.normal() * 3.0 + 1.0
    }
}

/// The standard mixed-dtype test table: every dtype, NaN/inf in the floats.
pub fn mixed_columns(rng: &mut Rng, rows: usize, special_rate: f64) -> Vec<ColData> {
    let mut cols = Vec::new();
    let mut push = |name: &str, dtype: DType, bytes: Vec<u8>| cols.push(ColData { name: name.into(), dtype, bytes });
    let a: Vec<f32> = (0..rows).map(|_| awkward(rng, special_rate) as f32).collect();
    push("a", DType::F32, bytemuck::cast_slice(&a).to_vec());
    let b: Vec<f64> = (0..rows).map(|_| awkward(rng, special_rate) * 1e-3 + 1e8).collect();
    push("b", DType::F64, bytemuck::cast_slice(&b).to_vec());
    let c: Vec<u16> = (0..rows).map(|_| f16::from_f64(awkward(rng, special_rate)).to_bits()).collect();
    push("c", DType::F16, bytemuck::cast_slice(&c).to_vec());
    let d: Vec<u16> = (0..rows).map(|_| bf16::from_f64(awkward(rng, special_rate) * 100.0).to_bits()).collect();
    push("d", DType::BF16, bytemuck::cast_slice(&d).to_vec());
    let k: Vec<u8> = (0..rows).map(|_| (rng.uniform() * rng.uniform() * 20.0) as u8).collect();
    push("k", DType::U8, k);
    let i: Vec<i32> = (0..rows).map(|_| (rng.normal() * 1000.0) as i32).collect();
    push("i", DType::I32, bytemuck::cast_slice(&i).to_vec());
    let e: Vec<i64> = (0..rows).map(|_| (1i64 << 40) + (rng.normal() * 1e6) as i64).collect();
    push("e", DType::I64, bytemuck::cast_slice(&e).to_vec());
    let s: Vec<i16> = (0..rows).map(|_| (rng.uniform() * 600.0 - 300.0) as i16).collect();
    push("s", DType::I16, bytemuck::cast_slice(&s).to_vec());
    let u: Vec<u64> = (0..rows).map(|_| rng.next_u64() >> 20).collect();
    push("u", DType::U64, bytemuck::cast_slice(&u).to_vec());
    let f: Vec<u8> = (0..rows).map(|_| (rng.uniform() < 0.3) as u8).collect();
    push("flag", DType::Bool, f);
    let all_nan: Vec<f32> = (0..rows).map(|i| if i % 2 == 0 { f32::NAN } else { -f32::NAN }).collect();
    push("nan", DType::F32, bytemuck::cast_slice(&all_nan).to_vec());
    cols
}

/// Writes columns as a safetensors file of 1-D tensors.
pub fn write_safetensors(path: &Path, rows: usize, cols: &[ColData]) {
    let spec = cols.iter().map(|c| OutputColumn { name: c.name.clone(), dtype: c.dtype }).collect();
    let mut w = TableWriter::create(path, OutputFormat::Safetensors, spec, rows as u64, true).expect("create");
    let slices: Vec<&[u8]> = cols.iter().map(|c| c.bytes.as_slice()).collect();
    w.write_tile(rows, &slices).expect("write");
    w.finish().expect("finish");
}

/// Writes a safetensors file of tensors of any shape, `(name, dtype, shape, bytes)`, in order.
#[allow(dead_code)] // not every test binary writes tensors of more than one dimension
pub fn write_safetensors_tensors(path: &Path, tensors: &[(&str, DType, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut at = 0;
    for (name, dtype, shape, bytes) in tensors {
        let entry = serde_json::json!({"dtype": dtype.safetensors_name(), "shape": shape, "data_offsets": [at, at + bytes.len()]});
        header.insert(name.to_string(), entry);
        at += bytes.len();
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).expect("write safetensors");
}

/// Units in the last place between two f32 values (0 when both are NaN).
pub fn ulp_f32(a: f32, b: f32) -> u32 {
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u32::MAX;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 { i32::MIN - i } else { i }
    };
    (key(a) as i64 - key(b) as i64).unsigned_abs().min(u32::MAX as u64) as u32
}

/// Units in the last place between two 16-bit floats given as f32 values of the same format.
pub fn ulp_f16(a: f16, b: f16) -> u32 {
    ulp_bits16(a.to_bits(), b.to_bits(), a.is_nan(), b.is_nan())
}

/// ulp distance of two bf16 values.
pub fn ulp_bf16(a: bf16, b: bf16) -> u32 {
    ulp_bits16(a.to_bits(), b.to_bits(), a.is_nan(), b.is_nan())
}

fn ulp_bits16(a: u16, b: u16, an: bool, bn: bool) -> u32 {
    if an && bn {
        return 0;
    }
    if an || bn {
        return u32::MAX;
    }
    let key = |x: u16| {
        let i = x as i16 as i32;
        if i < 0 { -(i & 0x7fff) } else { i }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// The wgpu adapter the cross-backend tests run on (`--device wgpu`: any adapter, software
/// ones included), or none. Without one the caller's GPU half is skipped with a note on
/// stderr; with `REQUIRE_GPU_ADAPTER=1` (CI) a missing adapter fails the test instead.
pub fn gpu_device() -> Option<tilestream::Device> {
    match tilestream::Device::from_name("wgpu") {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("REQUIRE_GPU_ADAPTER").is_ok_and(|v| v == "1") {
                panic!("REQUIRE_GPU_ADAPTER=1 but there is no wgpu adapter: {e}");
            }
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

/// The CUDA device, if there is one (else prints why the test skips it). With
/// `REQUIRE_CUDA=1` (the GPU check script) a missing device fails the test.
pub fn cuda_device() -> Option<tilestream::Device> {
    match tilestream::Device::from_name("cuda") {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("REQUIRE_CUDA=1 but there is no CUDA device: {e}");
            }
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Every GPU: the wgpu adapter and the CUDA device, where there are.
pub fn gpu_devices() -> Vec<tilestream::Device> {
    gpu_device().into_iter().chain(cuda_device()).collect()
}

/// The CPU, then every GPU.
/// `TILESTREAM_TEST_CPU_ONLY=1` leaves the GPUs out (CI reruns the suite that way under
/// each older SIMD level, `TILESTREAM_SIMD=avx2|sse2`, whose GPU runs would be repeats).
pub fn all_devices() -> Vec<tilestream::Device> {
    let mut v = vec![tilestream::Device::Cpu];
    if std::env::var_os("TILESTREAM_TEST_CPU_ONLY").is_some() {
        eprintln!("TILESTREAM_TEST_CPU_ONLY: the CPU only");
        return v;
    }
    v.extend(gpu_devices());
    v
}
