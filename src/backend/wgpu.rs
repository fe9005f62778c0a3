//! The wgpu backend: the fused program as one WGSL compute kernel per query, run over each
//! tile on a Vulkan, Metal or DX12 adapter.
//!
//! Every wgpu call that can fail is inside an error scope or reported through the device's
//! uncaptured-error handler, which records the error instead of panicking; the next check
//! turns it into [`Error::Device`] or [`Error::Compile`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use crate::accum::{BlockStats, HistAcc};
use crate::backend::wgsl::{self, Domain, Kernel, STAT_COUNTERS, STAT_WORDS};
use crate::backend::{Backend, BlockPartial, KeySlots, TileOut, TileResult};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{self, BLOCK_ROWS};
use crate::program::FusedProgram;
use crate::source::Dataset;

/// Most workgroups of one dispatch (downlevel limit): one per block of a tile.
const MAX_BLOCKS: u64 = 65_535;

/// One adapter found by wgpu.
#[derive(Debug, Clone)]
pub(crate) struct AdapterEntry {
    adapter: wgpu::Adapter,
    /// What the adapter says about itself.
    pub info: wgpu::AdapterInfo,
}

impl AdapterEntry {
    /// A real GPU (discrete or integrated), not a CPU or software adapter.
    pub fn is_hardware(&self) -> bool {
        matches!(self.info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu)
    }
    /// `name (backend, type)`.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }
}

/// Every adapter on this machine, enumerated once per process.
pub(crate) fn adapters() -> &'static [AdapterEntry] {
    static ADAPTERS: OnceLock<Vec<AdapterEntry>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let list = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        list.into_iter()
            .map(|adapter| {
                let info = adapter.get_info();
                AdapterEntry { adapter, info }
            })
            .collect()
    })
}

/// The adapter `auto` picks: a discrete GPU, else an integrated one; never a CPU adapter.
pub(crate) fn best_hardware() -> Option<usize> {
    let list = adapters();
    let pick = |t: wgpu::DeviceType| list.iter().position(|a| a.info.device_type == t);
    pick(wgpu::DeviceType::DiscreteGpu).or_else(|| pick(wgpu::DeviceType::IntegratedGpu))
}

/// The adapter `wgpu` (no index) picks: the best hardware one, else any.
pub(crate) fn best_any() -> Option<usize> {
    best_hardware().or(if adapters().is_empty() { None } else { Some(0) })
}

/// An open device on one adapter, shared by every query that runs on it.
pub(crate) struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    name: String,
    limits: wgpu::Limits,
    /// Errors reported outside any error scope (wgpu's default handler would panic).
    errors: Arc<Mutex<Vec<String>>>,
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    /// Compiled kernels by their WGSL source.
    pipelines: Mutex<HashMap<String, wgpu::ComputePipeline>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("name", &self.name).finish_non_exhaustive()
    }
}

fn device_error(name: &str, message: impl Into<String>) -> Error {
    Error::Device { device: name.to_string(), message: message.into() }
}

/// Opens (once per process) the device of adapter `index`.
pub(crate) fn open(index: usize) -> Result<Arc<Gpu>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let map = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().map_err(|_| device_error("wgpu", "a previous run panicked while opening a device"))?;
    if let Some(g) = map.get(&index) {
        return Ok(g.clone());
    }
    let entry = adapters().get(index).ok_or_else(|| Error::BackendUnavailable {
        device: format!("wgpu:{index}"),
        reason: format!("there are {} wgpu adapters on this machine (`tilestream devices` lists them)", adapters().len()),
    })?;
    let name = format!("wgpu:{index} {}", entry.info.name);
    let have = entry.adapter.limits();
    // Downlevel limits everywhere except buffer sizes, which only size the tiles.
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: have.max_storage_buffer_binding_size,
        max_buffer_size: have.max_buffer_size,
        ..wgpu::Limits::downlevel_defaults()
    };
    let (device, queue) = pollster::block_on(entry.adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("tilestream"),
        required_features: wgpu::Features::empty(),
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| device_error(&name, format!("cannot open the device: {e}")))?;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        if let Ok(mut v) = sink.lock() {
            v.push(e.to_string());
        }
    }));
    let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("tilestream fused"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
                count: None,
            },
            storage(1, true),
            storage(2, false),
            storage(3, false),
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("tilestream fused"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let gpu = Arc::new(Gpu { device, queue, name, limits, errors, layout, pipeline_layout, pipelines: Mutex::new(HashMap::new()) });
    gpu.check()?;
    map.insert(index, gpu.clone());
    Ok(gpu)
}

