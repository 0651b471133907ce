//! Search spaces: the `[space]` table of an experiment file, parsed into searched parameters and
//! constants, and sampled into trial configurations.
//!
//! A table with exactly one key that names a distribution (`lr = { loguniform = [5e-6, 2e-4] }`)
//! is a searched parameter; any other table is a nested group (the trial sees nested JSON); every
//! other value is a constant. Bounds follow Ray Tune, which users already know: `randint` and
//! `lograndint` exclude `high`, `qrandint` includes it, quantized floats are rounded to
//! multiples of `q` and kept inside `[low, high]`.
//!
//! Integer domains produce JSON integers, float domains JSON floats; `choice` and `grid` values
//! are kept exactly as written.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Number, Value};

use crate::{Config, CoreRng};

/// The names of the distributions, in the order the documentation lists them.
pub const DOMAIN_NAMES: [&str; 9] = [
    "uniform",
    "loguniform",
    "quniform",
    "qloguniform",
    "randint",
    "qrandint",
    "lograndint",
    "choice",
    "grid",
];

/// A distribution (or list) one parameter is drawn from.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// Floats in `[low, high)`.
    Uniform { low: f64, high: f64 },
    /// Floats uniform in log space, `0 < low < high`.
    LogUniform { low: f64, high: f64 },
    /// A uniform sample rounded to a multiple of `q`, kept inside `[low, high]`.
    QUniform { low: f64, high: f64, q: f64 },
    /// A log-uniform sample rounded to a multiple of `q`, kept inside `[low, high]`.
    QLogUniform { low: f64, high: f64, q: f64 },
    /// Integers `low..high` (high exclusive, as in Ray Tune).
    RandInt { low: i64, high: i64 },
    /// Multiples of `q` in `low..=high` (high inclusive, as in Ray Tune).
    QRandInt { low: i64, high: i64, q: i64 },
    /// Integers `low..high`, log-uniform (high exclusive).
    LogRandInt { low: i64, high: i64 },
    /// One of the values, uniformly.
    Choice(Vec<Value>),
    /// Every value: the searcher expands grids into their cartesian product.
    Grid(Vec<Value>),
}

/// A space entry that cannot be used. `path` is the dotted place (`space.lr`), `message` says
/// what is wrong and how to write it instead.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpaceError {
    pub path: String,
    pub message: String,
}

impl SpaceError {
    fn new(path: &str, message: impl Into<String>) -> Self {
        SpaceError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl Domain {
    /// Parse one space entry. `path` is the dotted name for errors (`space.lr`).
    ///
    /// `Ok(None)`: not a distribution table (a nested table or a constant).
    pub fn parse(path: &str, value: &Value) -> Result<Option<Domain>, SpaceError> {
        let Value::Object(table) = value else {
            return Ok(None);
        };
        let domain_keys: Vec<&String> = table
            .keys()
            .filter(|k| DOMAIN_NAMES.contains(&k.as_str()))
            .collect();
        if table.len() == 1 {
            let Some((key, args)) = table.iter().next() else {
                return Ok(None);
            };
            if let Some(kind) = DOMAIN_NAMES.iter().find(|name| **name == key.as_str()) {
                return parse_domain(path, kind, args).map(Some);
            }
            if args.is_array()
                && let Some(nearest) = typo_of_domain_name(key)
            {
                return Err(SpaceError::new(
                    path,
                    format!(
                        "unknown distribution `{key}`; did you mean `{nearest}`? (the distributions are {})",
                        DOMAIN_NAMES.join(", ")
                    ),
                ));
            }
            return Ok(None);
        }
        // A distribution with extra keys is almost certainly a mistake, not a nested group.
        if let Some(key) = domain_keys.iter().find(|k| table[k.as_str()].is_array()) {
            let others: Vec<String> = table
                .keys()
                .filter(|k| k != key)
                .map(|k| format!("`{k}`"))
                .collect();
            return Err(SpaceError::new(
                path,
                format!(
                    "a distribution table has exactly one key, but `{key}` comes with {}; remove them, or move `{key}` into its own table",
                    others.join(", ")
                ),
            ));
        }
        Ok(None)
    }

    /// One random value. For a grid (which the searcher expands itself) this is its first value.
    pub fn sample(&self, rng: &mut CoreRng) -> Value {
        match self {
            Domain::Uniform { low, high } => float(uniform_below(*low, *high, rng)),
            Domain::LogUniform { low, high } => float(log_uniform(*low, *high, rng)),
            Domain::QUniform { low, high, q } => float(quantize_float(
                uniform_below(*low, *high, rng),
                *low,
                *high,
                *q,
            )),
            Domain::QLogUniform { low, high, q } => float(quantize_float(
                log_uniform(*low, *high, rng),
                *low,
                *high,
                *q,
            )),
            Domain::RandInt { low, high } => Value::from(rng.random_range(*low..*high)),
            Domain::QRandInt { low, high, q } => {
                let (first, last) = multiples_in(*low, *high, *q);
                Value::from(clamp_i128(rng.random_range(first..=last) * i128::from(*q)))
            }
            Domain::LogRandInt { low, high } => {
                // Truncating a sample of [low, high) gives an integer of low..high.
                let x = log_uniform(*low as f64, *high as f64, rng).floor() as i64;
                Value::from(x.clamp(*low, *high - 1))
            }
            Domain::Choice(values) => values.choose(rng).cloned().unwrap_or(Value::Null),
            Domain::Grid(values) => values.first().cloned().unwrap_or(Value::Null),
        }
    }

    /// The distribution's name as written in the space (`loguniform`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Domain::Uniform { .. } => "uniform",
            Domain::LogUniform { .. } => "loguniform",
            Domain::QUniform { .. } => "quniform",
            Domain::QLogUniform { .. } => "qloguniform",
            Domain::RandInt { .. } => "randint",
            Domain::QRandInt { .. } => "qrandint",
            Domain::LogRandInt { .. } => "lograndint",
            Domain::Choice(_) => "choice",
            Domain::Grid(_) => "grid",
        }
    }

