//! The dispatch policy of the delta-rule family on the GPU (`crate::dispatch::delta`): which
//! kernels run for a storage dtype, K, V and algorithm ([`route`], which splits a wide value head
//! into sub-heads, over [`delta_path`]), and every tuning choice of their launches (block shapes, padded widths, pipeline
//! stages, K tiles, shared-memory sizes, the workspaces' sizes: [`DeltaWorkspaceLens`]).
//! `delta/ops.rs` only checks lengths and launches what this module picks; docs/kernels.md
//! describes the kernels.
//!
//! | storage | asked     | K, V                    | kernels                                           |
//! |---------|-----------|-------------------------|---------------------------------------------------|
//! | any     | recurrent | K <= 256, any V         | `delta/recurrent.cu` (forward, decode, backward)  |
//! | bf16    | chunked   | K <= 256, V <= 512      | chunked, K padded to 64 / 128 / 192 / 256 (`KP`)  |
//! | f32     | chunked   | K <= 128, V <= 128      | chunked, the same kernels on FMA                  |
//! | any     | chunked   | wider V (N*HV*vs fits)  | chunked on value sub-heads ([`value_split`])      |
//! | any     | chunked   | otherwise, K <= 256     | the recurrent kernels (same result)               |
//!
//! Above K = 256 nothing runs (an error). Every chunked pass takes its elementwise maps from
//! `delta/prep.cu` (the L2 norm as f32 row factors, beta and the log decay as f32); the recurrent
//! forward and decode apply them inline, so one launch serves a decode step.
//!
//! [`route`]: crate::dispatch::delta::route
//! [`delta_path`]: crate::dispatch::delta::delta_path
//! [`DeltaWorkspaceLens`]: crate::dispatch::delta::DeltaWorkspaceLens
//! [`value_split`]: crate::dispatch::delta::value_split

use cudarc::driver::LaunchConfig;
use gla_core::{DeltaGate, DeltaProblem};

use crate::runtime::{delta_precision, DeltaPrecision};

/// Rows per chunk (`BT`).
pub const DELTA_BT: usize = 64;
/// Largest K of every delta kernel (the recurrent ones hold 8 warps x 32 rows of S in registers).
pub const DELTA_MAX_K: usize = 256;
/// Largest K of the bf16 chunked path (and largest V under the lab's `vs=split`).
pub const DELTA_CHUNK_MAX: usize = 256;
/// Largest V of the bf16 chunked path: value heads up to 512 (fla's Gated DeltaNet default,
/// head_dim 256 x expand_v 2) run unsplit. The kernels walk V in 64-column tiles; only the WY
/// pass holds a chunk's V rows whole (136 KB at K = 256, V = 512). On value sub-heads the K-side
/// work (T, dq, dk, the WY backward) was repeated per sub-head: on an H100 (bf16, B = 8, T =
/// 2048, H = 6, K = 256, V = 512) unsplit ran forward+backward 3.95 -> 3.28 ms and fla's
/// gated_deltanet_340M training 59,808 -> 62,271 tokens/s
/// (`bench/results/2026-12-06_h100_7bd0fc0_delta_k256_v512.txt`).
pub const DELTA_CHUNK_V_MAX: usize = 512;
/// Largest K and V of the f32 chunked path (its f32 tiles take twice the shared memory).
pub const DELTA_CHUNK_F32_MAX: usize = 128;
/// Value columns per block of the recurrent kernels (`RBV`).
pub(crate) const REC_BV: usize = 32;
/// Steps between the recurrent backward's state checkpoints (`RCK`).
pub(crate) const REC_CK: usize = 32;
/// Threads of every chunk launch (`DNT`).
const CHUNK_THREADS: u32 = 256;
/// Row padding of the shared-memory tiles (`DPAD`) and the stride of 64-wide tiles (`LDT`).
const PAD: usize = 8;
const LDT: usize = 72;

/// Which algorithm a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaAlgo {
    /// Token by token (`delta/recurrent.cu`): decode and short sequences.
    Recurrent,
    /// Chunked (BT = 64) where the kernels take the shape ([`delta_path`]), else recurrent.
    Chunked,
}

/// What runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaPath {
    /// `delta_rec_*`.
    Recurrent,
    /// The chunked kernels for K padded to `kp` (64, 128, 192 or 256).
    Chunk {
        /// Padded K (the kernels' template width).
        kp: usize,
    },
}

impl DeltaPath {
    /// The label of benchmark and check rows: `recurrent` or `chunk`.
    pub fn label(self) -> &'static str {
        match self {
            DeltaPath::Recurrent => "recurrent",
            DeltaPath::Chunk { .. } => "chunk",
        }
    }
}

/// K padded to the chunk kernels' widths: 64, 128, 192 or 256.
pub fn kpad(k: usize) -> usize {
    k.div_ceil(64).max(1) * 64
}

/// V padded to the 64-column tiles of the chunk kernels.
pub fn vpad(v: usize) -> usize {
    v.div_ceil(64).max(1) * 64
}

/// The dispatch policy (module doc): the kernels for `algo` on a problem stored as bf16 (`bf16`)
/// or f32.
///
/// # Errors
/// The reason (a message) when K is above [`DELTA_MAX_K`].
pub fn delta_path(p: &DeltaProblem, bf16: bool, algo: DeltaAlgo) -> Result<DeltaPath, String> {
    let (k, v) = (p.k(), p.v());
    if k > DELTA_MAX_K {
        return Err(format!("delta kernels: K = {k} > {DELTA_MAX_K}"));
    }
    let max = if bf16 { DELTA_CHUNK_MAX } else { DELTA_CHUNK_F32_MAX };
    Ok(match algo {
        DeltaAlgo::Chunked if k <= max && v <= chunk_v_max(bf16) => DeltaPath::Chunk { kp: kpad(k) },
        _ => DeltaPath::Recurrent,
    })
}

/// Largest V of the chunked path: [`DELTA_CHUNK_V_MAX`] for bf16 ([`DELTA_CHUNK_MAX`] under the
/// lab override `vs=split`, wider heads then on value sub-heads), [`DELTA_CHUNK_F32_MAX`] for
/// f32.
pub fn chunk_v_max(bf16: bool) -> usize {
    match (bf16, lab("vs").as_deref()) {
        (true, Some("split")) => DELTA_CHUNK_MAX,
        (true, _) => DELTA_CHUNK_V_MAX,
        (false, _) => DELTA_CHUNK_F32_MAX,
    }
}

/// The launch grids' y and z limit, which `N * HV` (and with value sub-heads `N * HV * vs`) must
/// not pass.
pub const MAX_GRID_Y: usize = 65_535;

/// Narrowest value sub-head [`value_split`] makes: below it the recurrent kernels do better.
pub const DELTA_MIN_SPLIT_V: usize = 32;

/// Value sub-heads of the chunked path for a value head wider than its kernels take (V above
/// [`chunk_v_max`]: 512 for bf16, 128 for f32, e.g. fla's Gated DeltaNet default `head_dim` 256
/// x `expand_v` 2 in f32): the head runs as `vs` value heads of `V / vs` columns
/// sharing its q, k, beta and decay. Exact, because the delta rule is separable in V: the UT
/// transform T, w and the decays do not read v, and each column of u, of the state and of o
/// depends on its own column of v only; the backward sums the sub-heads' dbeta and dg.
/// Returns the fewest sub-heads whose width divides V and fits, 1 where V fits already or no
/// such width of at least [`DELTA_MIN_SPLIT_V`] exists (then the recurrent kernels run).
pub fn value_split(p: &DeltaProblem, bf16: bool) -> usize {
    let (kmax, vmax) = (if bf16 { DELTA_CHUNK_MAX } else { DELTA_CHUNK_F32_MAX }, chunk_v_max(bf16));
    let v = p.v();
    if v <= vmax || p.k() > kmax {
        return 1;
    }
    (2..=v / DELTA_MIN_SPLIT_V).find(|&s| v.is_multiple_of(s) && v / s <= vmax).unwrap_or(1)
}

/// The problem the kernels see for `vs` value sub-heads of `p` ([`value_split`]): `HV * vs`
/// value heads of `V / vs` columns, the same rows, scale and options. v, o, dv and do keep their
/// memory layout (`[rows, HV, V]` is `[rows, HV * vs, V / vs]`); beta and the decay are
/// expanded per sub-head by the gate prep, states moved between the layouts by
/// `delta_state_split`.
///
/// # Errors
/// `vs` not dividing V (or 0).
pub fn split_problem(p: &DeltaProblem, vs: usize) -> Result<DeltaProblem, gla_core::Error> {
    if vs == 0 || !p.v().is_multiple_of(vs) {
        return Err(gla_core::Error::BadArg { key: "vs", reason: format!("{vs} value sub-heads do not divide V = {}", p.v()) });
    }
    DeltaProblem::new(gla_core::DeltaSpec {
        b: p.b(),
        t: p.t(),
        h: p.h(),
        hv: p.hv() * vs,
        k: p.k(),
        v: p.v() / vs,
        gate: p.gate(),
        scale: Some(p.scale()),
        cu_seqlens: p.is_varlen().then(|| p.bounds().to_vec()),
        l2_qk: p.l2_qk(),
        beta_sigmoid: p.beta_sigmoid(),
        allow_neg_eigval: p.allow_neg_eigval(),
    })
}

/// How one call runs ([`route`]): the kernels, the problem they see and the value sub-heads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaRoute {
    /// The kernels.
    pub path: DeltaPath,
    /// The problem the kernels see: the caller's, or its value sub-heads' ([`split_problem`]).
    pub kernel: DeltaProblem,
    /// Value sub-heads per value head (1: no split).
    pub vs: usize,
}

impl DeltaRoute {
    /// The label of benchmark and check rows: `recurrent`, `chunk`, or `chunk-vsplit` on value
    /// sub-heads.
    pub fn label(&self) -> &'static str {
        if self.vs > 1 {
            "chunk-vsplit"
        } else {
            self.path.label()
        }
    }

    /// The forward's workspaces: [`DeltaWorkspaceLens::forward`] on the kernels' problem, with
    /// value sub-heads also the two state buffers in their layout.
    pub fn forward_lens(&self, nc: usize, bf16: bool) -> DeltaWorkspaceLens {
        self.with_states(DeltaWorkspaceLens::forward(&self.kernel, nc, bf16, self.path))
    }

    /// The backward's workspaces (as [`DeltaRoute::forward_lens`]) on a device of `sm_count` SMs:
    /// no `dvl` buffer where the state-gradient pass computes it itself (`h_plan`'s `out`).
    pub fn backward_lens(&self, nc: usize, bf16: bool, sm_count: usize) -> DeltaWorkspaceLens {
        let mut l = DeltaWorkspaceLens::backward(&self.kernel, nc, bf16, self.path);
        if let DeltaPath::Chunk { kp } = self.path {
            if h_plan(true, bf16, kp, vpad(self.kernel.v()), self.kernel.n() * self.kernel.hv(), sm_count).out {
                l.dvl = 0;
            }
        }
        self.with_states(l)
    }

    fn with_states(&self, l: DeltaWorkspaceLens) -> DeltaWorkspaceLens {
        let st = if self.vs > 1 { self.kernel.state_len().max(1) } else { 0 };
        DeltaWorkspaceLens { sa: st, sb: st, ..l }
    }
}

