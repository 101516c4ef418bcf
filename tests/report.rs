//! `expertcast report` as a person sees it: the report of the bundled-traces run is
//! rendered by headless Chromium (Debian's `chromium`; `make test` installs it when
//! missing and it can), and checked for console errors, for every figure present and
//! drawn (pixels of screenshots), and for the transition steps and best forecasters
//! that states.parquet and metrics.parquet hold (recomputed here from the Parquet
//! files), in the light and the dark colour scheme. The PNG and SVG files are decoded and parsed. Bad input: exit 2, nothing
//! written; `--allow-partial` writes a page that says what is missing.
//!
//! Chromium is found as `EXPERTCAST_CHROMIUM`, else `chromium`, `chromium-browser` or
//! `google-chrome` on PATH; without one the browser test fails (it is not skipped).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// One run of the bundled traces with placement, written with `--report`.
fn run_dir() -> &'static PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = tempfile::tempdir().unwrap().keep().join("run");
        let o = expertcast(&["run", "--out", out.to_str().unwrap(), "--quiet", "--placement-gpus", "4", "--placement-gpus", "8", "--report"]);
        assert!(o.status.success(), "run --report failed: {}", stderr(&o));
        out
    })
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("EXPERTCAST_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no Chromium found: install Debian's chromium (apt-get install chromium; `make test` does it as root) or set EXPERTCAST_CHROMIUM");
}

/// Runs headless Chromium on `page` with `args`; returns (stdout, stderr).
fn browse(page: &Path, args: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(o.status.success(), "chromium failed: {}", String::from_utf8_lossy(&o.stderr));
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = d.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    // To RGB.
    let rgb: Vec<u8> = buf[..info.buffer_size()].chunks(ch).flat_map(|p| if ch >= 3 { [p[0], p[1], p[2]] } else { [p[0], p[0], p[0]] }).collect();
    (info.width, info.height, rgb)
}

/// Independent: mean mae_pp per (forecaster, horizon) over every trace and layer of
/// `regime`, and the lowest non-oracle one per horizon.
fn best_from_parquet(dir: &Path, regime: &str) -> BTreeMap<i64, String> {
    let b = read_all(&dir.join("metrics.parquet"));
    let (f, h, r, m) = (col_str(&b, "forecaster"), col_i64(&b, "horizon"), col_str(&b, "regime"), col_f64(&b, "mae_pp"));
    let mut acc: BTreeMap<(i64, String), (f64, usize)> = BTreeMap::new();
    for i in 0..b.num_rows() {
        if r[i] == regime && !m[i].is_nan() {
            let e = acc.entry((h[i], f[i].clone())).or_default();
            e.0 += m[i];
            e.1 += 1;
        }
    }
    let mut best: BTreeMap<i64, (f64, String)> = BTreeMap::new();
    for ((h, f), (s, n)) in acc {
        if f.starts_with("oracle") {
            continue;
        }
        let v = s / n as f64;
        let e = best.entry(h).or_insert((f64::INFINITY, String::new()));
        if v < e.0 || (v == e.0 && f < e.1) {
            *e = (v, f);
        }
    }
    best.into_iter().map(|(h, (_, f))| (h, f)).collect()
}

