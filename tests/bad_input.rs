//! One test per kind of bad input: exit status 2, a message naming the file and
//! the place, and nothing written to the output directory.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;

/// Runs on `input` and checks the failure: status 2, every `want` in the message,
/// and an output directory that was never created.
fn assert_rejected(input: &Path, extra: &[&str], want: &[&str]) {
    let dir = input.parent().unwrap();
    let out = dir.join("out");
    let mut args = vec!["run", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    let o = expertcast(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "exit status for {}: {err}", input.display());
    let fname = input.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(fname), "message should name the file {fname}: {err}");
    for w in want {
        assert!(err.contains(w), "message should contain {w:?}: {err}");
    }
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "nothing may be written: {err}");
}

fn ok_grid() -> Vec<Row> {
    grid(5, 2, 3, |t, l, e| (1 + t + l as i64 + e as i64) as f64)
}

fn with(rows: Vec<Row>, f: impl FnOnce(&mut Vec<Row>)) -> Vec<Row> {
    let mut r = rows;
    f(&mut r);
    r
}

#[test]
fn nan_load() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nan.parquet");
    // row 8 (1-based) is step 1, layer 0, expert 1
    write_parquet(&p, &with(ok_grid(), |r| r[7].3 = f64::NAN));
    assert_rejected(&p, &[], &["row 8", "NaN load", "step 1, layer 0, expert 1"]);
}

#[test]
fn infinite_load() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("inf.parquet");
    write_parquet(&p, &with(ok_grid(), |r| r[0].3 = f64::INFINITY));
    assert_rejected(&p, &[], &["row 1", "infinite load", "step 0, layer 0, expert 0"]);
}

#[test]
fn negative_load() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("neg.csv");
    write_csv(&p, &with(ok_grid(), |r| r[29].3 = -3.0));
    // CSV lines count the header: row 30 is line 31
    assert_rejected(&p, &[], &["line 31", "negative load -3", "step 4, layer 1, expert 2"]);
}

#[test]
fn missing_step() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("gap.parquet");
    write_parquet(&p, &with(ok_grid(), |r| r.retain(|x| x.0 != 2)));
    assert_rejected(&p, &[], &["step 2 is missing", "from 0 to 4"]);
}

#[test]
fn duplicated_row() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dup.parquet");
    write_parquet(&p, &with(ok_grid(), |r| r.push((3, 1, 2, 7.0))));
    assert_rejected(&p, &[], &["row 31", "duplicate row", "step 3, layer 1, expert 2"]);
}

#[test]
fn layer_with_fewer_experts() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ragged.parquet");
    write_parquet(&p, &with(ok_grid(), |r| r.retain(|x| !(x.1 == 1 && x.2 == 2))));
    assert_rejected(&p, &[], &["layer 1 has 2 experts but layer 0 has 3", "expert 2"]);
}

#[test]
fn layer_summing_to_zero() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("zero.parquet");
    write_parquet(&p, &with(ok_grid(), |r| r.iter_mut().filter(|x| x.0 == 3 && x.1 == 1).for_each(|x| x.3 = 0.0)));
    assert_rejected(&p, &[], &["layer 1 has a total load of 0 at step 3"]);
}

#[test]
fn empty_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("empty.parquet");
    std::fs::write(&p, b"").unwrap();
    assert_rejected(&p, &[], &["empty"]);
    let c = d.path().join("header_only.csv");
    std::fs::write(&c, "step,layer,expert,tokens\n").unwrap();
    assert_rejected(&c, &[], &["no rows"]);
}

#[test]
fn truncated_parquet() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cut.parquet");
    let bytes = std::fs::read(bundled("gpt12-e16-top2-s2")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected(&p, &[], &["not a readable Parquet file"]);
    let g = d.path().join("garbage.parquet");
    std::fs::write(&g, b"this is not parquet at all, just text").unwrap();
    assert_rejected(&g, &[], &["not a readable Parquet file"]);
}

