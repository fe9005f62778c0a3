//! Hand-written vector kernels of the CPU backend, for loops the compiler does not
//! vectorize well on its own: the row-wise group-by update (one row's values of eight
//! columns, transposed into one vector, update its group's accumulators), in AVX-512 and
//! AVX2 forms and a four-column AVX2 form, and the AVX-512 f32 statistics kernel.
//!
//! Each function names the features it requires; `cpu.rs` calls it only after `level()`
//! saw them on this CPU.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::cpu::{LaneStats, Lanes8};

/// Columns one pass of the row-wise group kernel updates per row.
pub(crate) const GW: usize = 8;
/// Rows the row-wise group kernel transposes at a time.
const GR: usize = 16;

/// The first stage of the row kernels' 8-column transpose, within 128-bit lanes (lane L of
/// each column vector in `c` holds rows 4L..4L+3): returns `u` where `u[q]` holds, in lane
/// L, row 4L+q's columns 0-3 and `u[q+4]` its columns 4-7. The same unpacks and shuffles
/// serve AVX-512 (`_mm512_*`) and AVX2 (`_mm256_*`).
macro_rules! transpose_in_lanes {
    ($c:expr, $unpacklo:ident, $unpackhi:ident, $shuffle:ident) => {{
        let c = $c;
        let (lo01, hi01) = ($unpacklo(c[0], c[1]), $unpackhi(c[0], c[1]));
        let (lo23, hi23) = ($unpacklo(c[2], c[3]), $unpackhi(c[2], c[3]));
        let (lo45, hi45) = ($unpacklo(c[4], c[5]), $unpackhi(c[4], c[5]));
        let (lo67, hi67) = ($unpacklo(c[6], c[7]), $unpackhi(c[6], c[7]));
        [
            $shuffle::<0x44>(lo01, lo23),
            $shuffle::<0xEE>(lo01, lo23),
            $shuffle::<0x44>(hi01, hi23),
            $shuffle::<0xEE>(hi01, hi23),
            $shuffle::<0x44>(lo45, lo67),
            $shuffle::<0xEE>(lo45, lo67),
            $shuffle::<0x44>(hi45, hi67),
            $shuffle::<0xEE>(hi45, hi67),
        ]
    }};
}

/// Spare accumulators after a block's `g` groups, taking its unselected rows (which the
/// row-wise kernels update like any other, rather than branch on a filter's random mask):
/// row r goes to spare `r % SPARES`, so that they do not all wait on one accumulator's
/// store-to-load chain (with one spare, that chain bounded every filtered group-by: with
/// eight, 8 columns under a filter keeping 35 % of rows ran 13 % faster, 2 columns under
/// one keeping 2 % 1.8× faster, measured).
pub(crate) const SPARES: usize = 8;

/// The accumulator of row `r` with group slot `slot` (`u32::MAX`: unselected) in a block of
/// `g` groups: the group's, or a spare after them.
#[inline(always)]
pub(crate) fn lane_of(slot: u32, g: usize, r: usize) -> usize {
    (slot as usize).min(g + r % SPARES)
}

/// Whether no row of a step is selected (all slots `u32::MAX`): with `SKIP` the row kernels
/// skip such steps, whose updates would go to spares only (a selective filter makes most
/// steps so; with a filter keeping 2 % of rows, a group-by of 2 columns ran 24 % faster, of
/// 8 columns 15 %; where most steps have a selected row the test costs 2-3 %, measured).
#[inline(always)]
fn none_selected(ks: &[u32]) -> bool {
    // A fold rather than `all`: no early exit, so it compiles to a few vector ANDs.
    ks.iter().fold(u32::MAX, |a, &k| a & k) == u32::MAX
}

/// How far ahead (in f32 elements) the row-wise group kernels prefetch each of their (up to
/// eight) columns: nearer than the one-column kernels' `PREFETCH_F32`, so that the eight
/// columns' prefetched lines stay in the L1 cache (with 2048, a 64-key group-by of eight
/// columns ran 8 % slower, AVX-512 and AVX2 alike, measured).
const GROUP_PREFETCH_F32: usize = 512;

/// Running statistics of one group over up to `GW` f32 columns, one lane per column.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct GroupLanes {
    /// Σ (x - pivot) per column.
    pub s: [f64; GW],
    /// Σ (x - pivot)² per column.
    pub s2: [f64; GW],
    /// The column's first finite value in the group (0 when it has none).
    pub pivot: [f64; GW],
    /// Minimum (NaN skipped).
    pub mn: [f32; GW],
    /// Maximum (NaN skipped).
    pub mx: [f32; GW],
    /// NaN values per column (the non-NaN count is the group's rows minus these).
    pub nan: [u32; GW],
    /// Bit c: column c has its pivot.
    pub has_pivot: u8,
}

impl GroupLanes {
    /// No rows yet.
    pub(crate) const EMPTY: GroupLanes = GroupLanes {
        s: [0.0; GW],
        s2: [0.0; GW],
        pivot: [0.0; GW],
        mn: [f32::INFINITY; GW],
        mx: [f32::NEG_INFINITY; GW],
        nan: [0; GW],
        has_pivot: 0,
    };
}

/// Adds one row's values (`v`, one lane per column) to its group, shifted by the group's
/// pivots (set beforehand by `group_pivots`). AVX-512. With `NAN` false the caller knows
/// that no lane is NaN, and the NaN test and count are skipped (the same bits otherwise).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn update<const NAN: bool>(a: &mut GroupLanes, v: __m256) {
    // SAFETY (whole body): the caller runs with AVX-512 F/VL/DQ; every pointer is a field
    // of `a` of the width read or written (`GroupLanes` is 64-byte aligned, but the loads
    // and stores are the unaligned forms anyway).
    unsafe {
        let x = _mm512_cvtps_pd(v);
        let p = _mm512_loadu_pd(a.pivot.as_ptr());
        let d = if NAN {
            // fpclass 0x81: quiet or signalling NaN.
            let nan = _mm256_fpclass_ps_mask::<0x81>(v);
            let cnt = _mm256_loadu_si256(a.nan.as_ptr() as *const __m256i);
            _mm256_storeu_si256(a.nan.as_mut_ptr() as *mut __m256i, _mm256_mask_add_epi32(cnt, nan, cnt, _mm256_set1_epi32(1)));
            _mm512_maskz_sub_pd(!nan, x, p)
        } else {
            _mm512_sub_pd(x, p)
        };
        _mm512_storeu_pd(a.s.as_mut_ptr(), _mm512_add_pd(_mm512_loadu_pd(a.s.as_ptr()), d));
        _mm512_storeu_pd(a.s2.as_mut_ptr(), _mm512_add_pd(_mm512_loadu_pd(a.s2.as_ptr()), _mm512_mul_pd(d, d)));
        // min_ps(v, m) = v < m ? v : m, so NaN keeps m (likewise max).
        _mm256_storeu_ps(a.mn.as_mut_ptr(), _mm256_min_ps(v, _mm256_loadu_ps(a.mn.as_ptr())));
        _mm256_storeu_ps(a.mx.as_mut_ptr(), _mm256_max_ps(v, _mm256_loadu_ps(a.mx.as_ptr())));
    }
}

