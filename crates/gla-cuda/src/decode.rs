//! The decoder's device parts: [`GpuState`] (one sequence's recurrent states and conv caches),
//! the batch copies of the states around a prefill forward ([`GpuDecoding::prefill_step`]) and the
//! decode step through a device table of the states, captured as a CUDA graph
//! ([`GpuDecoding::decode_step`]). The model's own work (its forward over the ids, the lm_head)
//! is the caller's: a closure for a prefill step, a [`DecodeStep`] for a decode step
//! (gla-model's `gpu::GpuDecoder` supplies both).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};

use crate::backend::{ptr, unsupported, Gpu, InferCtx, InferIo, KvRef};
use crate::error::{Error, Result};
use crate::runtime::Cuda;
use crate::weights::GpuWeights;

/// One sequence's generation state on the GPU (what gla-model's `state::State` is on the CPU):
/// per layer the recurrent state f32 (GLA's `[Hop, K, Vop]`, the delta rule's `[HV, K, V]`) and
/// the q, k, v conv caches `[C, W]` f32, whose size depends only on the config; an attention
/// layer's KV cache instead (`KvCache`: the window's slots, fixed, for a sliding window; the
/// tokens seen, growing, otherwise).
pub struct GpuState {
    rec: Vec<CudaSlice<f32>>,
    conv: Vec<Option<[CudaSlice<f32>; 3]>>,
    kv: Vec<Option<KvCache>>,
    seen: usize,
}

/// One attention layer's KV cache of one sequence: k and v `[S, H_KV, Dh]` bf16, token p at slot
/// `p % S` (gla-core's `AttnCacheLayout`).
struct KvCache {
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    slots: usize,
    /// `H_KV * Dh`: elements of one slot.
    row: usize,
    /// The window (the slots are fixed) or `None` (the slots grow with the tokens seen).
    window: Option<usize>,
}

impl KvCache {
    fn kv_ref(&self, cuda: &Cuda) -> KvRef {
        KvRef { k: ptr(cuda, &self.k), v: ptr(cuda, &self.v), slots: self.slots }
    }
}

/// Slots a growing KV cache starts with (it then doubles). Small, so that the model check's
/// generation (about 150 tokens) grows a cache twice and reads it back after each move.
const KV_MIN_SLOTS: usize = 64;

impl GpuState {
    /// Tokens fed so far.
    pub fn seen_tokens(&self) -> usize {
        self.seen
    }

    /// Device bytes this state holds now (the KV caches grow with the tokens seen).
    pub fn bytes(&self) -> usize {
        let f32s: usize = self.rec.iter().map(CudaSlice::len).sum::<usize>()
            + self.conv.iter().flatten().flat_map(|c| c.iter().map(CudaSlice::len)).sum::<usize>();
        let bf16s: usize = self.kv.iter().flatten().map(|c| c.k.len() + c.v.len()).sum();
        4 * f32s + 2 * bf16s
    }

    /// Grows every growing KV cache to hold `tokens` tokens (doubling, at least
    /// [`KV_MIN_SLOTS`]), keeping what it holds; true when a cache moved.
    fn reserve(&mut self, cuda: &Cuda, tokens: usize) -> Result<bool> {
        let mut moved = false;
        for c in self.kv.iter_mut().flatten() {
            if c.window.is_some() || c.slots >= tokens {
                continue;
            }
            let slots = tokens.next_power_of_two().max(KV_MIN_SLOTS);
            let (k, v) = (cuda.alloc_zeros::<u16>(slots * c.row, "kv cache")?, cuda.alloc_zeros::<u16>(slots * c.row, "kv cache")?);
            // positions 0 .. seen sit at slots 0 .. seen in both (no window)
            let held = self.seen.min(c.slots) * c.row;
            copy_u16(cuda, &k, &c.k, held)?;
            copy_u16(cuda, &v, &c.v, held)?;
            *c = KvCache { k, v, slots, ..*c };
            moved = true;
        }
        Ok(moved)
    }
}

/// Device-to-device copy of the first `len` u16 of `src` into `dst`.
fn copy_u16(cuda: &Cuda, dst: &CudaSlice<u16>, src: &CudaSlice<u16>, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: both buffers hold at least `len` elements (callers) and are distinct; stream-ordered
    unsafe { cudarc::driver::result::memcpy_dtod_async(ptr(cuda, dst), ptr(cuda, src), 2 * len, cuda.stream().cu_stream()) }
        .map_err(Error::driver("copy kv cache"))
}

