//! Values the interpreter passes between ops: a candle tensor tagged with
//! the MIL dtype it stands for, or a string (op parameters such as
//! `pad_type`). Floats are held as f32, integers as i64, bools as u8.

use crate::mil::{self, DType};
use candle_core::{DType as CD, Device, Tensor};

/// A value of the program.
#[derive(Debug, Clone)]
pub enum Value {
    /// A numeric tensor and the dtype the program declares for it.
    Tensor {
        /// The data (f32 for floats, i64 for integers, u8 for bools).
        t: Tensor,
        /// The declared MIL dtype.
        dtype: DType,
    },
    /// A string scalar.
    Text(String),
}

/// The candle dtype that holds values of MIL dtype `d`.
pub fn repr(d: DType) -> CD {
    if d.is_float() {
        CD::F32
    } else if d == DType::Bool {
        CD::U8
    } else {
        CD::I64
    }
}

/// Converts `t` to the representation of `dtype`; with `round_fp16`, fp16
/// values are rounded to fp16 precision first.
pub fn conform(t: Tensor, dtype: DType, round_fp16: bool) -> candle_core::Result<Tensor> {
    let t = if dtype == DType::Bool && t.dtype() != CD::U8 {
        // Any non-zero value is true (MIL bool), not a numeric u8 cast.
        t.ne(0f64)?
    } else if t.dtype() != repr(dtype) {
        t.to_dtype(repr(dtype))?
    } else {
        t
    };
    if round_fp16 && dtype == DType::Fp16 {
        t.to_dtype(CD::F16)?.to_dtype(CD::F32)
    } else {
        Ok(t)
    }
}

impl Value {
    /// Decodes a compile-time MIL tensor.
    pub fn from_mil(x: &mil::Tensor) -> Result<Self, String> {
        use mil::Data;
        if x.dtype == DType::Str {
            let s = x
                .as_str()
                .ok_or_else(|| "string tensors other than scalars are not supported".to_string())?;
            return Ok(Value::Text(String::from_utf8_lossy(s).into_owned()));
        }
        let shape = x.shape.clone();
        let dev = &Device::Cpu;
        let e = |e: candle_core::Error| e.to_string();
        let t = match &x.data {
            Data::F16(_) | Data::F32(_) | Data::F64(_) => {
                let v = x.to_f32().expect("float data");
                Tensor::from_vec(v, shape, dev).map_err(e)?
            }
            Data::Raw(_) => return Err(format!("{} values are not supported", x.dtype)),
            Data::Str(_) => unreachable!("handled above"),
            _ if x.dtype == DType::Bool => {
                let v: Vec<u8> = x
                    .to_i64()
                    .expect("bool data")
                    .into_iter()
                    .map(|b| u8::from(b != 0))
                    .collect();
                Tensor::from_vec(v, shape, dev).map_err(e)?
            }
            _ => {
                let v = x.to_i64().expect("integer data");
                Tensor::from_vec(v, shape, dev).map_err(e)?
            }
        };
        Ok(Value::Tensor { t, dtype: x.dtype })
    }

    /// A float value from f32 data.
    pub fn from_f32(v: Vec<f32>, shape: &[usize], dtype: DType) -> candle_core::Result<Self> {
        Ok(Value::Tensor {
            t: Tensor::from_vec(v, shape, &Device::Cpu)?,
            dtype,
        })
    }

    /// The tensor, if this is one.
    pub fn tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor { t, .. } => Some(t),
            Value::Text(_) => None,
        }
    }

    /// The declared dtype (`Str` for text).
    pub fn dtype(&self) -> DType {
        match self {
            Value::Tensor { dtype, .. } => *dtype,
            Value::Text(_) => DType::Str,
        }
    }

    /// The shape (`[]` for text).
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Tensor { t, .. } => t.dims(),
            Value::Text(_) => &[],
        }
    }
}
