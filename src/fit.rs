//! Fitted state: a transform resolved to per-column steps with their fitted parameters,
//! saved as a versioned JSON file that tilestream (or any reader) can apply again.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// One step of a column's transform.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOp {
    /// The column is computed by an expression over raw values.
    With {
        /// The expression, in the expression language.
        expr: String,
    },
    /// Clamp to `[lo, hi]`.
    Clip {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// ln(1 + x).
    Log1p,
    /// (x - mean) / std, a zero std giving 0.
    Standardize {
        /// Fitted mean (`None` before fitting, or when no value was seen).
        mean: Option<f64>,
        /// Fitted population std.
        std: Option<f64>,
    },
    /// (x - min) / (max - min), max == min giving 0.
    MinMax {
        /// Fitted minimum.
        min: Option<f64>,
        /// Fitted maximum.
        max: Option<f64>,
    },
}

impl StepOp {
    /// The step's name in the JSON file.
    pub fn name(&self) -> &'static str {
        match self {
            StepOp::With { .. } => "with",
            StepOp::Clip { .. } => "clip",
            StepOp::Log1p => "log1p",
            StepOp::Standardize { .. } => "standardize",
            StepOp::MinMax { .. } => "minmax",
        }
    }

    /// True for steps whose parameters come from a fit pass.
    pub fn needs_fit(&self) -> bool {
        matches!(self, StepOp::Standardize { .. } | StepOp::MinMax { .. })
    }
}

/// One step applied to one column.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The output column it applies to.
    pub column: String,
    /// What it does.
    pub op: StepOp,
}

/// A resolved (and, after a fit pass, fitted) transform.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fit {
    /// Output columns, in order.
    pub columns: Vec<String>,
    /// Whether the output columns were chosen (`--select`). Only then does the saved file
    /// list them; else applying it writes every column of the file it runs on (in that
    /// file's order), then the `with` columns.
    pub selected: bool,
    /// Steps in pipeline order (`with`, then per column clip → log1p → scale).
    pub steps: Vec<Step>,
    /// NaN replacement for every float column written.
    pub fill_nan: Option<f64>,
    /// Cast of every float column written.
    pub cast: Option<DType>,
}

/// A float as JSON: a number, or the strings "inf", "-inf", "nan"; `None` is null.
pub fn json_f64(v: Option<f64>) -> Value {
    match v {
        None => Value::Null,
        Some(v) if v.is_nan() => json!("nan"),
        Some(v) if v == f64::INFINITY => json!("inf"),
        Some(v) if v == f64::NEG_INFINITY => json!("-inf"),
        Some(v) => json!(v),
    }
}

fn f64_of(v: Option<&Value>) -> std::result::Result<Option<f64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| format!("bad number {n}")),
        Some(Value::String(s)) if s == "nan" => Ok(Some(f64::NAN)),
        Some(Value::String(s)) if s == "inf" => Ok(Some(f64::INFINITY)),
        Some(Value::String(s)) if s == "-inf" => Ok(Some(f64::NEG_INFINITY)),
        Some(other) => Err(format!("expected a number, found {other}")),
    }
}

