//! Data-parallel training over NCCL (cudarc's bindings; libnccl is loaded at run time, so a
//! machine without it gets [`Error::NoNccl`], never a panic).
//!
//! - [`DistEnv`]: where this process sits in the job, from the torchrun variables (`RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); [`DistEnv::child_vars`] builds
//!   them, with NVLink multicast off ([`NVLS_OFF`]), for a launcher that starts one process per
//!   GPU.
//! - [`rendezvous`]: rank 0 listens on `MASTER_PORT` and hands NCCL's 128-byte unique id to every
//!   other rank over TCP, once all of them have connected (or names the missing ones).
//! - [`Comm`]: a non-blocking NCCL communicator with its own stream. Every wait on it polls the
//!   communicator's asynchronous error and gives up after a deadline ([`timeout_from_env`]),
//!   aborting the communicator: a rank that dies makes the others fail with an error, not hang.
//! - [`bucket_plan`]: which gradient ranges to all-reduce at which point of a backward pass that
//!   finishes the parameter arena from its end to its start, so communication overlaps the rest
//!   of the backward.

use std::ffi::{c_char, c_void, CStr};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::sys;

use crate::error::{Error, Result};
use crate::runtime::Cuda;

/// Environment that keeps NVLink multicast (NVLS) off in NCCL, PyTorch and NVSHMEM: set in
/// every process a launcher starts, and by [`Comm::init`] before NCCL reads it. Multicast
/// objects can take a shared host's GPUs out of service; nothing here calls cuMulticastCreate.
pub const NVLS_OFF: [(&str, &str); 3] =
    [("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")];

/// Bytes of NCCL's unique id (`ncclUniqueId`).
pub const ID_BYTES: usize = 128;

/// Seconds a rank waits for its peers (rendezvous, communicator setup, each collective) before
/// it aborts the communicator and fails.
pub const TIMEOUT_ENV: &str = "GLA_NCCL_TIMEOUT_S";

/// Default of [`TIMEOUT_ENV`]: long enough for a peer that compiles kernels or writes a large
/// checkpoint while the others wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Port of gla's rendezvous, when `MASTER_PORT` (or, under torchrun, `MASTER_PORT + 1`) will
/// not do.
pub const RDZV_PORT_ENV: &str = "GLA_RDZV_PORT";

/// Start of the rendezvous messages (a stray connection to the port is told apart).
const MAGIC: &[u8; 4] = b"GLA1";

fn env_err(var: &'static str, reason: impl Into<String>) -> Error {
    Error::DistEnv { var, reason: reason.into() }
}

/// The collective timeout: [`TIMEOUT_ENV`] in seconds (fractions allowed), else
/// [`DEFAULT_TIMEOUT`].
///
/// # Errors
/// [`Error::DistEnv`] when the variable is not a positive number.
pub fn timeout_from_env() -> Result<Duration> {
    timeout_from(std::env::var(TIMEOUT_ENV).ok().as_deref())
}

fn timeout_from(v: Option<&str>) -> Result<Duration> {
    let Some(v) = v else { return Ok(DEFAULT_TIMEOUT) };
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(env_err(TIMEOUT_ENV, format!("`{v}` is not a positive number of seconds"))),
    }
}

/// This process's place in a data-parallel job (the torchrun convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, `0..world` (`RANK`).
    pub rank: usize,
    /// Processes in the job (`WORLD_SIZE`).
    pub world: usize,
    /// Rank on this host: the GPU ordinal this process uses (`LOCAL_RANK`; default `RANK`).
    pub local_rank: usize,
    /// Host of rank 0, where the rendezvous listens (`MASTER_ADDR`).
    pub master_addr: String,
    /// Port of gla's rendezvous on the master: `GLA_RDZV_PORT` when set; else `MASTER_PORT`,
    /// plus one under torchrun (`TORCHELASTIC_RUN_ID` set), whose own store listens on
    /// `MASTER_PORT`.
    pub master_port: u16,
}