    /// Whether the domain produces JSON integers.
    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            Domain::RandInt { .. } | Domain::QRandInt { .. } | Domain::LogRandInt { .. }
        )
    }

    /// For numeric domains: `value` moved into the domain's bounds, rounded to a multiple of `q`
    /// for quantized domains and to an integer for integer domains (PBT's perturbations use it so
    /// that explored values never leave the space). `None` for `choice` and `grid`, and for NaN.
    pub fn clamp(&self, value: f64) -> Option<Value> {
        if value.is_nan() {
            return None;
        }
        Some(match self {
            Domain::Uniform { low, high } | Domain::LogUniform { low, high } => {
                float(value.clamp(*low, *high))
            }
            Domain::QUniform { low, high, q } | Domain::QLogUniform { low, high, q } => {
                float(quantize_float(value, *low, *high, *q))
            }
            Domain::RandInt { low, high } | Domain::LogRandInt { low, high } => {
                Value::from(round_to_i64(value).clamp(*low, *high - 1))
            }
            Domain::QRandInt { low, high, q } => {
                let (first, last) = multiples_in(*low, *high, *q);
                let k = (value / *q as f64).round();
                let k = if k.is_nan() {
                    first
                } else {
                    (k.clamp(first as f64, last as f64)) as i128
                };
                Value::from(clamp_i128(k * i128::from(*q)))
            }
            Domain::Choice(_) | Domain::Grid(_) => return None,
        })
    }
}

/// One searched parameter: where it sits in the config and what it is drawn from.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameter {
    /// The keys from the top of the config down, e.g. `["model", "layers"]`.
    pub path: Vec<String>,
    pub domain: Domain,
}

impl Parameter {
    /// The dotted name, e.g. `model.layers` (a column of the trials table).
    pub fn name(&self) -> String {
        self.path.join(".")
    }

    /// This parameter's value in a trial's config.
    pub fn get<'a>(&self, config: &'a Config) -> Option<&'a Value> {
        get_path(config, &self.path)
    }
}

/// The value at `path` in a nested config.
pub(crate) fn get_path<'a>(config: &'a Config, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = config.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

/// One entry of the space, in file order.
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    /// A constant (or an empty nested table) at this path.
    Constant(Vec<String>, Value),
    /// `parameters[index]`.
    Searched(usize),
}

/// A parsed `[space]`: the searched parameters in file order, and the constants around them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchSpace {
    parameters: Vec<Parameter>,
    entries: Vec<Entry>,
    /// `parameters` indices of the grid parameters, in file order.
    grids: Vec<usize>,
    grid_size: usize,
}

impl SearchSpace {
    /// `table` is the `[space]` table converted to JSON (key order preserved). Error paths are
    /// prefixed with `space.`.
    pub fn from_json(table: &Config) -> Result<SearchSpace, SpaceError> {
        let mut space = SearchSpace {
            grid_size: 1,
            ..SearchSpace::default()
        };
        space.add_table(table, &mut Vec::new())?;
        for (index, parameter) in space.parameters.iter().enumerate() {
            if let Domain::Grid(values) = &parameter.domain {
                space.grids.push(index);
                space.grid_size = space.grid_size.checked_mul(values.len()).ok_or_else(|| {
                    SpaceError::new(
                        &format!("space.{}", parameter.name()),
                        "the grid's cartesian product has more points than this machine can count; use fewer grid values or `choice` instead",
                    )
                })?;
            }
        }
        Ok(space)
    }

