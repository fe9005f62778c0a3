//! Criterion benchmarks of every query kind, on a generated dataset held in the page cache
//! (2 GiB of f32 features by default; `TILESTREAM_BENCH_ROWS` changes it), on the CPU and
//! on the GPU `auto` picks (or the devices `TILESTREAM_BENCH_DEVICES` names, e.g.
//! `cpu,wgpu:0`). Each group also prints its throughput as a ratio to the machine's limit
//! measured in the same run: a SIMD sum of the same bytes for reads on the CPU, their upload
//! to the device on a GPU, a copy into a new file for writes.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tilestream::{Cols, DType, Dataset, Device, RunOptions, SinkOptions, Transform, all_stats, hist, parse_expr};

fn dataset() -> (Dataset, std::path::PathBuf) {
    let rows: u64 = std::env::var("TILESTREAM_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or((2u64 << 30) / 32);
    let dir = std::env::temp_dir().join("tilestream-criterion");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("bench-{rows}.safetensors"));
    if !path.exists() {
        tilestream::synth::generate(&path, rows, 8, 11, true).expect("generate");
    }
    (Dataset::open(&path).expect("open"), dir)
}

fn report_ratio(name: &str, bytes: u64, limit: f64, f: &dyn Fn()) {
    f();
    let t = Instant::now();
    f();
    let gbs = bytes as f64 / t.elapsed().as_secs_f64();
    eprintln!("{name}: {:.2} GB/s = {:.2} of the limit ({:.2} GB/s)", gbs / 1e9, gbs / limit, limit / 1e9);
}

fn devices() -> Vec<Device> {
    match std::env::var("TILESTREAM_BENCH_DEVICES") {
        Ok(list) => list.split(',').map(|d| Device::from_name(d.trim()).expect("TILESTREAM_BENCH_DEVICES")).collect(),
        Err(_) => {
            let mut v = vec![Device::Cpu];
            if Device::auto() != Device::Cpu {
                v.push(Device::auto());
            }
            v
        }
    }
}

fn queries(c: &mut Criterion) {
    let (ds, dir) = dataset();
    for dev in devices() {
        device_queries(c, &ds, &dir, &dev);
    }
}

fn device_queries(c: &mut Criterion, ds: &Dataset, dir: &std::path::Path, dev: &Device) {
    let dev = dev.clone();
    let opts = RunOptions::default();
    let floats: Vec<usize> = (0..8).map(|j| ds.column_index(&format!("f{j}")).expect("column")).collect();
    let key = ds.column_index("key").expect("key");
    let with_key = [floats.clone(), vec![key]].concat();
    let all: Vec<String> = (0..8).map(|j| format!("f{j}")).collect();
    let _ = tilestream::limits::read_limit(ds, &with_key, 1);
    let read = match tilestream::limits::upload_limit(&dev, ds, &with_key, 3).expect("upload limit") {
        Some(upload) => upload,
        None => tilestream::limits::read_limit(ds, &with_key, 3),
    };
    let copy = tilestream::limits::copy_limit(ds, &with_key, dir).expect("copy limit");
    let filt = parse_expr("f0 > 0 && key < 32").expect("expr");
    let out = dir.join("out.safetensors");

    let name = dev.name();
    let mut g = c.benchmark_group(name.split_whitespace().next().unwrap_or("device"));
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));

    let bytes = ds.column_bytes(&floats);
    let stats = || {
        ds.lazy().aggregate([all_stats(all.clone())]).collect_with(&dev, &opts).expect("stats");
    };
    report_ratio("stats", bytes, read, &stats);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("stats", |b| b.iter(stats));

    let bytes = ds.column_bytes(&with_key);
    let filtered = || {
        ds.lazy().filter(filt.clone()).aggregate([all_stats(all.clone())]).collect_with(&dev, &opts).expect("filtered");
    };
    report_ratio("filtered stats", bytes, read, &filtered);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("filtered_stats", |b| b.iter(filtered));

    let group = || ds.lazy().group_by("key").aggregate([all_stats(all.clone())]).collect_with(&dev, &opts);
    match group() {
        Err(tilestream::Error::Unsupported(why)) => eprintln!("group-by on {name}: skipped ({why})"),
        _ => {
            let group = || {
                group().expect("group-by");
            };
            report_ratio("group-by", bytes, read, &group);
            g.bench_function("group_by_64", |b| b.iter(group));
        }
    }

    let f1 = [ds.column_index("f1").expect("f1")];
    let bytes = ds.column_bytes(&f1);
    let histogram = || {
        ds.lazy().aggregate([hist("f1", 256).range(0.0, 1.0)]).collect_with(&dev, &opts).expect("hist");
    };
    report_ratio("histogram", bytes, read, &histogram);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("histogram_256", |b| b.iter(histogram));

    let bytes = ds.column_bytes(&with_key);
    let transform = || {
        let t = Transform { standardize: Cols::All, cast: Some(DType::F16), ..Transform::default() };
        ds.lazy().transform(t).sink(&out, &SinkOptions { force: true }, &dev, &opts).expect("transform");
    };
    report_ratio("fit + transform to f16", bytes, copy, &transform);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("fit_transform_f16", |b| b.iter(transform));

    let filter_write = || {
        ds.lazy()
            .filter(parse_expr("f0 > 0").expect("expr"))
            .transform(Transform::default())
            .sink(&out, &SinkOptions { force: true }, &dev, &opts)
            .expect("filter");
    };
    report_ratio("filter with write", bytes, copy, &filter_write);
    g.bench_function("filter_write", |b| b.iter(filter_write));
    g.finish();
    let _ = std::fs::remove_file(&out);
}

criterion_group!(benches, queries);
criterion_main!(benches);
