//! Dense NumPy traces: one `[steps, layers, experts]` array of any int or float dtype.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};

use super::{Loads, Result, Trace, TraceError, invalid, stem_name};

pub(super) fn read_npy(file: &Path) -> Result<Trace> {
    let f = File::open(file).map_err(|source| TraceError::Io { file: file.to_path_buf(), source })?;
    let npy = NpyFile::new(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| invalid(file, format!("not a readable .npy file: {e}")))?;
    let shape: Vec<u64> = npy.shape().to_vec();
    if shape.len() != 3 {
        return Err(invalid(file, format!("array has shape {shape:?}; expected 3 dimensions [steps, layers, experts]")));
    }
    if shape.contains(&0) {
        return Err(invalid(file, format!("array has shape {shape:?}: it holds no loads")));
    }
    let (nt, nl, ne) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
    let order = npy.order();
    let DType::Plain(ts) = npy.dtype() else {
        return Err(invalid(file, "structured dtypes are not supported; expected a plain int or float array"));
    };
    let bytes = ts.size_field();
    // Streaming position -> C-order index.
    let to_c = |i: usize| match order {
        Order::C => i,
        Order::Fortran => {
            let t = i % nt;
            let l = (i / nt) % nl;
            let e = i / (nt * nl);
            (t * nl + l) * ne + e
        }
    };
    let n = nt * nl * ne;
    let trunc = |e: std::io::Error| invalid(file, format!("cannot read the array data (truncated file?): {e}"));
    macro_rules! fill {
        ($ty:ty, $store:ident, $conv:ty) => {{
            let mut v: Vec<$conv> = vec![Default::default(); n];
            let data = npy.data::<$ty>().map_err(|e| invalid(file, format!("unsupported dtype: {e}")))?;
            let mut count = 0usize;
            for (i, x) in data.enumerate() {
                v[to_c(i)] = x.map_err(trunc)? as $conv;
                count += 1;
            }
            if count != n {
                return Err(invalid(file, "the array data is truncated"));
            }
            Loads::$store(v)
        }};
    }
    let loads = match (ts.type_char(), bytes) {
        (TypeChar::Float, 4) => fill!(f32, F32, f32),
        (TypeChar::Float, 8) => fill!(f64, F64, f64),
        (TypeChar::Int, 1) => fill!(i8, F32, f32),
        (TypeChar::Int, 2) => fill!(i16, F32, f32),
        (TypeChar::Uint, 1) => fill!(u8, F32, f32),
        (TypeChar::Uint, 2) => fill!(u16, F32, f32),
        // Wider integers go through f64 and move down to f32 when every value is exact.
        (TypeChar::Int, 4) => shrink(fill!(i32, F64, f64)),
        (TypeChar::Int, 8) => shrink(fill!(i64, F64, f64)),
        (TypeChar::Uint, 4) => shrink(fill!(u32, F64, f64)),
        (TypeChar::Uint, 8) => shrink(fill!(u64, F64, f64)),
        _ => return Err(invalid(file, format!("dtype {ts} is not a load type; expected an int or float dtype"))),
    };
    Trace::from_dense(stem_name(file), file, 0, (0..nl as i64).collect(), (0..ne as i64).collect(), loads)
}

/// Keeps integer loads as f32 when that is exact (counts below 2^24).
fn shrink(l: Loads) -> Loads {
    match l {
        Loads::F64(v) if v.iter().all(|&x| (x as f32) as f64 == x) => Loads::F32(v.into_iter().map(|x| x as f32).collect()),
        other => other,
    }
}