/// The dispatch of one call: [`delta_path`], on value sub-heads ([`value_split`]) where V is
/// too wide for the chunked kernels and the sub-heads of every sequence fit the launch grids
/// (`N * HV * vs <= 65535`; otherwise the recurrent kernels, which need `N * HV` only).
///
/// # Errors
/// As [`delta_path`].
pub fn route(p: &DeltaProblem, bf16: bool, algo: DeltaAlgo) -> Result<DeltaRoute, String> {
    let vs = if algo == DeltaAlgo::Chunked { value_split(p, bf16) } else { 1 };
    if vs > 1 && p.n() * p.hv() * vs <= MAX_GRID_Y {
        let kernel = split_problem(p, vs).map_err(|e| e.to_string())?;
        let path = delta_path(&kernel, bf16, algo)?;
        if matches!(path, DeltaPath::Chunk { .. }) {
            return Ok(DeltaRoute { path, kernel, vs });
        }
    }
    Ok(DeltaRoute { path: delta_path(p, bf16, algo)?, kernel: p.clone(), vs: 1 })
}

/// Split planes of the chunked path's split tensors: 2 for bf16 (hi and lo), 1 for bf16 under
/// [`DeltaPrecision::Bf16`] (the kernels' `DELTA_PLANES`, [`crate::runtime::program_text`]) and
/// for f32. Shared memory and workspaces are sized by it. An invalid setting counts as the
/// default here: the same setting fails the program's load before any launch.
pub fn planes(bf16: bool) -> usize {
    match (bf16, delta_precision()) {
        (true, Ok(DeltaPrecision::Bf16)) | (false, _) => 1,
        (true, _) => 2,
    }
}

/// cp.async stages of the forward state pass's one-block-per-SM entries (`NS` of `delta_h_*` and
/// `delta_h_v32_*`): 2 where they fit (bf16, KP <= 128), else 1. Must match `H_ENTRY` in
/// `delta/chunk_h.cu`.
pub(crate) fn h_stages(bf16: bool, kp: usize) -> usize {
    if bf16 && kp <= 128 {
        2
    } else {
        1
    }
}

/// How a sequential pass launches: value columns per block (`BV`), cp.async stages (`NS`),
/// whether it is an entry built for two blocks per SM (`_b2`: one stage, at most 128 registers,
/// shared memory for two) and, for the state-gradient pass, whether it computes dvl itself
/// (`out`, `delta_h_bwd_dv2_*`: P^T do from the q, k, do rows the pass loads, no `delta_dvl`
/// launch; 64 columns, two stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HPlan {
    pub(crate) bv: usize,
    pub(crate) ns: usize,
    pub(crate) two: bool,
    pub(crate) out: bool,
}

/// The two-blocks-per-SM entries, the fused state-gradient entries and the two-buffer dq/dk
/// entries exist for bf16 with KP <= 128 (`delta/chunk_h.cu`, `delta/chunk_bwd.cu`).
fn h_two_ok(bf16: bool, kp: usize) -> bool {
    bf16 && kp <= 128
}

/// The lab override of the chunked passes' plans, for side-by-side timing:
/// `GLA_DELTA_LAB="h=<v>,hb=<v>"`. The forward state pass (`h`): `base` (the default policy), `one`
/// (the one-block-per-SM plan the policy falls back to), `v32` (32 columns, one block per SM), `b2`
/// (64 columns, two blocks per SM), `v32b2` (32 columns, two blocks per SM). The state-gradient
/// pass (`hb`): `one` (dvl its own launch), `v32` (the same at 32 columns), `rv32` (`v32`, and its
/// residual form after a residual forward whatever the tiles: [`h_bwd_res`]), `dv2` (dvl fused in,
/// 64 columns, whatever the tiles), `rs1` / `rdv1` (K wider than 128:
/// [`HBR_S1`] / [`HBR_D1`] and their residual forms); `tail=0` / `tail=1` ([`hb_tail`]),
/// `ftail=0` / `ftail=1` ([`hr_tail`]). The residual forward: `h=resb2` or `h=resv32`, `h=ress2`
/// where K is wider than 128 ([`h_res`]; forced on every workspace); the output fused into it:
/// `fo=0` / `fo=1` ([`res_out`]); P read from `delta_pm` in that fused pass (`fp=0` / `fp=1`,
/// [`hro_pm`]) and in the one-stage state-gradient pass (`bp=0` / `bp=1`, [`hb_pm`]); the WY
/// backward's V tiles on one buffer at KP = 256 (`wb=1`, [`wy_bwd_name`]), its dAb tiles split
/// (`wm=0`, the same), its dw on mma.sync at KP 128 (`ww=0`, [`wy_bwd_kernel`]); dq/dk's dMG split
/// (`dm=0`, [`dqk_kernel`]); the residual state-gradient pass's dS update on mma.sync (`hg=0`,
/// [`hb_launch`]). The
/// two-blocks-per-SM, fused and residual entries exist where [`h_two_ok`] (the residual ones
/// also wider), `v32` where bf16. dq/dk (`dq`): `s2` runs the two-buffer mma.sync
/// entry where the warpgroup one would run ([`dqk_wg`]), `s1` the one-buffer one where K is
/// wider than 128 ([`dqk_bufs`]).
/// Value heads (`vs`): `split` runs bf16
/// value heads above 256 on sub-heads ([`chunk_v_max`]). Anything else, or unset: the default.
fn lab(key: &str) -> Option<String> {
    let v = std::env::var("GLA_DELTA_LAB").ok()?;
    v.split(',').find_map(|kv| kv.trim().strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::to_string))
}

/// [`lab`] of the forward state pass (`h`) or of the state-gradient pass (`hb`).
fn h_lab(bwd: bool) -> Option<String> {
    lab(if bwd { "hb" } else { "h" })
}

/// The plan of the forward state pass (`bwd` false) or of the state-gradient pass, without the
/// lab override ([`h_plan`] applies it). One block per SM: 64 value columns per block, or 32
/// (bf16) when 64-column tiles give fewer than two blocks per SM (long sequences: each block
/// walks its sequence's chunks in order, so blocks are the only parallelism), the forward's
/// stages per [`h_stages`]. The forward takes `delta_h_b2` (64 columns, two blocks per SM)
/// where its entries exist ([`h_two_ok`]) and 64-column blocks fill every SM at least once:
/// measured on the H200 (bf16, K = V = 128, B*T = 65536, `bench/delta_lab.sh`) the state pass
/// runs 1.37 -> 1.22 ms at T = 2048 and the forward 3.56 -> 3.01 ms at T = 8192 (256 blocks), while
/// at T = 32768 (64 blocks) one stage of loads costs more than the occupancy gains (3.56 ->
/// 4.55 ms), so the one-block plan stays. The backward keeps one block per SM; where the fused
/// entries exist it computes dvl itself on 64 columns and two stages (`delta_h_bwd_dv2`, no
/// `delta_dvl` launch) unless 32-column tiles would all run in one wave (2 `tiles` <= SMs),
/// where the 64-column pass would leave half the SMs idle for as long. On an H100 (bf16, K = V
/// = 128, B*T = 65536, 1f9ac1b) the fused pass ran forward+backward 8.63 / 8.78 ms against
/// 9.16 / 9.55 for `delta_h_bwd_v32` + `delta_dvl` at T = 8192 / 16384 (256 / 128 tiles: one
/// wave at 64 columns, two at 32), its launch 1.61 ms at every T up to 16384; at T = 32768 (64
/// tiles) it would take twice that against 2.24 + 0.51 ms (`bench/results/README.md`). K wider
/// than 128 (bf16): the backward's 64-column plan is [`HBR_D1`] where the forward before it is
/// residual ([`res_wide`]: always, unless the lab asks for a WY plan), whose entries alone exist
/// with dvl fused in.
fn h_policy(bwd: bool, bf16: bool, kp: usize, vp: usize, nhv: usize, sm_count: usize) -> HPlan {
    let tiles = (vp / 64) * nhv;
    if !bwd && h_two_ok(bf16, kp) && tiles >= sm_count {
        return HPlan { bv: 64, ns: 1, two: true, out: false };
    }
    if bwd && h_two_ok(bf16, kp) && 2 * tiles > sm_count {
        return HBR_D2;
    }
    let one = h_one(bf16, kp, tiles, sm_count);
    if bwd && one.bv == 64 && res_wide(bf16, kp) {
        return HBR_D1;
    }
    one
}

/// The one-block-per-SM plan for `tiles` 64-column tiles (see [`h_policy`]): stages per
/// [`h_stages`] (each chunk's loads land while the one before it is computed: with one block
/// per SM nothing else hides them), dvl its own launch in the backward.
fn h_one(bf16: bool, kp: usize, tiles: usize, sm_count: usize) -> HPlan {
    let bv = if bf16 && tiles < 2 * sm_count { 32 } else { 64 };
    HPlan { bv, ns: h_stages(bf16, kp), two: false, out: false }
}

/// The plan of a sequential pass ([`h_policy`]), or the lab override's ([`h_lab`]).
pub(crate) fn h_plan(bwd: bool, bf16: bool, kp: usize, vp: usize, nhv: usize, sm_count: usize) -> HPlan {
    let one = h_one(bf16, kp, (vp / 64) * nhv, sm_count);
    let two = |bv| HPlan { bv, ns: 1, two: true, out: false };
    match h_lab(bwd).as_deref() {
        Some("one") => one,
        Some("v32" | "rv32") if bf16 => HPlan { bv: 32, ..one },
        Some("b2") if !bwd && h_two_ok(bf16, kp) => two(64),
        Some("v32b2") if !bwd && h_two_ok(bf16, kp) => two(32),
        Some("dv2") if bwd && h_two_ok(bf16, kp) => HBR_D2,
        Some("rs1") if bwd && bf16 && !h_two_ok(bf16, kp) => HBR_S1,
        Some("rdv1") if bwd && res_wide(bf16, kp) => HBR_D1,
        _ => h_policy(bwd, bf16, kp, vp, nhv, sm_count),
    }
}

/// The entry point of a sequential pass: `delta_h` (forward), `delta_h_bwd` or
/// `delta_h_bwd_dv2` (dvl fused in), with `_v32` for 32-column tiles and `_b2` / `_v32b2` for
/// the two-blocks-per-SM entries.
pub(crate) fn h_name(bwd: bool, plan: HPlan, kp: usize, sfx: &str) -> String {
    let base = match (bwd, plan.out) {
        (true, true) => "delta_h_bwd_dv2",
        (true, false) => "delta_h_bwd",
        _ => "delta_h",
    };
    let v = match (plan.bv, plan.two) {
        (32, false) => "_v32",
        (32, true) => "_v32b2",
        (_, true) => "_b2",
        _ => "",
    };
    format!("{base}{v}_k{kp}_{sfx}")
}

/// Columns per block of `delta_dqk_*` (`KW`): all of KP for bf16 up to 128, else halves (f32:
/// 64). Must match `DqkTile` in `delta/chunk_bwd.cu`.
pub(crate) fn dqk_kw(bf16: bool, kp: usize) -> usize {
    if bf16 && kp <= 128 {
        kp
    } else if kp == 64 {
        64
    } else {
        kp / 2
    }
}

/// Buffers of `delta_dqk_*`'s V tiles: 2 for bf16 (`delta_dqk_s2_*`, tile v + 1 loading during
/// tile v; faster than one buffer at K = V = 128,
/// `bench/results/2026-12-05_h100_3800181_verify_vigb.txt`), else 1; the lab override `dq=s1`
/// runs the one-buffer entries where K is wider than 128.
pub(crate) fn dqk_bufs(bf16: bool, kp: usize) -> usize {
    if bf16 && !(kp > 128 && lab("dq").as_deref() == Some("s1")) {
        2
    } else {
        1
    }
}

