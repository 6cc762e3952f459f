//! Runtime: library presence checks, NVRTC compile-and-cache, the device context and stream, the
//! device's limits, the user options read from the environment, and the one kernel launch helper
//! ([`Cuda::launch`]).
//!
//! cudarc's `dynamic-loading` panics when a library is missing; every first touch of the driver
//! or of NVRTC here goes through [`nvrtc_available`] / [`driver_available`], which probe the
//! library inside `catch_unwind`, so a machine without a GPU gets an [`Error`], never a panic.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys, Ptx};

use crate::error::{Error, Result};
use crate::kernels::{self, KernelSource};

/// The architecture the CI compile check targets (Hopper with the `a` features: wgmma, setmaxnreg).
pub const ARCH_HOPPER: &str = "sm_90a";

fn probe(f: impl FnOnce() -> bool + std::panic::UnwindSafe) -> bool {
    // cudarc's `is_culib_present` only tries dlopen and returns false; the guard is there in case
    // a future version panics like its loader does (the global panic hook is left alone)
    std::panic::catch_unwind(f).unwrap_or(false)
}

/// Whether libnvrtc can be loaded (searched by cudarc under the names `libnvrtc.so`, `libnvrtc.so.13`, ...
/// on the dynamic loader's path, i.e. `LD_LIBRARY_PATH` and the system directories).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library; no symbol is called
    probe(|| unsafe { nvrtc_sys::is_culib_present() })
}

/// Whether the NVIDIA driver library (`libcuda.so`) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library; no symbol is called
    probe(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

/// NVRTC's version `(major, minor)`.
///
/// # Errors
/// [`Error::NoNvrtc`] when the library is missing.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(Error::NoNvrtc("dlopen of libnvrtc failed".into()));
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is loaded (checked above); both pointers are valid for the call
    let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    if status != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::NoNvrtc(format!("nvrtcVersion returned {status:?}")));
    }
    Ok((major, minor))
}

/// The NVRTC options every kernel is compiled with, for `arch` (e.g. `sm_90a`).
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into(), "--fmad=true".into(), "-default-device".into(), "-lineinfo".into()]
}

/// FNV-1a, 64 bit: a hash that is stable across Rust versions and runs (the on-disk cache key).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // separator so ("ab","c") != ("a","bc")
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The on-disk kernel cache directory: `$GLA_CACHE_DIR`, else `$XDG_CACHE_HOME/gla`, else
/// `~/.cache/gla`. `None` when none can be determined (then only the in-process cache is used).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GLA_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("gla"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("gla"))
}

/// The environment variable that picks the delta rule's bf16 chunk precision
/// ([`delta_precision`]).
pub const DELTA_PRECISION_VAR: &str = "GLA_DELTA_PRECISION";

/// How the delta rule's bf16 chunk kernels hold the operands whose chunk form cancels (T =
/// (I + A)^-1 and its scaled copies, w, v_new, P, dU, dw, ...; u stays f32; docs/kernels.md,
/// "Precision of the bf16 path"). One choice per process: the kernels are compiled for it
/// ([`program_text`]). On the command line: `GLA_DELTA_PRECISION=bf16 gla train ...`
/// ([`DELTA_PRECISION_VAR`]). Shared memory and workspaces follow the planes of the mode
/// ([`crate::dispatch::delta::planes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaPrecision {
    /// `split`, the default: hi + lo bf16 planes (about 16 bits of mantissa); the case table's
    /// bf16 tolerance holds on every case.
    Split,
    /// `bf16`: one bf16 plane, the storage precision of fla's kernels. About a fifth less time
    /// (fewer bytes and products); up to 7e-2 off the oracle on the table's ill-conditioned
    /// cases (negative eigenvalues, betas near 1), where the split form is within 5e-3.
    Bf16,
}