/// Sets each group's missing pivots per column: its first finite value in row order (0
/// when it has none; a group keeps a pivot it has, from an earlier block of its unit). The
/// sums then shift by it from the first row on: the rows before it hold only NaN (skipped)
/// or ±inf, whose shifted sums do not depend on the pivot. `missing`: the pivots the
/// block's groups (of g) lack, so that the scan stops once they are all found.
/// `slot_of(i)`: row i's slot (`u32::MAX` unselected), for rows `[0, n)`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
pub(crate) fn group_pivots(cols: &[&[f32]], n: usize, slot_of: impl Fn(usize) -> u32, g: usize, missing: usize, lanes: &mut [GroupLanes]) {
    let all = ((1u16 << cols.len()) - 1) as u8;
    let mut missing = missing;
    for i in 0..n {
        let slot = slot_of(i);
        let Some(a) = lanes.get_mut(slot as usize).filter(|_| (slot as usize) < g) else { continue };
        if a.has_pivot == all {
            continue;
        }
        for (c, col) in cols.iter().enumerate() {
            if a.has_pivot & (1 << c) == 0 && col[i].is_finite() {
                a.pivot[c] = col[i] as f64;
                a.has_pivot |= 1 << c;
                missing -= 1;
            }
        }
        if missing == 0 {
            break;
        }
    }
}

/// Adds rows `[0, n)` of up to `GW` f32 columns to their groups' accumulators (whose pivots
/// `group_pivots` set): row i goes to its group's accumulators `lanes[slots[i]]`, or an
/// unselected row to a spare (`lane_of`), in row order. Columns past `cols.len()` read as 0 (lanes nobody
/// reads). Blocks of 16 rows without a NaN (most, in real data) take the update without
/// the NaN test and count.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/DQ. Every column holds at least `slots.len()` values
/// and `lanes.len() == g + SPARES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn group_rows<const SKIP: bool>(cols: &[&[f32]], slots: &[u32], g: usize, lanes: &mut [GroupLanes]) {
    let n = slots.len();
    assert!(cols.len() <= GW && lanes.len() == g + SPARES && cols.iter().all(|c| c.len() >= n), "group_rows: bad shapes");
    let full = n / GR * GR;
    // permutex2var indices: [A.lane0, B.lane0, A.lane1, B.lane1] and the same of lanes 2, 3.
    let idx01 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let idx23 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let zero = _mm512_setzero_ps();
    let mut i = 0;
    while i < full {
        // c[k]: rows i..i+16 of column k.
        let mut c = [zero; GW];
        for (k, col) in cols.iter().enumerate() {
            super::cpu::prefetch(col, i + GROUP_PREFETCH_F32);
            // SAFETY: i + GR <= n <= col.len().
            c[k] = unsafe { _mm512_loadu_ps(col.as_ptr().add(i)) };
        }
        let ks: &[u32; GR] = slots[i..i + GR].try_into().expect("GR rows");
        if SKIP && none_selected(ks) {
            i += GR;
            continue;
        }
        // Transpose within 128-bit lanes (lane L holds rows i+4L..i+4L+3).
        let u = transpose_in_lanes!(&c, _mm512_unpacklo_ps, _mm512_unpackhi_ps, _mm512_shuffle_ps);
        // rows[q]: rows q (low half) and 4+q (high half); rows[4+q]: rows 8+q and 12+q.
        let mut rows = [zero; 8];
        for q in 0..4 {
            rows[q] = _mm512_permutex2var_ps(u[q], idx01, u[q + 4]);
            rows[q + 4] = _mm512_permutex2var_ps(u[q], idx23, u[q + 4]);
        }
        // Any NaN among the 16 rows? (fpclass 0x81: quiet or signalling NaN.)
        let nans = c.iter().fold(0, |m, &v| m | _mm512_fpclass_ps_mask::<0x81>(v));
        // SAFETY: AVX-512 is enabled here; every slot is at most g < lanes.len().
        unsafe {
            if nans == 0 {
                update16::<false>(lanes, ks, g, &rows);
            } else {
                update16::<true>(lanes, ks, g, &rows);
            }
        }
        i += GR;
    }
    for i in full..n {
        // SAFETY: as above; the row holds GW f32 values.
        unsafe { update::<true>(&mut lanes[lane_of(slots[i], g, i)], _mm256_loadu_ps(tail_row(cols, i).as_ptr())) };
    }
}

/// Row i's values of the columns, 0 past `cols.len()`: a tail row of the row kernels.
#[inline(always)]
fn tail_row(cols: &[&[f32]], i: usize) -> [f32; GW] {
    let mut v = [0.0; GW];
    for (k, col) in cols.iter().enumerate() {
        v[k] = col[i];
    }
    v
}

/// The 16 rows of one block of `group_rows` into their groups, in row order: row 4L+q is
/// in `rows[q + 4 * (L / 2)]`, the low half for even L.
///
/// # Safety
/// AVX-512 F/VL/DQ; `lanes.len() >= g + SPARES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn update16<const NAN: bool>(lanes: &mut [GroupLanes], ks: &[u32; GR], g: usize, rows: &[__m512; 8]) {
    debug_assert!(lanes.len() >= g + SPARES);
    // No closures here: this function has no target features of its own (it is inlined
    // into `group_rows`), so a closure would be a separate function without them, and its
    // intrinsics calls (ten times slower, measured).
    macro_rules! add {
        ($r:expr, lo($q:expr)) => {
            // SAFETY: the caller has AVX-512; lane_of(..) < g + SPARES <= lanes.len().
            unsafe { update::<NAN>(lanes.get_unchecked_mut(lane_of(ks[$r], g, $r)), _mm512_castps512_ps256(rows[$q])) }
        };
        ($r:expr, hi($q:expr)) => {
            // SAFETY: as above.
            unsafe {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(rows[$q])));
                update::<NAN>(lanes.get_unchecked_mut(lane_of(ks[$r], g, $r)), hi)
            }
        };
    }
    // Written out so that the 16 rows unroll.
    add!(0, lo(0));
    add!(1, lo(1));
    add!(2, lo(2));
    add!(3, lo(3));
    add!(4, hi(0));
    add!(5, hi(1));
    add!(6, hi(2));
    add!(7, hi(3));
    add!(8, lo(4));
    add!(9, lo(5));
    add!(10, lo(6));
    add!(11, lo(7));
    add!(12, hi(4));
    add!(13, hi(5));
    add!(14, hi(6));
    add!(15, hi(7));
}

/// Values `stats_f32` reads 16 at a time as f32: f32 itself, and f16/bf16 widened exactly
/// (but for a NaN's payload, which statistics never look at).
#[cfg(target_arch = "x86_64")]
pub(crate) trait Wide16: Copy {
    /// 16 values from `p`, as f32.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL and F16C; 16 values readable at `p`.
    unsafe fn load16(p: *const Self) -> __m512;
    /// The `live` values of 16 from `p` (the others 0.0).
    ///
    /// # Safety
    /// As `load16`, for the live lanes only.
    unsafe fn load16_part(live: __mmask16, p: *const Self) -> __m512;
}

#[cfg(target_arch = "x86_64")]
impl Wide16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller's promise.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load16_part(live: __mmask16, p: *const f32) -> __m512 {
        // SAFETY: the caller's promise.
        unsafe { _mm512_maskz_loadu_ps(live, p) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Wide16 for half::f16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        // SAFETY: the caller's promise.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn load16_part(live: __mmask16, p: *const half::f16) -> __m512 {
        // SAFETY: the caller's promise; zeroed halves widen to 0.0.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, p as *const i16)) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Wide16 for half::bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::bf16) -> __m512 {
        // SAFETY: the caller's promise. A bf16 is the top half of an f32.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)))) }
    }
    #[inline(always)]
    unsafe fn load16_part(live: __mmask16, p: *const half::bf16) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, p as *const i16)))) }
    }
}

