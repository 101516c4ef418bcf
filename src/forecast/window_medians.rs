//! Medians of each expert over many windows of one layer, exactly as
//! [`column_medians`](super::column_medians) takes them, but without sorting each window again.
//!
//! `oracle-median` asks for each origin `o` and horizon `h` the median of `p[o ..
//! o+h-1]`; at the default stride (100) and horizons (up to 2000) consecutive windows
//! share most of their steps. Each expert's values are put, once for every horizon,
//! in 4096 buckets whose order is the values' order (a monotone map of the value's
//! bits); a window keeps a count per bucket, updated by the steps that leave and
//! enter it, and the bucket that holds the `r`-th value is found by walking the counts
//! from where the last window's median was (medians move little from one window to
//! the next). Only the window's values in that bucket (found by binary search in the
//! bucket's list of steps) are selected from. The result is the same value
//! `select_nth` finds, so the bits do not change.

use rayon::prelude::*;

use super::LayerView;
use crate::stats::states::median_in_place;

/// Windows this short are sorted directly.
const DIRECT: usize = 64;
/// Experts gathered together from the step-major layer (one 64-byte line of each row).
const BLOCK: usize = 8;

/// For each `i`, the median of every expert over steps `origins[i] .. origins[i] +
/// lens[i]` (the mean of the two middle values when the length is even), step-major:
/// `out[i * experts + e]`. Windows are taken fastest in runs whose ends both ascend
/// (the oracle's: one run per horizon).
pub fn window_medians(layer: &LayerView, origins: &[usize], lens: &[usize]) -> Vec<f64> {
    let ne = layer.experts();
    let n = origins.len();
    assert_eq!(n, lens.len(), "one length per origin");
    assert!(lens.iter().all(|&l| l > 0), "median of nothing");
    let mut out = vec![0.0; n * ne];
    if n == 0 || ne == 0 {
        return out;
    }
    // Sliding pays when windows are longer than `DIRECT` and cover a quarter or
    // more of the steps between origins: then every window longer than one step is
    // taken from one bucketing of each expert's values, over all their steps.
    // Otherwise each window's rows are gathered and selected from alone, windows in
    // parallel. A one-step window's medians are its row.
    let gap = origins.windows(2).filter(|w| w[1] > w[0]).map(|w| w[1] - w[0]).min().unwrap_or(usize::MAX);
    let shared = lens.iter().any(|&l| l > DIRECT && l.saturating_mul(4) >= gap);
    let alone = |l: usize| l == 1 || !shared;
    out.par_chunks_mut(ne).zip(origins).zip(lens).filter(|(_, l)| alone(**l)).for_each(|((row, &o), &l)| {
        if l == 1 {
            row.copy_from_slice(layer.row(o));
        } else {
            row.copy_from_slice(&super::column_medians(layer, o, o + l));
        }
    });
    let long: Vec<usize> = (0..n).filter(|&i| !alone(lens[i])).collect();
    if long.is_empty() {
        return out;
    }
    let (origins, lens): (Vec<usize>, Vec<usize>) = long.iter().map(|&i| (origins[i], lens[i])).unzip();
    let n = long.len();
    let lo = *origins.iter().min().unwrap();
    let hi = origins.iter().zip(&lens).map(|(o, l)| o + l).max().unwrap();
    assert!(hi <= layer.steps(), "a window runs past the layer's {} steps", layer.steps());
    let span = hi - lo;
    // Each block of experts: its columns over the span, then each expert's medians.
    let per_block: Vec<Vec<f64>> = (0..ne)
        .step_by(BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|e0| {
            let w = BLOCK.min(ne - e0);
            let mut cols = vec![0.0; w * span];
            for t in lo..hi {
                for (j, &v) in layer.row(t)[e0..e0 + w].iter().enumerate() {
                    cols[j * span + (t - lo)] = v;
                }
            }
            let mut index = Buckets::default();
            let mut meds = vec![0.0; w * n];
            for (j, col) in cols.chunks(span).enumerate() {
                index.medians(col, lo, &origins, &lens, &mut meds[j * n..(j + 1) * n]);
            }
            meds
        })
        .collect();
    for (b, meds) in per_block.iter().enumerate() {
        let e0 = b * BLOCK;
        for (j, m) in meds.chunks(n).enumerate() {
            for (&i, &v) in long.iter().zip(m) {
                out[i * ne + e0 + j] = v;
            }
        }
    }
    out
}

