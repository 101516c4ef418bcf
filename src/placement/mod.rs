//! Expert placement from forecasts (README, "Expert placement"): which experts get
//! redundant replicas and which device holds each replica, planned from a layer's
//! predicted shares, then applied to the shares that actually came.
//!
//! A layer has `E` experts, `G` devices and `R` redundant slots; every device holds
//! `(E + R) / G` replicas and a replica serves an equal part of its expert's tokens.
//! [`plan`] follows DeepSeek's EPLB: the `R` extra replicas go one at a time to the
//! expert with the largest predicted load per replica, then the replicas, heaviest
//! first, each go to the least-loaded device that has a free slot (balanced greedy
//! packing with equal slot counts), and pairwise swaps between the most loaded device
//! and any other improve the plan until none lowers the pair's larger load.
//!
//! [`evaluate_layer`] scores policies under the rolling-origin protocol: at each
//! origin each policy makes a plan, the plan is applied to the actual shares of each
//! of the `H` steps that follow, and each step's imbalance is the most loaded device's
//! load over the mean device load.
//!
//! ```
//! use expertcast::placement::{plan, Placement};
//! // 4 experts on 2 devices, no replicas: {0.4, 0.1} and {0.3, 0.2}.
//! let p = plan(&[0.4, 0.3, 0.2, 0.1], 2, 0);
//! assert_eq!(p.max_load(&[0.4, 0.3, 0.2, 0.1]), 0.5);
//! // Two redundant slots: expert 0 gets two replicas of 0.2 each.
//! let p = plan(&[0.4, 0.3, 0.2, 0.1], 2, 2);
//! assert_eq!(p.replicas(0), 2);
//! assert!((p.max_load(&[0.4, 0.3, 0.2, 0.1]) - 0.5).abs() < 1e-15);
//! ```

use std::cmp::Ordering;

use crate::UsageError;

/// Which expert each slot of each device holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Replicas of each expert (at least 1).
    counts: Vec<u32>,
    /// The experts of each device's slots, ascending within a device: device `d`'s
    /// at `starts[d] .. starts[d + 1]`.
    slots: Vec<u32>,
    starts: Vec<u32>,
}

