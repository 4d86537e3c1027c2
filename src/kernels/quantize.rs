//! Linear (affine) quantization on plain slices: one scale and zero point
//! per block of a grid over the tensor, `w ≈ scale · (q − zero_point)`.
//!
//! Ranges and parameters follow coremltools' definitions (facts, §6.4 of
//! the format notes): symmetric mode drops the most negative code of signed
//! types (int8 → [−127, 127]) and the top code of unsigned ones (uint8 →
//! [0, 254], zero point 127), so that the range is symmetric around a code
//! that decodes to exactly 0; asymmetric mode widens [min, max] to contain 0
//! and rounds the zero point to an integer code, so 0 stays exact there too.
//!
//! Rounding: the scale is rounded once to the weight's storage dtype (it is
//! stored in it); each weight then takes the code whose *decoded* value
//! (`scale · (q − zp)` rounded to the storage dtype, exactly what Core ML
//! and coremltools' decompression compute) is nearest to it. The candidate
//! is `round_half_even(w / scale)` computed in f64, then its two neighbours
//! are checked, because rounding the product to fp16 can move the decoded
//! value past the midpoint. coremltools divides and rounds in the weight's
//! own dtype (fp16 for fp16 weights), which is sometimes one code off; with
//! the same scale our error per element is therefore never larger. Ties
//! keep the round-half-even candidate (numpy's `round`, coremltools' rule).

/// Integer code types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QType {
    /// Signed 8-bit.
    Int8,
    /// Unsigned 8-bit.
    Uint8,
    /// Signed 4-bit (iOS18).
    Int4,
    /// Unsigned 4-bit (iOS18).
    Uint4,
}

impl QType {
    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            QType::Int8 | QType::Uint8 => 8,
            QType::Int4 | QType::Uint4 => 4,
        }
    }

    /// Whether codes are signed.
    pub fn signed(self) -> bool {
        matches!(self, QType::Int8 | QType::Int4)
    }

    /// The codes used: `[lo, hi]` (one code fewer in symmetric mode).
    pub fn range(self, symmetric: bool) -> (i32, i32) {
        let n = 1i32 << self.bits();
        let sym = i32::from(symmetric);
        if self.signed() {
            (-n / 2 + sym, n / 2 - 1)
        } else {
            (0, n - 1 - sym)
        }
    }
}

/// The dtype the weight, the scale and the decoded values are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl Store {
    /// `x` rounded to this dtype (nearest, ties to even), as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Store::F16 => round_to_f16(x),
            Store::F32 => x,
        }
    }

    fn round64(self, x: f64) -> f32 {
        match self {
            Store::F16 => half::f16::from_f64(x).to_f32(),
            Store::F32 => x as f32,
        }
    }

    /// The smallest positive value of the dtype.
    fn tiny(self) -> f32 {
        match self {
            Store::F16 => half::f16::from_bits(1).to_f32(),
            Store::F32 => f32::from_bits(1),
        }
    }
}

/// Quantization settings of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Code type.
    pub qtype: QType,
    /// Symmetric (zero point fixed at the middle code) or asymmetric.
    pub symmetric: bool,
}

/// Scale and zero point of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Scale, already a value of the storage dtype.
    pub scale: f32,
    /// Zero point (a code).
    pub zero_point: i32,
}

/// Parameters for a block whose values span `[min, max]` (finite).
pub fn params(min: f32, max: f32, spec: Spec, store: Store) -> Params {
    let (lo, hi) = spec.qtype.range(spec.symmetric);
    let steps = f64::from(hi - lo);
    let (vmin, vmax) = if spec.symmetric {
        let m = f64::from(min.abs().max(max.abs()));
        (-m, m)
    } else {
        (f64::from(min).min(0.0), f64::from(max).max(0.0))
    };
    let zero_point = if spec.symmetric {
        // Unsigned symmetric: the middle code (127 for uint8, 7 for uint4).
        if spec.qtype.signed() {
            0
        } else {
            hi / 2
        }
    } else if vmax > vmin {
        let z = (f64::from(lo) * vmax - f64::from(hi) * vmin) / (vmax - vmin);
        (z.round_ties_even() as i32).clamp(lo, hi)
    } else {
        if spec.qtype.signed() {
            0
        } else {
            lo
        }
    };
    let mut scale = store.round64((vmax - vmin) / steps);
    if vmax == vmin {
        // All zeros: any scale decodes them exactly; 1 keeps it finite.
        scale = 1.0;
    } else if scale <= 0.0 {
        // Underflow of a tiny range: the smallest positive scale.
        scale = store.tiny();
    }
    Params { scale, zero_point }
}

/// The decoded value of code `q`: `scale · (q − zp)` rounded to `store`.
/// The f32 product of an fp16 scale and an integer below 2^13 is exact, so
/// this is the single rounding Core ML performs.
#[inline(always)]
pub fn dequantize(q: i32, p: Params, store: Store) -> f32 {
    let v = p.scale * (q - p.zero_point) as f32;
    match store {
        Store::F16 => round_to_f16(v),
        Store::F32 => v,
    }
}

/// `v` rounded to the nearest fp16 value (ties to even), returned as f32:
/// the same as `f16::from_f32(v).to_f32()`, without a call per element.
///
/// In fp16's normal range this drops the 13 low mantissa bits of the f32
/// with round-half-even (a carry into the exponent is the right answer);
/// below it fp16 has a fixed step of 2^-24, and adding then subtracting
/// 0.75 (whose binade has exactly that step) rounds to it. Values that
/// round to ±∞ or are not finite go through `half`.
#[inline(always)]
pub fn round_to_f16(v: f32) -> f32 {
    let a = v.abs();
    if a.is_nan() || a >= 65504.0 {
        return half::f16::from_f32(v).to_f32();
    }
    round_to_f16_finite(v)
}

/// `x` rounded to the nearest integer, ties to even, for |x| ≤ 2^51
/// (larger values come back unchanged or nearly so; callers clamp). Adding
/// and subtracting 1.5·2^52 rounds in the FPU's default mode; this avoids a
/// libm `rint` call on targets without SSE4.1.
#[inline]
fn rint(x: f64) -> f64 {
    const M: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
    if x.abs() < 2_251_799_813_685_248.0 {
        (x + M) - M
    } else {
        x
    }
}

/// The code of `w` (see the module notes on rounding), within `[lo, hi]`.
#[inline(always)]
pub fn quantize(w: f32, p: Params, lo: i32, hi: i32, store: Store) -> i32 {
    quantize_decoded(w, p, lo, hi, store).0
}

/// The code of `w` and its decoded value.
///
/// Decoded values are non-decreasing in the code (positive scale, monotone
/// rounding), so only the neighbour on `w`'s side of the candidate's
/// decoded value can be nearer; the other one is never strictly nearer.
/// Written without data-dependent branches: which side `w` falls on is a
/// coin toss per element.
#[inline(always)]
fn quantize_decoded(w: f32, p: Params, lo: i32, hi: i32, store: Store) -> (i32, f32) {
    let x = rint(f64::from(w) / f64::from(p.scale));
    let q0 = (x.clamp(-1e9, 1e9) as i32 + p.zero_point).clamp(lo, hi);
    let d0 = dequantize(q0, p, store);
    let side = i32::from(w > d0) - i32::from(w < d0);
    let q1 = (q0 + side).clamp(lo, hi);
    let d1 = dequantize(q1, p, store);
    let e0 = (f64::from(d0) - f64::from(w)).abs();
    let e1 = (f64::from(d1) - f64::from(w)).abs();
    if e1 < e0 {
        (q1, d1)
    } else {
        (q0, d0)
    }
}

/// Lanes of the segment loop's partial sums.
const LANES: usize = 8;

