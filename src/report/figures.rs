//! The report's figures as data ([`Figure`]) and their drawing through plotters, as
//! SVG (inline in the page, or a file) or PNG (a file).
//!
//! Text is laid out with DejaVu Sans, compiled into the binary (`assets/fonts/`), so
//! PNGs look the same on a machine with no fonts; SVG text names `sans-serif` and is
//! drawn by the viewer. A heatmap's cells are one indexed-colour PNG embedded in the
//! SVG (a paper-scale trace would be 100,000s of SVG rectangles otherwise).

use base64::Engine;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Tableau's ten colours: series `i` takes `PALETTE[i % 10]`.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// A figure of the report.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File stem and HTML id (letters, digits, `-`).
    pub id: String,
    pub title: String,
    /// What it shows, in a sentence or two.
    pub caption: String,
    pub width: u32,
    pub height: u32,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    /// Line panels stacked vertically.
    Lines(Vec<Panel>),
    Heatmap(Heat),
    /// Colour-coded tables stacked vertically.
    Grid(Vec<Grid>),
}

/// A line chart.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// Category names for x = 0, 1, 2, ... (the x axis then shows these).
    pub categories: Option<Vec<String>>,
    pub series: Vec<Series>,
    /// Horizontal marks (y values).
    pub hlines: Vec<Mark>,
    /// Vertical marks (x values).
    pub vlines: Vec<Mark>,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub dashed: bool,
    /// Draw a dot at each point (for short series).
    pub markers: bool,
    /// Join the points (off for categories that are not ordered).
    pub line: bool,
}

#[derive(Debug, Clone)]
pub struct Mark {
    pub at: f64,
    pub color: usize,
    pub dashed: bool,
    /// Legend entry; empty for none.
    pub label: String,
}

/// Experts × step buckets.
#[derive(Debug, Clone)]
pub struct Heat {
    pub experts: usize,
    pub cols: usize,
    /// Row-major, expert `e`'s bucket `c` at `e * cols + c`.
    pub cells: Vec<f64>,
    /// Step labels of the first and last step.
    pub x0: f64,
    pub x1: f64,
    /// The colour scale's top (0 is the bottom).
    pub vmax: f64,
    /// Vertical marks (step labels) with their legend.
    pub marks: Vec<(f64, String)>,
}

/// A table whose cells are coloured by a value in [0, 1] (0 best, green; 1 worst,
/// red; `None` grey).
#[derive(Debug, Clone)]
pub struct Grid {
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// Row-major text of each cell.
    pub text: Vec<String>,
    pub shade: Vec<Option<f64>>,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a figure: {e:?}")
}

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font with plotters (once).
pub fn init_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                panic!("the bundled font assets/fonts/DejaVuSans.ttf does not parse");
            }
        }
    });
}

/// The figure as an SVG document.
pub fn svg(fig: &Figure) -> anyhow::Result<String> {
    init_fonts();
    let mut s = String::new();
    let mut extra = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (fig.width, fig.height)).into_drawing_area();
        draw(&root, fig, Some(&mut extra))?;
        root.present().map_err(err)?;
    }
    if !extra.is_empty() {
        let end = s.rfind("</svg>").ok_or_else(|| anyhow::anyhow!("plotters wrote no </svg>"))?;
        s.insert_str(end, &extra);
    }
    Ok(s)
}

/// The figure as a PNG file's bytes (RGB, 8 bits).
pub fn png(fig: &Figure) -> anyhow::Result<Vec<u8>> {
    init_fonts();
    let (w, h) = (fig.width, fig.height);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, fig, None)?;
        root.present().map_err(err)?;
    }
    encode_png(w, h, png::ColorType::Rgb, &buf, None)
}

fn encode_png(w: u32, h: u32, ct: png::ColorType, data: &[u8], palette: Option<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(ct);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        let mut wr = enc.write_header()?;
        wr.write_image_data(data)?;
    }
    Ok(out)
}

/// Draws `fig` on `root`. With `svg_extra`, a heatmap's cells go there as an
/// `<image>` element for the caller to append, instead of one rectangle each.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure, svg_extra: Option<&mut String>) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let title_font = ("sans-serif", 17).into_font().style(FontStyle::Bold);
    let root = root.titled(&fig.title, title_font).map_err(err)?;
    match &fig.body {
        Body::Lines(panels) => {
            let areas = root.split_evenly((panels.len().max(1), 1));
            for (p, a) in panels.iter().zip(&areas) {
                draw_panel(a, p)?;
            }
        }
        Body::Heatmap(h) => draw_heat(&root, h, svg_extra)?,
        Body::Grid(grids) => {
            let heights: Vec<u32> = grids.iter().map(|g| 30 + 22 * (g.row_labels.len() as u32 + 1)).collect();
            let mut rest = root.clone();
            for (g, h) in grids.iter().zip(heights) {
                let (top, bottom) = rest.split_vertically(h);
                draw_grid(&top, g)?;
                rest = bottom;
            }
        }
    }
    Ok(())
}

