//! The op implementations, one file per family, behind a registry that maps
//! an op type to its function. Adding an op is one function and one line in
//! its family's `register`.
//!
//! An op function reads its parameters through [`OpCtx`] (by MIL parameter
//! name, with the defaults coremltools documents applied by the op) and
//! returns one candle tensor per declared output. The runner then converts
//! each to the representation of its declared dtype and checks its shape
//! against the program's declaration.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod image;
pub mod linear_algebra;
pub mod normalization;
pub mod reduction;
pub mod shape;
pub(crate) mod util;

use super::value::Value;
use crate::mil::DType;
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Why an op failed (the runner adds which op).
#[derive(Debug, Clone, PartialEq)]
pub struct OpError(pub String);

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> Self {
        // candle's messages can span lines (shapes, backtraces); keep the first.
        let s = e.to_string();
        OpError(s.lines().next().unwrap_or("candle error").to_string())
    }
}

/// Shorthand for an [`OpError`] result.
pub fn bail<T>(msg: impl Into<String>) -> Result<T, OpError> {
    Err(OpError(msg.into()))
}

/// An op's implementation.
pub type OpFn = fn(&OpCtx<'_>) -> Result<Vec<Tensor>, OpError>;

/// Op type → implementation.
pub type Registry = HashMap<&'static str, OpFn>;

/// Every supported op type.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = Registry::new();
        activation::register(&mut r);
        attention::register(&mut r);
        conv::register(&mut r);
        elementwise::register(&mut r);
        image::register(&mut r);
        linear_algebra::register(&mut r);
        normalization::register(&mut r);
        reduction::register(&mut r);
        shape::register(&mut r);
        r
    })
}

/// Where a parameter's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A run-time value slot (function input or op output).
    Slot(usize),
    /// An entry of the const table.
    Const(usize),
}

/// What the program declares about an output.
#[derive(Debug, Clone)]
pub(crate) struct OutSpec {
    /// Value name.
    pub name: String,
    /// Declared dtype.
    pub dtype: DType,
    /// Declared shape when every dimension is known.
    pub shape: Option<Vec<usize>>,
}

/// An op's view of its inputs while it runs.
pub struct OpCtx<'a> {
    pub(crate) params: &'a [(String, Vec<Arg>)],
    pub(crate) outputs: &'a [OutSpec],
    pub(crate) slots: &'a [Option<Value>],
    pub(crate) consts: &'a [Value],
}