/// The process's [`DeltaPrecision`], from [`DELTA_PRECISION_VAR`] (`split` or `bf16`; unset or
/// empty: `split`), read once.
///
/// # Errors
/// [`Error::Setting`] for any other value.
pub fn delta_precision() -> Result<DeltaPrecision> {
    static MODE: std::sync::OnceLock<std::result::Result<DeltaPrecision, String>> = std::sync::OnceLock::new();
    let mode = MODE.get_or_init(|| {
        let v = std::env::var_os(DELTA_PRECISION_VAR).unwrap_or_default();
        let Some(v) = v.to_str() else { return Err(format!("is not UTF-8 ({v:?}); it takes split or bf16")) };
        match v.trim() {
            "" | "split" => Ok(DeltaPrecision::Split),
            "bf16" => Ok(DeltaPrecision::Bf16),
            other => Err(format!(
                "is {other:?}; it takes split (the default: split operands, the case table's precision) or bf16 (one bf16 \
                 plane, the storage precision of fla's kernels)"
            )),
        }
    });
    mode.clone().map_err(|reason| Error::Setting { var: DELTA_PRECISION_VAR, reason })
}

/// The program NVRTC compiles for `src` under precision `p`: [`KernelSource::code`], opened by
/// `#define DELTA_PLANES 1` for the delta rule's programs under [`DeltaPrecision::Bf16`] (their
/// split products on one plane, delta/common.cuh). The on-disk cache keys on this text.
pub fn program_text(src: &KernelSource, p: DeltaPrecision) -> String {
    let delta = src.headers.iter().any(|h| h.name == crate::kernels::DELTA.name);
    let code = src.code();
    if delta && p == DeltaPrecision::Bf16 {
        format!("#define DELTA_PLANES 1\n{code}")
    } else {
        code
    }
}

/// Compiles one kernel source with NVRTC to a CUBIN for `arch` (no GPU needed).
///
/// The result is cached on disk under [`cache_dir`], keyed by a hash of the source, the options,
/// the arch and NVRTC's version; the file is written atomically (temp file + rename). A cache that
/// cannot be read or written is skipped silently: it is an optimisation, never a failure.
///
/// # Errors
/// [`Error::NoNvrtc`] when libnvrtc is missing; [`Error::Nvrtc`] with the full log when the source
/// does not compile.
pub fn compile_cubin(src: &KernelSource, arch: &str) -> Result<Vec<u8>> {
    compile_cubin_as(src, arch, delta_precision()?)
}

/// [`compile_cubin`] under the delta precision `p` rather than the process's.
///
/// # Errors
/// As [`compile_cubin`].
pub fn compile_cubin_as(src: &KernelSource, arch: &str, p: DeltaPrecision) -> Result<Vec<u8>> {
    let (major, minor) = nvrtc_version()?;
    let code = program_text(src, p);
    let options = compile_options(arch);
    let key = fnv1a(&[code.as_bytes(), options.join(" ").as_bytes(), arch.as_bytes(), format!("{major}.{minor}").as_bytes()]);
    let stem = src.name.trim_end_matches(".cu").replace('/', "-");
    let cached = cache_dir().map(|d| d.join(format!("{stem}-{arch}-{key:016x}.cubin")));
    if let Some(path) = &cached {
        if let Ok(bytes) = std::fs::read(path) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let cubin = compile_uncached(src.name, &code, arch, &options)?;
    if let Some(path) = &cached {
        let _ = gla_core::io::write_atomic(path, &cubin);
    }
    Ok(cubin)
}

fn compile_uncached(name: &str, code: &str, arch: &str, options: &[String]) -> Result<Vec<u8>> {
    compile_with_log(name, code, arch, options).map(|(cubin, _)| cubin)
}

/// What ptxas reports for one entry point ([`kernel_resources`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// The entry point.
    pub entry: String,
    /// Registers per thread.
    pub registers: u32,
    /// Named barriers used.
    pub barriers: u32,
    /// Bytes of per-thread stack frame.
    pub stack: u32,
    /// Bytes of registers spilled to local memory (stores; 0 for a kernel that fits).
    pub spill_stores: u32,
    /// Bytes read back from spills.
    pub spill_loads: u32,
    /// Bytes of static shared memory (the dynamic part is the host's launch choice).
    pub smem: u32,
}