#[test]
fn column_of_wrong_type() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("strtokens.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("layer", DataType::Int64, false),
        Field::new("expert", DataType::Int64, false),
        Field::new("tokens", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![0, 0])),
        Arc::new(Int64Array::from(vec![0, 0])),
        Arc::new(Int64Array::from(vec![0, 1])),
        Arc::new(StringArray::from(vec!["3", "4"])),
    ];
    write_parquet_batch(&p, &RecordBatch::try_new(schema, cols).unwrap());
    assert_rejected(&p, &[], &["column \"tokens\" has type Utf8", "integer or float"]);
    // In CSV, a value that does not parse is reported with its line.
    let c = d.path().join("badvalue.csv");
    std::fs::write(&c, "step,layer,expert,tokens\n0,0,0,3\n0,0,1,lots\n").unwrap();
    assert_rejected(&c, &[], &["line 3"]);
}

#[test]
fn missing_column() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("noexpert.csv");
    std::fs::write(&p, "step,layer,tokens\n0,0,3\n").unwrap();
    assert_rejected(&p, &[], &["missing column \"expert\"", "--expert-col"]);
}

#[test]
fn unknown_extension() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("trace.txt");
    std::fs::write(&p, "step,layer,expert,tokens\n0,0,0,1\n").unwrap();
    assert_rejected(&p, &[], &["unknown file extension \".txt\""]);
    // --format overrides the extension, and the same file is then read as CSV.
    let out = d.path().join("out2");
    let o = expertcast(&["run", p.to_str().unwrap(), "--format", "csv", "--out", out.to_str().unwrap(), "--quiet", "-f", "last"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn good_file_then_bad_file_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.parquet");
    write_parquet(&good, &ok_grid());
    let bad = d.path().join("bad.parquet");
    write_parquet(&bad, &with(ok_grid(), |r| r[3].3 = -1.0));
    let out = d.path().join("out");
    let o = expertcast(&["run", good.to_str().unwrap(), bad.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.parquet"));
    assert!(!out.exists());
}

#[test]
fn bad_npy() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("twod.npy");
    let data: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&p, "<f8", &[2, 2], &data);
    assert_rejected(&p, &[], &["3 dimensions"]);
}

/// Runs a good trace in `dir` with each case's flags: exit 2, the message holds the
/// case's text, no output directory. Returns the trace's path.
fn assert_usage_errors(dir: &Path, cases: &[(&[&str], &str)]) -> std::path::PathBuf {
    let good = dir.join("good.parquet");
    write_parquet(&good, &ok_grid());
    for (args, want) in cases {
        let out = dir.join("out");
        let mut a = vec!["run", good.to_str().unwrap(), "--out", out.to_str().unwrap()];
        a.extend(args.iter());
        let o = expertcast(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "{args:?}");
    }
    good
}

#[test]
fn usage_errors_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let g = assert_usage_errors(
        d.path(),
        &[
            (&["-f", "nope"], "unknown forecaster \"nope\""),
            (&["--window", "0"], "--window 0"),
            (&["--origin-stride", "0"], "--origin-stride 0"),
            (&["--kappa", "-1"], "--kappa"),
            (&["-f", "last", "-f", "last"], "given twice"),
            (&["--bogus-flag"], "--bogus-flag"),
        ],
    );
    let g = g.to_str().unwrap();
    // A spec error lists the known forecasters and their parameters.
    let o = expertcast(&["run", g, "-f", "mean:q=3"]);
    assert!(stderr(&o).contains("known forecasters:") && stderr(&o).contains("ema [alpha=0.3"), "{}", stderr(&o));
}

#[test]
fn npy_headers_that_claim_more_than_the_file_holds() {
    let d = tempfile::tempdir().unwrap();
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    // (2^63 + 1) × 1 × 2 overflows 64 bits; (10^6, 10^3, 10^3) claims 8 TB.
    for (name, shape) in [("overflow.npy", [(1usize << 63) + 1, 1, 2]), ("huge.npy", [1_000_000, 1_000, 1_000])] {
        let p = d.path().join(name);
        write_npy(&p, "<f8", &shape, &data);
        assert_rejected(&p, &[], &["the header claims shape", "but the file holds"]);
    }
}

