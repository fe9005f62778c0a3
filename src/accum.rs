//! Accumulators: the partial state of every aggregate, merged in a fixed order.
//!
//! Backends accumulate one [`BlockStats`] per fixed block of rows; the driver merges the
//! blocks in row order with [`Accumulator::merge`], so results do not depend on the tile
//! size or the thread count.

/// Merge and finish for an aggregate's partial state (`Default` is the identity).
pub trait Accumulator: Default {
    /// What `finish` produces.
    type Output;
    /// Folds `other` (the state of the rows that follow) into `self`.
    fn merge(&mut self, other: &Self);
    /// The final result.
    fn finish(&self) -> Self::Output;
}

/// The partial statistics of one column over one block of rows, as a backend produces
/// them: sums of `x - pivot` in f64, where `pivot` is the block's first finite value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockStats {
    /// Selected non-NaN values.
    pub count: u64,
    /// Selected NaN values.
    pub nan: u64,
    /// Selected ±inf values.
    pub inf: u64,
    /// The shift subtracted from every value.
    pub pivot: f64,
    /// Σ (x - pivot).
    pub sum_d: f64,
    /// Σ (x - pivot)².
    pub sum_d2: f64,
    /// Minimum (NaN skipped); +inf when empty.
    pub min: f64,
    /// Maximum (NaN skipped); -inf when empty.
    pub max: f64,
    /// Minimum of the finite values; +inf when none.
    pub fmin: f64,
    /// Maximum of the finite values; -inf when none.
    pub fmax: f64,
    /// Exact minimum of an integer column.
    pub imin: i128,
    /// Exact maximum of an integer column.
    pub imax: i128,
}

impl Default for BlockStats {
    fn default() -> Self {
        BlockStats {
            count: 0,
            nan: 0,
            inf: 0,
            pivot: 0.0,
            sum_d: 0.0,
            sum_d2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            fmin: f64::INFINITY,
            fmax: f64::NEG_INFINITY,
            imin: i128::MAX,
            imax: i128::MIN,
        }
    }
}

/// Folds `$o`'s bounds (min/max, finite min/max, integer min/max) into `$a`'s: both are
/// `BlockStats` or both `StatsAcc`, which hold them under the same names.
macro_rules! merge_bounds {
    ($a:expr, $o:expr) => {
        $a.min = $a.min.min($o.min);
        $a.max = $a.max.max($o.max);
        $a.fmin = $a.fmin.min($o.fmin);
        $a.fmax = $a.fmax.max($o.fmax);
        $a.imin = $a.imin.min($o.imin);
        $a.imax = $a.imax.max($o.imax);
    };
}

impl BlockStats {
    /// Adds `o`, the partial of the rows that follow, keeping this partial's pivot p: o's
    /// sums about its pivot q re-centred, Σ(x - p) = Σ(x - q) + n(q - p) and Σ(x - p)² =
    /// Σ(x - q)² + (q - p)(2Σ(x - q) + n(q - p)). Both pivots are values of the column, so
    /// the terms are no larger than the sums they make (Cauchy-Schwarz bounds |Σ(x - q)|):
    /// no cancellation to speak of. How the CPU joins a group's blocks into one partial of
    /// a larger unit.
    pub(crate) fn append(&mut self, o: &BlockStats) {
        self.nan += o.nan;
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            let nan = self.nan;
            *self = *o;
            self.nan = nan;
            return;
        }
        if self.count == self.inf {
            // No finite value yet (the pivot is a placeholder, the sums ±inf or NaN about
            // any shift): o's pivot, its first finite value, as one pass would take.
            self.pivot = o.pivot;
        }
        let n = o.count as f64;
        let d = o.pivot - self.pivot;
        self.sum_d2 += o.sum_d2 + d * (2.0 * o.sum_d + n * d);
        self.sum_d += o.sum_d + n * d;
        self.count += o.count;
        self.inf += o.inf;
        merge_bounds!(self, o);
    }
}

/// Running statistics of a column: counts, compensated sum, and (count, mean, M2) merged
/// with Chan's formula in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsAcc {
    count: u64,
    nan: u64,
    inf: u64,
    sum: f64,
    sum_comp: f64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    fmin: f64,
    fmax: f64,
    imin: i128,
    imax: i128,
}