/// The residual forward's plans ([`h_res`]): `delta_hr_b2` (64 columns, one stage, built for two
/// blocks per SM) and `delta_hr_v32` (32 columns, two stages, one block per SM).
pub(crate) const HR_B2: HPlan = HPlan { bv: 64, ns: 1, two: true, out: false };
/// See [`HR_B2`].
pub(crate) const HR_V32: HPlan = HPlan { bv: 32, ns: 2, two: false, out: false };
/// The residual forward for K wider than 128 (`delta_hr_s2`, KP 192 and 256: 64 columns, two
/// stages, one block per SM): per chunk T (split), k and a V tile (56 KB at KP = 256) where
/// the WY form's `delta_h` reads w (split), k and u (112 KB) on one stage.
pub(crate) const HR_S2: HPlan = HPlan { bv: 64, ns: 2, two: false, out: false };

/// The residual forward's plan, or `None` for the WY form (bf16 only): `delta_wyt`
/// writes T alone and `delta_hr_*` forms v_new as T (beta (V - rk exp(G) (K S))), so w and u
/// are never formed. `delta_hr_b2` (64 columns, one stage, two blocks per SM) where 64-column
/// blocks fill every SM at least once (`tiles`, the 64-column ones, >= SMs), else
/// `delta_hr_v32` (32 columns, two stages, one block per SM: long sequences, where blocks walking
/// their chunks in order are the only parallelism). On an H100 (bf16, K = V = 128, B*T = 65536,
/// `bench/results/2026-12-06_h100_4085b29_delta_hr_v32.txt`) the forward ran 2.24 (`_b2`) against
/// 2.39 ms (`_v32`) at T = 8192 (256 tiles), 2.66 against 2.40 at T = 16384 (128 tiles), and at
/// T = 32768 (64 tiles) 2.76 against 3.00 for the WY form (`delta_wy` + `delta_h_v32`, whose
/// UT pass writes w and u). K wider than 128 takes [`HR_S2`]: on an H100 (bf16, B = 8, T =
/// 2048, H = 32, K = V = 256) the forward ran 3.59 -> 2.49 ms (`delta_wyt` 0.24 + `delta_hr_s2`
/// 1.34 against `delta_wy` 0.93 + `delta_h` 1.75, `delta_o` 0.91 in both,
/// `bench/results/2026-12-06_h100_ee4e489_delta_k256.txt`). A forward whose states and v_new a
/// backward reads (`keep`) takes `delta_hr_v32` also where the 64-column blocks fill the SMs
/// less than twice (the two-blocks-per-SM plan's one partial wave: the SMs holding two blocks
/// set the pass's time): on an H100 (bf16, B = 1, T = 8192, H = 96, K = V = 128: 192 tiles)
/// DeltaNet forward+backward ran 5.61-5.71 -> 5.52-5.59 ms, against fla's 5.52
/// (`bench/results/2026-12-06_h100_80bbc48_delta_b96.txt`), while a forward-only workspace keeps
/// `delta_hro_b2` there (1.59 ms against 1.66). A forward whose output `HR_B2` would fuse in
/// (`out`: a forward, not a backward's recomputation, and [`res_out`] on `HR_B2`, which fuses it
/// also where a backward follows) takes that plan from three quarters of two blocks per SM (`2
/// tiles >= 3 SMs`): on an H100 (bf16, K = V = 128, DeltaNet forward+backward, H = 96 .. 120
/// at B = 1, T = 8192, and 8 x 8192 x 16) `delta_hro_b2` storing the states ran 5.25-5.29 against 5.08-5.12
/// ms at 192 tiles, 5.51-5.55 against 5.62-5.63 at 208, 5.69-5.74 against 5.87-5.91 at 224,
/// 5.96-5.97 against 6.25-6.28 at 240 and 6.05-6.06 against 6.30-6.34 at 256
/// (`bench/results/2026-12-08_h100_00dd03c_delta_fused_training.txt`); a forward without a
/// fused output (a recomputation, or under the lab's `fo=0`) keeps the threshold of two blocks
/// per SM. Where it runs is [`res_ok`]'s. The lab override `h=resb2` / `h=resv32` (KP <= 128) or
/// `h=ress2` (wider) forces one entry on every workspace (the delta checks run each over the
/// whole case table), any other `h=` value (a WY plan under study) turns the residual form off.
pub(crate) fn h_res(bf16: bool, kp: usize, tiles: usize, sm_count: usize, keep: bool, out: bool) -> Option<HPlan> {
    if !h_two_ok(bf16, kp) {
        return res_wide(bf16, kp).then_some(HR_S2);
    }
    match h_lab(false).as_deref() {
        Some("resb2") => Some(HR_B2),
        Some("resv32") => Some(HR_V32),
        Some(_) => None,
        None => {
            // the fewest 64-column tiles for HR_B2 (the SMs' count for a forward only)
            let b2_min = match (keep, out) {
                (false, _) => sm_count,
                (true, true) => (3 * sm_count).div_ceil(2),
                (true, false) => 2 * sm_count,
            };
            Some(if tiles >= b2_min { HR_B2 } else { HR_V32 })
        }
    }
}

/// Whether a forward may take the residual form ([`h_res`]): a forward-only workspace always;
/// a training workspace (the forward whose backward follows, or the backward's recomputation)
/// only where the state-gradient pass has the residual form ([`h_bwd_res`] on its plan for
/// `nhv` sequence x value heads), since any other backward forms w after all (`delta_wy`): on
/// an H100 at T = 32768 (bf16, K = V = 128, B = 2) that took the forward+backward from 8.5 to
/// 9.2 ms. The lab overrides `h=resb2` / `h=resv32` force it on every workspace, so the checks
/// also run a backward that forms w after the residual forward.
pub(crate) fn res_ok(bf16: bool, kp: usize, vp: usize, nhv: usize, sm_count: usize, fwd_only: bool) -> bool {
    fwd_only
        || matches!(h_lab(false).as_deref(), Some("resb2" | "resv32" | "ress2"))
        || h_bwd_res(bf16, kp, h_plan(true, bf16, kp, vp, nhv, sm_count), vp, nhv, sm_count)
}

/// The residual forward's entry point on `plan` ([`h_res`]); `out`: the one with the output pass
/// fused in ([`res_out`]).
pub(crate) fn hr_name(plan: HPlan, kp: usize, out: bool) -> String {
    let form = match (plan.bv, plan.two) {
        (32, _) => "v32",
        (_, true) => "b2",
        _ => "s2",
    };
    format!("delta_hr{}_{form}_k{kp}_bf16", if out { "o" } else { "" })
}

/// [`hr_name`]'s fused-output entry that reads P (`delta_hrop_*`, [`hro_pm`]).
pub(crate) fn hrop_name(plan: HPlan, kp: usize) -> String {
    hr_name(plan, kp, true).replacen("delta_hro_", "delta_hrop_", 1)
}

/// Whether a forward with K wider than 128 takes the residual form ([`HR_S2`], [`h_res`]): bf16,
/// unless the lab asks for a WY plan (`h=` other than `ress2`).
fn res_wide(bf16: bool, kp: usize) -> bool {
    bf16 && !h_two_ok(bf16, kp) && kp <= DELTA_CHUNK_MAX && matches!(h_lab(false).as_deref(), None | Some("ress2"))
}

/// Whether the residual forward on `plan` ([`h_res`]) computes the output itself (`delta_hro_*`, no
/// `delta_o` launch): on `HR_B2` always, on `HR_S2` where no backward reads the states and v_new
/// it would store (`fwd_only`, and then the pass writes neither). On an H100 (bf16, H
/// = 16, K = V = 128, B*T = 65536) the forward ran 2.09 -> 1.71 ms at T = 2048 and 8192
/// (`delta_hro_b2` 1.34 ms against `delta_hr_b2` 1.01 + `delta_o` 0.72), while at T = 32768 the
/// 32-column one-block-per-SM pass lost (`delta_hro_v32` 2.27 ms against `delta_hr_v32` 1.24 +
/// `delta_o` 0.72: there the output's products sit in each chunk's chain); at K = V = 256 (B = 8, T
/// = 2048, H = 32) `delta_hro_s2` ran 2.12 ms against `delta_hr_s2` 1.32 + `delta_o` 0.91, the
/// forward 2.50 -> 2.39 ms. On `HR_B2` the output is fused in also where a backward follows (the
/// pass then writes the states and v_new as well): on an H100 (bf16, K = V = 128, 00dd03c)
/// DeltaNet forward+backward ran 6.21-6.22 -> 6.01-6.06 ms at 32 x 2048 x 16 (`delta_hro_b2`
/// 1.50 against `delta_hr_b2` 1.00 + `delta_o` 0.68) and 6.24 -> 6.08-6.12 at 4 x 4096 x 64, while
/// on `HR_S2` (K wider than 128) it ran level at V = 512 (2.90-2.93 against 2.90) and 0.8%
/// slower at K = V = 256, and the 32-column pass lost (forward+backward 6.31 -> 6.93 at 8 x 8192
/// x 16; `bench/results/2026-12-08_h100_00dd03c_delta_fused_training.txt`). The lab override
/// `fo=0` turns it off, `fo=1` fuses it on every plan and where a backward follows.
pub(crate) fn res_out(plan: HPlan, fwd_only: bool) -> bool {
    match lab("fo").as_deref() {
        Some("0") => false,
        Some("1") => true,
        _ => plan == HR_B2 || (fwd_only && plan == HR_S2),
    }
}

/// Whether the fused-output forward on `plan` ([`res_out`]) reads P from `delta_pm_k{KP}_bf16`
/// (`delta_hrop_*`, one launch forming P once per chunk and value head) instead of forming it in
/// each of a head's VP / 64 column blocks: K wider than 128 ([`HR_S2`]), where on the H200 (bf16,
/// B = 8, T = 2048) the forward ran 0.876 -> 0.768 ms at H = 6, V = 512 (`delta_hro_s2` 0.819
/// against `delta_pm` 0.044 + `delta_hrop_s2` 0.672) and 2.368 -> 2.146 at H = 32, V = 256
/// (`bench/results/2026-12-07_h200_e1de5f0_delta_vs_fla.txt`). At KP <= 128 (`HR_B2`, two column
/// blocks a head at V = 128) it is not timed: the lab's `fp=1` takes it there too, `fp=0` nowhere.
pub(crate) fn hro_pm(plan: HPlan) -> bool {
    match lab("fp").as_deref() {
        Some("0") => false,
        Some("1") => plan == HR_B2 || plan == HR_S2,
        _ => plan == HR_S2,
    }
}

/// Whether the state-gradient pass on `plan` reads P from `delta_pm_k{KP}_bf16`
/// (`delta_h_bwd_rdvp1_*`) instead of forming it in each of a head's VP / 64 column blocks: on
/// [`HBR_D1`] (K wider than 128; one stage: P's tile is free at each chunk's top, so P loads with
/// the chunk). On the H200 (bf16, B = 8, T = 2048) `delta_pm` + `delta_h_bwd_rdvp1` ran 0.043 +
/// 0.700 against `delta_h_bwd_rdv1`'s 0.844 ms at H = 6, V = 512, and 0.186 + 1.865 against 2.215
/// at H = 32, V = 256 (the file of [`hro_pm`]). The lab override `bp=0` forms P in the pass.
pub(crate) fn hb_pm(plan: HPlan) -> bool {
    lab("bp").as_deref() != Some("0") && plan == HBR_D1
}

