//! Server-rendered SVG of the three main plots (learning curves, best so far, parallel
//! coordinates), for `rtune report --format svg` (and, rasterized, `--format png`): plain SVG 1.1
//! text, no scripts. They follow the page's rules (scale.rs): a default range that outliers do
//! not squash, with the points outside it marked at the edge; whole-number ticks for
//! training_iteration; parallel-coordinate axes from the search space; a legend for every mark.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::experiment::{Curve, Snapshot};
use crate::model::{Action, Mode, ParamScale};
use crate::scale::{fmt_num, linear_ticks, log_ticks, robust_range, viridis};

const W: f64 = 900.0;
const H: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 50.0;

/// A categorical colour per trial (Tableau 10).
fn colour(i: usize) -> &'static str {
    const C: [&str; 10] = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
        "#9c755f", "#bab0ac",
    ];
    C[i % C.len()]
}

fn esc(text: &str) -> String {
    crate::page::html_escape(text)
}

/// A plot area with value ranges on both axes.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

/// A range widened by 3 % on each side (one value: ±0.5).
fn padded((lo, hi): (f64, f64)) -> (f64, f64) {
    if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.03;
        (lo - pad, hi + pad)
    }
}

fn data_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    lo.is_finite().then_some((lo, hi))
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (H - TOP - BOTTOM)
    }
    /// Whether `y` lies outside the range shown: -1 below, 1 above.
    fn outside(&self, y: f64) -> i8 {
        if y < self.y.0 {
            -1
        } else if y > self.y.1 {
            1
        } else {
            0
        }
    }
    fn axes(&self, out: &mut String, title: &str, xlabel: &str, ylabel: &str, x_integer: bool) {
        let _ = write!(
            out,
            r##"<text x="{}" y="22" font-size="16" font-weight="bold">{}</text>"##,
            LEFT,
            esc(title)
        );
        let _ = write!(
            out,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
        for t in linear_ticks(self.x.0, self.x.1, 8, x_integer) {
            let x = self.px(t);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                fmt_num(t)
            );
        }
        for t in linear_ticks(self.y.0, self.y.1, 6, false) {
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
        // Lines end at the plot's border: outside values are marked there instead.
        let _ = write!(
            out,
            r##"<defs><clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{}" height="{}"/></clipPath></defs>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM
        );
    }
}

fn document(body: &str) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}</svg>
"##
    )
}

/// The marks a plot can carry, each drawn by one function, so that the legend shows the same
/// shapes as the plot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mark {
    Stop,
    Pause,
    Exploit,
    Rung,
    Superseded,
    Outside,
}

impl Mark {
    fn label(self) -> &'static str {
        match self {
            Mark::Stop => "stopped by the scheduler",
            Mark::Pause => "paused",
            Mark::Exploit => "PBT exploit",
            Mark::Rung => "ASHA rung cutoff",
            Mark::Superseded => "superseded result (not counted)",
            Mark::Outside => "beyond the range shown",
        }
    }

    /// The mark centred at (x, y); `title` becomes its tooltip. `dir` points an Outside mark up
    /// (1) or down (-1).
    fn draw(self, out: &mut String, x: f64, y: f64, title: &str, dir: i8) {
        let title = if title.is_empty() {
            String::new()
        } else {
            format!("<title>{}</title>", esc(title))
        };
        let _ = match self {
            Mark::Stop => write!(
                out,
                r##"<path d="M{:.1},{:.1}l8,8m0,-8l-8,8" stroke="#d62728" stroke-width="2">{title}</path>"##,
                x - 4.0,
                y - 4.0
            ),
            Mark::Pause => write!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="#ff7f0e">{title}</rect>"##,
                x - 3.5,
                y - 3.5
            ),
            Mark::Exploit => write!(
                out,
                r##"<path d="M{x:.1},{:.1}l5,5l-5,5l-5,-5z" fill="#9467bd">{title}</path>"##,
                y - 5.0
            ),
            Mark::Rung => write!(
                out,
                r##"<path d="M{:.1},{y:.1}h16" stroke="#111" stroke-width="2.5">{title}</path>"##,
                x - 8.0
            ),
            Mark::Superseded => write!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="none" stroke="#888" stroke-width="1.2">{title}</circle>"##
            ),
            Mark::Outside => {
                let tip = if dir < 0 { 5.0 } else { -5.0 };
                write!(
                    out,
                    r##"<path d="M{x:.1},{:.1}l4,{:.1}h-8z" fill="#444">{title}</path>"##,
                    y + tip,
                    -tip
                )
            }
        };
    }
}