impl Default for StatsAcc {
    fn default() -> Self {
        StatsAcc {
            count: 0,
            nan: 0,
            inf: 0,
            sum: 0.0,
            sum_comp: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            fmin: f64::INFINITY,
            fmax: f64::NEG_INFINITY,
            imin: i128::MAX,
            imax: i128::MIN,
        }
    }
}

/// Neumaier's compensated addition of `x` into `(sum, comp)`.
fn neumaier(sum: &mut f64, comp: &mut f64, x: f64) {
    let t = *sum + x;
    if sum.abs() >= x.abs() {
        *comp += (*sum - t) + x;
    } else {
        *comp += (x - t) + *sum;
    }
    *sum = t;
}

impl StatsAcc {
    /// The state of one block's partial.
    pub fn from_block(b: &BlockStats) -> StatsAcc {
        let (mean, m2) = if b.count == 0 {
            (0.0, 0.0)
        } else {
            let n = b.count as f64;
            let md = b.sum_d / n;
            // Rounding can leave a tiny negative M2; NaN (overflowed sums) stays NaN.
            let m2 = b.sum_d2 - b.sum_d * md;
            (b.pivot + md, if m2 < 0.0 { 0.0 } else { m2 })
        };
        // A block of non-finite values has a non-finite mean; keep M2 NaN then, as f64 would.
        let m2 = if b.inf > 0 { f64::NAN } else { m2 };
        let sum = if b.count == 0 { 0.0 } else { b.count as f64 * b.pivot + b.sum_d };
        StatsAcc {
            count: b.count,
            nan: b.nan,
            inf: b.inf,
            sum,
            sum_comp: 0.0,
            mean,
            m2,
            min: b.min,
            max: b.max,
            fmin: b.fmin,
            fmax: b.fmax,
            imin: b.imin,
            imax: b.imax,
        }
    }

    /// The smallest and largest finite values, if any.
    pub fn finite_range(&self) -> Option<(f64, f64)> {
        (self.fmin <= self.fmax).then_some((self.fmin, self.fmax))
    }

    /// Adds one block's partial (rows that follow the ones already merged).
    pub fn add_block(&mut self, b: &BlockStats) {
        self.merge(&StatsAcc::from_block(b));
    }
}

impl Accumulator for StatsAcc {
    type Output = ColumnStats;

    fn merge(&mut self, o: &StatsAcc) {
        if o.count == 0 {
            self.nan += o.nan;
            return;
        }
        if self.count == 0 {
            let nan = self.nan;
            *self = *o;
            self.nan += nan;
            return;
        }
        let (na, nb) = (self.count as f64, o.count as f64);
        let n = na + nb;
        let delta = o.mean - self.mean;
        self.mean += delta * (nb / n);
        self.m2 += o.m2 + delta * delta * (na * nb / n);
        self.count += o.count;
        self.nan += o.nan;
        self.inf += o.inf;
        neumaier(&mut self.sum, &mut self.sum_comp, o.sum);
        self.sum_comp += o.sum_comp;
        merge_bounds!(self, o);
    }

    fn finish(&self) -> ColumnStats {
        let sum = if self.inf > 0 { self.sum } else { self.sum + self.sum_comp };
        let empty = self.count == 0;
        let n = self.count as f64;
        let var = if empty {
            None
        } else if self.inf > 0 {
            Some(f64::NAN)
        } else {
            Some(self.m2 / n)
        };
        let int = self.imin <= self.imax;
        let bound = |f: f64, i: i128| {
            if empty {
                None
            } else if int {
                Some(Number::Int(i))
            } else {
                Some(Number::Float(f))
            }
        };
        ColumnStats {
            count: self.count,
            nan_count: self.nan,
            inf_count: self.inf,
            sum: if empty { 0.0 } else { sum },
            mean: if empty {
                None
            } else if self.inf > 0 {
                Some(sum / n)
            } else {
                Some(self.mean)
            },
            min: bound(self.min, self.imin),
            max: bound(self.max, self.imax),
            var,
            std: var.map(f64::sqrt),
        }
    }
}