impl Placement {
    /// A placement from each device's experts; every expert must appear at least once.
    pub fn from_devices(experts: usize, devices: Vec<Vec<u32>>) -> Placement {
        let mut counts = vec![0u32; experts];
        for &e in devices.iter().flatten() {
            counts[e as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "every expert needs a replica");
        Placement::from_sorted(counts, devices.into_iter().map(|mut d| {
            d.sort_unstable();
            d
        }))
    }
    /// No placement at all (allocates nothing): what a plan moved out leaves.
    fn empty() -> Placement {
        Placement { counts: Vec::new(), slots: Vec::new(), starts: Vec::new() }
    }
    /// A placement from its replica counts and each device's experts, ascending.
    fn from_sorted(counts: Vec<u32>, devices: impl IntoIterator<Item = impl IntoIterator<Item = u32>>) -> Placement {
        let (mut slots, mut starts) = (Vec::with_capacity(counts.iter().sum::<u32>() as usize), vec![0u32]);
        for d in devices {
            slots.extend(d);
            starts.push(slots.len() as u32);
        }
        Placement { counts, slots, starts }
    }
    pub fn gpus(&self) -> usize {
        self.starts.len() - 1
    }
    pub fn experts(&self) -> usize {
        self.counts.len()
    }
    /// Replicas of expert `e`.
    pub fn replicas(&self, e: usize) -> usize {
        self.counts[e] as usize
    }
    /// The experts on device `d` (one entry per replica), ascending.
    pub fn device(&self, d: usize) -> &[u32] {
        &self.slots[self.starts[d] as usize..self.starts[d + 1] as usize]
    }
    /// The most replicas a device holds.
    pub fn most_per_device(&self) -> usize {
        self.starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
    fn devices(&self) -> impl Iterator<Item = &[u32]> {
        self.starts.windows(2).map(|w| &self.slots[w[0] as usize..w[1] as usize])
    }
    /// Device `d`'s load under shares `p`: the sum of its replicas' parts, in slot order.
    pub fn load(&self, d: usize, p: &[f64]) -> f64 {
        self.device(d).iter().map(|&e| p[e as usize] / self.counts[e as usize] as f64).sum()
    }
    pub fn max_load(&self, p: &[f64]) -> f64 {
        (0..self.gpus()).map(|d| self.load(d, p)).fold(f64::NEG_INFINITY, f64::max)
    }
    /// The most loaded device's load over the mean device load under shares `p`
    /// (1 when every device carries the same; `NaN` when nothing is carried).
    pub fn imbalance(&self, p: &[f64]) -> f64 {
        let (mut max, mut total) = (f64::NEG_INFINITY, 0.0);
        for d in 0..self.gpus() {
            let l = self.load(d, p);
            max = max.max(l);
            total += l;
        }
        max * self.gpus() as f64 / total
    }
    /// Each row's [`imbalance`](Self::imbalance) into `out` (`rows`: step-major,
    /// `experts` a row; one value per row of `out`).
    fn imbalances_into(&self, rows: &[f64], out: &mut [f64]) {
        let ne = self.experts();
        // Each slot's expert and part of it, so a step costs one multiply-add a slot
        // (kernels/placement.cu repeats these operations one for one).
        let parts: Vec<(usize, f64)> = self.slots.iter().map(|&e| (e as usize, 1.0 / self.counts[e as usize] as f64)).collect();
        let g = self.gpus() as f64;
        for (p, v) in rows.chunks(ne).zip(out) {
            let (mut max, mut total) = (f64::NEG_INFINITY, 0.0);
            for w in self.starts.windows(2) {
                let dev = &parts[w[0] as usize..w[1] as usize];
                let l: f64 = dev.iter().map(|&(e, f)| p[e] * f).sum();
                max = max.max(l);
                total += l;
            }
            *v = max * g / total;
        }
    }
    /// The mean [`imbalance`](Self::imbalance) over the rows of `rows` (step-major,
    /// `experts` a row).
    fn mean_imbalance(&self, rows: &[f64]) -> f64 {
        let mut v = vec![0.0; rows.len() / self.experts()];
        self.imbalances_into(rows, &mut v);
        mean_in_order(&v)
    }
    /// Replicas that `self` holds on a device where `before` did not (per device, the
    /// multiset difference): what moving from `before` to `self` loads onto devices.
    pub fn moved_from(&self, before: &Placement) -> usize {
        self.devices().zip(before.devices()).map(|(new, old)| new.len() - common(new, old)).sum()
    }
    /// The same plan with its devices renumbered so that each keeps as many of
    /// `before`'s replicas as it can (greedily, the largest overlap first; ties to the
    /// lowest numbers): a renumbering moves nothing, so it is not counted as moves.
    pub fn aligned_to(self, before: &Placement) -> Placement {
        let g = self.gpus();
        if before.gpus() != g {
            return self;
        }
        let m = self.overlaps(before);
        let mut pairs: Vec<(usize, usize, usize)> = Vec::with_capacity(g * g);
        for i in 0..g {
            for j in 0..g {
                pairs.push((m[i * g + j], i, j));
            }
        }
        pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let (mut taken_new, mut taken_old) = (vec![false; g], vec![false; g]);
        let mut slot_of = vec![usize::MAX; g];
        for (_, i, j) in pairs {
            if !taken_new[i] && !taken_old[j] {
                (taken_new[i], taken_old[j]) = (true, true);
                slot_of[i] = j;
            }
        }
        if slot_of.iter().enumerate().all(|(i, &j)| i == j) {
            return self;
        }
        let mut at = vec![0; g];
        for (i, &j) in slot_of.iter().enumerate() {
            at[j] = i;
        }
        let Placement { counts, slots, starts } = self;
        Placement::from_sorted(counts, at.iter().map(|&i| slots[starts[i] as usize..starts[i + 1] as usize].iter().copied()))
    }
}

impl Placement {
    /// `m[i · G + j]`: how many replicas device `i` of `self` and device `j` of
    /// `before` (of as many devices) hold in common, as multisets: what [`common`]
    /// gives for each pair, from one pass over the slots. An expert with one replica
    /// in each plan adds 1 to one pair; only a replicated one is looked for on every
    /// device.
    fn overlaps(&self, before: &Placement) -> Vec<usize> {
        let g = self.gpus();
        let mut m = vec![0usize; g * g];
        if before.experts() != self.experts() {
            for (i, new) in self.devices().enumerate() {
                for (j, old) in before.devices().enumerate() {
                    m[i * g + j] = common(new, old);
                }
            }
            return m;
        }
        // The device of each expert with one replica in `before` (else `MANY`).
        const MANY: u32 = u32::MAX;
        let mut home = vec![MANY; before.experts()];
        for (j, old) in before.devices().enumerate() {
            for &e in old {
                if before.counts[e as usize] == 1 {
                    home[e as usize] = j as u32;
                }
            }
        }
        let mut many: Vec<u32> = Vec::new();
        for (i, new) in self.devices().enumerate() {
            for &e in new {
                match home[e as usize] {
                    j if j != MANY && self.counts[e as usize] == 1 => m[i * g + j as usize] += 1,
                    _ => many.push(e),
                }
            }
        }
        many.sort_unstable();
        many.dedup();
        let copies = |d: &[u32], e: u32| {
            let from = d.partition_point(|&x| x < e);
            d[from..].iter().take_while(|&&x| x == e).count()
        };
        for &e in &many {
            let olds: Vec<usize> = before.devices().map(|d| copies(d, e)).collect();
            for (i, new) in self.devices().enumerate() {
                let k = copies(new, e);
                for (j, &o) in olds.iter().enumerate() {
                    m[i * g + j] += k.min(o);
                }
            }
        }
        m
    }
}

/// Size of the common multiset of two ascending lists.
fn common(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// Checks that `experts` experts with `replicas` redundant slots fit `gpus` devices
/// with equal slot counts; the message names the flags at fault.
pub fn check_shape(experts: usize, gpus: usize, replicas: usize) -> Result<(), String> {
    let slots = experts + replicas;
    if gpus == 0 {
        return Err("--placement-gpus 0: at least one device is needed".into());
    }
    if gpus > slots {
        return Err(format!(
            "--placement-gpus {gpus} with --placement-replicas {replicas}: more devices than the {slots} replicas of {experts} experts"
        ));
    }
    if slots % gpus != 0 {
        return Err(format!(
            "--placement-gpus {gpus} does not divide the {experts} experts + {replicas} redundant replicas = {slots} \
             (every device holds the same number of replicas)"
        ));
    }
    Ok(())
}

/// The round-robin placement without replicas: expert `e` on device `e mod gpus`.
pub fn static_plan(experts: usize, gpus: usize) -> Placement {
    let devices: Vec<Vec<u32>> = (0..gpus).map(|d| (d..experts).step_by(gpus).map(|e| e as u32).collect()).collect();
    Placement::from_devices(experts, devices)
}

/// Replicas per expert: one each, then each of the `replicas` redundant ones to the
/// expert with the largest weight per replica (ties: the lowest expert).
pub fn replica_counts(w: &[f64], replicas: usize) -> Vec<u32> {
    let mut counts = vec![1u32; w.len()];
    if replicas == 0 {
        return counts;
    }
    let mut heap: std::collections::BinaryHeap<Hot> = w.iter().enumerate().map(|(e, &x)| Hot { per: x, expert: e }).collect();
    for _ in 0..replicas {
        let mut top = heap.pop().expect("at least one expert");
        counts[top.expert] += 1;
        top.per = w[top.expert] / counts[top.expert] as f64;
        heap.push(top);
    }
    counts
}

/// An expert's weight per replica, ordered hottest first (ties: lowest expert first).
struct Hot {
    per: f64,
    expert: usize,
}
impl PartialEq for Hot {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Hot {}
impl PartialOrd for Hot {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Hot {
    fn cmp(&self, o: &Self) -> Ordering {
        self.per.total_cmp(&o.per).then(o.expert.cmp(&self.expert))
    }
}

/// The placement of `w.len()` experts with `replicas` redundant slots on `gpus`
/// devices that [`check_shape`] accepts, planned from weights `w` (predicted shares;
/// negative ones count as 0). See the module's documentation.
pub fn plan(w: &[f64], gpus: usize, replicas: usize) -> Placement {
    let ne = w.len();
    debug_assert!(check_shape(ne, gpus, replicas).is_ok());
    let w: Vec<f64> = w.iter().map(|&x| if x > 0.0 { x } else { 0.0 }).collect();
    let counts = replica_counts(&w, replicas);
    let slots = (ne + replicas) / gpus;
    // Replicas heaviest first (ties: lowest expert), each to the least-loaded device
    // with a free slot (ties: the lowest device).
    let mut reps: Vec<(f64, u32)> = Vec::with_capacity(ne + replicas);
    for (e, &c) in counts.iter().enumerate() {
        reps.extend(std::iter::repeat_n((w[e] / c as f64, e as u32), c as usize));
    }
    // Equal entries are the same replica's copies, so an unstable sort gives the same
    // order. Weights are neither negative nor NaN (nor -0), so their bits order them.
    reps.sort_unstable_by_key(|r| (std::cmp::Reverse(r.0.to_bits()), r.1));
    let mut devices: Vec<Vec<(f64, u32)>> = vec![Vec::with_capacity(slots); gpus];
    let mut loads = vec![0.0f64; gpus];
    // Each device's load while it has a free slot, then infinity.
    let mut open = vec![0.0f64; gpus];
    for r in reps {
        // The first device of the least load among those with a free slot (loads are
        // sums of weights: never NaN, so `<` orders them as `total_cmp` does).
        let mut d = usize::MAX;
        for k in 0..gpus {
            if open[k] < open.get(d).copied().unwrap_or(f64::INFINITY) || (d == usize::MAX && devices[k].len() < slots) {
                d = k;
            }
        }
        devices[d].push(r);
        loads[d] += r.0;
        open[d] = if devices[d].len() < slots { loads[d] } else { f64::INFINITY };
    }
    improve_by_swaps(&mut devices, &mut loads);
    // Each device's experts ascending (equal entries are one expert's replicas).
    Placement::from_sorted(
        counts,
        devices.iter_mut().map(|d| {
            d.sort_unstable_by_key(|r| r.1);
            let d: &Vec<(f64, u32)> = d;
            d.iter().map(|r| r.1)
        }),
    )
}

/// Swaps a replica of the most loaded device with one of another device while that
/// lowers the larger of the two devices' loads: each time the swap that lowers it
/// most (ties: the first found, devices from the least loaded, replicas in order).
/// Every swap lowers the sorted loads lexicographically, so this ends; it stops
/// after `64 · slots · gpus` swaps at the latest.
///
/// Swapping `a` for `b` (`δ = a − b > 0`) leaves the pair's larger load at
/// `max(high − δ, L_d + δ)`, smallest at `δ = (high − L_d) / 2` and growing away
/// from it; with each device's replicas kept in ascending order, the best `b` for an
/// `a` is one of the two around `a − (high − L_d) / 2` (found walking up `d`'s
/// replicas as `a` walks up the top's), and no swap with `d` goes below
/// `(high + L_d) / 2`.
fn improve_by_swaps(devices: &mut [Vec<(f64, u32)>], loads: &mut [f64]) {
    let g = devices.len();
    let asc = |x: &(f64, u32), y: &(f64, u32)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
    devices.iter_mut().for_each(|d| d.sort_unstable_by(asc));
    let cap = 64 * g * devices.first().map_or(0, |d| d.len());
    let mut order: Vec<usize> = Vec::with_capacity(g);
    for _ in 0..cap {
        let top = (0..g).max_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(b.cmp(&a))).expect("a device");
        let high = loads[top];
        // Loads are recomputed from the slots after each swap, so rounding never
        // accumulates; a swap must lower the pair's larger load by more than rounding.
        let eps = 1e-12 * high.abs().max(f64::MIN_POSITIVE);
        let mut best: Option<(f64, usize, usize, usize)> = None;
        order.clear();
        order.extend((0..g).filter(|&d| d != top));
        order.sort_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)));
        for &d in &order {
            let bound = 0.5 * (high + loads[d]);
            if bound >= high - eps || best.is_some_and(|(m, ..)| bound >= m) {
                continue;
            }
            let half = 0.5 * (high - loads[d]);
            let other = &devices[d];
            // `k`: the first of `other` not below `a − half`; it only grows as `a` does.
            let mut k = 0;
            for (i, a) in devices[top].iter().enumerate() {
                while k < other.len() && other[k].0 < a.0 - half {
                    k += 1;
                }
                for j in [k.wrapping_sub(1), k] {
                    let Some(b) = other.get(j) else { continue };
                    let delta = a.0 - b.0;
                    if delta <= 0.0 || a.1 == b.1 {
                        continue;
                    }
                    // Loads are never NaN: the larger of the two without `f64::max`'s NaN care.
                    let (x, y) = (high - delta, loads[d] + delta);
                    let pair_max = if x < y { y } else { x };
                    if pair_max < high - eps && best.is_none_or(|(m, ..)| pair_max < m) {
                        best = Some((pair_max, d, i, j));
                    }
                }
            }
        }
        let Some((_, d, i, j)) = best else { return };
        let (a, b) = (devices[top][i], devices[d][j]);
        devices[top][i] = b;
        devices[d][j] = a;
        for (x, k) in [(top, i), (d, j)] {
            reinsert(&mut devices[x], k, asc);
            loads[x] = devices[x].iter().map(|r| r.0).sum();
        }
    }
}

/// Moves `v[k]` to its place in `v`, sorted by `cmp` but for that entry.
fn reinsert<T: Copy>(v: &mut [T], mut k: usize, cmp: impl Fn(&T, &T) -> Ordering) {
    let x = v[k];
    while k > 0 && cmp(&v[k - 1], &x) == Ordering::Greater {
        v[k] = v[k - 1];
        k -= 1;
    }
    while k + 1 < v.len() && cmp(&v[k + 1], &x) == Ordering::Less {
        v[k] = v[k + 1];
        k += 1;
    }
    v[k] = x;
}

/// How a policy's plan is made at an origin.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Round-robin, no replicas, never changed.
    Static,
    /// From the mean of the last `w` actual shares before the origin.
    Reactive { w: usize },
    /// From a forecaster's predicted shares (mean over the horizon's steps); its
    /// canonical spec names the policy.
    Forecast(String),
    /// In hindsight: of the plan from the actual mean shares of the horizon's steps,
    /// the plan it had and the static plan, the one with the least mean imbalance
    /// over those steps (ties: the plan it had, then the static one).
    Oracle,
}