/// A row of legend entries right-aligned at the top of the plot.
fn legend(out: &mut String, marks: &[Mark]) {
    let widths: Vec<f64> = marks
        .iter()
        .map(|m| 22.0 + 6.2 * m.label().len() as f64)
        .collect();
    let mut x = W - RIGHT - widths.iter().sum::<f64>();
    let y = TOP - 14.0;
    for (m, w) in marks.iter().zip(widths) {
        m.draw(out, x + 6.0, y, "", 1);
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            x + 16.0,
            y + 4.0,
            m.label()
        );
        x += w;
    }
}

/// A trial's points for a plot: (iteration, value) of the results that count, and (iteration,
/// value, why) of those that do not (superseded.json's, and in files written before superseded
/// lines were moved there, the lines a restart replaced).
struct Split<'a> {
    kept: Vec<(u64, f64)>,
    gone: Vec<(u64, f64, &'a str)>,
}

fn split_curve<'a>(c: &'a Curve, superseded: Option<&'a Curve>) -> Split<'a> {
    let counting = c.counting();
    let mut gone: Vec<(u64, f64, &str)> = Vec::new();
    let mut next = counting.iter().peekable();
    for k in 0..c.len() {
        if next.peek() == Some(&&k) {
            next.next();
        } else {
            gone.push((c.it[k], c.v[k], "replaced by a later run"));
        }
    }
    if let Some(s) = superseded {
        for k in 0..s.len() {
            let why = s.why.get(k).map_or("superseded", String::as_str);
            gone.push((s.it[k], s.v[k], why));
        }
    }
    let kept = counting.iter().map(|&k| (c.it[k], c.v[k])).collect();
    Split { kept, gone }
}