/// Sums, bounds and counts of a block of f32 values, or of f16/bf16 values widened to f32
/// in registers (`Wide16`), rows whose `mask` byte is non-zero when `MASKED`, shifted by
/// `pivot`: the portable `stats_f32_lanes` kernel of `cpu.rs` written with intrinsics, with
/// the same 16 lanes (element `i` in lane `i % 16`), the same per-lane updates and the same
/// final reduction, so its results are bit-identical (for halves: to those over the
/// converted values; reading them in place, without the conversion's buffer, made
/// statistics of eight bf16 columns 1.6 times faster).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/DQ and F16C; `mask.len() >= x.len()` when `MASKED`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,popcnt,f16c")]
pub(crate) unsafe fn stats_f32<S: Wide16, const MASKED: bool, const FINITE: bool>(x: &[S], mask: &[u8], pivot: f64) -> LaneStats {
    assert!(!MASKED || mask.len() >= x.len(), "stats_f32: mask shorter than the values");
    let n = x.len();
    let piv = _mm512_set1_pd(pivot);
    let (mut s_lo, mut s_hi, mut s2_lo, mut s2_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd());
    let (mut mn, mut mx) = (_mm512_set1_ps(f32::INFINITY), _mm512_set1_ps(f32::NEG_INFINITY));
    let (mut fmn, mut fmx) = (mn, mx);
    let mut count = 0u64;
    // One step: 16 values (the `live` ones) of `x` from i on. In a whole step (`$whole`) of
    // f32 the compiler folds the loads into the f64 conversions, and without a row mask min/max
    // skip NaN by the instructions' own rule (a NaN first operand yields the second); the
    // tail's zeroed lanes need the masked forms.
    macro_rules! step {
        ($i:expr, $live:expr, $whole:expr) => {{
            let (i, live): (usize, __mmask16) = ($i, $live);
            let p = x.as_ptr().wrapping_add(i);
            // SAFETY: a whole step reads x[i..i + 16], inside `x`; a partial one reads only
            // the `live` lanes, all inside `x` (and `mask`).
            let v = unsafe { if $whole { S::load16(p) } else { S::load16_part(live, p) } };
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(v));
            let on = if MASKED {
                // SAFETY: as above.
                let m = unsafe { _mm_maskz_loadu_epi8(live, mask.as_ptr().add(i) as *const i8) };
                _mm_test_epi8_mask(m, m)
            } else {
                live
            };
            // Selected and not NaN.
            let ok = _mm512_mask_cmp_ps_mask::<_CMP_ORD_Q>(on, v, v);
            let d_lo = _mm512_maskz_sub_pd(ok as u8, lo, piv);
            let d_hi = _mm512_maskz_sub_pd((ok >> 8) as u8, hi, piv);
            s_lo = _mm512_add_pd(s_lo, d_lo);
            s_hi = _mm512_add_pd(s_hi, d_hi);
            s2_lo = _mm512_add_pd(s2_lo, _mm512_mul_pd(d_lo, d_lo));
            s2_hi = _mm512_add_pd(s2_hi, _mm512_mul_pd(d_hi, d_hi));
            // min_ps(v, m) = v < m ? v : m (the portable kernel's `if ok & (v < m) { v } else
            // { m }`): a NaN `v` keeps m.
            if $whole && !MASKED {
                mn = _mm512_min_ps(v, mn);
                mx = _mm512_max_ps(v, mx);
            } else {
                mn = _mm512_mask_min_ps(mn, ok, v, mn);
                mx = _mm512_mask_max_ps(mx, ok, v, mx);
            }
            if FINITE {
                // fpclass 0x18: ±inf.
                let fin = ok & !_mm512_fpclass_ps_mask::<0x18>(v);
                fmn = _mm512_mask_min_ps(fmn, fin, v, fmn);
                fmx = _mm512_mask_max_ps(fmx, fin, v, fmx);
            }
            count += ok.count_ones() as u64;
        }};
    }
    // Whole steps, then the tail (a partial step, in the same lanes).
    let full = n / 16 * 16;
    let mut i = 0;
    while i < full {
        super::cpu::prefetch(x, i + super::cpu::PREFETCH_F32 * 4 / std::mem::size_of::<S>());
        step!(i, 0xFFFF, true);
        i += 16;
    }
    if full < n {
        step!(full, (1u16 << (n - full)) - 1, false);
    }
    let lanes = |lo: __m512d, hi: __m512d| {
        let mut a = [0f64; 16];
        // SAFETY: `a` holds 16 f64.
        unsafe {
            _mm512_storeu_pd(a.as_mut_ptr(), lo);
            _mm512_storeu_pd(a.as_mut_ptr().add(8), hi);
        }
        a
    };
    let f32s = |z: __m512| {
        let mut a = [0f32; 16];
        // SAFETY: `a` holds 16 f32.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), z) };
        a
    };
    LaneStats { count, s: lanes(s_lo, s_hi), s2: lanes(s2_lo, s2_hi), mn: f32s(mn), mx: f32s(mx), fmn: f32s(fmn), fmx: f32s(fmx) }
}

/// The whole steps of `cpu::stats_lanes` over f64 values, one AVX-512 register per lane
/// array: the same operations lane by lane (a subtraction, then a product and a sum, never
/// fused; min/max keep the old value unless the new one is smaller/larger), so the same
/// lanes. Statistics of f64 columns ran ~1.2 times faster than the compiler's vectorization
/// of the portable loop.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/DQ; `mask.len() >= x.len()` when `MASKED`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,popcnt")]
pub(crate) unsafe fn stats_f64_lanes<const MASKED: bool>(x: &[f64], mask: &[u8], pivot: f64) -> Lanes8 {
    assert!(!MASKED || mask.len() >= x.len(), "stats_f64_lanes: mask shorter than the values");
    let full = x.len() / 8 * 8;
    let piv = _mm512_set1_pd(pivot);
    let (mut s, mut s2) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let (mut mn, mut mx) = (_mm512_set1_pd(f64::INFINITY), _mm512_set1_pd(f64::NEG_INFINITY));
    let (mut fmn, mut fmx) = (mn, mx);
    let (mut cnt, mut sel, mut inf) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
    let one = _mm512_set1_epi64(1);
    let mut i = 0;
    while i < full {
        super::cpu::prefetch(x, i + super::cpu::PREFETCH_F32 / 2);
        // SAFETY: i + 8 <= full <= x.len() (and mask.len()).
        let (v, on) = unsafe {
            let v = _mm512_loadu_pd(x.as_ptr().add(i));
            let on = if MASKED {
                let m = _mm_loadl_epi64(mask.as_ptr().add(i) as *const __m128i);
                _mm_test_epi8_mask(m, m) as u8
            } else {
                0xFF
            };
            (v, on)
        };
        let ok = _mm512_mask_cmp_pd_mask::<_CMP_ORD_Q>(on, v, v);
        let d = _mm512_maskz_sub_pd(ok, v, piv);
        s = _mm512_add_pd(s, d);
        s2 = _mm512_add_pd(s2, _mm512_mul_pd(d, d));
        mn = _mm512_mask_min_pd(mn, ok, v, mn);
        mx = _mm512_mask_max_pd(mx, ok, v, mx);
        // fpclass 0x18: ±inf.
        let is_inf = _mm512_fpclass_pd_mask::<0x18>(v);
        let fin = ok & !is_inf;
        fmn = _mm512_mask_min_pd(fmn, fin, v, fmn);
        fmx = _mm512_mask_max_pd(fmx, fin, v, fmx);
        cnt = _mm512_mask_add_epi64(cnt, ok, cnt, one);
        sel = _mm512_mask_add_epi64(sel, on, sel, one);
        inf = _mm512_mask_add_epi64(inf, ok & is_inf, inf, one);
        i += 8;
    }
    let f = |z: __m512d| {
        let mut a = [0f64; 8];
        // SAFETY: `a` holds 8 f64.
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), z) };
        a
    };
    // Each count is at most x.len() / 8 + 1, far below u32::MAX for any block.
    let c = |z: __m512i| {
        let mut a = [0u64; 8];
        // SAFETY: `a` holds 8 u64.
        unsafe { _mm512_storeu_si512(a.as_mut_ptr() as *mut __m512i, z) };
        a.map(|v| v as u32)
    };
    Lanes8 { s: f(s), s2: f(s2), mn: f(mn), mx: f(mx), fmn: f(fmn), fmx: f(fmx), cnt: c(cnt), sel: c(sel), inf: c(inf) }
}