/// The decade of a log10 value, robust to a tick at 0.9999999 for 1.
fn decade(v: f64) -> f64 {
    let r = v.round();
    if (v - r).abs() < 1e-6 { r } else { v.floor() }
}

fn tf(v: f64, log: bool) -> f64 {
    if log { v.log10() } else { v }
}

/// Axis label of a value: at most 4 significant digits, no trailing zeros.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if (1e-3..1e6).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    } else {
        format!("{v:.2e}")
    }
}

fn range(vals: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * hi.abs().max(1e-300) {
        let d = if hi == 0.0 { 1.0 } else { 0.05 * hi.abs() };
        return (lo - d, hi + d);
    }
    let d = pad * (hi - lo);
    (lo - d, hi + d)
}

/// Legend entries of a panel: (name, colour, is a vertical mark, dashed).
fn legend_entries(p: &Panel) -> Vec<(String, usize, bool, bool)> {
    let mut v: Vec<(String, usize, bool, bool)> = p.series.iter().filter(|s| !s.name.is_empty()).map(|s| (s.name.clone(), s.color, false, s.dashed)).collect();
    v.extend(p.hlines.iter().filter(|m| !m.label.is_empty()).map(|m| (m.label.clone(), m.color, false, true)));
    v.extend(p.vlines.iter().filter(|m| !m.label.is_empty()).map(|m| (m.label.clone(), m.color, true, m.dashed)));
    v
}

/// The legend, in a column of its own right of the chart (never over the data).
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(String, usize, bool, bool)]) -> anyhow::Result<()> {
    let style = ("sans-serif", 12).into_font().into_text_style(area).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (name, c, vertical, dashed)) in entries.iter().enumerate() {
        let y = 36 + 18 * i as i32;
        let col = color(*c);
        if *vertical {
            area.draw(&PathElement::new(vec![(14, y - 7), (14, y + 7)], col.stroke_width(2))).map_err(err)?;
        } else if *dashed {
            area.draw(&PathElement::new(vec![(4, y), (11, y)], col.stroke_width(2))).map_err(err)?;
            area.draw(&PathElement::new(vec![(16, y), (24, y)], col.stroke_width(2))).map_err(err)?;
        } else {
            area.draw(&PathElement::new(vec![(4, y), (24, y)], col.stroke_width(2))).map_err(err)?;
        }
        area.draw(&Text::new(name.clone(), (30, y), style.clone())).map_err(err)?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> anyhow::Result<()> {
    let entries = legend_entries(p);
    let (area, legend_area) = if entries.is_empty() {
        (area.clone(), None)
    } else {
        let w = area.dim_in_pixel().0;
        let longest = entries.iter().map(|e| e.0.chars().count()).max().unwrap_or(0) as u32;
        let lw = (40 + 7 * longest).clamp(110, 260).min(w / 3);
        let (a, b) = area.split_horizontally(w - lw);
        (a, Some(b))
    };
    if let Some(l) = &legend_area {
        draw_legend(l, &entries)?;
    }
    let area = &area;
    // Log axes are drawn as linear axes over log10 of the values, labelled with the
    // values themselves.
    let log_x = p.log_x && p.series.iter().flat_map(|s| &s.points).all(|q| q.0 > 0.0);
    let log_y = p.log_y && p.series.iter().flat_map(|s| &s.points).all(|q| q.1 > 0.0) && p.hlines.iter().all(|m| m.at > 0.0);
    let xs = p.series.iter().flat_map(|s| s.points.iter().map(|q| tf(q.0, log_x))).chain(p.vlines.iter().map(|m| tf(m.at, log_x)));
    let (mut x0, mut x1) = range(xs, 0.02);
    if let Some(c) = &p.categories {
        (x0, x1) = (-0.5, c.len() as f64 - 0.5);
    }
    let ys = p.series.iter().flat_map(|s| s.points.iter().map(|q| tf(q.1, log_y))).chain(p.hlines.iter().map(|m| tf(m.at, log_y)));
    let (y0, y1) = range(ys, 0.06);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 14))
        .margin(8)
        .margin_right(16)
        .x_label_area_size(38)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let cats = p.categories.clone();
    let xfmt = move |v: &f64| -> String {
        if let Some(c) = &cats {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < c.len() {
                return c[i as usize].clone();
            }
            return String::new();
        }
        if log_x {
            let x = 10f64.powf(*v);
            // Only powers of ten and 2, 5 times them are labelled.
            let m = x / 10f64.powf(decade(*v));
            if [1.0, 2.0, 5.0].iter().any(|k| (m - k).abs() < 1e-3) { fmt_num(x) } else { String::new() }
        } else {
            fmt_num(*v)
        }
    };
    let yfmt = move |v: &f64| {
        if !log_y {
            return fmt_num(*v);
        }
        let y = 10f64.powf(*v);
        let m = y / 10f64.powf(decade(*v));
        if [1.0, 2.0, 5.0].iter().any(|k| (m - k).abs() < 1e-3) { fmt_num(y) } else { String::new() }
    };
    let n_xlabels = match (&p.categories, log_x) {
        (Some(c), _) => c.len().max(1),
        (None, true) => 40,
        (None, false) => 8,
    };
    let mut mesh = chart.configure_mesh();
    if log_y {
        mesh.disable_y_mesh();
    }
    mesh.x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_labels(n_xlabels)
        .y_labels(if log_y { 40 } else { 6 })
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for m in &p.hlines {
        let st = color(m.color).stroke_width(1);
        let pts = vec![(x0, tf(m.at, log_y)), (x1, tf(m.at, log_y))];
        chart.draw_series(DashedLineSeries::new(pts, 6, 4, st)).map_err(err)?;
    }
    for m in &p.vlines {
        let st = color(m.color).stroke_width(2);
        let pts = vec![(tf(m.at, log_x), y0), (tf(m.at, log_x), y1)];
        if m.dashed { chart.draw_series(DashedLineSeries::new(pts, 8, 4, st)) } else { chart.draw_series(LineSeries::new(pts, st)) }.map_err(err)?;
    }
    for s in &p.series {
        let c = color(s.color);
        let st = c.stroke_width(2);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|q| (tf(q.0, log_x), tf(q.1, log_y))).collect();
        if s.line {
            if s.dashed { chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, st)) } else { chart.draw_series(LineSeries::new(pts.clone(), st)) }.map_err(err)?;
        }
        if s.markers {
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled()))).map_err(err)?;
        }
    }
    Ok(())
}

