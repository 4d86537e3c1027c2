//! Loading a program into an executable plan, and running it.
//!
//! Loading decodes every compile-time value that a computing op reads (a
//! `const`, or a constexpr chain materialised bit-exactly by
//! [`mil::constexpr::Evaluator`](crate::mil::constexpr::Evaluator)) into the
//! const table once, resolves each computing op to its implementation and
//! its parameters to const entries or run-time slots, and computes where
//! each slot dies. Every unsupported op is found here, before any data is
//! touched, so a run either can run completely or fails at once.

use super::hooks::{Hook, WeightKind, WeightOp};
use super::ops::{self, Arg, OpCtx, OpFn, OutSpec};
use super::value::{conform, Value};
use super::{InterpError, OpSite, Result};
use crate::mil::constexpr::Evaluator;
use crate::mil::program::{is_constexpr, is_ordinary, op_name, FunctionIndex, Use};
use crate::mil::value::decode_value;
use crate::mil::{self, DType};
use crate::package::Package;
use crate::proto::mil::{argument::binding, dimension, value_type, Operation, ValueType};
use candle_core::{DType as CD, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Round every op output the program declares fp16 to fp16 precision
    /// (emulates fp16 storage; the default keeps f32 throughout).
    pub round_fp16: bool,
}

/// A function input or output as the program declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    /// Value name.
    pub name: String,
    /// Declared dtype.
    pub dtype: DType,
    /// Declared shape; `None` for a dimension that is not fixed.
    pub shape: Vec<Option<usize>>,
}

impl IoSpec {
    /// Whether `dims` fits the declared shape.
    pub fn accepts(&self, dims: &[usize]) -> bool {
        dims.len() == self.shape.len()
            && dims
                .iter()
                .zip(&self.shape)
                .all(|(&d, s)| s.is_none_or(|s| s == d))
    }

    /// The shape as text, `?` for free dimensions.
    pub fn shape_text(&self) -> String {
        let v: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or("?".into(), |d| d.to_string()))
            .collect();
        format!("[{}]", v.join(","))
    }
}

/// An op's const weight, for hooks.
#[derive(Debug, Clone)]
struct WeightRef {
    const_idx: usize,
    name: String,
    /// The parameter holding the activation.
    activation: &'static str,
    /// For matmul: whether the weight is `x`.
    matmul_weight_is_x: Option<bool>,
}

/// One computing op of the plan.
struct Step {
    position: usize,
    name: String,
    op_type: String,
    func: OpFn,
    params: Vec<(String, Vec<Arg>)>,
    outputs: Vec<OutSpec>,
    out_slots: Vec<usize>,
    /// Slots whose last reader is this step.
    free: Vec<usize>,
    weight: Option<WeightRef>,
}

/// Time per op type: (ops run, total wall time).
pub type Profile = BTreeMap<String, (usize, std::time::Duration)>;

/// Facts about an op with a const weight (see [`Interpreter::weight_ops`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightOpInfo {
    /// Index of the op in program order.
    pub position: usize,
    /// Op name.
    pub name: String,
    /// Op type.
    pub op_type: String,
    /// Weight value name.
    pub weight: String,
    /// Weight shape.
    pub shape: Vec<usize>,
}

/// A loaded program, ready to run any number of times.
pub struct Interpreter {
    path: PathBuf,
    function: String,
    opts: Options,
    inputs: Vec<IoSpec>,
    input_slots: Vec<usize>,
    outputs: Vec<IoSpec>,
    output_args: Vec<Arg>,
    consts: Vec<Value>,
    /// Per const: held as fp16 (see `compact_weights`).
    compact: Vec<bool>,
    const_by_name: BTreeMap<String, usize>,
    steps: Vec<Step>,
    n_slots: usize,
}