impl Policy {
    pub fn name(&self) -> String {
        match self {
            Policy::Static => "static".into(),
            Policy::Reactive { w } => format!("reactive:w={w}"),
            Policy::Forecast(spec) => spec.clone(),
            Policy::Oracle => "oracle".into(),
        }
    }
}

/// What placement a run scores: on `gpus` × `replicas`, plans held `horizon` steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlacementConfig {
    /// Device counts, ascending and distinct.
    pub gpus: Vec<usize>,
    /// Redundant replica counts, ascending and distinct.
    pub replicas: Vec<usize>,
    /// Re-placement intervals, ascending and distinct: a plan made at an origin is
    /// applied to the `horizon` steps after it; each is scored on its own.
    pub horizons: Vec<usize>,
    /// The window of the `reactive` policy.
    pub reactive_window: usize,
}

/// The default re-placement interval, in steps.
pub const HORIZON: usize = 100;
/// The default window of the `reactive` policy.
pub const REACTIVE_WINDOW: usize = 100;

impl PlacementConfig {
    /// Refuses settings no trace could use, naming the flag.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.gpus.is_empty() {
            return Err(UsageError("placement needs at least one --placement-gpus".into()));
        }
        if self.gpus.contains(&0) {
            return Err(UsageError("--placement-gpus 0: at least one device is needed".into()));
        }
        if self.horizons.is_empty() || self.horizons.contains(&0) {
            return Err(UsageError("--placement-horizon 0: a plan must hold at least 1 step".into()));
        }
        if self.reactive_window == 0 {
            return Err(UsageError("--placement-reactive-window 0: the window must be at least 1 step".into()));
        }
        for (flag, v) in self.gpus.iter().map(|&v| ("--placement-gpus", v)).chain(self.replicas.iter().map(|&v| ("--placement-replicas", v))).chain(self.horizons.iter().map(|&v| ("--placement-horizon", v))) {
            if i32::try_from(v).is_err() {
                return Err(UsageError(format!("{flag} {v}: at most {} (an int32 column of placement.parquet)", i32::MAX)));
            }
        }
        Ok(())
    }
    /// Checks every (gpus, replicas) against a trace's expert count.
    pub fn check_experts(&self, experts: usize) -> Result<(), String> {
        for &g in &self.gpus {
            for &r in &self.replicas {
                check_shape(experts, g, r)?;
            }
        }
        Ok(())
    }
}