/// Viridis, from its published anchor colours, interpolated linearly.
pub fn viridis(t: f64) -> (u8, u8, u8) {
    const A: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (A.len() - 1) as f64;
    let i = (t.floor() as usize).min(A.len() - 2);
    let f = t - i as f64;
    let m = |a: f64, b: f64| (a + f * (b - a)).round() as u8;
    (m(A[i].0, A[i + 1].0), m(A[i].1, A[i + 1].1), m(A[i].2, A[i + 1].2))
}

fn draw_heat<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, h: &Heat, svg_extra: Option<&mut String>) -> anyhow::Result<()> {
    let (main, bar) = root.split_horizontally(root.dim_in_pixel().0.saturating_sub(70));
    let e = h.experts as f64;
    let x1 = if h.x1 > h.x0 { h.x1 } else { h.x0 + 1.0 };
    let mut chart = ChartBuilder::on(&main)
        .margin(8)
        .x_label_area_size(38)
        .y_label_area_size(52)
        .build_cartesian_2d(h.x0..x1, 0.0..e)
        .map_err(err)?;
    let yfmt = |v: &f64| if v.fract() == 0.0 { format!("{}", *v as i64) } else { String::new() };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("step")
        .y_desc("expert")
        .x_labels(8)
        .y_labels(h.experts.min(8) + 1)
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let scale = |v: f64| if h.vmax > 0.0 { v / h.vmax } else { 0.0 };
    let (px, py) = chart.plotting_area().get_pixel_range();
    match svg_extra {
        Some(extra) => {
            // Indexed PNG: 256 viridis levels, expert 0 at the bottom row.
            let palette: Vec<u8> = (0..256).flat_map(|i| { let (r, g, b) = viridis(i as f64 / 255.0); [r, g, b] }).collect();
            let mut idx = vec![0u8; h.experts * h.cols];
            for r in 0..h.experts {
                let e_ = h.experts - 1 - r;
                for c in 0..h.cols {
                    idx[r * h.cols + c] = (scale(h.cells[e_ * h.cols + c]) * 255.0).round().clamp(0.0, 255.0) as u8;
                }
            }
            let bytes = encode_png(h.cols as u32, h.experts as u32, png::ColorType::Indexed, &idx, Some(palette))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            extra.push_str(&format!(
                r#"<image x="{}" y="{}" width="{}" height="{}" preserveAspectRatio="none" style="image-rendering:pixelated" href="data:image/png;base64,{b64}"/>"#,
                px.start,
                py.start,
                px.end - px.start,
                py.end - py.start
            ));
            for (i, (at, _)) in h.marks.iter().enumerate() {
                let x = px.start as f64 + (at - h.x0) / (x1 - h.x0) * (px.end - px.start) as f64;
                let (r, g, b) = PALETTE[(3 + i) % 10];
                extra.push_str(&format!(
                    r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="rgb({r},{g},{b})" stroke-width="2" stroke-dasharray="6,3"/>"#,
                    py.start, py.end
                ));
            }
        }
        None => {
            let w = (x1 - h.x0) / h.cols as f64;
            chart
                .draw_series((0..h.experts).flat_map(|ex| {
                    (0..h.cols).map(move |c| {
                        let (r, g, b) = viridis(scale(h.cells[ex * h.cols + c]));
                        let xa = h.x0 + c as f64 * w;
                        Rectangle::new([(xa, ex as f64), (xa + w, ex as f64 + 1.0)], RGBColor(r, g, b).filled())
                    })
                }))
                .map_err(err)?;
            for (i, (at, _)) in h.marks.iter().enumerate() {
                chart.draw_series(DashedLineSeries::new(vec![(*at, 0.0), (*at, e)], 6, 3, color(3 + i).stroke_width(2))).map_err(err)?;
            }
        }
    }
    // The colour bar, with its scale.
    let (bw, bh) = bar.dim_in_pixel();
    let (top, bottom) = (10i32, bh as i32 - 48);
    let n = 64;
    for i in 0..n {
        let (r, g, b) = viridis((i as f64 + 0.5) / n as f64);
        let ya = bottom - (i + 1) * (bottom - top) / n;
        let yb = bottom - i * (bottom - top) / n;
        bar.draw(&Rectangle::new([(6, ya), (22, yb)], RGBColor(r, g, b).filled())).map_err(err)?;
    }
    let font = ("sans-serif", 11).into_font();
    let left = font.clone().into_text_style(&bar).pos(Pos::new(HPos::Left, VPos::Center));
    for (frac, v) in [(0.0, 0.0), (0.5, 0.5 * h.vmax), (1.0, h.vmax)] {
        let y = bottom - (frac * (bottom - top) as f64) as i32;
        bar.draw(&Text::new(fmt_num(v), (25, y), left.clone())).map_err(err)?;
    }
    bar.draw(&Text::new("share", (4, bottom + 18), font.into_text_style(&bar))).map_err(err)?;
    let _ = bw;
    Ok(())
}

