//! The CPU backend's hand-written AVX-512 and AVX2 kernels (and its narrow integer
//! comparisons) against the portable kernels and plain references, on random data (seeded
//! and printed) with NaN, ±inf, denormals and awkward sizes. A kernel this CPU cannot run
//! is skipped, saying so.

use super::*;
use crate::synth::{Rng, test_seed};

fn has_avx512() -> bool {
    let yes = level() == Level::Avx512;
    if !yes {
        eprintln!("skipped: this CPU has no AVX-512 (or TILESTREAM_SIMD caps it); the portable kernels ran instead");
    }
    yes
}

/// A random f32: mostly normal values, with NaN, ±inf, denormals, ±0 and huge values.
fn value(rng: &mut Rng, nan_rate: f64) -> f32 {
    let u = rng.uniform();
    if u < nan_rate {
        return f32::NAN;
    }
    match (rng.uniform() * 40.0) as u32 {
        0 => f32::INFINITY,
        1 => f32::NEG_INFINITY,
        2 => f32::from_bits(1 + (rng.next_u64() % 0x7F_FFFF) as u32),
        3 => -0.0,
        4 => 0.0,
        5 => 3.0e38 * (rng.uniform() as f32 - 0.5),
        _ => (rng.normal() * 100.0 + 1.0e4) as f32,
    }
}

const SIZES: &[usize] = &[0, 1, 2, 15, 16, 17, 31, 33, 255, 1000, 8191, 8192];

#[test]
fn avx512_stats_kernel_is_bit_identical_to_the_portable_one() {
    if !has_avx512() {
        return;
    }
    let mut rng = Rng::new(test_seed());
    for &n in SIZES {
        for nan_rate in [0.0, 0.05, 1.0] {
            // Infinities only in some runs: the kernel counts them only when a sum overflows.
            let x: Vec<f32> =
                (0..n).map(|_| value(&mut rng, nan_rate)).map(|v| if n % 2 == 0 && v.is_infinite() { 1.5 } else { v }).collect();
            let mask: Vec<u8> = (0..n).map(|_| (rng.uniform() < 0.6) as u8).collect();
            for m in [None, Some(&mask[..])] {
                let sel = m.map_or(n, |m| m.iter().filter(|&&b| b != 0).count()) as u64;
                let fast = (stats_f32_any::<true>(&x, m, sel, Level::Avx512), stats_f32_any::<false>(&x, m, sel, Level::Avx512));
                let slow = (stats_f32_any::<true>(&x, m, sel, Level::Base), stats_f32_any::<false>(&x, m, sel, Level::Base));
                let what = format!("n={n} nan_rate={nan_rate} masked={}", m.is_some());
                assert_eq!(format!("{:?}", fast), format!("{:?}", slow), "{what}");
                // And the counts against a plain reference.
                let sel: Vec<f32> = x.iter().zip(&mask).filter(|&(_, &b)| m.is_none() || b != 0).map(|(&v, _)| v).collect();
                assert_eq!(fast.0.count, sel.iter().filter(|v| !v.is_nan()).count() as u64, "{what}: count");
                assert_eq!(fast.0.nan, sel.iter().filter(|v| v.is_nan()).count() as u64, "{what}: nan");
                assert_eq!(fast.0.inf, sel.iter().filter(|v| v.is_infinite()).count() as u64, "{what}: inf");
            }
        }
    }
}

