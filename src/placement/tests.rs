use super::*;
use crate::eval::Regime;

/// The smallest largest device load over every assignment of the replicas that
/// `counts` gives each expert of `w` to `gpus` devices of equal slot counts: a
/// depth-first search over every assignment (devices that are still empty are
/// interchangeable, so a replica opens at most the first empty one).
fn optimum(w: &[f64], counts: &[u32], gpus: usize) -> f64 {
    let reps: Vec<f64> = counts.iter().enumerate().flat_map(|(e, &c)| std::iter::repeat_n(w[e] / c as f64, c as usize)).collect();
    let slots = reps.len() / gpus;
    fn go(i: usize, reps: &[f64], slots: usize, loads: &mut Vec<f64>, fill: &mut Vec<usize>, best: &mut f64) {
        if i == reps.len() {
            let m = loads.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            *best = best.min(m);
            return;
        }
        let mut opened_empty = false;
        for d in 0..loads.len() {
            if fill[d] == slots {
                continue;
            }
            if fill[d] == 0 {
                if opened_empty {
                    continue;
                }
                opened_empty = true;
            }
            loads[d] += reps[i];
            fill[d] += 1;
            go(i + 1, reps, slots, loads, fill, best);
            loads[d] -= reps[i];
            fill[d] -= 1;
        }
    }
    let mut best = f64::INFINITY;
    go(0, &reps, slots, &mut vec![0.0; gpus], &mut vec![0; gpus], &mut best);
    best
}

/// Checks a placement's shape: `(E + R) / G` slots on every device, every replica of
/// every expert placed.
fn assert_shape(p: &Placement, experts: usize, gpus: usize, replicas: usize) {
    assert_eq!(p.gpus(), gpus);
    let slots = (experts + replicas) / gpus;
    assert!((0..gpus).all(|d| p.device(d).len() == slots), "{p:?}");
    let mut seen = vec![0usize; experts];
    (0..gpus).flat_map(|d| p.device(d).iter()).for_each(|&e| seen[e as usize] += 1);
    assert!((0..experts).all(|e| seen[e] == p.replicas(e) && seen[e] >= 1), "{p:?}");
    assert_eq!(seen.iter().sum::<usize>(), experts + replicas);
}

#[test]
fn hand_derived_plans_are_optimal() {
    // {.4, .1} and {.3, .2}.
    let w = [0.4, 0.3, 0.2, 0.1];
    let p = plan(&w, 2, 0);
    assert_eq!((p.device(0), p.device(1)), (&[0, 3][..], &[1, 2][..]));
    // Greedy packing alone ends at 7/12 ({3, 2, 2} and {3, 2, 0}); one swap of a 2
    // and the other device's 3 gives {3, 3, 0} and {2, 2, 2}: 6/12, the optimum.
    let w: Vec<f64> = [3.0, 3.0, 2.0, 2.0, 2.0, 0.0].iter().map(|x| x / 12.0).collect();
    let p = plan(&w, 2, 0);
    assert_shape(&p, 6, 2, 0);
    assert!((p.max_load(&w) - 0.5).abs() < 1e-15, "{p:?}");
    assert!((p.imbalance(&w) - 1.0).abs() < 1e-15);
    assert_eq!(optimum(&w, &[1; 6], 2), 0.5);
    // Replicas: .9 gets the first (.45 a replica) and the second (.3): counts 3 and
    // 1, replicas .3 .3 .3 .1 on two devices of two: {.3, .3} and {.3, .1}.
    let w = [0.9, 0.1];
    assert_eq!(replica_counts(&w, 2), vec![3, 1]);
    let p = plan(&w, 2, 2);
    assert_shape(&p, 2, 2, 2);
    assert!((p.max_load(&w) - 0.6).abs() < 1e-15);
    assert!((optimum(&w, &[3, 1], 2) - 0.6).abs() < 1e-15);
    // Ties go to the lowest expert.
    assert_eq!(replica_counts(&[0.5, 0.5], 1), vec![2, 1]);
    // Every device equal: 8 equal experts on 4 devices.
    let p = plan(&[0.125; 8], 4, 0);
    assert_shape(&p, 8, 4, 0);
    assert!((p.imbalance(&[0.125; 8]) - 1.0).abs() < 1e-15);
}

