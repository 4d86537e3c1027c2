//! Sub-byte packing (uint1/2/3/4/6, int4) as Core ML stores it.
//!
//! Element `i` of an `n`-bit tensor occupies bits `[i*n, i*n + n)` of a
//! little-endian bit stream; byte `k` holds stream bits `8k..8k+7` with bit 0
//! as the least significant bit. An element may straddle two bytes (n = 3,
//! 6). The stream is padded with zero bits up to a whole byte:
//!
//! ```text
//! uint4 [1, 2, 3, 15, 9]  ->  0x21 0xf3 0x09   (padding 4 bits)
//!        lo hi lo hi lo
//! ```
//!
//! `int4` uses the same layout with two's complement nibbles.

/// Number of bytes needed for `count` elements of `nbits` bits.
///
/// Returns `None` on overflow (only possible for absurd counts from a file).
pub fn packed_len(count: usize, nbits: u32) -> Option<usize> {
    count
        .checked_mul(nbits as usize)?
        .checked_add(7)
        .map(|b| b / 8)
}

/// Padding bits in the last byte of a packed stream of `count` elements.
pub fn padding_bits(count: usize, nbits: u32) -> u8 {
    let bits = (count as u128) * u128::from(nbits);
    (8 - (bits % 8) as u8) % 8
}

/// Packs `values` (each `< 2^nbits`; higher bits are masked off) into bytes.
pub fn pack(values: &[u8], nbits: u32) -> Vec<u8> {
    debug_assert!((1..=8).contains(&nbits));
    let len = packed_len(values.len(), nbits).expect("packed length overflows usize");
    let mut out = vec![0u8; len];
    pack_into(values, nbits, &mut out);
    out
}

/// [`pack`] on all threads: runs of 2^20 elements (a multiple of 8, so
/// every run starts on a byte boundary whatever `nbits`) are packed
/// independently into their own bytes of the same stream.
pub fn pack_par(values: &[u8], nbits: u32) -> Vec<u8> {
    use rayon::prelude::*;
    const RUN: usize = 1 << 20;
    if values.len() <= RUN {
        return pack(values, nbits);
    }
    let len = packed_len(values.len(), nbits).expect("packed length overflows usize");
    let mut out = vec![0u8; len];
    out.par_chunks_mut(RUN / 8 * nbits as usize)
        .zip(values.par_chunks(RUN))
        .for_each(|(o, v)| pack_into(v, nbits, o));
    out
}

/// Packs `values` into `out`, which must be zeroed and exactly
/// `packed_len(values.len(), nbits)` bytes long.
fn pack_into(values: &[u8], nbits: u32, out: &mut [u8]) {
    debug_assert_eq!(Some(out.len()), packed_len(values.len(), nbits));
    match nbits {
        8 => {
            out.copy_from_slice(values);
            return;
        }
        // Widths that divide a byte: eight input bytes at a time, gathered
        // into 8/nbits output bytes with shifts inside a u64 (SWAR). The
        // plain per-pair loop did not vectorise and cost about a tenth of
        // a per-tensor palettization.
        1 | 2 | 4 => {
            let per = (8 / nbits) as usize;
            let words = values.len() / 8;
            let (head, tail) = values.split_at(words * 8);
            let (out_head, out_tail) = out.split_at_mut(words * 8 / per);
            match nbits {
                4 => pack_words::<4>(head, out_head),
                2 => pack_words::<2>(head, out_head),
                _ => pack_words::<1>(head, out_head),
            }
            let m = (1u8 << nbits) - 1;
            for (o, c) in out_tail.iter_mut().zip(tail.chunks(per)) {
                *o = c
                    .iter()
                    .enumerate()
                    .fold(0u8, |a, (j, &v)| a | ((v & m) << (j * nbits as usize)));
            }
            return;
        }
        _ => {}
    }
    let mask: u16 = (1u16 << nbits) - 1;
    let mut bit = 0usize;
    for &v in values {
        let v = u16::from(v) & mask;
        let byte = bit / 8;
        let shift = bit % 8;
        let shifted = v << shift;
        out[byte] |= shifted as u8;
        if shift + nbits as usize > 8 {
            out[byte + 1] |= (shifted >> 8) as u8;
        }
        bit += nbits as usize;
    }
}

/// Packs whole words of eight elements of a width that divides a byte
/// (`out` holds `N` bytes per word). Monomorphised per width so the gather
/// inlines and the loop vectorises.
#[inline(always)]
fn pack_words<const N: u32>(values: &[u8], out: &mut [u8]) {
    let gather = |x: u64| match N {
        4 => gather4(x),
        2 => gather2(x),
        _ => gather1(x),
    };
    for (o, c) in out.chunks_exact_mut(N as usize).zip(values.chunks_exact(8)) {
        let x = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        o.copy_from_slice(&gather(x).to_le_bytes()[..N as usize]);
    }
}