/// f16 and bf16 columns read in place (widened in the AVX-512 kernel's registers) give the
/// bits of the same values converted to f32 first, with NaN, ±inf, ±0, subnormals and the
/// types' extremes, with and without the finite bounds.
#[test]
fn halves_read_in_place_match_their_f32_conversions_bit_for_bit() {
    if !has_avx512() {
        return;
    }
    let mut rng = Rng::new(test_seed());
    for &n in SIZES.iter().chain(&[8193]) {
        for clean in [true, false] {
            // Infinities (and bf16's huge values) make the sums infinite; without them every
            // rounding shows.
            // Per type: its infinity, a NaN (quiet for f16, signalling for bf16), subnormals,
            // signed zeros, ordinary values.
            let halves = |rng: &mut Rng, inf: u16, nan: u16| -> Vec<u16> {
                (0..n)
                    .map(|_| {
                        let r = rng.next_u64();
                        let sign = (r >> 8) as u16 & 0x8000;
                        match r % 13 {
                            0 if !clean => inf | sign,
                            1 => (r >> 8) as u16 & 0x807F,
                            2 => sign,
                            3 if !clean => nan | sign,
                            _ => (0x3C00 + ((r >> 16) as u16 & 0x0FFF)) | ((r >> 32) as u16 & 0x8000),
                        }
                    })
                    .collect()
            };
            let (fbits, bbits) = (halves(&mut rng, 0x7C00, 0x7E01), halves(&mut rng, 0x7F80, 0x7F81));
            let f16s: &[half::f16] = bytemuck::cast_slice(&fbits);
            let bf16s: &[half::bf16] = bytemuck::cast_slice(&bbits);
            let wide: Vec<f32> = f16s.iter().map(|&h| h.to_f32()).collect();
            let bwide: Vec<f32> = bf16s.iter().map(|&h| h.to_f32()).collect();
            for finite in [false, true] {
                let what = format!("n={n} clean={clean} finite={finite}");
                let conv = |x: &[f32]| {
                    if finite {
                        stats_f32_any::<true>(x, None, n as u64, Level::Avx512)
                    } else {
                        stats_f32_any::<false>(x, None, n as u64, Level::Avx512)
                    }
                };
                assert_eq!(format!("{:?}", wide_stats(f16s, finite, Level::Avx512)), format!("{:?}", conv(&wide)), "{what} f16");
                assert_eq!(format!("{:?}", wide_stats(bf16s, finite, Level::Avx512)), format!("{:?}", conv(&bwide)), "{what} bf16");
            }
        }
    }
}

/// The AVX-512 f64 statistics give the portable kernel's bits, with NaN, ±inf, ±0, huge
/// and denormal values, with and without a mask, at sizes around the 8-value step.
#[test]
fn avx512_f64_stats_are_bit_identical_to_the_portable_ones() {
    if !has_avx512() {
        return;
    }
    let mut rng = Rng::new(test_seed());
    for &n in SIZES.iter().chain(&[7, 8, 9, 8193]) {
        for (nan_rate, clean) in [(0.0, true), (0.05, true), (0.05, false), (1.0, false)] {
            // Without infinities and huge values (`clean`) the sums stay finite, so that every
            // rounding shows.
            let x: Vec<f64> = (0..n)
                .map(|_| {
                    let v = match (rng.uniform() * 30.0) as u32 {
                        0 if !clean => 1e300 * (rng.uniform() - 0.5),
                        1 => f64::from_bits(1 + rng.next_u64() % (1 << 52)),
                        // Not an f32 (but zeros stay zeros).
                        _ => value(&mut rng, nan_rate) as f64 * (1.0 + rng.uniform() * 1e-12),
                    };
                    if clean && v.abs() > 1e30 { rng.normal() } else { v }
                })
                .collect();
            // And signed zeros as the minimum (even n) or maximum (odd n): which zero a tie
            // keeps shows.
            let other = if n % 2 == 0 { 1.0 } else { -1.0 };
            let zeros: Vec<f64> = (0..n).map(|_| [0.0, -0.0, other][(rng.uniform() * 3.0) as usize]).collect();
            let mask: Vec<u8> = (0..n).map(|_| (rng.uniform() < 0.6) as u8).collect();
            for (m, x) in [(None, &x), (Some(&mask[..]), &x), (None, &zeros)] {
                let what = format!("n={n} nan_rate={nan_rate} clean={clean} masked={}", m.is_some());
                assert_eq!(format!("{:?}", stats_f64_any(x, m, Level::Avx512)), format!("{:?}", stats_any(x, m)), "{what}");
            }
        }
    }
}