impl Gpu {
    /// Turns errors recorded by the uncaptured-error handler into an [`Error::Device`].
    fn check(&self) -> Result<()> {
        let mut v = self.errors.lock().map_err(|_| device_error(&self.name, "the error log is poisoned"))?;
        if v.is_empty() {
            return Ok(());
        }
        let msg = v.join("; ");
        v.clear();
        Err(device_error(&self.name, msg))
    }

    /// The compute pipeline of a kernel, compiled once per process.
    fn pipeline(&self, source: &str) -> Result<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().map_err(|_| device_error(&self.name, "the pipeline cache is poisoned"))?;
        if let Some(p) = cache.get(source) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("tilestream fused"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("tilestream fused"),
            layout: Some(&self.pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Compile { device: self.name.clone(), message: e.to_string() });
        }
        self.check()?;
        cache.insert(source.to_string(), pipeline.clone());
        Ok(pipeline)
    }
}

/// The wgpu backend over one open device.
pub(crate) struct Wgpu {
    gpu: Arc<Gpu>,
}

impl Wgpu {
    pub(crate) fn new(index: usize) -> Result<Wgpu> {
        Ok(Wgpu { gpu: open(index)? })
    }
}

/// Tiles in flight at once: one staged while another computes.
const DEPTH: usize = 2;

/// The buffers of one tile in flight.
struct Slot {
    bind: wgpu::BindGroup,
    params: wgpu::Buffer,
    inp: wgpu::Buffer,
    part: wgpu::Buffer,
    atom: wgpu::Buffer,
    part_read: wgpu::Buffer,
    atom_read: wgpu::Buffer,
}

/// A query compiled for the device: the kernel, its pipeline and a ring of buffers.
pub(crate) struct Prepared {
    kernel: Kernel,
    pipeline: wgpu::ComputePipeline,
    slots: Vec<Slot>,
    /// Tiles submitted so far (tile i uses slot i % DEPTH).
    submitted: std::sync::atomic::AtomicUsize,
    /// Rows per workgroup and per partial (a block, or a group-by unit).
    unit: u64,
    /// Dataset column of each input slot, and its dtype.
    inputs: Vec<usize>,
    dtypes: Vec<DType>,
    hist_bins: Vec<u32>,
    out_sizes: Vec<usize>,
}

/// A mapping's outcome, set by wgpu's callback.
type MapStatus = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// A tile submitted to the device.
pub(crate) struct Ticket {
    slot: usize,
    /// The submission, to wait for it (and not for later tiles).
    index: wgpu::SubmissionIndex,
    rows: u64,
    blocks: u64,
    part_bytes: u64,
    atom_bytes: u64,
    part_mapped: MapStatus,
    /// None when nothing is read back from the atomic buffer.
    atom_mapped: Option<MapStatus>,
}

impl Backend for Wgpu {
    type Prepared = Prepared;
    type Ticket = Ticket;

    fn depth(&self) -> usize {
        DEPTH
    }