/// Adds one row's values to its group, as `update` but with AVX2 only: the same operations
/// lane by lane (a NaN lane adds +0.0 and keeps its bounds), so the same bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn update_avx2<const NAN: bool>(a: &mut GroupLanes, v: __m256) {
    // SAFETY (whole body): the caller runs with AVX2; every pointer is a field of `a` of the
    // width read or written (unaligned loads and stores).
    unsafe {
        let x_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        let x_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
        let p = a.pivot.as_ptr();
        let mut d_lo = _mm256_sub_pd(x_lo, _mm256_loadu_pd(p));
        let mut d_hi = _mm256_sub_pd(x_hi, _mm256_loadu_pd(p.add(4)));
        if NAN {
            d_lo = _mm256_and_pd(d_lo, _mm256_cmp_pd::<_CMP_ORD_Q>(x_lo, x_lo));
            d_hi = _mm256_and_pd(d_hi, _mm256_cmp_pd::<_CMP_ORD_Q>(x_hi, x_hi));
            // All ones (-1) in the NaN lanes.
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            let cnt = _mm256_loadu_si256(a.nan.as_ptr() as *const __m256i);
            _mm256_storeu_si256(a.nan.as_mut_ptr() as *mut __m256i, _mm256_sub_epi32(cnt, nan));
        }
        let (s, s2) = (a.s.as_mut_ptr(), a.s2.as_mut_ptr());
        _mm256_storeu_pd(s, _mm256_add_pd(_mm256_loadu_pd(s), d_lo));
        _mm256_storeu_pd(s.add(4), _mm256_add_pd(_mm256_loadu_pd(s.add(4)), d_hi));
        _mm256_storeu_pd(s2, _mm256_add_pd(_mm256_loadu_pd(s2), _mm256_mul_pd(d_lo, d_lo)));
        _mm256_storeu_pd(s2.add(4), _mm256_add_pd(_mm256_loadu_pd(s2.add(4)), _mm256_mul_pd(d_hi, d_hi)));
        // min_ps(v, m) = v < m ? v : m, so NaN keeps m (likewise max).
        _mm256_storeu_ps(a.mn.as_mut_ptr(), _mm256_min_ps(v, _mm256_loadu_ps(a.mn.as_ptr())));
        _mm256_storeu_ps(a.mx.as_mut_ptr(), _mm256_max_ps(v, _mm256_loadu_ps(a.mx.as_ptr())));
    }
}

/// `group_rows` with AVX2 only: 8 rows at a time, transposed 8×8.
///
/// # Safety
/// The CPU must have AVX2. Same shapes as `group_rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn group_rows_avx2<const SKIP: bool>(cols: &[&[f32]], slots: &[u32], g: usize, lanes: &mut [GroupLanes]) {
    const R: usize = 8;
    let n = slots.len();
    assert!(cols.len() <= GW && lanes.len() == g + SPARES && cols.iter().all(|c| c.len() >= n), "group_rows_avx2: bad shapes");
    let full = n / R * R;
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // c[k]: rows i..i+8 of column k.
        let mut c = [zero; GW];
        for (k, col) in cols.iter().enumerate() {
            super::cpu::prefetch(col, i + GROUP_PREFETCH_F32);
            // SAFETY: i + R <= n <= col.len().
            c[k] = unsafe { _mm256_loadu_ps(col.as_ptr().add(i)) };
        }
        let ks: &[u32; R] = slots[i..i + R].try_into().expect("R rows");
        if SKIP && none_selected(ks) {
            i += R;
            continue;
        }
        // 8×8 transpose: within 128-bit lanes (lane L holds rows i+4L..i+4L+3), then the
        // lanes are paired.
        let u = transpose_in_lanes!(&c, _mm256_unpacklo_ps, _mm256_unpackhi_ps, _mm256_shuffle_ps);
        let rows = [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ];
        // Any NaN among the 8 rows?
        let nans = c.iter().fold(_mm256_setzero_ps(), |m, &v| _mm256_or_ps(m, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)));
        let add = |lanes: &mut [GroupLanes], nan: bool| {
            for (r, &v) in rows.iter().enumerate() {
                // SAFETY: AVX2 is enabled here; lane_of(..) < g + SPARES = lanes.len() (asserted above).
                let a = unsafe { lanes.get_unchecked_mut(lane_of(ks[r], g, r)) };
                // SAFETY: AVX2 is enabled here.
                unsafe { if nan { update_avx2::<true>(a, v) } else { update_avx2::<false>(a, v) } }
            }
        };
        add(lanes, _mm256_movemask_ps(nans) != 0);
        i += R;
    }
    for i in full..n {
        // SAFETY: as above; the row holds GW f32 values.
        unsafe { update_avx2::<true>(&mut lanes[lane_of(slots[i], g, i)], _mm256_loadu_ps(tail_row(cols, i).as_ptr())) };
    }
}

/// Adds one row's values of up to four columns (`v`, one lane per column) to the first four
/// lanes of its group, as `update_avx2` does to all eight: the same operations lane by lane,
/// so the same bits.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn update4<const NAN: bool>(a: &mut GroupLanes, v: __m128) {
    // SAFETY (whole body): the caller runs with AVX2; every pointer is a field of `a` at
    // least as wide as read or written (unaligned loads and stores).
    unsafe {
        let x = _mm256_cvtps_pd(v);
        let mut d = _mm256_sub_pd(x, _mm256_loadu_pd(a.pivot.as_ptr()));
        if NAN {
            d = _mm256_and_pd(d, _mm256_cmp_pd::<_CMP_ORD_Q>(x, x));
            // All ones (-1) in the NaN lanes.
            let nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
            let cnt = _mm_loadu_si128(a.nan.as_ptr() as *const __m128i);
            _mm_storeu_si128(a.nan.as_mut_ptr() as *mut __m128i, _mm_sub_epi32(cnt, nan));
        }
        let (s, s2) = (a.s.as_mut_ptr(), a.s2.as_mut_ptr());
        _mm256_storeu_pd(s, _mm256_add_pd(_mm256_loadu_pd(s), d));
        _mm256_storeu_pd(s2, _mm256_add_pd(_mm256_loadu_pd(s2), _mm256_mul_pd(d, d)));
        // min_ps(v, m) = v < m ? v : m, so NaN keeps m (likewise max).
        _mm_storeu_ps(a.mn.as_mut_ptr(), _mm_min_ps(v, _mm_loadu_ps(a.mn.as_ptr())));
        _mm_storeu_ps(a.mx.as_mut_ptr(), _mm_max_ps(v, _mm_loadu_ps(a.mx.as_ptr())));
    }
}