/// Per-group statistics by the obvious loop: rows in order, each shifted by its group's
/// first finite value, sums in f64.
fn reference_groups(cols: &[Vec<f32>], slots: &[u32], g: usize) -> Vec<Vec<BlockStats>> {
    cols.iter()
        .map(|col| {
            (0..g)
                .map(|j| {
                    let vals: Vec<f32> = slots.iter().zip(col).filter(|&(&s, _)| s as usize == j).map(|(_, &v)| v).collect();
                    let pivot = vals.iter().find(|v| v.is_finite()).map_or(0.0, |&v| v as f64);
                    let mut b = BlockStats { pivot, ..BlockStats::default() };
                    for &v in &vals {
                        if v.is_nan() {
                            b.nan += 1;
                            continue;
                        }
                        let d = v as f64 - pivot;
                        b.count += 1;
                        b.inf += v.is_infinite() as u64;
                        b.sum_d += d;
                        b.sum_d2 += d * d;
                        // The first of equal values (-0 and +0) stays, as in the kernel.
                        b.min = if (v as f64) < b.min { v as f64 } else { b.min };
                        b.max = if (v as f64) > b.max { v as f64 } else { b.max };
                    }
                    b
                })
                .collect()
        })
        .collect()
}

/// The row-wise group kernels (AVX-512, AVX2, and the four-column AVX2 one that passes of
/// up to four columns take at either level; an AVX-512 CPU runs them all).
#[test]
fn avx512_and_avx2_group_kernels_match_a_row_order_f64_reference_exactly() {
    let levels: Vec<Level> =
        [Level::Avx512, Level::Avx2].into_iter().filter(|&l| l == Level::Avx2 || has_avx512()).filter(|_| level() != Level::Base).collect();
    if levels.is_empty() {
        eprintln!("skipped: this CPU has no AVX2 (or TILESTREAM_SIMD=sse2); the gather path ran instead");
        return;
    }
    let mut rng = Rng::new(test_seed());
    let mut buf = Vec::new();
    // Past KEY8_CHUNK too: 8-bit keys make their slots run by run.
    for &n in SIZES.iter().chain(&[KEY8_CHUNK + 1, 2 * KEY8_CHUNK + 17, 3 * KEY8_CHUNK]) {
        // 1-4 columns take the four-lane kernel, 5-8 an eight-lane one.
        for ncols in [1, 3, 4, 6, 8, 9, 17] {
            let g = 1 + (rng.next_u64() % 70) as usize;
            // 0.003: blocks with and without a NaN alternate (the kernels skip the NaN test in the latter).
            let nan_rate = [0.0, 0.003, 0.1, 1.0][(rng.next_u64() % 4) as usize];
            let cols: Vec<Vec<f32>> = (0..ncols).map(|_| (0..n).map(|_| value(&mut rng, nan_rate)).collect()).collect();
            // Skewed groups, some rows unselected (u32::MAX); with 95 % unselected the
            // kernels skip steps that have no selected row.
            let unselected = [0.0, 0.2, 0.95][(rng.next_u64() % 3) as usize];
            let slots: Vec<u32> = (0..n)
                .map(|_| if rng.uniform() < unselected { u32::MAX } else { (rng.uniform() * rng.uniform() * g as f64) as u32 })
                .collect();
            let rows: Vec<u64> = (0..g).map(|j| slots.iter().filter(|&&s| s as usize == j).count() as u64).collect();
            let views: Vec<&[f32]> = cols.iter().map(|c| &c[..]).collect();
            let want = reference_groups(&cols, &slots, g);
            // The same slots as an 8-bit key column (u8, or i8: the sign bit flipped) and a
            // row mask; an unselected row's key is any slot below g.
            let flip = [0u8, 0x80][(rng.next_u64() % 2) as usize];
            let bytes: Vec<u8> =
                slots.iter().map(|&s| if s == u32::MAX { (rng.next_u64() % g as u64) as u8 } else { s as u8 } ^ flip).collect();
            let mask: Vec<u8> = slots.iter().map(|&s| (s != u32::MAX) as u8).collect();
            let mask = (unselected > 0.0).then_some(&mask[..]);
            let mut key8 = Slots::Key8 { bytes: &bytes, flip, mask, buf: &mut buf };
            assert_eq!(key8.rows(g), rows, "n={n} g={g}: rows per group from 8-bit keys");
            // A unit's rows in two blocks, the first with fewer slots (the unit's slots
            // grow): the accumulators carry over, so the bits are those of one block.
            let cut = n / 3;
            let g1 = slots[..cut].iter().filter(|&&s| s != u32::MAX).map(|&s| s as usize + 1).max().unwrap_or(0);
            let rows_of =
                |part: &[u32], g: usize| (0..g).map(|j| part.iter().filter(|&&s| s as usize == j).count() as u64).collect::<Vec<u64>>();
            let part = |from: usize, to: usize| views.iter().map(|c| &c[from..to]).collect::<Vec<&[f32]>>();
            for (level, how) in levels.iter().flat_map(|&l| [(l, "slots"), (l, "key8"), (l, "split")]) {
                let mut acc = F32Groups::default();
                match how {
                    "key8" => {
                        group_rows_f32(level, &views, &mut Slots::Key8 { bytes: &bytes, flip, mask, buf: &mut buf }, &rows, g, &mut acc)
                    }
                    "split" => {
                        group_rows_f32(level, &part(0, cut), &mut Slots::All(&slots[..cut]), &rows_of(&slots[..cut], g1), g1, &mut acc);
                        group_rows_f32(level, &part(cut, n), &mut Slots::All(&slots[cut..]), &rows_of(&slots[cut..], g), g, &mut acc);
                    }
                    _ => group_rows_f32(level, &views, &mut Slots::All(&slots), &rows, g, &mut acc),
                }
                for (c, wc) in want.iter().enumerate() {
                    for (j, b) in wc.iter().enumerate() {
                        let a = &acc.stats(c, j, rows[j]);
                        let what = format!(
                            "{}{} n={n} cols={ncols} g={g} col {c} group {j}",
                            if level == Level::Avx2 { "avx2" } else { "avx512" },
                            match how {
                                "key8" => format!(", slots from 8-bit keys (flip {flip:#x}, mask {})", mask.is_some()),
                                "split" => format!(", two blocks of {cut} and {} rows, {g1} and {g} slots", n - cut),
                                _ => String::new(),
                            }
                        );
                        assert_eq!((a.count, a.nan, a.inf), (b.count, b.nan, b.inf), "{what}: counts");
                        for (x, y, f) in [
                            (a.pivot, b.pivot, "pivot"),
                            (a.sum_d, b.sum_d, "sum"),
                            (a.sum_d2, b.sum_d2, "sum of squares"),
                            (a.min, b.min, "min"),
                            (a.max, b.max, "max"),
                        ] {
                            assert!(x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()), "{what}: {f} {x} vs {y}");
                        }
                    }
                }
            }
        }
    }
}