impl DistEnv {
    /// Reads the job from this process's environment; `None` when neither `RANK` nor
    /// `WORLD_SIZE` is set (not a distributed launch).
    ///
    /// # Errors
    /// As [`DistEnv::from_lookup`].
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`DistEnv::from_env`] over any variable lookup.
    ///
    /// # Errors
    /// [`Error::DistEnv`] naming the variable that is missing or invalid (not a number, rank
    /// outside the world, port 0).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let need = |var: &'static str| {
            get(var).ok_or_else(|| {
                env_err(var, "not set (a distributed launch sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
            })
        };
        let number = |var: &'static str, v: String| v.trim().parse::<usize>().map_err(|_| env_err(var, format!("`{v}` is not a number")));
        let rank = number("RANK", need("RANK")?)?;
        let world = number("WORLD_SIZE", need("WORLD_SIZE")?)?;
        if world == 0 {
            return Err(env_err("WORLD_SIZE", "must be at least 1"));
        }
        if rank >= world {
            return Err(env_err("RANK", format!("{rank} is not below WORLD_SIZE {world}")));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", v)?,
            None => rank,
        };
        let master_addr = need("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(env_err("MASTER_ADDR", "is empty"));
        }
        let parse_port = |var: &'static str, v: String| match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(env_err(var, format!("`{v}` is not a port number (1-65535)"))),
        };
        let master_port = match get(RDZV_PORT_ENV) {
            Some(v) => parse_port(RDZV_PORT_ENV, v)?,
            None => {
                let p = parse_port("MASTER_PORT", need("MASTER_PORT")?)?;
                if get("TORCHELASTIC_RUN_ID").is_some() {
                    // torchrun's agent hosts its TCPStore on MASTER_PORT: take the next port
                    p.checked_add(1).ok_or_else(|| {
                        env_err("MASTER_PORT", format!("{p} + 1 (gla's rendezvous under torchrun) is not a port; set {RDZV_PORT_ENV}"))
                    })?
                } else {
                    p
                }
            }
        };
        Ok(Some(Self { rank, world, local_rank, master_addr: master_addr.trim().to_string(), master_port }))
    }

    /// The environment of local process `rank` of `world` started by a single-host launcher:
    /// the five torchrun variables (master 127.0.0.1:`port`, `LOCAL_RANK` = `RANK`) and
    /// [`NVLS_OFF`].
    pub fn child_vars(rank: usize, world: usize, port: u16) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", world.to_string()),
            ("LOCAL_RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        v.extend(NVLS_OFF.iter().map(|(k, x)| (k.to_string(), x.to_string())));
        v
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

impl DistEnv {
    /// The GPU this rank opens: `LOCAL_RANK`, or 0 when the process sees a single GPU (a
    /// scheduler that gives each process its own `CUDA_VISIBLE_DEVICES`, as SLURM does).
    ///
    /// # Errors
    /// [`Error::NoDevice`] when the driver cannot be loaded or reports no device.
    pub fn gpu_ordinal(&self) -> Result<usize> {
        let n = crate::runtime::Cuda::device_count()?;
        Ok(if n == 1 { 0 } else { self.local_rank })
    }
}

/// Hands rank 0's NCCL unique id to every rank: rank 0 calls `make_id`, listens on
/// `MASTER_PORT` (all interfaces), waits until every other rank has connected and said who it
/// is, then sends each the id; the others connect (retrying while rank 0 is not up yet) and
/// receive it. With one rank, no socket is opened. Returns the id on every rank.
///
/// # Errors
/// [`Error::Rendezvous`] when `timeout` passes first (rank 0 names the ranks that never
/// connected), when a rank reports another world size or a rank already taken, or when rank 0
/// closes the connection without sending the id (it failed); whatever `make_id` returns.
pub fn rendezvous(env: &DistEnv, timeout: Duration, make_id: impl FnOnce() -> Result<[u8; ID_BYTES]>) -> Result<[u8; ID_BYTES]> {
    if env.world == 1 {
        return make_id();
    }
    if env.rank == 0 {
        serve(env, timeout, make_id()?)
    } else {
        join(env, timeout)
    }
}

fn rdv_err(env: &DistEnv, reason: impl Into<String>) -> Error {
    Error::Rendezvous { rank: env.rank, master: env.master(), reason: reason.into() }
}

fn hello(env: &DistEnv) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[..4].copy_from_slice(MAGIC);
    m[4..8].copy_from_slice(&(env.rank as u32).to_le_bytes());
    m[8..].copy_from_slice(&(env.world as u32).to_le_bytes());
    m
}

