//! bf16, the storage type of the GPU's inputs and activations: conversions from and to f32, in
//! one place for every crate (the GPU's uploads, the checkpoint loader, and the CPU model's bf16
//! emulation that measures rounding floors).

/// bf16 bits from an f32, rounding to nearest even (NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return 0x7fc0;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// f32 from bf16 bits (exact).
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32.
pub fn round(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

/// Every element of `xs` rounded to the nearest bf16 in place.
pub fn round_all(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = round(*x));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: up to the even one
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(-2.5e-3), bf16_to_f32(f32_to_bf16(-2.5e-3)));
        assert!((round(0.1) - 0.1).abs() <= 0.1 / 256.0);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
    }
}