/// A number that is either an exact integer or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An exact integer (min/max of an integer column).
    Int(i128),
    /// A float.
    Float(f64),
}

impl Number {
    /// As f64 (integers beyond 2^53 round).
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// Statistics of one column over the selected rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColumnStats {
    /// Non-NaN values.
    pub count: u64,
    /// NaN values.
    pub nan_count: u64,
    /// ±inf values (counted in `count` too).
    pub inf_count: u64,
    /// Sum of the non-NaN values (0 when there are none).
    pub sum: f64,
    /// Mean, `None` without values.
    pub mean: Option<f64>,
    /// Minimum, `None` without values.
    pub min: Option<Number>,
    /// Maximum, `None` without values.
    pub max: Option<Number>,
    /// Population variance, `None` without values.
    pub var: Option<f64>,
    /// Population standard deviation, `None` without values.
    pub std: Option<f64>,
}

/// Whether finite bounds `lo..hi` are further apart than f64 holds (`hi - lo` overflows):
/// a histogram's or a min-max's width could not be computed.
pub(crate) fn range_too_wide(lo: f64, hi: f64) -> bool {
    lo.is_finite() && hi.is_finite() && (hi - lo).is_infinite()
}

impl ColumnStats {
    /// The minimum and maximum as f64 (NaN without values).
    pub(crate) fn range_f64(&self) -> (f64, f64) {
        let f = |n: Option<Number>| n.map_or(f64::NAN, Number::as_f64);
        (f(self.min), f(self.max))
    }

    /// Whether the f64 sums behind the mean or the variance overflowed: values all finite
    /// (so a finite mean between min and max), yet a mean that is not finite or a variance
    /// that is NaN. Values near ±1.8e308 (or differences beyond ~1e154 for the variance) do
    /// this; the numbers are then wrong and must not be reported.
    pub(crate) fn overflowed(&self) -> bool {
        self.inf_count == 0 && self.count > 0 && (!self.mean.is_some_and(f64::is_finite) || self.var.is_some_and(f64::is_nan))
    }
}

/// An equal-width histogram's counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistAcc {
    /// Per-bin counts.
    pub counts: Vec<u64>,
    /// Values below the lower edge.
    pub below: u64,
    /// Values above the upper edge.
    pub above: u64,
    /// NaN values.
    pub nan: u64,
}

impl HistAcc {
    /// Empty counts for `bins` bins.
    pub fn new(bins: u32) -> HistAcc {
        HistAcc { counts: vec![0; bins as usize], ..HistAcc::default() }
    }
}

impl Accumulator for HistAcc {
    type Output = HistAcc;
    fn merge(&mut self, o: &HistAcc) {
        if self.counts.len() < o.counts.len() {
            self.counts.resize(o.counts.len(), 0);
        }
        self.counts.iter_mut().zip(&o.counts).for_each(|(a, b)| *a += b);
        self.below += o.below;
        self.above += o.above;
        self.nan += o.nan;
    }
    fn finish(&self) -> HistAcc {
        self.clone()
    }
}

/// The bin of `x` for edges `lo..hi`: `floor((x - lo) * (bins / (hi - lo)))` in f64, an
/// index `>= bins` going to the last bin; `None` when x is outside `[lo, hi]` or NaN.
#[inline(always)]
pub fn bin_of(x: f64, lo: f64, hi: f64, scale: f64, bins: u32) -> Result<usize, Outside> {
    if x.is_nan() {
        return Err(Outside::Nan);
    }
    if x < lo {
        return Err(Outside::Below);
    }
    if x > hi {
        return Err(Outside::Above);
    }
    let i = ((x - lo) * scale).floor();
    Ok(if i >= bins as f64 { bins as usize - 1 } else { i as usize })
}

/// Why a value is not in any bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outside {
    /// x < lo
    Below,
    /// x > hi
    Above,
    /// NaN
    Nan,
}

/// `bins / (hi - lo)`, or 0 when hi == lo (every value equal to lo goes to bin 0).
pub fn bin_scale(lo: f64, hi: f64, bins: u32) -> f64 {
    if hi > lo { bins as f64 / (hi - lo) } else { 0.0 }
}
