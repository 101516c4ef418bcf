//! Vectorisable loops with fixed bits: sums in eight lanes (element `i` in lane
//! `i mod 8`, the lanes then added pairwise), and a way to run a loop compiled
//! for AVX2 where the CPU has it ([`avx2_twin`]). AVX2 runs the same additions, multiplications and
//! divisions four lanes to an instruction, and FMA (which rounds once where a
//! multiply and an add round twice) is never enabled, so every x86-64 CPU gives the
//! same bits, and so does any other architecture.

/// Lanes of a fixed-order sum.
pub const LANES: usize = 8;

/// Adds eight lane totals pairwise: `((0+1)+(2+3))+((4+5)+(6+7))`.
#[inline(always)]
pub fn fold_lanes(v: [f64; LANES]) -> f64 {
    ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))
}

/// `Σ f(x)` over `xs` in eight lanes.
#[inline(always)]
pub fn lane_sum(xs: &[f64]) -> f64 {
    lane_sum_by(xs, |x| x)
}

/// [`lane_sum`] of `f` of each value.
#[inline(always)]
pub fn lane_sum_by(xs: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut a = [0.0f64; LANES];
    let full = xs.len() / LANES * LANES;
    for i in (0..full).step_by(LANES) {
        let x: &[f64; LANES] = xs[i..i + LANES].try_into().unwrap();
        for j in 0..LANES {
            a[j] += f(x[j]);
        }
    }
    for (j, x) in xs[full..].iter().enumerate() {
        a[j] += f(*x);
    }
    fold_lanes(a)
}

/// Whether the CPU has AVX2 (checked once).
#[inline(always)]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `avx2_twin!(pub fn name(a: A, b: B) -> R => inner);` declares `name`, which calls
/// `inner` (an `#[inline(always)]` function, so that it is compiled into each
/// caller) from a copy compiled for AVX2 when the CPU has it, else directly.
macro_rules! avx2_twin {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn twin($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                if $crate::simd::has_avx2() {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { twin($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use avx2_twin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_follow_their_order_and_match_float64_sums_closely() {
        // 0.1 + 0.2 + ... by lanes: lane j holds x[j] + x[j + 8]
        let xs: Vec<f64> = (1..=19).map(|i| i as f64 / 10.0).collect();
        let mut lanes = [0.0; LANES];
        for (i, x) in xs.iter().enumerate() {
            lanes[i % LANES] += x;
        }
        let want = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        assert_eq!(lane_sum(&xs).to_bits(), want.to_bits());
        assert!((lane_sum(&xs) - 19.0).abs() < 1e-12);
        assert_eq!(lane_sum(&[]), 0.0);
        avx2_twin!(fn sum_twin(xs: &[f64]) -> f64 => lane_sum);
        assert_eq!(sum_twin(&xs).to_bits(), want.to_bits());
    }
}