#[test]
fn the_bundled_report_renders_in_chromium_with_every_figure_and_the_results() {
    let dir = run_dir();
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).expect("run --report wrote report.html");
    let figures = html.matches("<figure id=").count();
    // 3 traces × 6 layers × (shares, s(t)) + error (all + 3 traces) + 3 layer grids + placement.
    assert_eq!(figures, 36 + 4 + 3 + 1);
    for needle in ["<script", "<link", "<iframe", "src=", "href=\"http", "@import", "url("] {
        assert!(!html.contains(needle), "the page must work offline; it holds {needle:?}");
    }

    // The page as loaded: no console messages, no failed loads.
    let (dom, log) = browse(&page, &["--virtual-time-budget=5000", "--dump-dom"]);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Failed to load") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console output: {console:#?}");
    assert_eq!(dom.matches("<figure id=").count(), figures);

    // Light and dark colour schemes: the page follows the reader's (Blink's
    // preferredColorScheme: 0 dark, 1 light), its text in contrast.
    for (scheme, dark) in [("1", false), ("0", true)] {
        let shot = page.with_file_name(format!("scheme-{scheme}.png"));
        browse(&page, &["--window-size=1300,400", &format!("--blink-settings=preferredColorScheme={scheme}"), &format!("--screenshot={}", shot.display())]);
        let (w, _, px) = decode_png(&std::fs::read(&shot).unwrap());
        let at = |x: u32, y: u32| px[((y * w + x) * 3) as usize] as i32;
        let bg = at(5, 5);
        // The darkest and lightest pixels of the title line.
        let title: Vec<i32> = (20..60).flat_map(|y| (20..400).map(move |x| (x, y))).map(|(x, y)| at(x, y)).collect();
        let (lo, hi) = (*title.iter().min().unwrap(), *title.iter().max().unwrap());
        if dark {
            assert!(bg < 60 && hi > 180, "dark scheme: background {bg}, lightest title pixel {hi}");
        } else {
            assert!(bg > 240 && lo < 80, "light scheme: background {bg}, darkest title pixel {lo}");
        }
    }

    // The text holds the transition steps of states.parquet (kappa 0.5, every window)...
    let s = read_all(&dir.join("states.parquet"));
    let (tr, l, w, st) = (col_str(&s, "trace"), col_i64(&s, "layer"), col_i64(&s, "window_size"), col_i64(&s, "transition_step"));
    let mut rows: BTreeMap<(String, i64), BTreeMap<i64, String>> = BTreeMap::new();
    for i in 0..s.num_rows() {
        rows.entry((tr[i].clone(), w[i])).or_default().insert(l[i], if st[i] == i64::MIN { "–".into() } else { st[i].to_string() });
    }
    assert_eq!(rows.len(), 9);
    let table = &dom[dom.find("id=\"transitions\"").expect("the transitions table")..];
    for ((t, w), cells) in &rows {
        let row = format!("<tr><td>{t}</td><td>{w}</td>{}</tr>", cells.values().map(|c| format!("<td>{c}</td>")).collect::<String>());
        assert!(table.contains(&row), "missing transition row {row}");
    }
    // ... and the best forecaster per horizon of metrics.parquet, in both regimes.
    for regime in ["all", "stable"] {
        let best = best_from_parquet(dir, regime);
        assert_eq!(best.len(), 5);
        let at = dom.find(&format!("id=\"best-{regime}\"")).expect("the best-forecaster table");
        let table = &dom[at..at + dom[at..].find("</table>").unwrap()];
        for (h, f) in best {
            assert!(table.contains(&format!("<tr><td>{h}</td><td class=\"fc\">{f}</td>")), "regime {regime}, horizon {h}: best {f} not in {table}");
        }
    }

    // Every figure drawn: where the browser puts each figure's SVG (measured by a
    // script in a copy of the page, appended after everything so nothing moves),
    // screenshots of the original page must have ink.
    let probe = page.with_file_name("probe.html");
    let script = "<script>addEventListener('load',()=>{const o=[];document.querySelectorAll('figure').forEach(f=>{const r=f.querySelector('svg').getBoundingClientRect();\
                  o.push([f.id,Math.round(r.left+scrollX),Math.round(r.top+scrollY),Math.round(r.width),Math.round(r.height)].join(','))});\
                  const p=document.createElement('pre');p.id='measured';p.textContent='H='+document.documentElement.scrollHeight+';'+o.join(';');document.body.appendChild(p);});</script>";
    std::fs::write(&probe, html.replace("</body>", &format!("{script}</body>"))).unwrap();
    let width = 1300;
    let (dom, _) = browse(&probe, &[&format!("--window-size={width},2000"), "--virtual-time-budget=5000", "--dump-dom"]);
    let m = &dom[dom.find("id=\"measured\">H=").expect("the probe ran") + 14..];
    let m = &m[..m.find('<').unwrap()];
    let mut parts = m.split(';');
    let height: i64 = parts.next().unwrap()[2..].parse().unwrap();
    let rects: Vec<(String, i64, i64, i64, i64)> = parts
        .map(|p| {
            let v: Vec<&str> = p.split(',').collect();
            (v[0].to_string(), v[1].parse().unwrap(), v[2].parse().unwrap(), v[3].parse().unwrap(), v[4].parse().unwrap())
        })
        .collect();
    assert_eq!(rects.len(), figures);
    assert!(height > 3000, "page height {height}");
    // Screenshots of 5000 px every 3000 px: any figure up to 2000 px high lies whole in one.
    let (chunk, step) = (5000i64, 3000i64);
    let mut shots = Vec::new();
    let mut top = 0;
    while top < height {
        let shifted = page.with_file_name(format!("shot-{top}.html"));
        std::fs::write(&shifted, html.replace("</head>", &format!("<style>body{{position:relative;top:-{top}px}}</style></head>"))).unwrap();
        let png_path = page.with_file_name(format!("shot-{top}.png"));
        browse(&shifted, &[&format!("--window-size={width},{chunk}"), &format!("--screenshot={}", png_path.display())]);
        shots.push((top, decode_png(&std::fs::read(&png_path).unwrap())));
        top += step;
    }
    for (id, x, y, w, h) in &rects {
        assert!(*w > 300 && *h > 150, "{id}: {w}×{h}");
        let (t0, (sw, sh, px)) = shots.iter().rev().find(|(t, _)| *t <= *y && y + h <= t + chunk).expect("a screenshot holds the figure");
        assert_eq!((*sw as i64, *sh as i64), (width, chunk));
        let (mut ink, mut colours) = (0usize, BTreeSet::new());
        for yy in (y - t0)..(y - t0 + h) {
            for xx in *x..(x + w) {
                let i = ((yy * width + xx) * 3) as usize;
                let p = [px[i], px[i + 1], px[i + 2]];
                if p.iter().any(|&c| c < 225) {
                    ink += 1;
                }
                colours.insert(p);
            }
        }
        let share = ink as f64 / (w * h) as f64;
        assert!(share > 0.01, "{id}: only {:.2} % of its pixels are drawn", 100.0 * share);
        assert!(colours.len() > 8, "{id}: {} colours", colours.len());
        if id.starts_with("fig-shares-") {
            assert!(colours.len() > 40 && share > 0.4, "{id}: a heatmap should be mostly colour ({} colours, {:.0} % ink)", colours.len(), 100.0 * share);
        }
    }
}