/// Whether the state-gradient pass on `plan` (for `nhv` sequence x value heads of `vp` padded
/// columns) runs its residual form after a residual forward (w^T dU as Kn^T diag(beta exp(G)) T^T
/// dU from T, k and beta, so w is never formed): K wider than 128 on [`HBR_D1`] (or the lab's
/// [`HBR_S1`]); at KP <= 128 the fused plan (`plan.out`, `delta_h_bwd_rdv2_k{KP}_bf16`), and the
/// two-stage 32-column one (`delta_h_bwd_rv32_k{KP}_bf16`, dvl its own launch) where its tiles fill
/// at least half the SMs, the long sequences where it was measured (on an H100 at T = 32768, B*T =
/// 65536, H = 16, K = V = 128: forward+backward 8.09 -> 7.75 ms, `delta_wyt` + `delta_hr_v32` in
/// place of `delta_wy` + `delta_h_v32`). Smaller problems keep the WY form: the residual one was
/// not measured faster there, and it moves the order in which split terms add (the gradients'
/// rounding), which the model rows were recorded with (docs/kernels.md, the residual forward).
/// Otherwise (a lab plan) a backward after the residual forward forms w first (`delta_wy`).
pub(crate) fn h_bwd_res(bf16: bool, kp: usize, plan: HPlan, vp: usize, nhv: usize, sm_count: usize) -> bool {
    if bf16 && !h_two_ok(bf16, kp) {
        return plan == HBR_S1 || plan == HBR_D1;
    }
    let fill = 2 * (vp / 32) * nhv >= sm_count || h_lab(true).as_deref() == Some("rv32");
    let rv32 = plan.bv == 32 && plan.ns == 2 && !plan.two && fill;
    h_two_ok(bf16, kp) && (plan.out || rv32)
}

/// The residual state-gradient pass for K wider than 128 (`delta_h_bwd_rs1`, KP 192 and 256):
/// 64 columns, one stage (two do not fit beside q and k), dvl read; per chunk q, k, T (split)
/// and a do tile (95 KB at KP = 256) where `delta_h_bwd` reads q, k, w (split) and do (144 KB).
/// It ran where the policy's plan is 64 columns (64-column tiles, at least two per SM), and so
/// the training forward before it takes the residual form too ([`res_ok`]): on an H100 (bf16,
/// B = 8, T = 2048, H = 32, K = V = 256) the pass ran 2.13 -> 1.86 ms, and with no `delta_wy`
/// (0.98 ms) and the residual forward the forward+backward 11.12 -> 9.82 ms
/// (`bench/results/2026-12-06_h100_ee4e489_delta_k256.txt`). [`HBR_D1`] (dvl fused in) has since
/// replaced it; the lab override `hb=rs1` runs it.
pub(crate) const HBR_S1: HPlan = HPlan { bv: 64, ns: 1, two: false, out: false };

/// [`HBR_S1`] with dvl fused in (`delta_h_bwd_rdv1`: P^T do formed in the pass from the q, k
/// rows it loads, no `delta_dvl` launch nor dvl buffer), the default where the policy's plan
/// is 64 columns ([`h_policy`]): on an H100 (bf16, B = 8, T = 2048, H = 32, K = V = 256) 2.27
/// ms against `delta_h_bwd_rs1` 1.86 + `delta_dvl` 0.54, forward+backward 9.71 -> 9.48 ms
/// (`bench/results/2026-12-06_h100_7bd0fc0_delta_k256_v512.txt`).
pub(crate) const HBR_D1: HPlan = HPlan { bv: 64, ns: 1, two: false, out: true };

/// The fused residual state-gradient pass (`delta_h_bwd_rdv2_k{KP}_bf16`: dvl fused in, 64
/// columns, two stages, one block per SM), [`h_policy`]'s backward plan where its entries exist.
pub(crate) const HBR_D2: HPlan = HPlan { bv: 64, ns: 2, two: false, out: true };

/// How many sequence x value heads (the last ones) the fused residual state-gradient pass
/// ([`HBR_D2`], `plan`) runs on 32-column tiles (`delta_h_bwd_rdv2_v32`, a launch of its own
/// after the 64-column one), so that a partial last wave of 64-column blocks becomes one wave of
/// half-width blocks: where `tiles` = (VP / 64) x `nhv` fills the SMs at least once and leaves
/// `r` > 0 blocks over, with 2 `r` <= SMs, the last ceil(r / (VP / 64)) heads. One block per SM
/// walks its sequence's chunks in order, so at 1 x 8192 x 96 (192 tiles on 132 SMs) the pass
/// runs two 64-column rounds where this runs one and one half-width one: on an H100 (bf16, K = V
/// = 128, `bench/results/2026-12-06_h100_9f06b79_delta_tails.txt`) the pass ran 1.40-1.44 ms
/// against `delta_h_bwd_rdv2` 0.71 + `delta_h_bwd_rdv2_v32` 0.57, DeltaNet forward+backward
/// 5.53-5.57 -> 5.39-5.41 ms. Otherwise 0. The lab override `tail=0` turns it off, `tail=1` puts
/// half the heads (at least one) there on every workspace where `plan` is [`HBR_D2`] (the delta
/// checks run it over the case table).
pub(crate) fn hb_tail(plan: HPlan, vp: usize, nhv: usize, sm_count: usize) -> usize {
    if plan != HBR_D2 {
        return 0;
    }
    tail_heads("tail", vp, nhv, sm_count)
}

/// [`partial_wave_heads`] under the lab override `key`: `0` none, `1` half the heads (at least
/// one where there are any), else the policy's.
fn tail_heads(key: &str, vp: usize, nhv: usize, sm_count: usize) -> usize {
    if nhv == 0 {
        return 0;
    }
    match lab(key).as_deref() {
        Some("0") => 0,
        Some("1") => (nhv / 2).max(1),
        _ => partial_wave_heads(vp, nhv, sm_count),
    }
}

/// The heads of a partial last wave of 64-column one-block-per-SM tiles that fit one wave of
/// 32-column ones ([`hb_tail`], [`hr_tail`]): where `tiles` = (VP / 64) x `nhv` fill the SMs at
/// least once and leave `r` > 0 over with 2 `r` <= SMs, the last ceil(r / (VP / 64)); else 0.
fn partial_wave_heads(vp: usize, nhv: usize, sm_count: usize) -> usize {
    let per = vp / 64;
    let tiles = per * nhv;
    if sm_count == 0 || per == 0 {
        return 0;
    }
    let r = tiles % sm_count;
    if tiles < sm_count || r == 0 || 2 * r > sm_count {
        return 0;
    }
    let m = r.div_ceil(per);
    if (vp / 32) * m <= sm_count {
        m
    } else {
        0
    }
}

/// How many sequence x value heads (the last ones) a residual training forward on [`HR_V32`]
/// (`plan`, KP <= 128, no output fused in) leaves on it, the others running [`HR_S2`] (64
/// columns, two stages, one block per SM, `delta_hr_s2_k{KP}_bf16`) in a launch before it:
/// [`partial_wave_heads`]'s, so that at 1 x 8192 x 96 (192 64-column tiles on 132 SMs) one
/// 64-column round and one 32-column round replace three 32-column ones. On an H100 (bf16, K =
/// V = 128, `bench/results/2026-12-06_h100_9f06b79_delta_tails.txt`) the pass ran 0.871 ms
/// against `delta_hr_s2` 0.508 + `delta_hr_v32` 0.317, DeltaNet forward+backward 5.39-5.41 ->
/// 5.32-5.36 (with [`hb_tail`]). The lab override `ftail=0` turns it off, `ftail=1` leaves half
/// the heads (at least one) on [`HR_V32`] on every such workspace (the delta checks run it over
/// the case table).
pub(crate) fn hr_tail(plan: HPlan, kp: usize, vp: usize, nhv: usize, sm_count: usize) -> usize {
    if plan != HR_V32 || kp > 128 {
        return 0;
    }
    tail_heads("ftail", vp, nhv, sm_count)
}

/// The residual state-gradient pass's entry point on `plan` ([`h_bwd_res`]).
pub(crate) fn hbr_name(plan: HPlan, kp: usize) -> String {
    let form = match (plan.out, plan.ns, plan.bv) {
        (true, 1, _) => "rdv1",
        (true, _, 32) => "rdv2_v32",
        (true, _, _) => "rdv2",
        (false, _, 32) => "rv32",
        _ => "rs1",
    };
    format!("delta_h_bwd_{form}_k{kp}_bf16")
}

/// The WY backward's entry point: `delta_wy_bwd_k{KP}_{sfx}`, at KP = 256 in bf16
/// `delta_wy_bwd_vb2_k256_bf16`, whose V-tile loop runs on two buffers (a one-block-per-SM launch
/// there, where each tile's loads were waited for in full): on the H200 (bf16, B = 8, T = 2048)
/// the launch ran 0.607 -> 0.556 ms at H = 6, V = 512 and 1.974 -> 1.874 at H = 32, V = 256
/// (`bench/results/2026-12-07_h200_e1de5f0_delta_vs_fla.txt`). The lab override `wb=1` keeps the
/// one-buffer loop there. At KP 128 and on the two-buffer KP 256 entry, bf16 runs
/// `delta_wy_bwd_m1_k128_bf16` / `delta_wy_bwd_vb2_m1_k256_bf16`, dAb's two tiles for dk on one
/// bf16 plane (tools/emu: dk's error at most 1.22x the split tiles'; on an H100 the launch ran
/// 1.675 -> 1.604 ms at B = 32, T = 2048, H = 16, K = V = 128,
/// `bench/results/2026-12-07_h100_a0a67a0_delta_one_plane_labs.txt`); the lab override `wm=0`
/// keeps them split.
pub(crate) fn wy_bwd_name(kp: usize, sfx: &str) -> String {
    let m1 = sfx == "bf16" && lab("wm").as_deref() != Some("0");
    if kp == 256 && sfx == "bf16" && lab("wb").as_deref() != Some("1") {
        return format!("delta_wy_bwd_vb2{}_k256_bf16", if m1 { "_m1" } else { "" });
    }
    if kp == 128 && m1 {
        return "delta_wy_bwd_m1_k128_bf16".to_string();
    }
    format!("delta_wy_bwd_k{kp}_{sfx}")
}

/// The WY backward's launch for KP = `kp` on a device of architecture `arch`: its entry point
/// ([`wy_bwd_name`]) and dynamic shared memory. On sm_90a at KP 128 (bf16, the one-plane dAb
/// entry) dw = -dU S^T runs on warpgroup products (`delta_wy_bwd_wg_m1_k128_bf16`: dw's tiles
/// swizzled, 1024 bytes more to align them; no ldmatrix for dw, no spill): on an H100 (bf16, B =
/// 32, T = 2048, H = 16, K = V = 128) the launch ran 1.605 -> 1.567 ms, forward+backward 6.536 ->
/// 6.479, at T = 32768 7.475 -> 7.414 (`bench/results/2026-12-07_h100_a22288b_delta_wy_bwd_wg.txt`).
/// At KP = 256 the same ran within noise or slower (V = 512: 0.580 -> 0.587 ms) and was dropped.
/// The lab override `ww=0` keeps the mma.sync entry.
pub(crate) fn wy_bwd_kernel(kp: usize, sfx: &str, arch: &str, smem: &DeltaSmem) -> (String, usize) {
    let name = wy_bwd_name(kp, sfx);
    if arch == crate::runtime::ARCH_HOPPER && name == "delta_wy_bwd_m1_k128_bf16" && lab("ww").as_deref() != Some("0") {
        return ("delta_wy_bwd_wg_m1_k128_bf16".to_string(), smem.wy_bwd() + 1024);
    }
    (name, smem.wy_bwd())
}

