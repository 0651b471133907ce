//! Server-rendered SVG of the three main plots (learning curves, best so far, parallel
//! coordinates), for `rtune report --format svg`: plain SVG 1.1 text, no scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::experiment::Snapshot;
use crate::model::{Action, Mode};

const W: f64 = 900.0;
const H: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// A categorical colour per trial (Tableau 10).
fn colour(i: usize) -> &'static str {
    const C: [&str; 10] = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
        "#9c755f", "#bab0ac",
    ];
    C[i % C.len()]
}

/// "Nice" tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    if hi.is_nan() || lo.is_nan() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / count.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        format!("{x:.2e}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn esc(text: &str) -> String {
    crate::page::html_escape(text)
}

struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn new(xs: impl Iterator<Item = f64> + Clone, ys: impl Iterator<Item = f64> + Clone) -> Frame {
        let range = |it: &mut dyn Iterator<Item = f64>| {
            let (lo, hi) = it
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if lo == hi {
                (lo - 0.5, hi + 0.5)
            } else {
                let pad = (hi - lo) * 0.03;
                (lo - pad, hi + pad)
            }
        };
        Frame {
            x: range(&mut xs.clone()),
            y: range(&mut ys.clone()),
        }
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (H - TOP - BOTTOM)
    }
    fn axes(&self, out: &mut String, title: &str, xlabel: &str, ylabel: &str) {
        let _ = write!(
            out,
            r##"<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>"##,
            LEFT,
            esc(title)
        );
        let _ = write!(
            out,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        for t in ticks(self.x.0, self.x.1, 8) {
            let x = self.px(t);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                fmt_num(t)
            );
        }
        for t in ticks(self.y.0, self.y.1, 6) {
            let y = self.py(t);
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(t)
            );
        }
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text><text transform="translate(16 {}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"##,
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0,
            esc(xlabel),
            (TOP + H - BOTTOM) / 2.0,
            esc(ylabel)
        );
    }
}

fn document(body: &str) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}</svg>
"##
    )
}

/// Each trial's metric by training_iteration, with the scheduler's stops (×) and PBT exploits (◆).
/// Lines are translucent by `stroke-opacity`, not `opacity`: a group opacity makes a rasterizer
/// draw each of 10,000 lines on its own full-size layer (minutes for `--format png`).
pub fn learning_curves(s: &Snapshot) -> String {
    let points = || {
        s.curves.values().flat_map(|c| {
            c.it.iter()
                .zip(&c.v)
                .filter_map(|(i, v)| Some((*i as f64, (*v)?)))
        })
    };
    let frame = Frame::new(points().map(|p| p.0), points().map(|p| p.1));
    let mut body = String::new();
    frame.axes(
        &mut body,
        &format!("{}: learning curves", s.header.name),
        "training_iteration",
        &s.header.metric,
    );
    for (n, (id, c)) in s.curves.iter().enumerate() {
        let mut d = String::new();
        for (i, v) in c.it.iter().zip(&c.v) {
            if let Some(v) = v {
                let cmd = if d.is_empty() { 'M' } else { 'L' };
                let _ = write!(d, "{cmd}{:.1},{:.1}", frame.px(*i as f64), frame.py(*v));
            }
        }
        if !d.is_empty() {
            let _ = write!(
                body,
                r##"<path d="{d}" fill="none" stroke="{}" stroke-width="1.2" stroke-opacity="0.8"><title>trial_{id:05}</title></path>"##,
                colour(n)
            );
        }
    }
    for d in &s.decisions {
        let Some(c) = s.curves.get(&d.trial) else {
            continue;
        };
        let Some(v) =
            c.it.iter()
                .zip(&c.v)
                .filter(|(i, _)| **i == d.iteration)
                .find_map(|(_, v)| *v)
        else {
            continue;
        };
        let (x, y) = (frame.px(d.iteration as f64), frame.py(v));
        match d.action {
            Action::Stop => {
                let _ = write!(
                    body,
                    r##"<path d="M{:.1},{:.1}l8,8m0,-8l-8,8" stroke="#d62728" stroke-width="2"><title>{}</title></path>"##,
                    x - 4.0,
                    y - 4.0,
                    esc(&d.reason)
                );
            }
            Action::Pause => {
                let _ = write!(
                    body,
                    r##"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="#ff7f0e"><title>{}</title></rect>"##,
                    x - 3.5,
                    y - 3.5,
                    esc(&d.reason)
                );
            }
            Action::Exploit => {
                let _ = write!(
                    body,
                    r##"<path d="M{x:.1},{:.1}l5,5l-5,5l-5,-5z" fill="#9467bd"><title>{}</title></path>"##,
                    y - 5.0,
                    esc(&d.reason)
                );
            }
            Action::Continue => {}
        }
    }
    document(&body)
}

/// The best value so far against wall-clock time since the experiment started.
pub fn best_so_far(s: &Snapshot) -> String {
    let steps = best_steps(s);
    let frame = Frame::new(steps.iter().map(|p| p.0), steps.iter().map(|p| p.1));
    let mut body = String::new();
    frame.axes(
        &mut body,
        &format!("{}: best {} so far", s.header.name, s.header.metric),
        "seconds since the experiment started",
        &s.header.metric,
    );
    let mut d = String::new();
    let mut last_y = None;
    for (x, y) in &steps {
        if let Some(ly) = last_y {
            let _ = write!(d, "L{:.1},{:.1}", frame.px(*x), frame.py(ly));
        }
        let cmd = if d.is_empty() { 'M' } else { 'L' };
        let _ = write!(d, "{cmd}{:.1},{:.1}", frame.px(*x), frame.py(*y));
        last_y = Some(*y);
    }
    let _ = write!(
        body,
        r##"<path d="{d}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##
    );
    document(&body)
}