#[test]
fn figure_files_decode_and_parse() {
    let dir = run_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (png_dir, svg_dir, page) = (tmp.path().join("png"), tmp.path().join("svg"), tmp.path().join("r.html"));
    let o = expertcast(&["report", dir.to_str().unwrap(), "--out", page.to_str().unwrap(), "--png", png_dir.to_str().unwrap(), "--svg", svg_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    let ids: BTreeSet<String> = html.match_indices("<figure id=\"fig-").map(|(i, _)| html[i + 16..i + 16 + html[i + 16..].find('"').unwrap()].to_string()).collect();
    assert_eq!(ids.len(), 44);
    let stems = |d: &Path, ext: &str| -> BTreeSet<String> {
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == ext)).map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(stems(&png_dir, "png"), ids);
    assert_eq!(stems(&svg_dir, "svg"), ids);
    for id in &ids {
        let (w, h, px) = decode_png(&std::fs::read(png_dir.join(format!("{id}.png"))).unwrap());
        assert!(w >= 600 && h >= 250, "{id}: {w}×{h}");
        let colours: BTreeSet<&[u8]> = px.chunks(3).collect();
        let ink = px.chunks(3).filter(|p| p.iter().any(|&c| c < 225)).count();
        assert!(colours.len() > 8 && ink as f64 > 0.01 * (w * h) as f64, "{id}: {} colours, {ink} inked pixels", colours.len());
        let svg = std::fs::read_to_string(svg_dir.join(format!("{id}.svg"))).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{id}.svg: {e}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.attribute("width").map(|v| v.parse::<u32>().unwrap()), Some(w));
        let texts: String = doc.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect();
        assert!(!texts.trim().is_empty(), "{id}.svg has no text");
        if id.starts_with("shares-") {
            let img = doc.descendants().find(|n| n.has_tag_name("image")).expect("heatmap cells as an image");
            assert!(img.attribute("href").unwrap().starts_with("data:image/png;base64,"));
        }
    }
    // The same page as `run --report` wrote, byte for byte.
    let a = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(a == html, "run --report and report wrote different pages");
}