/// Narrow integer columns compare in their own type (a literal outside the type's range
/// answers for every value at once): the same answers as in i64 for every literal,
/// including ones on and far outside the type's ends.
#[test]
fn narrow_integer_comparisons_agree_with_i64_for_any_literal() {
    let mut rng = Rng::new(test_seed());
    let u8s: Vec<u8> = (0..300).map(|i| if i < 2 { [0, 255][i] } else { rng.next_u64() as u8 }).collect();
    let i8s: Vec<i8> = (0..300).map(|i| if i < 2 { [i8::MIN, i8::MAX][i] } else { rng.next_u64() as i8 }).collect();
    let i16s: Vec<i16> = (0..300).map(|i| if i < 2 { [i16::MIN, i16::MAX][i] } else { rng.next_u64() as i16 }).collect();
    let u16s: Vec<u16> = (0..300).map(|i| if i < 2 { [0, u16::MAX][i] } else { rng.next_u64() as u16 }).collect();
    let ks = [
        i64::MIN,
        -65538,
        -65537,
        -32769,
        -32768,
        -129,
        -128,
        -127,
        -1,
        0,
        1,
        126,
        127,
        128,
        254,
        255,
        256,
        32767,
        65535,
        65536,
        65537,
        1 << 40,
        i64::MAX,
    ];
    for k in ks {
        for c in [Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge, Cmp::Eq, Cmp::Ne] {
            let want = |v: i64| match c {
                Cmp::Lt => v < k,
                Cmp::Le => v <= k,
                Cmp::Gt => v > k,
                Cmp::Ge => v >= k,
                Cmp::Eq => v == k,
                Cmp::Ne => v != k,
            } as u8;
            let mut o = vec![9u8; 300];
            compare_i_const(c, &u8s, k, &mut o);
            assert_eq!(o, u8s.iter().map(|&v| want(v as i64)).collect::<Vec<_>>(), "u8 {c:?} {k}");
            compare_i_const(c, &i8s, k, &mut o);
            assert_eq!(o, i8s.iter().map(|&v| want(v as i64)).collect::<Vec<_>>(), "i8 {c:?} {k}");
            compare_i_const(c, &i16s, k, &mut o);
            assert_eq!(o, i16s.iter().map(|&v| want(v as i64)).collect::<Vec<_>>(), "i16 {c:?} {k}");
            compare_i_const(c, &u16s, k, &mut o);
            assert_eq!(o, u16s.iter().map(|&v| want(v as i64)).collect::<Vec<_>>(), "u16 {c:?} {k}");
        }
    }
}