/// One row of `placement.parquet` for a (layer, policy, gpus, replicas, regime).
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementScore {
    pub policy: String,
    pub gpus: usize,
    pub replicas: usize,
    pub horizon: usize,
    pub regime: crate::eval::Regime,
    pub origins: u64,
    /// `None` when no origin was scored.
    pub imbalance_mean: Option<f64>,
    pub imbalance_p99: Option<f64>,
    pub imbalance_max: Option<f64>,
    pub moved_replicas_mean: Option<f64>,
}

/// The `q`-quantile of `v` with linear interpolation between order statistics (numpy's
/// default): position `q · (n − 1)` of the sorted values. `v` is reordered.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    let n = v.len();
    assert!(n > 0, "quantile of nothing");
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut a, rest) = v.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    if lo + 1 >= n {
        return a;
    }
    let b = rest.iter().copied().fold(f64::INFINITY, f64::min);
    a + (pos - lo as f64) * (b - a)
}

/// The mean of `v`, summed in order.
fn mean_in_order(v: &[f64]) -> f64 {
    let mut sum = 0.0;
    for &x in v {
        sum += x;
    }
    sum / v.len().max(1) as f64
}

/// Each step's imbalance (`steps`: origin-major, `horizon` an origin) and each
/// origin's moved replicas of one policy, summed up per regime.
#[allow(clippy::too_many_arguments)]
fn summarize(
    policy: &Policy,
    gpus: usize,
    replicas: usize,
    horizon: usize,
    origins: &[usize],
    stable_from: Option<usize>,
    steps: &[f64],
    moved: &[usize],
) -> [PlacementScore; 2] {
    use crate::eval::Regime;
    let score = |regime: Regime| {
        let keep: Vec<usize> = (0..origins.len()).filter(|&i| regime == Regime::All || stable_from.is_some_and(|s| origins[i] >= s)).collect();
        let mut steps: Vec<f64> = keep.iter().flat_map(|&i| steps[i * horizon..(i + 1) * horizon].iter().copied()).collect();
        let n = keep.len();
        let has = n > 0;
        let mean = has.then(|| steps.iter().sum::<f64>() / steps.len() as f64);
        let max = has.then(|| steps.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        let p99 = has.then(|| quantile(&mut steps, 0.99));
        let moved = has.then(|| keep.iter().map(|&i| moved[i] as f64).sum::<f64>() / n as f64);
        PlacementScore {
            policy: policy.name(),
            gpus,
            replicas,
            horizon,
            regime,
            origins: n as u64,
            imbalance_mean: mean,
            imbalance_p99: p99,
            imbalance_max: max,
            moved_replicas_mean: moved,
        }
    };
    [score(Regime::All), score(Regime::Stable)]
}

/// The origins placement is scored at: the protocol's origins with a whole horizon
/// of steps after them.
pub fn placement_origins(origins: &[usize], horizon: usize, steps: usize) -> Vec<usize> {
    origins.iter().copied().filter(|&o| o + horizon <= steps).collect()
}

/// Each step's imbalance under plans: the CPU's ([`HostSteps`]) or the GPU's
/// ([`cuda::LayerOnGpu`]), with the same bits.
pub trait StepImbalances: Sync {
    /// For each job, a plan and the first step it is applied to, the imbalance of
    /// each of the `h` steps from there; job-major.
    fn steps(&self, jobs: &[(&Placement, usize)], h: usize) -> anyhow::Result<Vec<f64>>;
}

/// [`StepImbalances`] on the CPU, jobs in parallel.
pub struct HostSteps<'a> {
    /// One layer's shares, step-major.
    pub shares: &'a [f64],
    pub experts: usize,
}