/// The residual state-gradient launch of entry `name` ([`hbr_name`], [`hbrp_name`]) with `smem`
/// bytes of shared memory on a device of architecture `arch`: on sm_90a
/// `delta_h_bwd_rdv2_k128_bf16` runs as `delta_h_bwd_wg_rdv2_k128_bf16`, its dS update on
/// warpgroup products (each B operand read once per warpgroup, where the mma.sync products load
/// it into every warp; 1024 bytes more to align the swizzled tiles; tools/emu: the same bits).
/// The pass waits on shared memory (Nsight Compute on an H100,
/// `bench/results/2026-12-07_h100_3c333ed_delta_w16_labs.txt`); on an H100 the launch ran 1.39 ->
/// 1.31 ms at B = 32, T = 2048, H = 16, K = V = 128, forward+backward 6.48 -> 6.40
/// (`bench/results/2026-12-07_h100_b107bc9_delta_hb_wg.txt`). The lab override `hg=0` keeps the
/// mma.sync entry.
pub(crate) fn hb_launch(name: String, arch: &str, smem: usize) -> (String, usize) {
    if arch == crate::runtime::ARCH_HOPPER && name == HB_WG_FROM && lab("hg").as_deref() != Some("0") {
        return (HB_WG.to_string(), smem + 1024);
    }
    (name, smem)
}

/// The entry [`hb_launch`] replaces, and its warpgroup form.
const HB_WG_FROM: &str = "delta_h_bwd_rdv2_k128_bf16";
const HB_WG: &str = "delta_h_bwd_wg_rdv2_k128_bf16";

/// [`hbr_name`]'s entry that reads P (`delta_h_bwd_rdvp1_*`, [`hb_pm`]).
pub(crate) fn hbrp_name(plan: HPlan, kp: usize) -> String {
    hbr_name(plan, kp).replacen("_rdv1_", "_rdvp1_", 1)
}

/// The entry point of `delta_dqk_*` with `nb` V-tile buffers ([`dqk_bufs`]).
pub(crate) fn dqk_name(nb: usize, kp: usize, sfx: &str) -> String {
    format!("delta_dqk{}_k{kp}_{sfx}", if nb == 2 { "_s2" } else { "" })
}

/// Whether dq/dk runs on Hopper's warpgroup products (`delta_dqk_wg_k{KP}_bf16`: the two-buffer
/// entry's products on wgmma, the same adds in the same order): where those entries exist
/// (bf16, KP 64, 128 or 256: K tiles of whole 64-column blocks; sm_90a), unless the lab
/// override `dq=s2` or `dq=s1` asks for a mma.sync entry. At KP = 256 (two K halves of 128) on
/// an H100 (bf16, `bench/results/2026-12-06_h100_bf61556_delta_wyt_tc_dqk.txt`) the launch ran
/// 2.69 (one buffer) / 2.31 (two) / 2.20 ms (warpgroups) at B = 8, T = 2048, H = 32, K = V =
/// 256, and 0.87 / 0.70 / 0.71 ms at H = 6, V = 512.
pub(crate) fn dqk_wg(bf16: bool, kp: usize, arch: &str) -> bool {
    dqk_wg_built(bf16, kp) && arch == crate::runtime::ARCH_HOPPER && !matches!(lab("dq").as_deref(), Some("s2" | "s1"))
}

/// Whether `delta_dqk_wg_k{KP}_bf16` is built: bf16 whose K tiles ([`dqk_kw`]) are whole
/// 64-column blocks of the swizzled tiles (KP 64, 128, 256; not 192's 96-column halves).
fn dqk_wg_built(bf16: bool, kp: usize) -> bool {
    bf16 && dqk_kw(bf16, kp).is_multiple_of(64)
}

/// The dq/dk launch for KP = `kp` on a device of architecture `arch`: its entry point and
/// dynamic shared memory ([`dqk_wg`], else [`dqk_name`] with [`dqk_bufs`]).
pub(crate) fn dqk_kernel(bf16: bool, kp: usize, sfx: &str, arch: &str, smem: &DeltaSmem) -> (String, usize) {
    if dqk_wg(bf16, kp, arch) {
        // KP 128 and 256: dMG on one bf16 plane (tools/emu: dq's worst error 2.42e-3 -> 2.84e-3;
        // on an H100 1.523 -> 1.465 ms at B = 32, T = 2048, H = 16, K = V = 128); the lab's
        // `dm=0` keeps it split
        let d1 = matches!(kp, 128 | 256) && lab("dm").as_deref() != Some("0");
        if d1 && kp == 128 && lab("dq").as_deref() == Some("b2") {
            // the lab's two-blocks-per-SM entry: one V-tile buffer, M formed after the V loop
            // in registers (tools/emu, DELTA_DQVAR=b2: the d1 entry's bits); untimed
            return (format!("delta_dqk_wg_b2_k{kp}_{sfx}"), smem.dqk_wg_b2());
        }
        (format!("delta_dqk_wg{}_k{kp}_{sfx}", if d1 { "_d1" } else { "" }), smem.dqk_wg())
    } else {
        let nb = dqk_bufs(bf16, kp);
        (dqk_name(nb, kp, sfx), smem.dqk(nb))
    }
}

/// The K tiles (grid z) of `delta_dqk_*`.
pub(crate) fn dqk_kz(bf16: bool, kp: usize) -> usize {
    kp / dqk_kw(bf16, kp)
}

/// `delta_dqk_*`'s f32 tile M ([64][65]), which the `_wg_b2` entry keeps in registers instead.
const DQK_M: usize = 64 * 65;
/// `delta_dqk_*`'s other f32 words: G, rq, rk, the row sums of the dG terms, the warp sums, and
/// the row and column sums of dM * M.
const DQK_F32: usize = 3 * 64 + 128 + 16 + 128 + 256;

/// Dynamic shared memory of each chunk kernel (the carve-ups at the top of each kernel; the
/// kernels check them in the emulator, `tools/emu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeltaSmem {
    /// Storage element bytes.
    e: usize,
    /// Split planes.
    sp: usize,
    /// Padded K, V.
    kp: usize,
    vp: usize,
}

impl DeltaSmem {
    pub(crate) fn new(bf16: bool, kp: usize, vp: usize) -> Self {
        Self { e: if bf16 { 2 } else { 4 }, sp: planes(bf16), kp, vp }
    }
    fn lk(&self) -> usize {
        self.kp + PAD
    }
    pub(crate) fn wy(&self) -> usize {
        let (e, sp) = (self.e, self.sp);
        (64 * self.lk() + 64 * (self.vp + PAD) + sp * 64 * LDT) * e + (64 * 65 + 64 * 3) * 4
    }
    /// `delta_wyt_*`: [`Self::wy`]'s without V and T diag(d) (T leaves from A's f32 tile).
    pub(crate) fn wyt(&self) -> usize {
        64 * self.lk() * self.e + (64 * 65 + 64 * 3) * 4
    }
    pub(crate) fn h(&self, plan: HPlan) -> usize {
        let (e, sp, bv, ns) = (self.e, self.sp, plan.bv, plan.ns);
        let lds = bv + PAD;
        (ns * (sp + 1) * 64 * self.lk() + self.kp * lds + sp * 64 * lds) * e + ns * (64 * bv + 128) * 4
    }
    /// `delta_hr_*` on `plan` ([`h_res`]): per stage T (split), k, a BV-column V tile, and G, rk,
    /// beta; the state operand; U's and Y's split tiles.
    pub(crate) fn hr(&self, plan: HPlan) -> usize {
        let (e, sp, lds) = (self.e, self.sp, plan.bv + PAD);
        let stage = sp * 64 * LDT + 64 * self.lk() + 64 * lds;
        (plan.ns * stage + self.kp * lds + 2 * sp * 64 * lds) * e + plan.ns * 192 * 4
    }
    /// `delta_hro_*` ([`res_out`]): [`Self::hr`]'s with q in one buffer of its own, rq beside
    /// beta, and Y's hi plane in the V tile's place (only its lo plane a tile of its own).
    pub(crate) fn hro(&self, plan: HPlan) -> usize {
        let (e, sp, lds) = (self.e, self.sp, plan.bv + PAD);
        let stage = sp * 64 * LDT + 64 * self.lk() + 64 * lds;
        (plan.ns * stage + 64 * self.lk() + self.kp * lds + (2 * sp - 1) * 64 * lds) * e + plan.ns * 256 * 4
    }
    pub(crate) fn o(&self) -> usize {
        let (e, sp) = (self.e, self.sp);
        // sS [KP][LDT] reuses sK's space (KP LDT >= 64 LK)
        (64 * self.lk() + self.kp * LDT + 2 * sp * 64 * LDT) * e + 3 * 64 * 4
    }
    /// `delta_pm_*` ([`hro_pm`]): q, k and P's planes, G, rq, rk.
    pub(crate) fn pm(&self) -> usize {
        (2 * 64 * self.lk() + self.sp * 64 * LDT) * self.e + 3 * 64 * 4
    }
    pub(crate) fn dvl(&self) -> usize {
        let (e, sp) = (self.e, self.sp);
        (2 * 64 * self.lk() + sp * 64 * LDT + 64 * LDT) * e + 3 * 64 * 4
    }
    /// The residual state-gradient pass on `plan` ([`h_bwd_res`]): [`Self::h_bwd`]'s with T (sp
    /// planes of [64][LDT]) in each stage instead of w, beta beside G, rq, rk, and Y's split
    /// tile: P's where dvl is fused in (`plan.out`), else its own ([64][BV + PAD]).
    pub(crate) fn h_bwd_res(&self, plan: HPlan) -> usize {
        let (e, sp, bv, fd, ns) = (self.e, self.sp, plan.bv, usize::from(plan.out), plan.ns);
        let lds = bv + PAD;
        let stage = 2 * 64 * self.lk() + sp * 64 * LDT + 64 * lds;
        let p = if plan.out { sp * 64 * LDT + 64 * lds } else { sp * 64 * lds };
        (ns * stage + self.kp * lds + sp * 64 * lds + p) * e + ns * ((1 - fd) * 64 * bv + 4 * 64) * 4
    }
    pub(crate) fn h_bwd(&self, plan: HPlan) -> usize {
        let (e, sp, bv, fd, ns) = (self.e, self.sp, plan.bv, usize::from(plan.out), plan.ns);
        let lds = bv + PAD;
        // stages of q, k, w (sp planes), do; dS; -dU (sp planes); (P, sp planes; scale exp(G)
        // do); stages of dvl's tile (f32, unless fused), G, rq, rk
        (ns * ((2 + sp) * 64 * self.lk() + 64 * lds) + self.kp * lds + sp * 64 * lds + fd * (sp * 64 * LDT + 64 * lds)) * e
            + ns * ((1 - fd) * 64 * bv + 3 * 64) * 4
    }
    /// `delta_dqk_*` with `nb` V-tile buffers: dMG has a region of its own with one, the
    /// second buffer with two.
    pub(crate) fn dqk(&self, nb: usize) -> usize {
        let (e, sp) = (self.e, self.sp);
        let kw = dqk_kw(e == 2, self.kp);
        let vbuf = (1 + sp) * 64 * LDT + 2 * kw * LDT;
        (2 * 64 * self.lk() + nb * vbuf + (2 - nb) * sp * 64 * LDT) * e + (DQK_M + DQK_F32) * 4
    }
    /// A V-tile buffer of the swizzled, unpadded `delta_dqk_wg_*` entries: do, U (sp planes) and
    /// the K tile's rows of S and dS, 64-column rows (elements).
    fn dqk_wg_vbuf(&self) -> usize {
        (1 + self.sp) * 64 * 64 + 2 * dqk_kw(self.e == 2, self.kp) * 64
    }
    /// `delta_dqk_wg_*` (bf16): `dqk(2)`'s tiles swizzled and unpadded (64-column rows), and
    /// 1024 bytes to align them.
    pub(crate) fn dqk_wg(&self) -> usize {
        (2 * 64 * self.kp + 2 * self.dqk_wg_vbuf()) * self.e + (DQK_M + DQK_F32) * 4 + 1024
    }
    /// `delta_dqk_wg_b2_*` (bf16, one plane of dMG): [`Self::dqk_wg`]'s tiles with one V-tile
    /// buffer, dMG's plane of its own and no M ([64][65] f32).
    pub(crate) fn dqk_wg_b2(&self) -> usize {
        (2 * 64 * self.kp + self.dqk_wg_vbuf() + 64 * 64) * self.e + DQK_F32 * 4 + 1024
    }
    pub(crate) fn wy_bwd(&self) -> usize {
        let (e, sp) = (self.e, self.sp);
        // K, dw (sp planes); T (sp planes); one region for dw's tiles (dU's sp planes and KP
        // rows of S), V and dU tiles, and X, P (2 sp tiles); G, beta, rk, F's row and column sums
        let region = (2 * sp * 64).max(self.kp + sp * 64);
        ((1 + sp) * 64 * self.lk() + (sp * 64 + region) * LDT) * e + (3 * 64 + 256 + 64 + 128 + 256) * 4
    }
    /// The largest of them: what the device must allow per block.
    #[cfg(test)]
    pub(crate) fn max(&self) -> usize {
        let ns = h_stages(self.e == 2, self.kp);
        let h = |bv| self.h(HPlan { bv, ns, two: false, out: false });
        let hb = |bv| self.h_bwd(HPlan { bv, ns, two: false, out: false });
        let fused = h_two_ok(self.e == 2, self.kp);
        let (fd2, rv32) = (HPlan { bv: 64, ns: 2, two: false, out: true }, HPlan { bv: 32, ns: 2, two: false, out: false });
        let hb2 = if fused { self.h_bwd(fd2).max(self.h_bwd_res(fd2)).max(self.h_bwd_res(rv32)) } else { 0 };
        let dq = dqk_bufs(self.e == 2, self.kp);
        let hr = if fused {
            [self.hr(HR_V32), self.hr(HR_B2), self.hro(HR_V32), self.hro(HR_B2)].into_iter().max().unwrap_or(0)
        } else if self.e == 2 {
            self.hr(HR_S2).max(self.hro(HR_S2)).max(self.h_bwd_res(HBR_S1)).max(self.h_bwd_res(HBR_D1))
        } else {
            0
        };
        let dqwg = if dqk_wg_built(self.e == 2, self.kp) { self.dqk_wg() } else { 0 };
        [self.wy(), h(64), h(32), self.o(), self.dvl(), hb(64), hb(32), hb2, self.dqk(dq), dqwg, self.wy_bwd(), hr]
            .into_iter()
            .max()
            .unwrap_or(0)
    }
}