/// `group_rows` for up to four columns, with AVX2: 8 rows at a time, transposed 4×8, each
/// row's four values updating the first four lanes of its group (half the accumulator
/// bytes per row of the eight-lane kernels, whose idle lanes are stored all the same).
///
/// # Safety
/// The CPU must have AVX2. Same shapes as `group_rows`, with at most four columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn group_rows4<const SKIP: bool>(cols: &[&[f32]], slots: &[u32], g: usize, lanes: &mut [GroupLanes]) {
    const R: usize = 8;
    let n = slots.len();
    assert!(cols.len() <= 4 && lanes.len() == g + SPARES && cols.iter().all(|c| c.len() >= n), "group_rows4: bad shapes");
    let full = n / R * R;
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // c[k]: rows i..i+8 of column k.
        let mut c = [zero; 4];
        for (k, col) in cols.iter().enumerate() {
            super::cpu::prefetch(col, i + GROUP_PREFETCH_F32);
            // SAFETY: i + R <= n <= col.len().
            c[k] = unsafe { _mm256_loadu_ps(col.as_ptr().add(i)) };
        }
        let ks: &[u32; R] = slots[i..i + R].try_into().expect("R rows");
        if SKIP && none_selected(ks) {
            i += R;
            continue;
        }
        // Within 128-bit lanes: q[r] holds row r's four values (low half) and row 4+r's.
        let (lo01, hi01) = (_mm256_unpacklo_ps(c[0], c[1]), _mm256_unpackhi_ps(c[0], c[1]));
        let (lo23, hi23) = (_mm256_unpacklo_ps(c[2], c[3]), _mm256_unpackhi_ps(c[2], c[3]));
        let q = [
            _mm256_shuffle_ps::<0x44>(lo01, lo23),
            _mm256_shuffle_ps::<0xEE>(lo01, lo23),
            _mm256_shuffle_ps::<0x44>(hi01, hi23),
            _mm256_shuffle_ps::<0xEE>(hi01, hi23),
        ];
        // Any NaN among the 8 rows?
        let nans = c.iter().fold(_mm256_setzero_ps(), |m, &v| _mm256_or_ps(m, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)));
        let add = |lanes: &mut [GroupLanes], nan: bool| {
            for r in 0..R {
                let v = if r < 4 { _mm256_castps256_ps128(q[r]) } else { _mm256_extractf128_ps::<1>(q[r - 4]) };
                // SAFETY: AVX2 is enabled here; lane_of(..) < g + SPARES = lanes.len() (asserted above).
                let a = unsafe { lanes.get_unchecked_mut(lane_of(ks[r], g, r)) };
                // SAFETY: AVX2 is enabled here.
                unsafe { if nan { update4::<true>(a, v) } else { update4::<false>(a, v) } }
            }
        };
        add(lanes, _mm256_movemask_ps(nans) != 0);
        i += R;
    }
    for i in full..n {
        // SAFETY: as above; the row holds at least four f32 values.
        unsafe { update4::<true>(&mut lanes[lane_of(slots[i], g, i)], _mm_loadu_ps(tail_row(cols, i).as_ptr())) };
    }
}

/// f16 values (as bits) to f32, eight at a time by F16C's conversion: the instruction
/// `half` uses, one call per eight values (so the same bits, NaN payloads included), in a
/// loop without its per-call copies and with a prefetch (statistics of f16 columns ran 1.7
/// times faster, measured).
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: lengths differ");
    let full = src.len() / 8 * 8;
    for i in (0..full).step_by(8) {
        // Once per 64-byte line of `src`: a loop this short still misses the cache
        // without it (20 % slower f16 statistics, measured).
        if i % 32 == 0 {
            super::cpu::prefetch(src, i + super::cpu::PREFETCH_F32);
        }
        // SAFETY: i + 8 <= full <= both lengths.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for i in full..src.len() {
        dst[i] = half::f16::from_bits(src[i]).to_f32();
    }
}

/// Copies rows `[0, n)` of eight 4-byte columns that sit side by side in each row (column
/// c's value of row r at `first + r * stride + 4 * c`, as in a row-major matrix) into the
/// columns' buffers (`dst[c]`, 4·n bytes): 8 rows at a time, transposed 8×8 in registers,
/// so that a row's 32 bytes are one load and a column's 8 values one store (one element at
/// a time, the gather was most of the time of a matrix's statistics).
///
/// # Safety
/// The CPU must have AVX2. For every row r < n, the 32 bytes at `first + r * stride` are
/// readable (they are the eight columns' values of row r).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose8(first: *const u8, stride: usize, n: usize, mut dst: [&mut [u8]; 8]) {
    assert!(dst.iter().all(|d| d.len() >= 4 * n), "transpose8: short buffers");
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // c[k]: row i+k's eight values.
        let mut c = [_mm256_setzero_ps(); 8];
        for (k, ck) in c.iter_mut().enumerate() {
            // SAFETY: row i+k < n is readable (the caller's promise).
            *ck = unsafe { _mm256_loadu_ps(first.add((i + k) * stride) as *const f32) };
        }
        // As in `group_rows_avx2`, with rows and columns swapped: t[q] holds column q's
        // values of rows i..i+8.
        let u = transpose_in_lanes!(&c, _mm256_unpacklo_ps, _mm256_unpackhi_ps, _mm256_shuffle_ps);
        let t = [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ];
        for (d, &v) in dst.iter_mut().zip(&t) {
            // SAFETY: 4 * (i + 8) <= 4 * n <= d.len() (asserted).
            unsafe { _mm256_storeu_ps(d.as_mut_ptr().add(4 * i) as *mut f32, v) };
        }
    }
    // SAFETY: rows full..n < n are readable (the caller's promise).
    unsafe { transpose_tail::<4>(first, stride, full..n, &mut dst) };
}

/// `transpose8` for eight 8-byte columns side by side (f64 and 64-bit integer matrices,
/// numpy's default): 4 rows at a time, each half of the eight columns transposed 4×4 in
/// AVX2 registers (statistics of a [2M, 64] f64 matrix: 0.094-0.10 → 0.071-0.080 s).
///
/// # Safety
/// The CPU must have AVX2. For every row r < n, the 64 bytes at `first + r * stride` are
/// readable (the eight columns' values of row r).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose8_u64(first: *const u8, stride: usize, n: usize, mut dst: [&mut [u8]; 8]) {
    assert!(dst.iter().all(|d| d.len() >= 8 * n), "transpose8_u64: short buffers");
    let full = n / 4 * 4;
    for i in (0..full).step_by(4) {
        for half in 0..2 {
            // SAFETY: rows i..i+4 < n are readable (the caller's promise); columns
            // 4·half..4·half+4 are their bytes 32·half..32·half+32.
            let r: [__m256d; 4] =
                std::array::from_fn(|k| unsafe { _mm256_loadu_pd(first.add((i + k) * stride + 32 * half) as *const f64) });
            // Rows paired by 64 bits, then 128-bit halves exchanged: t[c] is column c.
            let (lo01, hi01) = (_mm256_unpacklo_pd(r[0], r[1]), _mm256_unpackhi_pd(r[0], r[1]));
            let (lo23, hi23) = (_mm256_unpacklo_pd(r[2], r[3]), _mm256_unpackhi_pd(r[2], r[3]));
            let t = [
                _mm256_permute2f128_pd::<0x20>(lo01, lo23),
                _mm256_permute2f128_pd::<0x20>(hi01, hi23),
                _mm256_permute2f128_pd::<0x31>(lo01, lo23),
                _mm256_permute2f128_pd::<0x31>(hi01, hi23),
            ];
            for (d, &v) in dst[4 * half..4 * half + 4].iter_mut().zip(&t) {
                // SAFETY: 8 * (i + 4) <= 8 * n <= d.len() (asserted).
                unsafe { _mm256_storeu_pd(d.as_mut_ptr().add(8 * i) as *mut f64, v) };
            }
        }
    }
    // SAFETY: rows full..n < n are readable (the caller's promise).
    unsafe { transpose_tail::<8>(first, stride, full..n, &mut dst) };
}