/// Device-to-device copy of `len` f32 from `src[src_off..]` to `dst[dst_off..]`.
fn copy_f32(cuda: &Cuda, dst: &CudaSlice<f32>, dst_off: usize, src: &CudaSlice<f32>, src_off: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (d, s) = (ptr(cuda, dst) + 4 * dst_off as u64, ptr(cuda, src) + 4 * src_off as u64);
    // SAFETY: both ranges lie inside live buffers of this device (callers size them from the
    // model dims) and do not overlap (different buffers); the copy is ordered on the stream
    unsafe { cudarc::driver::result::memcpy_dtod_async(d, s, 4 * len, cuda.stream().cu_stream()) }.map_err(Error::driver("copy state"))
}

/// The model's decode step on the device, from the ids to the logits of every sequence
/// (implemented by the model, gla-model's `gpu` module): what [`GpuDecoding::decode_step`] runs
/// eagerly on a batch size's first step and captures as a CUDA graph from its second.
pub trait DecodeStep {
    /// The activations of a `[B, 1]` step (allocated once per batch size, kept at fixed
    /// addresses).
    type Acts;
    /// Activations for `b` sequences of one token.
    ///
    /// # Errors
    /// Allocation failures.
    fn alloc(&self, gpu: &Gpu, b: usize) -> Result<Self::Acts>;
    /// Copies the step's token ids into `acts` (checked by the caller).
    ///
    /// # Errors
    /// [`Error::Driver`].
    fn upload_ids(&self, gpu: &Gpu, acts: &mut Self::Acts, ids: &[u32]) -> Result<()>;
    /// The step's device work, from the ids in `acts` to the logits of every row: nothing but
    /// kernel launches and GEMMs on the stream (it is captured in a CUDA graph). Each sequence's
    /// state is read and updated in place through `table` ([`DecodeTable::io`]).
    ///
    /// # Safety
    /// As [`crate::ops::gla_decode`]: `table` holds `[L][4][B]` addresses of live, distinct
    /// state buffers of the sizes the states were made with (0 for absent conv caches).
    ///
    /// # Errors
    /// The backend's.
    unsafe fn body(&self, gpu: &Gpu, acts: &mut Self::Acts, table: DecodeTable<'_>) -> Result<()>;
    /// Downloads the logits of the step, `[B, vocab]` f32.
    ///
    /// # Errors
    /// [`Error::Driver`].
    fn logits(&self, weights: &GpuWeights, acts: &Self::Acts) -> Result<Vec<f32>>;
}

/// The state table of a decode step of B sequences ([`DecodeStep::body`]): `[L][4][B]` entries
/// on the device at `addr` and their host copy, and the device address of the `[2, B]` i32
/// positions (tokens seen before the step, then including it).
#[derive(Debug, Clone, Copy)]
pub struct DecodeTable<'a> {
    addr: u64,
    host: &'a [u64],
    pos: u64,
}

impl<'a> DecodeTable<'a> {
    /// The backend's inference io of a decode step of `b` sequences over this table.
    pub fn io(&self, b: usize) -> InferIo<'a> {
        InferIo::Table { addr: self.addr, b, host: self.host, pos: self.pos }
    }
}

/// Generation's device side on inference-only weights: the states, the batch copies of a
/// prefill step and the decode step's state table and CUDA graph by batch size; `A` is the
/// decode step's activations ([`DecodeStep::Acts`]).
pub struct GpuDecoding<A> {
    weights: GpuWeights,
    /// Decode steps run as a replay of a captured CUDA graph (the check counts them).
    graph_steps: AtomicU64,
    /// Decode steps by batch size (a few: a batch whose sequences finish at different times
    /// shrinks step by step).
    decode: Mutex<HashMap<usize, DecodeSlot<A>>>,
}

/// Bytes of the batch copies of the states one grouped prefill forward may hold (for fla's
/// 340M config, 12 MiB of state per sequence: groups of up to 21 prompts).
pub const PREFILL_STATE_BYTES: usize = 512 << 20;

/// Batch sizes whose decode step (buffers and graph) is kept; more are dropped all at once.
const DECODE_SLOTS: usize = 4;