#[test]
fn greedy_and_swaps_within_5_percent_of_exhaustive_search() {
    let mut cases = 0;
    let (mut worst, mut equal) = (1.0f64, 0);
    let mut seed = 1u64;
    while cases < 1000 {
        seed += 1;
        let pick = crate::lcg_noise(seed, 4);
        let ne = 2 + ((pick[0] + 0.5) * 7.0) as usize; // 2..=8
        let gpus = 1 + ((pick[1] + 0.5) * 4.0) as usize; // 1..=4
        let with_replicas = pick[2] > 0.0;
        // The smallest R > 0 (or 0) that makes E + R a multiple of G, at most 4.
        let r = if with_replicas { (1..=4).find(|r| (ne + r) % gpus == 0) } else { (ne % gpus == 0).then_some(0) };
        let Some(r) = r else { continue };
        if check_shape(ne, gpus, r).is_err() {
            continue;
        }
        // Skewed weights: e^(spread · u), u uniform in [-.5, .5), spread 2 to 8.
        let spread = 2.0 + (pick[3] + 0.5) * 6.0;
        let w: Vec<f64> = crate::lcg_noise(seed * 7919, ne).iter().map(|u| (spread * u).exp()).collect();
        let p = plan(&w, gpus, r);
        assert_shape(&p, ne, gpus, r);
        let counts: Vec<u32> = (0..ne).map(|e| p.replicas(e) as u32).collect();
        assert_eq!(counts, replica_counts(&w, r));
        let best = optimum(&w, &counts, gpus);
        let ratio = p.max_load(&w) / best;
        assert!(ratio >= 1.0 - 1e-12, "better than the optimum? {w:?} G={gpus} R={r}");
        assert!(ratio <= 1.05, "case {cases}: {ratio} of the optimum for {w:?}, G={gpus}, R={r}: {p:?}");
        worst = worst.max(ratio);
        equal += usize::from(ratio <= 1.0 + 1e-12);
        cases += 1;
    }
    // Not a bound the test asks for, but what the search found (printed with --nocapture).
    println!("1000 cases: worst {worst:.4} of the optimum, {equal} equal to it");
    assert!(equal > 500, "only {equal} of 1000 equal to the optimum");
}

#[test]
fn moves_count_replicas_new_to_a_device_and_ignore_renumbering() {
    let a = Placement::from_devices(4, vec![vec![0, 2], vec![1, 3]]);
    let b = Placement::from_devices(4, vec![vec![1, 3], vec![0, 2]]);
    // The same sets on swapped devices: renumbered, nothing moves.
    let b = b.aligned_to(&a);
    assert_eq!(b, a);
    assert_eq!(b.moved_from(&a), 0);
    // One swap: expert 2 and expert 3 change devices: 2 replicas move.
    let c = Placement::from_devices(4, vec![vec![0, 3], vec![1, 2]]).aligned_to(&a);
    assert_eq!(c.moved_from(&a), 2);
    // A replica added on device 1 (R = 2: 0 twice, 1 twice): from the static plan,
    // device 0 gains a 1 ... the multiset difference per device.
    let d = Placement::from_devices(4, vec![vec![0, 1, 2], vec![0, 1, 3]]);
    assert_eq!(d.moved_from(&a), 2);
    assert_eq!(static_plan(5, 2).device(0), &[0, 2, 4]);
}

#[test]
fn overlaps_count_each_pair_as_the_merge_does() {
    // Random plans of 12 experts on 4 devices, with up to 8 redundant replicas dealt
    // anywhere (two of one expert on one device too); each pair's overlap is checked
    // against the merge of the two ascending lists.
    let random_plan = |seed: u64, replicas: usize| {
        let u = crate::lcg_noise(seed, 12 + replicas + 12);
        let mut experts: Vec<u32> = (0..12).collect();
        experts.extend((0..replicas).map(|k| ((u[k] + 0.5) * 12.0) as u32 % 12));
        // Shuffle by sorting on noise, then deal (12 + R) / 4 to each device.
        let mut keyed: Vec<(f64, u32)> = experts.iter().enumerate().map(|(k, &e)| (u[(k + replicas) % u.len()] + k as f64 * 1e-9, e)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let per = (12 + replicas) / 4;
        Placement::from_devices(12, keyed.chunks(per).map(|c| c.iter().map(|x| x.1).collect()).collect())
    };
    for seed in 0..300u64 {
        let r = [0, 4, 8][seed as usize % 3];
        let (a, b) = (random_plan(seed, r), random_plan(seed + 1000, [0, 4, 8][(seed as usize / 3) % 3]));
        let m = a.overlaps(&b);
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(m[i * 4 + j], common(a.device(i), b.device(j)), "seed {seed}: devices {i} and {j} of {a:?} and {b:?}");
            }
        }
    }
}

#[test]
fn shapes_that_do_not_fit_are_refused_by_name() {
    assert!(check_shape(16, 4, 0).is_ok());
    assert!(check_shape(16, 8, 8).is_ok());
    let e = check_shape(16, 3, 0).unwrap_err();
    assert!(e.contains("--placement-gpus 3 does not divide") && e.contains("= 16"), "{e}");
    assert!(check_shape(4, 8, 0).unwrap_err().contains("more devices than the 4 replicas"));
    assert!(check_shape(4, 0, 0).unwrap_err().contains("at least one device"));
}