/// Rows `rows` of the `transpose8*` kernels (those past their last whole step of 8), one
/// `SIZE`-byte value at a time.
///
/// # Safety
/// For every row r in `rows`, the 8·SIZE bytes at `first + r * stride` are readable.
#[inline(always)]
unsafe fn transpose_tail<const SIZE: usize>(first: *const u8, stride: usize, rows: std::ops::Range<usize>, dst: &mut [&mut [u8]; 8]) {
    for i in rows {
        for (c, d) in dst.iter_mut().enumerate() {
            // SAFETY: row i is readable; column c's value is its bytes SIZE·c..SIZE·(c+1).
            let v = unsafe { std::ptr::read_unaligned(first.add(i * stride + SIZE * c) as *const [u8; SIZE]) };
            d[SIZE * i..SIZE * (i + 1)].copy_from_slice(&v);
        }
    }
}

/// `transpose8` for eight 2-byte columns side by side (f16/bf16 and 16-bit integer
/// matrices): 8 rows at a time, transposed 8×8 in SSE2 registers (statistics of a
/// [4M, 64] f16 matrix: 0.101 → 0.068 s).
///
/// # Safety
/// For every row r < n, the 16 bytes at `first + r * stride` are readable (the eight
/// columns' values of row r).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
pub(crate) unsafe fn transpose8_u16(first: *const u8, stride: usize, n: usize, mut dst: [&mut [u8]; 8]) {
    assert!(dst.iter().all(|d| d.len() >= 2 * n), "transpose8_u16: short buffers");
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: rows i..i+8 < n are readable (the caller's promise).
        let r: [__m128i; 8] = std::array::from_fn(|k| unsafe { _mm_loadu_si128(first.add((i + k) * stride) as *const __m128i) });
        // Pairs of rows interleaved by 16, then by 32 and by 64 bits: t[c] is column c.
        let a = [
            _mm_unpacklo_epi16(r[0], r[1]),
            _mm_unpackhi_epi16(r[0], r[1]),
            _mm_unpacklo_epi16(r[2], r[3]),
            _mm_unpackhi_epi16(r[2], r[3]),
            _mm_unpacklo_epi16(r[4], r[5]),
            _mm_unpackhi_epi16(r[4], r[5]),
            _mm_unpacklo_epi16(r[6], r[7]),
            _mm_unpackhi_epi16(r[6], r[7]),
        ];
        let b = [
            _mm_unpacklo_epi32(a[0], a[2]),
            _mm_unpackhi_epi32(a[0], a[2]),
            _mm_unpacklo_epi32(a[1], a[3]),
            _mm_unpackhi_epi32(a[1], a[3]),
            _mm_unpacklo_epi32(a[4], a[6]),
            _mm_unpackhi_epi32(a[4], a[6]),
            _mm_unpacklo_epi32(a[5], a[7]),
            _mm_unpackhi_epi32(a[5], a[7]),
        ];
        let t = [
            _mm_unpacklo_epi64(b[0], b[4]),
            _mm_unpackhi_epi64(b[0], b[4]),
            _mm_unpacklo_epi64(b[1], b[5]),
            _mm_unpackhi_epi64(b[1], b[5]),
            _mm_unpacklo_epi64(b[2], b[6]),
            _mm_unpackhi_epi64(b[2], b[6]),
            _mm_unpacklo_epi64(b[3], b[7]),
            _mm_unpackhi_epi64(b[3], b[7]),
        ];
        for (d, &v) in dst.iter_mut().zip(&t) {
            // SAFETY: 2 * (i + 8) <= 2 * n <= d.len() (asserted).
            unsafe { _mm_storeu_si128(d.as_mut_ptr().add(2 * i) as *mut __m128i, v) };
        }
    }
    // SAFETY: rows full..n < n are readable (the caller's promise).
    unsafe { transpose_tail::<2>(first, stride, full..n, &mut dst) };
}

