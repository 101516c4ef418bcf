//! Dense NumPy traces: one `[steps, layers, experts]` array of any int or float dtype.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};

use super::{Loads, Result, Trace, TraceError, invalid, stem_name};

/// Numeric element types of a `.npy` load array.
trait Load: npyz::Deserialize + Copy + Send + Sync + 'static {
    const SIZE: usize;
    fn f64(self) -> f64;
    /// The value from its little-endian bytes (`SIZE` of them).
    fn from_le(b: &[u8]) -> Self;
}
macro_rules! load_type {
    ($($t:ty),*) => {$(impl Load for $t {
        const SIZE: usize = std::mem::size_of::<$t>();
        fn f64(self) -> f64 { self as f64 }
        fn from_le(b: &[u8]) -> Self { <$t>::from_le_bytes(b.try_into().expect("SIZE bytes")) }
    })*};
}
load_type!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

fn open(file: &Path) -> Result<NpyFile<BufReader<File>>> {
    let f = File::open(file).map_err(|source| TraceError::Io { file: file.to_path_buf(), error: source })?;
    NpyFile::new(BufReader::with_capacity(1 << 20, f)).map_err(|e| invalid(file, format!("not a readable .npy file: {e}")))
}

fn is_f32<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// Streams the array's values in file order.
fn values<T: Load>(file: &Path, n: usize, mut each: impl FnMut(usize, f64)) -> Result<()> {
    let data = open(file)?.data::<T>().map_err(|e| invalid(file, format!("unsupported dtype: {e}")))?;
    let mut count = 0usize;
    for (i, x) in data.enumerate() {
        let x = x.map_err(|e| invalid(file, format!("cannot read the array data (truncated file?): {e}")))?;
        each(i, x.f64());
        count += 1;
    }
    if count != n {
        return Err(invalid(file, "the array data is truncated"));
    }
    Ok(())
}

/// Reads the array as f32 when every value is exactly a float32 (one extra pass for
/// 32- and 64-bit integers and float64), else as f64, so memory stays at the dense
/// float32 size for counts.
fn read_loads<T: Load>(file: &Path, n: usize, to_c: impl Fn(usize) -> usize, fast: Option<u64>) -> Result<Loads> {
    if let Some(offset) = fast {
        return read_loads_parallel::<T>(file, n, offset);
    }
    // Types of up to 4 bytes: f32 holds i8, i16, u8, u16 and f32 exactly; i32 and u32
    // only below 2^24, so they are checked like the wider types.
    let mut exact = true;
    if std::mem::size_of::<T>() >= 4 && !is_f32::<T>() {
        values::<T>(file, n, |_, x| exact &= (x as f32) as f64 == x)?;
    }
    if exact {
        let mut v = vec![0f32; n];
        values::<T>(file, n, |i, x| v[to_c(i)] = x as f32)?;
        Ok(Loads::F32(v))
    } else {
        let mut v = vec![0f64; n];
        values::<T>(file, n, |i, x| v[to_c(i)] = x)?;
        Ok(Loads::F64(v))
    }
}

/// [`read_loads`] of a C-order little-endian array whose data starts at byte
/// `offset`: chunks of the file read (`pread`) and converted in parallel, as float32
/// while every value is one, else again as float64.
fn read_loads_parallel<T: Load>(file: &Path, n: usize, offset: u64) -> Result<Loads> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    const CHUNK: usize = 1 << 20; // values a task
    let f = File::open(file).map_err(|source| TraceError::Io { file: file.to_path_buf(), error: source })?;
    // Reads values `first .. first + len` and hands each to `put`.
    fn fill<T: Load>(f: &File, offset: u64, first: usize, len: usize, mut put: impl FnMut(usize, T), file: &Path) -> Result<()> {
        let mut buf = vec![0u8; len * T::SIZE];
        f.read_exact_at(&mut buf, offset + (first * T::SIZE) as u64).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid(file, "the array data is truncated"),
            _ => TraceError::Io { file: file.to_path_buf(), error: e },
        })?;
        buf.chunks_exact(T::SIZE).enumerate().for_each(|(i, b)| put(i, T::from_le(b)));
        Ok(())
    }
    let exact = AtomicBool::new(true);
    let mut v = vec![0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().try_for_each(|(c, out)| {
        let mut ok = true;
        fill(&f, offset, c * CHUNK, out.len(), |i, x: T| {
            let y = x.f64();
            ok &= (y as f32) as f64 == y;
            out[i] = y as f32;
        }, file)?;
        if !ok {
            exact.store(false, Relaxed);
        }
        Ok::<(), TraceError>(())
    })?;
    if exact.load(Relaxed) {
        return Ok(Loads::F32(v));
    }
    drop(v);
    let mut v = vec![0f64; n];
    v.par_chunks_mut(CHUNK).enumerate().try_for_each(|(c, out)| fill(&f, offset, c * CHUNK, out.len(), |i, x: T| out[i] = x.f64(), file))?;
    Ok(Loads::F64(v))
}