/// The 8-lane order of the AVX2 stats kernel, written as plain loops.
fn lanes8_reference(x: &[f32], mask: Option<&[u8]>, pivot: f64) -> cpu_simd::LaneStats8 {
    let mut l = cpu_simd::LaneStats8 {
        count: 0,
        s: [0.0; 8],
        s2: [0.0; 8],
        mn: [f32::INFINITY; 8],
        mx: [f32::NEG_INFINITY; 8],
        fmn: [f32::INFINITY; 8],
        fmx: [f32::NEG_INFINITY; 8],
    };
    for (i, &v) in x.iter().enumerate() {
        let k = i % 8;
        let ok = mask.is_none_or(|m| m[i] != 0) && !v.is_nan();
        let d = if ok { v as f64 - pivot } else { 0.0 };
        l.s[k] += d;
        l.s2[k] += d * d;
        if ok {
            l.count += 1;
            l.mn[k] = if v < l.mn[k] { v } else { l.mn[k] };
            l.mx[k] = if v > l.mx[k] { v } else { l.mx[k] };
            if v.is_finite() {
                l.fmn[k] = if v < l.fmn[k] { v } else { l.fmn[k] };
                l.fmx[k] = if v > l.fmx[k] { v } else { l.fmx[k] };
            }
        }
    }
    l
}

#[test]
fn avx2_stats_kernel_matches_its_lane_order_written_as_plain_loops() {
    if level() == Level::Base {
        eprintln!("skipped: this CPU has no AVX2 (or TILESTREAM_SIMD=sse2)");
        return;
    }
    let mut rng = Rng::new(test_seed());
    for &n in SIZES {
        for nan_rate in [0.0, 0.05, 1.0] {
            let x: Vec<f32> = (0..n).map(|_| value(&mut rng, nan_rate)).collect();
            let mask: Vec<u8> = (0..n).map(|_| (rng.uniform() < 0.6) as u8).collect();
            for m in [None, Some(&mask[..])] {
                let sel = m.map_or(n, |m| m.iter().filter(|&&b| b != 0).count()) as u64;
                let pivot = first_finite(&x, m, |v| v.is_finite()).map_or(0.0, |v| v as f64);
                let got = stats_f32_any::<true>(&x, m, sel, Level::Avx2);
                let lanes = lanes8_reference(&x, m, pivot);
                let want = match m {
                    None => reduce_lanes::<_, false, true>(&x, &[], pivot, sel, lanes.into()),
                    Some(m) => reduce_lanes::<_, true, true>(&x, m, pivot, sel, lanes.into()),
                };
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "n={n} nan_rate={nan_rate} masked={}", m.is_some());
            }
        }
    }
}