#[test]
fn the_quantile_interpolates_like_numpy() {
    // numpy.quantile([1, 2, 3, 4, 5], .99) = 4 + .96 · (5 − 4)
    assert!((quantile(&mut [5.0, 1.0, 4.0, 2.0, 3.0], 0.99) - 4.96).abs() < 1e-12);
    assert_eq!(quantile(&mut [2.0], 0.99), 2.0);
    // numpy.quantile([0, 10], .5) = 5
    assert_eq!(quantile(&mut [10.0, 0.0], 0.5), 5.0);
}

/// E = 4, G = 2, R = 0, horizon 2, origins 1 and 2 of the rows
/// t0 = ¼ ¼ ¼ ¼, t1 = t2 = .4 .3 .2 .1, t3 = .1 .2 .3 .4 (derived in the comments).
#[test]
fn a_tiny_trace_scored_by_hand() {
    let shares = [0.25, 0.25, 0.25, 0.25, 0.4, 0.3, 0.2, 0.1, 0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.4];
    let cfg = PlacementConfig { gpus: vec![2], replicas: vec![0], horizons: vec![2], reactive_window: 1 };
    let origins = placement_origins(&[1, 2, 3], 2, 4);
    assert_eq!(origins, vec![1, 2]);
    // The forecaster policy predicts t0's shares at every origin: the static plan.
    let flat = vec![vec![0.25; 4]; 2];
    let policies = [Policy::Static, Policy::Reactive { w: 1 }, Policy::Forecast("last".into()), Policy::Oracle];
    let host = HostSteps { shares: &shares, experts: 4 };
    let rows = evaluate_layer(&host, &shares, 4, &cfg, 2, &policies, &origins, &[&flat], Some(2)).unwrap();
    let get = |policy: &str, regime: Regime| rows.iter().find(|r| r.policy == policy && r.regime == regime).unwrap().clone();
    let close = |a: Option<f64>, b: f64| assert!((a.unwrap() - b).abs() < 1e-12, "{a:?} vs {b}");
    // static {0, 2} {1, 3}: t1, t2: .6/.4 -> 1.2; t3: .4/.6 -> 1.2. Never moves.
    let s = get("static", Regime::All);
    assert_eq!((s.origins, s.gpus, s.replicas, s.horizon), (2, 2, 0, 2));
    close(s.imbalance_mean, 1.2);
    close(s.imbalance_max, 1.2);
    close(s.imbalance_p99, 1.2);
    close(s.moved_replicas_mean, 0.0);
    // reactive:w=1: at 1 from t0 (equal: the static plan), 1.2 at t1 and t2; at 2
    // from t1: {0, 3} {1, 2} (2 replicas move), .5/.5 at t2 and t3: 1.0.
    let r = get("reactive:w=1", Regime::All);
    close(r.imbalance_mean, 1.1);
    close(r.imbalance_max, 1.2);
    // p99 of 1, 1, 1.2, 1.2: position 2.97 -> 1.2
    close(r.imbalance_p99, 1.2);
    close(r.moved_replicas_mean, 1.0);
    // stable from step index 2: origin 2 only.
    let rs = get("reactive:w=1", Regime::Stable);
    assert_eq!(rs.origins, 1);
    close(rs.imbalance_mean, 1.0);
    close(rs.moved_replicas_mean, 2.0);
    // oracle: at 1, the plan from t1, t2's mean, {0, 3} {1, 2}, gives 1.0 twice against
    // 1.2 for the kept (static) plan: taken, 2 moved. At 2 the mean of t2, t3 is equal
    // (a new plan would be the static one: 1.2 at t2 and t3), but the kept {0, 3}
    // {1, 2} gives .5/.5 at both: kept, nothing moved.
    let o = get("oracle", Regime::All);
    close(o.imbalance_mean, 1.0);
    close(o.imbalance_max, 1.0);
    close(o.moved_replicas_mean, 1.0);
    let f = get("last", Regime::All);
    close(f.imbalance_mean, 1.2);
    close(f.moved_replicas_mean, 0.0);
    // No origin: empty scores.
    let none = evaluate_layer(&HostSteps { shares: &shares, experts: 4 }, &shares, 4, &cfg, 2, &[Policy::Static], &[], &[], None).unwrap();
    assert_eq!((none[0].origins, none[0].imbalance_mean, none[1].moved_replicas_mean), (0, None, None));
}

#[test]
fn plans_are_the_same_bits_every_time() {
    let w: Vec<f64> = crate::lcg_noise(3, 128).iter().map(|u| (4.0 * u).exp()).collect();
    let a = plan(&w, 8, 8);
    for _ in 0..3 {
        assert_eq!(plan(&w, 8, 8), a);
    }
    assert_shape(&a, 128, 8, 8);
    // Better than round robin on skewed weights.
    assert!(a.max_load(&w) < static_plan(128, 8).max_load(&w));
}

