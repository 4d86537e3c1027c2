//! Program model: per function, every op in program order (nested blocks
//! included, pre-order), who produces each value and who consumes it.

use super::MilError;
use crate::proto::mil::{self, argument::binding, Block, Operation};
use std::collections::BTreeMap;

/// Position of an op: the path of (op index, block index) pairs through
/// nested blocks, then its index in the innermost block.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId {
    /// Enclosing ops and their block indices, outermost first.
    pub path: Vec<(usize, usize)>,
    /// Index in the innermost block.
    pub index: usize,
}

/// One use of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// Parameter `param` (argument `arg` for variadic parameters) of an op.
    Input {
        /// The consuming op (index into [`FunctionIndex::ops`]).
        op: usize,
        /// Parameter name.
        param: String,
        /// Position within the parameter's bindings.
        arg: usize,
    },
    /// An output of a block (`None` = the function's main block).
    BlockOutput {
        /// The op owning the block, or `None` for the function body.
        owner: Option<usize>,
    },
}

/// Index over one function.
#[derive(Debug)]
pub struct FunctionIndex<'a> {
    /// Function name.
    pub name: &'a str,
    /// Opset string (`CoreML8`, ...).
    pub opset: &'a str,
    /// The function (for its inputs and attributes).
    pub function: &'a mil::Function,
    /// The active block (`block_specializations[opset]`).
    pub block: &'a Block,
    /// Every op, pre-order, with its position.
    pub ops: Vec<(OpId, &'a Operation)>,
    /// Value name → (op index, output index).
    pub producer: BTreeMap<&'a str, (usize, usize)>,
    /// Value name → uses, in program order.
    pub consumers: BTreeMap<&'a str, Vec<Use>>,
}

/// Whether `t` names a `constexpr_*` op.
pub fn is_constexpr(t: &str) -> bool {
    t.starts_with("constexpr_")
}

/// Whether an op is an ordinary (computing) op: not `const`, not constexpr.
pub fn is_ordinary(t: &str) -> bool {
    t != "const" && !is_constexpr(t)
}

/// The op's `name` attribute, if it is a string scalar.
pub fn op_name(op: &Operation) -> Option<String> {
    let v = op.attributes.get("name")?;
    match v.value.as_ref()? {
        mil::value::Value::ImmediateValue(iv) => match iv.value.as_ref()? {
            mil::value::immediate_value::Value::Tensor(t) => match t.value.as_ref()? {
                mil::tensor_value::Value::Strings(s) if s.values.len() == 1 => {
                    Some(String::from_utf8_lossy(&s.values[0]).into_owned())
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// A short human label for an op: `'name' (type)`, falling back to the
/// first output name.
pub fn op_label(op: &Operation) -> String {
    let name = op_name(op)
        .or_else(|| op.outputs.first().map(|o| o.name.clone()))
        .unwrap_or_default();
    format!("op '{name}' ({})", op.r#type)
}

impl<'a> FunctionIndex<'a> {
    /// Indexes function `name`.
    pub fn new(name: &'a str, function: &'a mil::Function) -> Result<Self, MilError> {
        let ctx = format!("function '{name}'");
        let block = function
            .block_specializations
            .get(&function.opset)
            .ok_or_else(|| {
                MilError::invalid(
                    &ctx,
                    format!("opset '{}' has no block specialization", function.opset),
                )
            })?;
        let mut idx = FunctionIndex {
            name,
            opset: &function.opset,
            function,
            block,
            ops: Vec::new(),
            producer: BTreeMap::new(),
            consumers: BTreeMap::new(),
        };
        idx.walk(block, &[], None, &ctx)?;
        Ok(idx)
    }

    fn walk(
        &mut self,
        block: &'a Block,
        path: &[(usize, usize)],
        owner: Option<usize>,
        ctx: &str,
    ) -> Result<(), MilError> {
        for (i, op) in block.operations.iter().enumerate() {
            let me = self.ops.len();
            self.ops.push((
                OpId {
                    path: path.to_vec(),
                    index: i,
                },
                op,
            ));
            for (param, arg) in &op.inputs {
                for (k, b) in arg.arguments.iter().enumerate() {
                    if let Some(binding::Binding::Name(n)) = &b.binding {
                        self.consumers
                            .entry(n.as_str())
                            .or_default()
                            .push(Use::Input {
                                op: me,
                                param: param.clone(),
                                arg: k,
                            });
                    }
                }
            }
            for (k, out) in op.outputs.iter().enumerate() {
                if self.producer.insert(out.name.as_str(), (me, k)).is_some() {
                    return Err(MilError::invalid(
                        ctx,
                        format!("value '{}' is defined twice", out.name),
                    ));
                }
            }
            for (bi, inner) in op.blocks.iter().enumerate() {
                let mut p = path.to_vec();
                p.push((i, bi));
                self.walk(inner, &p, Some(me), ctx)?;
            }
        }
        for out in &block.outputs {
            self.consumers
                .entry(out.as_str())
                .or_default()
                .push(Use::BlockOutput { owner });
        }
        Ok(())
    }

    /// Uses of value `name` (empty if unused).
    pub fn uses(&self, name: &str) -> &[Use] {
        self.consumers.get(name).map_or(&[], |v| v.as_slice())
    }

    /// The op that produces `name`, if any (function inputs have none).
    pub fn producer_op(&self, name: &str) -> Option<(usize, &'a Operation)> {
        let &(i, _) = self.producer.get(name)?;
        Some((i, self.ops[i].1))
    }

    /// Op-type histogram (every op, nested blocks included).
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for (_, op) in &self.ops {
            *h.entry(op.r#type.clone()).or_insert(0) += 1;
        }
        h
    }
}

/// The value bound to parameter `param` of `op`: first from `inputs`
/// (iOS18 form, ordinary ops), then from `attributes` (iOS16 constexpr form).
pub enum Param<'a> {
    /// A reference to a named value.
    Name(&'a str),
    /// An inline value.
    Value(&'a mil::Value),
}

/// Looks up a single-binding parameter of `op`.
pub fn param<'a>(op: &'a Operation, name: &str) -> Result<Option<Param<'a>>, MilError> {
    if let Some(arg) = op.inputs.get(name) {
        if arg.arguments.len() != 1 {
            return Err(MilError::invalid(
                format!("{} parameter '{name}'", op_label(op)),
                format!("expected one binding, found {}", arg.arguments.len()),
            ));
        }
        return match &arg.arguments[0].binding {
            Some(binding::Binding::Name(n)) => Ok(Some(Param::Name(n))),
            Some(binding::Binding::Value(v)) => Ok(Some(Param::Value(v))),
            None => Err(MilError::invalid(
                format!("{} parameter '{name}'", op_label(op)),
                "empty binding",
            )),
        };
    }
    Ok(op.attributes.get(name).map(Param::Value))
}