    fn tile_rows(&self, prog: &FusedProgram, ds: &Dataset, budget: u64) -> u64 {
        let in_bytes: u64 = prog.inputs.iter().map(|&c| ds.columns()[c].dtype.size() as u64).sum();
        let out_bytes: u64 = prog.outputs.iter().map(|o| o.dtype.size() as u64).sum();
        let binding = self.gpu.limits.max_storage_buffer_binding_size.min(self.gpu.limits.max_buffer_size);
        // Leave room for histogram thresholds and counts (at most a few MiB).
        let room = binding.saturating_sub(4 << 20);
        // DEPTH tiles are staged at once: each gets its share of the budget.
        let unit = self.unit_rows(prog, ds);
        let mut rows = exec::tile_rows(prog, ds, budget / DEPTH as u64, unit).min(MAX_BLOCKS * BLOCK_ROWS);
        for per_row in [in_bytes, out_bytes] {
            if let Some(fit) = room.checked_div(per_row) {
                rows = rows.min(fit);
            }
        }
        (rows / unit).max(1) * unit
    }

    fn prepare(&self, prog: &FusedProgram, ds: &Dataset, tile_rows: u64) -> Result<Prepared> {
        let dtypes: Vec<DType> = prog.inputs.iter().map(|&c| ds.columns()[c].dtype).collect();
        let keys = match prog.key {
            Some(k) if dtypes[k].size() > 1 => Some(crate::backend::group_keys(ds, prog.inputs[k], wgsl::GROUP_SLOTS, "wgpu")?),
            _ => None,
        };
        crate::backend::InjectedFault::at_prepare(&self.gpu.name, tile_rows)?;
        let kernel = wgsl::generate_with_keys(prog, &dtypes, tile_rows, keys)?;
        let pipeline = self.gpu.pipeline(&kernel.source)?;
        let d = &self.gpu.device;
        let unit = self.unit_rows(prog, ds);
        let blocks = tile_rows.div_ceil(unit);
        let buffer = |label: &str, words: u64, usage: wgpu::BufferUsages| {
            d.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: (words.max(4)) * 4, usage, mapped_at_creation: false })
        };
        use wgpu::BufferUsages as U;
        let scope = d.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut slots = Vec::new();
        for _ in 0..DEPTH {
            let params = buffer("params", 4, U::UNIFORM | U::COPY_DST);
            let inp = buffer("inputs", kernel.inp_words, U::STORAGE | U::COPY_DST);
            let part = buffer("partials", blocks * kernel.part_words, U::STORAGE | U::COPY_SRC);
            let atom = buffer("counts and outputs", kernel.atom_words, U::STORAGE | U::COPY_SRC | U::COPY_DST);
            let part_read = buffer("partials read-back", blocks * kernel.part_words, U::MAP_READ | U::COPY_DST);
            let atom_read = buffer("outputs read-back", kernel.atom_words, U::MAP_READ | U::COPY_DST);
            let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("tilestream fused"),
                layout: &self.gpu.layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: inp.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: part.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 3, resource: atom.as_entire_binding() },
                ],
            });
            if !kernel.thresholds.is_empty() {
                self.gpu.queue.write_buffer(&inp, 0, bytemuck::cast_slice(&kernel.thresholds));
            }
            slots.push(Slot { bind, params, inp, part, atom, part_read, atom_read });
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::DeviceOutOfMemory {
                device: self.gpu.name.clone(),
                message: format!("cannot allocate the tile buffers ({e})"),
            });
        }
        self.gpu.check()?;
        Ok(Prepared {
            kernel,
            pipeline,
            slots,
            submitted: std::sync::atomic::AtomicUsize::new(0),
            unit,
            inputs: prog.inputs.clone(),
            dtypes,
            hist_bins: prog.hists.iter().map(|h| h.bins).collect(),
            out_sizes: prog.outputs.iter().map(|o| o.dtype.size()).collect(),
        })
    }

    fn submit(&self, prep: &Prepared, ds: &Dataset, tile: Range<u64>, _out: Option<&mut TileOut>) -> Result<Ticket> {
        let rows = tile.end - tile.start;
        let blocks = rows.div_ceil(prep.unit);
        let k = &prep.kernel;
        let q = &self.gpu.queue;
        let submitted = prep.submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::backend::InjectedFault::at_tile(&self.gpu.name, submitted)?;
        let slot_index = submitted % DEPTH;
        let slot = &prep.slots[slot_index];
        // Stage the tile's columns (each read once from the mapped file).
        let mut gathered = Vec::new();
        for (i, &col) in prep.inputs.iter().enumerate() {
            let size = prep.dtypes[i].size();
            let c = &ds.columns()[col];
            let span = ds.column_span(col, tile.start, tile.end);
            let bytes: &[u8] = if c.stride as usize == size {
                &span[..rows as usize * size]
            } else {
                gathered.clear();
                gathered.extend((0..rows as usize).flat_map(|r| span[r * c.stride as usize..r * c.stride as usize + size].iter().copied()));
                &gathered
            };
            let at = k.slot_offsets[i] * 4;
            let whole = bytes.len() / 4 * 4;
            if whole > 0 {
                q.write_buffer(&slot.inp, at, &bytes[..whole]);
            }
            if whole < bytes.len() {
                let mut tail = [0u8; 4];
                tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                q.write_buffer(&slot.inp, at + whole as u64, &tail);
            }
        }
        q.write_buffer(&slot.params, 0, bytemuck::cast_slice(&[rows as u32, blocks as u32, 0, 0]));
        let part_bytes = blocks * k.part_words * 4;
        // The atomic buffer holds histogram counts and outputs (cleared, read back) or, for a
        // group-by, only scratch that the kernel writes before it reads (neither).
        let atom_bytes = if k.hist_offsets.is_empty() && k.out_offsets.is_empty() { 0 } else { k.atom_words * 4 };
        let mut enc = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tilestream tile") });
        if atom_bytes > 0 {
            enc.clear_buffer(&slot.atom, 0, None);
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("tilestream fused"), timestamp_writes: None });
            pass.set_pipeline(&prep.pipeline);
            pass.set_bind_group(0, &slot.bind, &[]);
            pass.dispatch_workgroups(blocks as u32, k.sweeps as u32, 1);
        }
        enc.copy_buffer_to_buffer(&slot.part, 0, &slot.part_read, 0, part_bytes);
        if atom_bytes > 0 {
            enc.copy_buffer_to_buffer(&slot.atom, 0, &slot.atom_read, 0, atom_bytes);
        }
        let index = q.submit([enc.finish()]);
        let map = |buf: &wgpu::Buffer, bytes: u64| -> MapStatus {
            let status: MapStatus = Arc::new(Mutex::new(None));
            let flag = status.clone();
            buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
                if let Ok(mut f) = flag.lock() {
                    *f = Some(r);
                }
            });
            status
        };
        let part_mapped = map(&slot.part_read, part_bytes);
        let atom_mapped = (atom_bytes > 0).then(|| map(&slot.atom_read, atom_bytes));
        self.gpu.check()?;
        Ok(Ticket { slot: slot_index, index, rows, blocks, part_bytes, atom_bytes, part_mapped, atom_mapped })
    }

    fn collect(&self, prep: &Prepared, t: Ticket, out: Option<&mut TileOut>) -> Result<TileResult> {
        let slot = &prep.slots[t.slot];
        self.wait_mapped(&t.part_mapped, &t.index)?;
        if let Some(m) = &t.atom_mapped {
            self.wait_mapped(m, &t.index)?;
        }
        // Decode straight from the mapped read-back buffers, then unmap them (also on errors).
        self.with_words(&slot.part_read, t.part_bytes, |part| match t.atom_mapped {
            None => decode(prep, t.rows, t.blocks, part, &[], out),
            Some(_) => self.with_words(&slot.atom_read, t.atom_bytes, |atom| decode(prep, t.rows, t.blocks, part, atom, out)),
        })
    }
}