/// The AVX-512 bin codes equal the portable ones for any values and ranges, including a
/// range of zero width, values at and beyond its ends, on and beside bin edges (where the
/// f32 step must defer to f64), NaN and ±inf.
#[test]
fn avx512_histogram_counts_equal_the_portable_ones() {
    if !has_avx512() {
        return;
    }
    let mut rng = Rng::new(test_seed());
    // Also sizes about the kernel's counting lag (256 values) and its ring (512).
    for &n in SIZES.iter().chain(&[256, 257, 271, 272, 273, 511, 512, 513, 529]) {
        for _ in 0..6 {
            let mut x: Vec<f32> = (0..n).map(|_| value(&mut rng, 0.05)).collect();
            let (a, b) = (rng.normal() * 1e4, rng.normal() * 1e4);
            let (lo, hi) = match (rng.next_u64() % 8, n) {
                (0, _) => (a.min(b), a.min(b)),
                (1, _) => (-1e38, 1e38),
                // Ends outside f32's range.
                (2, _) => (-1e39, 3e39),
                // Ends that are f32 values (the f32 step's error is then smallest).
                (3, _) => (0.0, 1.0),
                (4, _) => ((a.min(b) as f32) as f64, (a.max(b) as f32) as f64),
                // A narrow range far from 0: lo's f32 rounding is then many bins wide.
                (5, _) => (a, a + (b.abs() * 1e-4).max(1e-3)),
                (_, 0) => (a.min(b), a.max(b)),
                _ => {
                    // A range between two of the values, which then sit exactly on its ends.
                    let (p, q) = (x[(rng.next_u64() as usize) % n] as f64, x[(rng.next_u64() as usize) % n] as f64);
                    if p.is_finite() && q.is_finite() { (p.min(q), p.max(q)) } else { (a.min(b), a.max(b)) }
                }
            };
            // The ends' nearest f32 values and their neighbours (the ends are mostly not f32).
            let (lo32, hi32) = (lo as f32, hi as f32);
            let edges = [lo32, lo32.next_up(), lo32.next_down(), hi32, hi32.next_up(), hi32.next_down()];
            for v in x.iter_mut().take(12) {
                *v = [&edges[..], &[f32::INFINITY, f32::NEG_INFINITY, f32::NAN]].concat()[(rng.next_u64() % 9) as usize];
            }
            let bins = [1, 2, 7, 256, 4096, 100_000][(rng.next_u64() % 6) as usize];
            let scale = crate::accum::bin_scale(lo, hi, bins);
            // Values on bin edges (the f32 nearest lo + k / scale) and beside them.
            if scale > 0.0 {
                for v in x.iter_mut().skip(12).step_by(3) {
                    let k = (rng.next_u64() % (bins as u64 + 1)) as f64;
                    let e = (lo + k / scale) as f32;
                    *v = [e, e.next_up(), e.next_down()][(rng.next_u64() % 3) as usize];
                }
            }
            let f32_bins = cpu_simd::F32Bins::new(lo, scale, bins);
            let what = format!("n={n} lo={lo} hi={hi} bins={bins} f32 step: {f32_bins:?}");
            let mask: Option<Vec<u8>> = rng.next_u64().is_multiple_of(2).then(|| (0..n).map(|_| (rng.uniform() < 0.7) as u8).collect());
            // The portable codes (bins + 3 where the mask drops the row), counted.
            let mut slow = vec![u32::MAX; n];
            hist_codes(&x, lo, hi, scale, bins, &mut slow);
            if let Some(m) = &mask {
                slow.iter_mut().zip(m).filter(|(_, on)| **on == 0).for_each(|(c, _)| *c = bins + 3);
            }
            let stride = bins as usize + 4;
            let mut want = vec![0u32; stride];
            slow.iter().for_each(|&c| want[c as usize] += 1);
            for copies in [1, HIST_COPIES] {
                let mut fast = vec![0u32; copies * stride];
                // SAFETY: this CPU has AVX-512 (checked above); `copies` copies of
                // bins + 4 counters; the mask covers x.
                unsafe {
                    if copies == 1 {
                        cpu_simd::hist_count_f32::<1>(&x, mask.as_deref(), lo, hi, scale, bins, f32_bins, &mut fast, stride)
                    } else {
                        cpu_simd::hist_count_f32::<HIST_COPIES>(&x, mask.as_deref(), lo, hi, scale, bins, f32_bins, &mut fast, stride)
                    }
                };
                let got: Vec<u32> = (0..stride).map(|b| (0..copies).map(|k| fast[k * stride + b]).sum()).collect();
                assert_eq!(got, want, "{what}, {copies} copies");
            }
            // Each of the first values alone, 16 times (a whole step): its own code, so that
            // two wrong codes cannot cancel out in the counts.
            let mut fast = vec![0u32; stride];
            for (i, &v) in x.iter().enumerate().take(48) {
                let mut code = [0u32];
                hist_codes(&[v], lo, hi, scale, bins, &mut code);
                // SAFETY: as above (one copy; no mask).
                unsafe { cpu_simd::hist_count_f32::<1>(&[v; 16], None, lo, hi, scale, bins, f32_bins, &mut fast, stride) };
                assert_eq!(fast[code[0] as usize], 16, "{what}: value {i} ({v:e}) not in its bin {}", code[0]);
                fast[code[0] as usize] = 0;
            }
        }
    }
    // The f32 step runs for ordinary ranges, not for ones whose f32 form is too coarse.
    assert!(cpu_simd::F32Bins::new(0.0, 256.0, 256).is_some());
    assert!(cpu_simd::F32Bins::new(-3.7, 256.0 / 9.1, 256).is_some());
    assert!(cpu_simd::F32Bins::new(1e4 + 0.1, 256.0, 256).is_none());
    assert!(cpu_simd::F32Bins::new(0.0, 1.0, 2_000_000).is_none());
}

