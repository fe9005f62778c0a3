//! The CUDA backend: the fused program as one CUDA C kernel per query (`cuda_gen.rs`),
//! compiled by NVRTC for the device's own architecture, run over each tile.
//!
//! The driver (`libcuda`) is loaded at run time by cudarc; a machine without it gets
//! [`Error::BackendUnavailable`], never a panic. Each tile is staged into pinned (page
//! locked) host memory, copied to the device, computed and copied back on its own stream:
//! two tiles are in flight, so the copies of one overlap the kernel of the other. Every
//! driver call is checked; a failure is [`Error::Device`] with the call and the reason.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::result as cu;
use cudarc::driver::sys;
use rayon::prelude::*;

use crate::backend::cuda_gen::{self, Kernel};
use crate::backend::nvrtc::{self, Nvrtc};
use crate::backend::{Backend, KeySlots, TileOut, TileResult};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec;
use crate::program::FusedProgram;
use crate::source::Dataset;

/// Tiles in flight at once: one staged and copied while another computes.
const DEPTH: usize = 2;

/// One CUDA device, as the driver describes it.
#[derive(Debug, Clone)]
pub(crate) struct DeviceInfo {
    /// The device's name, e.g. `NVIDIA H200`.
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0).
    pub capability: (i32, i32),
    /// Device memory in bytes.
    pub memory: usize,
}

/// The driver: its CUDA version and devices.
#[derive(Debug)]
pub(crate) struct Driver {
    /// The CUDA version the driver supports, e.g. (13, 0).
    pub version: (i32, i32),
    /// Every device, by ordinal.
    pub devices: Vec<DeviceInfo>,
}

fn driver_error(call: &str, e: cu::DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{call}: {name} ({text})")
}

/// Probes the driver once per process: the devices, or why there are none.
pub(crate) fn driver() -> std::result::Result<&'static Driver, String> {
    static DRIVER: OnceLock<std::result::Result<Driver, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: only tries to dlopen libcuda; cudarc would panic on a later call without it.
            if !unsafe { sys::is_culib_present() } {
                return Err("no CUDA driver on this machine (libcuda.so.1 not found)".to_string());
            }
            cu::init().map_err(|e| driver_error("cuInit", e))?;
            let mut v = 0;
            // SAFETY: valid out-pointer.
            unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(|e| driver_error("cuDriverGetVersion", e))?;
            let n = cu::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
            let mut devices = Vec::new();
            for i in 0..n {
                let dev = cu::device::get(i).map_err(|e| driver_error("cuDeviceGet", e))?;
                let name = cu::device::get_name(dev).map_err(|e| driver_error("cuDeviceGetName", e))?;
                use sys::CUdevice_attribute::*;
                // SAFETY: dev came from cuDeviceGet.
                let (major, minor, memory) = unsafe {
                    (
                        cu::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                        cu::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
                        cu::device::total_mem(dev),
                    )
                };
                let capability = (
                    major.map_err(|e| driver_error("cuDeviceGetAttribute", e))?,
                    minor.map_err(|e| driver_error("cuDeviceGetAttribute", e))?,
                );
                devices.push(DeviceInfo { name, capability, memory: memory.map_err(|e| driver_error("cuDeviceTotalMem", e))? });
            }
            if devices.is_empty() {
                return Err(format!("the CUDA driver (CUDA {}.{}) sees no device", v / 1000, v % 1000 / 10));
            }
            Ok(Driver { version: (v / 1000, v % 1000 / 10), devices })
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// The ordinal `auto` picks: device 0 when the driver and an NVRTC that fits it are there.
pub(crate) fn best() -> Option<usize> {
    let d = driver().ok()?;
    let (major, minor) = d.devices.first()?.capability;
    nvrtc::for_device(major * 10 + minor, d.version).ok().map(|_| 0)
}