/// Everything one decode step of B sequences touches, at fixed device addresses: its
/// activations, the state table ([`InferIo::Table`]) and, from the second step on, the step
/// captured as a CUDA graph (one launch instead of ~20 per layer: at batch 1 the step is
/// bound by launch overhead, not by the GPU).
struct DecodeSlot<A> {
    acts: A,
    table: CudaSlice<u64>,
    /// `[2, B]` i32: each sequence's tokens seen before the step, then including it.
    pos: CudaSlice<i32>,
    /// The table's contents on the device (re-uploaded only when the states change).
    uploaded: Vec<u64>,
    graph: Option<CudaGraph>,
    /// Steps run; the first runs eagerly (it loads the kernels and sizes cuBLAS's workspace).
    steps: u64,
    /// A capture failed: this slot runs eagerly from now on.
    no_graph: bool,
}

impl<A> GpuDecoding<A> {
    /// Generation over `weights` (made by [`GpuWeights::new_inference`]: bf16 GEMM matrices,
    /// no gradients).
    pub fn new(weights: GpuWeights) -> Self {
        Self { weights, graph_steps: AtomicU64::new(0), decode: Mutex::new(HashMap::new()) }
    }

    /// The device weights.
    pub fn weights(&self) -> &GpuWeights {
        &self.weights
    }

    /// Elements of layer `l`'s part of a state: the recurrent state and the q, k, v conv caches.
    fn state_sizes(&self, l: usize) -> (usize, [usize; 3]) {
        self.weights.backend().layer_state_sizes(l)
    }

    fn layers(&self) -> usize {
        self.weights.backend().dims.layers
    }

    /// Decode steps so far that replayed a captured CUDA graph (the others ran eagerly: the
    /// first step of each batch size, and every step when capture is off or was refused).
    pub fn graph_steps(&self) -> u64 {
        self.graph_steps.load(Ordering::Relaxed)
    }

    /// Bytes of a new [`GpuState`]: the recurrent states and conv caches (f32) and the
    /// attention layers' KV caches (bf16: a window's ring buffer, or a growing cache's first
    /// `KV_MIN_SLOTS` slots, which then grows by `4 H_KV Dh` bytes a token; [`GpuState::bytes`]
    /// is a state's size now).
    pub fn state_bytes(&self) -> usize {
        let gpu = self.weights.backend();
        (0..self.layers())
            .map(|l| {
                let (rec, conv) = self.state_sizes(l);
                let kv = gpu.layer_attn_dims(l).map_or(0, |dm| 2 * 2 * dm.kv_dim() * dm.window.unwrap_or(KV_MIN_SLOTS));
                4 * (rec + conv.iter().sum::<usize>()) + kv
            })
            .sum()
    }