/// Histogram counters are u32: before any could pass u32::MAX they are added into u64
/// totals, which `drain_into` adds to a histogram whole.
#[test]
fn histogram_counts_flush_before_a_u32_could_overflow() {
    let mut h = HistCounts::new(4);
    assert_eq!(h.copies.len(), HIST_COPIES * 8);
    let near = u32::MAX - 5;
    h.reserve(near as usize);
    h.copies[1] = near - 7;
    h.copies[8 + 1] = 7;
    h.reserve(3);
    assert_eq!((h.copies[1], h.pending), (near - 7, near as u64 + 3), "no flush while every counter fits");
    h.reserve(10);
    assert_eq!((h.copies[1], h.copies[8 + 1], h.pending), (0, 0, 10), "flushed before the counters could overflow");
    h.copies[1] = 10;
    // Below, above, NaN (in two copies) and unselected (not reported).
    (h.copies[4], h.copies[8 + 5], h.copies[6], h.copies[8 + 6], h.copies[7]) = (2, 3, 1, 4, 9);
    let mut acc = HistAcc { counts: vec![1, 2, 3, 4], below: 10, above: 20, nan: 30 };
    h.drain_into(&mut acc);
    let want = HistAcc { counts: vec![1, near as u64 + 12, 3, 4], below: 12, above: 23, nan: 35 };
    assert_eq!((&acc.counts, acc.below, acc.above, acc.nan), (&want.counts, want.below, want.above, want.nan), "totals added");
    h.drain_into(&mut acc);
    assert_eq!(
        (&acc.counts, acc.below, acc.above, acc.nan, h.pending),
        (&want.counts, 12, 23, 35, 0),
        "drained counters start again from zero"
    );
}

/// A block whose rows the filter all drops: every statistics kernel, at every level this
/// CPU runs, gives `BlockStats::default()`, which `run_block` returns for such a block
/// without running them.
#[test]
fn a_block_the_filter_drops_whole_gives_the_default_partial() {
    let mut rng = Rng::new(test_seed());
    let levels: Vec<Level> = [Level::Avx512, Level::Avx2, Level::Base]
        .into_iter()
        .filter(|&l| match l {
            Level::Avx512 => level() == Level::Avx512,
            Level::Avx2 => level() != Level::Base,
            Level::Base => true,
        })
        .collect();
    for &n in SIZES {
        let x: Vec<f32> = (0..n).map(|_| value(&mut rng, 0.1)).collect();
        let none = vec![0u8; n];
        for &l in &levels {
            assert_eq!(stats_f32_any::<true>(&x, Some(&none), 0, l), BlockStats::default(), "n={n} {l:?} finite");
            assert_eq!(stats_f32_any::<false>(&x, Some(&none), 0, l), BlockStats::default(), "n={n} {l:?}");
        }
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let xi: Vec<i32> = (0..n).map(|_| rng.next_u64() as i32).collect();
        let xu: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        assert_eq!(stats_any(&xd, Some(&none)), BlockStats::default(), "n={n} f64");
        assert_eq!(stats_any(&xi, Some(&none)), BlockStats::default(), "n={n} i32");
        assert_eq!(stats_any(&xu, Some(&none)), BlockStats::default(), "n={n} u8");
    }
}