/// One line per CUDA device (or one saying why there is none) for `tilestream devices`.
pub(crate) fn survey() -> Vec<(String, String)> {
    let d = match driver() {
        Ok(d) => d,
        Err(why) => return vec![("cuda".to_string(), format!("{why}; auto skips CUDA"))],
    };
    d.devices
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let arch = info.capability.0 * 10 + info.capability.1;
            let compiler = match nvrtc::for_device(arch, d.version) {
                Ok(n) => format!("NVRTC {}.{} ({}); auto may pick it", n.version.0, n.version.1, n.path.display()),
                Err(e) => format!("no usable NVRTC, so auto skips it: {e}"),
            };
            (
                format!("cuda:{i}"),
                format!(
                    "{} (sm_{arch}, {:.1} GiB, driver CUDA {}.{}); {compiler}",
                    info.name,
                    info.memory as f64 / (1u64 << 30) as f64,
                    d.version.0,
                    d.version.1
                ),
            )
        })
        .collect()
}

/// A loaded module's kernel function.
#[derive(Clone, Copy)]
struct Function(sys::CUfunction);
// SAFETY: a CUfunction is a driver handle usable from any thread with its context current.
unsafe impl Send for Function {}
// SAFETY: as above.
unsafe impl Sync for Function {}

/// An open device: its primary context, compiler and compiled kernels.
pub(crate) struct Gpu {
    name: String,
    ctx: sys::CUcontext,
    arch: i32,
    nvrtc: &'static Nvrtc,
    /// Kernels by their source (modules stay loaded for the life of the process).
    functions: Mutex<HashMap<String, Function>>,
}

// SAFETY: a CUcontext is a driver handle; every use makes it current on the calling thread.
unsafe impl Send for Gpu {}
// SAFETY: as above; the function cache is behind a mutex.
unsafe impl Sync for Gpu {}

fn device_error(name: &str, message: impl Into<String>) -> Error {
    Error::Device { device: name.to_string(), message: message.into() }
}

impl Gpu {
    fn check<T>(&self, call: &str, r: std::result::Result<T, cu::DriverError>) -> Result<T> {
        r.map_err(|e| device_error(&self.name, driver_error(call, e)))
    }

    /// Makes the device's context current on this thread.
    fn bind(&self) -> Result<()> {
        // SAFETY: ctx is the retained primary context, never released.
        self.check("cuCtxSetCurrent", unsafe { cu::ctx::set_current(self.ctx) })
    }

    /// The kernel function of `k`, compiled and loaded once per process.
    fn function(&self, k: &Kernel) -> Result<Function> {
        let mut cache = self.functions.lock().map_err(|_| device_error(&self.name, "a previous run panicked while compiling"))?;
        if let Some(f) = cache.get(&k.source) {
            return Ok(*f);
        }
        let compile = |cached: bool| {
            let r = if cached { self.nvrtc.compile_cached(&k.source, self.arch) } else { self.nvrtc.compile(&k.source, self.arch) };
            r.map_err(|e| match e {
                Error::Compile { message, .. } => Error::Compile { device: self.name.clone(), message },
                other => other,
            })
        };
        self.bind()?;
        // A CUBIN from the disk cache that the driver refuses is compiled again, once.
        let module = match self.load(&compile(true)?) {
            Err(Error::Device { .. }) => self.load(&compile(false)?)?,
            r => r?,
        };
        let entry = CString::new(k.entry).map_err(|_| device_error(&self.name, "bad kernel name"))?;
        // SAFETY: module was just loaded and is never unloaded.
        let f = Function(self.check("cuModuleGetFunction", unsafe { cu::module::get_function(module, entry) })?);
        cache.insert(k.source.clone(), f);
        Ok(f)
    }

