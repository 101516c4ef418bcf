//! Mutation fuzzing of every reader: the committed seeds in `tests/corpus/` (a small
//! trace as Parquet, CSV and `.npy`, and a sweep config; `tests/corpus/make.py`
//! made them) are mutated with a fixed seed (bit flips, boundary bytes, truncation,
//! repeated and inserted chunks, header digits) and read. Every read must end in
//! `Ok` or an error naming the file: no panic may escape, and the whole process is
//! held to a 4 GiB address-space budget, so a header that makes a reader allocate
//! what the file cannot back aborts the test. Bounded by iteration count
//! (`EXPERTCAST_FUZZ_ITERS`, default 600 per seed), so it runs in CI in seconds;
//! `EXPERTCAST_FUZZ_KEEP=DIR` keeps the mutants whose decoder panicked.

use std::path::{Path, PathBuf};

use expertcast::trace::{ReadOptions, read_file};

fn corpus(name: &str) -> PathBuf {
    let root = std::env::var_os("EXPERTCAST_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join("tests/corpus").join(name)
}

fn iters() -> u64 {
    std::env::var("EXPERTCAST_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(600)
}

/// splitmix64: a small, fixed-seed generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(0);
        }
        let at = rng.below(v.len());
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = [0u8, 0xff, 0x7f, 0x80, b'9', b'-', b','][rng.below(7)],
            2 => v.truncate(at),
            3 => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let chunk = v[at..end].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, chunk);
            }
            4 => {
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            5 => {
                // A digit made long: shapes, counts and ids far beyond the file.
                if v[at].is_ascii_digit() {
                    v.splice(at..at, b"99999999999".iter().copied());
                }
            }
            _ => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at..end);
            }
        }
    }
    v
}

/// Caps this process's address space (tests of this file share it).
fn budget() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let lim = libc::rlimit { rlim_cur: 4 << 30, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: setrlimit with a valid pointer to an initialised rlimit.
        let r = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
        assert_eq!(r, 0, "setrlimit");
        expertcast::trace::quiet_decoder_panics();
    });
}

/// Reads `iters()` mutants of the seed `name`; returns how many were read, refused
/// with an error, and refused after a decoder panic (caught at the reader's boundary).
fn fuzz(name: &str, seed_no: u64, read: impl Fn(&Path) -> Result<(), String>) -> (u64, u64, Vec<String>) {
    budget();
    let seed = std::fs::read(corpus(name)).unwrap();
    let d = tempfile::tempdir().unwrap();
    let ext = Path::new(name).extension().unwrap().to_str().unwrap();
    let mut rng = Rng(seed_no);
    let (mut ok, mut refused, mut caught) = (0, 0, Vec::new());
    for i in 0..iters() {
        let m = mutate(&seed, &mut rng);
        let p = d.path().join(format!("m{i}.{ext}"));
        std::fs::write(&p, &m).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&p)));
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(msg)) => {
                assert!(msg.contains(&format!("m{i}.{ext}")), "the error must name the file: {msg}");
                if msg.contains("its decoder failed") {
                    if let Some(dir) = std::env::var_os("EXPERTCAST_FUZZ_KEEP") {
                        std::fs::copy(&p, Path::new(&dir).join(format!("{seed_no}-m{i}.{ext}"))).unwrap();
                    }
                    caught.push(format!("mutant {i} of {name} (seed {seed_no}): {msg}"));
                } else {
                    refused += 1;
                }
            }
            Err(_) => panic!("mutant {i} of {name} (seed {seed_no}) panicked; kept at {}", keep(&p)),
        }
        std::fs::remove_file(&p).unwrap();
    }
    (ok, refused, caught)
}

/// Copies a failing mutant out of the temporary directory so it can be looked at.
fn keep(p: &Path) -> String {
    let to = std::env::temp_dir().join(format!("expertcast-fuzz-{}", p.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::copy(p, &to);
    to.display().to_string()
}

fn read_trace(p: &Path) -> Result<(), String> {
    read_file(p, &ReadOptions::default()).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn parquet_mutants_never_crash() {
    let (ok, refused, caught) = fuzz("small.parquet", 1, read_trace);
    // The parquet crate panics on some corrupt files; those are caught at the
    // reader's boundary and become errors naming the file (listed for upstream).
    for c in caught.iter().take(5) {
        eprintln!("{c}");
    }
    eprintln!("parquet: {ok} read, {refused} refused, {} decoder panics caught", caught.len());
    assert!(refused + caught.len() as u64 > 0 && ok + refused + caught.len() as u64 == iters());
}

#[test]
fn csv_mutants_never_crash_or_panic() {
    let (ok, refused, caught) = fuzz("small.csv", 2, read_trace);
    assert!(caught.is_empty(), "our CSV path panicked: {caught:?}");
    assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
}

#[test]
fn npy_mutants_never_crash_or_panic() {
    let (ok, refused, caught) = fuzz("small.npy", 3, read_trace);
    assert!(caught.is_empty(), "our .npy path panicked: {caught:?}");
    assert!(refused > 0, "{ok} read, {refused} refused");
}

#[test]
fn sweep_config_mutants_never_crash() {
    budget();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(corpus("small.parquet"), d.path().join("small.parquet")).unwrap();
    let seed = std::fs::read(corpus("sweep.toml")).unwrap();
    let mut rng = Rng(4);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..iters() {
        let p = d.path().join(format!("m{i}.toml"));
        let m = mutate(&seed, &mut rng);
        if m.contains(&b'/') {
            // A path out of the scratch folder would glob (and hash) the machine's files.
            continue;
        }
        std::fs::write(&p, m).unwrap();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| expertcast::sweep::plan(&p))) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert!(format!("{e:#}").contains(&format!("m{i}.toml")), "{e:#}");
                refused += 1;
            }
            Err(_) => panic!("config mutant {i} panicked; kept at {}", keep(&p)),
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} planned, {refused} refused");
}