/// Sums, bounds and counts of a block of f32 values with AVX2 only: 8 lanes (element `i` in
/// lane `i % 8`), each a running f64 sum in row order, so that the accumulators fit AVX2's 16
/// registers. Returns `(count, lane sums, lane sums of squares, min, max, finite min, finite
/// max)` as `LaneStats8`.
///
/// # Safety
/// The CPU must have AVX2; `mask.len() >= x.len()` when `MASKED`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
pub(crate) unsafe fn stats_f32_avx2<const MASKED: bool, const FINITE: bool>(x: &[f32], mask: &[u8], pivot: f64) -> LaneStats8 {
    assert!(!MASKED || mask.len() >= x.len(), "stats_f32_avx2: mask shorter than the values");
    let n = x.len();
    let piv = _mm256_set1_pd(pivot);
    let zero = _mm256_setzero_pd();
    let (mut s_lo, mut s_hi, mut s2_lo, mut s2_hi) = (zero, zero, zero, zero);
    let (mut mn, mut mx) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
    let (mut fmn, mut fmx) = (mn, mx);
    let mut cnt = _mm256_setzero_si256();
    let inf = _mm256_set1_ps(f32::INFINITY);
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut i = 0;
    while i < n {
        if i % 16 == 0 {
            super::cpu::prefetch(x, i + super::cpu::PREFETCH_F32);
        }
        let left = (n - i).min(8);
        // All ones in the lanes that hold values of the block.
        let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lane);
        // SAFETY: only the live lanes are read (all 8 but in the tail), all inside `x`.
        let v = unsafe { if left == 8 { _mm256_loadu_ps(x.as_ptr().add(i)) } else { _mm256_maskload_ps(x.as_ptr().add(i), live) } };
        let on = if MASKED {
            let bytes = if left == 8 {
                // SAFETY: i + 8 <= n <= mask.len().
                unsafe { _mm_loadl_epi64(mask.as_ptr().add(i) as *const __m128i) }
            } else {
                let mut b = [0u8; 8];
                b[..left].copy_from_slice(&mask[i..i + left]);
                // SAFETY: `b` holds 8 bytes.
                unsafe { _mm_loadl_epi64(b.as_ptr() as *const __m128i) }
            };
            let m = _mm256_cvtepu8_epi32(bytes);
            _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()), live))
        } else {
            _mm256_castsi256_ps(live)
        };
        // Selected and not NaN (a masked-off lane reads as +0.0, which `on` drops).
        let ok = _mm256_and_ps(on, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        let x_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        let x_hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
        let ok_lo = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm256_castps256_ps128(ok))));
        let ok_hi = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_castps_si128(_mm256_extractf128_ps::<1>(ok))));
        let d_lo = _mm256_and_pd(_mm256_sub_pd(x_lo, piv), ok_lo);
        let d_hi = _mm256_and_pd(_mm256_sub_pd(x_hi, piv), ok_hi);
        s_lo = _mm256_add_pd(s_lo, d_lo);
        s_hi = _mm256_add_pd(s_hi, d_hi);
        s2_lo = _mm256_add_pd(s2_lo, _mm256_mul_pd(d_lo, d_lo));
        s2_hi = _mm256_add_pd(s2_hi, _mm256_mul_pd(d_hi, d_hi));
        // v < m is false for NaN: selected lanes with a smaller value take it.
        mn = _mm256_blendv_ps(mn, v, _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LT_OQ>(v, mn)));
        mx = _mm256_blendv_ps(mx, v, _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_GT_OQ>(v, mx)));
        if FINITE {
            let fin = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_NEQ_UQ>(_mm256_and_ps(v, abs), inf));
            fmn = _mm256_blendv_ps(fmn, v, _mm256_and_ps(fin, _mm256_cmp_ps::<_CMP_LT_OQ>(v, fmn)));
            fmx = _mm256_blendv_ps(fmx, v, _mm256_and_ps(fin, _mm256_cmp_ps::<_CMP_GT_OQ>(v, fmx)));
        }
        // `ok` is all ones (-1) in the counted lanes.
        cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(ok));
        i += 8;
    }
    let mut out = LaneStats8 { count: 0, s: [0.0; 8], s2: [0.0; 8], mn: [0.0; 8], mx: [0.0; 8], fmn: [0.0; 8], fmx: [0.0; 8] };
    let mut c = [0u32; 8];
    // SAFETY: every destination holds 8 elements of the stored type.
    unsafe {
        _mm256_storeu_pd(out.s.as_mut_ptr(), s_lo);
        _mm256_storeu_pd(out.s.as_mut_ptr().add(4), s_hi);
        _mm256_storeu_pd(out.s2.as_mut_ptr(), s2_lo);
        _mm256_storeu_pd(out.s2.as_mut_ptr().add(4), s2_hi);
        _mm256_storeu_ps(out.mn.as_mut_ptr(), mn);
        _mm256_storeu_ps(out.mx.as_mut_ptr(), mx);
        _mm256_storeu_ps(out.fmn.as_mut_ptr(), fmn);
        _mm256_storeu_ps(out.fmx.as_mut_ptr(), fmx);
        _mm256_storeu_si256(c.as_mut_ptr() as *mut __m256i, cnt);
    }
    out.count = c.iter().map(|&c| c as u64).sum();
    out
}

/// Per-lane results of `stats_f32_avx2`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub(crate) struct LaneStats8 {
    /// Selected non-NaN values.
    pub count: u64,
    /// Lane sums of `x - pivot`.
    pub s: [f64; 8],
    /// Lane sums of `(x - pivot)²`.
    pub s2: [f64; 8],
    /// Lane minima.
    pub mn: [f32; 8],
    /// Lane maxima.
    pub mx: [f32; 8],
    /// Lane minima of the finite values.
    pub fmn: [f32; 8],
    /// Lane maxima of the finite values.
    pub fmx: [f32; 8],
}

impl From<LaneStats8> for LaneStats {
    /// The 8 lanes, padded to 16 with lanes that saw no value.
    fn from(l: LaneStats8) -> LaneStats {
        let pad64 = |a: [f64; 8]| std::array::from_fn(|j| if j < 8 { a[j] } else { 0.0 });
        let pad32 = |a: [f32; 8], empty: f32| std::array::from_fn(|j| if j < 8 { a[j] } else { empty });
        LaneStats {
            count: l.count,
            s: pad64(l.s),
            s2: pad64(l.s2),
            mn: pad32(l.mn, f32::INFINITY),
            mx: pad32(l.mx, f32::NEG_INFINITY),
            fmn: pad32(l.fmn, f32::INFINITY),
            fmx: pad32(l.fmx, f32::NEG_INFINITY),
        }
    }
}