    fn add_table(&mut self, table: &Config, prefix: &mut Vec<String>) -> Result<(), SpaceError> {
        for (key, value) in table {
            prefix.push(key.clone());
            let path = format!("space.{}", prefix.join("."));
            match Domain::parse(&path, value)? {
                Some(domain) => {
                    if key.contains('.') {
                        return Err(SpaceError::new(
                            &path,
                            format!(
                                "a searched parameter's name cannot contain '.', since dotted names address nested tables; rename `{key}` or nest it as a table"
                            ),
                        ));
                    }
                    self.entries.push(Entry::Searched(self.parameters.len()));
                    self.parameters.push(Parameter {
                        path: prefix.clone(),
                        domain,
                    });
                }
                None => match value {
                    Value::Object(nested) if !nested.is_empty() => {
                        self.add_table(nested, prefix)?;
                    }
                    constant => self
                        .entries
                        .push(Entry::Constant(prefix.clone(), constant.clone())),
                },
            }
            prefix.pop();
        }
        Ok(())
    }

    /// The searched parameters (grids included), in file order.
    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }

    /// The dotted names of [`SearchSpace::parameters`], e.g. `["lr", "model.layers"]`.
    pub fn searched_names(&self) -> Vec<String> {
        self.parameters.iter().map(Parameter::name).collect()
    }

    /// The number of grid points: the product of the grids' lengths; 1 without grids.
    pub fn grid_size(&self) -> usize {
        self.grid_size
    }

    /// Whether every searched parameter is a grid (and there is at least one).
    pub fn is_pure_grid(&self) -> bool {
        !self.parameters.is_empty() && self.grids.len() == self.parameters.len()
    }

    /// A full nested config: the constants, grid point number `grid_index` (row-major over the
    /// grid parameters in file order, the last one fastest; taken modulo [`Self::grid_size`])
    /// and random samples for the rest, drawn in file order.
    pub fn sample(&self, grid_index: usize, rng: &mut CoreRng) -> Config {
        let mut grid_values: Vec<Option<&Value>> = vec![None; self.parameters.len()];
        let mut rest = grid_index % self.grid_size.max(1);
        for &index in self.grids.iter().rev() {
            if let Domain::Grid(values) = &self.parameters[index].domain {
                let len = values.len().max(1);
                grid_values[index] = values.get(rest % len);
                rest /= len;
            }
        }
        let mut config = Config::new();
        for entry in &self.entries {
            match entry {
                Entry::Constant(path, value) => set_path(&mut config, path, value.clone()),
                Entry::Searched(index) => {
                    let parameter = &self.parameters[*index];
                    let value = match grid_values[*index] {
                        Some(value) => value.clone(),
                        None => parameter.domain.sample(rng),
                    };
                    set_path(&mut config, &parameter.path, value);
                }
            }
        }
        config
    }

    /// A full nested config from one value per searched parameter (in [`Self::parameters`]
    /// order) and the constants, in file order: what a model-based searcher proposes. Missing
    /// values (a shorter slice) become `null`.
    pub fn config_from_values(&self, values: &[Value]) -> Config {
        let mut config = Config::new();
        for entry in &self.entries {
            match entry {
                Entry::Constant(path, value) => set_path(&mut config, path, value.clone()),
                Entry::Searched(index) => {
                    let value = values.get(*index).cloned().unwrap_or(Value::Null);
                    set_path(&mut config, &self.parameters[*index].path, value);
                }
            }
        }
        config
    }

    /// The searched parameter with this dotted name.
    pub fn parameter(&self, dotted: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name() == dotted)
    }

    /// A value in a (nested) config by dotted name: `get(config, "model.layers")`. The runner's
    /// trials table shows one column per searched parameter with it.
    pub fn get<'a>(config: &'a Config, dotted: &str) -> Option<&'a Value> {
        let mut parts = dotted.split('.');
        let mut value = config.get(parts.next()?)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        Some(value)
    }

    /// The searched parameters' values in `config`, by dotted name, in file order.
    pub fn searched_values<'a>(&self, config: &'a Config) -> Vec<(String, Option<&'a Value>)> {
        self.parameters
            .iter()
            .map(|p| (p.name(), p.get(config)))
            .collect()
    }
}

/// Put `value` at `path`, creating nested tables on the way (in first-seen order).
pub(crate) fn set_path(config: &mut Config, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = config;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(map) => current = map,
            _ => return,
        }
    }
    current.insert(last.clone(), value);
}

// ---- parsing ----------------------------------------------------------------------------------

/// What a distribution's arguments look like, for error messages.
fn usage(kind: &str) -> &'static str {
    match kind {
        "uniform" => "[low, high] with low < high",
        "loguniform" => "[low, high] with 0 < low < high",
        "quniform" => "[low, high, q] with low < high and q > 0",
        "qloguniform" => "[low, high, q] with 0 < low < high and q > 0",
        "randint" => "integers [low, high] with low < high (high is excluded, as in Ray Tune)",
        "qrandint" => {
            "integers [low, high, q] with low <= high and q >= 1 (high is included, as in Ray Tune)"
        }
        "lograndint" => {
            "integers [low, high] with 0 < low < high (high is excluded, as in Ray Tune)"
        }
        _ => "a non-empty list of values, e.g. [1, 2]",
    }
}