impl Wgpu {
    /// Waits until a read-back buffer's mapping has completed.
    fn wait_mapped(&self, mapped: &MapStatus, index: &wgpu::SubmissionIndex) -> Result<()> {
        let name = &self.gpu.name;
        let start = std::time::Instant::now();
        let mut waited = false;
        // When several threads poll one device, another thread's poll may be the one that
        // runs this buffer's callback: poll until it has run.
        let status = loop {
            self.gpu.check()?;
            if let Some(s) = mapped.lock().map_err(|_| device_error(name, "a map callback panicked"))?.take() {
                break s;
            }
            if !waited {
                let wait = wgpu::PollType::Wait { submission_index: Some(index.clone()), timeout: None };
                self.gpu.device.poll(wait).map_err(|e| device_error(name, format!("waiting for the GPU: {e}")))?;
                waited = true;
                continue;
            }
            if start.elapsed() > std::time::Duration::from_secs(600) {
                return Err(device_error(name, "the GPU did not finish a tile in 10 minutes"));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
            self.gpu.device.poll(wgpu::PollType::Poll).map_err(|e| device_error(name, format!("waiting for the GPU: {e}")))?;
        };
        status.map_err(|e| device_error(name, format!("reading results back: {e}")))
    }

    /// Runs `f` on the first `bytes` of a mapped read-back buffer, as words, then unmaps it.
    fn with_words<T>(&self, buf: &wgpu::Buffer, bytes: u64, f: impl FnOnce(&[u32]) -> Result<T>) -> Result<T> {
        let res = match buf.get_mapped_range(0..bytes) {
            Ok(view) => match bytemuck::try_cast_slice::<u8, u32>(&view) {
                Ok(words) => f(words),
                Err(e) => Err(device_error(&self.gpu.name, format!("reading results back: {e}"))),
            },
            Err(e) => Err(device_error(&self.gpu.name, format!("reading results back: {e}"))),
        };
        buf.unmap();
        res
    }
}

/// Uploads `spans` to a device buffer in chunks of `chunk` bytes and waits for the device:
/// the host → device bandwidth a query's staging can reach (see `limits::upload_limit`).
pub(crate) fn upload(index: usize, spans: &[&[u8]], chunk: u64) -> Result<()> {
    let gpu = open(index)?;
    let chunk = chunk.min(gpu.limits.max_buffer_size) / 4 * 4;
    let buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("upload probe"),
        size: chunk.max(4),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    for span in spans {
        for piece in span.chunks(chunk as usize) {
            let whole = piece.len() / 4 * 4;
            if whole > 0 {
                gpu.queue.write_buffer(&buf, 0, &piece[..whole]);
                gpu.queue.submit([]);
            }
        }
    }
    gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| device_error(&gpu.name, format!("waiting for the GPU: {e}")))?;
    gpu.check()
}