/// Where the array data starts: after the magic string, the version, the header's
/// length (2 bytes in version 1, 4 after) and the header.
fn data_offset(file: &Path) -> Result<u64> {
    use std::io::Read;
    let mut head = [0u8; 12];
    File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|_| invalid(file, "not a readable .npy file: the header is truncated"))?;
    Ok(match head[6] {
        1 => 10 + u16::from_le_bytes([head[8], head[9]]) as u64,
        _ => 12 + u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64,
    })
}

pub(super) fn read_npy(file: &Path) -> Result<Trace> {
    let npy = open(file)?;
    let shape: Vec<u64> = npy.shape().to_vec();
    if shape.len() != 3 {
        return Err(invalid(file, format!("array has shape {shape:?}; expected 3 dimensions [steps, layers, experts]")));
    }
    if shape.contains(&0) {
        return Err(invalid(file, format!("array has shape {shape:?}: it holds no loads")));
    }
    let order = npy.order();
    let DType::Plain(ts) = npy.dtype() else {
        return Err(invalid(file, "structured dtypes are not supported; expected a plain int or float array"));
    };
    drop(npy);
    // The header's shape is checked against the file's length before anything is
    // allocated: a 128-byte file cannot claim a terabyte of loads.
    let len = std::fs::metadata(file).map_err(|source| TraceError::Io { file: file.to_path_buf(), error: source })?.len();
    let bytes = shape.iter().try_fold(ts.num_bytes().unwrap_or(1) as u64, |a, &d| a.checked_mul(d));
    if bytes.is_none_or(|b| b > len) {
        return Err(invalid(
            file,
            format!("the header claims shape {shape:?} of dtype {ts} ({}), but the file holds {len} bytes", bytes.map_or("more than 2^64 bytes".into(), |b| format!("{b} bytes"))),
        ));
    }
    let (nt, nl, ne) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
    // Streaming position -> C-order index.
    let to_c = move |i: usize| match order {
        Order::C => i,
        Order::Fortran => {
            let t = i % nt;
            let l = (i / nt) % nl;
            let e = i / (nt * nl);
            (t * nl + l) * ne + e
        }
    };
    let n = nt * nl * ne;
    // C order in the machine's byte order (one-byte types have none): read in parallel.
    let native = ts.size_field() == 1 || ts.endianness() == npyz::Endianness::of_machine();
    let fast = if order == Order::C && native && cfg!(target_endian = "little") { Some(data_offset(file)?) } else { None };
    let loads = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => read_loads::<f32>(file, n, to_c, fast)?,
        (TypeChar::Float, 8) => read_loads::<f64>(file, n, to_c, fast)?,
        (TypeChar::Int, 1) => read_loads::<i8>(file, n, to_c, fast)?,
        (TypeChar::Int, 2) => read_loads::<i16>(file, n, to_c, fast)?,
        (TypeChar::Int, 4) => read_loads::<i32>(file, n, to_c, fast)?,
        (TypeChar::Int, 8) => read_loads::<i64>(file, n, to_c, fast)?,
        (TypeChar::Uint, 1) => read_loads::<u8>(file, n, to_c, fast)?,
        (TypeChar::Uint, 2) => read_loads::<u16>(file, n, to_c, fast)?,
        (TypeChar::Uint, 4) => read_loads::<u32>(file, n, to_c, fast)?,
        (TypeChar::Uint, 8) => read_loads::<u64>(file, n, to_c, fast)?,
        _ => return Err(invalid(file, format!("dtype {ts} is not a load type; expected an int or float dtype"))),
    };
    Trace::from_dense(stem_name(file), file, 0, (0..nl as i64).collect(), (0..ne as i64).collect(), loads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_npy(path: &Path, descr: &str, shape: (usize, usize, usize), fortran: bool, data: &[u8]) {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({}, {}, {}), }}",
            if fortran { "True" } else { "False" },
            shape.0,
            shape.1,
            shape.2
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn float64_counts_are_held_as_f32_and_fractions_as_f64() {
        let d = tempfile::tempdir().unwrap();
        // a (2, 1, 2) float64 array of these loads, read back
        let read = |name: &str, loads: [f64; 4]| {
            let bytes: Vec<u8> = loads.iter().flat_map(|v| v.to_le_bytes()).collect();
            let p = d.path().join(name);
            write_npy(&p, "<f8", (2, 1, 2), false, &bytes);
            read_npy(&p).unwrap()
        };
        let t = read("counts.npy", [1.0, 3.0, 2.0, 2.0]);
        assert_eq!(t.dense_bytes(), 4 * 4);
        assert_eq!(t.proportion(0, 0, 1), 0.75);
        let t = read("fracs.npy", [0.1, 0.3, 0.2, 0.2]);
        assert_eq!(t.dense_bytes(), 4 * 8);
        assert_eq!(t.load(0, 0, 0), 0.1);
    }

    #[test]
    fn fortran_order_and_big_counts() {
        let d = tempfile::tempdir().unwrap();
        // shape (2 steps, 1 layer, 2 experts) in Fortran order: t varies fastest.
        // C-order values: [t0e0=1, t0e1=2, t1e0=3, t1e1=4] -> Fortran bytes 1, 3, 2, 4
        let data: Vec<u8> = [1i32, 3, 2, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = d.path().join("f.npy");
        write_npy(&p, "<i4", (2, 1, 2), true, &data);
        let t = read_npy(&p).unwrap();
        assert_eq!((t.load(0, 0, 1), t.load(1, 0, 0)), (2.0, 3.0));
        // A count above 2^24 is not exact in f32: the trace is held in f64.
        let data: Vec<u8> = [16_777_217i64, 1, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = d.path().join("big.npy");
        write_npy(&p, "<i8", (2, 1, 2), false, &data);
        let t = read_npy(&p).unwrap();
        assert_eq!(t.load(0, 0, 0), 16_777_217.0);
    }

    #[test]
    fn chunks_read_in_parallel_and_big_endian_arrays_agree() {
        let d = tempfile::tempdir().unwrap();
        // 1,500 steps × 1 layer × 1,000 experts: more than one chunk of 2^20 values
        let n = 1500 * 1000;
        let vals: Vec<i32> = (0..n as i32).map(|i| i % 997 + 1).collect();
        let p = d.path().join("big.npy");
        write_npy(&p, "<i4", (1500, 1, 1000), false, &vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        let t = read_npy(&p).unwrap();
        for (s, e) in [(0, 0), (1048, 575), (1048, 576), (1499, 999)] {
            assert_eq!(t.load(s, 0, e), vals[s * 1000 + e] as f64, "step {s}, expert {e}");
        }
        // the same small array big-endian (streamed) and little-endian (in parallel)
        let small = [5i32, 7, 11, 13, 17, 19];
        let (le, be) = (d.path().join("le.npy"), d.path().join("be.npy"));
        write_npy(&le, "<i4", (3, 1, 2), false, &small.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        write_npy(&be, ">i4", (3, 1, 2), false, &small.iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>());
        let (a, b) = (read_npy(&le).unwrap(), read_npy(&be).unwrap());
        for (s, e) in [(0, 0), (1, 1), (2, 0)] {
            assert_eq!(a.load(s, 0, e), small[s * 2 + e] as f64);
            assert_eq!(b.load(s, 0, e), a.load(s, 0, e));
        }
        // data cut short: the same message as the streaming reader's
        let mut bytes = std::fs::read(&le).unwrap();
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&le, &bytes).unwrap();
        assert!(read_npy(&le).unwrap_err().to_string().contains("the array data is truncated"));
    }
}