/// `f64::total_cmp`'s order as an unsigned integer's.
#[inline(always)]
fn key(v: f64) -> u64 {
    let b = v.to_bits();
    if b >> 63 == 1 { !b } else { b | 1 << 63 }
}

/// Buckets of an expert's values.
const BITS: u32 = 12;
const NB: usize = 1 << BITS;

/// One expert's bucketed values (buffers kept between experts).
#[derive(Default)]
struct Buckets {
    /// Bucket of each step of the span.
    ids: Vec<u16>,
    /// Steps of bucket `j`, ascending: `steps[off[j] .. off[j + 1]]`.
    off: Vec<u32>,
    steps: Vec<u32>,
    /// The current window `[a, b)` (span steps) and its count per bucket.
    counts: Vec<u32>,
    a: usize,
    b: usize,
    /// A bucket (where the last value was found) and how many of the window's
    /// values are in the buckets below it: consecutive windows' medians are
    /// near each other, so the next is looked for from there.
    at: usize,
    below: usize,
    sample: Vec<u64>,
    buf: Vec<f64>,
}

impl Buckets {
    /// `col` holds one expert's values from step `base` on; `out[i]` gets the median
    /// of window `i`.
    fn medians(&mut self, col: &[f64], base: usize, origins: &[usize], lens: &[usize], out: &mut [f64]) {
        self.build(col);
        for ((&o, &l), m) in origins.iter().zip(lens).zip(out) {
            let (a, b) = (o - base, o - base + l);
            if l <= DIRECT {
                self.buf.clear();
                self.buf.extend_from_slice(&col[a..b]);
                *m = median_in_place(&mut self.buf);
                continue;
            }
            self.slide(a, b);
            let r = l / 2;
            *m = if l % 2 == 1 {
                self.kth(col, r)
            } else {
                let low = self.kth(col, r - 1);
                0.5 * (low + self.kth(col, r))
            };
        }
    }

    /// Buckets every step of `col`: bucket boundaries spread evenly over the values'
    /// keys between a sample's 1st and 99th percentiles (below and above them, the
    /// first and last bucket: the map stays monotone, only less even). Buckets are
    /// many (`NB`) so that the few a window's values crowd into (an expert's share
    /// varies by a few per cent once training settles) hold few of them each.
    fn build(&mut self, col: &[f64]) {
        let span = col.len();
        let every = (span / 256).max(1);
        self.sample.clear();
        self.sample.extend(col.iter().step_by(every).map(|&v| key(v)));
        self.sample.sort_unstable();
        let s = &self.sample;
        let (lo, hi) = (s[s.len() / 100], s[s.len() - 1 - s.len() / 100]);
        let range = hi - lo;
        let shift = (64 - range.leading_zeros()).saturating_sub(BITS);
        // Counting sort of the steps by bucket, ascending within each.
        self.off.clear();
        self.off.resize(NB + 1, 0);
        let off = &mut self.off[..NB + 1];
        self.ids.clear();
        self.ids.extend(col.iter().map(|&v| {
            let id = (key(v).saturating_sub(lo) >> shift).min(NB as u64 - 1) as usize;
            off[id + 1] += 1;
            id as u16
        }));
        for j in 0..NB {
            self.off[j + 1] += self.off[j];
        }
        self.steps.clear();
        self.steps.resize(span, 0);
        // The counts, as each bucket's next free place while the steps are placed.
        self.counts.clear();
        self.counts.extend_from_slice(&self.off[..NB]);
        for (t, &id) in self.ids.iter().enumerate() {
            let next = &mut self.counts[id as usize];
            self.steps[*next as usize] = t as u32;
            *next += 1;
        }
        self.counts.iter_mut().for_each(|c| *c = 0);
        (self.a, self.b, self.at, self.below) = (0, 0, 0, 0);
    }

    /// Moves the window to `[a, b)`: by the steps that leave and enter it when both
    /// ends move forward and the windows overlap, else the old window's steps leave
    /// and the new one's enter (or, for a long old window, every count is cleared).
    fn slide(&mut self, a: usize, b: usize) {
        if a < self.a || b < self.b || a >= self.b {
            if self.b - self.a <= NB {
                self.count(self.a..self.b, false);
            } else {
                self.counts.iter_mut().for_each(|c| *c = 0);
                self.below = 0;
            }
            self.count(a..b, true);
        } else {
            self.count(self.a..a, false);
            self.count(self.b..b, true);
        }
        (self.a, self.b) = (a, b);
    }