    /// Loads a CUBIN image into the context.
    fn load(&self, cubin: &[u8]) -> Result<sys::CUmodule> {
        if !cubin.starts_with(b"\x7fELF") {
            return Err(device_error(&self.name, "NVRTC returned something that is not a CUBIN image"));
        }
        // SAFETY: cubin is a complete ELF image (checked above), alive during the call.
        unsafe { cu::module::load_data(cubin.as_ptr().cast()) }.map_err(|e| {
            use sys::cudaError_enum::*;
            let hint = match e.0 {
                CUDA_ERROR_INVALID_IMAGE | CUDA_ERROR_NO_BINARY_FOR_GPU | CUDA_ERROR_UNSUPPORTED_PTX_VERSION | CUDA_ERROR_INVALID_PTX => {
                    format!(
                        "; NVRTC {}.{} made code this driver cannot load (set TILESTREAM_NVRTC to an NVRTC no newer than the driver)",
                        self.nvrtc.version.0, self.nvrtc.version.1
                    )
                }
                _ => String::new(),
            };
            match oom_or_device(self, "cuModuleLoadData", e) {
                Error::Device { device, message } => Error::Device { device, message: message + &hint },
                other => other,
            }
        })
    }
}

/// Opens (once per process) device `index`.
pub(crate) fn open(index: usize) -> Result<Arc<Gpu>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let unavailable = |reason: String| Error::BackendUnavailable { device: format!("cuda:{index}"), reason };
    let d = driver().map_err(unavailable)?;
    let info = d.devices.get(index).ok_or_else(|| unavailable(format!("there are {} CUDA devices on this machine", d.devices.len())))?;
    let map = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().map_err(|_| device_error("cuda", "a previous run panicked while opening a device"))?;
    if let Some(g) = map.get(&index) {
        return Ok(g.clone());
    }
    let arch = info.capability.0 * 10 + info.capability.1;
    let nvrtc = nvrtc::for_device(arch, d.version)?;
    let name = format!("cuda:{index} {}", info.name);
    let dev = cu::device::get(index as i32).map_err(|e| device_error(&name, driver_error("cuDeviceGet", e)))?;
    // SAFETY: dev came from cuDeviceGet; the primary context is retained for the process.
    let ctx = unsafe { cu::primary_ctx::retain(dev) }.map_err(|e| device_error(&name, driver_error("cuDevicePrimaryCtxRetain", e)))?;
    let gpu = Arc::new(Gpu { name, ctx, arch, nvrtc, functions: Mutex::new(HashMap::new()) });
    map.insert(index, gpu.clone());
    Ok(gpu)
}

/// An allocation failure: [`Error::DeviceOutOfMemory`] (the driver retries with smaller
/// tiles) when the driver says so, else [`Error::Device`].
fn oom_or_device(gpu: &Gpu, call: &str, e: cu::DriverError) -> Error {
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        Error::DeviceOutOfMemory { device: gpu.name.clone(), message: driver_error(call, e) }
    } else {
        device_error(&gpu.name, driver_error(call, e))
    }
}

/// Page-locked host memory.
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    fn new(gpu: &Gpu, len: usize) -> Result<Pinned> {
        // SAFETY: allocates len bytes (at least 1) of pinned memory; freed in Drop.
        let ptr = unsafe { cu::malloc_host(len.max(1), 0) }
            .map_err(|e| oom_or_device(gpu, &format!("cuMemHostAlloc of {} MiB", len >> 20), e))?;
        Ok(Pinned { ptr: ptr.cast(), len: len.max(1) })
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr holds len bytes, allocated and zeroed in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// The first `n` u64 words, in place (pinned memory is page aligned).
    fn words(&self, n: usize) -> &[u64] {
        bytemuck::cast_slice(&self.bytes()[..n * 8])
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: ptr came from cuMemHostAlloc and is freed once; no copy is in flight (the
        // slot's stream is synchronized first).
        unsafe {
            let _ = cu::free_host(self.ptr.cast());
        }
    }
}

/// Device memory.
struct DevBuf {
    ptr: sys::CUdeviceptr,
}

impl DevBuf {
    fn new(gpu: &Gpu, len: u64) -> Result<DevBuf> {
        // SAFETY: plain device allocation (never managed memory); freed in Drop.
        let ptr = unsafe { cu::malloc_sync(len.max(8) as usize) }
            .map_err(|e| oom_or_device(gpu, &format!("cuMemAlloc of {} MiB", len >> 20), e))?;
        Ok(DevBuf { ptr })
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAlloc, freed once, after its stream was synchronized.
        unsafe {
            let _ = cu::memory_free(self.ptr);
        }
    }
}

/// The buffers and stream of one tile in flight.
struct Slot {
    stream: sys::CUstream,
    d_in: DevBuf,
    d_part: DevBuf,
    d_hist: DevBuf,
    d_out: DevBuf,
    h_in: Pinned,
    h_part: Pinned,
    h_hist: Pinned,
    h_out: Pinned,
}

// SAFETY: the raw pointers are driver allocations owned by the slot, used under its mutex.
unsafe impl Send for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: waits for the slot's work before its buffers are freed, then destroys the
        // stream it created.
        unsafe {
            let _ = cu::stream::synchronize(self.stream);
            let _ = cu::stream::destroy(self.stream);
        }
    }
}