/// Compiles `src` for `arch` with `ptxas -v` (not through the cache) and returns each entry
/// point's registers, barriers, stack, spills and static shared memory, in ptxas's order. No GPU
/// needed (`gla kernels resources`).
///
/// # Errors
/// As [`compile_cubin`].
pub fn kernel_resources(src: &KernelSource, arch: &str) -> Result<Vec<KernelResources>> {
    let mut options = compile_options(arch);
    options.push("--ptxas-options=-v".into());
    let (_, log) = compile_with_log(src.name, &program_text(src, delta_precision()?), arch, &options)?;
    Ok(parse_ptxas_log(&log))
}

/// The per-entry lines of a `ptxas -v` log ([`kernel_resources`]).
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    // the number before `unit` in `line` ("84 bytes spill stores", "Used 255 registers")
    fn num_before(line: &str, unit: &str) -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].split(|c: char| !c.is_ascii_digit()).rfind(|w| !w.is_empty())?.parse().ok()
    }
    let mut out: Vec<KernelResources> = Vec::new();
    // the function the next "stack frame" line is about: ptxas also prints blocks for device
    // functions it did not inline, which are not the entry's own numbers
    let mut props_for = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let entry = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources { entry, ..KernelResources::default() });
            continue;
        }
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = rest.trim().to_string();
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("stack frame") && props_for == k.entry {
            k.stack = num_before(line, " bytes stack frame").unwrap_or(0);
            k.spill_stores = num_before(line, " bytes spill stores").unwrap_or(0);
            k.spill_loads = num_before(line, " bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains("registers") {
            k.registers = num_before(line, " registers").unwrap_or(0);
            k.barriers = num_before(line, " barriers").unwrap_or(0);
            k.smem = num_before(line, " bytes smem").unwrap_or(0);
        }
    }
    out
}

/// Compiles with NVRTC and returns the cubin and the program log.
fn compile_with_log(name: &str, code: &str, arch: &str, options: &[String]) -> Result<(Vec<u8>, String)> {
    let nv_err =
        |status: String, log: String| Error::Nvrtc { kernel: name.into(), arch: arch.into(), status, options: options.to_vec(), log };
    let c_src = CString::new(code).map_err(|_| nv_err("source holds a NUL byte".into(), String::new()))?;
    let c_name = CString::new(name).map_err(|_| nv_err("name holds a NUL byte".into(), String::new()))?;
    let prog = nvrtc_result::create_program(&c_src, Some(&c_name)).map_err(|e| nv_err(format!("{e:?}"), String::new()))?;
    // SAFETY: prog is a live program created above; options are plain strings; the program is
    // destroyed on every path below
    let out = unsafe {
        let compiled = nvrtc_result::compile_program(prog, options);
        let log =
            nvrtc_result::get_program_log(prog).map(|raw| CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned()).unwrap_or_default();
        match compiled {
            Err(e) => Err(nv_err(format!("{e:?}"), log)),
            Ok(()) => {
                let mut size = 0usize;
                let st = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
                if st != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                    Err(nv_err(format!("nvrtcGetCUBINSize: {st:?} (size {size}); a real arch (sm_XX) is needed for a cubin"), log))
                } else {
                    let mut buf = vec![0u8; size];
                    let st = nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast::<c_char>());
                    if st == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                        Ok((buf, log))
                    } else {
                        Err(nv_err(format!("nvrtcGetCUBIN: {st:?}"), log))
                    }
                }
            }
        }
    };
    // SAFETY: prog is live and destroyed exactly once
    let _ = unsafe { nvrtc_result::destroy_program(prog) };
    out
}

/// Raises the release threshold of the device's default memory pool, so memory freed by
/// stream-ordered frees stays mapped for the next allocation instead of going back to the driver
/// at every synchronisation (a workspace of hundreds of MB per call then costs nothing). Best
/// effort: a driver without memory pools keeps its default.
fn keep_pool_memory(ctx: &Arc<CudaContext>) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the context is current on this thread (CudaContext::new binds it); pool is written
    // by the driver only on success and used only then; the attribute takes a u64 by pointer
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let mut threshold: u64 = u64::MAX;
            let _ =
                sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, (&raw mut threshold).cast());
        }
    }
}