/// Green (0) through yellow to red (1).
fn shade(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let (a, b) = if t < 0.5 { ((198.0, 239.0, 206.0), (255.0, 235.0, 156.0)) } else { ((255.0, 235.0, 156.0), (255.0, 180.0, 180.0)) };
    let f = if t < 0.5 { t * 2.0 } else { (t - 0.5) * 2.0 };
    let m = |x: f64, y: f64| (x + f * (y - x)).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

fn draw_grid<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, g: &Grid) -> anyhow::Result<()> {
    let (w, _) = area.dim_in_pixel();
    let font = ("sans-serif", 12).into_font();
    let bold = ("sans-serif", 13).into_font().style(FontStyle::Bold);
    let center = font.clone().into_text_style(area).pos(Pos::new(HPos::Center, VPos::Center));
    let right = font.into_text_style(area).pos(Pos::new(HPos::Right, VPos::Center));
    area.draw(&Text::new(g.title.clone(), (8, 14), bold.into_text_style(area).pos(Pos::new(HPos::Left, VPos::Center)))).map_err(err)?;
    let label_w = 170i32;
    let ncol = g.col_labels.len().max(1) as i32;
    let cw = ((w as i32 - label_w - 10) / ncol).max(20);
    let rh = 22i32;
    let top = 30i32;
    for (c, l) in g.col_labels.iter().enumerate() {
        area.draw(&Text::new(l.clone(), (label_w + c as i32 * cw + cw / 2, top + rh / 2), center.clone())).map_err(err)?;
    }
    for (r, l) in g.row_labels.iter().enumerate() {
        let y = top + (r as i32 + 1) * rh;
        area.draw(&Text::new(l.clone(), (label_w - 8, y + rh / 2), right.clone())).map_err(err)?;
        for c in 0..g.col_labels.len() {
            let i = r * g.col_labels.len() + c;
            let fill = match g.shade[i] {
                Some(t) => shade(t),
                None => RGBColor(232, 232, 232),
            };
            let x = label_w + c as i32 * cw;
            area.draw(&Rectangle::new([(x, y), (x + cw - 1, y + rh - 1)], fill.filled())).map_err(err)?;
            area.draw(&Text::new(g.text[i].clone(), (x + cw / 2, y + rh / 2), center.clone())).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_axes() {
        assert_eq!(fmt_num(1000.0), "1000");
        assert_eq!(fmt_num(0.5), "0.5");
        assert_eq!(fmt_num(0.0123456), "0.01235");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(2.0e-5), "2.00e-5");
        assert_eq!(fmt_num(0.0), "0");
    }

    #[test]
    fn viridis_ends_and_middle() {
        assert_eq!(viridis(0.0), (68, 1, 84));
        assert_eq!(viridis(1.0), (253, 231, 37));
        assert_eq!(viridis(0.5), (33, 144, 141));
        assert_eq!(viridis(f64::NAN), (68, 1, 84));
    }

    fn lines() -> Figure {
        let series = (0..3)
            .map(|k| Series { name: format!("s{k}"), points: (1..=20).map(|i| (i as f64, (i * (k + 1)) as f64)).collect(), color: k, dashed: k == 2, markers: k == 0, line: true })
            .collect();
        let panel = Panel {
            title: "p".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: true,
            series,
            hlines: vec![Mark { at: 5.0, color: 4, dashed: true, label: "five".into() }],
            vlines: vec![Mark { at: 10.0, color: 5, dashed: false, label: "ten".into() }],
            ..Default::default()
        };
        Figure { id: "t".into(), title: "test".into(), caption: String::new(), width: 500, height: 300, body: Body::Lines(vec![panel]) }
    }

    #[test]
    fn svg_parses_and_png_decodes() {
        let heat = Figure {
            id: "h".into(),
            title: "heat".into(),
            caption: String::new(),
            width: 500,
            height: 260,
            body: Body::Heatmap(Heat { experts: 4, cols: 3, cells: (0..12).map(|i| i as f64 / 11.0).collect(), x0: 0.0, x1: 99.0, vmax: 1.0, marks: vec![(50.0, "transition".into())] }),
        };
        let grid = Figure {
            id: "g".into(),
            title: "grid".into(),
            caption: String::new(),
            width: 500,
            height: 200,
            body: Body::Grid(vec![Grid { title: "h = 1".into(), row_labels: vec!["a".into(), "b".into()], col_labels: vec!["L0".into()], text: vec!["1".into(), "2".into()], shade: vec![Some(0.0), None] }]),
        };
        for f in [lines(), heat, grid] {
            let s = svg(&f).unwrap();
            let doc = roxmltree::Document::parse(&s).unwrap();
            assert_eq!(doc.root_element().tag_name().name(), "svg");
            assert!(doc.descendants().count() > 10, "{}", f.id);
            let p = png(&f).unwrap();
            let dec = png::Decoder::new(std::io::Cursor::new(p));
            let mut r = dec.read_info().unwrap();
            let mut buf = vec![0; r.output_buffer_size()];
            let info = r.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (f.width, f.height));
            let distinct: std::collections::BTreeSet<&[u8]> = buf.chunks(3).collect();
            assert!(distinct.len() > 5, "{}: {} colours", f.id, distinct.len());
        }
    }

    #[test]
    fn heatmap_cells_are_one_embedded_png_with_the_values() {
        let f = Figure {
            id: "h".into(),
            title: "heat".into(),
            caption: String::new(),
            width: 400,
            height: 240,
            body: Body::Heatmap(Heat { experts: 2, cols: 2, cells: vec![0.0, 0.5, 1.0, 0.25], x0: 0.0, x1: 9.0, vmax: 1.0, marks: vec![] }),
        };
        let s = svg(&f).unwrap();
        let doc = roxmltree::Document::parse(&s).unwrap();
        let img = doc.descendants().find(|n| n.has_tag_name("image")).expect("an <image>");
        let href = img.attribute("href").unwrap();
        let b64 = href.strip_prefix("data:image/png;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        r.next_frame(&mut buf).unwrap();
        // Indexed, top row = expert 1: [1.0, 0.25]; bottom row = expert 0: [0.0, 0.5].
        assert_eq!(buf, vec![255, 64, 0, 128]);
    }
}