#[test]
fn a_sweep_with_report_gets_one_with_its_dimensions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let cfg = tmp.path().join("s.toml");
    let traces = [bundled("gpt12-e16-top2-s1"), bundled("gpt12-e16-top2-s2")];
    std::fs::write(
        &cfg,
        format!(
            "traces = [{:?}, {:?}]\nout = {:?}\norigin_stride = [500]\nkappa = [0.5, 1.0]\nhorizons = [1, 100]\nforecasters = [\"last\", \"oracle-median\"]\nreport = true\n",
            traces[0], traces[1], out
        ),
    )
    .unwrap();
    let o = expertcast(&["sweep", cfg.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("report.html")).expect("the sweep wrote its report");
    for id in ["fig-sweep-kappa", "fig-sweep-trace", "fig-error-all-traces", "fig-shares-gpt12-e16-top2-s2-l5"] {
        assert!(html.contains(&format!("<figure id=\"{id}\"")), "{id} missing");
    }
    assert!(!html.contains("fig-sweep-origin-stride"), "one origin stride is not a dimension");
    assert!(!html.contains("This report is partial"));

    // Half-written: a unit marked pending in the manifest is refused, then reported
    // as missing with --allow-partial.
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let first_done = m.find("\"status\": \"done\"").unwrap();
    let id_at = m[..first_done].rfind("\"id\": \"").unwrap() + 7;
    let id = m[id_at..id_at + 12].to_string();
    std::fs::write(out.join("manifest.json"), format!("{}\"status\": \"pending\"{}", &m[..first_done], &m[first_done + 16..])).unwrap();
    std::fs::remove_file(out.join("units").join(format!("{id}.json"))).unwrap();
    let page = tmp.path().join("half.html");
    let o = expertcast(&["report", out.to_str().unwrap(), "--out", page.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of the sweep's 4 units are pending"), "{}", stderr(&o));
    assert!(!page.exists());
    let o = expertcast(&["report", out.to_str().unwrap(), "--out", page.to_str().unwrap(), "--allow-partial"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("This report is partial") && html.contains("1 of the sweep's 4 units are pending"));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |args: &[&str], says: &str| {
        let o = expertcast(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {:?} not in {}", says, stderr(&o));
    };
    // Not a directory; a directory with no outputs; a run killed before its manifest.
    let nothing = tmp.path().join("nothing");
    std::fs::create_dir(&nothing).unwrap();
    std::fs::write(nothing.join("notes.txt"), "hello").unwrap();
    check(&["report", tmp.path().join("absent").to_str().unwrap()], "not a directory");
    check(&["report", nothing.to_str().unwrap()], "no expertcast outputs here");
    let killed = tmp.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    std::fs::copy(run_dir().join("metrics.parquet"), killed.join("metrics.parquet")).unwrap();
    check(&["report", killed.to_str().unwrap()], "manifest.json is missing");
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::copy(run_dir().join("manifest.json"), corrupt.join("manifest.json")).unwrap();
    std::fs::write(corrupt.join("metrics.parquet"), b"PAR1 not really").unwrap();
    check(&["report", corrupt.to_str().unwrap()], "metrics.parquet");
    for d in [&nothing, &killed, &corrupt] {
        assert!(!d.join("report.html").exists());
    }
    // --out a directory.
    check(&["report", run_dir().to_str().unwrap(), "--out", tmp.path().to_str().unwrap()], "is a directory");

    // A run whose trace file has gone: refused, naming it; partial with the flag.
    let trace = tmp.path().join("mine.parquet");
    std::fs::copy(bundled("gpt12-e16-top2-s2"), &trace).unwrap();
    let out = tmp.path().join("gone");
    let o = expertcast(&["run", trace.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "-f", "last", "--horizon", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&trace).unwrap();
    check(&["report", out.to_str().unwrap()], "mine.parquet: the trace file named in the manifest cannot be read");
    assert!(!out.join("report.html").exists());
    let o = expertcast(&["report", out.to_str().unwrap(), "--allow-partial"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("This report is partial") && html.contains("mine.parquet"));
    assert!(!html.contains("fig-shares-"), "no heatmaps without the trace");
    assert!(html.contains("fig-error-mine"), "the metrics are still drawn");
    // A later run without --report removes the stale page.
    let o = expertcast(&["run", bundled("gpt12-e16-top2-s2").to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "-f", "last", "--horizon", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!out.join("report.html").exists(), "the earlier run's report stayed");
}