fn arity(kind: &str) -> usize {
    match kind {
        "quniform" | "qloguniform" | "qrandint" => 3,
        _ => 2,
    }
}

/// `[0, 1]` as a person writes it (serde_json prints `[0,1]`).
fn shown(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(shown).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

fn parse_domain(path: &str, kind: &str, args: &Value) -> Result<Domain, SpaceError> {
    let needs =
        |got: String| SpaceError::new(path, format!("{kind} needs {}, got {got}", usage(kind)));
    if kind == "choice" || kind == "grid" {
        return match args {
            Value::Array(values) if !values.is_empty() => Ok(if kind == "choice" {
                Domain::Choice(values.clone())
            } else {
                Domain::Grid(values.clone())
            }),
            other => Err(needs(shown(other))),
        };
    }
    let Value::Array(items) = args else {
        return Err(needs(shown(args)));
    };
    if items.len() != arity(kind) {
        return Err(needs(format!(
            "{} value{}: {}",
            items.len(),
            if items.len() == 1 { "" } else { "s" },
            shown(args)
        )));
    }
    let integer = matches!(kind, "randint" | "qrandint" | "lograndint");
    if integer {
        let mut ints = Vec::with_capacity(items.len());
        for item in items {
            match as_integer(item) {
                Some(i) => ints.push(i),
                None => {
                    return Err(needs(format!(
                        "{} ({} is not an integer; use quniform or uniform for floats)",
                        shown(args),
                        shown(item)
                    )));
                }
            }
        }
        let (low, high) = (ints[0], ints[1]);
        return match kind {
            "randint" if low < high => Ok(Domain::RandInt { low, high }),
            "randint" if low == high => Err(needs(format!(
                "{} (it has no values since high is excluded; use [{low}, {}] for just {low})",
                shown(args),
                low.saturating_add(1)
            ))),
            "lograndint" if 0 < low && low < high => Ok(Domain::LogRandInt { low, high }),
            "qrandint" => {
                let q = ints[2];
                if !(low <= high && q >= 1) {
                    return Err(needs(shown(args)));
                }
                let (first, last) = multiples_in(low, high, q);
                if first > last {
                    return Err(needs(format!(
                        "{} (no multiple of {q} lies in [{low}, {high}])",
                        shown(args)
                    )));
                }
                Ok(Domain::QRandInt { low, high, q })
            }
            _ => Err(needs(shown(args))),
        };
    }
    let mut floats = Vec::with_capacity(items.len());
    for item in items {
        match item.as_f64().filter(|x| x.is_finite()) {
            Some(x) => floats.push(x),
            None => {
                return Err(needs(format!(
                    "{} ({} is not a finite number)",
                    shown(args),
                    shown(item)
                )));
            }
        }
    }
    let (low, high) = (floats[0], floats[1]);
    let positive = 0.0 < low;
    match kind {
        "uniform" if low < high => Ok(Domain::Uniform { low, high }),
        "loguniform" if positive && low < high => Ok(Domain::LogUniform { low, high }),
        "quniform" | "qloguniform" => {
            let q = floats[2];
            let valid = low < high && q > 0.0 && (kind == "quniform" || positive);
            if !valid {
                return Err(needs(shown(args)));
            }
            let (first, last) = float_multiples_in(low, high, q);
            if first > last {
                return Err(needs(format!(
                    "{} (no multiple of {q} lies in [{low}, {high}])",
                    shown(args)
                )));
            }
            Ok(if kind == "quniform" {
                Domain::QUniform { low, high, q }
            } else {
                Domain::QLogUniform { low, high, q }
            })
        }
        _ => Err(needs(shown(args))),
    }
}

/// An integer, also when written as a whole float (`4.0`).
fn as_integer(value: &Value) -> Option<i64> {
    if let Some(i) = value.as_i64() {
        return Some(i);
    }
    let x = value.as_f64()?;
    // 2^63 is exactly representable; anything from it up does not fit an i64.
    (x.fract() == 0.0 && x >= -(2f64.powi(63)) && x < 2f64.powi(63)).then_some(x as i64)
}

/// The nearest distribution name to a key that looks like a misspelling of one
/// (`logunifrom` -> `loguniform`), if any.
fn typo_of_domain_name(key: &str) -> Option<&'static str> {
    let lower = key.to_lowercase();
    let (distance, nearest) = DOMAIN_NAMES
        .iter()
        .map(|name| (edit_distance(&lower, name), *name))
        .min()?;
    // Short names tolerate one edit, longer ones two: enough for a slip of the fingers, not so
    // much that a real nested key is taken for a distribution.
    let allowed = if nearest.len() <= 5 { 1 } else { 2 };
    (distance <= allowed).then_some(nearest)
}