/// The user options of the GPU runtime, read once from the environment when a [`Cuda`] is
/// opened (the crate documentation lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `GLA_SYNC_DEBUG=1`: synchronise after every kernel launch and GEMM, so that an
    /// asynchronous fault is reported by the launch that caused it (slow; for debugging).
    pub sync_debug: bool,
    /// Decode steps replay a captured CUDA graph from their second step on; `GLA_NO_GRAPH=1`
    /// (or [`Options::sync_debug`]) runs them eagerly.
    pub graphs: bool,
}

impl Options {
    /// The options as the environment sets them.
    pub fn from_env() -> Self {
        let on = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
        let sync_debug = on("GLA_SYNC_DEBUG");
        Self { sync_debug, graphs: !on("GLA_NO_GRAPH") && !sync_debug }
    }
}

thread_local! {
    /// The launches recorded by [`profile`] on this thread: (kernel, start, end events).
    static PROFILE: std::cell::RefCell<Option<Vec<(String, CudaEvent, CudaEvent)>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `work` (one kernel launch or one library call on `stream`), bracketed by CUDA events
/// named `name()` while [`profile`] records on this thread; plain `work()` otherwise.
///
/// # Errors
/// What `work` returns; driver errors of the events.
pub(crate) fn profiled<R>(stream: &Arc<CudaStream>, name: impl FnOnce() -> String, work: impl FnOnce() -> Result<R>) -> Result<R> {
    if !PROFILE.with(|p| p.borrow().is_some()) {
        return work();
    }
    let ev = || stream.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(Error::driver("create event"));
    let (a, z) = (ev()?, ev()?);
    a.record(stream).map_err(Error::driver("record event"))?;
    let r = work()?;
    z.record(stream).map_err(Error::driver("record event"))?;
    PROFILE.with(|p| p.borrow_mut().as_mut().map(|v| v.push((name(), a, z))));
    Ok(r)
}

/// Runs `f` with every kernel launch ([`Cuda::launch`]) and GEMM of this thread timed by CUDA
/// events: returns its result and each launch's (kernel or `gemm MxNxK`, ms) in launch order.
/// The events add a little time between launches; copies and memsets are not recorded. For the
/// benchmarks' breakdowns (`gla bench delta --stages`, `gla bench vig --profile`), in place of a
/// system profiler.
///
/// # Errors
/// What `f` returns; driver errors of the events.
pub fn profile<R, E: From<Error>>(
    cuda: &Cuda,
    f: impl FnOnce() -> std::result::Result<R, E>,
) -> std::result::Result<(R, Vec<(String, f64)>), E> {
    type Records = Option<Vec<(String, CudaEvent, CudaEvent)>>;
    /// Puts back the records of an enclosing profile (or none) when this one ends, also when
    /// `f` panics, so recording never stays on by accident and a nested profile takes only its
    /// own launches.
    struct Restore(Option<Records>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(prev) = self.0.take() {
                PROFILE.with(|p| *p.borrow_mut() = prev);
            }
        }
    }
    let restore = Restore(Some(PROFILE.with(|p| p.borrow_mut().replace(Vec::new()))));
    let r = f();
    let recs = PROFILE.with(|p| p.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    let r = r?;
    cuda.sync()?;
    let mut out = Vec::with_capacity(recs.len());
    for (name, a, z) in recs {
        out.push((name, f64::from(a.elapsed_ms(&z).map_err(Error::driver("event elapsed"))?)));
    }
    Ok((r, out))
}

/// [`profile`]'s records summed per name, largest total first: (name, launches, total ms).
pub fn profile_totals(recs: &[(String, f64)]) -> Vec<(String, usize, f64)> {
    let mut by: HashMap<&str, (usize, f64)> = HashMap::new();
    for (name, ms) in recs {
        let e = by.entry(name.as_str()).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    let mut out: Vec<(String, usize, f64)> = by.into_iter().map(|(n, (c, t))| (n.to_string(), c, t)).collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    out
}

/// One argument of a kernel launch ([`Cuda::launch`]): a device buffer (its address), an
/// optional one (a null address for `None`), or a scalar, pushed by reference.
pub trait KernelArg {
    /// Pushes the argument onto a launch.
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>);
}

/// The null device address, for a kernel's optional pointer arguments.
pub const NULL: u64 = 0;

macro_rules! scalar_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
scalar_arg!(i32, i64, u32, u64, f32, f64);

impl<T> KernelArg for CudaSlice<T> {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        b.arg(self);
    }
}
impl<A: KernelArg + ?Sized> KernelArg for &A {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        (**self).push(b);
    }
}
impl<A: KernelArg + ?Sized> KernelArg for &mut A {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        (**self).push(b);
    }
}
impl<A: KernelArg> KernelArg for Option<A> {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        match self {
            Some(a) => a.push(b),
            None => NULL.push(b),
        }
    }
}