/// The CUDA backend on one device.
pub(crate) struct Cuda {
    gpu: Arc<Gpu>,
}

impl Cuda {
    pub(crate) fn new(index: usize) -> Result<Cuda> {
        Ok(Cuda { gpu: open(index)? })
    }
}

/// A query compiled for the device, with a ring of buffers.
pub(crate) struct Prepared {
    kernel: Kernel,
    function: Function,
    slots: Vec<Mutex<Slot>>,
    submitted: AtomicUsize,
    /// Rows per thread block row (a block, or a group-by unit).
    unit: u64,
    inputs: Vec<usize>,
    dtypes: Vec<DType>,
    hist_bins: Vec<u32>,
    out_sizes: Vec<usize>,
    /// Partials per unit (sweeps of a group-by, else 1) times words per partial.
    part_words_per_unit: u64,
}

/// A tile submitted to the device.
pub(crate) struct Ticket {
    slot: usize,
    rows: u64,
    units: u64,
}

/// Copies a tile's rows of one column from the mapping into `dst`, packed, on every core.
fn stage(src: &[u8], stride: usize, size: usize, rows: usize, dst: &mut [u8]) {
    const CHUNK_ROWS: usize = 1 << 18;
    let dst = &mut dst[..rows * size];
    if stride == size {
        dst.par_chunks_mut(CHUNK_ROWS * size).zip(src[..rows * size].par_chunks(CHUNK_ROWS * size)).for_each(|(d, s)| d.copy_from_slice(s));
    } else {
        dst.par_chunks_mut(CHUNK_ROWS * size).enumerate().for_each(|(c, d)| {
            for (k, out) in d.chunks_exact_mut(size).enumerate() {
                let r = (c * CHUNK_ROWS + k) * stride;
                out.copy_from_slice(&src[r..r + size]);
            }
        });
    }
}

impl Backend for Cuda {
    type Prepared = Prepared;
    type Ticket = Ticket;

    fn depth(&self) -> usize {
        DEPTH
    }

    fn tile_rows(&self, prog: &FusedProgram, ds: &Dataset, budget: u64) -> u64 {
        // DEPTH tiles are staged at once in pinned memory: each gets its share of the budget.
        let share = budget / DEPTH as u64;
        let unit = self.unit_rows(prog, ds);
        let mut rows = exec::tile_rows(prog, ds, share, unit);
        if let Some(k) = prog.key {
            // A group-by's partials: per unit, up to 256 sweeps of 256 key records.
            let sweeps = if ds.columns()[prog.inputs[k]].dtype.size() == 1 { 1 } else { 256 };
            let per_unit = sweeps * cuda_gen::THREADS as u64 * (1 + cuda_gen::STAT_WORDS as u64 * prog.stats.len() as u64) * 8;
            rows = rows.min((share / 2 / per_unit).max(1) * unit);
        }
        // Row indices in the kernels are 32-bit.
        rows = rows.min((1u64 << 31) / unit * unit);
        (rows / unit).max(1) * unit
    }