/// Counts the histogram bin codes of f32 values, 16 at a time, into `counts`: `COPIES`
/// interleaved copies of `stride` counters, value i counted in copy `i % COPIES`. The codes
/// are those of the portable `hist_codes` in `cpu.rs` (f64 `floor((x - lo) * scale)`
/// clamped to `[0, bins - 1]`; `bins` below `lo`, `bins + 1` above `hi`, `bins + 2` NaN),
/// or `bins + 3` for a row the mask drops, with the floor and the conversion done by one
/// rounding conversion.
///
/// With `f32_bins` (`F32Bins::new` of the same range), a step first computes
/// `t = (x - lo) * scale` in f32:
/// its distance to the f64 `t` is bounded, so when no in-range lane's f32 `t` lies within
/// that bound of an integer, every floor is the f64 one. Otherwise (rare: about 2 × bound
/// of the values) the step runs in f64.
///
/// A step's codes are counted `HIST_LAG` values later, from a ring of codes: the vector
/// work of one step then overlaps the counting of an earlier one, instead of all codes of
/// a run being computed and then all counted (a third faster in cache; the count, about
/// one per cycle, is what remains).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/DQ. `stride > bins + 3`, `counts.len()` is
/// `COPIES * stride`, `COPIES` divides 16, and the mask (if any) covers `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn hist_count_f32<const COPIES: usize>(
    x: &[f32],
    mask: Option<&[u8]>,
    lo: f64,
    hi: f64,
    scale: f64,
    bins: u32,
    f32_bins: Option<F32Bins>,
    counts: &mut [u32],
    stride: usize,
) {
    const RING: usize = 512;
    const HIST_LAG: usize = 256;
    // Steps of 16 never wrap around the ring, and a step (even the tail's) never overwrites
    // a code not yet counted.
    const _: () = assert!(RING.is_multiple_of(16) && HIST_LAG.is_multiple_of(16) && RING >= HIST_LAG + 16);
    assert!(
        bins >= 1
            && bins < i32::MAX as u32 - 4
            && stride > bins as usize + 3
            && 16 % COPIES == 0
            && counts.len() == COPIES * stride
            && mask.is_none_or(|m| m.len() >= x.len()),
        "hist_count_f32: bad shapes"
    );
    let n = x.len();
    let (lo_v, scale_v) = (_mm512_set1_pd(lo), _mm512_set1_pd(scale));
    // For an f32 x: x < lo exactly when x < the least f32 >= lo, and x > hi exactly when
    // x > the greatest f32 <= hi; so both tests run on the f32 values, 16 lanes at a time.
    let (lo32, hi32) = (lo as f32, hi as f32);
    let lo_up = _mm512_set1_ps(if (lo32 as f64) < lo { lo32.next_up() } else { lo32 });
    let hi_down = _mm512_set1_ps(if (hi32 as f64) > hi { hi32.next_down() } else { hi32 });
    let (zero, last) = (_mm512_setzero_si512(), _mm512_set1_epi32(bins as i32 - 1));
    let (below, above, nan) = (_mm512_set1_epi32(bins as i32), _mm512_set1_epi32(bins as i32 + 1), _mm512_set1_epi32(bins as i32 + 2));
    let dropped = _mm512_set1_epi32(bins as i32 + 3);
    let (lo_f, scale_f) = f32_bins.map_or((0.0, 0.0), |f| (f.lo, f.scale));
    let (lo_f, scale_f) = (_mm512_set1_ps(lo_f), _mm512_set1_ps(scale_f));
    let (near_lo, near_hi) = f32_bins.map_or((0.0, 0.0), |f| (f.near_lo, f.near_hi));
    let (near_lo, near_hi) = (_mm512_set1_ps(near_lo), _mm512_set1_ps(near_hi));
    // Value p's code sits at ring[p % RING] from its step until it is counted.
    let mut ring = [0u32; RING];
    // Counts the codes of values [$from, $from + $len), all still in the ring; $from is a
    // multiple of 16 and $len at most 16 (so they do not wrap around the ring's end), and
    // COPIES divides 16, so value p is counted in copy p % COPIES.
    macro_rules! count {
        ($from:expr, $len:expr) => {
            let (from, len): (usize, usize) = ($from, $len);
            // SAFETY: every code is at most bins + 3 < stride (asserted above).
            unsafe { super::cpu::count_codes::<COPIES>(&ring[from % RING..][..len], counts, stride) };
        };
    }
    // The codes of the `live` lanes of the 16 values from i on, into the ring.
    macro_rules! step {
        ($i:expr, $live:expr) => {{
            let (i, live): (usize, __mmask16) = ($i, $live);
            // SAFETY: only the live lanes are read, all inside `x`.
            let v = unsafe { _mm512_maskz_loadu_ps(live, x.as_ptr().add(i)) };
            let is_below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, lo_up);
            let is_above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, hi_down);
            // fpclass 0x81: quiet or signalling NaN.
            let is_nan = _mm512_fpclass_ps_mask::<0x81>(v);
            let inside = live & !(is_below | is_above | is_nan);
            // The f32 codes, when every in-range lane is far enough from a bin edge.
            let sure = if f32_bins.is_some() {
                let t = _mm512_mul_ps(_mm512_sub_ps(v, lo_f), scale_f);
                let fl = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
                let frac = _mm512_sub_ps(t, _mm512_cvtepi32_ps(fl));
                let unsure = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(inside, frac, near_lo)
                    | _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(inside, frac, near_hi);
                // An in-range t is >= 0, so only the top end needs the clamp.
                if unsure == 0 { Some(_mm512_min_epi32(fl, last)) } else { None }
            } else {
                None
            };
            let c = if let Some(c) = sure {
                c
            } else {
                let xl = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
                let xh = _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(v));
                // floor(t) for t in [0, 2^31); NaN and out-of-range t give i32::MIN, which
                // the clamp turns into 0 (as the portable code does) or the overrides below
                // replace.
                let cl = _mm512_cvt_roundpd_epi32::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_mul_pd(
                    _mm512_sub_pd(xl, lo_v),
                    scale_v,
                ));
                let ch = _mm512_cvt_roundpd_epi32::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_mul_pd(
                    _mm512_sub_pd(xh, lo_v),
                    scale_v,
                ));
                let c = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(cl), ch);
                _mm512_min_epi32(_mm512_max_epi32(c, zero), last)
            };
            let c = _mm512_mask_mov_epi32(c, is_below, below);
            let c = _mm512_mask_mov_epi32(c, is_above, above);
            let c = _mm512_mask_mov_epi32(c, is_nan, nan);
            let c = match mask {
                Some(m) => {
                    // SAFETY: only the live lanes are read, all inside the mask.
                    let on = unsafe { _mm_maskz_loadu_epi8(live, m.as_ptr().add(i) as *const i8) };
                    _mm512_mask_mov_epi32(dropped, _mm_test_epi8_mask(on, on), c)
                }
                None => c,
            };
            // SAFETY: i % RING is a multiple of 16 and RING of 16, so the 16 lanes from
            // there lie inside the ring.
            unsafe { _mm512_mask_storeu_epi32(ring.as_mut_ptr().add(i % RING) as *mut i32, live, c) };
        }};
    }
    let full = n / 16 * 16;
    let mut i = 0;
    while i < full {
        super::cpu::prefetch(x, i + super::cpu::PREFETCH_F32);
        step!(i, 0xFFFF);
        if i >= HIST_LAG {
            count!(i - HIST_LAG, 16);
        }
        i += 16;
    }
    if full < n {
        step!(full, (1u16 << (n - full)) - 1);
    }
    // The last HIST_LAG values (or fewer) and the tail.
    let mut p = full.saturating_sub(HIST_LAG);
    while p < n {
        count!(p, (n - p).min(16));
        p += 16;
    }
}

/// The f32 form of a histogram's bin formula, for ranges where it is close enough to the
/// f64 one: `t = (x - lo) * scale` in f32 differs from the f64 `t` by at most `err`, so a
/// value whose f32 `t` has a fraction in `[near_lo, near_hi)` (at least `err` from either
/// integer) has the same floor in both.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F32Bins {
    /// `lo` rounded to f32.
    pub(crate) lo: f32,
    /// `scale` rounded to f32.
    pub(crate) scale: f32,
    /// Fractions below this may round to the other side of an integer.
    pub(crate) near_lo: f32,
    /// Fractions at or above this may round to the other side of an integer.
    pub(crate) near_hi: f32,
}

impl F32Bins {
    /// Largest error bound worth the f32 test: beyond it too many values (about 2 × err of
    /// them) would need the f64 step.
    const MAX_ERR: f64 = 1.0 / 1024.0;

    /// The f32 form for `lo`, `scale` (the f64 `bins / (hi - lo)`) and `bins`, if its error
    /// bound is small enough.
    ///
    /// The bound, for an in-range x (`lo <= x <= hi`, so `0 <= (x - lo) * scale <= bins`
    /// up to rounding), with u = 2^-24 and d = lo - lo_f32 (exact in f64): the f32 `t` is
    /// `(x - lo + d)(1 + a) * scale (1 + b)(1 + c)` (|a|, |b|, |c| <= u: the subtraction,
    /// the scale's rounding, the product) and the f64 `t` is `(x - lo)(1 + a')scale(1 + b')`
    /// (|a'|, |b'| <= 2^-53), so they differ by at most
    /// `(bins + 1)(3.01 u + 2^-52) + |d| scale (1 + 3.01 u)`; the margin below doubles it.
    pub(crate) fn new(lo: f64, scale: f64, bins: u32) -> Option<F32Bins> {
        let (lo_f, scale_f) = (lo as f32, scale as f32);
        // A subnormal scale would have more than u of relative error.
        if !lo_f.is_finite() || !scale_f.is_finite() || scale_f < f32::MIN_POSITIVE || bins > 1 << 20 {
            return None;
        }
        let u = f64::powi(2.0, -24);
        let d = (lo - lo_f as f64).abs();
        let err = 2.0 * ((bins as f64 + 1.0) * (3.01 * u + f64::powi(2.0, -52)) + d * scale * (1.0 + 3.01 * u));
        // (A NaN bound, from an infinite scale, fails this too.)
        if err.is_nan() || err >= Self::MAX_ERR {
            return None;
        }
        // near_lo >= err and near_hi <= 1 - err, both as f32.
        let near_lo = (err as f32).next_up();
        let near_hi = ((1.0 - near_lo as f64) as f32).next_down();
        Some(F32Bins { lo: lo_f, scale: scale_f, near_lo, near_hi })
    }
}