/// The running best over all trials' results ordered by their timestamp: (seconds since the
/// start, best value), one point per improvement.
pub fn best_steps(s: &Snapshot) -> Vec<(f64, f64)> {
    let mut all: Vec<(f64, f64)> = s
        .curves
        .values()
        .flat_map(|c| {
            c.ts.iter()
                .zip(&c.v)
                .filter_map(|(t, v)| Some(((*t)?, (*v)?)))
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mode: Mode = s.header.mode;
    let mut best: Option<f64> = None;
    let mut out = Vec::new();
    for (t, v) in all {
        if best.is_none_or(|b| mode.score(v) > mode.score(b)) {
            best = Some(v);
            out.push(((t - s.header.started_at).max(0.0), v));
        }
    }
    out
}

/// An axis of the parallel coordinates: a value to 0..1 (None: not on this axis).
type Scale = Box<dyn Fn(&Value) -> Option<f64>>;

/// One axis per searched parameter and one for the metric (each trial's best), one line per
/// trial, coloured from best (dark) to worst (light).
pub fn parallel_coordinates(s: &Snapshot) -> String {
    let params = &s.header.parameters;
    let rows: Vec<(&BTreeMap<String, Value>, f64)> = s
        .trials
        .iter()
        .filter_map(|t| t.best.map(|(v, _)| (&t.params, v)))
        .collect();
    let mut body = String::new();
    let _ = write!(
        body,
        r##"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}: parallel coordinates</text>"##,
        esc(&s.header.name)
    );
    let axes = params.len() + 1;
    let ax_x = |k: usize| LEFT + k as f64 * (W - LEFT - RIGHT - 40.0) / (axes - 1).max(1) as f64;
    let (top, bottom) = (TOP + 10.0, H - BOTTOM);
    // Each axis maps a value to 0..1.
    let mut scales: Vec<Scale> = Vec::new();
    let mut labels: Vec<Vec<(f64, String)>> = Vec::new();
    for p in params {
        let values: Vec<&Value> = rows.iter().filter_map(|(ps, _)| ps.get(p)).collect();
        let nums: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
        if !nums.is_empty() && nums.len() == values.len() {
            let lo = nums.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = nums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log = lo > 0.0 && hi / lo > 100.0;
            let f = move |x: f64| if log { x.ln() } else { x };
            let (a, b) = (f(lo), f(hi));
            let span = if b > a { b - a } else { 1.0 };
            labels.push(vec![(0.0, fmt_num(lo)), (1.0, fmt_num(hi))]);
            scales.push(Box::new(move |v: &Value| {
                v.as_f64().map(|x| ((f(x) - a) / span).clamp(0.0, 1.0))
            }));
        } else {
            let mut cats: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            cats.sort();
            cats.dedup();
            let n = cats.len().max(2) - 1;
            labels.push(
                cats.iter()
                    .enumerate()
                    .map(|(i, c)| (i as f64 / n as f64, c.trim_matches('"').to_string()))
                    .collect(),
            );
            scales.push(Box::new(move |v: &Value| {
                let text = v.to_string();
                cats.iter()
                    .position(|c| *c == text)
                    .map(|i| i as f64 / n as f64)
            }));
        }
    }
    let lo = rows.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let hi = rows.iter().map(|r| r.1).fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    labels.push(vec![(0.0, fmt_num(lo)), (1.0, fmt_num(hi))]);
    let y = |u: f64| bottom - u * (bottom - top);
    let mode = s.header.mode;
    for (ps, v) in &rows {
        let u = (v - lo) / span;
        let goodness = match mode {
            Mode::Min => 1.0 - u,
            Mode::Max => u,
        };
        let mut d = String::new();
        for (k, p) in params.iter().enumerate() {
            if let Some(w) = ps.get(p).and_then(|value| scales[k](value)) {
                let cmd = if d.is_empty() { 'M' } else { 'L' };
                let _ = write!(d, "{cmd}{:.1},{:.1}", ax_x(k), y(w));
            }
        }
        let cmd = if d.is_empty() { 'M' } else { 'L' };
        let _ = write!(d, "{cmd}{:.1},{:.1}", ax_x(params.len()), y(u));
        // Dark blue for the best, light for the worst.
        let light = (200.0 * (1.0 - goodness)) as u8;
        let _ = write!(
            body,
            r##"<path d="{d}" fill="none" stroke="rgb({light},{},{})" stroke-width="1.2" stroke-opacity="0.8"/>"##,
            light / 2 + 60,
            255 - light / 4
        );
    }
    let names: Vec<&str> = params
        .iter()
        .map(String::as_str)
        .chain([s.header.metric.as_str()])
        .collect();
    for (k, name) in names.iter().enumerate() {
        let x = ax_x(k);
        let _ = write!(
            body,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#333"/><text x="{x:.1}" y="{}" font-size="12" text-anchor="middle" font-weight="bold">{}</text>"##,
            bottom + 20.0,
            esc(name)
        );
        for (u, label) in &labels[k] {
            let _ = write!(
                body,
                r##"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"##,
                x + 4.0,
                y(*u) + 3.0,
                esc(label)
            );
        }
    }
    document(&body)
}
