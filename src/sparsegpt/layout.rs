//! Between a weight in its own layout and the 2-D matrices SparseGPT works
//! on: `rows` = output channels of one group, `cols` = the inputs that one
//! output reads, in the order of the Hessian's columns (§1).
//!
//! - linear / matmul with `y` transposed: `[out, in]` is already the matrix;
//! - matmul `x · y` with a constant `y` `[in, out]`: the matrix is `yᵀ`;
//! - conv `[Cout, Cin/groups, kh, kw]`: group `g` is rows
//!   `g·Cout/groups .. (g+1)·Cout/groups` of the C-order reshape
//!   `[Cout, (Cin/groups)·kh·kw]`, which is a contiguous slice, so no data
//!   moves except for the copy.

use super::{Result, SparseGptError};

/// The layout of a prunable weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[out, in]` (Core ML `linear`, `matmul` with `transpose_y`).
    OutIn {
        /// Output features.
        out: usize,
        /// Input features.
        inp: usize,
    },
    /// `[in, out]` (the constant `y` of a `matmul` without `transpose_y`).
    InOut {
        /// Input features.
        inp: usize,
        /// Output features.
        out: usize,
    },
    /// `[Cout, Cin/groups, kh, kw]` (Core ML / torch conv weight).
    Conv {
        /// Output channels (all groups).
        cout: usize,
        /// Input channels per group.
        cin_per_group: usize,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Groups; `cout` must be a multiple.
        groups: usize,
    },
}

impl WeightLayout {
    /// The layout of a conv weight of `shape` (`[Cout, Cin/groups, kh, kw]`).
    pub fn conv(shape: &[usize], groups: usize) -> Result<Self> {
        match *shape {
            [cout, cin_per_group, kh, kw] if groups > 0 && cout % groups == 0 => {
                Ok(WeightLayout::Conv {
                    cout,
                    cin_per_group,
                    kh,
                    kw,
                    groups,
                })
            }
            _ => Err(SparseGptError::Shape(format!(
                "conv weight {shape:?} with {groups} groups: expected [Cout, Cin/groups, kh, kw] \
                 with Cout a multiple of groups"
            ))),
        }
    }

    /// Independent matrices (conv groups; 1 otherwise).
    pub fn groups(&self) -> usize {
        match *self {
            WeightLayout::Conv { groups, .. } => groups,
            _ => 1,
        }
    }

    /// Rows of each matrix (output channels per group).
    pub fn rows(&self) -> usize {
        match *self {
            WeightLayout::OutIn { out, .. } | WeightLayout::InOut { out, .. } => out,
            WeightLayout::Conv { cout, groups, .. } => cout / groups,
        }
    }

    /// Columns of each matrix (= the Hessian's size).
    pub fn cols(&self) -> usize {
        match *self {
            WeightLayout::OutIn { inp, .. } | WeightLayout::InOut { inp, .. } => inp,
            WeightLayout::Conv {
                cin_per_group,
                kh,
                kw,
                ..
            } => cin_per_group * kh * kw,
        }
    }

    /// Elements of the whole tensor.
    pub fn numel(&self) -> usize {
        self.groups() * self.rows() * self.cols()
    }

    fn check(&self, len: usize, group: usize) -> Result<()> {
        if len != self.numel() {
            return Err(SparseGptError::Length {
                what: "weight",
                expected: self.numel(),
                found: len,
            });
        }
        if group >= self.groups() {
            return Err(SparseGptError::Shape(format!(
                "group {group} of a weight with {} groups",
                self.groups()
            )));
        }
        Ok(())
    }

    /// Group `group`'s matrix (`rows × cols`, row-major) out of the tensor `w`.
    pub fn extract<T: Copy>(&self, w: &[T], group: usize) -> Result<Vec<T>> {
        self.check(w.len(), group)?;
        let (r, c) = (self.rows(), self.cols());
        Ok(match *self {
            WeightLayout::InOut { inp, out } => {
                let mut m = Vec::with_capacity(r * c);
                for o in 0..out {
                    m.extend((0..inp).map(|i| w[i * out + o]));
                }
                m
            }
            _ => w[group * r * c..(group + 1) * r * c].to_vec(),
        })
    }

    /// Writes group `group`'s matrix `m` (`rows × cols`, row-major) back into
    /// the tensor `w`.
    pub fn insert<T: Copy>(&self, w: &mut [T], group: usize, m: &[T]) -> Result<()> {
        self.check(w.len(), group)?;
        let (r, c) = (self.rows(), self.cols());
        if m.len() != r * c {
            return Err(SparseGptError::Length {
                what: "matrix",
                expected: r * c,
                found: m.len(),
            });
        }
        match *self {
            WeightLayout::InOut { inp, out } => {
                for o in 0..out {
                    for i in 0..inp {
                        w[i * out + o] = m[o * inp + i];
                    }
                }
            }
            _ => w[group * r * c..(group + 1) * r * c].copy_from_slice(m),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_groups_are_row_slices_in_channel_kh_kw_order() {
        // [Cout 4, Cin/g 2, 1, 2], 2 groups: element (o, ci, 0, j) = o*100 + ci*10 + j.
        let mut w = Vec::new();
        for o in 0..4 {
            for ci in 0..2 {
                for j in 0..2 {
                    w.push(o * 100 + ci * 10 + j);
                }
            }
        }
        let l = WeightLayout::conv(&[4, 2, 1, 2], 2).unwrap();
        assert_eq!((l.groups(), l.rows(), l.cols()), (2, 2, 4));
        let g1 = l.extract(&w, 1).unwrap();
        assert_eq!(g1, vec![200, 201, 210, 211, 300, 301, 310, 311]);
        let mut back = vec![0; w.len()];
        for g in 0..2 {
            l.insert(&mut back, g, &l.extract(&w, g).unwrap()).unwrap();
        }
        assert_eq!(back, w);
    }

    #[test]
    fn in_out_is_transposed() {
        // y [in 3, out 2] = [[1, 2], [3, 4], [5, 6]]: the matrix is yᵀ.
        let y = [1, 2, 3, 4, 5, 6];
        let l = WeightLayout::InOut { inp: 3, out: 2 };
        let m = l.extract(&y, 0).unwrap();
        assert_eq!(m, vec![1, 3, 5, 2, 4, 6]);
        let mut back = [0; 6];
        l.insert(&mut back, 0, &m).unwrap();
        assert_eq!(back, y);
    }

    #[test]
    fn shape_errors() {
        assert!(WeightLayout::conv(&[5, 2, 3, 3], 2).is_err());
        assert!(WeightLayout::conv(&[4, 2, 3], 1).is_err());
        let l = WeightLayout::OutIn { out: 2, inp: 3 };
        assert!(l.extract(&[0; 5], 0).is_err());
        assert!(l.extract(&[0; 6], 1).is_err());
    }
}
