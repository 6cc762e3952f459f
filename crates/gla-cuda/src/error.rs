//! Typed errors of the CUDA backend. Each variant names what failed with the numbers needed to
//! reproduce it: the kernel, its grid and block, the NVRTC options and log.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong on the CUDA path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The NVIDIA driver library (`libcuda.so`) could not be loaded, or no GPU is present.
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    /// The NVRTC library (`libnvrtc.so.13`) could not be loaded.
    #[error("libnvrtc not found ({0}); install it (e.g. `.ci/nvrtc-setup.sh`) and put its lib/ directory on LD_LIBRARY_PATH")]
    NoNvrtc(String),
    /// NVRTC rejected a kernel source.
    #[error("NVRTC failed to compile `{kernel}` for {arch} ({status}) with options {options:?}:\n{log}")]
    Nvrtc {
        /// The kernel source's name (`gla/recurrent.cu`, ...).
        kernel: String,
        /// The target architecture, e.g. `sm_90a`.
        arch: String,
        /// NVRTC's status code.
        status: String,
        /// The full option list passed to NVRTC.
        options: Vec<String>,
        /// NVRTC's program log (warnings and errors).
        log: String,
    },
    /// A driver call other than a launch failed.
    #[error("CUDA driver call failed during {what}: {source}")]
    Driver {
        /// What was being done (`load module gla/chunk_fwd.cu`, `memcpy htod q`, ...).
        what: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A kernel launch failed, or a kernel faulted and the fault surfaced at the next sync.
    #[error("launch of `{kernel}` failed (grid {grid:?}, block {block:?}, {smem} bytes dynamic shared memory): {source}")]
    Launch {
        /// The kernel's entry point name.
        kernel: String,
        /// Grid dims.
        grid: (u32, u32, u32),
        /// Block dims.
        block: (u32, u32, u32),
        /// Dynamic shared memory in bytes.
        smem: u32,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A cuBLAS call failed, or libcublas could not be loaded.
    #[error("cuBLAS failed during {what}: {status}")]
    Blas {
        /// The call (`cublasGemmEx`, `cublasCreate`, ...).
        what: &'static str,
        /// cuBLAS's status, or what is missing.
        status: String,
    },
    /// libnccl could not be loaded (data-parallel training needs it).
    #[error("NCCL is not available: {0}")]
    NoNccl(String),
    /// A variable of a distributed launch (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`, `GLA_NCCL_TIMEOUT_S`) is missing or invalid.
    #[error("distributed launch: {var} {reason}")]
    DistEnv {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting read from the environment (`GLA_DELTA_PRECISION`) has a value the crate does not
    /// take.
    #[error("{var}: {reason}")]
    Setting {
        /// The variable.
        var: &'static str,
        /// What is wrong with it, and the values it takes.
        reason: String,
    },
    /// The exchange of NCCL's unique id between the ranks failed or timed out.
    #[error("rendezvous of rank {rank} with {master} failed: {reason}")]
    Rendezvous {
        /// This process's rank.
        rank: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        master: String,
        /// What happened, naming the ranks concerned.
        reason: String,
    },
    /// An NCCL call failed, reported an asynchronous error (a peer rank died, a network or CUDA
    /// error) or made no progress before the timeout; the communicator has been aborted.
    #[error("NCCL failed during {what}: {reason}")]
    Nccl {
        /// The operation (`all-reduce of gradients 0..1024 (rank 1 of 2)`, ...).
        what: String,
        /// NCCL's status and message, or the timeout.
        reason: String,
    },
    /// The checks of the contracts failed: the op's shapes, values or options, or a model's
    /// (a token id outside the vocabulary, a batch or arena of the wrong shape, a config the
    /// GPU kernels do not take).
    #[error(transparent)]
    Op(#[from] gla_core::Error),
}

impl Error {
    /// A mapper from a driver error to [`Error::Driver`] naming `what` was being done.
    pub fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        let what = what.into();
        move |source| Error::Driver { what, source }
    }
}

impl From<Error> for gla_core::Error {
    /// Maps a CUDA error into the op contract's error (for [`gla_core::op::GlaOp`]); the message
    /// keeps every detail.
    fn from(e: Error) -> Self {
        match e {
            Error::Op(inner) => inner,
            other => gla_core::Error::Unsupported { backend: "cuda", what: other.to_string() },
        }
    }
}