/// Edit distance with adjacent transpositions (optimal string alignment): `unifrom` is one edit
/// from `uniform`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

// ---- sampling helpers -------------------------------------------------------------------------

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Uniform in `[low, high)`.
fn uniform_below(low: f64, high: f64, rng: &mut CoreRng) -> f64 {
    let x = low + (high - low) * rng.random::<f64>();
    // Rounding can land exactly on `high`; the interval excludes it.
    if x >= high { high.next_down() } else { x }
}

/// Log-uniform in `[low, high)`, `0 < low < high`.
fn log_uniform(low: f64, high: f64, rng: &mut CoreRng) -> f64 {
    uniform_below(low.ln(), high.ln(), rng)
        .exp()
        .clamp(low, high.next_down())
}

/// Indices `first..=last` of the multiples `k * q` inside `[low, high]` (empty when first >
/// last). A tiny tolerance keeps bounds that are multiples of `q` on paper (0.3 for q = 0.1)
/// inside despite binary rounding.
fn float_multiples_in(low: f64, high: f64, q: f64) -> (f64, f64) {
    ((low / q - 1e-9).ceil(), (high / q + 1e-9).floor())
}

/// `k * q`, computed as `k / (1 / q)` when `1 / q` is a whole number so that decimal steps stay
/// decimal (3 * 0.1 is 0.30000000000000004, 3 / 10 is 0.3).
fn multiple(k: f64, q: f64) -> f64 {
    let inverse = 1.0 / q;
    let whole = inverse.round();
    if q < 1.0 && whole >= 1.0 && (inverse - whole).abs() <= 1e-9 * whole {
        k / whole
    } else {
        k * q
    }
}

/// `x` rounded to the nearest multiple of `q` inside `[low, high]`.
fn quantize_float(x: f64, low: f64, high: f64, q: f64) -> f64 {
    let (first, last) = float_multiples_in(low, high, q);
    let k = (x / q).round().clamp(first, last.max(first));
    multiple(k, q).clamp(low, high)
}

/// Indices `first..=last` of the multiples `k * q` inside `[low, high]`, `q >= 1`.
fn multiples_in(low: i64, high: i64, q: i64) -> (i128, i128) {
    let (low, high, q) = (i128::from(low), i128::from(high), i128::from(q.max(1)));
    // Ceiling of low / q for either sign, floor of high / q.
    (-((-low).div_euclid(q)), high.div_euclid(q))
}

