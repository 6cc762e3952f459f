//! Runs everywhere: without a GPU, driver or libnvrtc the crate answers with an error, never a
//! panic; the host-side helpers are exact.

use gla_core::op::GlaOp;
use gla_cuda::ops::{bf16_to_f32, f32_to_bf16};
use gla_cuda::{Algo, Cuda, CudaGla};

#[test]
fn opening_a_device_never_panics() {
    match Cuda::new() {
        Ok(c) => {
            // on a GPU machine: the op must at least name itself
            let op = CudaGla::new(c, Algo::Chunked, true);
            assert_eq!(op.name(), "cuda-chunk-bf16");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("CUDA") || msg.contains("nvrtc") || msg.contains("device"), "unclear error: {msg}");
            eprintln!("no device here (expected on CI): {msg}");
        }
    }
}

#[test]
fn bf16_round_trip() {
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    // round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> 1
    assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    for x in [-3.5f32, 0.0, 1e-20, 65504.0, -0.1] {
        let y = bf16_to_f32(f32_to_bf16(x));
        assert!((y - x).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {y}");
    }
}