/// Rank 0's side of [`rendezvous`].
fn serve(env: &DistEnv, timeout: Duration, id: [u8; ID_BYTES]) -> Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    let listener = TcpListener::bind(("0.0.0.0", env.master_port))
        .map_err(|e| rdv_err(env, format!("rank 0 cannot listen on port {}: {e}", env.master_port)))?;
    // non-blocking accept: the deadline is checked between connections
    listener.set_nonblocking(true).map_err(|e| rdv_err(env, format!("listener: {e}")))?;
    let mut peers: Vec<Option<TcpStream>> = (0..env.world).map(|_| None).collect();
    let mut joined = 1;
    while joined < env.world {
        match listener.accept() {
            Ok((mut s, from)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut m = [0u8; 12];
                if s.read_exact(&mut m).is_err() || &m[..4] != MAGIC {
                    // not one of ours (a port probe, a stale client): keep waiting for the ranks
                    continue;
                }
                let rank = u32::from_le_bytes([m[4], m[5], m[6], m[7]]) as usize;
                let world = u32::from_le_bytes([m[8], m[9], m[10], m[11]]) as usize;
                if world != env.world {
                    return Err(rdv_err(env, format!("rank {rank} at {from} runs with WORLD_SIZE {world}, rank 0 with {}", env.world)));
                }
                if rank == 0 || rank >= env.world || peers[rank].is_some() {
                    return Err(rdv_err(env, format!("a second process at {from} claims rank {rank}")));
                }
                peers[rank] = Some(s);
                joined += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..env.world).filter(|&r| peers[r].is_none()).collect();
                    return Err(rdv_err(
                        env,
                        format!("ranks {missing:?} did not connect within {:.0} s ({TIMEOUT_ENV}); did they start, with the same MASTER_ADDR and MASTER_PORT?", timeout.as_secs_f64()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(rdv_err(env, format!("accept: {e}"))),
        }
    }
    let mut msg = Vec::with_capacity(4 + ID_BYTES);
    msg.extend_from_slice(MAGIC);
    msg.extend_from_slice(&id);
    for (rank, s) in peers.iter_mut().enumerate() {
        if let Some(s) = s {
            s.write_all(&msg).map_err(|e| rdv_err(env, format!("sending the NCCL id to rank {rank}: {e}")))?;
        }
    }
    Ok(id)
}

/// A non-zero rank's side of [`rendezvous`].
fn join(env: &DistEnv, timeout: Duration) -> Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = (env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()
        .map_err(|e| rdv_err(env, format!("cannot resolve MASTER_ADDR: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(rdv_err(env, "MASTER_ADDR resolves to no address"));
    }
    // rank 0 listens on IPv4 (0.0.0.0): try the IPv4 addresses first (`localhost` may resolve
    // to ::1 first), then the others, each round until the deadline
    let mut addrs = addrs;
    addrs.sort_by_key(|a| !a.is_ipv4());
    let mut s = 'connect: loop {
        for addr in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(rdv_err(env, format!("rank 0 was not reachable within {:.0} s ({TIMEOUT_ENV})", timeout.as_secs_f64())));
            }
            if let Ok(s) = TcpStream::connect_timeout(addr, left.min(Duration::from_secs(2))) {
                break 'connect s;
            }
        }
        // rank 0 may not listen yet: retry until the deadline
        std::thread::sleep(Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())));
    };
    s.write_all(&hello(env)).map_err(|e| rdv_err(env, format!("sending hello: {e}")))?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| rdv_err(env, format!("socket: {e}")))?;
    let mut m = [0u8; 4 + ID_BYTES];
    match s.read_exact(&mut m) {
        Ok(()) if &m[..4] == MAGIC => {
            let mut id = [0u8; ID_BYTES];
            id.copy_from_slice(&m[4..]);
            Ok(id)
        }
        Ok(()) => Err(rdv_err(env, "the master's answer is not a gla rendezvous message (another program on MASTER_PORT?)")),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            Err(rdv_err(env, "rank 0 closed the connection without sending the NCCL id (it failed or gave up: see its output)"))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(rdv_err(
            env,
            format!("no NCCL id from rank 0 within {:.0} s ({TIMEOUT_ENV}): not every rank joined", timeout.as_secs_f64()),
        )),
        Err(e) => Err(rdv_err(env, format!("receiving the NCCL id: {e}"))),
    }
}