impl<'a> OpCtx<'a> {
    fn args(&self, p: &str) -> Option<&'a [Arg]> {
        self.params
            .iter()
            .find(|(n, _)| n == p)
            .map(|(_, a)| a.as_slice())
    }

    fn resolve(&self, a: Arg, p: &str) -> Result<&'a Value, OpError> {
        match a {
            Arg::Const(i) => self
                .consts
                .get(i)
                .ok_or_else(|| OpError(format!("parameter '{p}': bad const index"))),
            Arg::Slot(i) => self
                .slots
                .get(i)
                .and_then(|v| v.as_ref())
                .ok_or_else(|| OpError(format!("parameter '{p}': value is not available"))),
        }
    }

    /// Whether parameter `p` is bound.
    pub fn has(&self, p: &str) -> bool {
        self.args(p).is_some()
    }

    /// Whether parameter `p` is bound to a compile-time value.
    pub fn is_const(&self, p: &str) -> bool {
        matches!(self.args(p), Some([Arg::Const(_)]))
    }

    /// The single value bound to `p`, if any.
    pub fn opt(&self, p: &str) -> Result<Option<&'a Value>, OpError> {
        match self.args(p) {
            None => Ok(None),
            Some([a]) => self.resolve(*a, p).map(Some),
            Some(a) => bail(format!(
                "parameter '{p}' has {} bindings, expected one",
                a.len()
            )),
        }
    }

    /// The single value bound to required parameter `p`.
    pub fn value(&self, p: &str) -> Result<&'a Value, OpError> {
        self.opt(p)?
            .ok_or_else(|| OpError(format!("missing parameter '{p}'")))
    }

    /// Every value bound to variadic parameter `p` (`concat.values`, ...).
    pub fn values(&self, p: &str) -> Result<Vec<&'a Value>, OpError> {
        let a = self
            .args(p)
            .ok_or_else(|| OpError(format!("missing parameter '{p}'")))?;
        a.iter().map(|&x| self.resolve(x, p)).collect()
    }

    /// The tensor bound to required parameter `p`.
    pub fn tensor(&self, p: &str) -> Result<&'a Tensor, OpError> {
        self.value(p)?
            .tensor()
            .ok_or_else(|| OpError(format!("parameter '{p}' is not a tensor")))
    }

    /// The tensor bound to optional parameter `p`.
    pub fn opt_tensor(&self, p: &str) -> Result<Option<&'a Tensor>, OpError> {
        match self.opt(p)? {
            None => Ok(None),
            Some(v) => v
                .tensor()
                .map(Some)
                .ok_or_else(|| OpError(format!("parameter '{p}' is not a tensor"))),
        }
    }

    /// Integer elements of `p` (any rank, row-major).
    pub fn opt_ints(&self, p: &str) -> Result<Option<Vec<i64>>, OpError> {
        match self.opt_tensor(p)? {
            None => Ok(None),
            Some(t) => Ok(Some(util::to_i64(t)?)),
        }
    }

    /// Integer elements of required parameter `p`.
    pub fn ints(&self, p: &str) -> Result<Vec<i64>, OpError> {
        self.opt_ints(p)?
            .ok_or_else(|| OpError(format!("missing parameter '{p}'")))
    }

    /// Integer scalar `p`, or `default` when unbound.
    pub fn int_or(&self, p: &str, default: i64) -> Result<i64, OpError> {
        match self.opt_ints(p)? {
            None => Ok(default),
            Some(v) if v.len() == 1 => Ok(v[0]),
            Some(v) => bail(format!(
                "parameter '{p}' must be a scalar, has {} elements",
                v.len()
            )),
        }
    }

    /// Float scalar `p`, or `default` when unbound.
    pub fn float_or(&self, p: &str, default: f64) -> Result<f64, OpError> {
        match self.opt_tensor(p)? {
            None => Ok(default),
            Some(t) if t.elem_count() == 1 => Ok(f64::from(
                t.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?[0],
            )),
            Some(t) => bail(format!(
                "parameter '{p}' must be a scalar, has {} elements",
                t.elem_count()
            )),
        }
    }

    /// Bool scalar `p`, or `default` when unbound.
    pub fn bool_or(&self, p: &str, default: bool) -> Result<bool, OpError> {
        Ok(self.int_or(p, i64::from(default))? != 0)
    }

    /// Bool elements of `p`, if bound.
    pub fn opt_bools(&self, p: &str) -> Result<Option<Vec<bool>>, OpError> {
        Ok(self
            .opt_ints(p)?
            .map(|v| v.into_iter().map(|x| x != 0).collect()))
    }

    /// String parameter `p`, or `default` when unbound.
    pub fn str_or(&self, p: &str, default: &'a str) -> Result<&'a str, OpError> {
        match self.opt(p)? {
            None => Ok(default),
            Some(Value::Text(s)) => Ok(s),
            Some(_) => bail(format!("parameter '{p}' must be a string")),
        }
    }

    /// Declared dtype of output `k`.
    pub fn out_dtype(&self, k: usize) -> DType {
        self.outputs.get(k).map_or(DType::Fp32, |o| o.dtype)
    }

    /// Number of declared outputs.
    pub fn n_outputs(&self) -> usize {
        self.outputs.len()
    }
}

/// Runs a single op on the given parameter values: the entry point of the
/// per-op unit tests, and of anyone who wants one op without a program.
/// Outputs are conformed to `out_dtypes` as the interpreter would.
pub fn run_op(
    op_type: &str,
    params: &[(&str, Vec<Value>)],
    out_dtypes: &[DType],
) -> Result<Vec<Tensor>, OpError> {
    let f = registry()
        .get(op_type)
        .ok_or_else(|| OpError(format!("unsupported op '{op_type}'")))?;
    let mut consts = Vec::new();
    let mut bound = Vec::new();
    for (name, vals) in params {
        let mut args = Vec::new();
        for v in vals {
            args.push(Arg::Const(consts.len()));
            consts.push(v.clone());
        }
        bound.push((name.to_string(), args));
    }
    let outputs: Vec<OutSpec> = out_dtypes
        .iter()
        .enumerate()
        .map(|(i, &dtype)| OutSpec {
            name: format!("out{i}"),
            dtype,
            shape: None,
        })
        .collect();
    let ctx = OpCtx {
        params: &bound,
        outputs: &outputs,
        slots: &[],
        consts: &consts,
    };
    let outs = f(&ctx)?;
    outs.into_iter()
        .zip(out_dtypes)
        .map(|(t, &d)| super::value::conform(t, d, false).map_err(OpError::from))
        .collect()
}