/// Dtype and (partially known) shape of a tensor `ValueType`.
fn io_type(vt: Option<&ValueType>) -> Option<(DType, Vec<Option<usize>>)> {
    let Some(value_type::Type::TensorType(tt)) = vt.and_then(|v| v.r#type.as_ref()) else {
        return None;
    };
    let dtype = DType::from_proto(tt.data_type)?;
    if tt.rank < 0 {
        return None;
    }
    let shape = tt
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(dimension::Dimension::Constant(c)) => usize::try_from(c.size).ok(),
            _ => None,
        })
        .collect();
    Some((dtype, shape))
}

impl Interpreter {
    /// Loads function `main` of an opened package (or its only function).
    pub fn load(pkg: &Package, opts: Options) -> Result<Self> {
        let path = pkg.model_path();
        let prog = pkg.program();
        let prog_err = |reason: String| InterpError::Program {
            path: path.clone(),
            reason,
        };
        let (fname, function) = match prog.functions.get_key_value("main") {
            Some(kv) => kv,
            None if prog.functions.len() == 1 => prog.functions.iter().next().expect("one"),
            None => return Err(prog_err("the program has no function 'main'".into())),
        };
        let idx = FunctionIndex::new(fname, function)
            .map_err(|e| InterpError::Lib(crate::Error::mil(&path, e)))?;
        let mut me = Interpreter {
            path: path.clone(),
            function: fname.clone(),
            opts,
            inputs: Vec::new(),
            input_slots: Vec::new(),
            outputs: Vec::new(),
            output_args: Vec::new(),
            consts: Vec::new(),
            compact: Vec::new(),
            const_by_name: BTreeMap::new(),
            steps: Vec::new(),
            n_slots: 0,
        };
        let mut names: HashMap<&str, Arg> = HashMap::new();
        // What the program declares for each slot (for the function outputs).
        let mut slot_specs: Vec<IoSpec> = Vec::new();
        for input in &function.inputs {
            let (dtype, shape) = io_type(input.r#type.as_ref()).ok_or_else(|| {
                prog_err(format!(
                    "function input '{}' is not a tensor (states and lists are not supported)",
                    input.name
                ))
            })?;
            names.insert(&input.name, Arg::Slot(me.n_slots));
            me.input_slots.push(me.n_slots);
            me.n_slots += 1;
            let spec = IoSpec {
                name: input.name.clone(),
                dtype,
                shape,
            };
            slot_specs.push(spec.clone());
            me.inputs.push(spec);
        }
        let mut ev = Evaluator::new(&idx, &pkg.blobs);
        let mil_err = |e: mil::MilError| InterpError::Lib(crate::Error::mil(&path, e));
        for (position, (id, op)) in idx.ops.iter().enumerate() {
            if !id.path.is_empty() {
                continue; // inside a control-flow op, which is refused below
            }
            let t = op.r#type.as_str();
            if t == "const" || is_constexpr(t) {
                if !feeds_computation(&idx, op) {
                    continue;
                }
                let vals = if t == "const" {
                    let first = op.outputs.first().map(|o| o.name.as_str()).unwrap_or("");
                    vec![ev
                        .value(first, &mil::program::op_label(op))
                        .map_err(mil_err)?]
                } else {
                    ev.materialize(op).map_err(mil_err)?
                };
                for (o, v) in op.outputs.iter().zip(vals) {
                    let val = Value::from_mil(&v).map_err(|r| me.op_error(position, op, r))?;
                    names.insert(&o.name, Arg::Const(me.consts.len()));
                    me.const_by_name.insert(o.name.clone(), me.consts.len());
                    // Large fp16 consts are held as fp16 from the start, so
                    // that loading never holds a whole UNet in f32;
                    // `compact_weights` widens those that turn out not to
                    // be conv/linear/matmul weights.
                    let val = narrow_large_fp16(val).map_err(cerr)?;
                    me.consts.push(val);
                }
                continue;
            }
            let func = match ops::registry().get(t) {
                Some(f) if op.blocks.is_empty() => *f,
                _ => {
                    return Err(InterpError::UnsupportedOp(Box::new(OpSite {
                        path: path.clone(),
                        function: fname.clone(),
                        op_type: t.to_string(),
                        name: op_name(op).unwrap_or_default(),
                        output: op
                            .outputs
                            .first()
                            .map(|o| o.name.clone())
                            .unwrap_or_default(),
                        position,
                        reason: String::new(),
                    })))
                }
            };
            let mut params = Vec::with_capacity(op.inputs.len());
            for (p, arg) in &op.inputs {
                let mut args = Vec::with_capacity(arg.arguments.len());
                for b in &arg.arguments {
                    args.push(match &b.binding {
                        Some(binding::Binding::Name(n)) => *names.get(n.as_str()).ok_or_else(|| {
                            me.op_error(
                                position,
                                op,
                                format!("parameter '{p}' reads '{n}', which is not defined before this op"),
                            )
                        })?,
                        Some(binding::Binding::Value(v)) => {
                            let ctx = format!("{} parameter '{p}'", mil::program::op_label(op));
                            let tv = decode_value(v, &pkg.blobs, &ctx).map_err(mil_err)?;
                            let val =
                                Value::from_mil(&tv).map_err(|r| me.op_error(position, op, r))?;
                            me.consts.push(val);
                            Arg::Const(me.consts.len() - 1)
                        }
                        None => {
                            return Err(me.op_error(
                                position,
                                op,
                                format!("parameter '{p}' has an empty binding"),
                            ))
                        }
                    });
                }
                params.push((p.clone(), args));
            }
            let mut outputs = Vec::with_capacity(op.outputs.len());
            let mut out_slots = Vec::with_capacity(op.outputs.len());
            for o in &op.outputs {
                let (dtype, shape) = io_type(o.r#type.as_ref()).ok_or_else(|| {
                    me.op_error(position, op, format!("output '{}' is not a tensor", o.name))
                })?;
                let fixed: Option<Vec<usize>> = shape.iter().copied().collect();
                slot_specs.push(IoSpec {
                    name: o.name.clone(),
                    dtype,
                    shape,
                });
                outputs.push(OutSpec {
                    name: o.name.clone(),
                    dtype,
                    shape: fixed,
                });
                names.insert(&o.name, Arg::Slot(me.n_slots));
                out_slots.push(me.n_slots);
                me.n_slots += 1;
            }
            let weight = weight_ref(t, &params, op, &me.const_by_name);
            me.steps.push(Step {
                position,
                name: op_name(op).unwrap_or_else(|| {
                    op.outputs
                        .first()
                        .map(|o| o.name.clone())
                        .unwrap_or_default()
                }),
                op_type: t.to_string(),
                func,
                params,
                outputs,
                out_slots,
                free: Vec::new(),
                weight,
            });
        }
        for out in &idx.block.outputs {
            let arg = *names
                .get(out.as_str())
                .ok_or_else(|| prog_err(format!("function output '{out}' is never defined")))?;
            let spec = match arg {
                Arg::Slot(s) => slot_specs[s].clone(),
                Arg::Const(c) => IoSpec {
                    name: out.clone(),
                    dtype: me.consts[c].dtype(),
                    shape: me.consts[c].shape().iter().map(|&d| Some(d)).collect(),
                },
            };
            me.outputs.push(IoSpec {
                name: out.clone(),
                ..spec
            });
            me.output_args.push(arg);
        }
        me.plan_liveness();
        me.compact_weights().map_err(|e| prog_err(e.to_string()))?;
        Ok(me)
    }

    /// Whether const `i` is held as fp16 (see [`Interpreter::compact_weights`]).
    fn compact_slot(&self, i: usize) -> bool {
        self.compact.get(i).copied().unwrap_or(false)
    }

    /// Holds large fp16 weights as fp16 instead of f32, halving the memory
    /// of a UNet's weights (1.7 GB instead of 3.4 GB at SD-1.5 size). Only
    /// consts read solely as the weight of conv/linear or as a matmul
    /// operand qualify: those ops widen their operands to f32 on every call
    /// (`f32t`), so results are unchanged; the values came from fp16, so
    /// holding them as fp16 is exact.
    fn compact_weights(&mut self) -> candle_core::Result<()> {
        let n = self.consts.len();
        let (mut used, mut ok) = (vec![false; n], vec![true; n]);
        for st in &self.steps {
            for (p, args) in &st.params {
                let fine = matches!(
                    (st.op_type.as_str(), p.as_str()),
                    ("conv" | "linear", "weight") | ("matmul", "x" | "y")
                );
                for a in args {
                    if let Arg::Const(c) = *a {
                        used[c] = true;
                        ok[c] &= fine;
                    }
                }
            }
        }
        for a in &self.output_args {
            if let Arg::Const(c) = *a {
                ok[c] = false;
            }
        }
        self.compact = vec![false; n];
        for i in 0..n {
            let Value::Tensor { t, dtype } = &self.consts[i] else {
                continue;
            };
            if t.dtype() != CD::F16 {
                continue;
            }
            if used[i] && ok[i] {
                self.compact[i] = true;
            } else {
                let w = t.to_dtype(CD::F32)?;
                self.consts[i] = Value::Tensor {
                    t: w,
                    dtype: *dtype,
                };
            }
        }
        Ok(())
    }

    /// Records, for each step, the slots that die after it.
    fn plan_liveness(&mut self) {
        const KEEP: usize = usize::MAX;
        let mut last: Vec<Option<usize>> = vec![None; self.n_slots];
        for (j, st) in self.steps.iter().enumerate() {
            for (_, args) in &st.params {
                for a in args {
                    if let Arg::Slot(s) = a {
                        last[*s] = Some(j);
                    }
                }
            }
        }
        for a in &self.output_args {
            if let Arg::Slot(s) = a {
                last[*s] = Some(KEEP);
            }
        }
        let mut frees: Vec<Vec<usize>> = vec![Vec::new(); self.steps.len()];
        for (j, st) in self.steps.iter().enumerate() {
            for &s in &st.out_slots {
                match last[s] {
                    // Produced but never read (an unused split output).
                    None => frees[j].push(s),
                    Some(KEEP) => {}
                    Some(k) => frees[k].push(s),
                }
            }
        }
        for &s in &self.input_slots {
            if let Some(k) = last[s].filter(|&k| k != KEEP) {
                frees[k].push(s);
            }
        }
        for (st, f) in self.steps.iter_mut().zip(frees) {
            st.free = f;
        }
    }

    fn op_error(&self, position: usize, op: &Operation, reason: impl Into<String>) -> InterpError {
        InterpError::Op(Box::new(OpSite {
            path: self.path.clone(),
            function: self.function.clone(),
            position,
            name: op_name(op).unwrap_or_default(),
            op_type: op.r#type.clone(),
            output: op
                .outputs
                .first()
                .map(|o| o.name.clone())
                .unwrap_or_default(),
            reason: reason.into(),
        }))
    }

    fn step_error(&self, st: &Step, reason: impl Into<String>) -> InterpError {
        InterpError::Op(Box::new(OpSite {
            path: self.path.clone(),
            function: self.function.clone(),
            position: st.position,
            name: st.name.clone(),
            op_type: st.op_type.clone(),
            output: st
                .outputs
                .first()
                .map(|o| o.name.clone())
                .unwrap_or_default(),
            reason: reason.into(),
        }))
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The function that runs.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The function's inputs, in declaration order.
    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    /// The function's outputs, in declaration order.
    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    /// Number of computing ops that run per forward pass.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// The largest number of run-time values alive at once during a pass
    /// (function inputs included), from the liveness plan.
    pub fn peak_live_values(&self) -> usize {
        let mut live = self.input_slots.len();
        let mut peak = live;
        for st in &self.steps {
            live += st.out_slots.len();
            peak = peak.max(live);
            live -= st.free.len();
        }
        peak
    }

    /// Every op whose weight is a compile-time value, in program order.
    pub fn weight_ops(&self) -> Vec<WeightOpInfo> {
        self.steps
            .iter()
            .filter_map(|st| {
                let w = st.weight.as_ref()?;
                Some(WeightOpInfo {
                    position: st.position,
                    name: st.name.clone(),
                    op_type: st.op_type.clone(),
                    weight: w.name.clone(),
                    shape: self.consts[w.const_idx].shape().to_vec(),
                })
            })
            .collect()
    }

    /// The current value of weight `name` (a const or constexpr output that
    /// a computing op reads), as f32 (widened when held as fp16).
    pub fn weight(&self, name: &str) -> Option<Tensor> {
        let t = self.consts[*self.const_by_name.get(name)?].tensor()?;
        if t.dtype() == CD::F32 {
            Some(t.clone())
        } else {
            t.to_dtype(CD::F32).ok()
        }
    }

    /// Replaces weight `name` for the following runs. The new value must
    /// have the same shape; it is used as given, whatever the declared
    /// dtype (an fp16 value of a weight held as fp16 stays fp16; any other
    /// is held as f32).
    pub fn set_weight(&mut self, name: &str, value: &mil::Tensor) -> Result<()> {
        let i = *self
            .const_by_name
            .get(name)
            .ok_or_else(|| InterpError::Usage(format!("no weight named '{name}'")))?;
        let old = &self.consts[i];
        if old.shape() != value.shape.as_slice() {
            return Err(InterpError::Usage(format!(
                "weight '{name}' has shape {:?}; the replacement has {:?}",
                old.shape(),
                value.shape
            )));
        }
        let dtype = old.dtype();
        if !dtype.is_float() || !value.dtype.is_float() {
            return Err(InterpError::Usage(format!(
                "weight '{name}': only float weights can be replaced"
            )));
        }
        let Value::Tensor { t, .. } = Value::from_mil(value).map_err(InterpError::Usage)? else {
            return Err(InterpError::Usage(format!(
                "weight '{name}' is not a tensor"
            )));
        };
        let t = if self.compact_slot(i) && value.dtype == DType::Fp16 {
            t.to_dtype(CD::F16).map_err(cerr)?
        } else {
            t
        };
        self.consts[i] = Value::Tensor { t, dtype };
        Ok(())
    }

    /// Runs the function once. `inputs` are f32 (or any candle dtype)
    /// tensors in the order of [`Interpreter::inputs`]; each is rounded to
    /// its declared dtype first. Returns the outputs as f32, in the order of
    /// [`Interpreter::outputs`].
    pub fn run(&self, inputs: &[Tensor], hook: Option<&mut dyn Hook>) -> Result<Vec<Tensor>> {
        self.run_profiled(inputs, hook, None)
    }

    /// [`Interpreter::run`], adding the wall time of every op to `profile`
    /// (by op type).
    pub fn run_profiled(
        &self,
        inputs: &[Tensor],
        hook: Option<&mut dyn Hook>,
        profile: Option<&mut Profile>,
    ) -> Result<Vec<Tensor>> {
        self.exec(inputs, hook, profile, None)
            .map(|o| o.expect("a full run returns outputs"))
    }

    /// Runs the function only as far as the hooks need: every step up to
    /// and including the hook of the op at program position `last` (that op
    /// itself is not run). Calibration of one stage of a sequential prune
    /// does not need the rest of the network.
    pub fn run_hooks_until(
        &self,
        inputs: &[Tensor],
        hook: &mut dyn Hook,
        last: usize,
    ) -> Result<()> {
        self.exec(inputs, Some(hook), None, Some(last)).map(|_| ())
    }

    fn exec(
        &self,
        inputs: &[Tensor],
        hook: Option<&mut dyn Hook>,
        mut profile: Option<&mut Profile>,
        stop: Option<usize>,
    ) -> Result<Option<Vec<Tensor>>> {
        let mut hook = hook;
        if inputs.len() != self.inputs.len() {
            return Err(InterpError::Usage(format!(
                "{} inputs given, the program has {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        let mut slots: Vec<Option<Value>> = vec![None; self.n_slots];
        for ((spec, &slot), t) in self.inputs.iter().zip(&self.input_slots).zip(inputs) {
            if !spec.accepts(t.dims()) {
                return Err(InterpError::Usage(format!(
                    "input '{}' has shape {:?}, the program declares {}",
                    spec.name,
                    t.dims(),
                    spec.shape_text()
                )));
            }
            let t = conform(
                input_rounding(t, spec.dtype).map_err(cerr)?,
                spec.dtype,
                false,
            )
            .map_err(cerr)?;
            slots[slot] = Some(Value::Tensor {
                t,
                dtype: spec.dtype,
            });
        }
        for st in &self.steps {
            let t0 = profile.as_ref().map(|_| std::time::Instant::now());
            let outs = {
                let ctx = OpCtx {
                    params: &st.params,
                    outputs: &st.outputs,
                    slots: &slots,
                    consts: &self.consts,
                };
                if let (Some(h), Some(w)) = (hook.as_mut(), &st.weight) {
                    self.call_hook(&mut **h, st, w, &ctx)?;
                }
                if stop.is_some_and(|last| st.position >= last) {
                    return Ok(None);
                }
                (st.func)(&ctx).map_err(|e| self.step_error(st, e.0))?
            };
            if outs.len() != st.outputs.len() {
                return Err(self.step_error(
                    st,
                    format!(
                        "produced {} outputs, the program declares {}",
                        outs.len(),
                        st.outputs.len()
                    ),
                ));
            }
            for ((t, spec), &slot) in outs.into_iter().zip(&st.outputs).zip(&st.out_slots) {
                let t = conform(t, spec.dtype, self.opts.round_fp16)
                    .map_err(|e| self.step_error(st, e.to_string()))?;
                if let Some(shape) = &spec.shape {
                    if t.dims() != shape.as_slice() {
                        return Err(self.step_error(
                            st,
                            format!(
                                "computed output '{}' of shape {:?}, the program declares {:?}",
                                spec.name,
                                t.dims(),
                                shape
                            ),
                        ));
                    }
                }
                slots[slot] = Some(Value::Tensor {
                    t,
                    dtype: spec.dtype,
                });
            }
            for &s in &st.free {
                slots[s] = None;
            }
            if let (Some(p), Some(t0)) = (profile.as_mut(), t0) {
                let e = p.entry(st.op_type.clone()).or_default();
                e.0 += 1;
                e.1 += t0.elapsed();
            }
        }
        let mut out = Vec::with_capacity(self.output_args.len());
        for (arg, spec) in self.output_args.iter().zip(&self.outputs) {
            let v = match *arg {
                Arg::Slot(s) => slots[s].take(),
                Arg::Const(c) => Some(self.consts[c].clone()),
            };
            let t = v
                .and_then(|v| v.tensor().cloned())
                .ok_or_else(|| InterpError::Program {
                    path: self.path.clone(),
                    reason: format!("output '{}' was not computed", spec.name),
                })?;
            out.push(
                t.to_dtype(CD::F32)
                    .map_err(cerr)?
                    .contiguous()
                    .map_err(cerr)?,
            );
        }
        Ok(Some(out))
    }

    fn call_hook(&self, h: &mut dyn Hook, st: &Step, w: &WeightRef, ctx: &OpCtx<'_>) -> Result<()> {
        let err = |e: ops::OpError| self.step_error(st, e.0);
        let input = ctx.tensor(w.activation).map_err(err)?;
        let weight = self.consts[w.const_idx].shape();
        let kind = match st.op_type.as_str() {
            "conv" => {
                WeightKind::Conv(ops::conv::geometry(ctx, input.dims(), weight).map_err(err)?)
            }
            "linear" => WeightKind::Linear,
            _ => WeightKind::Matmul {
                weight_is_x: w.matmul_weight_is_x.unwrap_or(false),
                transpose_x: ctx.bool_or("transpose_x", false).map_err(err)?,
                transpose_y: ctx.bool_or("transpose_y", false).map_err(err)?,
            },
        };
        let info = WeightOp {
            position: st.position,
            name: &st.name,
            op_type: &st.op_type,
            weight: &w.name,
            weight_shape: weight,
            kind,
        };
        h.before_weight_op(&info, input)
            .map_err(|e| self.step_error(st, format!("hook: {e}")))
    }
}

fn cerr(e: candle_core::Error) -> InterpError {
    InterpError::Usage(e.to_string().lines().next().unwrap_or("").to_string())
}

/// Consts of at least this many fp16 elements may be held as fp16.
const COMPACT_MIN_ELEMENTS: usize = 4096;

/// `v` as an fp16 tensor when it is a large fp16 const (exact: its values
/// came from fp16), else unchanged.
fn narrow_large_fp16(v: Value) -> candle_core::Result<Value> {
    match v {
        Value::Tensor { t, dtype }
            if dtype == DType::Fp16 && t.elem_count() >= COMPACT_MIN_ELEMENTS =>
        {
            Ok(Value::Tensor {
                t: t.to_dtype(CD::F16)?,
                dtype,
            })
        }
        v => Ok(v),
    }
}

/// Rounds an input to its declared float precision (fp16 inputs lose what
/// fp16 cannot hold, as on device).
fn input_rounding(t: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    match dtype {
        DType::Fp16 => t.to_dtype(CD::F16)?.to_dtype(CD::F32),
        d if d.is_float() => t.to_dtype(CD::F32),
        _ => Ok(t.clone()),
    }
}

/// Whether some output of a const/constexpr op is read by a computing op or
/// is a block output (as opposed to feeding only other constexpr ops).
fn feeds_computation(idx: &FunctionIndex<'_>, op: &Operation) -> bool {
    op.outputs.iter().any(|o| {
        idx.uses(&o.name).iter().any(|u| match u {
            Use::Input { op: j, .. } => is_ordinary(&idx.ops[*j].1.r#type),
            Use::BlockOutput { .. } => true,
        })
    })
}

/// The const weight of conv / linear / matmul, if it has one.
fn weight_ref(
    t: &str,
    params: &[(String, Vec<Arg>)],
    op: &Operation,
    const_by_name: &BTreeMap<String, usize>,
) -> Option<WeightRef> {
    let single = |p: &str| -> Option<(Arg, String)> {
        let (_, args) = params.iter().find(|(n, _)| n == p)?;
        let [a] = args.as_slice() else { return None };
        let name = match op.inputs.get(p)?.arguments.first()?.binding.as_ref()? {
            binding::Binding::Name(n) => n.clone(),
            binding::Binding::Value(_) => format!("{}.{p}", op_name(op).unwrap_or_default()),
        };
        Some((*a, name))
    };
    let konst = |p: &str| -> Option<(usize, String)> {
        match single(p)? {
            (Arg::Const(i), n) => Some((i, n)),
            _ => None,
        }
    };
    let _ = const_by_name;
    match t {
        "conv" | "linear" => konst("weight").map(|(i, name)| WeightRef {
            const_idx: i,
            name,
            activation: "x",
            matmul_weight_is_x: None,
        }),
        "matmul" => match (konst("x"), konst("y")) {
            (None, Some((i, name))) => Some(WeightRef {
                const_idx: i,
                name,
                activation: "x",
                matmul_weight_is_x: Some(false),
            }),
            (Some((i, name)), None) => Some(WeightRef {
                const_idx: i,
                name,
                activation: "y",
                matmul_weight_is_x: Some(true),
            }),
            _ => None,
        },
        _ => None,
    }
}