/// The gradient all-reduces of a backward pass that finishes a flat parameter arena of `numel`
/// elements from its end to its start.
///
/// `ready[i]` is the arena offset above which every gradient is final after point `i` of the
/// backward (descending; the last is 0). Entry `i` of the result is the range to all-reduce at
/// point `i`, if any: the gradients finished since the last all-reduce once they hold at least
/// `bucket` elements, and all that is left at the last point. The ranges are disjoint, cover
/// `0..numel` and each is issued as soon as it is final.
pub fn bucket_plan(ready: &[usize], numel: usize, bucket: usize) -> Vec<Option<Range<usize>>> {
    let mut hi = numel;
    let n = ready.len();
    ready
        .iter()
        .enumerate()
        .map(|(i, &lo)| {
            let lo = lo.min(hi);
            if hi > lo && (hi - lo >= bucket.max(1) || i + 1 == n) {
                let r = lo..hi;
                hi = lo;
                Some(r)
            } else {
                None
            }
        })
        .collect()
}

/// Whether libnccl can be loaded. cudarc looks for `libnccl.so` (and a few versioned names, not
/// `libnccl.so.2`) on the loader's path.
pub fn nccl_available() -> bool {
    // SAFETY: only tries to dlopen the library; no symbol is called. cudarc's loader panics on
    // a missing library: the probe runs first, inside catch_unwind
    std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// Loads libnccl and returns its version code (e.g. 22703 for 2.27.3).
///
/// # Errors
/// [`Error::NoNccl`] when the library cannot be loaded; [`Error::Nccl`] when it does not answer.
pub fn require_nccl() -> Result<i32> {
    if !nccl_available() {
        return Err(Error::NoNccl(
            "dlopen of libnccl.so failed: put the directory holding libnccl.so on LD_LIBRARY_PATH (pip's nvidia-nccl wheels ship only libnccl.so.2: link it as libnccl.so in a directory of your own)".into(),
        ));
    }
    let mut version = 0;
    // SAFETY: the library is loaded (probed above); version is a valid out pointer
    let st = unsafe { sys::ncclGetVersion(&mut version) };
    if st != sys::ncclResult_t::ncclSuccess {
        return Err(Error::Nccl { what: "ncclGetVersion".into(), reason: status_name(st) });
    }
    Ok(version)
}

fn status_name(st: sys::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static string for any result code
    let s = unsafe { sys::ncclGetErrorString(st) };
    if s.is_null() {
        format!("{st:?}")
    } else {
        // SAFETY: non-null static C string from NCCL
        format!("{st:?}: {}", unsafe { CStr::from_ptr(s) }.to_string_lossy())
    }
}

/// A non-blocking NCCL communicator over the ranks of a [`DistEnv`], with its own stream on
/// this process's GPU. Dropping it aborts the communicator (never waits for peers).
pub struct Comm {
    raw: sys::ncclComm_t,
    rank: usize,
    world: usize,
    cuda: Arc<Cuda>,
    stream: Arc<CudaStream>,
    timeout: Duration,
    /// Set once the communicator is aborted (after an error or a timeout): it is unusable.
    aborted: AtomicBool,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `Comm` is not
// Sync, so calls on one value never run concurrently
unsafe impl Send for Comm {}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Comm {{ rank: {}, world: {} }}", self.rank, self.world)
    }
}