impl StepImbalances for HostSteps<'_> {
    fn steps(&self, jobs: &[(&Placement, usize)], h: usize) -> anyhow::Result<Vec<f64>> {
        use rayon::prelude::*;
        let ne = self.experts;
        let mut out = vec![0.0; jobs.len() * h];
        out.par_chunks_mut(h.max(1)).zip(jobs).for_each(|(v, &(pl, from))| pl.imbalances_into(&self.shares[from * ne..(from + h) * ne], v));
        Ok(out)
    }
}

/// One layer's part of [`evaluate_layers`].
pub struct LayerInput<'a> {
    /// Takes each step's imbalance of plans on `shares`: [`HostSteps`] on the CPU,
    /// [`cuda::LayerOnGpu`] on the GPU.
    pub eval: &'a dyn StepImbalances,
    /// The layer's shares, step-major, `experts` a row.
    pub shares: &'a [f64],
    /// For each forecaster policy, in `policies` order, each origin's weights (the
    /// mean predicted shares of its horizon).
    pub predicted: Vec<&'a [Vec<f64>]>,
    /// The first step of the layer's stable regime, if it has one.
    pub stable_from: Option<usize>,
}

/// [`evaluate_layers`] for one layer.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_layer(
    eval: &dyn StepImbalances,
    shares: &[f64],
    experts: usize,
    cfg: &PlacementConfig,
    horizon: usize,
    policies: &[Policy],
    origins: &[usize],
    predicted: &[&[Vec<f64>]],
    stable_from: Option<usize>,
) -> anyhow::Result<Vec<PlacementScore>> {
    let layer = LayerInput { eval, shares, predicted: predicted.to_vec(), stable_from };
    Ok(evaluate_layers(&[layer], experts, cfg, horizon, policies, origins)?.pop().expect("one layer's scores"))
}