/// Layers evaluated together give each layer's rows as evaluated alone (the flat
/// indices over layers, combinations and origins).
#[test]
fn layers_together_score_as_each_alone() {
    let ne = 8;
    let steps = 60;
    let layer = |seed: u64| -> Vec<f64> {
        let u = crate::lcg_noise(seed, steps * ne);
        u.chunks(ne)
            .flat_map(|r| {
                let w: Vec<f64> = r.iter().map(|x| (3.0 * x).exp()).collect();
                let t: f64 = w.iter().sum();
                w.into_iter().map(move |x| x / t)
            })
            .collect()
    };
    let shares = [layer(1), layer(2), layer(3)];
    let origins = placement_origins(&[10, 20, 30, 40, 50], 5, steps);
    let policies = [Policy::Static, Policy::Reactive { w: 3 }, Policy::Forecast("f".into()), Policy::Oracle];
    let preds: Vec<Vec<Vec<f64>>> = (0..3).map(|l| origins.iter().map(|&o| shares[l][(o - 1) * ne..o * ne].to_vec()).collect()).collect();
    let hosts: Vec<HostSteps> = shares.iter().map(|s| HostSteps { shares: s, experts: ne }).collect();
    let inputs: Vec<LayerInput> = (0..3)
        .map(|l| LayerInput { eval: &hosts[l], shares: &shares[l], predicted: vec![&preds[l]], stable_from: Some(25 + l) })
        .collect();
    // The second shape's static plan puts 3, 3 and 2 experts on its devices.
    for (gpus, replicas) in [(vec![2, 4], vec![0, 4]), (vec![3], vec![1, 4])] {
        let combos = gpus.len() * replicas.len();
        let cfg = PlacementConfig { gpus, replicas, horizons: vec![5], reactive_window: 3 };
        let together = evaluate_layers(&inputs, ne, &cfg, 5, &policies, &origins).unwrap();
        assert_eq!(together.len(), 3);
        for l in 0..3 {
            let alone = evaluate_layer(&hosts[l], &shares[l], ne, &cfg, 5, &policies, &origins, &[&preds[l]], Some(25 + l)).unwrap();
            assert_eq!(alone.len(), policies.len() * combos * 2);
            assert_eq!(together[l], alone, "layer {l}");
        }
        // The layers differ, so a mix-up of their indices would show.
        assert_ne!(together[0], together[1]);
    }
}

/// A reactive plan copied from the oracle's plan of the origin before (its window is
/// that oracle window: origins `w` = `h` steps apart) scores as the plan made from
/// its own window, as when no oracle is asked for and every reactive plan is made.
#[test]
fn copied_reactive_plans_score_as_made_ones() {
    let (ne, steps) = (8, 80);
    let u = crate::lcg_noise(11, steps * ne);
    let shares: Vec<f64> = u
        .chunks(ne)
        .flat_map(|r| {
            let w: Vec<f64> = r.iter().map(|x| (4.0 * x).exp()).collect();
            let t: f64 = w.iter().sum();
            w.into_iter().map(move |x| x / t)
        })
        .collect();
    let host = HostSteps { shares: &shares, experts: ne };
    // Origins 10 steps apart; w = h = 10 (copied) and w = 7 (made) side by side.
    let origins = placement_origins(&[0, 10, 20, 30, 40, 50, 60], 10, steps);
    for w in [10, 7] {
        let cfg = PlacementConfig { gpus: vec![2, 4], replicas: vec![0, 4], horizons: vec![10], reactive_window: w };
        let with_oracle = [Policy::Static, Policy::Reactive { w }, Policy::Oracle];
        let alone = [Policy::Static, Policy::Reactive { w }];
        let a = evaluate_layer(&host, &shares, ne, &cfg, 10, &with_oracle, &origins, &[], None).unwrap();
        let b = evaluate_layer(&host, &shares, ne, &cfg, 10, &alone, &origins, &[], None).unwrap();
        let reactive = |rows: &[PlacementScore]| rows.iter().filter(|r| r.policy.starts_with("reactive")).cloned().collect::<Vec<_>>();
        assert_eq!(reactive(&a).len(), 2 * 2 * 2);
        assert_eq!(reactive(&a), reactive(&b), "w = {w}");
        // Scored at every origin (regime all; no stable regime here): not an empty plan.
        for r in reactive(&a) {
            match r.regime {
                Regime::All => assert!(r.origins == origins.len() as u64 && r.imbalance_mean.is_some_and(|m| m >= 1.0), "{r:?}"),
                Regime::Stable => assert_eq!(r.origins, 0),
            }
        }
    }
}