impl Comm {
    /// Joins the job: the NVLS-off variables are set, rank 0's unique id is exchanged by
    /// [`rendezvous`], and the communicator is created non-blocking on `cuda`'s device and
    /// waited for with `timeout`.
    ///
    /// # Errors
    /// [`Error::NoNccl`] when libnccl cannot be loaded; [`Error::Rendezvous`];
    /// [`Error::Nccl`] when NCCL fails or the setup times out; [`Error::Driver`].
    pub fn init(cuda: &Arc<Cuda>, env: &DistEnv, timeout: Duration) -> Result<Self> {
        let version = require_nccl()?;
        for (k, v) in NVLS_OFF {
            if std::env::var(k).ok().as_deref() != Some(v) {
                // NCCL reads these at its first call; this process is still single-threaded as
                // far as the environment goes (no NCCL thread exists yet)
                std::env::set_var(k, v);
            }
        }
        let id = rendezvous(env, timeout, || {
            let mut id = sys::ncclUniqueId { internal: [0; ID_BYTES] };
            // SAFETY: id is a valid out pointer
            let st = unsafe { sys::ncclGetUniqueId(&mut id) };
            if st != sys::ncclResult_t::ncclSuccess {
                return Err(Error::Nccl { what: "ncclGetUniqueId".into(), reason: status_name(st) });
            }
            Ok(id.internal.map(|c| c as u8))
        })?;
        cuda.context().bind_to_thread().map_err(Error::driver("bind context for NCCL"))?;
        let stream = cuda.context().new_stream().map_err(Error::driver("create the communication stream"))?;
        // NCCL_CONFIG_INITIALIZER with blocking = 0: every field "undefined" (NCCL's defaults);
        // the size and version tell an older or newer libnccl which fields this struct has
        let undef = i32::MIN;
        let mut config = sys::ncclConfig_t {
            size: std::mem::size_of::<sys::ncclConfig_t>(),
            magic: 0xcafe_beef,
            version: version as u32,
            blocking: 0,
            cgaClusterSize: undef,
            minCTAs: undef,
            maxCTAs: undef,
            netName: std::ptr::null(),
            splitShare: undef,
            trafficClass: undef,
            commName: std::ptr::null(),
            collnetEnable: undef,
            CTAPolicy: undef,
            shrinkShare: undef,
            nvlsCTAs: undef,
            nChannelsPerNetPeer: undef,
            nvlinkCentricSched: undef,
            graphUsageMode: undef,
            numRmaCtx: undef,
            maxP2pPeers: undef,
        };
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let unique = sys::ncclUniqueId { internal: id.map(|b| b as c_char) };
        // SAFETY: raw and config are valid pointers for the call; the device's context is
        // current on this thread (NCCL takes the device from it)
        let st = unsafe { sys::ncclCommInitRankConfig(&mut raw, env.world as i32, unique, env.rank as i32, &mut config) };
        if !matches!(st, sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress) || raw.is_null() {
            return Err(Error::Nccl {
                what: format!("ncclCommInitRankConfig (rank {} of {})", env.rank, env.world),
                reason: status_name(st),
            });
        }
        let comm = Self { raw, rank: env.rank, world: env.world, cuda: cuda.clone(), stream, timeout, aborted: AtomicBool::new(false) };
        comm.settle("creating the communicator")?;
        Ok(comm)
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Ranks in the job.
    pub fn world(&self) -> usize {
        self.world
    }
    /// The stream the collectives run on (work on other streams is ordered with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Aborts the communicator (its pending collectives end) and returns the error to report.
    fn fail(&self, what: &str, reason: String) -> Error {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: raw is a live communicator, aborted at most once
            let _ = unsafe { sys::ncclCommAbort(self.raw) };
        }
        Error::Nccl { what: format!("{what} (rank {} of {})", self.rank, self.world), reason }
    }