/// What a [`Cuda`] handle has allocated on its device since it was opened: every device
/// allocation of this crate goes through [`Cuda::alloc_zeros`], [`Cuda::alloc_uninit`],
/// [`Cuda::upload`] or [`Cuda::duplicate`], which count it here (frees are not counted: the
/// numbers only grow). Allocations made inside libraries (cuBLAS, NCCL) are not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllocStats {
    /// Allocations made.
    pub count: u64,
    /// Bytes they asked for.
    pub bytes: u64,
}

/// A CUDA device with one stream and an in-process cache of compiled modules.
///
/// Cheap to share (`Arc<Cuda>`); all work is ordered on [`Cuda::stream`].
#[derive(Debug)]
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    sm_count: usize,
    max_smem: usize,
    options: Options,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    alloc_count: AtomicU64,
    alloc_bytes: AtomicU64,
}

impl Cuda {
    /// Opens device 0. See [`Cuda::with_ordinal`].
    ///
    /// # Errors
    /// As [`Cuda::with_ordinal`].
    pub fn new() -> Result<Arc<Self>> {
        Self::with_ordinal(0)
    }

    /// Opens device `ordinal`, creates a stream, and reads the device's arch (`sm_90a` on Hopper,
    /// `sm_XY` elsewhere).
    ///
    /// # Errors
    /// [`Error::NoDevice`] when the driver library is missing, no device exists, or the ordinal
    /// is out of range; [`Error::NoNvrtc`] when libnvrtc is missing (kernels could not be built).
    pub fn with_ordinal(ordinal: usize) -> Result<Arc<Self>> {
        if !driver_available() {
            return Err(Error::NoDevice("libcuda.so (the NVIDIA driver) cannot be loaded".into()));
        }
        if !nvrtc_available() {
            return Err(Error::NoNvrtc("dlopen of libnvrtc failed".into()));
        }
        let count = CudaContext::device_count().map_err(|e| Error::NoDevice(format!("cuInit/cuDeviceGetCount failed: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice(format!("device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoDevice(format!("context on device {ordinal}: {e}")))?;
        // All work of a `Cuda` is ordered on its one stream, so cudarc's per-buffer event
        // tracking (an event record, and a wait on the last one, at every use of a buffer) only
        // adds driver calls; and a wait on an event recorded before a stream capture began would
        // break the capture of the decode step's CUDA graph. Work on a second stream orders
        // itself with explicit events.
        // SAFETY: called before any buffer of this context exists; see the contract above.
        unsafe { ctx.disable_event_tracking() };
        let (maj, min) = ctx.compute_capability().map_err(Error::driver("compute capability"))?;
        let arch = if maj == 9 && min == 0 { ARCH_HOPPER.to_string() } else { format!("sm_{maj}{min}") };
        let attr = |a: CUdevice_attribute, what: &'static str| -> Result<usize> {
            let v = ctx.attribute(a).map_err(Error::driver(what))?;
            usize::try_from(v).map_err(|_| Error::NoDevice(format!("{what}: {v}")))
        };
        let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count")?;
        let max_smem = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "shared memory per block (opt-in)")?;
        let stream = ctx.new_stream().map_err(Error::driver("create stream"))?;
        keep_pool_memory(&ctx);
        Ok(Arc::new(Self {
            ctx,
            stream,
            arch,
            sm_count: sm_count.max(1),
            max_smem,
            options: Options::from_env(),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            alloc_count: AtomicU64::new(0),
            alloc_bytes: AtomicU64::new(0),
        }))
    }