/// A chunk-parallel launch: grid (chunks, HV, `gz`), 256 threads, `smem` bytes.
pub(crate) fn chunk_cfg(nc: u32, hv: usize, gz: usize, smem: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (nc, hv as u32, gz as u32), block_dim: (CHUNK_THREADS, 1, 1), shared_mem_bytes: smem as u32 }
}

/// A sequential pass: grid (VP / BV, N * HV), 256 threads, `smem` bytes.
pub(crate) fn state_cfg(vp: usize, bv: usize, nhv: u32, smem: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((vp / bv) as u32, nhv, 1), block_dim: (CHUNK_THREADS, 1, 1), shared_mem_bytes: smem as u32 }
}

/// The recurrent kernels: grid (ceil(V / 32), N * HV), block (32, 8).
pub(crate) fn rec_cfg(v: usize, nhv: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (v.div_ceil(REC_BV) as u32, nhv, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

/// An elementwise launch over `n` items, `per_block` items per block of 256 threads.
pub(crate) fn flat_cfg(n: usize, per_block: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(per_block).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Whether the chunked backward writes dq and dk in place (no grouped value heads, no in-op L2
/// norm: the per-value-head gradients are the gradients) instead of through `delta_qk_bwd_*`.
pub fn direct_qk(p: &DeltaProblem) -> bool {
    p.hv() == p.h() && !p.l2_qk()
}

/// Elements of each workspace buffer of the delta launches for one problem (`DeltaWorkspace`):
/// 0 where no launch of the asked passes touches it, at least 1 where one does. `s` marks the
/// storage dtype (f32 or bf16), the rest is f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeltaWorkspaceLens {
    /// f32 `[rows, H]` each: the L2 row factors of q and k (with the in-op norm).
    pub rq: usize,
    /// As `rq`, for k.
    pub rk: usize,
    /// f32 `[rows, HV]`: beta, prepared.
    pub bt: usize,
    /// f32 `[rows, HV]`: the log decay, prepared (gated problems).
    pub gl: usize,
    /// `s`, planes x chunks x HV x 64 x KP: w.
    pub w: usize,
    /// f32 chunks x HV x 64 x VP: u.
    pub u: usize,
    /// `s`, planes x chunks x HV x 64 x 64: T = (I + A)^-1 (backward; a forward on a workspace
    /// without it does not store it).
    pub tm: usize,
    /// f32 chunks x HV x 64: the chunk-local cumsum G.
    pub g2: usize,
    /// `s`, chunks x HV x KP x VP: the state entering each chunk.
    pub hs: usize,
    /// `s`, planes x chunks x HV x 64 x VP: v_new.
    pub vn: usize,
    /// f32 chunks x HV x 64 x VP: P^T do (backward).
    pub dvl: usize,
    /// `s`, chunks x HV x KP x VP: the state gradient leaving each chunk (backward).
    pub dhs: usize,
    /// `s`, planes x chunks x HV x 64 x VP: dU (backward).
    pub du: usize,
    /// f32 KZ x chunks x HV x 64: the dG partials of `delta_dqk_*` (backward).
    pub dgk: usize,
    /// f32 NP x `[rows, HV, K]` each: dq and dk per value head (backward).
    pub dqk: usize,
    /// f32 NP x `[rows, HV]` each: dbeta and dg before the elementwise maps (backward).
    pub dbg: usize,
    /// f32: the recurrent backward's state checkpoints.
    pub ckpt: usize,
    /// f32: the recurrent backward's recomputed states.
    pub seg: usize,
    /// f32: with value sub-heads, the initial state (then its gradient) in their layout.
    pub sa: usize,
    /// f32: with value sub-heads, the final state (or its gradient) in their layout.
    pub sb: usize,
}

impl DeltaWorkspaceLens {
    /// The larger of each length (a workspace for both passes).
    pub fn max(self, o: Self) -> Self {
        Self {
            rq: self.rq.max(o.rq),
            rk: self.rk.max(o.rk),
            bt: self.bt.max(o.bt),
            gl: self.gl.max(o.gl),
            w: self.w.max(o.w),
            u: self.u.max(o.u),
            tm: self.tm.max(o.tm),
            g2: self.g2.max(o.g2),
            hs: self.hs.max(o.hs),
            vn: self.vn.max(o.vn),
            dvl: self.dvl.max(o.dvl),
            dhs: self.dhs.max(o.dhs),
            du: self.du.max(o.du),
            dgk: self.dgk.max(o.dgk),
            dqk: self.dqk.max(o.dqk),
            dbg: self.dbg.max(o.dbg),
            ckpt: self.ckpt.max(o.ckpt),
            seg: self.seg.max(o.seg),
            sa: self.sa.max(o.sa),
            sb: self.sb.max(o.sb),
        }
    }

    /// Whether every length is at least `need`'s.
    pub fn covers(&self, need: &Self) -> bool {
        self.max(*need) == *self
    }

    /// The forward's workspaces on `path` over `nc` chunks (none for the recurrent forward).
    pub fn forward(p: &DeltaProblem, nc: usize, bf16: bool, path: DeltaPath) -> Self {
        let DeltaPath::Chunk { kp } = path else { return Self::default() };
        let (hv, vp, sp) = (p.hv(), vpad(p.v()), planes(bf16));
        let l2 = if p.l2_qk() { (p.rows() * p.h()).max(1) } else { 0 };
        Self {
            rq: l2,
            rk: l2,
            bt: p.beta_len().max(1),
            gl: if p.gate() == DeltaGate::None { 0 } else { p.beta_len().max(1) },
            w: (sp * nc * hv * 64 * kp).max(1),
            u: (nc * hv * 64 * vp).max(1),
            // the residual forward ([`h_res`]) keeps T in the forward's workspace
            tm: if bf16 { (sp * nc * hv * 4096).max(1) } else { 0 },
            g2: (nc * hv * 64).max(1),
            hs: (nc * hv * kp * vp).max(1),
            vn: (sp * nc * hv * 64 * vp).max(1),
            ..Self::default()
        }
    }

    /// The backward's workspaces on `path` (the chunked backward also runs the forward's
    /// launches).
    pub fn backward(p: &DeltaProblem, nc: usize, bf16: bool, path: DeltaPath) -> Self {
        let (hv, sp) = (p.hv(), planes(bf16));
        let gated = p.gate() != DeltaGate::None;
        match path {
            DeltaPath::Chunk { kp } => {
                let vp = vpad(p.v());
                Self {
                    tm: (sp * nc * hv * 4096).max(1),
                    dvl: (nc * hv * 64 * vp).max(1),
                    dhs: (nc * hv * kp * vp).max(1),
                    du: (sp * nc * hv * 64 * vp).max(1),
                    dgk: (dqk_kz(bf16, kp) * nc * hv * 64).max(1),
                    dqk: if direct_qk(p) { 0 } else { (p.rows() * hv * p.k()).max(1) },
                    dbg: p.beta_len().max(1),
                    ..Self::forward(p, nc, bf16, path)
                }
            }
            DeltaPath::Recurrent => {
                let nv = p.v().div_ceil(REC_BV);
                let slot = p.k().div_ceil(8) * 256;
                Self {
                    bt: p.beta_len().max(1),
                    gl: if gated { p.beta_len().max(1) } else { 0 },
                    dqk: (nv * p.rows() * hv * p.k()).max(1),
                    dbg: (nv * p.beta_len()).max(1),
                    ckpt: ((p.rows() / REC_CK + p.n() + 1) * hv * nv * slot).max(1),
                    seg: (p.n() * hv * nv * REC_CK * slot).max(1),
                    ..Self::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::DeltaSpec;

    fn prob(k: usize, v: usize) -> DeltaProblem {
        DeltaProblem::new(DeltaSpec::new(1, 100, 1, k, v, DeltaGate::LogDecay)).expect("valid")
    }

    #[test]
    fn wide_value_heads_split_into_sub_heads_that_fit() {
        let chunk = DeltaAlgo::Chunked;
        let cases =
            [(256, 1024, true, 2), (60, 600, true, 2), (60, 320, false, 4), (64, 256, true, 1), (256, 512, true, 1), (64, 300, true, 1)];
        for (k, v, bf16, vs) in cases {
            let p = prob(k, v);
            assert_eq!(value_split(&p, bf16), vs, "K {k} V {v} bf16 {bf16}");
            let r = route(&p, bf16, chunk).expect("routes");
            assert_eq!(r.vs, vs);
            assert_eq!((r.kernel.hv(), r.kernel.v()), (p.hv() * vs, v / vs));
            assert_eq!((r.kernel.v_len(), r.kernel.state_len(), r.kernel.scale()), (p.v_len(), p.state_len(), p.scale()));
            assert!(matches!(r.path, DeltaPath::Chunk { .. }));
            assert_eq!(r.forward_lens(2, bf16).sa, if vs > 1 { p.state_len() } else { 0 });
        }
        // no divisor gives a width of at least DELTA_MIN_SPLIT_V: the recurrent kernels
        let odd = prob(64, 521);
        assert_eq!(value_split(&odd, true), 1);
        assert_eq!(route(&odd, true, chunk).expect("routes").path, DeltaPath::Recurrent);
        assert_eq!(route(&prob(64, 512), true, DeltaAlgo::Recurrent).expect("routes").vs, 1);
        // sub-heads that would pass the grid's limit: the recurrent kernels instead
        let mut many = DeltaSpec::new(1, 10_000, 16, 64, 1024, DeltaGate::LogDecay);
        many.cu_seqlens = Some((0..=2100).map(|i| i * 4).chain([10_000]).collect());
        let many = DeltaProblem::new(many).expect("valid");
        assert!(many.n() * many.hv() <= MAX_GRID_Y && many.n() * many.hv() * 2 > MAX_GRID_Y);
        assert_eq!(route(&many, true, chunk).expect("routes"), DeltaRoute { path: DeltaPath::Recurrent, kernel: many.clone(), vs: 1 });
    }

    #[test]
    fn paths_follow_the_table() {
        let chunk = DeltaAlgo::Chunked;
        assert_eq!(delta_path(&prob(60, 100), true, chunk), Ok(DeltaPath::Chunk { kp: 64 }));
        assert_eq!(delta_path(&prob(130, 256), true, chunk), Ok(DeltaPath::Chunk { kp: 192 }));
        assert_eq!(delta_path(&prob(256, 256), true, chunk), Ok(DeltaPath::Chunk { kp: 256 }));
        assert_eq!(delta_path(&prob(128, 128), false, chunk), Ok(DeltaPath::Chunk { kp: 128 }));
        assert_eq!(delta_path(&prob(129, 64), false, chunk), Ok(DeltaPath::Recurrent));
        assert_eq!(delta_path(&prob(256, 512), true, chunk), Ok(DeltaPath::Chunk { kp: 256 }));
        assert_eq!(delta_path(&prob(64, 513), true, chunk), Ok(DeltaPath::Recurrent));
        assert_eq!(delta_path(&prob(64, 64), true, DeltaAlgo::Recurrent), Ok(DeltaPath::Recurrent));
        assert!(delta_path(&prob(257, 64), true, DeltaAlgo::Recurrent).is_err());
    }

    #[test]
    fn every_chunk_launch_fits_shared_memory() {
        // 227 KB per block on sm_90
        for bf16 in [false, true] {
            let max = if bf16 { DELTA_CHUNK_MAX } else { DELTA_CHUNK_F32_MAX };
            for kp in (64..=max).step_by(64) {
                for vp in (64..=chunk_v_max(bf16)).step_by(64) {
                    let s = DeltaSmem::new(bf16, kp, vp);
                    assert!(s.max() <= 227 * 1024, "bf16 {bf16}, KP {kp}, VP {vp}: {} B", s.max());
                }
            }
        }
        let plan = |bwd, bf16, nhv| h_policy(bwd, bf16, 128, 128, nhv, 132);
        let (one, two) = (|bv| HPlan { bv, ns: 2, two: false, out: false }, HPlan { bv: 64, ns: 1, two: true, out: false });
        // the forward: two blocks per SM where 64-column blocks fill the SMs, else one
        assert_eq!(plan(false, true, 512), two);
        assert_eq!(plan(false, true, 66), two);
        assert_eq!(plan(false, true, 65), one(32));
        assert_eq!(plan(false, true, 32), one(32));
        assert_eq!(plan(false, false, 32), HPlan { bv: 64, ns: 1, two: false, out: false });
        assert_eq!(h_policy(false, true, 192, 128, 512, 132), HPlan { bv: 64, ns: 1, two: false, out: false });
        // the backward: one block per SM; dvl fused in at 64 columns where the entries exist,
        // unless 32-column tiles run in one wave
        let fused = HPlan { bv: 64, ns: 2, two: false, out: true };
        assert_eq!(plan(true, true, 512), fused);
        assert_eq!(plan(true, true, 128), fused);
        assert_eq!(plan(true, true, 64), fused);
        assert_eq!(plan(true, true, 34), fused);
        // (otherwise the forward's stages: two for bf16 up to KP = 128)
        assert_eq!(plan(true, true, 33), one(32));
        assert_eq!(plan(true, true, 32), one(32));
        assert_eq!(plan(true, false, 32), HPlan { bv: 64, ns: 1, two: false, out: false });
        // K wider than 128: dvl fused into the one-stage residual pass (64 columns), else 32
        // columns with dvl its own launch; f32 on the generic entry
        assert_eq!(h_policy(true, true, 192, 128, 512, 132), HBR_D1);
        assert_eq!(h_policy(true, true, 256, 256, 16, 132), HPlan { bv: 32, ns: 1, two: false, out: false });
        assert_eq!(h_policy(true, false, 128, 128, 512, 132), HPlan { bv: 64, ns: 1, two: false, out: false });
        assert_eq!(h_name(true, HPlan { bv: 32, ns: 1, two: false, out: false }, 128, "bf16"), "delta_h_bwd_v32_k128_bf16");
        assert_eq!(h_name(false, HPlan { bv: 32, ns: 1, two: true, out: false }, 64, "bf16"), "delta_h_v32b2_k64_bf16");
        assert_eq!(h_name(true, HPlan { bv: 64, ns: 2, two: false, out: true }, 128, "bf16"), "delta_h_bwd_dv2_k128_bf16");
        // the two-blocks-per-SM entries: shared memory for two blocks (228 KB per SM, 1 KB each reserved)
        for kp in [64, 128] {
            for bv in [32, 64] {
                let s = DeltaSmem::new(true, kp, 128).h(HPlan { bv, ns: 1, two: true, out: false });
                assert!(2 * (s + 1024) <= 228 * 1024, "KP {kp}, BV {bv}: {s} B");
            }
        }
        // the tiles of the widest dq/dk launch are columns of K
        assert_eq!((dqk_kw(true, 256), dqk_kz(true, 256)), (128, 2));
        assert_eq!((dqk_kw(false, 128), dqk_kz(false, 128)), (64, 2));
        assert_eq!((dqk_kw(true, 128), dqk_kz(true, 128)), (128, 1));
        // dq/dk: two V-tile buffers for bf16 up to KP = 128 (one block per SM), one elsewhere;
        // every entry the dispatch names is built
        assert_eq!(dqk_name(dqk_bufs(true, 128), 128, "bf16"), "delta_dqk_s2_k128_bf16");
        assert_eq!(dqk_name(dqk_bufs(true, 64), 64, "bf16"), "delta_dqk_s2_k64_bf16");
        assert_eq!(dqk_name(dqk_bufs(true, 256), 256, "bf16"), "delta_dqk_s2_k256_bf16");
        assert_eq!(dqk_name(1, 192, "bf16"), "delta_dqk_k192_bf16");
        assert_eq!(dqk_name(dqk_bufs(false, 128), 128, "f32"), "delta_dqk_k128_f32");
        for (bf16, sfx, max) in [(true, "bf16", DELTA_CHUNK_MAX), (false, "f32", DELTA_CHUNK_F32_MAX)] {
            for kp in (64..=max).step_by(64) {
                let name = dqk_name(dqk_bufs(bf16, kp), kp, sfx);
                assert!(crate::kernels::source_of(&name).is_some(), "{name}");
            }
        }
        // the warpgroup entries where they run (bf16, KP 64, 128 and 256, sm_90a), built
        for kp in [64, 128, 256] {
            for (bf16, arch, wg) in [(true, "sm_90a", true), (true, "sm_80", false), (false, "sm_90a", false)] {
                if !bf16 && kp > DELTA_CHUNK_F32_MAX {
                    continue;
                }
                let sfx = if bf16 { "bf16" } else { "f32" };
                let (name, _) = dqk_kernel(bf16, kp, sfx, arch, &DeltaSmem::new(bf16, kp, 128));
                assert_eq!(name.contains("_wg_"), wg, "{name}");
                assert!(crate::kernels::source_of(&name).is_some(), "{name}");
            }
        }
        assert!(!dqk_wg(true, 192, "sm_90a"));
        assert!(DeltaSmem::new(true, 256, 512).dqk_wg() <= 227 * 1024);
        // the wide residual forward, with the output fused in or not: two stages in one block's
        // shared memory
        for kp in [192, 256] {
            let sm = DeltaSmem::new(true, kp, 256);
            assert!(sm.hr(HR_S2).max(sm.hro(HR_S2)) <= 227 * 1024, "KP {kp}");
            assert_eq!(hr_name(HR_S2, kp, false), format!("delta_hr_s2_k{kp}_bf16"));
            assert_eq!(hr_name(HR_S2, kp, true), format!("delta_hro_s2_k{kp}_bf16"));
            for out in [false, true] {
                assert!(crate::kernels::source_of(&hr_name(HR_S2, kp, out)).is_some());
            }
            assert!(crate::kernels::source_of(&format!("delta_wyt_k{kp}_bf16")).is_some());
            // and its state-gradient pass (one stage; dvl fused in under the lab)
            for (plan, form) in [(HBR_S1, "rs1"), (HBR_D1, "rdv1")] {
                assert!(sm.h_bwd_res(plan) <= 227 * 1024, "KP {kp}: {} B", sm.h_bwd_res(plan));
                assert_eq!(hbr_name(plan, kp), format!("delta_h_bwd_{form}_k{kp}_bf16"));
                assert!(crate::kernels::source_of(&hbr_name(plan, kp)).is_some());
            }
            // P once per chunk ([`hro_pm`], [`hb_pm`])
            assert_eq!(hrop_name(HR_S2, kp), format!("delta_hrop_s2_k{kp}_bf16"));
            assert_eq!(hbrp_name(HBR_D1, kp), format!("delta_h_bwd_rdvp1_k{kp}_bf16"));
        }
        for kp in [64, 128, 192, 256] {
            let sm = DeltaSmem::new(true, kp, 512);
            assert!(2 * (sm.pm() + 1024) <= 228 * 1024, "KP {kp}: {} B", sm.pm());
            assert!(crate::kernels::source_of(&format!("delta_pm_k{kp}_bf16")).is_some());
            let plans: &[HPlan] = if kp <= 128 { &[HR_B2] } else { &[HR_S2] };
            for &plan in plans {
                assert!(crate::kernels::source_of(&hrop_name(plan, kp)).is_some(), "{}", hrop_name(plan, kp));
            }
            if kp > 128 {
                assert!(crate::kernels::source_of(&hbrp_name(HBR_D1, kp)).is_some());
            }
            assert!(crate::kernels::source_of(&wy_bwd_name(kp, "bf16")).is_some());
        }
        // the state-gradient pass's warpgroup dS update (lab hg=0 turns it off)
        assert_eq!(hbr_name(HBR_D2, 128), HB_WG_FROM);
        assert!(crate::kernels::source_of(HB_WG).is_some());
        assert!(DeltaSmem::new(true, 128, 128).h_bwd_res(HBR_D2) + 1024 <= 227 * 1024);
        // the one-plane entries (the WY backward's dAb, lab wm=0 turns it off; dq/dk's dMG, dm=0)
        // and the WY backward's warpgroup dw (ww=0)
        for name in [
            "delta_wy_bwd_m1_k128_bf16",
            "delta_wy_bwd_vb2_m1_k256_bf16",
            "delta_dqk_wg_d1_k128_bf16",
            "delta_dqk_wg_d1_k256_bf16",
            "delta_wy_bwd_wg_m1_k128_bf16",
        ] {
            assert!(crate::kernels::source_of(name).is_some(), "{name}");
        }
        for kp in [64, 128] {
            assert!(DeltaSmem::new(true, kp, 128).dqk(2) <= 227 * 1024, "KP {kp}");
            assert!(DeltaSmem::new(true, kp, 128).dqk_wg() <= 227 * 1024, "KP {kp}");
            // the residual state pass: one stage at two blocks per SM, or two stages at one
            let sm = DeltaSmem::new(true, kp, 128);
            for hr in [sm.hr(HR_B2), sm.hro(HR_B2)] {
                assert!(2 * (hr + 1024) <= 228 * 1024, "KP {kp}: {hr} B");
            }
            assert!(sm.hr(HR_V32).max(sm.hro(HR_V32)) <= 227 * 1024, "KP {kp}");
            for plan in [HR_B2, HR_V32] {
                for out in [false, true] {
                    assert!(crate::kernels::source_of(&hr_name(plan, kp, out)).is_some(), "{}", hr_name(plan, kp, out));
                }
            }
            // the WY backward (built for two blocks per SM at KP <= 128), dw's tiles included
            assert!(2 * (sm.wy_bwd() + 1024) <= 228 * 1024, "KP {kp}: {} B", sm.wy_bwd());
            // and its warpgroup dw (sm_90a), 1024 bytes more for the alignment
            if kp == 128 {
                assert!(2 * (sm.wy_bwd() + 1024 + 1024) <= 228 * 1024, "KP {kp}: {} B", sm.wy_bwd());
                // the lab's dq/dk at two blocks per SM, both precisions
                for s in [sm, DeltaSmem { sp: 1, ..sm }] {
                    assert!(2 * (s.dqk_wg_b2() + 1024) <= 228 * 1024, "KP {kp}: {} B", s.dqk_wg_b2());
                }
                assert!(crate::kernels::source_of("delta_dqk_wg_b2_k128_bf16").is_some());
            }
        }
    }

    #[test]
    fn workspaces_cover_both_passes() {
        let p = prob(60, 100);
        let path = delta_path(&p, true, DeltaAlgo::Chunked).expect("K <= 256");
        let (f, b) = (DeltaWorkspaceLens::forward(&p, 2, true, path), DeltaWorkspaceLens::backward(&p, 2, true, path));
        assert!(b.covers(&f));
        assert_eq!(f.w, 2 * 2 * 64 * 64);
        assert_eq!(DeltaWorkspaceLens::forward(&p, 2, true, DeltaPath::Recurrent), DeltaWorkspaceLens::default());
        let r = DeltaWorkspaceLens::backward(&p, 2, false, DeltaPath::Recurrent);
        assert!(r.ckpt > 0 && r.seg > 0 && r.w == 0 && r.dqk == 4 * 100 * 60);
        // no dvl buffer where the state-gradient pass computes dvl itself (64-column tiles on
        // enough SMs' worth of tiles), a full one where delta_dvl writes it
        if std::env::var("GLA_DELTA_LAB").is_err() {
            let route = |b| {
                route(&DeltaProblem::new(DeltaSpec::new(b, 2048, 16, 128, 128, DeltaGate::None)).unwrap(), true, DeltaAlgo::Chunked)
                    .unwrap()
            };
            let (big, small) = (route(32), route(1));
            assert_eq!(big.backward_lens(1024, true, 132).dvl, 0);
            assert_eq!(small.backward_lens(32, true, 132).dvl, 32 * 16 * 64 * 128);
            assert!(big.backward_lens(1024, true, 132).covers(&big.forward_lens(1024, true)));
        }
    }

    #[test]
    fn tail_heads_fill_the_partial_wave() {
        if std::env::var("GLA_DELTA_LAB").is_ok() {
            return;
        }
        // (VP, NHV) on 132 SMs -> heads on 32 columns
        for (vp, nhv, want) in [
            (128, 96, 30), // 192 tiles: 60 over one wave, as 30 heads' 120 half-width tiles
            (128, 67, 1),  // 134 tiles: 2 over
            (128, 66, 0),  // one whole wave
            (128, 64, 0),  // under one wave
            (128, 512, 0), // 1024 tiles: 100 over, 200 half-width tiles would not fit one wave
            (128, 99, 33), // 198 tiles: 66 over, 132 half-width tiles
            (128, 100, 0), // 200 tiles: 68 over
            (64, 150, 18), // one tile per head: 18 over
            (64, 0, 0),
        ] {
            assert_eq!(hb_tail(HBR_D2, vp, nhv, 132), want, "VP {vp}, NHV {nhv}");
            let m = hb_tail(HBR_D2, vp, nhv, 132);
            if m > 0 {
                // the rest fill whole waves, the tail's half-width blocks one
                assert_eq!((vp / 64) * (nhv - m) % 132, 0, "VP {vp}, NHV {nhv}");
                assert!((vp / 32) * m <= 132);
            }
        }
        // only the fused residual pass has the half-width entry
        for plan in [HBR_S1, HBR_D1, HR_V32, HPlan { bv: 64, ns: 2, two: false, out: false }] {
            assert_eq!(hb_tail(plan, 128, 96, 132), 0);
        }
        // the forward's tail: the same heads, on HR_V32 at KP <= 128 only
        assert_eq!(hr_tail(HR_V32, 128, 128, 96, 132), 30);
        assert_eq!(hr_tail(HR_V32, 64, 128, 96, 132), 30);
        assert_eq!(hr_tail(HR_V32, 256, 256, 96, 132), 0);
        assert_eq!(hr_tail(HR_B2, 128, 128, 96, 132), 0);
        assert_eq!(hr_name(HR_S2, 128, false), "delta_hr_s2_k128_bf16");
        assert!(crate::kernels::source_of(&hr_name(HR_S2, 64, false)).is_some());
    }

    #[test]
    fn residual_forward_where_the_fused_backward_runs() {
        // T in the forward's workspace where the residual entries exist (bf16, KP <= 128)
        let p = prob(60, 100);
        let path = delta_path(&p, true, DeltaAlgo::Chunked).expect("K <= 256");
        assert_eq!(DeltaWorkspaceLens::forward(&p, 2, true, path).tm, 2 * 2 * 4096);
        assert_eq!(DeltaWorkspaceLens::forward(&p, 2, false, delta_path(&p, false, DeltaAlgo::Chunked).unwrap()).tm, 0);
        if std::env::var("GLA_DELTA_LAB").is_err() {
            // b2 where 64-column blocks fill the SMs, else v32; never f32 storage or KP > 128
            let res = |tiles, keep, out| h_res(true, 128, tiles, 132, keep, out).map(|p| (p.bv, p.ns, p.two));
            for (keep, out) in [(false, true), (true, true), (true, false)] {
                assert_eq!(res(264, keep, out), Some((64, 1, true)));
                assert_eq!(res(131, keep, out), Some((32, 2, false)));
                assert_eq!(res(1, keep, out), Some((32, 2, false)));
            }
            // one partial wave of the two-blocks-per-SM plan: the fused 64-column pass for a
            // forward only; where a backward reads the states, from three quarters of the wave
            // for a forward (its output fused in), 32 columns for a recomputation
            for out in [false, true] {
                assert_eq!(res(132, false, out), Some((64, 1, true)));
                assert_eq!(res(263, false, out), Some((64, 1, true)));
            }
            assert_eq!(res(132, true, true), Some((32, 2, false)));
            assert_eq!(res(192, true, true), Some((32, 2, false)));
            assert_eq!(res(197, true, true), Some((32, 2, false)));
            assert_eq!(res(198, true, true), Some((64, 1, true)));
            assert_eq!(res(263, true, true), Some((64, 1, true)));
            assert_eq!(res(132, true, false), Some((32, 2, false)));
            assert_eq!(res(263, true, false), Some((32, 2, false)));
            // the output fused into HR_B2 always, into HR_S2 for a forward only, never HR_V32
            assert!(res_out(HR_B2, true) && res_out(HR_B2, false));
            assert!(!res_out(HR_V32, true) && !res_out(HR_V32, false));
            assert_eq!(hr_name(HR_B2, 128, false), "delta_hr_b2_k128_bf16");
            assert_eq!(hr_name(HR_B2, 128, true), "delta_hro_b2_k128_bf16");
            assert!(h_res(false, 128, 1024, 132, true, true).is_none());
            // K wider than 128: the two-stage 64-column pass whatever the tiles (bf16 only); a
            // training workspace where the state-gradient pass runs HBR_S1 (64-column tiles, at
            // least two per SM), else the WY form
            for kp in [192, 256] {
                for tiles in [1, 1024] {
                    assert_eq!(h_res(true, kp, tiles, 132, true, true), Some(HR_S2));
                }
                assert!(h_res(false, kp, 1024, 132, true, true).is_none());
                for (nhv, bwd_res) in [(16, false), (65, false), (66, true), (256, true)] {
                    assert!(res_ok(true, kp, 256, nhv, 132, true));
                    assert_eq!(res_ok(true, kp, 256, nhv, 132, false), bwd_res, "KP {kp}, NHV {nhv}");
                    assert_eq!(h_plan(true, true, kp, 256, nhv, 132) == HBR_D1, bwd_res);
                }
                assert!(!res_ok(false, kp, 256, 256, 132, false));
                assert!(res_out(HR_S2, true) && !res_out(HR_S2, false));
                // HBR_D1 forms dvl itself: the backward's workspace has no dvl buffer then
                for (b, has_dvl) in [(1, true), (64, false)] {
                    let spec = DeltaSpec::new(b, 2048, 32, kp, 256, DeltaGate::LogDecay);
                    let r = route(&DeltaProblem::new(spec).expect("valid"), true, DeltaAlgo::Chunked).expect("routes");
                    assert_eq!(r.backward_lens(32, true, 132).dvl > 0, has_dvl, "KP {kp}, B {b}");
                }
            }
            assert_eq!(hr_name(HR_S2, 256, true), "delta_hro_s2_k256_bf16");
            assert_eq!(hr_name(HR_V32, 64, false), "delta_hr_v32_k64_bf16");
            // a forward-only workspace takes it everywhere; a training one where the backward's
            // plan has a residual form: the fused pass (2 x 64-column tiles > SMs), or the
            // 32-column one where its tiles fill half the SMs (2 x 4 x NHV >= 132 at V = 128)
            for kp in [64, 128] {
                for nhv in [1, 16, 17, 33, 34, 512] {
                    let plan = h_plan(true, true, kp, 128, nhv, 132);
                    assert!(res_ok(true, kp, 128, nhv, 132, true));
                    assert_eq!(res_ok(true, kp, 128, nhv, 132, false), nhv >= 17, "KP {kp}, NHV {nhv}");
                    assert_eq!(h_bwd_res(true, kp, plan, 128, nhv, 132), nhv >= 17, "KP {kp}, NHV {nhv}");
                    let want = if 4 * nhv > 132 { "rdv2" } else { "rv32" };
                    assert_eq!(hbr_name(plan, kp), format!("delta_h_bwd_{want}_k{kp}_bf16"));
                }
                assert!(!h_bwd_res(true, kp, HPlan { bv: 64, ns: 2, two: false, out: false }, 128, 512, 132));
                assert!(h_bwd_res(true, kp, HPlan { bv: 32, ns: 2, two: false, out: false }, 128, 17, 132));
                assert!(!h_bwd_res(true, 192, HPlan { bv: 32, ns: 1, two: false, out: false }, 128, 512, 132));
                let sm = DeltaSmem::new(true, kp, 128);
                let tail = HPlan { bv: 32, ..HBR_D2 };
                assert_eq!(hbr_name(tail, kp), format!("delta_h_bwd_rdv2_v32_k{kp}_bf16"));
                for plan in [HBR_D2, tail, HPlan { bv: 32, ns: 2, two: false, out: false }] {
                    assert!(sm.h_bwd_res(plan) <= 227 * 1024, "KP {kp}: {} B", sm.h_bwd_res(plan));
                    assert!(crate::kernels::source_of(&hbr_name(plan, kp)).is_some());
                }
            }
        }
    }
}
