//! Deployment targets: which opset an output needs, and moving a program to
//! a newer opset when the user allows it.
//!
//! Upgrading is more than a relabel in two cases, which we refuse rather
//! than silently break: iOS16-form constexpr ops (their iOS18 namesakes have
//! other signatures), and gather/scatter ops with run-time indices coming
//! from before iOS17 (negative indices stopped being accepted).

use crate::model::{target_for_opset, target_for_spec, Target, TARGETS};
use crate::proto::mil::{self, Block};
use crate::proto::spec::{model::Type, Model};

/// The oldest opset among the program's functions (its effective target).
pub fn program_target(m: &Model) -> Option<&'static Target> {
    let Some(Type::MlProgram(p)) = &m.r#type else {
        return None;
    };
    p.functions
        .values()
        .filter_map(|f| target_for_opset(&f.opset))
        .min_by_key(|t| t.spec)
        .or_else(|| target_for_spec(m.specification_version))
}

/// The target for spec version `spec`.
pub fn target(spec: i32) -> &'static Target {
    target_for_spec(spec).unwrap_or(&TARGETS[TARGETS.len() - 1])
}

fn walk<'a>(b: &'a Block, f: &mut dyn FnMut(&'a mil::Operation)) {
    for op in &b.operations {
        f(op);
        for inner in &op.blocks {
            walk(inner, f);
        }
    }
}

/// Why `m` cannot simply be relabelled to `to`, if it cannot. With
/// `rewrites_sparse`, iOS16-form `constexpr_sparse_to_dense` ops are no
/// obstacle: the pass rewrites every one of them in the output's form.
pub fn upgrade_blockers(m: &Model, to: &Target, rewrites_sparse: bool) -> Option<String> {
    let Some(Type::MlProgram(p)) = &m.r#type else {
        return None;
    };
    let from = program_target(m)?;
    let mut why = None;
    for f in p.functions.values() {
        let Some(b) = f.block_specializations.get(&f.opset) else {
            continue;
        };
        walk(b, &mut |op| {
            if why.is_some() {
                return;
            }
            let t = op.r#type.as_str();
            if to.spec >= 9
                && matches!(
                    t,
                    "constexpr_lut_to_dense" | "constexpr_sparse_to_dense" | "constexpr_cast"
                )
                && op.inputs.is_empty()
                && !(rewrites_sparse && t == "constexpr_sparse_to_dense")
            {
                why = Some(format!(
                    "it holds iOS16-form {t} ops, which have other signatures from iOS18 on (run `sdcompress decompress` first)"
                ));
            }
            if from.spec < 8
                && to.spec >= 8
                && (t.starts_with("gather") || t.starts_with("scatter"))
                && op.inputs.get("indices").is_some_and(|a| {
                    a.arguments.iter().any(|b| {
                        matches!(b.binding, Some(mil::argument::binding::Binding::Name(_)))
                    })
                })
            {
                why = Some(format!(
                    "it has a {t} op with run-time indices, whose negative-index semantics changed in iOS17"
                ));
            }
        });
    }
    why
}

/// Relabels every function to `to`'s opset and raises the spec version
/// (never lowers it), as coremltools does.
pub fn upgrade(m: &mut Model, to: &Target) {
    if m.specification_version < to.spec {
        m.specification_version = to.spec;
    }
    let Some(Type::MlProgram(p)) = &mut m.r#type else {
        return;
    };
    for f in p.functions.values_mut() {
        let cur = target_for_opset(&f.opset).map_or(0, |t| t.spec);
        if cur >= to.spec {
            continue;
        }
        if let Some(b) = f.block_specializations.remove(&f.opset) {
            f.block_specializations.insert(to.opset.to_string(), b);
        }
        f.opset = to.opset.to_string();
    }
}

/// The target an output must be written for: at least the model's own, at
/// least `min_spec`, at least iOS16 when anything is compressed (constexpr
/// ops start there), and iOS18 when `ios18_reason` says a setting needs it
/// (allowed only with `upgrade`). Refuses upgrades that would change the
/// meaning of an op (see [`upgrade_blockers`] for `rewrites_sparse`).
pub fn output_target(
    m: &Model,
    any: bool,
    ios18_reason: Option<&str>,
    upgrade: bool,
    min_spec: Option<i32>,
    rewrites_sparse: bool,
) -> Result<&'static Target, String> {
    let cur = program_target(m).ok_or("the program has no known opset")?;
    let mut want = cur.spec.max(min_spec.unwrap_or(0));
    if any {
        want = want.max(7);
    }
    if let Some(why) = ios18_reason {
        if want < 9 {
            if !upgrade {
                return Err(format!(
                    "{why} need the iOS18 opset (CoreML8), but the model targets {} ({})\nhint: pass --upgrade-opset (or --target ios18) to move the program to iOS18; the package will then need iOS18/macOS15",
                    cur.ios, cur.opset
                ));
            }
            want = 9;
        }
    }
    let out = target_for_spec(want).ok_or("unknown target")?;
    if out.spec > cur.spec {
        if let Some(why) = upgrade_blockers(m, out, rewrites_sparse) {
            return Err(format!(
                "cannot move the program from {} to {}: {why}",
                cur.ios, out.ios
            ));
        }
    }
    Ok(out)
}

/// Refuses a package that already holds constexpr (compressed) ops; with
/// `sparse_ok`, inline `constexpr_sparse_to_dense` ops (pruned weights, the
/// input of joint compression) are accepted and only other constexpr ops
/// are refused.
pub fn refuse_compressed(p: &mil::Program, what: &str, sparse_ok: bool) -> Result<(), String> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut other = false;
    for f in p.functions.values() {
        let Some(b) = f.block_specializations.get(&f.opset) else {
            continue;
        };
        walk(b, &mut |op| {
            if op.r#type.starts_with("constexpr_") {
                *counts.entry(op.r#type.as_str()).or_default() += 1;
                other |= !(sparse_ok && crate::compress::select::is_inline_sparse(op));
            }
        });
    }
    if !other {
        return Ok(());
    }
    let list: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    Err(format!(
        "the package is already compressed ({}); {what} it again is not supported\nhint: run `sdcompress decompress` first to start from dense weights",
        list.join(", ")
    ))
}