    /// How many GPUs this process sees (after `CUDA_VISIBLE_DEVICES`).
    ///
    /// # Errors
    /// [`Error::NoDevice`] when the driver cannot be loaded or fails to count.
    pub fn device_count() -> Result<usize> {
        if !driver_available() {
            return Err(Error::NoDevice("libcuda.so (the NVIDIA driver) cannot be loaded".into()));
        }
        let n = CudaContext::device_count().map_err(|e| Error::NoDevice(format!("cuInit/cuDeviceGetCount failed: {e}")))?;
        Ok(n.max(0) as usize)
    }

    /// The device's name, e.g. `NVIDIA H200`.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "?".into())
    }
    /// The arch kernels are compiled for.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// The device's multiprocessor count (132 on an H200), read when the handle was opened.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }
    /// The most dynamic shared memory one block may opt in to, bytes (227 KB on Hopper).
    pub fn max_dynamic_smem(&self) -> usize {
        self.max_smem
    }
    /// The user options, read from the environment when the handle was opened.
    pub fn options(&self) -> Options {
        self.options
    }
    /// The stream all work of this device handle runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device allocations made through this handle so far ([`AllocStats`]).
    pub fn alloc_stats(&self) -> AllocStats {
        AllocStats { count: self.alloc_count.load(Ordering::Relaxed), bytes: self.alloc_bytes.load(Ordering::Relaxed) }
    }

    fn counted<T>(
        &self,
        len: usize,
        r: std::result::Result<CudaSlice<T>, cudarc::driver::DriverError>,
        what: impl FnOnce() -> String,
    ) -> Result<CudaSlice<T>> {
        let buf = r.map_err(|e| Error::Driver { what: what(), source: e })?;
        self.alloc_count.fetch_add(1, Ordering::Relaxed);
        self.alloc_bytes.fetch_add((len * std::mem::size_of::<T>()) as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// A zeroed stream-ordered device buffer of `len` elements, counted in
    /// [`Cuda::alloc_stats`]; `what` names it in the error (out of memory).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize, what: impl std::fmt::Display) -> Result<CudaSlice<T>> {
        self.counted(len, self.stream.alloc_zeros::<T>(len), || format!("alloc {what} ({len} elements)"))
    }

    /// An uninitialised stream-ordered device buffer of `len` elements, counted in
    /// [`Cuda::alloc_stats`].
    ///
    /// # Errors
    /// [`Error::Driver`].
    ///
    /// # Safety
    /// Every element is written (by work on this handle's stream) before it is read.
    pub unsafe fn alloc_uninit<T: DeviceRepr>(&self, len: usize, what: impl std::fmt::Display) -> Result<CudaSlice<T>> {
        // SAFETY: the caller's contract
        self.counted(len, unsafe { self.stream.alloc::<T>(len) }, || format!("alloc {what} ({len} elements)"))
    }

    /// A new device buffer holding a copy of `host` (stream-ordered), counted in
    /// [`Cuda::alloc_stats`].
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn upload<T: DeviceRepr>(&self, host: &[T], what: impl std::fmt::Display) -> Result<CudaSlice<T>> {
        self.counted(host.len(), self.stream.clone_htod(host), || format!("upload {what} ({} elements)", host.len()))
    }

    /// A host copy of the device buffer or view `src` (waits for the work queued before it);
    /// `what` names it in the error, as `download <what>`.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S, what: impl std::fmt::Display) -> Result<Vec<T>> {
        self.stream.clone_dtoh(src).map_err(Error::driver(format!("download {what}")))
    }

    /// A new device buffer holding a copy of the device buffer or view `src` (stream-ordered),
    /// counted in [`Cuda::alloc_stats`].
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn duplicate<T: DeviceRepr, S: DevicePtr<T>>(&self, src: &S, what: impl std::fmt::Display) -> Result<CudaSlice<T>> {
        let len = src.len();
        self.counted(len, self.stream.clone_dtod(src), || format!("copy {what} ({len} elements)"))
    }

    /// Waits for all work queued on the stream; a kernel fault surfaces here.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(Error::driver("stream synchronize"))
    }

    /// The entry point `name` (of the [`crate::kernels`] source that lists it), compiled (disk
    /// cache), loaded and cached in process on first use.
    ///
    /// # Errors
    /// [`Error::Nvrtc`], [`Error::Driver`]; [`Error::Op`] for a name no source lists.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(f.clone());
        }
        let src = kernels::source_of(name)
            .ok_or_else(|| Error::Op(gla_core::Error::Unsupported { backend: "cuda", what: format!("no kernel source defines {name}") }))?;
        let module = {
            let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match mods.get(src.name) {
                Some(m) => m.clone(),
                None => {
                    let cubin = compile_cubin(src, &self.arch)?;
                    let m = self.ctx.load_module(Ptx::from_binary(cubin)).map_err(Error::driver(format!("load module {}", src.name)))?;
                    mods.insert(src.name, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(name).map_err(Error::driver(format!("get function {}::{name}", src.name)))?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Launches entry point `name` on the stream with `cfg` and `args`: the one launch path of
    /// the crate. Opts the kernel in to its dynamic shared memory above the 48 KB default, and
    /// with [`Options::sync_debug`] waits for the kernel to finish.
    ///
    /// # Errors
    /// [`Error::Op`] when `cfg` asks for more shared memory than the device allows per block;
    /// [`Error::Launch`] naming the kernel and its configuration; compile and load errors of
    /// [`Cuda::function`].
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type, every buffer
    /// must hold what the kernel indexes for this grid (or be null where the kernel tests for
    /// null), and no buffer the kernel writes may be read or written by other work meanwhile.
    pub unsafe fn launch(&self, name: &str, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        let f = self.function(name)?;
        let err = |source| Error::Launch {
            kernel: name.to_string(),
            grid: cfg.grid_dim,
            block: cfg.block_dim,
            smem: cfg.shared_mem_bytes,
            source,
        };
        let smem = cfg.shared_mem_bytes as usize;
        if smem > self.max_smem {
            return Err(Error::Op(gla_core::Error::Unsupported {
                backend: "cuda",
                what: format!("{name}: {smem} B of shared memory per block, the device allows {}", self.max_smem),
            }));
        }
        if smem > crate::dispatch::DEFAULT_SMEM {
            f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32).map_err(err)?;
        }
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: the caller's contract (above)
        profiled(&self.stream, || name.to_string(), || unsafe { b.launch(cfg) }.map(drop).map_err(err))?;
        if self.options.sync_debug {
            self.stream.synchronize().map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_plane_precision_defines_delta_planes_in_the_delta_programs_only() {
        for src in kernels::ALL {
            let delta = src.headers.iter().any(|h| h.name == kernels::DELTA.name);
            assert_eq!(program_text(src, DeltaPrecision::Split), src.code(), "{}", src.name);
            let one = program_text(src, DeltaPrecision::Bf16);
            assert_eq!(one.starts_with("#define DELTA_PLANES 1\n"), delta, "{}", src.name);
            assert!(one.ends_with(&src.code()), "{}", src.name);
        }
        assert!(kernels::ALL.iter().any(|s| s.name == "delta/chunk_bwd.cu" && program_text(s, DeltaPrecision::Bf16) != s.code()));
    }

    #[test]
    fn ptxas_log_gives_each_entrys_resources() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'attn_fwd_m2_d128_dv128' for 'sm_90a'\n\
            ptxas info    : Function properties for attn_fwd_m2_d128_dv128\n\
            ptxas         .     56 bytes stack frame, 84 bytes spill stores, 84 bytes spill loads\n\
            ptxas info    : Used 255 registers, used 1 barriers, 56 bytes cumulative stack size, 1024 bytes smem, 448 bytes cmem[0]\n\
            ptxas info    : Compile time = 10.4 ms\n\
            ptxas info    : Compiling entry function 'bidir_flip_add_bf16' for 'sm_90a'\n\
            ptxas info    : Function properties for bidir_flip_add_bf16\n\
            ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Function properties for _Z6helperv\n\
            ptxas         .     8 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n\
            ptxas info    : Used 26 registers, used 0 barriers\n";
        let r = parse_ptxas_log(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                entry: "attn_fwd_m2_d128_dv128".into(),
                registers: 255,
                barriers: 1,
                stack: 56,
                spill_stores: 84,
                spill_loads: 84,
                smem: 1024
            }
        );
        assert_eq!((r[1].entry.as_str(), r[1].registers, r[1].spill_stores, r[1].smem), ("bidir_flip_add_bf16", 26, 0, 0));
    }
}