    /// Counts the steps `ts` into the window (`enter`) or out of it.
    fn count(&mut self, ts: std::ops::Range<usize>, enter: bool) {
        let (counts, at) = (&mut self.counts[..NB], self.at);
        let mut below = 0;
        for &id in &self.ids[ts] {
            let c = &mut counts[id as usize];
            *c = if enter { *c + 1 } else { *c - 1 };
            below += usize::from((id as usize) < at);
        }
        self.below = if enter { self.below + below } else { self.below - below };
    }

    /// The window's `r`-th smallest value (from 0) in `total_cmp`'s order.
    fn kth(&mut self, col: &[f64], r: usize) -> f64 {
        let counts = &self.counts[..NB];
        let (mut j, mut below) = (self.at, self.below);
        while below > r {
            j -= 1;
            below -= counts[j] as usize;
        }
        while below + counts[j] as usize <= r {
            below += counts[j] as usize;
            j += 1;
        }
        (self.at, self.below) = (j, below);
        let list = &self.steps[self.off[j] as usize..self.off[j + 1] as usize];
        let from = list.partition_point(|&t| (t as usize) < self.a);
        let to = list.partition_point(|&t| (t as usize) < self.b);
        debug_assert_eq!(to - from, counts[j] as usize);
        self.buf.clear();
        self.buf.extend(list[from..to].iter().map(|&t| col[t as usize]));
        *self.buf.select_nth_unstable_by(r - below, |x, y| x.total_cmp(y)).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::column_medians;

    /// A small deterministic generator (xorshift), so the test needs no crate.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 7 {
                    // ties, zeros and a wide range of magnitudes
                    0 => 0.0,
                    1 => ((s % 5) as f64) / 64.0,
                    2 => (s % 1000) as f64 * 1e-9,
                    _ => (s % 1_000_000) as f64 / 1e6,
                }
            })
            .collect()
    }

    /// `window_medians` of these windows against sorting each alone, bit for bit.
    fn assert_sorted_bits(v: &LayerView, origins: &[usize], lens: &[usize]) {
        let ne = v.experts();
        let got = window_medians(v, origins, lens);
        for (i, (&o, &l)) in origins.iter().zip(lens).enumerate() {
            let want = column_medians(v, o, o + l);
            let row = &got[i * ne..(i + 1) * ne];
            let same = row.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "window {o}+{l}: {row:?} vs {want:?}");
        }
    }

    #[test]
    fn the_same_bits_as_sorting_each_window() {
        let (nt, ne) = (3000, 11);
        let p = values(nt * ne, 7);
        let v = LayerView::new(&p, ne);
        // Ascending overlapping windows (the protocol's), disjoint ones, one that
        // goes back, odd and even lengths, short and long.
        let mut origins = Vec::new();
        let mut lens = Vec::new();
        for o in (5..2000).step_by(37) {
            origins.push(o);
            lens.push(if o % 2 == 0 { 900 } else { 901 });
        }
        for (o, l) in [(100, 1), (100, 2), (2500, 500), (10, 2990), (2999, 1), (40, 65), (41, 64), (1200, 1800)] {
            origins.push(o);
            lens.push(l);
        }
        assert_sorted_bits(&v, &origins, &lens);
    }

    /// Runs of windows as the oracle asks for them (one run per horizon, each
    /// ascending), with windows longer than the buckets' count (a run after one of
    /// them counts afresh), one-step and short windows among the long ones, and a
    /// drift that moves the medians down as well as up.
    #[test]
    fn runs_of_windows_longer_than_the_buckets_count() {
        let (nt, ne) = (12000, 3);
        let noise = values(nt * ne, 11);
        let p: Vec<f64> = noise.iter().enumerate().map(|(i, &x)| (1.0 + ((i / ne) as f64 / 900.0).sin()) * 0.3 + 0.01 * x).collect();
        let v = LayerView::new(&p, ne);
        let (mut origins, mut lens) = (Vec::new(), Vec::new());
        for h in [1, 2, 63, 700, 5000, 4500, 6001, 100] {
            for o in (3..nt - h).step_by(97) {
                origins.push(o);
                lens.push(h);
            }
        }
        assert_sorted_bits(&v, &origins, &lens);
    }

    #[test]
    fn a_constant_expert_and_one_step_windows() {
        let p = vec![0.25; 400 * 3];
        let v = LayerView::new(&p, 3);
        let origins: Vec<usize> = (0..300).step_by(10).collect();
        let got = window_medians(&v, &origins, &vec![100; origins.len()]);
        assert!(got.iter().all(|&m| m == 0.25));
        let got = window_medians(&v, &[7], &[1]);
        assert_eq!(got, vec![0.25; 3]);
    }
}