/// Values the kernels read: fp32, or fp16 widened on the fly (so an fp16
/// weight is never copied into an f32 buffer as a whole).
pub trait Element: Copy + Send + Sync + 'static {
    /// `xs` as f32: itself, or widened into `buf` (at least as long).
    fn as_f32<'a>(xs: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// Eight values from `ptr` as f32 lanes.
    ///
    /// # Safety
    /// `ptr` must point at 8 readable values, and the CPU must have AVX2 and
    /// F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen values from `ptr` as f32 lanes.
    ///
    /// # Safety
    /// `ptr` must point at 16 readable values, and the CPU must have
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512;

    /// Smallest and largest value of `xs`, and whether all are finite
    /// (`buf` is scratch for widening).
    fn range(xs: &[Self], buf: &mut [f32; SUB]) -> (f32, f32, bool) {
        range_of(xs, buf)
    }
}

impl Element for f32 {
    #[inline(always)]
    fn as_f32<'a>(xs: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        xs
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(ptr)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(ptr)
    }
}

impl Element for half::f16 {
    /// On the bits, without widening: see [`range_of_f16`].
    fn range(xs: &[half::f16], _buf: &mut [f32; SUB]) -> (f32, f32, bool) {
        range_of_f16(xs)
    }

    #[inline(always)]
    fn as_f32<'a>(xs: &'a [half::f16], buf: &'a mut [f32]) -> &'a [f32] {
        let out = &mut buf[..xs.len()];
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(xs, out);
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(ptr.cast::<__m128i>()))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const half::f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(ptr.cast::<__m256i>()))
    }
}

/// Values widened at a time on the portable paths (a multiple of
/// [`LANES`], small enough for the stack and L1).
const SUB: usize = 1024;

/// Per-lane partial sums of a segment: Σ w², Σ err², max |err|. Value `t`
/// of the segment goes to lane `t % LANES`; the lanes are combined in
/// order at the end, so results do not depend on how the work is split.
#[derive(Default)]
struct Sums {
    sig: [f64; LANES],
    sse: [f64; LANES],
    mx: [f64; LANES],
}

impl Sums {
    fn total(&self) -> (f64, f64, f64) {
        (
            self.sig.iter().sum(),
            self.sse.iter().sum(),
            self.mx.iter().fold(0f64, |a, &b| a.max(b)),
        )
    }
}

/// Codes of one segment (one block's run of a row) and its (Σ w², Σ err²,
/// max |err|).
///
/// When every decoded level of the block is below fp16's largest finite
/// value, the work runs in f64 lanes without branches, which the compiler
/// vectorises: the candidate `q` stays a (small, exact) f64, its decoded
/// value `scale·(q − zp)` is exact in f64 and in f32 (an fp16 scale times
/// an integer below 2^13), and the fp16 rounding is [`round_to_f16`]'s bit
/// form; on CPUs with AVX2 and F16C, [`segment_avx2`] does the same 8 values
/// at a time. Otherwise (levels that overflow fp16) each element takes
/// [`quantize_decoded`]. All give the same codes; the tests check it.
fn quantize_segment<T: Element>(
    xs: &[T],
    codes: &mut [u8],
    p: Params,
    lo: i32,
    hi: i32,
    store: Store,
) -> (f64, f64, f64) {
    quantize_segment_with(xs, codes, p, lo, hi, store, Simd::detect())
}

/// Which loop [`quantize_segment`] runs on the values it can take fast; all
/// give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Simd {
    /// The portable loop (f64 lanes).
    None,
    /// [`segment_avx2`]: 8 values per step.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`segment_avx512`]: 16 values per step, the rest by [`segment_avx2`].
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// The widest loop this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if avx2_f16c() {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Simd::Avx512;
                }
                return Simd::Avx2;
            }
        }
        Simd::None
    }
}