/// The value of a pivot stored as two words.
fn pivot_value(dom: Domain, lo: u32, hi: u32) -> f64 {
    let v = ((hi as u64) << 32) | lo as u64;
    match dom {
        Domain::F32 => f32::from_bits(lo) as f64,
        Domain::F64 => f64::from_bits(v),
        Domain::Int => v as i64 as f64,
        Domain::U64 => v as f64,
    }
}

/// A statistic's partial from its 5 counters and 14 words.
fn block_stats(dom: Domain, c: &[u32], w: &[u32]) -> Result<BlockStats> {
    let (cnt, nan, pinf, ninf, flag) = (c[0] as u64, c[1] as u64, c[2] as u64, c[3] as u64, c[4]);
    if flag != 0 {
        return Err(Error::Unsupported(
            "values the wgpu kernel cannot sum exactly (differences from the first value beyond about 1.8e19, whose squares leave the f32 range, or integers beyond ±2^63); run with --device cpu".into(),
        ));
    }
    let f = |j: usize| f32::from_bits(w[j]) as f64;
    let key = |j: usize| ((w[j] as u64) << 32) | w[j + 1] as u64;
    let inf = pinf + ninf;
    let mut st = BlockStats {
        count: cnt,
        nan,
        inf,
        pivot: pivot_value(dom, w[0], w[1]),
        sum_d: if pinf > 0 && ninf > 0 {
            f64::NAN
        } else if pinf > 0 {
            f64::INFINITY
        } else if ninf > 0 {
            f64::NEG_INFINITY
        } else {
            f(2) + f(3)
        },
        sum_d2: if inf > 0 { f64::INFINITY } else { f(4) + f(5) },
        ..BlockStats::default()
    };
    if cnt > 0 {
        st.min = dom.key_value(key(6));
        st.max = dom.key_value(key(8));
        if matches!(dom, Domain::Int | Domain::U64) {
            st.imin = dom.key_int(key(6));
            st.imax = dom.key_int(key(8));
        }
    }
    if cnt > inf {
        st.fmin = dom.key_value(key(10));
        st.fmax = dom.key_value(key(12));
    }
    Ok(st)
}

