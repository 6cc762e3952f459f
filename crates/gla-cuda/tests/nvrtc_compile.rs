//! Compiles every kernel source with NVRTC for sm_90a and sm_80 (no GPU needed: NVRTC runs ptxas,
//! so this is a real compile check). Skipped with a notice when libnvrtc cannot be loaded, unless
//! `GLA_REQUIRE_NVRTC=1`, which turns a missing libnvrtc into a failure (CI sets it after
//! `.ci/nvrtc-setup.sh`).

use gla_cuda::kernels::ALL;
use gla_cuda::kernels::DELTA;
use gla_cuda::runtime::{compile_cubin_as, nvrtc_available, nvrtc_version, DeltaPrecision, ARCH_HOPPER};

/// Whether the compile checks run: false (with a notice) when libnvrtc cannot be loaded, a failure
/// under `GLA_REQUIRE_NVRTC=1`.
fn nvrtc_here() -> bool {
    let required = std::env::var("GLA_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !nvrtc_available() {
        assert!(
            !required,
            "GLA_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded (LD_LIBRARY_PATH={:?})",
            std::env::var("LD_LIBRARY_PATH").ok()
        );
        eprintln!("NOTICE: libnvrtc not found, kernel compile check SKIPPED (run .ci/nvrtc-setup.sh and export LD_LIBRARY_PATH)");
        return false;
    }
    true
}

/// Compiles every source for `arch` under delta precision `p` (every source for the split
/// default; the delta programs only for one plane) into a fresh cache directory `dir` (not one a
/// previous build left behind), checking each cubin's entry points; returns the compile errors.
fn compile_all(arch: &str, p: DeltaPrecision, dir: &std::path::Path) -> Vec<String> {
    std::env::set_var("GLA_CACHE_DIR", dir);
    let (major, minor) = nvrtc_version().expect("nvrtc version");
    let mut failures = Vec::new();
    let delta = |s: &&gla_cuda::kernels::KernelSource| s.headers.iter().any(|h| h.name == DELTA.name);
    for src in ALL.iter().filter(|s| p == DeltaPrecision::Split || delta(s)) {
        match compile_cubin_as(src, arch, p) {
            Ok(cubin) => {
                assert!(cubin.starts_with(b"\x7fELF"), "{}: NVRTC output is not a cubin (ELF)", src.name);
                for e in src.entries {
                    assert!(cubin.windows(e.len()).any(|w| w == e.as_bytes()), "{}: entry point {e} missing from the cubin", src.name);
                }
                eprintln!("nvrtc {major}.{minor}: {} -> {} bytes of {arch} cubin", src.name, cubin.len());
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    failures
}

/// sm_90a (Hopper with wgmma, setmaxnreg: the CI target), then sm_80: the runtime compiles for
/// the device's own arch, so Hopper-only instructions need a fallback, and every kernel also builds
/// for A100 (the oldest arch with the bf16 tensor-core MMAs the kernels use). One test, so that
/// the process-wide GLA_CACHE_DIR is never switched under a running compile.
#[test]
fn every_kernel_compiles_for_sm90a_and_sm80() {
    if !nvrtc_here() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("gla-nvrtc-test-{}", std::process::id()));
    let failures = compile_all(ARCH_HOPPER, DeltaPrecision::Split, &dir);
    // a second compile must come from the on-disk cache and be identical
    for src in ALL {
        let again = || compile_cubin_as(src, ARCH_HOPPER, DeltaPrecision::Split);
        if let (Ok(a), Ok(b)) = (again(), again()) {
            assert_eq!(a, b, "{}: cached cubin differs", src.name);
        }
    }
    assert!(failures.is_empty(), "{} kernel(s) failed to compile:\n{}", failures.len(), failures.join("\n\n"));
    // the delta programs again on one bf16 plane (GLA_DELTA_PRECISION=bf16), for both archs
    for arch in [ARCH_HOPPER, "sm_80"] {
        let failures = compile_all(arch, DeltaPrecision::Bf16, &dir);
        assert!(failures.is_empty(), "{} kernel(s) failed on one plane for {arch}:\n{}", failures.len(), failures.join("\n\n"));
    }
    let failures = compile_all("sm_80", DeltaPrecision::Split, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{} kernel(s) failed to compile for sm_80:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn no_kernel_includes_a_header() {
    for src in ALL {
        assert!(!src.code().contains("#include"), "{} must be self-contained (no #include)", src.name);
    }
}
