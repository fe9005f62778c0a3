//! Library-level behaviour: thread safety, explain(), group-by limits, inputs of every
//! format side by side.

mod common;

use common::*;
use tilestream::synth::Rng;
use tilestream::{DType, Dataset, Device, Error, FileKind, RunOptions, all_stats, col, hist, lit};

#[test]
fn dataset_and_device_are_send_and_sync_and_queries_run_from_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dataset>();
    assert_send_sync::<Device>();
    assert_send_sync::<tilestream::LazyFrame>();
    let seed = seed("threads");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("threads");
    let rows = 30_000;
    let cols = mixed_columns(&mut rng, rows, 0.05);
    let path = dir.path("t.safetensors");
    write_safetensors(&path, rows, &cols);
    let ds = Dataset::open(&path).unwrap();
    let dev = Device::auto();
    let queries: Vec<tilestream::AggregateQuery> = vec![
        ds.lazy().aggregate([all_stats(["a", "b", "c"])]),
        ds.lazy().filter(col("k").lt(lit(5))).aggregate([all_stats(["d", "i"])]),
        ds.lazy().group_by("k").aggregate([all_stats(["a"])]),
        ds.lazy().aggregate([hist("a", 17)]),
    ];
    let single: Vec<String> = queries.iter().map(|q| format!("{:?}", q.collect(&dev).unwrap().columns)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (q, want, dev) = (&queries[t % queries.len()], &single[t % queries.len()], &dev);
                s.spawn(move || {
                    for _ in 0..3 {
                        assert_eq!(&format!("{:?}", q.collect(dev).unwrap().columns), want);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn explain_names_the_fused_program() {
    let dir = TempDir::new("explain");
    let mut rng = Rng::new(5);
    let cols = mixed_columns(&mut rng, 100, 0.0);
    let path = dir.path("t.safetensors");
    write_safetensors(&path, 100, &cols);
    let ds = Dataset::open(&path).unwrap();
    let text =
        ds.lazy().filter(col("a").gt(lit(0.5)).and(col("k").lt(lit(3)))).group_by("k").aggregate([all_stats(["b"])]).explain().unwrap();
    assert!(text.contains("3 of 11 columns read"), "{text}");
    assert!(text.contains("group by"), "{text}");
    assert!(text.contains("CmpI"), "{text}");
    assert!(text.contains("stats("), "{text}");
    let text = ds.lazy().aggregate([hist("a", 8)]).explain().unwrap();
    assert!(text.contains("pass 1"), "{text}");
}

#[test]
fn group_by_rejects_more_than_65536_keys_and_non_integer_keys() {
    let dir = TempDir::new("groups");
    let rows = 70_000;
    let ids: Vec<u32> = (0..rows as u32).collect();
    let x: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    let path = dir.path("g.safetensors");
    write_safetensors(
        &path,
        rows,
        &[
            ColData { name: "id".into(), dtype: DType::U32, bytes: bytemuck::cast_slice(&ids).to_vec() },
            ColData { name: "x".into(), dtype: DType::F32, bytes: bytemuck::cast_slice(&x).to_vec() },
        ],
    );
    let ds = Dataset::open(&path).unwrap();
    let err = ds.lazy().group_by("id").aggregate([all_stats(["x"])]).collect(&Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("65536"), "{err}");
    let ok = ds.lazy().filter(col("id").lt(lit(65_536))).group_by("id").aggregate([all_stats(["x"])]).collect(&Device::Cpu).unwrap();
    assert_eq!(ok.groups.len(), 65_536);
    assert_eq!(ok.groups[65_535].key, 65_535);
    let err = ds.lazy().group_by("x").aggregate([all_stats(["id"])]).collect(&Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Plan(_)) && err.to_string().contains("integer"), "{err}");
}

fn npy_bytes(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}", if fortran { "True" } else { "False" });
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn npy_raw_and_files_side_by_side_form_one_dataset() {
    let dir = TempDir::new("formats");
    let rows = 9000usize;
    // features.npy: [rows, 3] f32, C order; key.npy: [rows] u8; extra.bin: raw i16 x 2.
    let feats: Vec<f32> = (0..rows * 3).map(|i| (i % 1000) as f32 * 0.5 - (i % 3) as f32).collect();
    let keys: Vec<u8> = (0..rows).map(|i| (i % 7) as u8).collect();
    let raw: Vec<i16> = (0..rows * 2).map(|i| (i as i16).wrapping_mul(3)).collect();
    std::fs::write(dir.path("features.npy"), npy_bytes("<f4", &format!("({rows}, 3)"), false, bytemuck::cast_slice(&feats))).unwrap();
    std::fs::write(dir.path("key.npy"), npy_bytes("|u1", &format!("({rows},)"), false, &keys)).unwrap();
    std::fs::write(dir.path("extra.bin"), bytemuck::cast_slice::<i16, u8>(&raw)).unwrap();
    let ds = Dataset::open_many(&[dir.path("features.npy"), dir.path("key.npy")], FileKind::Auto).unwrap();
    let names: Vec<&str> = ds.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["features:0", "features:1", "features:2", "key"]);
    let r = ds.lazy().filter(col("key").equals(lit(3))).aggregate([all_stats(["features:1"])]).collect(&Device::Cpu).unwrap();
    let want: Vec<f64> = (0..rows).filter(|&r| keys[r] == 3).map(|r| feats[r * 3 + 1] as f64).collect();
    let got = r.column("features:1").unwrap();
    assert_eq!(got.count, want.len() as u64);
    assert_eq!(got.sum, want.iter().sum::<f64>());
    let raw_ds = Dataset::open_many(&[dir.path("extra.bin")], FileKind::Raw { dtype: DType::I16, cols: 2 }).unwrap();
    assert_eq!(raw_ds.rows(), rows as u64);
    let r = raw_ds.lazy().aggregate([all_stats(["extra:1"])]).collect(&Device::Cpu).unwrap();
    let want_max = (0..rows).map(|r| raw[r * 2 + 1]).max().unwrap();
    assert_eq!(r.column("extra:1").unwrap().max, Some(tilestream::Number::Int(want_max as i128)));
    // A different row count side by side is a clear error naming the file.
    std::fs::write(dir.path("short.npy"), npy_bytes("|u1", "(5,)", false, &[1, 2, 3, 4, 5])).unwrap();
    let err = Dataset::open_many(&[dir.path("features.npy"), dir.path("short.npy")], FileKind::Auto).unwrap_err();
    assert!(err.to_string().contains("short.npy") && err.to_string().contains("row count"), "{err}");
    // Duplicate column names across files.
    let err = Dataset::open_many(&[dir.path("key.npy"), dir.path("key.npy")], FileKind::Auto).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    // Strided columns give the same answers under any tile size.
    let a = ds
        .lazy()
        .aggregate([all_stats(Vec::<String>::new())])
        .collect_with(&Device::Cpu, &RunOptions { memory_budget: 1, ..RunOptions::default() })
        .unwrap();
    let b = ds.lazy().aggregate([all_stats(Vec::<String>::new())]).collect(&Device::Cpu).unwrap();
    assert_eq!(format!("{:?}", a.columns), format!("{:?}", b.columns));
}