/// Scores every policy of each layer (of `experts` experts) on every (gpus,
/// replicas) of `cfg`, re-placed every `horizon` steps, each step's imbalance taken
/// by the layer's `eval`. `origins` are the placement origins
/// ([`placement_origins`]). Each layer's rows come per policy, then gpus, then
/// replicas, `all` before `stable`.
///
/// The layers go through each phase together, so that every phase has the work of
/// all of them to spread over the threads: plans are made on the CPU, every (layer,
/// policy, gpus, replicas, origin) in parallel; each layer's `eval` then scores them
/// in two batches: the oracle's hindsight (the static plan, its new plan and the one
/// made at the origin before, at every origin), and every policy's plans once the
/// oracle has chosen (moves and choices: every (layer, policy, gpus, replicas) in
/// parallel, origin by origin).
pub fn evaluate_layers(
    layers: &[LayerInput],
    experts: usize,
    cfg: &PlacementConfig,
    horizon: usize,
    policies: &[Policy],
    origins: &[usize],
) -> anyhow::Result<Vec<Vec<PlacementScore>>> {
    use rayon::prelude::*;
    let (ne, h, n) = (experts, horizon, origins.len());
    // Each (policy, gpus, replicas) with its forecaster's index and the static plan.
    let mut combos: Vec<(&Policy, Option<usize>, usize, usize, Placement)> = Vec::new();
    let mut fi = 0;
    for p in policies {
        let pred = matches!(p, Policy::Forecast(_)).then(|| {
            fi += 1;
            fi - 1
        });
        for &g in &cfg.gpus {
            for &r in &cfg.replicas {
                combos.push((p, pred, g, r, static_plan(ne, g)));
            }
        }
    }
    let nc = combos.len();
    let mean_rows = |shares: &[f64], from: usize, to: usize| crate::eval::mean_of_rows(&shares[from * ne..to * ne], ne, to - from);
    // Every combination's plan at every origin; the windows' mean shares are taken
    // once for every (gpus, replicas).
    let span = crate::profile::span(|| format!("placement: plans of {} layers", layers.len()));
    let reactive_w = policies.iter().find_map(|p| match p {
        Policy::Reactive { w } => Some(*w),
        _ => None,
    });
    let oracle = policies.contains(&Policy::Oracle);
    // Whether origin i's reactive window is the oracle's window of the origin before
    // (origins `w` = `h` steps apart, as by default): the same mean shares, so the
    // same plan, which is copied rather than made again.
    let as_oracle_before = |i: usize| {
        reactive_w.is_some_and(|w| oracle && i > 0 && origins[i - 1] == origins[i].saturating_sub(w) && origins[i - 1] + h == origins[i])
    };
    // Per layer and origin: the reactive window's mean shares (unless copied), the oracle's.
    let windows: Vec<(Vec<f64>, Vec<f64>)> = (0..layers.len() * n)
        .into_par_iter()
        .map(|k| {
            let (l, i, o) = (&layers[k / n], k % n, origins[k % n]);
            let before = match reactive_w {
                Some(w) if !as_oracle_before(i) => mean_rows(l.shares, o.saturating_sub(w), o),
                _ => Vec::new(),
            };
            let after = if oracle { mean_rows(l.shares, o, o + h) } else { Vec::new() };
            (before, after)
        })
        .collect();
    // For each combination, the oracle's of the same gpus and replicas.
    let oracle_of: Vec<Option<usize>> =
        combos.iter().map(|&(_, _, g, r, _)| combos.iter().position(|x| *x.0 == Policy::Oracle && (x.2, x.3) == (g, r))).collect();
    let copied = |c: usize, i: usize| matches!(combos[c].0, Policy::Reactive { w } if Some(*w) == reactive_w) && as_oracle_before(i);
    // plans[(layer · combos + combo) · origins + origin]
    let plans: Vec<Placement> = (0..layers.len() * nc * n)
        .into_par_iter()
        .map(|k| {
            let (li, c, i) = (k / (nc * n), k / n % nc, k % n);
            let (l, o) = (&layers[li], origins[i]);
            let (p, pred, g, r, start) = &combos[c];
            match p {
                Policy::Static => start.clone(),
                // Filled in below, from the oracle's plan.
                _ if copied(c, i) => Placement::empty(),
                Policy::Reactive { w } if Some(*w) == reactive_w => plan(&windows[li * n + i].0, *g, *r),
                Policy::Reactive { w } => plan(&mean_rows(l.shares, o.saturating_sub(*w), o), *g, *r),
                Policy::Forecast(_) => plan(&l.predicted[pred.expect("a forecaster's weights")][i], *g, *r),
                Policy::Oracle => plan(&windows[li * n + i].1, *g, *r),
            }
        })
        .collect();
    let copies: Vec<(usize, Placement)> = (0..layers.len() * nc * n)
        .into_par_iter()
        .filter(|&k| copied(k / n % nc, k % n))
        .map(|k| {
            let (li, c, i) = (k / (nc * n), k / n % nc, k % n);
            let from = (li * nc + oracle_of[c].expect("an oracle of the same shape")) * n + i - 1;
            (k, plans[from].clone())
        })
        .collect();
    let mut plans = plans;
    for (k, p) in copies {
        plans[k] = p;
    }
    drop(windows);
    drop(span);
    let span = crate::profile::span(|| "placement: hindsight".into());
    // The oracle's hindsight, over each origin's steps: the mean imbalance of the
    // static plan, of the new plan, and of the plan made at the origin before (the
    // one it has when it chose that plan last time; a plan kept longer is scored on
    // the CPU below). Plans are scored as made: renumbering devices moves nothing.
    let oracles: Vec<usize> = (0..nc).filter(|&c| *combos[c].0 == Policy::Oracle).collect();
    let made_at = |li: usize, c: usize| &plans[(li * nc + c) * n..(li * nc + c + 1) * n];
    // hindsight[layer · combos + combo][origin]
    let hindsight: Vec<Vec<[f64; 3]>> = layers
        .par_iter()
        .enumerate()
        .map(|(li, l)| {
            let jobs: Vec<(&Placement, usize)> = oracles
                .iter()
                .flat_map(|&c| {
                    let (start, made) = (&combos[c].4, made_at(li, c));
                    origins.iter().enumerate().flat_map(move |(i, &o)| [(start, o), (&made[i], o), (if i > 0 { &made[i - 1] } else { start }, o)])
                })
                .collect();
            let seen = l.eval.steps(&jobs, h)?;
            let at = |j: usize| mean_in_order(&seen[j * h..(j + 1) * h]);
            let mut out = vec![Vec::new(); nc];
            for (k, &c) in oracles.iter().enumerate() {
                out[c] = (0..n).map(|i| [0, 1, 2].map(|x| at(3 * (k * n + i) + x))).collect();
            }
            Ok(out)
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    drop(span);
    let span = crate::profile::span(|| "placement: moves".into());
    // Moves (and the oracle's choices) origin by origin, every (layer, combination)
    // in parallel: chosen[layer · combos + combo] = (each origin's plan, renumbered
    // to keep what it can of the one before; replicas moved).
    // Plans are moved out of `plans` (left empty) rather than copied, except the
    // oracle's, which it may score again later.
    let made: Vec<&mut [Placement]> = if n == 0 { (0..layers.len() * nc).map(|_| &mut [][..]).collect() } else { plans.chunks_mut(n).collect() };
    let chosen: Vec<(Vec<Placement>, Vec<usize>)> = made
        .into_par_iter()
        .enumerate()
        .map(|(k, made)| {
            let (li, c) = (k / nc, k % nc);
            let (p, _, _, _, start) = &combos[c];
            let (hindsight, shares) = (&hindsight[k], layers[li].shares);
            // The origin whose plan the last one is (renumbered), or none for the static one.
            let mut kept: Option<usize> = None;
            let mut moved = Vec::with_capacity(n);
            let mut aligned: Vec<Placement> = Vec::with_capacity(n);
            for (i, &o) in origins.iter().enumerate() {
                let before = aligned.last().unwrap_or(start);
                let pl = if **p == Policy::Oracle {
                    // Of the kept plan, the static one, then the new one, the first with
                    // the least mean imbalance over the steps it will hold for.
                    let [stay, new, prev] = hindsight[i];
                    let keep = match kept {
                        None => stay,
                        Some(j) if j + 1 == i => prev,
                        Some(j) => made[j].mean_imbalance(&shares[o * ne..(o + h) * ne]),
                    };
                    if keep <= stay && keep <= new {
                        before.clone()
                    } else if stay <= new {
                        kept = None;
                        start.clone().aligned_to(before)
                    } else {
                        kept = Some(i);
                        made[i].clone().aligned_to(before)
                    }
                } else {
                    std::mem::replace(&mut made[i], Placement::empty()).aligned_to(before)
                };
                moved.push(pl.moved_from(before));
                aligned.push(pl);
            }
            (aligned, moved)
        })
        .collect();
    // Tens of thousands of plans: freed on every thread.
    plans.into_par_iter().for_each(drop);
    drop(span);
    let span = crate::profile::span(|| "placement: final imbalances".into());
    let per = n * h;
    let steps: Vec<Vec<f64>> = layers
        .par_iter()
        .enumerate()
        .map(|(li, l)| {
            let jobs: Vec<(&Placement, usize)> =
                chosen[li * nc..(li + 1) * nc].iter().flat_map(|(aligned, _)| aligned.iter().zip(origins.iter().copied())).collect();
            l.eval.steps(&jobs, h)
        })
        .collect::<anyhow::Result<_>>()?;
    drop(span);
    let _span = crate::profile::span(|| "placement: summaries".into());
    let mut rows: Vec<Vec<PlacementScore>> = (0..layers.len() * nc)
        .into_par_iter()
        .map(|k| {
            let (li, c) = (k / nc, k % nc);
            let (p, _, g, r, _) = &combos[c];
            summarize(p, *g, *r, h, origins, layers[li].stable_from, &steps[li][c * per..(c + 1) * per], &chosen[k].1).to_vec()
        })
        .collect();
    chosen.into_par_iter().for_each(drop);
    Ok((0..layers.len()).map(|li| rows[li * nc..(li + 1) * nc].iter_mut().flat_map(std::mem::take).collect()).collect())
}

pub mod cuda;

#[cfg(test)]
mod tests;