#[test]
fn loads_whose_total_overflows() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.parquet");
    // Each load is finite, their sum at step 2 of layer 1 is not.
    write_parquet(&p, &with(ok_grid(), |r| r.iter_mut().filter(|r| r.0 == 2 && r.1 == 1).for_each(|r| r.3 = 1e308)));
    assert_rejected(&p, &[], &["layer 1", "step 2", "largest float64"]);
}

#[test]
fn ids_beyond_int32() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("ids.csv");
    // Layers 0 and 2^32 would be one layer once narrowed to int32.
    let mut s = String::from("step,layer,expert,tokens\n");
    for t in 0..3 {
        for l in [0i64, 1 << 32] {
            for e in 0..2 {
                s.push_str(&format!("{t},{l},{e},{}\n", 1 + e));
            }
        }
    }
    std::fs::write(&p, s).unwrap();
    assert_rejected(&p, &[], &["layer id 4294967296", "int32"]);
}

#[test]
fn flag_extremes_exit_2_before_writing() {
    let d = tempfile::tempdir().unwrap();
    assert_usage_errors(
        d.path(),
        &[
            (&["--horizon", "4294967297"], "--horizon 4294967297: at most 2147483647"),
            (&["--horizon", "18446744073709551615"], "--horizon 18446744073709551615"),
            (&["--window", "1000000000000"], "--window 1000000000000"),
            (&["--threads", "100000"], "--threads 100000: at most"),
            (&["-f", "mean:w=4", "--origin-start", "2"], "needs 4 steps of history"),
        ],
    );
    let o = expertcast(&["synth", "--out", d.path().join("s.parquet").to_str().unwrap(), "--steps", "100000000", "--layers", "1000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("at most 2^31 loads"), "{}", stderr(&o));
}

#[test]
fn output_directories_that_cannot_be() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.parquet");
    write_parquet(&good, &ok_grid());
    let file = d.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for (out, want) in [(file.clone(), "is a file, not a directory"), (file.join("below"), "a-file is a file, not a directory")] {
        let o = expertcast(&["run", good.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn many_tiny_sparse_traces_cannot_add_up() {
    // 3,000 traces of 2 rows each, experts 0 and 1000: each alone is small enough
    // (1,001 dense cells), together they claim 3 M cells from 6,000 rows: refused
    // before anything is allocated.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sparse.parquet");
    let n = 3000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("trace", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("layer", DataType::Int64, false),
        Field::new("expert", DataType::Int64, false),
        Field::new("tokens", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values((0..2 * n).map(|i| format!("t{}", i / 2)))),
        Arc::new(Int64Array::from(vec![0; 2 * n])),
        Arc::new(Int64Array::from(vec![0; 2 * n])),
        Arc::new(Int64Array::from_iter_values((0..2 * n).map(|i| if i % 2 == 0 { 0 } else { 1000 }))),
        Arc::new(Int64Array::from(vec![1; 2 * n])),
    ];
    write_parquet_batch(&p, &RecordBatch::try_new(schema, cols).unwrap());
    assert_rejected(&p, &[], &["experts from 0 to 1000", "steps or experts are missing"]);
}

/// A file that is not there, of each format: the OS's reason said once (the message
/// printed with its chain had said it twice).
#[test]
fn missing_file() {
    let d = tempfile::tempdir().unwrap();
    for name in ["gone.parquet", "gone.npy", "gone.csv"] {
        let p = d.path().join(name);
        assert_rejected(&p, &[], &["cannot read", "No such file or directory"]);
        let o = expertcast(&["run", p.to_str().unwrap(), "--out", d.path().join("out").to_str().unwrap(), "--quiet"]);
        assert_eq!(stderr(&o).matches("No such file or directory").count(), 1, "{}", stderr(&o));
    }
}