/// Integer sums of 8/16-bit columns give exactly what the f64 lanes give (the partial sums
/// are integers below 2^53), with and without a mask, with the types' extremes, up to the
/// largest block they take.
#[test]
fn small_integer_statistics_equal_the_f64_lanes_bit_for_bit() {
    fn check<T: Elem>(rng: &mut Rng, n: usize, extremes: [T; 2], f: impl Fn(u64) -> T) {
        let x: Vec<T> = (0..n)
            .map(|_| {
                let r = rng.next_u64();
                if r.is_multiple_of(7) { extremes[(r >> 8) as usize % 2] } else { f(r >> 16) }
            })
            .collect();
        let keep = rng.uniform();
        let mask: Vec<u8> = (0..n).map(|_| (rng.uniform() < keep) as u8).collect();
        for m in [None, Some(mask.as_slice())] {
            let first = first_finite(&x, m, |_| true);
            let want = match m {
                None => stats_lanes::<T, false>(&x, &[], first.map_or(0.0, |v| v.f64())),
                Some(m) => stats_lanes::<T, true>(&x, m, first.map_or(0.0, |v| v.f64())),
            };
            let got = stats_any(&x, m);
            let bits = |b: &BlockStats| {
                (b.count, b.nan, b.inf, b.pivot.to_bits(), b.sum_d.to_bits(), b.sum_d2.to_bits(), b.min.to_bits(), b.max.to_bits())
            };
            assert_eq!(bits(&got), bits(&want), "n={n} {} masked={}", std::any::type_name::<T>(), m.is_some());
            assert_eq!((got.fmin, got.fmax, got.imin, got.imax), (want.fmin, want.fmax, want.imin, want.imax), "n={n}");
        }
    }
    let mut rng = Rng::new(test_seed());
    for &n in SIZES.iter().chain(&[8193, 65_535, SMALL_INT_ROWS]) {
        check::<u8>(&mut rng, n, [u8::MIN, u8::MAX], |r| r as u8);
        check::<i8>(&mut rng, n, [i8::MIN, i8::MAX], |r| r as i8);
        check::<u16>(&mut rng, n, [u16::MIN, u16::MAX], |r| r as u16);
        check::<i16>(&mut rng, n, [i16::MIN, i16::MAX], |r| r as i16);
    }
}

/// The pivot search (runs of 64 skipped by a vectorized test) finds the same value as a
/// plain search, for masks from empty to full and columns from clean to all NaN/±inf.
#[test]
fn the_pivot_search_finds_the_first_selected_finite_value() {
    let mut rng = Rng::new(test_seed());
    for &n in SIZES.iter().chain(&[64, 65, 127, 128, 129, 5000]) {
        for keep in [0.0, 0.0005, 0.01, 0.5, 1.0] {
            for nan_rate in [0.0, 0.5, 0.999, 1.0] {
                let x: Vec<f32> = (0..n).map(|_| value(&mut rng, nan_rate)).collect();
                let mask: Vec<u8> = (0..n).map(|_| (rng.uniform() < keep) as u8).collect();
                let plain = x.iter().zip(&mask).find(|&(v, &on)| on != 0 && v.is_finite()).map(|(v, _)| v.to_bits());
                let got = first_finite(&x, Some(&mask), |v| v.is_finite()).map(f32::to_bits);
                assert_eq!(got, plain, "n={n} keep={keep} nan_rate={nan_rate} masked");
                let plain = x.iter().find(|v| v.is_finite()).map(|v| v.to_bits());
                assert_eq!(first_finite(&x, None, |v| v.is_finite()).map(f32::to_bits), plain, "n={n} nan_rate={nan_rate}");
            }
        }
    }
}

/// The f16 and bf16 conversions give `half`'s f32 for every one of the 65,536 bit
/// patterns (NaN payloads and signs included), at every level this CPU has, and at lengths
/// that leave a tail.
#[test]
fn half_conversions_match_the_half_crate_on_every_bit_pattern() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let levels = match level() {
        Level::Avx512 => vec![Level::Base, Level::Avx2, Level::Avx512],
        Level::Avx2 => vec![Level::Base, Level::Avx2],
        Level::Base => vec![Level::Base],
    };
    for len in [all.len(), all.len() - 3, 7, 0] {
        // A window that starts off the first pattern, so that the tails differ.
        let src = &all[all.len() - len..];
        let mut got = vec![0f32; len];
        bf16_to_f32(src, &mut got);
        for (&h, g) in src.iter().zip(&got) {
            assert_eq!(g.to_bits(), bf16::from_bits(h).to_f32().to_bits(), "bf16 {h:#06x}");
        }
        for &l in &levels {
            got.fill(0.0);
            f16_to_f32(src, &mut got, l);
            for (&h, g) in src.iter().zip(&got) {
                assert_eq!(g.to_bits(), f16::from_bits(h).to_f32().to_bits(), "f16 {h:#06x} at {l:?}");
            }
        }
    }
}