    fn check_usable(&self, what: &str) -> Result<()> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(Error::Nccl { what: what.into(), reason: "the communicator was aborted after an earlier error".into() });
        }
        Ok(())
    }

    /// The communicator's asynchronous state: `Ok(true)` idle, `Ok(false)` an operation still
    /// in progress, `Err` a failure (a peer died, a network or CUDA error).
    fn poll(&self, what: &str) -> Result<bool> {
        let mut st = sys::ncclResult_t::ncclSuccess;
        // SAFETY: raw is live (not aborted: callers check), st a valid out pointer
        let call = unsafe { sys::ncclCommGetAsyncError(self.raw, &mut st) };
        if call != sys::ncclResult_t::ncclSuccess {
            return Err(self.fail(what, format!("ncclCommGetAsyncError: {}", status_name(call))));
        }
        match st {
            sys::ncclResult_t::ncclSuccess => Ok(true),
            sys::ncclResult_t::ncclInProgress => Ok(false),
            err => {
                // SAFETY: raw is live; the message is a C string owned by NCCL
                let last = unsafe { sys::ncclGetLastError(self.raw) };
                let detail = if last.is_null() { String::new() } else { unsafe { CStr::from_ptr(last) }.to_string_lossy().into_owned() };
                Err(self.fail(what, format!("{} {detail}; a peer rank may have failed", status_name(err))))
            }
        }
    }

    /// Sleeps a little longer the longer a wait lasts: a collective that is about to finish is
    /// seen within microseconds, a stuck one costs no CPU.
    fn backoff(start: Instant) {
        let waited = start.elapsed();
        if waited < Duration::from_micros(200) {
            std::hint::spin_loop();
        } else if waited < Duration::from_millis(20) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn timed_out(&self, what: &str) -> Error {
        self.fail(
            what,
            format!(
                "no progress within {:.0} s ({TIMEOUT_ENV}): a peer rank stopped or hangs; the communicator was aborted",
                self.timeout.as_secs_f64()
            ),
        )
    }

    /// Waits until the communicator has no NCCL call in progress (a non-blocking call returned
    /// `ncclInProgress`).
    fn settle(&self, what: &str) -> Result<()> {
        let start = Instant::now();
        while !self.poll(what)? {
            if start.elapsed() > self.timeout {
                return Err(self.timed_out(what));
            }
            Self::backoff(start);
        }
        Ok(())
    }

    /// Waits on the host until `event` has completed, polling the communicator: fails (and
    /// aborts it) on an asynchronous NCCL error or after the timeout.
    ///
    /// # Errors
    /// [`Error::Nccl`]; [`Error::Driver`] when the event reports a CUDA fault.
    pub fn wait_event(&self, event: &CudaEvent, what: &str) -> Result<()> {
        self.check_usable(what)?;
        let start = Instant::now();
        loop {
            if event.try_is_complete().map_err(Error::driver(what.to_string()))? {
                return Ok(());
            }
            self.poll(what)?;
            if start.elapsed() > self.timeout {
                return Err(self.timed_out(what));
            }
            Self::backoff(start);
        }
    }

    /// Sums `len` f32 at device address `ptr` over all ranks, in place, on [`Comm::stream`]
    /// (queued: order it after the writes with an event, and wait before reading).
    ///
    /// # Errors
    /// [`Error::Nccl`].
    pub fn all_reduce_sum_f32(&self, ptr: u64, len: usize, what: &str) -> Result<()> {
        self.all_reduce_sum(ptr, len, sys::ncclDataType_t::ncclFloat32, what)
    }

    /// [`Comm::all_reduce_sum_f32`] for f64.
    ///
    /// # Errors
    /// [`Error::Nccl`].
    pub fn all_reduce_sum_f64(&self, ptr: u64, len: usize, what: &str) -> Result<()> {
        self.all_reduce_sum(ptr, len, sys::ncclDataType_t::ncclFloat64, what)
    }

    fn all_reduce_sum(&self, ptr: u64, len: usize, ty: sys::ncclDataType_t, what: &str) -> Result<()> {
        self.check_usable(what)?;
        if len == 0 {
            return Ok(());
        }
        self.cuda.context().bind_to_thread().map_err(Error::driver("bind context for NCCL"))?;
        let buf = ptr as *mut c_void;
        // SAFETY: ptr..ptr+len elements lie in a live device buffer of this device (the callers
        // pass slices of their own buffers); in place (send = receive) is allowed; the stream
        // belongs to this device
        let st = unsafe {
            sys::ncclAllReduce(
                buf.cast_const(),
                buf,
                len,
                ty,
                sys::ncclRedOp_t::ncclSum,
                self.raw,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        match st {
            sys::ncclResult_t::ncclSuccess => Ok(()),
            sys::ncclResult_t::ncclInProgress => self.settle(what),
            err => Err(self.fail(what, status_name(err))),
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // abort rather than destroy: it frees the communicator without waiting for peers,
            // which may be gone when a job ends on an error; every collective this process
            // issued has completed when it ends normally (each was waited for)
            // SAFETY: raw is a live communicator, freed exactly once
            let _ = unsafe { sys::ncclCommAbort(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")]
    }

    #[test]
    fn env_parses_the_torchrun_variables() {
        assert_eq!(DistEnv::from_lookup(vars(&[])).unwrap(), None, "no RANK / WORLD_SIZE: not distributed");
        let e = DistEnv::from_lookup(vars(&full())).unwrap().unwrap();
        assert_eq!(e, DistEnv { rank: 1, world: 4, local_rank: 1, master_addr: "127.0.0.1".into(), master_port: 29500 }, "all five read");
        // under torchrun (its store owns MASTER_PORT) the rendezvous takes the next port;
        // GLA_RDZV_PORT overrides both
        let with = |extra: &[(&str, &str)]| {
            let mut all = vec![("RANK", "1"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
            all.extend_from_slice(extra);
            DistEnv::from_lookup(|k| all.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap().unwrap().master_port
        };
        assert_eq!(with(&[("TORCHELASTIC_RUN_ID", "none")]), 29501);
        assert_eq!(with(&[("TORCHELASTIC_RUN_ID", "none"), ("GLA_RDZV_PORT", "31000")]), 31000);
        assert_eq!(with(&[("GLA_RDZV_PORT", "31001")]), 31001);
        assert_eq!(e.master(), "127.0.0.1:29500");
        let no_local: Vec<_> = full().into_iter().filter(|(k, _)| *k != "LOCAL_RANK").collect();
        assert_eq!(DistEnv::from_lookup(vars(&no_local)).unwrap().unwrap().local_rank, 1, "LOCAL_RANK defaults to RANK");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let with = |k: &str, v: Option<&str>| {
            let mut p: Vec<(&str, &str)> = full().into_iter().filter(|(x, _)| *x != k).collect();
            if let Some(v) = v {
                p.push((k, v));
            }
            DistEnv::from_lookup(vars(&p)).unwrap_err()
        };
        let cases: [(&str, Option<&str>, &str); 8] = [
            ("MASTER_ADDR", None, "MASTER_ADDR"),
            ("MASTER_PORT", None, "MASTER_PORT"),
            ("MASTER_PORT", Some("0"), "MASTER_PORT"),
            ("MASTER_PORT", Some("70000"), "MASTER_PORT"),
            ("WORLD_SIZE", Some("two"), "WORLD_SIZE"),
            ("WORLD_SIZE", Some("0"), "WORLD_SIZE"),
            ("RANK", Some("4"), "RANK"),
            ("LOCAL_RANK", Some("-1"), "LOCAL_RANK"),
        ];
        for (k, v, want) in cases {
            match with(k, v) {
                Error::DistEnv { var, .. } => assert_eq!(var, want, "{k}={v:?}"),
                other => panic!("{k}={v:?}: {other}"),
            }
        }
        // RANK set alone: the launch is distributed but incomplete
        assert!(matches!(DistEnv::from_lookup(vars(&[("RANK", "0")])), Err(Error::DistEnv { var: "WORLD_SIZE", .. })));
    }

    #[test]
    fn timeout_parses_seconds() {
        assert_eq!(timeout_from(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout_from(Some("2.5")).unwrap(), Duration::from_millis(2500));
        for bad in ["0", "-3", "soon", "inf"] {
            assert!(matches!(timeout_from(Some(bad)), Err(Error::DistEnv { var: TIMEOUT_ENV, .. })), "{bad}");
        }
    }

    #[test]
    fn child_vars_are_a_torchrun_environment_with_multicast_off() {
        let v = DistEnv::child_vars(2, 4, 31234);
        let m: HashMap<String, String> = v.iter().cloned().collect();
        assert_eq!(m.len(), v.len(), "no variable twice");
        let e = DistEnv::from_lookup(|k| m.get(k).cloned()).unwrap().unwrap();
        assert_eq!(e, DistEnv { rank: 2, world: 4, local_rank: 2, master_addr: "127.0.0.1".into(), master_port: 31234 });
        for (k, x) in NVLS_OFF {
            assert_eq!(m.get(k).map(String::as_str), Some(x), "{k}");
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
    }

    /// Held by every test that takes a port from [`free_port`] for its whole run: between the
    /// probe and rank 0's listen the port is free, and a test running beside it could be handed
    /// the same port (seen: ranks of one test joined the other's rank 0).
    static NET: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn net() -> std::sync::MutexGuard<'static, ()> {
        NET.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn env(rank: usize, world: usize, port: u16) -> DistEnv {
        DistEnv { rank, world, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
    }

    #[test]
    fn rendezvous_delivers_rank_0s_id_to_every_rank() {
        let _net = net();
        let (port, world) = (free_port(), 4);
        let id: [u8; ID_BYTES] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        let got: Vec<[u8; ID_BYTES]> = std::thread::scope(|s| {
            // the ranks start in reverse order: the others must wait for rank 0 to listen
            let hs: Vec<_> = (0..world)
                .rev()
                .map(|r| {
                    let e = env(r, world, port);
                    s.spawn(move || {
                        if r == 0 {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        rendezvous(&e, Duration::from_secs(20), || Ok(id)).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got.len(), world);
        for g in got {
            assert_eq!(g, id);
        }
        // one rank: no socket, the id as made
        assert_eq!(rendezvous(&env(0, 1, port), Duration::from_secs(1), || Ok(id)).unwrap(), id);
    }

    #[test]
    fn rendezvous_times_out_naming_the_missing_ranks() {
        let _net = net();
        let (port, world) = (free_port(), 3);
        let t = Duration::from_millis(600);
        let (r0, r1) = std::thread::scope(|s| {
            let a = s.spawn(|| rendezvous(&env(0, world, port), t, || Ok([1; ID_BYTES])));
            let b = s.spawn(|| rendezvous(&env(1, world, port), t, || Ok([1; ID_BYTES])));
            (a.join().unwrap(), b.join().unwrap())
        });
        match r0 {
            Err(Error::Rendezvous { rank: 0, reason, .. }) => assert!(reason.contains("[2]"), "rank 2 never came: {reason}"),
            other => panic!("rank 0: {other:?}"),
        }
        // rank 1 connected but never got an id: rank 0 gave up and closed, or its own deadline
        assert!(matches!(r1, Err(Error::Rendezvous { rank: 1, .. })), "{r1:?}");
        // nobody listening at all
        let e = rendezvous(&env(1, 2, free_port()), Duration::from_millis(300), || unreachable!()).unwrap_err();
        assert!(matches!(&e, Error::Rendezvous { rank: 1, reason, .. } if reason.contains("not reachable")), "{e}");
    }

    #[test]
    fn rendezvous_refuses_a_rank_with_another_world_size() {
        let _net = net();
        let port = free_port();
        let (r0, _) = std::thread::scope(|s| {
            let a = s.spawn(|| rendezvous(&env(0, 2, port), Duration::from_secs(10), || Ok([0; ID_BYTES])));
            let b = s.spawn(|| rendezvous(&env(1, 3, port), Duration::from_secs(2), || Ok([0; ID_BYTES])));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(matches!(&r0, Err(Error::Rendezvous { reason, .. }) if reason.contains("WORLD_SIZE 3")), "{r0:?}");
    }

    #[test]
    fn buckets_cover_the_arena_once_in_backward_order() {
        // arena: embedding 0..100, layers at 100, 130, 160, tail (norm, head) 190..300
        let ready = [190, 160, 130, 100, 0];
        for bucket in [1, 25, 50, 60, 1000] {
            let plan = bucket_plan(&ready, 300, bucket);
            assert_eq!(plan.len(), ready.len());
            let mut covered = vec![0u32; 300];
            let mut hi = 300;
            for (i, r) in plan.iter().enumerate() {
                if let Some(r) = r {
                    assert!(r.start >= ready[i], "bucket {r:?} issued at point {i} before it is final");
                    assert_eq!(r.end, hi, "buckets follow each other down the arena");
                    hi = r.start;
                    for c in &mut covered[r.clone()] {
                        *c += 1;
                    }
                    if i + 1 < plan.len() {
                        assert!(r.len() >= bucket, "only the last bucket may be small: {r:?}");
                    }
                }
            }
            assert!(covered.iter().all(|&c| c == 1), "bucket {bucket}: every gradient reduced exactly once");
        }
        assert_eq!(bucket_plan(&ready, 300, 1), vec![Some(190..300), Some(160..190), Some(130..160), Some(100..130), Some(0..100)]);
        assert_eq!(bucket_plan(&ready, 300, 1000), vec![None, None, None, None, Some(0..300)]);
        assert_eq!(bucket_plan(&ready, 300, 60), vec![Some(190..300), None, Some(130..190), None, Some(0..130)]);
    }

    #[test]
    fn a_missing_libnccl_is_an_error_not_a_panic() {
        match (nccl_available(), require_nccl()) {
            (false, Err(Error::NoNccl(msg))) => assert!(msg.contains("LD_LIBRARY_PATH"), "{msg}"),
            // a machine with NCCL: the version code of 2.x
            (true, Ok(v)) => assert!((20_000..30_000).contains(&v), "NCCL version code {v}"),
            (present, other) => panic!("libnccl present: {present}, require_nccl: {other:?}"),
        }
    }
}