    fn prepare(&self, prog: &FusedProgram, ds: &Dataset, tile_rows: u64) -> Result<Prepared> {
        let dtypes: Vec<DType> = prog.inputs.iter().map(|&c| ds.columns()[c].dtype).collect();
        let keys = match prog.key {
            Some(k) if dtypes[k].is_float() => return Err(Error::Unsupported("a group-by on a float key on the cuda backend".to_string())),
            Some(k) if dtypes[k].size() > 1 => Some(crate::backend::group_keys(ds, prog.inputs[k], cuda_gen::THREADS as u64, "cuda")?),
            _ => None,
        };
        crate::backend::InjectedFault::at_prepare(&self.gpu.name, tile_rows)?;
        let kernel = cuda_gen::generate(prog, &dtypes, tile_rows, keys)?;
        let function = self.gpu.function(&kernel)?;
        let unit = self.unit_rows(prog, ds);
        let units = tile_rows.div_ceil(unit);
        let part_words_per_unit = kernel.sweeps * kernel.part_words * if prog.key.is_some() { cuda_gen::THREADS as u64 } else { 1 };
        let part_bytes = units * part_words_per_unit * 8;
        self.gpu.bind()?;
        let mut slots = Vec::with_capacity(DEPTH);
        for _ in 0..DEPTH {
            let stream = self.gpu.check("cuStreamCreate", cu::stream::create(cu::stream::StreamKind::NonBlocking))?;
            let buffers = (|| -> Result<Slot> {
                Ok(Slot {
                    stream,
                    d_in: DevBuf::new(&self.gpu, kernel.in_bytes)?,
                    d_part: DevBuf::new(&self.gpu, part_bytes)?,
                    d_hist: DevBuf::new(&self.gpu, kernel.hist_words * 8)?,
                    d_out: DevBuf::new(&self.gpu, kernel.out_bytes)?,
                    h_in: Pinned::new(&self.gpu, kernel.in_bytes as usize)?,
                    h_part: Pinned::new(&self.gpu, part_bytes as usize)?,
                    h_hist: Pinned::new(&self.gpu, kernel.hist_words as usize * 8)?,
                    h_out: Pinned::new(&self.gpu, if prog.outputs.is_empty() { 1 } else { kernel.out_bytes as usize })?,
                })
            })();
            match buffers {
                Ok(mut s) => {
                    // A table of keys: the input buffer's first bytes, copied once per query
                    // (tiles write their columns after it). The copy is queued on the slot's
                    // stream, before any tile's work, from pinned memory that stays untouched.
                    if let Some(KeySlots::Table(t)) = &kernel.group_keys {
                        s.h_in.bytes_mut()[..t.len() * 8].copy_from_slice(bytemuck::cast_slice(t));
                        // SAFETY: d_in holds the table's bytes; the pinned source lives as long
                        // as the slot and its prefix is never written again.
                        let copied = self.gpu.check("cuMemcpyHtoDAsync", unsafe {
                            cu::memcpy_htod_async(s.d_in.ptr, &s.h_in.bytes()[..t.len() * 8], s.stream)
                        });
                        if let Err(e) = copied {
                            // SAFETY: as below; nothing else was queued on the stream.
                            unsafe {
                                let _ = cu::stream::destroy(stream);
                            }
                            return Err(e);
                        }
                    }
                    slots.push(Mutex::new(s))
                }
                Err(e) => {
                    // SAFETY: the stream was just created and has no work.
                    unsafe {
                        let _ = cu::stream::destroy(stream);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Prepared {
            kernel,
            function,
            slots,
            submitted: AtomicUsize::new(0),
            unit,
            inputs: prog.inputs.clone(),
            dtypes,
            hist_bins: prog.hists.iter().map(|h| h.bins).collect(),
            out_sizes: prog.outputs.iter().map(|o| o.dtype.size()).collect(),
            part_words_per_unit,
        })
    }

    fn submit(&self, prep: &Prepared, ds: &Dataset, tile: Range<u64>, _out: Option<&mut TileOut>) -> Result<Ticket> {
        let gpu = &self.gpu;
        gpu.bind()?;
        let rows = tile.end - tile.start;
        let units = rows.div_ceil(prep.unit);
        let k = &prep.kernel;
        let submitted = prep.submitted.fetch_add(1, Ordering::Relaxed);
        crate::backend::InjectedFault::at_tile(&gpu.name, submitted)?;
        let index = submitted % DEPTH;
        let mut slot = prep.slots[index].lock().map_err(|_| device_error(&gpu.name, "a previous run panicked during a tile"))?;
        let slot = &mut *slot;
        let stream = slot.stream;
        // Stage the tile's columns (each read once from the mapped file), then copy them.
        for (i, &col) in prep.inputs.iter().enumerate() {
            let size = prep.dtypes[i].size();
            let c = &ds.columns()[col];
            let span = ds.column_span(col, tile.start, tile.end);
            let at = k.in_offsets[i] as usize;
            stage(span, c.stride as usize, size, rows as usize, &mut slot.h_in.bytes_mut()[at..]);
            let bytes = &slot.h_in.bytes()[at..at + rows as usize * size];
            // SAFETY: the pinned source stays alive and untouched until the stream is
            // synchronized in `collect`; the destination holds the whole column.
            gpu.check("cuMemcpyHtoDAsync", unsafe { cu::memcpy_htod_async(slot.d_in.ptr + at as u64, bytes, stream) })?;
        }
        if !prep.hist_bins.is_empty() {
            // SAFETY: d_hist holds hist_words words.
            gpu.check("cuMemsetD8Async", unsafe { cu::memset_d8_async(slot.d_hist.ptr, 0, k.hist_words as usize * 8, stream) })?;
        }
        let mut rows32 = u32::try_from(rows)
            .map_err(|_| device_error(&gpu.name, format!("a tile of {rows} rows (the kernels index rows in 32 bits)")))?;
        let (mut p_in, mut p_part, mut p_hist, mut p_out) = (slot.d_in.ptr, slot.d_part.ptr, slot.d_hist.ptr, slot.d_out.ptr);
        let mut base = match &k.group_keys {
            Some(KeySlots::Range(lo, _)) => *lo,
            _ => 0,
        };
        let mut params: Vec<*mut c_void> = if k.group_keys.is_some() {
            vec![
                (&mut p_in as *mut u64).cast(),
                (&mut p_part as *mut u64).cast(),
                (&mut rows32 as *mut u32).cast(),
                (&mut base as *mut i64).cast(),
            ]
        } else {
            vec![
                (&mut p_in as *mut u64).cast(),
                (&mut p_part as *mut u64).cast(),
                (&mut p_hist as *mut u64).cast(),
                (&mut p_out as *mut u64).cast(),
                (&mut rows32 as *mut u32).cast(),
            ]
        };
        // SAFETY: the parameters match the kernel's signature (in, part, hist, out, rows or
        // in, part, rows, base) and live until the call returns (the driver copies them).
        gpu.check("cuLaunchKernel", unsafe {
            cu::launch_kernel(prep.function.0, (units as u32, k.sweeps as u32, 1), (cuda_gen::THREADS, 1, 1), 0, stream, &mut params)
        })?;
        let part_words = (units * prep.part_words_per_unit) as usize;
        // SAFETY: the pinned destinations are not read before `collect` synchronizes.
        unsafe {
            gpu.check("cuMemcpyDtoHAsync", cu::memcpy_dtoh_async(&mut slot.h_part.bytes_mut()[..part_words * 8], slot.d_part.ptr, stream))?;
            if !prep.hist_bins.is_empty() {
                gpu.check(
                    "cuMemcpyDtoHAsync",
                    cu::memcpy_dtoh_async(&mut slot.h_hist.bytes_mut()[..k.hist_words as usize * 8], slot.d_hist.ptr, stream),
                )?;
            }
            for (i, &size) in prep.out_sizes.iter().enumerate() {
                let at = k.out_offsets[i] as usize;
                let dst = &mut slot.h_out.bytes_mut()[at..at + rows as usize * size];
                gpu.check("cuMemcpyDtoHAsync", cu::memcpy_dtoh_async(dst, slot.d_out.ptr + at as u64, stream))?;
            }
        }
        Ok(Ticket { slot: index, rows, units })
    }

    fn collect(&self, prep: &Prepared, t: Ticket, out: Option<&mut TileOut>) -> Result<TileResult> {
        let gpu = &self.gpu;
        gpu.bind()?;
        let slot = prep.slots[t.slot].lock().map_err(|_| device_error(&gpu.name, "a previous run panicked during a tile"))?;
        // SAFETY: the slot's own stream; errors of the kernel or the copies surface here.
        gpu.check("cuStreamSynchronize (the tile's kernel and copies)", unsafe { cu::stream::synchronize(slot.stream) })?;
        let k = &prep.kernel;
        let part = slot.h_part.words((t.units * prep.part_words_per_unit) as usize);
        if k.group_keys.is_some() {
            return Ok(cuda_gen::decode_groups(k, t.units as usize, part));
        }
        let hist = if prep.hist_bins.is_empty() { &[][..] } else { slot.h_hist.words(k.hist_words as usize) };
        if let Some(out) = out {
            for (i, &size) in prep.out_sizes.iter().enumerate() {
                let at = k.out_offsets[i] as usize;
                let n = t.rows as usize * size;
                out.columns[i][..n].copy_from_slice(&slot.h_out.bytes()[at..at + n]);
            }
        }
        Ok(cuda_gen::decode(k, t.units as usize, part, hist, &prep.hist_bins))
    }
}

/// Host → device bandwidth from pinned memory and device → device copy bandwidth, in
/// bytes/s: `bytes` moved in chunks of 64 MiB, the best of `reps` runs.
pub(crate) fn bandwidths(index: usize, bytes: u64, reps: usize) -> Result<(f64, f64)> {
    let gpu = open(index)?;
    gpu.bind()?;
    const CHUNK: u64 = 64 << 20;
    let host = Pinned::new(&gpu, CHUNK as usize)?;
    let a = DevBuf::new(&gpu, CHUNK)?;
    let b = DevBuf::new(&gpu, CHUNK)?;
    let stream = gpu.check("cuStreamCreate", cu::stream::create(cu::stream::StreamKind::NonBlocking))?;
    let run = |d2d: bool| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            let mut left = bytes.max(1);
            while left > 0 {
                let n = left.min(CHUNK);
                // SAFETY: buffers of CHUNK bytes; the stream is synchronized below.
                unsafe {
                    if d2d {
                        gpu.check("cuMemcpyDtoDAsync", cu::memcpy_dtod_async(b.ptr, a.ptr, n as usize, stream))?;
                    } else {
                        gpu.check("cuMemcpyHtoDAsync", cu::memcpy_htod_async(a.ptr, &host.bytes()[..n as usize], stream))?;
                    }
                }
                left -= n;
            }
            // SAFETY: our stream.
            gpu.check("cuStreamSynchronize", unsafe { cu::stream::synchronize(stream) })?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(bytes as f64 / best.max(1e-9))
    };
    let r = run(false).and_then(|up| Ok((up, run(true)?)));
    // SAFETY: the stream is idle (synchronized, or never used after an error it returned).
    unsafe {
        let _ = cu::stream::synchronize(stream);
        let _ = cu::stream::destroy(stream);
    }
    r
}