/// The partials of a group-by tile: per unit, the keys that saw rows.
fn decode_groups(k: &Kernel, keys: &KeySlots, units: u64, part: &[u32]) -> Result<TileResult> {
    let per_slot = (k.part_words / k.sweeps / wgsl::GROUP_SLOTS) as usize;
    let slots = wgsl::GROUP_SLOTS as usize;
    let mut res = TileResult::default();
    for u in 0..units as usize {
        let mut bp = BlockPartial::default();
        for (sweep, slot) in (0..k.sweeps as usize).flat_map(|w| (0..slots).map(move |s| (w, s))) {
            let w = &part[((sweep * units as usize + u) * slots + slot) * per_slot..][..per_slot];
            if w[0] == 0 {
                continue;
            }
            bp.selected += w[0] as u64;
            let mut stats = Vec::with_capacity(k.stat_domains.len());
            for (i, &dom) in k.stat_domains.iter().enumerate() {
                let at = 1 + (STAT_COUNTERS + STAT_WORDS) as usize * i;
                let (c, rest) = w[at..at + (STAT_COUNTERS + STAT_WORDS) as usize].split_at(STAT_COUNTERS as usize);
                stats.push(block_stats(dom, c, rest)?);
            }
            bp.groups.push(keys.key(sweep * slots + slot), w[0] as u64, stats);
        }
        res.blocks.push(bp);
    }
    Ok(res)
}

/// Turns the kernel's words into the partials the driver merges.
fn decode(prep: &Prepared, rows: u64, blocks: u64, part: &[u32], atom: &[u32], out: Option<&mut TileOut>) -> Result<TileResult> {
    let k = &prep.kernel;
    if let Some(keys) = &k.group_keys {
        return decode_groups(k, keys, blocks, part);
    }
    let s = k.stat_domains.len() as u64;
    let mut res = TileResult::default();
    for b in 0..blocks {
        let w = &part[(b * k.part_words) as usize..((b + 1) * k.part_words) as usize];
        let mut bp = BlockPartial { selected: w[0] as u64, ..BlockPartial::default() };
        for (i, &dom) in k.stat_domains.iter().enumerate() {
            let c = (1 + STAT_COUNTERS * i as u64) as usize;
            let q = (k.counters + STAT_WORDS * i as u64) as usize;
            bp.stats.push(block_stats(dom, &w[c..c + STAT_COUNTERS as usize], &w[q..q + STAT_WORDS as usize])?);
        }
        for o in 0..prep.kernel.out_offsets.len() {
            let c = (1 + STAT_COUNTERS * s + 2 * o as u64) as usize;
            bp.out_counts.push((w[c] as u64, w[c + 1] as u64));
        }
        res.blocks.push(bp);
    }
    for (i, &off) in k.hist_offsets.iter().enumerate() {
        let bins = prep.hist_bins[i] as usize;
        let h = &atom[off as usize..off as usize + bins + 3];
        res.hists.push(HistAcc {
            counts: h[..bins].iter().map(|&c| c as u64).collect(),
            below: h[bins] as u64,
            above: h[bins + 1] as u64,
            nan: h[bins + 2] as u64,
        });
    }
    if let Some(out) = out {
        let bytes: &[u8] = bytemuck::cast_slice(atom);
        for (o, col) in out.columns.iter_mut().enumerate() {
            let size = prep.out_sizes[o];
            let from = (k.out_offsets[o] * 4) as usize;
            let n = rows as usize * size;
            col[..n].copy_from_slice(&bytes[from..from + n]);
        }
    }
    Ok(res)
}