/// [`quantize_segment`] with the loop chosen (the tests run every one the
/// CPU has on the same input).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn quantize_segment_with<T: Element>(
    xs: &[T],
    codes: &mut [u8],
    p: Params,
    lo: i32,
    hi: i32,
    store: Store,
    simd: Simd,
) -> (f64, f64, f64) {
    let reach = (lo - p.zero_point).abs().max((hi - p.zero_point).abs());
    let fast = match store {
        Store::F16 => f64::from(p.scale) * f64::from(reach) < 65504.0,
        Store::F32 => false,
    };
    let mut sums = Sums::default();
    let n = xs.len() / LANES * LANES;
    let mut buf = [0f32; SUB];
    if fast && simd != Simd::None {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd::detect` found the features of the loop chosen
        // (Avx512 implies Avx2's), and the tests only pass what it found.
        unsafe {
            // A multiple of 16 first (lanes t % 8 line up: 16 is a multiple
            // of 8), then the rest 8 at a time.
            let n16 = if simd == Simd::Avx512 { n / 16 * 16 } else { 0 };
            segment_avx512(&xs[..n16], &mut codes[..n16], p, lo, hi, &mut sums);
            segment_avx2(&xs[n16..n], &mut codes[n16..n], p, lo, hi, &mut sums);
        }
    } else {
        for (cs, ws) in codes[..n].chunks_mut(SUB).zip(xs[..n].chunks(SUB)) {
            let ws = T::as_f32(ws, &mut buf);
            if fast {
                lanes_fast(ws, cs, p, lo, hi, &mut sums);
            } else {
                for (cs, ws) in cs.chunks_exact_mut(LANES).zip(ws.chunks_exact(LANES)) {
                    for l in 0..LANES {
                        let (q, d) = quantize_decoded(ws[l], p, lo, hi, store);
                        let e = (f64::from(d) - f64::from(ws[l])).abs();
                        cs[l] = q as u8;
                        sums.sig[l] += f64::from(ws[l]) * f64::from(ws[l]);
                        sums.sse[l] += e * e;
                        sums.mx[l] = sums.mx[l].max(e);
                    }
                }
            }
        }
    }
    let tail = T::as_f32(&xs[n..], &mut buf);
    for (l, (c, &w)) in codes[n..].iter_mut().zip(tail).enumerate() {
        let (q, d) = quantize_decoded(w, p, lo, hi, store);
        let e = (f64::from(d) - f64::from(w)).abs();
        *c = q as u8;
        sums.sig[l] += f64::from(w) * f64::from(w);
        sums.sse[l] += e * e;
        sums.mx[l] = sums.mx[l].max(e);
    }
    sums.total()
}

/// The portable fast loop over whole groups of [`LANES`] values (fp16
/// storage, every level finite).
#[inline(always)]
fn lanes_fast(xs: &[f32], codes: &mut [u8], p: Params, lo: i32, hi: i32, sums: &mut Sums) {
    let scale = f64::from(p.scale);
    let zp = f64::from(p.zero_point);
    let (flo, fhi) = (f64::from(lo), f64::from(hi));
    let dec = |q: f64| round_to_f16_finite((scale * (q - zp)) as f32);
    for (cs, ws) in codes.chunks_exact_mut(LANES).zip(xs.chunks_exact(LANES)) {
        for l in 0..LANES {
            let w = ws[l];
            let wf = f64::from(w);
            let q0 = clamp(rint_small(wf / scale) + zp, flo, fhi);
            let d0 = dec(q0);
            // Towards w (either way when w == d0: the neighbour then
            // cannot be strictly nearer). Bit selects, not `if`s: the
            // compiler turns those into branches, and the side w falls
            // on is a coin toss per element.
            let side = 1f64.copysign(wf - f64::from(d0));
            let q1 = clamp(q0 + side, flo, fhi);
            let d1 = dec(q1);
            let e0 = (f64::from(d0) - wf).abs();
            let e1 = (f64::from(d1) - wf).abs();
            let take = e1 < e0;
            let q = select(take, q1, q0);
            let e = select(take, e1, e0);
            // q is an integer in [-128, 255]: the low byte of
            // q + 1.5·2^52's bits is its two's-complement byte.
            cs[l] = (q + 6_755_399_441_055_744.0).to_bits() as u8;
            sums.sig[l] += wf * wf;
            sums.sse[l] += e * e;
            sums.mx[l] = if e > sums.mx[l] { e } else { sums.mx[l] };
        }
    }
}

/// Whether the CPU runs [`segment_avx2`] (AVX2 and F16C).
#[cfg(target_arch = "x86_64")]
fn avx2_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
}

/// The fast loop of [`quantize_segment`] on 8 values per step, with the
/// same result bit for bit: the same codes, and the same partial sums in the
/// same lanes (value `t` of the segment goes to lane `t % 8`, each lane's
/// sums taken in the same order with the same f64 operations).
///
/// Per value, as the scalar loop: the candidate is `w / scale` rounded
/// half to even, plus the zero point, clamped. The quotient is taken in f32
/// here and in f64 there, with the same rounded integer: `w` and `scale`
/// are fp16 values (11-bit significands `A·2^a`, `B·2^b`), so an exact
/// quotient that is not itself a half-integer `h + ½` differs from it by at
/// least `1 / (2^11·(2h+1))` relative, far more than f32's `2^-24` rounding
/// while `|h| < 4095`; larger quotients are clamped to the same end code
/// either way (codes span at most 256, zero points lie inside them). An
/// exact half-integer below 2^13 is exact in f32 too. The
/// decoded level `scale · (q − zp)` is exact in f32 and is rounded to fp16
/// by F16C's conversion (round to nearest even, subnormals included: the
/// same value as [`round_to_f16_finite`] below fp16's largest finite value,
/// which the caller guarantees). The neighbour on `w`'s side is checked and
/// taken only if strictly nearer (by an exact midpoint test, see below);
/// the error of the chosen level is taken in f64, as there. `xs.len()` and
/// `codes.len()` are equal multiples of 8.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn segment_avx2<T: Element>(
    xs: &[T],
    codes: &mut [u8],
    p: Params,
    lo: i32,
    hi: i32,
    sums: &mut Sums,
) {
    use std::arch::x86_64::*;
    debug_assert!(xs.len() == codes.len() && xs.len().is_multiple_of(LANES));
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    // The level of code q, rounded to fp16 and back (exact conversions).
    #[inline(always)]
    unsafe fn level(q: __m256, zp: __m256, scale: __m256) -> __m256 {
        let v = _mm256_mul_ps(scale, _mm256_sub_ps(q, zp));
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }
    let scale = _mm256_set1_ps(p.scale);
    let zp = _mm256_set1_ps(p.zero_point as f32);
    let (flo, fhi) = (_mm256_set1_ps(lo as f32), _mm256_set1_ps(hi as f32));
    let (one, minus_one) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-1.0));
    let abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
    // Low byte of each 32-bit lane, in lane order, into the low 4 bytes of
    // each 128-bit half.
    let low_bytes = _mm256_setr_epi8(
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let mut acc_sig = [
        _mm256_loadu_pd(sums.sig.as_ptr()),
        _mm256_loadu_pd(sums.sig.as_ptr().add(4)),
    ];
    let mut acc_sse = [
        _mm256_loadu_pd(sums.sse.as_ptr()),
        _mm256_loadu_pd(sums.sse.as_ptr().add(4)),
    ];
    let mut acc_mx = [
        _mm256_loadu_pd(sums.mx.as_ptr()),
        _mm256_loadu_pd(sums.mx.as_ptr().add(4)),
    ];
    for (cs, ws) in codes.chunks_exact_mut(LANES).zip(xs.chunks_exact(LANES)) {
        let w = T::load8(ws.as_ptr());
        let wd = [
            _mm256_cvtps_pd(_mm256_castps256_ps128(w)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(w)),
        ];
        // rint(w / scale), in f32: see the notes above on why it equals
        // the f64 candidate for fp16 values.
        let x = _mm256_round_ps::<NEAREST>(_mm256_div_ps(w, scale));
        let q0 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(x, zp), flo), fhi);
        let d0 = level(q0, zp, scale);
        // Towards w: -1 below d0, +1 otherwise (as copysign(1, w - d0)).
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(w, d0);
        let side = _mm256_blendv_ps(one, minus_one, below);
        let q1 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q0, side), flo), fhi);
        let d1 = level(q1, zp, scale);
        // The neighbour is strictly nearer iff w lies strictly past the
        // midpoint of the two levels, on the neighbour's side: d0 + d1 < 2w
        // going up, > 2w going down. Both sides are exact in f32 (a sum of
        // two adjacent fp16 levels, a doubled fp16 value), so this is the
        // scalar loop's exact comparison of the two errors. Distinct codes
        // have distinct levels (adjacent levels are a scale apart, more than
        // an fp16 step at any level below 256 scales), and where the clamp
        // made q1 = q0 either choice is the same code and level.
        let (sum, w2) = (_mm256_add_ps(d0, d1), _mm256_add_ps(w, w));
        let take = _mm256_blendv_ps(
            _mm256_cmp_ps::<_CMP_LT_OQ>(sum, w2),
            _mm256_cmp_ps::<_CMP_GT_OQ>(sum, w2),
            below,
        );
        let q = _mm256_blendv_ps(q0, q1, take);
        let d = _mm256_blendv_ps(d0, d1, take);
        for h in 0..2 {
            let dh = if h == 0 {
                _mm256_castps256_ps128(d)
            } else {
                _mm256_extractf128_ps::<1>(d)
            };
            let e = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(dh), wd[h]), abs_mask);
            acc_sig[h] = _mm256_add_pd(acc_sig[h], _mm256_mul_pd(wd[h], wd[h]));
            acc_sse[h] = _mm256_add_pd(acc_sse[h], _mm256_mul_pd(e, e));
            // e > mx ? e : mx, as the scalar loop (e is never NaN).
            acc_mx[h] = _mm256_max_pd(e, acc_mx[h]);
        }
        // Eight i32 codes; their low bytes are the two's-complement bytes.
        let b = _mm256_shuffle_epi8(_mm256_cvtps_epi32(q), low_bytes);
        let lo4 = _mm_cvtsi128_si32(_mm256_castsi256_si128(b)) as u32;
        let hi4 = _mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(b)) as u32;
        let bytes = (u64::from(hi4) << 32 | u64::from(lo4)).to_le_bytes();
        cs.copy_from_slice(&bytes);
    }
    _mm256_storeu_pd(sums.sig.as_mut_ptr(), acc_sig[0]);
    _mm256_storeu_pd(sums.sig.as_mut_ptr().add(4), acc_sig[1]);
    _mm256_storeu_pd(sums.sse.as_mut_ptr(), acc_sse[0]);
    _mm256_storeu_pd(sums.sse.as_mut_ptr().add(4), acc_sse[1]);
    _mm256_storeu_pd(sums.mx.as_mut_ptr(), acc_mx[0]);
    _mm256_storeu_pd(sums.mx.as_mut_ptr().add(4), acc_mx[1]);
}

/// [`segment_avx2`] on 16 values per step (AVX-512F), with the same bits:
/// the same per-value operations, and the sums of values `t` and `t + 8` of
/// a step added to lane `t` in that order, as the 8-wide loop does.
/// `xs.len()` and `codes.len()` are equal multiples of 16.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,f16c")]
unsafe fn segment_avx512<T: Element>(
    xs: &[T],
    codes: &mut [u8],
    p: Params,
    lo: i32,
    hi: i32,
    sums: &mut Sums,
) {
    use std::arch::x86_64::*;
    debug_assert!(xs.len() == codes.len() && xs.len().is_multiple_of(16));
    if xs.is_empty() {
        return;
    }
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    #[inline(always)]
    unsafe fn level(q: __m512, zp: __m512, scale: __m512) -> __m512 {
        let v = _mm512_mul_ps(scale, _mm512_sub_ps(q, zp));
        _mm512_cvtph_ps(_mm512_cvtps_ph::<NEAREST>(v))
    }
    // Low and high 8 f32 lanes, widened to f64.
    #[inline(always)]
    unsafe fn halves(v: __m512) -> [__m512d; 2] {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        [
            _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
            _mm512_cvtps_pd(hi),
        ]
    }
    let scale = _mm512_set1_ps(p.scale);
    let zp = _mm512_set1_ps(p.zero_point as f32);
    let (flo, fhi) = (_mm512_set1_ps(lo as f32), _mm512_set1_ps(hi as f32));
    let (one, minus_one) = (_mm512_set1_ps(1.0), _mm512_set1_ps(-1.0));
    let mut acc_sig = _mm512_loadu_pd(sums.sig.as_ptr());
    let mut acc_sse = _mm512_loadu_pd(sums.sse.as_ptr());
    let mut acc_mx = _mm512_loadu_pd(sums.mx.as_ptr());
    for (cs, ws) in codes.chunks_exact_mut(16).zip(xs.chunks_exact(16)) {
        let w = T::load16(ws.as_ptr());
        let x = _mm512_roundscale_ps::<NEAREST>(_mm512_div_ps(w, scale));
        let q0 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(x, zp), flo), fhi);
        let d0 = level(q0, zp, scale);
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(w, d0);
        let side = _mm512_mask_blend_ps(below, one, minus_one);
        let q1 = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q0, side), flo), fhi);
        let d1 = level(q1, zp, scale);
        // The exact midpoint test of `segment_avx2`.
        let (sum, w2) = (_mm512_add_ps(d0, d1), _mm512_add_ps(w, w));
        let up = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(sum, w2);
        let down = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(sum, w2);
        let take = (below & down) | (!below & up);
        let q = _mm512_mask_blend_ps(take, q0, q1);
        let d = _mm512_mask_blend_ps(take, d0, d1);
        let (wd, dd) = (halves(w), halves(d));
        for h in 0..2 {
            let e = _mm512_abs_pd(_mm512_sub_pd(dd[h], wd[h]));
            acc_sig = _mm512_add_pd(acc_sig, _mm512_mul_pd(wd[h], wd[h]));
            acc_sse = _mm512_add_pd(acc_sse, _mm512_mul_pd(e, e));
            acc_mx = _mm512_max_pd(e, acc_mx);
        }
        // Sixteen i32 codes, truncated to their two's-complement bytes.
        let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
        _mm_storeu_si128(cs.as_mut_ptr().cast::<__m128i>(), bytes);
    }
    _mm512_storeu_pd(sums.sig.as_mut_ptr(), acc_sig);
    _mm512_storeu_pd(sums.sse.as_mut_ptr(), acc_sse);
    _mm512_storeu_pd(sums.mx.as_mut_ptr(), acc_mx);
}

/// `a` if `c` else `b`, by bit masks.
#[inline(always)]
fn select(c: bool, a: f64, b: f64) -> f64 {
    let m = 0u64.wrapping_sub(u64::from(c));
    f64::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
}

/// `x` limited to `[lo, hi]` as a select (no NaN handling: `x` is finite).
#[inline(always)]
fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    let x = if x < lo { lo } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

/// [`round_to_f16`] for |v| < 65504 (the caller guarantees it). The
/// subnormal test stays a branch: it is rarely taken, so well predicted,
/// and a bit select measured slower.
#[inline(always)]
fn round_to_f16_finite(v: f32) -> f32 {
    const MIN_NORMAL: f32 = 6.103_515_6e-5; // 2^-14
    let a = v.abs();
    let sub = ((a + 0.75) - 0.75).copysign(v);
    let b = v.to_bits();
    let norm = f32::from_bits((b + 0x0FFF + ((b >> 13) & 1)) & !0x1FFF);
    if a < MIN_NORMAL {
        sub
    } else {
        norm
    }
}

/// [`rint`] without the range test, for |x| ≤ 2^51 or results that are
/// clamped anyway (beyond 2^52 it returns `x` rounded to a multiple of 2,
/// still far outside any code range).
#[inline(always)]
fn rint_small(x: f64) -> f64 {
    const M: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
    (x + M) - M
}

/// Why a tensor cannot be quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// A value is NaN or infinite.
    NonFinite,
    /// The grid does not divide the shape.
    BadGrid,
}

/// A quantized tensor.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// One code per element, row-major (two's complement bytes for signed
    /// types, so `as i8` gives the code).
    pub codes: Vec<u8>,
    /// Per block (row-major over the grid): parameters.
    pub params: Vec<Params>,
    /// Σ w², Σ (w − ŵ)², max |w − ŵ| (f64).
    pub signal: f64,
    /// Sum of squared errors.
    pub sse: f64,
    /// Largest absolute error.
    pub max_abs: f64,
}

/// Calls `f(element, block)` for every element of `shape` in row-major
/// order, `block` being its row-major index in `grid` (block extents are
/// `shape[i] / grid[i]`).
#[cfg(test)]
fn for_each_block(shape: &[usize], grid: &[usize], mut f: impl FnMut(usize, usize)) {
    let k = shape.len();
    if k == 0 {
        f(0, 0);
        return;
    }
    let ext: Vec<usize> = shape.iter().zip(grid).map(|(s, g)| s / g).collect();
    let mut gstride = vec![1usize; k];
    for i in (0..k.saturating_sub(1)).rev() {
        gstride[i] = gstride[i + 1] * grid[i + 1];
    }
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let last = k - 1;
    let row = shape[last];
    let mut idx = vec![0usize; k];
    let mut e = 0;
    while e < n {
        let base: usize = (0..last).map(|i| idx[i] / ext[i] * gstride[i]).sum();
        for j in 0..row {
            f(e + j, base + j / ext[last] * gstride[last]);
        }
        e += row;
        // Advance the outer multi-index.
        let mut d = last;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Rows (all axes but the last) of a block grid: for the row starting at
/// element `r · row`, the block index of its first segment; segment `j`
/// (elements `j·seg .. (j+1)·seg` of the row) is block `first + j`.
struct RowBlocks {
    row: usize,
    seg: usize,
    ext: Vec<usize>,
    gstride: Vec<usize>,
    shape: Vec<usize>,
}

impl RowBlocks {
    fn new(shape: &[usize], grid: &[usize]) -> Self {
        // An axis followed by one with a single block merges with it (its
        // block index is unchanged by the merge), so a per-channel conv
        // weight [Cout, Cin, kh, kw] becomes rows of Cin·kh·kw elements, not
        // rows of kw: the per-row bookkeeping must not run per 3 elements.
        let (mut shape, mut grid) = (shape.to_vec(), grid.to_vec());
        // Axis 0 stays whole: rows are what the parallel loop splits.
        let mut i = shape.len().saturating_sub(1);
        while i > 1 {
            if grid[i] == 1 {
                shape[i - 1] *= shape[i];
                shape.remove(i);
                grid.remove(i);
            }
            i -= 1;
        }
        let (shape, grid) = (&shape[..], &grid[..]);
        let k = shape.len();
        let ext: Vec<usize> = shape.iter().zip(grid).map(|(s, g)| s / g).collect();
        let mut gstride = vec![1usize; k];
        for i in (0..k.saturating_sub(1)).rev() {
            gstride[i] = gstride[i + 1] * grid[i + 1];
        }
        Self {
            row: shape.last().copied().unwrap_or(1),
            seg: ext.last().copied().unwrap_or(1),
            ext,
            gstride,
            shape: shape.to_vec(),
        }
    }

    /// Whether every block lies inside one row (one block per row or per
    /// segment of a row: per channel, and per block along the last axis),
    /// so a row's blocks can be ranged and quantized in one visit.
    fn row_local(&self) -> bool {
        self.ext[..self.ext.len().saturating_sub(1)]
            .iter()
            .all(|&e| e == 1)
    }

    /// Block of the first segment of row `r`.
    fn first(&self, mut r: usize) -> usize {
        let k = self.shape.len();
        let mut b = 0;
        for i in (0..k.saturating_sub(1)).rev() {
            let idx = r % self.shape[i];
            r /= self.shape[i];
            b += idx / self.ext[i] * self.gstride[i];
        }
        b
    }
}

/// Rows per parallel chunk: a fixed element count, so the partial sums (and
/// the report built from them) do not depend on the number of threads.
const CHUNK_ELEMS: usize = 1 << 16;

/// Quantizes `x` (row-major, `shape`) with one set of parameters per block
/// of `grid` (same rank; `shape[i] % grid[i] == 0`).
pub fn quantize_blocks(
    x: &[f32],
    shape: &[usize],
    grid: &[usize],
    spec: Spec,
    store: Store,
) -> Result<Quantized, QuantError> {
    quantize_blocks_of(x, shape, grid, spec, store)
}

/// [`quantize_blocks`] of fp16 values (stored as fp16), read in place: the
/// same codes, parameters and sums as on the values widened to f32.
pub fn quantize_blocks_f16(
    x: &[half::f16],
    shape: &[usize],
    grid: &[usize],
    spec: Spec,
) -> Result<Quantized, QuantError> {
    quantize_blocks_of(x, shape, grid, spec, Store::F16)
}

/// Smallest and largest value of `xs`, and whether all are finite.
///
/// Lane-wise over [`LANES`] values so that the compiler vectorises it (the
/// order of a min/max reduction does not change its result).
fn range_of<T: Element>(xs: &[T], buf: &mut [f32; SUB]) -> (f32, f32, bool) {
    let mut mn = [f32::INFINITY; LANES];
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut finite = [true; LANES];
    for part in xs.chunks(SUB) {
        let v = T::as_f32(part, buf);
        let n = v.len() / LANES * LANES;
        for c in v[..n].chunks_exact(LANES) {
            for l in 0..LANES {
                let x = c[l];
                mn[l] = if x < mn[l] { x } else { mn[l] };
                mx[l] = if x > mx[l] { x } else { mx[l] };
                finite[l] &= x.abs() <= f32::MAX;
            }
        }
        for (l, &x) in v[n..].iter().enumerate() {
            mn[l] = if x < mn[l] { x } else { mn[l] };
            mx[l] = if x > mx[l] { x } else { mx[l] };
            finite[l] &= x.abs() <= f32::MAX;
        }
    }
    (
        mn.iter().fold(f32::INFINITY, |a, &b| a.min(b)),
        mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        finite.iter().all(|&f| f),
    )
}

/// [`range_of`] of fp16 values, on their bits: a sign-magnitude fp16 maps
/// to an `i16` key with the same order (`±0` both to 0), so min and max are
/// integer reductions 32 lanes wide, and a value is finite iff its
/// magnitude bits are below the all-ones exponent. The result is the same
/// value as [`range_of`]'s (a zero may come back as `+0` where the float
/// reduction kept `−0`; `params` does not see the sign of a zero).
fn range_of_f16(xs: &[half::f16]) -> (f32, f32, bool) {
    const W: usize = 32;
    #[inline(always)]
    fn key(b: u16) -> (i16, u16) {
        let mag = b & 0x7fff;
        // All ones for a negative value: negate the magnitude.
        let s = (b as i16) >> 15;
        (((mag as i16) ^ s).wrapping_sub(s), mag)
    }
    let mut mn = [i16::MAX; W];
    let mut mx = [i16::MIN; W];
    let mut mag = [0u16; W];
    let bits: &[u16] = bytemuck::cast_slice(xs);
    let n = bits.len() / W * W;
    for c in bits[..n].chunks_exact(W) {
        for l in 0..W {
            let (k, m) = key(c[l]);
            mn[l] = mn[l].min(k);
            mx[l] = mx[l].max(k);
            mag[l] = mag[l].max(m);
        }
    }
    for (l, &b) in bits[n..].iter().enumerate() {
        let (k, m) = key(b);
        mn[l] = mn[l].min(k);
        mx[l] = mx[l].max(k);
        mag[l] = mag[l].max(m);
    }
    let value = |k: i16| {
        let b = if k < 0 {
            0x8000 | k.unsigned_abs()
        } else {
            k as u16
        };
        half::f16::from_bits(b).to_f32()
    };
    let (lo, hi) = (mn.iter().min().copied(), mx.iter().max().copied());
    if xs.is_empty() {
        return (f32::INFINITY, f32::NEG_INFINITY, true);
    }
    (
        value(lo.expect("W lanes")),
        value(hi.expect("W lanes")),
        mag.iter().all(|&m| m < 0x7c00),
    )
}

/// [`quantize_with`] when every block lies inside one row: each chunk
/// of rows is ranged, scaled and quantized segment by segment while it is
/// in cache (one read of the weight instead of two). Blocks are numbered
/// row by row, segment by segment, so the chunks' parameters concatenate
/// in block order; the sums are added in the same order as the two-pass
/// path, so the result is the same, bit for bit.
fn quantize_row_local<T: Element>(
    x: &[T],
    rb: &RowBlocks,
    spec: Spec,
    store: Store,
) -> Result<Quantized, QuantError> {
    use rayon::prelude::*;
    let (row, seg) = (rb.row.max(1), rb.seg.max(1));
    let rows_per_chunk = (CHUNK_ELEMS / row).max(1);
    let (lo, hi) = spec.qtype.range(spec.symmetric);
    let mut codes = vec![0u8; x.len()];
    type Part = (Vec<Params>, (f64, f64, f64));
    let parts: Vec<Result<Part, QuantError>> = codes
        .par_chunks_mut(rows_per_chunk * row)
        .zip(x.par_chunks(rows_per_chunk * row))
        .map(|(cs, xs)| {
            let mut buf = [0f32; SUB];
            let mut ps = Vec::new();
            let (mut signal, mut sse, mut max_abs) = (0f64, 0f64, 0f64);
            for (crow, xrow) in cs.chunks_mut(row).zip(xs.chunks(row)) {
                for (cseg, xseg) in crow.chunks_mut(seg).zip(xrow.chunks(seg)) {
                    let (vmin, vmax, finite) = T::range(xseg, &mut buf);
                    if !finite {
                        return Err(QuantError::NonFinite);
                    }
                    let p = params(vmin, vmax, spec, store);
                    ps.push(p);
                    let (s, e, m) = quantize_segment(xseg, cseg, p, lo, hi, store);
                    signal += s;
                    sse += e;
                    max_abs = max_abs.max(m);
                }
            }
            Ok((ps, (signal, sse, max_abs)))
        })
        .collect();
    let mut all = Vec::new();
    let (mut signal, mut sse, mut max_abs) = (0f64, 0f64, 0f64);
    for part in parts {
        let (ps, (s, e, m)) = part?;
        all.extend(ps);
        signal += s;
        sse += e;
        max_abs = max_abs.max(m);
    }
    Ok(Quantized {
        codes,
        params: all,
        signal,
        sse,
        max_abs,
    })
}

fn quantize_blocks_of<T: Element>(
    x: &[T],
    shape: &[usize],
    grid: &[usize],
    spec: Spec,
    store: Store,
) -> Result<Quantized, QuantError> {
    quantize_with(x, shape, grid, spec, store, true)
}

/// The quantizer; `fuse` allows [`quantize_row_local`] where it applies
/// (the tests turn it off to compare the two paths).
fn quantize_with<T: Element>(
    x: &[T],
    shape: &[usize],
    grid: &[usize],
    spec: Spec,
    store: Store,
    fuse: bool,
) -> Result<Quantized, QuantError> {
    use rayon::prelude::*;
    if grid.len() != shape.len()
        || shape.iter().zip(grid).any(|(&s, &g)| g == 0 || s % g != 0)
        || shape.iter().product::<usize>() != x.len()
    {
        return Err(QuantError::BadGrid);
    }
    let blocks: usize = grid.iter().product();
    let rb = RowBlocks::new(shape, grid);
    let (row, seg) = (rb.row.max(1), rb.seg.max(1));
    let rows_per_chunk = (CHUNK_ELEMS / row).max(1);
    if fuse && rb.row_local() && !x.is_empty() {
        return quantize_row_local(x, &rb, spec, store);
    }
    // Ranges of every segment, in parallel over chunks of rows, then folded
    // into their blocks in order.
    let ranges: Vec<Vec<(f32, f32, bool)>> = x
        .par_chunks(rows_per_chunk * row)
        .map(|xs| {
            let mut buf = [0f32; SUB];
            xs.chunks(row)
                .flat_map(|r| r.chunks(seg))
                .map(|s| T::range(s, &mut buf))
                .collect()
        })
        .collect();
    let mut mins = vec![f32::INFINITY; blocks];
    let mut maxs = vec![f32::NEG_INFINITY; blocks];
    let segs_per_row = row.div_ceil(seg);
    for (c, chunk) in ranges.iter().enumerate() {
        for (i, &(lo, hi, finite)) in chunk.iter().enumerate() {
            if !finite {
                return Err(QuantError::NonFinite);
            }
            let b = rb.first(c * rows_per_chunk + i / segs_per_row) + i % segs_per_row;
            mins[b] = mins[b].min(lo);
            maxs[b] = maxs[b].max(hi);
        }
    }
    drop(ranges);
    let params: Vec<Params> = mins
        .iter()
        .zip(&maxs)
        .map(|(&lo, &hi)| params(lo, hi, spec, store))
        .collect();
    let (lo, hi) = spec.qtype.range(spec.symmetric);
    let mut codes = vec![0u8; x.len()];
    let partial: Vec<(f64, f64, f64)> = codes
        .par_chunks_mut(rows_per_chunk * row)
        .zip(x.par_chunks(rows_per_chunk * row))
        .enumerate()
        .map(|(c, (cs, xs))| {
            let (mut signal, mut sse, mut max_abs) = (0f64, 0f64, 0f64);
            for (r, (crow, xrow)) in cs.chunks_mut(row).zip(xs.chunks(row)).enumerate() {
                let first = rb.first(c * rows_per_chunk + r);
                for (j, (cseg, xseg)) in crow.chunks_mut(seg).zip(xrow.chunks(seg)).enumerate() {
                    let (s, e, m) = quantize_segment(xseg, cseg, params[first + j], lo, hi, store);
                    signal += s;
                    sse += e;
                    max_abs = max_abs.max(m);
                }
            }
            (signal, sse, max_abs)
        })
        .collect();
    let (mut signal, mut sse, mut max_abs) = (0f64, 0f64, 0f64);
    for (s, e, m) in partial {
        signal += s;
        sse += e;
        max_abs = max_abs.max(m);
    }
    Ok(Quantized {
        codes,
        params,
        signal,
        sse,
        max_abs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    const ALL: [QType; 4] = [QType::Int8, QType::Uint8, QType::Int4, QType::Uint4];

    /// A deterministic pseudo-random stream (xorshift), values in
    /// [-scale, scale), rounded to `store`.
    fn values(n: usize, seed: u64, scale: f32, store: Store) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                store.round(((u * 2.0 - 1.0) * f64::from(scale)) as f32)
            })
            .collect()
    }

    fn decode(q: &Quantized, shape: &[usize], grid: &[usize], store: Store, t: QType) -> Vec<f32> {
        let mut out = vec![0f32; q.codes.len()];
        for_each_block(shape, grid, |e, b| {
            let c = if t.signed() {
                i32::from(q.codes[e] as i8)
            } else {
                i32::from(q.codes[e])
            };
            out[e] = dequantize(c, q.params[b], store);
        });
        out
    }

    #[test]
    fn ranges_are_coremltools() {
        assert_eq!(QType::Int8.range(true), (-127, 127));
        assert_eq!(QType::Int8.range(false), (-128, 127));
        assert_eq!(QType::Uint8.range(true), (0, 254));
        assert_eq!(QType::Uint8.range(false), (0, 255));
        assert_eq!(QType::Int4.range(true), (-7, 7));
        assert_eq!(QType::Int4.range(false), (-8, 7));
        assert_eq!(QType::Uint4.range(true), (0, 14));
        assert_eq!(QType::Uint4.range(false), (0, 15));
    }

    /// Property: for every code type, mode, storage dtype and many random
    /// tensors, every element decodes within scale/2 of its value (plus half
    /// an ulp of the stored result for fp16), codes stay in range, the
    /// reported error sums are the decoded ones, and 0 decodes to exactly 0.
    #[test]
    fn round_trip_error_at_most_half_a_step() {
        for &t in &ALL {
            for symmetric in [true, false] {
                for store in [Store::F16, Store::F32] {
                    for seed in 0..20u64 {
                        let shape = [6usize, 10, 3];
                        let grid = [3usize, if seed % 2 == 0 { 1 } else { 5 }, 1];
                        let mut x = values(180, seed + 1, 0.5 + seed as f32, store);
                        x[7] = 0.0;
                        x[100] = 0.0;
                        let spec = Spec {
                            qtype: t,
                            symmetric,
                        };
                        let q = quantize_blocks(&x, &shape, &grid, spec, store).unwrap();
                        let d = decode(&q, &shape, &grid, store, t);
                        let (lo, hi) = t.range(symmetric);
                        let mut sse = 0f64;
                        for_each_block(&shape, &grid, |e, b| {
                            let c = if t.signed() {
                                i32::from(q.codes[e] as i8)
                            } else {
                                i32::from(q.codes[e])
                            };
                            assert!((lo..=hi).contains(&c), "{t:?} code {c}");
                            let s = q.params[b].scale;
                            let ulp = match store {
                                Store::F16 => f16::from_f32(x[e]).to_f32().abs() * 2f32.powi(-11),
                                Store::F32 => x[e].abs() * 2f32.powi(-24),
                            };
                            let err = (d[e] - x[e]).abs();
                            assert!(
                                err <= s / 2.0 + ulp + 1e-12,
                                "{t:?} sym={symmetric} {store:?}: |{} - {}| > {s}/2",
                                d[e],
                                x[e]
                            );
                            sse += f64::from(d[e] - x[e]).powi(2);
                        });
                        assert!((sse - q.sse).abs() <= 1e-9 * (1.0 + sse));
                        assert_eq!(d[7], 0.0, "zero stays exactly zero");
                        assert_eq!(d[100], 0.0, "zero stays exactly zero");
                    }
                }
            }
        }
    }

    /// The code chosen is the best possible for the block's scale: no other
    /// code decodes closer (this is what makes our error per weight never
    /// larger than coremltools' with the same scale).
    #[test]
    fn code_is_the_nearest_decoded_level() {
        for &t in &ALL {
            for symmetric in [true, false] {
                let x = values(2000, 7, 3.0, Store::F16);
                let q = quantize_blocks(
                    &x,
                    &[2000],
                    &[1],
                    Spec {
                        qtype: t,
                        symmetric,
                    },
                    Store::F16,
                )
                .unwrap();
                let p = q.params[0];
                let (lo, hi) = t.range(symmetric);
                for (e, &w) in x.iter().enumerate() {
                    let c = if t.signed() {
                        i32::from(q.codes[e] as i8)
                    } else {
                        i32::from(q.codes[e])
                    };
                    let mine = (dequantize(c, p, Store::F16) - w).abs();
                    for other in lo..=hi {
                        assert!(mine <= (dequantize(other, p, Store::F16) - w).abs());
                    }
                }
            }
        }
    }

    /// The extremes of a symmetric block use the end codes, and the scale
    /// is the fp16 value of max|w| / (2^(b-1) − 1).
    #[test]
    fn symmetric_scale_and_extremes() {
        let x = [-2.0f32, 1.0, 0.5, 0.0];
        let q = quantize_blocks(
            &x,
            &[4],
            &[1],
            Spec {
                qtype: QType::Int8,
                symmetric: true,
            },
            Store::F16,
        )
        .unwrap();
        assert_eq!(q.params[0].scale, f16::from_f64(2.0 / 127.0).to_f32());
        assert_eq!(q.params[0].zero_point, 0);
        assert_eq!(q.codes[0] as i8, -127);
        assert_eq!(q.codes[3] as i8, 0);
        let u = quantize_blocks(
            &x,
            &[4],
            &[1],
            Spec {
                qtype: QType::Uint4,
                symmetric: true,
            },
            Store::F32,
        )
        .unwrap();
        assert_eq!(u.params[0].zero_point, 7);
        assert_eq!(u.codes[0], 0);
        assert_eq!(u.codes[3], 7);
    }

    /// Asymmetric: an all-positive block still contains 0 in its range
    /// (coremltools widens it) and the zero point is the code of 0.
    #[test]
    fn asymmetric_range_contains_zero() {
        let x = [1.0f32, 3.0, 2.0, 1.5];
        let q = quantize_blocks(
            &x,
            &[4],
            &[1],
            Spec {
                qtype: QType::Uint8,
                symmetric: false,
            },
            Store::F32,
        )
        .unwrap();
        assert_eq!(q.params[0].zero_point, 0);
        assert_eq!(q.params[0].scale, 3.0 / 255.0);
        assert_eq!(q.codes[1], 255);
        let q = quantize_blocks(
            &[-1.0, 3.0, 0.0, 2.0],
            &[4],
            &[1],
            Spec {
                qtype: QType::Int8,
                symmetric: false,
            },
            Store::F32,
        )
        .unwrap();
        // zp = round((-128·3 − 127·(−1)) / 4) = round(−64.25) = −64.
        assert_eq!(q.params[0].zero_point, -64);
        assert_eq!(q.codes[2] as i8, -64);
    }

    #[test]
    fn all_zero_and_non_finite_blocks() {
        let spec = Spec {
            qtype: QType::Int8,
            symmetric: true,
        };
        let q = quantize_blocks(&[0.0; 8], &[2, 4], &[2, 1], spec, Store::F16).unwrap();
        assert!(q.codes.iter().all(|&c| c == 0));
        assert_eq!(q.sse, 0.0);
        assert_eq!(
            quantize_blocks(&[0.0, f32::NAN], &[2], &[1], spec, Store::F16).unwrap_err(),
            QuantError::NonFinite
        );
        assert_eq!(
            quantize_blocks(&[0.0; 6], &[6], &[4], spec, Store::F16).unwrap_err(),
            QuantError::BadGrid
        );
    }

    /// The one-visit path for row-local blocks gives the same codes,
    /// parameters and sums, bit for bit, as ranging everything first: per
    /// channel (linear and conv shapes), per block along the last axis, in
    /// every code type and mode, on fp16 read in place and on f32; and a
    /// non-finite value is refused by both.
    #[test]
    fn row_local_path_equals_two_passes() {
        let shapes: &[(&[usize], &[usize])] = &[
            (&[37, 200], &[37, 1]),
            (&[12, 5, 3, 3], &[12, 1, 1, 1]),
            (&[8, 96], &[8, 3]),
            (&[6, 8, 3, 3], &[6, 4, 1, 1]),
            (&[300], &[10]),
            (&[3, 70_000], &[3, 1]),
        ];
        for (k, &(shape, grid)) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let xs = values(n, k as u64 + 3, 0.05, Store::F16);
            let h: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
            assert!(
                RowBlocks::new(shape, grid).row_local(),
                "{shape:?} {grid:?}"
            );
            for qtype in ALL {
                for symmetric in [true, false] {
                    let spec = Spec { qtype, symmetric };
                    let a = quantize_with(&h, shape, grid, spec, Store::F16, true).unwrap();
                    let b = quantize_with(&h, shape, grid, spec, Store::F16, false).unwrap();
                    let c = quantize_with(&xs, shape, grid, spec, Store::F32, true).unwrap();
                    let d = quantize_with(&xs, shape, grid, spec, Store::F32, false).unwrap();
                    for (p, q) in [(&a, &b), (&c, &d)] {
                        assert_eq!(p.codes, q.codes, "{shape:?} {qtype:?}");
                        assert_eq!(p.params, q.params);
                        assert_eq!(p.signal.to_bits(), q.signal.to_bits());
                        assert_eq!(p.sse.to_bits(), q.sse.to_bits());
                        assert_eq!(p.max_abs.to_bits(), q.max_abs.to_bits());
                    }
                }
            }
            let mut bad = h.clone();
            bad[n - 1] = f16::NAN;
            let spec = Spec {
                qtype: QType::Int8,
                symmetric: true,
            };
            assert_eq!(
                quantize_with(&bad, shape, grid, spec, Store::F16, true).unwrap_err(),
                QuantError::NonFinite
            );
        }
        // Per tensor is not row-local: blocks span rows.
        assert!(!RowBlocks::new(&[8, 96], &[1, 1]).row_local());
    }

    /// The fp16 range on bits equals the widened float reduction: on runs
    /// drawn from all 65,536 bit patterns (so NaNs, infinities, subnormals
    /// and both zeros), at lengths around the 32-lane width.
    #[test]
    fn f16_range_on_bits_equals_the_float_range() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut buf = [0f32; SUB];
        for case in 0..4000 {
            let n = [0, 1, 7, 31, 32, 33, 64, 95, 200][case % 9];
            // Mostly finite values, and now and then a special one.
            let xs: Vec<f16> = (0..n)
                .map(|_| {
                    let r = next();
                    let b = (r >> 16) as u16;
                    if case % 3 == 0 || r % 7 != 0 {
                        f16::from_bits(b & 0xbfff)
                    } else {
                        f16::from_bits(b)
                    }
                })
                .collect();
            let (lo, hi, fin) = range_of_f16(&xs);
            let (lo0, hi0, fin0) = range_of(&xs, &mut buf);
            assert_eq!(fin, fin0, "finite flag of {xs:?}");
            if fin0 {
                // Equal as values (== treats the two zeros as one).
                assert!(lo == lo0 && hi == hi0, "{xs:?}: {lo} {hi} vs {lo0} {hi0}");
            }
        }
        // Every finite value alone, and with its negation.
        for b in 0..0x7c00u16 {
            let x = f16::from_bits(b);
            for xs in [vec![x], vec![-x, x], vec![x, -x, f16::ZERO]] {
                let (lo, hi, fin) = range_of_f16(&xs);
                let (lo0, hi0, fin0) = range_of(&xs, &mut buf);
                assert!(fin && fin0 && lo == lo0 && hi == hi0, "{xs:?}");
            }
        }
    }

    /// Blocks are laid out as the grid says: per-channel on axis 1 of a
    /// [2, 3, 2] tensor gives each of the 3 channels its own scale.
    #[test]
    fn block_layout() {
        let mut seen = Vec::new();
        for_each_block(&[2, 3, 2], &[1, 3, 1], |e, b| seen.push((e, b)));
        let blocks: Vec<usize> = seen.iter().map(|p| p.1).collect();
        assert_eq!(blocks, vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
        let mut seen = Vec::new();
        for_each_block(&[4, 4], &[2, 2], |_, b| seen.push(b));
        assert_eq!(seen, vec![0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]);
    }

    /// `round_to_f16` is `half`'s f32 → f16 → f32 on a spread of f32 bit
    /// patterns (every 997th, both signs, all exponents) and on every value
    /// within a few ulps of each fp16 value and of each midpoint between two.
    #[test]
    fn round_to_f16_matches_half() {
        let check = |v: f32| {
            let want = f16::from_f32(v).to_f32();
            let got = round_to_f16(v);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{v:e} ({:#x}): {got:e} vs {want:e}",
                v.to_bits()
            );
        };
        for b in (0..=u32::MAX).step_by(997) {
            check(f32::from_bits(b));
        }
        for h in 0..=u16::MAX {
            let v = f16::from_bits(h).to_f32();
            if !v.is_finite() {
                continue;
            }
            let next = f16::from_bits(h.wrapping_add(1)).to_f32();
            let mid = if next.is_finite() {
                (v + next) / 2.0
            } else {
                v
            };
            for c in [v, mid] {
                for d in -3i32..=3 {
                    check(f32::from_bits(c.to_bits().wrapping_add_signed(d)));
                }
            }
        }
    }

    /// The previous, literal form of the code choice: round `w / scale`,
    /// then take the best of it and both neighbours (strictly better wins).
    fn quantize_three(w: f32, p: Params, lo: i32, hi: i32, store: Store) -> i32 {
        let dec = |q: i32| {
            let v = p.scale * (q - p.zero_point) as f32;
            match store {
                Store::F16 => f16::from_f32(v).to_f32(),
                Store::F32 => v,
            }
        };
        let x = (f64::from(w) / f64::from(p.scale)).round_ties_even();
        let q0 = (x.clamp(-1e9, 1e9) as i32 + p.zero_point).clamp(lo, hi);
        let err = |q: i32| (f64::from(dec(q)) - f64::from(w)).abs();
        let (mut best, mut best_err) = (q0, err(q0));
        for q in [q0 - 1, q0 + 1] {
            if (lo..=hi).contains(&q) && err(q) < best_err {
                best = q;
                best_err = err(q);
            }
        }
        best
    }

    /// The one-neighbour choice and the parallel chunked loop give the codes
    /// of the literal three-candidate rule on a tensor spanning many chunks
    /// (per channel and per block grids, every code type and mode), with
    /// values sitting on and around decision midpoints; the error sums are
    /// the same bits with 1 and 3 threads.
    /// The AVX2 loop gives the scalar loop's codes and partial sums bit for
    /// bit, over every finite fp16 value within range, for scales from
    /// subnormal to large, every code type and mode (the scalar loop is the
    /// one `chunked_codes_match_the_literal_rule` checks against the
    /// literal rule).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_segment_equals_the_scalar_loop() {
        if !avx2_f16c() {
            eprintln!("skipped: this CPU has no AVX2+F16C");
            return;
        }
        // Every loop this CPU runs, the portable one included.
        let loops: Vec<Simd> = [Simd::None, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&s| s <= Simd::detect())
            .collect();
        if !loops.contains(&Simd::Avx512) {
            eprintln!("note: this CPU has no AVX-512F; its loop is not checked here");
        }
        let all: Vec<f32> = (0..=u16::MAX)
            .map(|b| f16::from_bits(b).to_f32())
            .filter(|v| v.is_finite())
            .collect();
        let scales = [
            f16::from_bits(1).to_f32(),
            f16::from_bits(0x0155).to_f32(),
            6.103_515_6e-5,
            1e-3,
            0.0123,
            0.333,
            1.0,
            3.7,
            100.0,
            250.0,
        ];
        let mut checked = 0usize;
        for &t in &ALL {
            for symmetric in [true, false] {
                let (lo, hi) = t.range(symmetric);
                let zps: &[i32] = if symmetric {
                    &[if t.signed() { 0 } else { hi / 2 }]
                } else {
                    &[lo, (lo + hi) / 2, hi, lo + 3]
                };
                for &scale in &scales {
                    for &zero_point in zps {
                        let p = Params {
                            scale: f16::from_f32(scale).to_f32(),
                            zero_point,
                        };
                        let reach = (lo - zero_point).abs().max((hi - zero_point).abs());
                        let lim = f64::from(p.scale) * f64::from(reach);
                        if lim >= 65504.0 {
                            continue;
                        }
                        // Values a little beyond the levels too (clamped).
                        let xs: Vec<f32> = all
                            .iter()
                            .copied()
                            .filter(|v| f64::from(v.abs()) <= 1.5 * lim + 1e-3)
                            .collect();
                        let n = xs.len() / LANES * LANES;
                        let all_16: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
                        let (xs, mut a, mut b) = (&xs[..n], vec![0u8; n], vec![0u8; n]);
                        let rb =
                            quantize_segment_with(xs, &mut b, p, lo, hi, Store::F16, Simd::None);
                        for &simd in &loops {
                            let ra = quantize_segment_with(xs, &mut a, p, lo, hi, Store::F16, simd);
                            assert_eq!(
                                a, b,
                                "{simd:?} {t:?} sym={symmetric} scale={scale} zp={zero_point}"
                            );
                            assert_eq!(ra.0.to_bits(), rb.0.to_bits());
                            assert_eq!(ra.1.to_bits(), rb.1.to_bits());
                            assert_eq!(ra.2.to_bits(), rb.2.to_bits());
                        }
                        // fp16 read in place, both loops, plus a tail.
                        let x16: Vec<f16> =
                            all_16[..n].iter().chain(&all_16[..5]).copied().collect();
                        let mut want = vec![0u8; n + 5];
                        let w32: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
                        let rw = quantize_segment_with(
                            &w32,
                            &mut want,
                            p,
                            lo,
                            hi,
                            Store::F16,
                            Simd::None,
                        );
                        for &simd in &loops {
                            let mut c = vec![0u8; n + 5];
                            let r =
                                quantize_segment_with(&x16, &mut c, p, lo, hi, Store::F16, simd);
                            assert_eq!(c, want);
                            assert_eq!(r.1.to_bits(), rw.1.to_bits());
                            assert_eq!(r.0.to_bits(), rw.0.to_bits());
                        }
                        checked += n;
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    #[test]
    fn chunked_codes_match_the_literal_rule() {
        let shape = [96usize, 2100];
        let n = shape[0] * shape[1];
        assert!(n > 2 * CHUNK_ELEMS);
        for store in [Store::F16, Store::F32] {
            let mut x = values(n, 11, 0.08, store);
            // Midpoints of a plausible step, and fp16 neighbours of them.
            for (i, v) in x.iter_mut().enumerate().step_by(7) {
                let step = 0.08 / 127.0;
                let m = ((i % 200) as f32 - 100.0 + 0.5) * step;
                *v = store.round(f32::from_bits(m.to_bits().wrapping_add((i % 3) as u32)));
            }
            for &t in &ALL {
                for symmetric in [true, false] {
                    for grid in [[96usize, 1], [1, 1], [96, 21]] {
                        let spec = Spec {
                            qtype: t,
                            symmetric,
                        };
                        let q = quantize_blocks(&x, &shape, &grid, spec, store).unwrap();
                        if store == Store::F16 {
                            let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                            let q16 = quantize_blocks_f16(&x16, &shape, &grid, spec).unwrap();
                            assert_eq!(q16.codes, q.codes);
                            assert_eq!(q16.params, q.params);
                            assert_eq!(q16.sse.to_bits(), q.sse.to_bits());
                            assert_eq!(q16.signal.to_bits(), q.signal.to_bits());
                            assert_eq!(q16.max_abs.to_bits(), q.max_abs.to_bits());
                        }
                        let (lo, hi) = t.range(symmetric);
                        for_each_block(&shape, &grid, |e, b| {
                            let want = quantize_three(x[e], q.params[b], lo, hi, store);
                            assert_eq!(q.codes[e], want as u8, "{t:?} {symmetric} {grid:?} {e}");
                        });
                        let pool = |k| {
                            rayon::ThreadPoolBuilder::new()
                                .num_threads(k)
                                .build()
                                .unwrap()
                        };
                        let one =
                            pool(1).install(|| quantize_blocks(&x, &shape, &grid, spec, store));
                        let three =
                            pool(3).install(|| quantize_blocks(&x, &shape, &grid, spec, store));
                        let (one, three) = (one.unwrap(), three.unwrap());
                        assert_eq!(one.sse.to_bits(), three.sse.to_bits());
                        assert_eq!(one.signal.to_bits(), q.signal.to_bits());
                        assert_eq!(one.codes, three.codes);
                    }
                }
            }
        }
    }
}