/// Eight 4-bit elements, one per byte of `x` (little-endian), packed into
/// the low four bytes.
#[inline(always)]
fn gather4(x: u64) -> u64 {
    let x = x & 0x0f0f_0f0f_0f0f_0f0f;
    let x = (x | (x >> 4)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    (x | (x >> 16)) & 0xffff_ffff
}

/// Eight 2-bit elements packed into the low two bytes.
#[inline(always)]
fn gather2(x: u64) -> u64 {
    let x = x & 0x0303_0303_0303_0303;
    let x = (x | (x >> 6)) & 0x000f_000f_000f_000f;
    let x = (x | (x >> 12)) & 0x0000_00ff_0000_00ff;
    (x | (x >> 24)) & 0xffff
}

/// Eight 1-bit elements packed into the low byte.
#[inline(always)]
fn gather1(x: u64) -> u64 {
    let x = x & 0x0101_0101_0101_0101;
    let x = (x | (x >> 7)) & 0x0003_0003_0003_0003;
    let x = (x | (x >> 14)) & 0x0000_000f_0000_000f;
    (x | (x >> 28)) & 0xff
}

/// Unpacks `count` unsigned `nbits`-bit elements.
///
/// Returns `None` if `bytes` is too short. Extra bytes are ignored (the
/// caller validates sizes against the declared shape).
pub fn unpack(bytes: &[u8], nbits: u32, count: usize) -> Option<Vec<u8>> {
    if !(1..=8).contains(&nbits) || bytes.len() < packed_len(count, nbits)? {
        return None;
    }
    if nbits == 8 {
        return Some(bytes[..count].to_vec());
    }
    let mask: u16 = (1u16 << nbits) - 1;
    let mut out = Vec::with_capacity(count);
    match nbits {
        // Fast paths for the widths that do not straddle bytes.
        1 | 2 | 4 => {
            let per = 8 / nbits as usize;
            'outer: for &b in bytes {
                for j in 0..per {
                    if out.len() == count {
                        break 'outer;
                    }
                    out.push(((u16::from(b) >> (j * nbits as usize)) & mask) as u8);
                }
            }
        }
        _ => {
            let mut bit = 0usize;
            for _ in 0..count {
                let byte = bit / 8;
                let shift = bit % 8;
                let lo = u16::from(bytes[byte]);
                let hi = if shift + nbits as usize > 8 {
                    u16::from(bytes[byte + 1])
                } else {
                    0
                };
                out.push((((lo | (hi << 8)) >> shift) & mask) as u8);
                bit += nbits as usize;
            }
        }
    }
    Some(out)
}

/// Sign-extends 4-bit two's complement values (as unpacked by [`unpack`]).
pub fn sign_extend_4(values: &[u8]) -> Vec<i8> {
    values.iter().map(|&v| ((v << 4) as i8) >> 4).collect()
}

/// Whether the padding bits after `count` elements are all zero.
pub fn padding_is_zero(bytes: &[u8], nbits: u32, count: usize) -> bool {
    let used_bits = count * nbits as usize;
    let Some(last) = bytes.last() else {
        return true;
    };
    let rem = used_bits % 8;
    if rem == 0 || used_bits.div_ceil(8) != bytes.len() {
        return true;
    }
    last >> rem == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Byte patterns hex-verified against coremltools 9.0 output.
    #[test]
    fn known_layouts() {
        assert_eq!(
            pack(&[1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0], 1),
            vec![0x8d, 0x03]
        );
        assert_eq!(pack(&[1, 2, 3, 0, 1], 2), vec![0x39, 0x01]);
        assert_eq!(pack(&[1, 2, 3, 4, 5, 6, 7], 3), vec![0xd1, 0x58, 0x1f]);
        assert_eq!(pack(&[1, 2, 3, 15, 9], 4), vec![0x21, 0xf3, 0x09]);
        assert_eq!(pack(&[1, 2, 63, 33, 5], 6), vec![0x81, 0xf0, 0x87, 0x05]);
        let int4: Vec<u8> = [-1i8, 2, -8, 7, -3]
            .iter()
            .map(|&v| v as u8 & 0xf)
            .collect();
        assert_eq!(pack(&int4, 4), vec![0x2f, 0x78, 0x0d]);
        assert_eq!(
            sign_extend_4(&unpack(&[0x2f, 0x78, 0x0d], 4, 5).unwrap()),
            vec![-1, 2, -8, 7, -3]
        );
        assert_eq!(padding_bits(11, 1), 5);
        assert_eq!(padding_bits(5, 2), 6);
        assert_eq!(padding_bits(7, 3), 3);
        assert_eq!(padding_bits(5, 6), 2);
        assert_eq!(padding_bits(8, 4), 0);
    }

    #[test]
    fn short_input_is_refused() {
        assert_eq!(unpack(&[0xff], 4, 3), None);
        assert_eq!(unpack(&[0xff], 9, 1), None);
    }

    /// The bit-serial definition of the layout, for any width.
    fn pack_reference(values: &[u8], nbits: u32) -> Vec<u8> {
        let mut out = vec![0u8; packed_len(values.len(), nbits).unwrap()];
        for (i, &v) in values.iter().enumerate() {
            for b in 0..nbits as usize {
                if v >> b & 1 == 1 {
                    let bit = i * nbits as usize + b;
                    out[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn pack_equals_the_bit_serial_layout(nbits in prop::sample::select(vec![1u32, 2, 3, 4, 6, 8]),
                                             raw in prop::collection::vec(any::<u8>(), 0..200)) {
            let mask = if nbits == 8 { 0xff } else { (1u8 << nbits) - 1 };
            let vals: Vec<u8> = raw.iter().map(|v| v & mask).collect();
            prop_assert_eq!(pack(&vals, nbits), pack_reference(&vals, nbits));
            // High bits of an input byte never leak into a neighbour.
            prop_assert_eq!(pack(&raw, nbits), pack_reference(&vals, nbits));
        }

        #[test]
        fn round_trip_every_width(nbits in prop::sample::select(vec![1u32, 2, 3, 4, 6, 8]),
                                  raw in prop::collection::vec(any::<u8>(), 0..300)) {
            let mask = if nbits == 8 { 0xff } else { (1u8 << nbits) - 1 };
            let vals: Vec<u8> = raw.iter().map(|v| v & mask).collect();
            let packed = pack(&vals, nbits);
            prop_assert_eq!(packed.len(), packed_len(vals.len(), nbits).unwrap());
            prop_assert!(padding_is_zero(&packed, nbits, vals.len()));
            prop_assert_eq!(unpack(&packed, nbits, vals.len()).unwrap(), vals);
        }
    }
}