impl Fit {
    /// The JSON artifact: `{"format": "tilestream-fit", "version": 1, "columns", "steps":
    /// [{"column", "op", "params"}], "fill_nan", "cast"}`.
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let params = match &s.op {
                    StepOp::With { expr } => json!({ "expr": expr }),
                    StepOp::Clip { lo, hi } => json!({ "lo": json_f64(Some(*lo)), "hi": json_f64(Some(*hi)) }),
                    StepOp::Log1p => json!({}),
                    StepOp::Standardize { mean, std } => json!({ "mean": json_f64(*mean), "std": json_f64(*std) }),
                    StepOp::MinMax { min, max } => json!({ "min": json_f64(*min), "max": json_f64(*max) }),
                };
                json!({ "column": s.column, "op": s.op.name(), "params": params })
            })
            .collect();
        json!({
            "format": "tilestream-fit",
            "version": 1,
            "columns": if self.selected { json!(self.columns) } else { Value::Null },
            "steps": steps,
            "fill_nan": json_f64(self.fill_nan),
            "cast": self.cast.map(|c| c.name()),
        })
    }

    /// Writes the JSON artifact (atomically).
    pub fn save(&self, path: &Path, force: bool) -> Result<()> {
        let file = crate::sink::atomic::AtomicFile::create(path, force)?;
        self.write_into(&file)?;
        file.commit()
    }

    /// Writes the JSON artifact into `file`, not yet committed (the CLI creates it before a
    /// transform's passes and commits it after the output).
    pub fn write_into(&self, file: &crate::sink::atomic::AtomicFile) -> Result<()> {
        let path = file.target();
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| Error::Fit { path: path.into(), message: e.to_string() })?;
        use std::io::{Seek, Write};
        let mut f = file.file();
        // From the start: a query rerun on the CPU writes it again.
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| f.write_all(text.as_bytes()))
            .and_then(|_| f.write_all(b"\n"))
            .map_err(|e| Error::io(path, e))
    }

    /// Reads a JSON artifact written by [`Fit::save`].
    pub fn load(path: &Path) -> Result<Fit> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Fit::from_json_str(&text).map_err(|message| Error::Fit { path: path.into(), message })
    }

    /// Parses the JSON artifact.
    pub fn from_json_str(text: &str) -> std::result::Result<Fit, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let o = v.as_object().ok_or("not a JSON object")?;
        if o.get("format").and_then(Value::as_str) != Some("tilestream-fit") {
            return Err("not a tilestream fit file (\"format\" is not \"tilestream-fit\")".into());
        }
        match o.get("version").and_then(Value::as_u64) {
            Some(1) => {}
            Some(v) => return Err(format!("unsupported fit version {v} (this tilestream reads version 1)")),
            None => return Err("missing or bad \"version\" (this tilestream reads version 1)".into()),
        }
        // "columns" (the output columns, in order) is optional: without it, every input
        // column is written, then the `with` columns.
        let columns = match o.get("columns") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|c| c.as_str().map(str::to_string).ok_or_else(|| "\"columns\" must be strings".to_string()))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            Some(other) => return Err(format!("\"columns\" must be a list, found {other}")),
        };
        let mut steps = Vec::new();
        for s in o.get("steps").and_then(Value::as_array).ok_or("missing \"steps\"")? {
            let s = s.as_object().ok_or("a step is not an object")?;
            let column = s.get("column").and_then(Value::as_str).ok_or("a step has no \"column\"")?.to_string();
            let empty = Map::new();
            let p = s.get("params").and_then(Value::as_object).unwrap_or(&empty);
            let num = |k: &str| f64_of(p.get(k)).map_err(|e| format!("step on `{column}`: {k}: {e}"));
            let req = |k: &str| num(k)?.ok_or_else(|| format!("step on `{column}` needs \"{k}\""));
            // A fitted parameter: null when the fit saw no value, but never left out.
            let fitted = |k: &str| {
                if !p.contains_key(k) {
                    return Err(format!("step on `{column}` needs \"{k}\" (null when the fit saw no value)"));
                }
                num(k)
            };
            let op = match s.get("op").and_then(Value::as_str).ok_or("a step has no \"op\"")? {
                "with" => StepOp::With { expr: p.get("expr").and_then(Value::as_str).ok_or("a with step needs \"expr\"")?.to_string() },
                "clip" => StepOp::Clip { lo: req("lo")?, hi: req("hi")? },
                "log1p" => StepOp::Log1p,
                "standardize" => {
                    let (mean, std) = (fitted("mean")?, fitted("std")?);
                    if std.is_some_and(|s| s < 0.0) {
                        return Err(format!("standardize of `{column}` needs std >= 0, got {}", std.unwrap_or(0.0)));
                    }
                    StepOp::Standardize { mean, std }
                }
                "minmax" => {
                    let (min, max) = (fitted("min")?, fitted("max")?);
                    // (A fit never gives a NaN bound: it skips NaN.)
                    if let (Some(lo), Some(hi)) = (min, max)
                        && (lo.is_nan() || hi.is_nan() || lo > hi || crate::accum::range_too_wide(lo, hi))
                    {
                        return Err(format!("minmax of `{column}` needs min <= max a finite width apart, got {lo}:{hi}"));
                    }
                    StepOp::MinMax { min, max }
                }
                other => return Err(format!("unknown step op `{other}`")),
            };
            if !columns.is_empty() && !columns.contains(&column) {
                return Err(format!("step on `{column}`, which is not among \"columns\""));
            }
            if let StepOp::Clip { lo, hi } = op
                && (lo.is_nan() || hi.is_nan() || lo > hi)
            {
                return Err(format!("clip of `{column}` needs lo <= hi, got {lo}:{hi}"));
            }
            // Steps of one column must follow the pipeline: with → clip → log1p → scale.
            let rank = |op: &StepOp| match op {
                StepOp::With { .. } => 0,
                StepOp::Clip { .. } => 1,
                StepOp::Log1p => 2,
                StepOp::Standardize { .. } | StepOp::MinMax { .. } => 3,
            };
            if let Some(prev) = steps.iter().rev().find(|s: &&Step| s.column == column) {
                let (a, b) = (rank(&prev.op), rank(&op));
                if b < a || (a == b && b != 1) {
                    return Err(format!(
                        "steps of `{column}` are out of pipeline order (with, clip, log1p, then standardize or minmax, once each): {} after {}",
                        op.name(),
                        prev.op.name()
                    ));
                }
            }
            steps.push(Step { column, op });
        }
        let fill_nan = f64_of(o.get("fill_nan")).map_err(|e| format!("fill_nan: {e}"))?;
        let cast = match o.get("cast") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                DType::from_name(s)
                    .filter(|d| matches!(d, DType::F32 | DType::F16 | DType::BF16))
                    .ok_or_else(|| format!("cast `{s}` is not f32, f16 or bf16"))?,
            ),
            Some(other) => return Err(format!("cast: expected a string, found {other}")),
        };
        Ok(Fit { selected: !columns.is_empty(), columns, steps, fill_nan, cast })
    }
}