/// Each trial's metric by training_iteration (the results that count), with the scheduler's
/// stops, pauses, exploits and ASHA rung cutoffs, superseded results, and the values beyond the
/// default range marked at its edge. Lines are translucent by `stroke-opacity`, not `opacity`: a
/// group opacity makes a rasterizer draw each of 10,000 lines on its own full-size layer (minutes
/// for `--format png`).
pub fn learning_curves(s: &Snapshot) -> String {
    let split: BTreeMap<u32, _> = s
        .curves
        .iter()
        .map(|(id, c)| (*id, split_curve(c, s.superseded.get(id))))
        .collect();
    let kept = || split.values().flat_map(|s| s.kept.iter());
    let x = data_range(kept().map(|p| p.0 as f64)).unwrap_or((1.0, 2.0));
    let y = robust_range(kept().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let frame = Frame {
        x: padded(x),
        y: padded(y),
    };
    let mut body = String::new();
    frame.axes(
        &mut body,
        &format!("{}: learning curves", s.header.name),
        "training_iteration",
        &s.header.metric,
        true,
    );
    let mut marks = std::collections::BTreeSet::new();
    let mut lines = String::new();
    let mut on_top = String::new();
    // Values beyond the range are marked once per (whole unit of x, side): thousands of curves
    // may leave the range at the same iteration.
    let mut outside_marked = std::collections::BTreeSet::new();
    for (n, (id, Split { kept, gone })) in split.iter().enumerate() {
        let mut d = String::new();
        for (i, v) in kept.iter().filter(|p| p.1.is_finite()) {
            let cmd = if d.is_empty() { 'M' } else { 'L' };
            let _ = write!(d, "{cmd}{:.1},{:.1}", frame.px(*i as f64), frame.py(*v));
            let dir = frame.outside(*v);
            if dir != 0 && outside_marked.insert((frame.px(*i as f64).round() as i64, dir)) {
                marks.insert(Mark::Outside);
                let edge = if dir > 0 { frame.y.1 } else { frame.y.0 };
                Mark::Outside.draw(
                    &mut on_top,
                    frame.px(*i as f64),
                    frame.py(edge),
                    &format!(
                        "iteration {i}: values beyond the range shown (trial_{id:05}: {})",
                        fmt_num(*v)
                    ),
                    dir,
                );
            }
        }
        if !d.is_empty() {
            let _ = write!(
                lines,
                r##"<path d="{d}" fill="none" stroke="{}" stroke-width="1.2" stroke-opacity="0.8"><title>trial_{id:05}</title></path>"##,
                colour(n)
            );
        }
        for (i, v, why) in gone.iter().filter(|p| p.1.is_finite()) {
            if frame.outside(*v) == 0 {
                marks.insert(Mark::Superseded);
                Mark::Superseded.draw(
                    &mut lines,
                    frame.px(*i as f64),
                    frame.py(*v),
                    &format!("trial_{id:05} iteration {i}: {} ({why})", fmt_num(*v)),
                    0,
                );
            }
        }
    }
    let _ = write!(body, r##"<g clip-path="url(#plot)">{lines}"##);
    // Each rung's latest cutoff (it moves as results arrive), in the metric's units: scores in
    // `details` are "larger is better", so the metric is -score for min.
    let mut rungs: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for d in &s.decisions {
        if let (Some(rung), Some(cutoff)) = (
            d.details.get("rung").and_then(Value::as_f64),
            d.details.get("cutoff").and_then(Value::as_f64),
        ) {
            let bracket = d.details.get("bracket").and_then(Value::as_f64);
            let value = match s.header.mode {
                Mode::Min => -cutoff,
                Mode::Max => cutoff,
            };
            rungs.insert(format!("{rung}:{bracket:?}"), (rung, value));
        }
    }
    for (rung, value) in rungs.into_values() {
        if frame.outside(value) == 0 {
            marks.insert(Mark::Rung);
            Mark::Rung.draw(
                &mut body,
                frame.px(rung),
                frame.py(value),
                &format!("rung {rung}: cutoff {}", fmt_num(value)),
                0,
            );
        }
    }
    // Many marks: smaller and lighter, so that the curves under them stay visible.
    let many = s
        .decisions
        .iter()
        .filter(|d| d.action != Action::Continue)
        .count()
        > 100;
    if many {
        body.push_str(r##"<g opacity="0.6">"##);
    }
    for d in &s.decisions {
        let mark = match d.action {
            Action::Stop => Mark::Stop,
            Action::Pause => Mark::Pause,
            Action::Exploit => Mark::Exploit,
            Action::Continue => continue,
        };
        let Some((_, v)) = split
            .get(&d.trial)
            .and_then(|s| s.kept.iter().find(|(i, _)| *i == d.iteration))
            .filter(|(_, v)| v.is_finite())
        else {
            continue;
        };
        marks.insert(mark);
        let shown = v.clamp(frame.y.0, frame.y.1);
        let (x, y) = (frame.px(d.iteration as f64), frame.py(shown));
        if many {
            // Drawn at 60 % around its centre.
            let _ = write!(
                body,
                r##"<g transform="translate({x:.1} {y:.1}) scale(0.6) translate({:.1} {:.1})">"##,
                -x, -y
            );
        }
        Mark::draw(mark, &mut body, x, y, &d.reason, 0);
        if many {
            body.push_str("</g>");
        }
    }
    if many {
        body.push_str("</g>");
    }
    body.push_str("</g>");
    body.push_str(&on_top);
    legend(&mut body, &marks.into_iter().collect::<Vec<_>>());
    document(&body)
}

/// The best value so far against wall-clock time since the experiment started.
pub fn best_so_far(s: &Snapshot) -> String {
    let steps = best_steps(s);
    let frame = Frame {
        x: padded(data_range(steps.iter().map(|p| p.0)).unwrap_or((0.0, 1.0))),
        y: padded(data_range(steps.iter().map(|p| p.1)).unwrap_or((0.0, 1.0))),
    };
    let mut body = String::new();
    frame.axes(
        &mut body,
        &format!("{}: best {} so far", s.header.name, s.header.metric),
        "seconds since the experiment started",
        &s.header.metric,
        false,
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
                .filter(|(t, v)| t.is_finite() && v.is_finite())
                .map(|(t, v)| (*t, *v))
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

/// One axis of the parallel coordinates: where a value sits (0 bottom .. 1 top) and the ticks.
enum Axis {
    Linear { lo: f64, hi: f64, integer: bool },
    Log { lo: f64, hi: f64 },
    Categorical { values: Vec<Value> },
}

impl Axis {
    /// The axis of a parameter: its domain in the search space, widened to every value seen
    /// (PBT may move a value, a space may change on resume); without a space, linear for numbers
    /// and categorical otherwise (never a guessed log).
    fn of(scale: Option<&ParamScale>, values: &[&Value]) -> Axis {
        let numbers = || values.iter().filter_map(|v| v.as_f64());
        let widen = |lo: f64, hi: f64| numbers().fold((lo, hi), |(a, b), x| (a.min(x), b.max(x)));
        match scale {
            Some(ParamScale::Linear { low, high, integer }) => {
                let (lo, hi) = widen(*low, *high);
                Axis::Linear {
                    lo,
                    hi,
                    integer: *integer,
                }
            }
            Some(ParamScale::Log { low, high, .. }) => {
                let (lo, hi) = widen(*low, *high);
                if lo > 0.0 {
                    Axis::Log { lo, hi }
                } else {
                    Axis::Linear {
                        lo,
                        hi,
                        integer: false,
                    }
                }
            }
            Some(ParamScale::Categorical { values: listed }) => {
                let mut all = listed.clone();
                for v in values {
                    if !all.contains(v) {
                        all.push((*v).clone());
                    }
                }
                Axis::Categorical { values: all }
            }
            None if values.iter().all(|v| v.is_number()) && !values.is_empty() => {
                let (lo, hi) = data_range(numbers()).unwrap_or((0.0, 1.0));
                Axis::Linear {
                    lo,
                    hi,
                    integer: values.iter().all(|v| v.is_i64() || v.is_u64()),
                }
            }
            None => {
                let mut all: Vec<Value> = Vec::new();
                for v in values {
                    if !all.contains(v) {
                        all.push((*v).clone());
                    }
                }
                all.sort_by_key(|v| v.to_string());
                Axis::Categorical { values: all }
            }
        }
    }

    fn pos(&self, v: &Value) -> Option<f64> {
        match self {
            Axis::Linear { lo, hi, .. } => {
                let x = v.as_f64()?;
                Some(if hi > lo { (x - lo) / (hi - lo) } else { 0.5 })
            }
            Axis::Log { lo, hi } => {
                let x = v.as_f64().filter(|x| *x > 0.0)?;
                Some(if hi > lo {
                    (x / lo).ln() / (hi / lo).ln()
                } else {
                    0.5
                })
            }
            Axis::Categorical { values } => {
                let i = values.iter().position(|c| c == v)?;
                Some((i as f64 + 0.5) / values.len() as f64)
            }
        }
    }

    fn ticks(&self) -> Vec<(f64, String)> {
        let at = |t: f64| (self.pos(&Value::from(t)).unwrap_or(0.0), fmt_num(t));
        match self {
            Axis::Linear { lo, hi, integer } => linear_ticks(*lo, *hi, 5, *integer)
                .into_iter()
                .map(at)
                .collect(),
            Axis::Log { lo, hi } => log_ticks(*lo, *hi).into_iter().map(at).collect(),
            Axis::Categorical { values } => values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.as_f64().map_or(n.to_string(), fmt_num),
                        other => other.to_string(),
                    };
                    ((i as f64 + 0.5) / values.len() as f64, text)
                })
                .collect(),
        }
    }

    fn is_log(&self) -> bool {
        matches!(self, Axis::Log { .. })
    }
}

/// A label cut to `width` pixels of 12 px text (about 7 px a character), with "…".
fn fit(label: &str, width: f64) -> String {
    let max = ((width / 7.0).floor() as usize).max(4);
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let cut: String = label.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// One axis per searched parameter (scaled by its domain in the search space: log only for log
/// domains, categories for `choice` and `grid`) and one for the metric (each trial's best, over
/// the default range with values beyond it marked), one line per trial coloured by its best value
/// (a colour bar on the right says which colour is which value); the best lines are drawn last,
/// on top, and axes under the lines, so no line hides under one.
pub fn parallel_coordinates(s: &Snapshot) -> String {
    let params = &s.header.parameters;
    let mut rows: Vec<(&BTreeMap<String, Value>, f64)> = s
        .trials
        .iter()
        .filter_map(|t| t.best.map(|(v, _)| (&t.params, v)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    let mode = s.header.mode;
    // Worst first: the best lines end up on top.
    rows.sort_by(|a, b| mode.score(a.1).total_cmp(&mode.score(b.1)));
    let mut body = String::new();
    let _ = write!(
        body,
        r##"<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{}: parallel coordinates</text>"##,
        esc(&s.header.name)
    );
    let axes: Vec<Axis> = params
        .iter()
        .map(|p| {
            let scale = s
                .header
                .space
                .as_ref()
                .and_then(|space| space.iter().find(|q| q.name == *p))
                .map(|q| &q.scale);
            let values: Vec<&Value> = rows
                .iter()
                .filter_map(|(ps, _)| ps.get(p))
                .filter(|v| !v.is_null())
                .collect();
            Axis::of(scale, &values)
        })
        .collect();
    let (lo, hi) = robust_range(rows.iter().map(|r| r.1)).unwrap_or((0.0, 1.0));
    let metric_axis = Axis::Linear {
        lo,
        hi,
        integer: false,
    };
    let n = params.len() + 1;
    let bar_space = 90.0;
    let spacing = (W - LEFT - RIGHT - bar_space) / (n - 1).max(1) as f64;
    let ax_x = |k: usize| LEFT + k as f64 * spacing;
    let (top, bottom) = (TOP + 10.0, H - BOTTOM);
    // Values keep 4 % off the axes' ends: a line at a domain's bound stays clear of the frame.
    let y = |u: f64| bottom - (0.04 + 0.92 * u.clamp(0.0, 1.0)) * (bottom - top);
    // The axes first (under the lines), then the lines, then the labels on a white halo.
    for k in 0..n {
        let x = ax_x(k);
        let _ = write!(
            body,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#555" stroke-width="1.5"/>"##
        );
    }
    let goodness = |v: f64| {
        let u = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        match mode {
            Mode::Min => 1.0 - u,
            Mode::Max => u,
        }
    };
    let mut outside = 0;
    for (ps, v) in &rows {
        let mut d = String::new();
        for (k, p) in params.iter().enumerate() {
            if let Some(w) = ps.get(p).and_then(|value| axes[k].pos(value)) {
                let cmd = if d.is_empty() { 'M' } else { 'L' };
                let _ = write!(d, "{cmd}{:.1},{:.1}", ax_x(k), y(w));
            }
        }
        let u = metric_axis.pos(&Value::from(*v)).unwrap_or(0.5);
        if !(0.0..=1.0).contains(&u) {
            outside += 1;
            Mark::Outside.draw(
                &mut body,
                ax_x(params.len()) + 8.0,
                y(u),
                &fmt_num(*v),
                if u > 1.0 { 1 } else { -1 },
            );
        }
        let cmd = if d.is_empty() { 'M' } else { 'L' };
        let _ = write!(d, "{cmd}{:.1},{:.1}", ax_x(params.len()), y(u));
        // Darker is better: the best trials dark purple, the worst yellow.
        let _ = write!(
            body,
            r##"<path d="{d}" fill="none" stroke="{}" stroke-width="1.3" stroke-opacity="0.85"/>"##,
            viridis(1.0 - goodness(*v))
        );
    }
    let names: Vec<&str> = params
        .iter()
        .map(String::as_str)
        .chain([s.header.metric.as_str()])
        .collect();
    let halo = r##"stroke="white" stroke-width="3" paint-order="stroke""##;
    for (k, name) in names.iter().enumerate() {
        let x = ax_x(k);
        let axis = axes.get(k).unwrap_or(&metric_axis);
        // The name, and under it in small type how the axis is scaled when it is a log axis.
        let (label, scale) = if axis.is_log() {
            (format!("{name} (log)"), "log scale")
        } else {
            (name.to_string(), "")
        };
        let _ = write!(
            body,
            r##"<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle" font-weight="bold" {halo}>{}<title>{}</title></text>"##,
            top - 20.0,
            esc(&fit(name, spacing - 6.0)),
            esc(&label)
        );
        if !scale.is_empty() {
            let _ = write!(
                body,
                r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" font-style="italic" {halo}>{scale}</text>"##,
                top - 7.0
            );
        }
        for (u, text) in axis.ticks() {
            let _ = write!(
                body,
                r##"<line x1="{:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#555"/><text x="{:.1}" y="{:.1}" font-size="10" {halo}>{}</text>"##,
                x - 4.0,
                y(u),
                y(u),
                x + 4.0,
                y(u) + 3.5,
                esc(&fit(&text, spacing * 0.8))
            );
        }
    }
    // The colour bar: the metric's colours along its values.
    let bar_x = ax_x(params.len()) + 40.0;
    let steps = 40;
    for i in 0..steps {
        let (u0, u1) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
        let v = lo + (hi - lo) * (u0 + u1) / 2.0;
        let _ = write!(
            body,
            r##"<rect x="{bar_x:.1}" y="{:.1}" width="14" height="{:.2}" fill="{}"/>"##,
            y(u1),
            y(u0) - y(u1) + 0.3,
            viridis(1.0 - goodness(v))
        );
    }
    let _ = write!(
        body,
        r##"<rect x="{bar_x:.1}" y="{:.1}" width="14" height="{:.1}" fill="none" stroke="#555"/>"##,
        y(1.0),
        y(0.0) - y(1.0)
    );
    for (u, text) in metric_axis.ticks() {
        let _ = write!(
            body,
            r##"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"##,
            bar_x + 18.0,
            y(u) + 3.5,
            esc(&text)
        );
    }
    let note = format!(
        "colour: {} (darker is better){}",
        s.header.metric,
        if outside > 0 {
            format!("; {outside} beyond the range shown")
        } else {
            String::new()
        }
    );
    let _ = write!(
        body,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
        W - RIGHT,
        H - 14.0,
        esc(&note)
    );
    document(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_ticks_are_the_values_and_log_only_for_log_domains() {
        let one = Value::from(1);
        let two = Value::from(2);
        let choice = Axis::of(
            Some(&ParamScale::Categorical {
                values: vec![one.clone(), two.clone()],
            }),
            &[&one, &two],
        );
        let labels: Vec<String> = choice.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(labels, ["1", "2"], "no 1.5 between the choices");
        let a = Value::from(1e-4);
        let b = Value::from(0.4);
        let uniform = Axis::of(
            Some(&ParamScale::Linear {
                low: 1e-4,
                high: 0.5,
                integer: false,
            }),
            &[&a, &b],
        );
        assert!(
            !uniform.is_log(),
            "a uniform domain is linear whatever its values"
        );
        let log = Axis::of(
            Some(&ParamScale::Log {
                low: 1e-5,
                high: 1e-4,
                integer: false,
            }),
            &[],
        );
        assert!(log.is_log());
        // Without a space, a wide range of numbers is still linear: nothing is guessed.
        assert!(!Axis::of(None, &[&a, &b]).is_log());
    }
}