fn clamp_i128(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn round_to_i64(x: f64) -> i64 {
    // `as` saturates at the i64 range; infinities become the extremes.
    x.round() as i64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn table(value: Value) -> Config {
        value.as_object().cloned().expect("a JSON object")
    }

    fn space(value: Value) -> SearchSpace {
        SearchSpace::from_json(&table(value)).expect("a valid space")
    }

    fn error(value: Value) -> SpaceError {
        SearchSpace::from_json(&table(value)).expect_err("an invalid space")
    }

    fn domain(value: Value) -> Domain {
        Domain::parse("space.x", &value)
            .expect("valid")
            .expect("a domain")
    }

    fn samples(domain: &Domain, n: usize) -> Vec<Value> {
        let mut rng = CoreRng::seed_from_u64(42);
        (0..n).map(|_| domain.sample(&mut rng)).collect()
    }

    fn floats(values: &[Value]) -> Vec<f64> {
        values
            .iter()
            .map(|v| {
                assert!(v.is_f64(), "{v} should be a JSON float");
                v.as_f64().unwrap()
            })
            .collect()
    }

    fn ints(values: &[Value]) -> Vec<i64> {
        values
            .iter()
            .map(|v| {
                v.as_i64()
                    .unwrap_or_else(|| panic!("{v} should be a JSON integer"))
            })
            .collect()
    }

    #[test]
    fn uniform_stays_in_its_half_open_range_and_spreads() {
        let xs = floats(&samples(&domain(json!({"uniform": [-2, 3]})), 5000));
        assert!(xs.iter().all(|x| (-2.0..3.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.1, "mean {mean}");
        assert!(xs.iter().any(|x| *x < -1.5) && xs.iter().any(|x| *x > 2.5));
    }

    #[test]
    fn loguniform_is_uniform_in_log_space() {
        let xs = floats(&samples(&domain(json!({"loguniform": [1e-5, 1e-1]})), 5000));
        assert!(xs.iter().all(|x| (1e-5..1e-1).contains(x)));
        // Each decade holds about a quarter of the samples.
        for decade in 0..4 {
            let lo = 1e-5 * 10f64.powi(decade);
            let share =
                xs.iter().filter(|x| (lo..lo * 10.0).contains(*x)).count() as f64 / xs.len() as f64;
            assert!((share - 0.25).abs() < 0.04, "decade {decade}: {share}");
        }
    }

    #[test]
    fn quniform_gives_multiples_of_q_within_bounds_both_ends_included() {
        let xs = floats(&samples(&domain(json!({"quniform": [0, 10, 0.5]})), 3000));
        assert!(xs.iter().all(|x| (0.0..=10.0).contains(x)));
        assert!(xs.iter().all(|x| (x / 0.5).fract() == 0.0), "{xs:?}");
        assert!(xs.contains(&0.0) && xs.contains(&10.0));
        // Decimal steps print as written: 0.3, not 0.30000000000000004.
        let xs = floats(&samples(&domain(json!({"quniform": [0.1, 0.5, 0.1]})), 500));
        for x in &xs {
            assert!([0.1, 0.2, 0.3, 0.4, 0.5].contains(x), "{x}");
        }
        // Bounds that are not multiples of q: values stay inside.
        let xs = floats(&samples(&domain(json!({"quniform": [0.3, 2.9, 1.0]})), 500));
        assert!(xs.iter().all(|x| [1.0, 2.0].contains(x)), "{xs:?}");
    }

    #[test]
    fn qloguniform_rounds_a_log_sample() {
        let xs = floats(&samples(&domain(json!({"qloguniform": [1, 100, 1]})), 3000));
        assert!(
            xs.iter()
                .all(|x| (1.0..=100.0).contains(x) && x.fract() == 0.0)
        );
        let small = xs.iter().filter(|x| **x < 10.0).count();
        assert!(small > 1000, "log-uniform favours small values: {small}");
    }

    #[test]
    fn randint_excludes_high() {
        let xs = ints(&samples(&domain(json!({"randint": [1, 10]})), 2000));
        assert!(xs.iter().all(|x| (1..10).contains(x)));
        for v in 1..10 {
            assert!(xs.contains(&v), "{v} never drawn");
        }
        // Whole floats are integers too.
        let xs = ints(&samples(&domain(json!({"randint": [-3.0, -1.0]})), 100));
        assert!(xs.iter().all(|x| [-3, -2].contains(x)));
    }

    #[test]
    fn qrandint_includes_high() {
        let xs = ints(&samples(&domain(json!({"qrandint": [0, 100, 10]})), 2000));
        assert!(xs.iter().all(|x| x % 10 == 0 && (0..=100).contains(x)));
        assert!(xs.contains(&0) && xs.contains(&100));
        let xs = ints(&samples(&domain(json!({"qrandint": [-7, 7, 5]})), 500));
        assert!(xs.iter().all(|x| [-5, 0, 5].contains(x)), "{xs:?}");
    }

    #[test]
    fn lograndint_excludes_high_and_favours_small_values() {
        let xs = ints(&samples(&domain(json!({"lograndint": [1, 1000]})), 3000));
        assert!(xs.iter().all(|x| (1..1000).contains(x)));
        let below_10 = xs.iter().filter(|x| **x < 10).count();
        assert!((800..1200).contains(&below_10), "{below_10}");
        let xs = ints(&samples(&domain(json!({"lograndint": [2, 3]})), 50));
        assert!(xs.iter().all(|x| *x == 2));
    }

    #[test]
    fn choice_keeps_values_as_written() {
        let d = domain(json!({"choice": [1, 2.5, "adam", [1, 2], {"a": 1}]}));
        let xs = samples(&d, 1000);
        let options = [
            json!(1),
            json!(2.5),
            json!("adam"),
            json!([1, 2]),
            json!({"a": 1}),
        ];
        for option in &options {
            assert!(xs.contains(option), "{option} never drawn");
        }
        assert!(xs.iter().all(|x| options.contains(x)));
        assert!(xs.iter().filter(|x| **x == json!(1)).all(Value::is_i64));
    }

    #[test]
    fn kinds_and_integer_flags() {
        let cases = [
            (json!({"uniform": [0, 1]}), "uniform", false),
            (json!({"loguniform": [1, 2]}), "loguniform", false),
            (json!({"quniform": [0, 1, 0.5]}), "quniform", false),
            (json!({"qloguniform": [1, 2, 1]}), "qloguniform", false),
            (json!({"randint": [0, 1]}), "randint", true),
            (json!({"qrandint": [0, 1, 1]}), "qrandint", true),
            (json!({"lograndint": [1, 2]}), "lograndint", true),
            (json!({"choice": [0]}), "choice", false),
            (json!({"grid": [0]}), "grid", false),
        ];
        for (value, kind, integer) in cases {
            let d = domain(value);
            assert_eq!(d.kind(), kind);
            assert_eq!(d.is_integer(), integer, "{kind}");
        }
    }

    #[test]
    fn clamp_moves_values_into_bounds_and_keeps_integers_whole() {
        let d = domain(json!({"loguniform": [1e-4, 1e-2]}));
        assert_eq!(d.clamp(1.0), Some(json!(1e-2)));
        assert_eq!(d.clamp(1e-9), Some(json!(1e-4)));
        assert_eq!(d.clamp(1e-3), Some(json!(1e-3)));
        assert_eq!(d.clamp(f64::NAN), None);
        let d = domain(json!({"randint": [1, 9]}));
        assert_eq!(d.clamp(21.0), Some(json!(8)), "high is excluded");
        assert_eq!(d.clamp(4.4), Some(json!(4)));
        assert_eq!(d.clamp(-3.0), Some(json!(1)));
        assert_eq!(d.clamp(f64::INFINITY), Some(json!(8)));
        let d = domain(json!({"qrandint": [0, 100, 10]}));
        assert_eq!(d.clamp(26.0), Some(json!(30)));
        assert_eq!(d.clamp(1000.0), Some(json!(100)), "high is included");
        let d = domain(json!({"quniform": [0, 1, 0.1]}));
        assert_eq!(d.clamp(0.33), Some(json!(0.3)));
        assert_eq!(d.clamp(7.0), Some(json!(1.0)));
        assert_eq!(domain(json!({"choice": [1, 2]})).clamp(1.0), None);
        assert_eq!(domain(json!({"grid": [1, 2]})).clamp(1.0), None);
    }

    #[test]
    fn nested_tables_and_constants_keep_file_order() {
        let s = space(json!({
            "lr": {"loguniform": [1e-5, 1e-3]},
            "epochs": 3,
            "model": {
                "layers": {"randint": [1, 4]},
                "activation": "relu",
                "head": {"dropout": {"uniform": [0, 0.5]}},
                "sizes": [64, 32],
            },
            "tags": {},
            "name": "squad",
        }));
        assert_eq!(
            s.searched_names(),
            ["lr", "model.layers", "model.head.dropout"]
        );
        assert_eq!(s.grid_size(), 1);
        assert_eq!(
            s.parameter("model.layers").map(|p| p.path.clone()),
            Some(vec!["model".to_string(), "layers".to_string()])
        );
        assert!(s.parameter("layers").is_none());
        let mut rng = CoreRng::seed_from_u64(1);
        let c = s.sample(0, &mut rng);
        let keys: Vec<&String> = c.keys().collect();
        assert_eq!(keys, ["lr", "epochs", "model", "tags", "name"]);
        let model = c["model"].as_object().expect("nested");
        let keys: Vec<&String> = model.keys().collect();
        assert_eq!(keys, ["layers", "activation", "head", "sizes"]);
        assert_eq!(c["epochs"], json!(3));
        assert_eq!(c["model"]["activation"], json!("relu"));
        assert_eq!(c["model"]["sizes"], json!([64, 32]));
        assert_eq!(c["tags"], json!({}));
        assert!((1..4).contains(&c["model"]["layers"].as_i64().expect("integer")));
        let dropout = c["model"]["head"]["dropout"].as_f64().expect("float");
        assert!((0.0..0.5).contains(&dropout));
        // Values by dotted name, for the trials table.
        assert_eq!(
            SearchSpace::get(&c, "model.activation"),
            Some(&json!("relu"))
        );
        assert_eq!(SearchSpace::get(&c, "model.nothing"), None);
        assert_eq!(SearchSpace::get(&c, "epochs.deeper"), None);
        let values = s.searched_values(&c);
        assert_eq!(values.len(), 3);
        assert_eq!(
            values[1],
            ("model.layers".to_string(), c["model"].get("layers"))
        );
    }

    #[test]
    fn a_space_without_searched_parameters_is_all_constants() {
        let s = space(json!({"a": 1, "b": {"c": true}}));
        assert!(s.parameters().is_empty());
        assert!(!s.is_pure_grid());
        let mut rng = CoreRng::seed_from_u64(0);
        assert_eq!(
            Value::Object(s.sample(5, &mut rng)),
            json!({"a": 1, "b": {"c": true}})
        );
    }

    #[test]
    fn grid_points_are_row_major_with_the_last_grid_fastest() {
        let s = space(json!({
            "a": {"grid": [1, 2]},
            "x": {"uniform": [0, 1]},
            "b": {"grid": ["p", "q", "r"]},
        }));
        assert_eq!(s.grid_size(), 6);
        assert!(!s.is_pure_grid());
        let mut rng = CoreRng::seed_from_u64(0);
        let points: Vec<(Value, Value)> = (0..8)
            .map(|i| {
                let c = s.sample(i, &mut rng);
                (c["a"].clone(), c["b"].clone())
            })
            .collect();
        let expected = [
            (1, "p"),
            (1, "q"),
            (1, "r"),
            (2, "p"),
            (2, "q"),
            (2, "r"),
            (1, "p"),
            (1, "q"),
        ];
        for (got, (a, b)) in points.iter().zip(expected) {
            assert_eq!(got, &(json!(a), json!(b)));
        }
        assert!(space(json!({"a": {"grid": [1]}, "c": 3})).is_pure_grid());
    }

    #[test]
    fn the_same_seed_gives_the_same_samples() {
        let s = space(json!({
            "lr": {"loguniform": [1e-5, 1e-3]},
            "n": {"randint": [0, 1000]},
            "c": {"choice": ["a", "b", "c"]},
        }));
        let draw = |seed| {
            let mut rng = CoreRng::seed_from_u64(seed);
            (0..20).map(|i| s.sample(i, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn bad_bounds_say_what_is_needed() {
        let e = error(json!({"lr": {"loguniform": [0, 1]}}));
        assert_eq!(
            e.to_string(),
            "space.lr: loguniform needs [low, high] with 0 < low < high, got [0, 1]"
        );
        let e = error(json!({"x": {"uniform": [1, 1]}}));
        assert_eq!(e.path, "space.x");
        assert!(e.message.contains("low < high"), "{e}");
        let e = error(json!({"n": {"randint": [3, 3]}}));
        assert!(e.message.contains("use [3, 4] for just 3"), "{e}");
        let e = error(json!({"n": {"randint": [5, 1]}}));
        assert!(e.message.contains("high is excluded"), "{e}");
        let e = error(json!({"n": {"randint": [1.5, 4]}}));
        assert!(e.message.contains("1.5 is not an integer"), "{e}");
        let e = error(json!({"q": {"quniform": [0, 1, 0]}}));
        assert!(e.message.contains("q > 0"), "{e}");
        let e = error(json!({"q": {"quniform": [0.1, 0.2, 1]}}));
        assert!(e.message.contains("no multiple of 1"), "{e}");
        let e = error(json!({"q": {"qrandint": [1, 4, 5]}}));
        assert!(e.message.contains("no multiple of 5"), "{e}");
        let e = error(json!({"l": {"lograndint": [0, 10]}}));
        assert!(e.message.contains("0 < low < high"), "{e}");
        let e = error(json!({"q": {"qloguniform": [-1, 10, 1]}}));
        assert!(e.message.contains("0 < low < high"), "{e}");
        let e = error(json!({"u": {"uniform": ["a", 1]}}));
        assert!(e.message.contains("\"a\" is not a finite number"), "{e}");
        let e = error(json!({"c": {"choice": []}}));
        assert!(e.message.contains("non-empty list"), "{e}");
        let e = error(json!({"g": {"grid": 3}}));
        assert!(e.message.contains("non-empty list"), "{e}");
    }

    #[test]
    fn wrong_arity_names_the_expected_form() {
        let e = error(json!({"model": {"q": {"quniform": [0, 1]}}}));
        assert_eq!(
            e.to_string(),
            "space.model.q: quniform needs [low, high, q] with low < high and q > 0, got 2 values: [0, 1]"
        );
        let e = error(json!({"x": {"uniform": [0, 1, 2]}}));
        assert!(e.message.contains("got 3 values"), "{e}");
        let e = error(json!({"x": {"randint": 4}}));
        assert!(e.message.contains("got 4"), "{e}");
    }

    #[test]
    fn a_misspelt_distribution_is_named() {
        let e = error(json!({"lr": {"logunifrom": [1e-5, 1e-3]}}));
        assert_eq!(e.path, "space.lr");
        assert!(e.message.contains("did you mean `loguniform`"), "{e}");
        let e = error(json!({"bs": {"choise": [1, 2]}}));
        assert!(e.message.contains("`choice`"), "{e}");
        let e = error(json!({"n": {"RandInt": [1, 2]}}));
        assert!(e.message.contains("`randint`"), "{e}");
        // Keys far from every name are nested groups, as written.
        let s = space(json!({"model": {"layers": [1, 2]}}));
        assert!(s.parameters().is_empty());
    }

    #[test]
    fn a_distribution_with_extra_keys_is_an_error() {
        let e = error(json!({"lr": {"loguniform": [1e-5, 1e-3], "base": 10}}));
        assert!(e.message.contains("exactly one key"), "{e}");
        assert!(e.message.contains("`base`"), "{e}");
    }

    #[test]
    fn searched_names_cannot_contain_dots() {
        let e = error(json!({"a.b": {"uniform": [0, 1]}}));
        assert!(e.message.contains("cannot contain '.'"), "{e}");
    }

    #[test]
    fn edit_distance_counts_transpositions_as_one() {
        assert_eq!(edit_distance("uniform", "uniform"), 0);
        assert_eq!(edit_distance("unifrom", "uniform"), 1);
        assert_eq!(edit_distance("grd", "grid"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