    /// A zero state (an empty context).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn new_state(&self) -> Result<GpuState> {
        let gpu = self.weights.backend();
        let z = |len: usize| gpu.cuda.alloc_zeros::<f32>(len.max(1), "generation state");
        let z16 = |len: usize| gpu.cuda.alloc_zeros::<u16>(len.max(1), "kv cache");
        let (mut rec, mut convs, mut kv) = (Vec::new(), Vec::new(), Vec::new());
        for l in 0..self.layers() {
            let (r, conv) = self.state_sizes(l);
            rec.push(z(r)?);
            convs.push(if gpu.layer_conv(l) > 0 { Some([z(conv[0])?, z(conv[1])?, z(conv[2])?]) } else { None });
            kv.push(match gpu.layer_attn_dims(l) {
                None => None,
                Some(dm) => {
                    // a window's ring buffer is all it ever holds; a growing cache starts small
                    let (row, slots) = (dm.kv_dim(), dm.window.unwrap_or(KV_MIN_SLOTS));
                    Some(KvCache { k: z16(slots * row)?, v: z16(slots * row)?, slots, row, window: dm.window })
                }
            });
        }
        Ok(GpuState { rec, conv: convs, kv, seen: 0 })
    }

    /// Refuses a state made for another model (it would be read and written out of bounds).
    fn check_states(&self, states: &[&mut GpuState]) -> Result<()> {
        let layers = self.layers();
        for (i, s) in states.iter().enumerate() {
            let gpu = self.weights.backend();
            let fits = s.rec.len() == layers
                && s.conv.len() == layers
                && s.kv.len() == layers
                && (0..layers).all(|l| {
                    let (rec, conv) = self.state_sizes(l);
                    s.rec[l].len() == rec.max(1)
                        && match &s.conv[l] {
                            None => gpu.layer_conv(l) == 0,
                            Some(cs) => cs.iter().zip(conv).all(|(x, n)| x.len() == n.max(1)),
                        }
                        && match (&s.kv[l], gpu.layer_attn_dims(l)) {
                            (None, None) => true,
                            (Some(c), Some(dm)) => c.row == dm.kv_dim() && c.window == dm.window && c.k.len() >= c.slots * c.row,
                            _ => false,
                        }
                });
            if !fits {
                return Err(unsupported(format!("state {i} was not made by this model's decoder (layers, heads or dims differ)")));
            }
        }
        Ok(())
    }

    /// A prefill step of B sequences of T tokens (`shape`) from their states: gathers the states
    /// into batch buffers, runs `run` (the model's forward from the states in the context to the
    /// logits of each sequence's last position, `[B, vocab]` on the host), scatters the states
    /// back; returns each sequence's logits. Attention layers extend each sequence's KV cache in
    /// place (grown first to hold the T tokens): after a device error a state is to be dropped.
    ///
    /// # Errors
    /// States of another model, a wrong number of ids or states ([`Error::Op`]); `run`'s;
    /// device errors.
    pub fn prefill_step(
        &self,
        shape: (usize, usize),
        ids: &[u32],
        states: &mut [&mut GpuState],
        run: impl FnOnce(&mut InferCtx) -> Result<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let (b, t) = shape;
        let c = &*self.weights.backend().cuda;
        let layers = self.layers();
        self.check_states(states)?;
        if ids.len() != b * t || states.len() != b {
            return Err(unsupported(format!("{} ids and {} states for a [{b}, {t}] step", ids.len(), states.len())));
        }
        let z = |len: usize| c.alloc_zeros::<f32>(len.max(1), "batch state");
        for s in states.iter_mut() {
            s.reserve(c, s.seen + t)?;
        }
        let seen: Vec<usize> = states.iter().map(|s| s.seen).collect();
        let pos: Vec<i32> = seen.iter().map(|&n| i32::try_from(n).unwrap_or(i32::MAX)).collect();
        let kv = (0..layers).map(|l| states.iter().filter_map(|s| s.kv[l].as_ref().map(|kc| kc.kv_ref(c))).collect()).collect();
        let mut ctx = InferCtx {
            h0: Vec::with_capacity(layers),
            ht: Vec::with_capacity(layers),
            conv: Vec::with_capacity(layers),
            kv,
            seen,
            pos: c.upload(&pos, "prefill positions")?,
        };
        for l in 0..layers {
            let (rec, conv) = self.state_sizes(l);
            let (h0, ht) = (z(b * rec)?, z(b * rec)?);
            for (i, s) in states.iter().enumerate() {
                copy_f32(c, &h0, i * rec, &s.rec[l], 0, rec)?;
            }
            ctx.h0.push(h0);
            ctx.ht.push(ht);
            ctx.conv.push(match states.first().and_then(|s| s.conv[l].as_ref()) {
                None => None,
                Some(_) => {
                    let bufs = [z(b * conv[0])?, z(b * conv[1])?, z(b * conv[2])?];
                    for (i, s) in states.iter().enumerate() {
                        if let Some(cs) = &s.conv[l] {
                            for j in 0..3 {
                                copy_f32(c, &bufs[j], i * conv[j], &cs[j], 0, conv[j])?;
                            }
                        }
                    }
                    Some(bufs)
                }
            });
        }
        let logits = run(&mut ctx)?;
        for (i, s) in states.iter_mut().enumerate() {
            for l in 0..layers {
                let (rec, conv) = self.state_sizes(l);
                copy_f32(c, &s.rec[l], 0, &ctx.ht[l], i * rec, rec)?;
                if let (Some(cs), Some(bufs)) = (&s.conv[l], &ctx.conv[l]) {
                    for j in 0..3 {
                        copy_f32(c, &cs[j], 0, &bufs[j], i * conv[j], conv[j])?;
                    }
                }
            }
            s.seen += t;
        }
        let vocab = self.weights.backend().dims.vocab;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// One token for each sequence, all in one step of `model` (ids checked by the caller);
    /// returns each one's logits. The first step of a batch size runs eagerly, the next ones
    /// replay the step captured as a CUDA graph (unless graphs are off or were refused).
    ///
    /// # Errors
    /// States of another model, a wrong number of states ([`Error::Op`]); device errors.
    pub fn decode_step<S: DecodeStep<Acts = A>>(&self, model: &S, ids: &[u32], states: &mut [&mut GpuState]) -> Result<Vec<Vec<f32>>> {
        if ids.len() != states.len() {
            return Err(unsupported(format!("{} tokens for {} states", ids.len(), states.len())));
        }
        self.check_states(states)?;
        let vocab = self.weights.backend().dims.vocab;
        let b = ids.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let gpu = self.weights.backend();
        let c = &*gpu.cuda;
        let st = c.stream();
        for s in states.iter_mut() {
            s.reserve(c, s.seen + 1)?;
        }
        let mut slots = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&b) {
            if slots.len() >= DECODE_SLOTS {
                slots.clear();
            }
            let slot = DecodeSlot {
                acts: model.alloc(gpu, b)?,
                table: c.alloc_zeros::<u64>(self.weights.backend().dims.layers * 4 * b, "state table")?,
                pos: c.alloc_zeros::<i32>(2 * b, "decode positions")?,
                uploaded: Vec::new(),
                graph: None,
                steps: 0,
                no_graph: false,
            };
            slots.insert(b, slot);
        }
        let Some(slot) = slots.get_mut(&b) else { unreachable!("inserted above") };
        // the table: [L][4][B] addresses (recurrent state, q/k/v conv caches; for an attention
        // layer its k cache, v cache and slots)
        let mut table = vec![0u64; self.layers() * 4 * b];
        for l in 0..self.layers() {
            for (i, s) in states.iter().enumerate() {
                if let Some(kc) = &s.kv[l] {
                    let r = kc.kv_ref(c);
                    for (j, x) in [r.k, r.v, r.slots as u64].into_iter().enumerate() {
                        table[(l * 4 + j) * b + i] = x;
                    }
                    continue;
                }
                table[l * 4 * b + i] = ptr(c, &s.rec[l]);
                if let Some(cs) = &s.conv[l] {
                    for j in 0..3 {
                        table[(l * 4 + 1 + j) * b + i] = ptr(c, &cs[j]);
                    }
                }
            }
        }
        if table != slot.uploaded {
            st.memcpy_htod(&table, &mut slot.table).map_err(Error::driver("upload state table"))?;
            slot.uploaded = table;
            // attention layers launch per sequence on its cache (addresses and splits are the
            // launches' own): a graph of other caches is stale
            if (0..self.layers()).any(|l| gpu.layer_attn_dims(l).is_some()) {
                slot.graph = None;
            }
        }
        let pos: Vec<i32> = (0..2 * b).map(|j| i32::try_from(states[j % b].seen + j / b).unwrap_or(i32::MAX)).collect();
        st.memcpy_htod(&pos, &mut slot.pos).map_err(Error::driver("upload decode positions"))?;
        model.upload_ids(gpu, &mut slot.acts, ids)?;
        let tab = DecodeTable { addr: ptr(c, &slot.table), host: &slot.uploaded, pos: ptr(c, &slot.pos) };
        if slot.graph.is_none() && slot.steps > 0 && !slot.no_graph && c.options().graphs {
            slot.graph = self.capture(model, &mut slot.acts, tab)?;
            slot.no_graph = slot.graph.is_none();
        }
        match &slot.graph {
            Some(g) => {
                g.launch().map_err(Error::driver("launch the decode graph"))?;
                self.graph_steps.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the table was just built from these states' own buffers, checked above to
            // have this model's sizes; they are distinct (each &mut GpuState owns its buffers)
            // and stay borrowed until the logits are read back below (a synchronising copy)
            None => unsafe { model.body(gpu, &mut slot.acts, tab)? },
        }
        slot.steps += 1;
        let logits = model.logits(&self.weights, &slot.acts)?;
        for s in states.iter_mut() {
            s.seen += 1;
        }
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Captures the decode step of `acts` into a CUDA graph; `None` (the step then runs
    /// eagerly, as correct, only slower) when the driver refuses the capture.
    fn capture<S: DecodeStep<Acts = A>>(&self, model: &S, acts: &mut A, table: DecodeTable<'_>) -> Result<Option<CudaGraph>> {
        let gpu = self.weights.backend();
        let st = gpu.cuda.stream();
        // relaxed: cuBLAS may make allocation calls on first use of a shape, which a stricter
        // mode would turn into capture failures
        if st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).is_err() {
            return Ok(None);
        }
        // SAFETY: as in decode_batch (the table holds the live states of this step); during the
        // capture nothing runs, the graph replays these launches at the next launch
        let body = unsafe { model.body(gpu, acts, table) };
        let graph = st.end_capture(CUgraphInstantiate_flags(0));
        match (body, graph) {
            (Ok(()), Ok(Some(g))) => Ok(Some(g)),
            // a launch error inside the capture is the body's own error: report it
            (Err(e), _) if !matches!(e, Error::Launch { .. } | Error::Blas { .. } | Error::Driver { .. }) => Err(e),
            _ => Ok(None),
        }
    }
}
