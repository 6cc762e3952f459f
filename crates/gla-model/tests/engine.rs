//! The training [`Engine`] seam (what `gla train --device cuda` plugs the GPU into): the one
//! engine ([`DeviceEngine`]) over test devices that run the CPU model with their own copies, as
//! a GPU does: the trainer must give the same losses, weights, checkpoints and resume as the
//! CPU device, stop on a diverged gradient without touching the weights, and two data-parallel
//! ranks must follow the one-process run.

use std::path::PathBuf;

use gla_model::cpu::CpuBuf;
use gla_model::model::{self, Acts};
use gla_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use gla_model::{DeviceEngine, Engine, Error, GlaConfig, GlaModel, LossOut, Mqar, Result, TrainConfig, TrainDevice, Trainer};

/// The CPU model as a device with its own copies of everything (as a GPU has).
struct CpuBehindTrait {
    model: GlaModel,
    opt: AdamW,
    grads: Vec<f32>,
    poison_grads: bool,
}

impl TrainDevice for CpuBehindTrait {
    type Buf = CpuBuf;
    type Error = Error;

    fn name(&self) -> String {
        "test-engine".into()
    }
    fn activations(&self, _host: &GlaModel, b: usize, t: usize) -> Result<Acts<CpuBuf>> {
        Acts::alloc(&self.model.cpu(), &self.model.layout, b, t, false, 0)
    }
    fn forward(&mut self, _host: &GlaModel, acts: &mut Acts<CpuBuf>, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        model::forward(&self.model.cpu(), &self.model.layout, acts, ids, targets)
    }
    fn backward(&mut self, _host: &GlaModel, acts: &mut Acts<CpuBuf>, scale: f32, _reduce: bool) -> Result<()> {
        model::backward(&self.model.cpu(), &self.model.layout, acts, &mut self.grads, scale)?;
        if self.poison_grads {
            self.grads[0] = f32::NAN;
        }
        Ok(())
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.grads.fill(0.0);
        Ok(())
    }
    fn update(&mut self, _host: &mut GlaModel, opt: &mut AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        assert_eq!(*cfg, self.opt.cfg);
        let norm = clip_grad_norm(&mut self.grads, clip);
        if norm.is_finite() {
            self.opt.update(&mut self.model.params, &self.grads, lr);
            // the host optimizer counts the steps; its moments are refreshed by `download`
            opt.step += 1;
        }
        Ok(norm)
    }
    fn download(&self, model: &mut GlaModel, opt: &mut AdamW) -> Result<()> {
        model.params.clone_from(&self.model.params);
        opt.m.clone_from(&self.opt.m);
        opt.v.clone_from(&self.opt.v);
        opt.step = self.opt.step;
        Ok(())
    }
}

fn engine<D: TrainDevice<Buf = CpuBuf> + 'static>(dev: D, m: &GlaModel, b: usize, t: usize) -> Result<Box<dyn Engine>> {
    Ok(Box::new(DeviceEngine::new(dev, m, b, t)?))
}

fn attach(tr: Trainer, poison_grads: bool) -> Trainer {
    tr.with_engine(|model, opt, b, t| {
        let dev = CpuBehindTrait { model: model.clone(), opt: opt.clone(), grads: vec![0.0; model.num_params()], poison_grads };
        engine(dev, model, b, t)
    })
    .unwrap()
}

fn run_cfg(steps: u64) -> (GlaConfig, TrainConfig) {
    let task = Mqar { seq_len: 16, num_kv_pairs: 2, vocab: 24, ..Mqar::default() };
    let model = GlaConfig { hidden_size: 16, num_hidden_layers: 1, num_heads: 2, vocab_size: 24, ..GlaConfig::default() };
    let train = TrainConfig { steps, batch_size: 4, grad_accum: 2, warmup: 2, eval_examples: 8, task, ..TrainConfig::default() };
    (model, train)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gla-engine-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_engine_trains_like_the_cpu_and_checkpoints_its_state() {
    let (mc, tc) = run_cfg(6);
    let mut plain = Trainer::new(mc.clone(), tc.clone()).unwrap();
    let want: Vec<f64> = (0..6).map(|_| plain.step().unwrap().loss).collect();
    let want_eval = plain.evaluate().unwrap();

    let dir = tmpdir("ckpt");
    let mut tr = attach(Trainer::new(mc, tc).unwrap(), false);
    assert_eq!(tr.device_name(), "test-engine");
    let init = tr.model.params.clone();
    for _ in 0..3 {
        tr.step().unwrap();
    }
    assert_eq!(tr.step_count(), 3);
    // the host copy is stale until a sync (the engine owns the live weights)
    assert_eq!(tr.model.params, init);
    tr.save(&dir, 2).unwrap();
    assert_ne!(tr.model.params, init, "save downloads the engine's weights first");
    assert_eq!(tr.opt.step, 3);
    // resume from the engine's checkpoint, on an engine again
    let mut resumed = attach(Trainer::resume(&dir, None).unwrap(), false);
    for _ in 3..6 {
        resumed.step().unwrap();
    }
    assert_eq!(resumed.losses, want, "the same losses through the engine and across resume");
    assert_eq!(resumed.evaluate().unwrap().loss, want_eval.loss);
    resumed.sync().unwrap();
    assert_eq!(resumed.model.params, plain.model.params);
    assert_eq!(resumed.opt.m, plain.opt.m);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_finite_gradient_stops_the_run_and_keeps_the_weights() {
    let (mc, tc) = run_cfg(4);
    let mut tr = attach(Trainer::new(mc, tc).unwrap(), true);
    let before = tr.model.params.clone();
    let e = tr.step().unwrap_err();
    assert!(matches!(e, Error::Diverged { step: 1, what: "gradient norm", .. }), "{e}");
    tr.sync().unwrap();
    assert_eq!(tr.model.params, before);
    assert_eq!(tr.step_count(), 0);
}

/// An in-process sum over `world` threads of one vector each (what NCCL's all-reduce does
/// across GPUs): every caller gets the sum, in rank order.
struct Collective {
    barrier: std::sync::Barrier,
    slots: std::sync::Mutex<Vec<Vec<f64>>>,
}

impl Collective {
    fn new(world: usize) -> Self {
        Self { barrier: std::sync::Barrier::new(world), slots: std::sync::Mutex::new(vec![Vec::new(); world]) }
    }
    fn all_reduce(&self, rank: usize, v: &mut [f64]) {
        self.slots.lock().unwrap()[rank] = v.to_vec();
        self.barrier.wait();
        {
            let slots = self.slots.lock().unwrap();
            for (i, x) in v.iter_mut().enumerate() {
                *x = slots.iter().map(|s| s[i]).sum();
            }
        }
        // nobody overwrites a slot before every rank has read them all
        self.barrier.wait();
    }
}

/// One rank of a data-parallel run on the CPU: the device's part of the contract the GPU
/// implements with NCCL (statistics and gradients summed over the ranks); the rest (global
/// statistics, the backward scaled by this rank's share) is the one engine's.
struct DataParallel {
    inner: CpuBehindTrait,
    rank: usize,
    world: usize,
    coll: std::sync::Arc<Collective>,
}

impl TrainDevice for DataParallel {
    type Buf = CpuBuf;
    type Error = Error;

    fn name(&self) -> String {
        format!("dp-test rank {}", self.rank)
    }
    fn world(&self) -> usize {
        self.world
    }
    fn activations(&self, host: &GlaModel, b: usize, t: usize) -> Result<Acts<CpuBuf>> {
        self.inner.activations(host, b, t)
    }
    fn forward(&mut self, host: &GlaModel, acts: &mut Acts<CpuBuf>, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        self.inner.forward(host, acts, ids, targets)
    }
    fn backward(&mut self, host: &GlaModel, acts: &mut Acts<CpuBuf>, scale: f32, reduce: bool) -> Result<()> {
        self.inner.backward(host, acts, scale, reduce)?;
        if reduce {
            let mut g: Vec<f64> = self.inner.grads.iter().map(|&x| f64::from(x)).collect();
            self.coll.all_reduce(self.rank, &mut g);
            for (d, s) in self.inner.grads.iter_mut().zip(g) {
                *d = s as f32;
            }
        }
        Ok(())
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.inner.zero_grads()
    }
    fn update(&mut self, host: &mut GlaModel, opt: &mut AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        self.inner.update(host, opt, cfg, lr, clip)
    }
    fn download(&self, model: &mut GlaModel, opt: &mut AdamW) -> Result<()> {
        self.inner.download(model, opt)
    }
    fn all_reduce_host(&mut self, v: &mut [f64]) -> Result<()> {
        self.coll.all_reduce(self.rank, v);
        Ok(())
    }
}

/// Runs `f` on `world` data-parallel ranks of a fresh run (one thread each, summing over an
/// in-process [`Collective`]); returns each rank's result in rank order.
fn on_ranks<R: Send>(world: usize, mc: &GlaConfig, tc: &TrainConfig, f: impl Fn(usize, Trainer) -> R + Sync) -> Vec<R> {
    let coll = std::sync::Arc::new(Collective::new(world));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (mc, tc, coll, f) = (mc.clone(), tc.clone(), coll.clone(), &f);
                s.spawn(move || {
                    let shard = gla_model::Shard::new(rank, world).unwrap();
                    let tr = Trainer::new(mc, tc)
                        .unwrap()
                        .with_sharded_engine(shard, |m, o, b, t| {
                            engine(DataParallel { inner: cpu_engine(m, o), rank, world, coll }, m, b, t)
                        })
                        .unwrap();
                    f(rank, tr)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn cpu_engine(model: &GlaModel, opt: &AdamW) -> CpuBehindTrait {
    CpuBehindTrait { model: model.clone(), opt: opt.clone(), grads: vec![0.0; model.num_params()], poison_grads: false }
}

#[test]
fn the_ranks_slices_are_disjoint_and_make_up_the_global_batch() {
    let (mc, tc) = run_cfg(1);
    let t = tc.task.seq_len;
    let mut one = Trainer::new(mc.clone(), tc.clone()).unwrap();
    for cursor in [0u64, 4, 1000] {
        let (ids, targets) = one.train_batch(cursor);
        let (ids, targets) = (ids.to_vec(), targets.to_vec());
        assert_eq!(ids.len(), tc.batch_size * t);
        for world in [1, 2, 4] {
            let (mut all_ids, mut all_targets) = (Vec::new(), Vec::new());
            for rank in 0..world {
                let shard = gla_model::Shard::new(rank, world).unwrap();
                let mut tr = Trainer::new(mc.clone(), tc.clone())
                    .unwrap()
                    .with_sharded_engine(shard, |m, o, b, t| engine(cpu_engine(m, o), m, b, t))
                    .unwrap();
                let (i, g) = tr.train_batch(cursor);
                assert_eq!(i.len(), tc.batch_size / world * t, "rank {rank} of {world} runs its share of the batch");
                all_ids.extend_from_slice(i);
                all_targets.extend_from_slice(g);
            }
            // rank order concatenation is the 1-process batch: disjoint slices covering it
            assert_eq!(all_ids, ids, "world {world}, cursor {cursor}");
            assert_eq!(all_targets, targets, "world {world}, cursor {cursor}");
        }
    }
}

#[test]
fn a_world_that_does_not_divide_the_global_batch_is_refused() {
    let (mc, tc) = run_cfg(1);
    let shard = gla_model::Shard::new(1, 3).unwrap();
    let e = Trainer::new(mc, tc)
        .unwrap()
        .with_sharded_engine(shard, |m, o, b, t| engine(cpu_engine(m, o), m, b, t))
        .expect_err("a batch of 4 over 3 processes");
    assert!(matches!(e, Error::BadArg { key: "batch_size", .. }), "{e}");
    assert!(gla_model::Shard::new(2, 2).is_err());
}

#[test]
fn two_data_parallel_ranks_follow_the_one_process_run() {
    let (mc, tc) = run_cfg(4);
    let mut plain = Trainer::new(mc.clone(), tc.clone()).unwrap();
    let want: Vec<(f64, f64)> = (0..4)
        .map(|_| {
            let s = plain.step().unwrap();
            (s.loss, s.grad_norm)
        })
        .collect();
    let want_eval = plain.evaluate().unwrap();

    let runs = on_ranks(2, &mc, &tc, |_, mut tr| {
        let steps: Vec<(f64, f64)> = (0..4)
            .map(|_| {
                let s = tr.step().unwrap();
                (s.loss, s.grad_norm)
            })
            .collect();
        let eval = tr.evaluate().unwrap().loss;
        tr.sync().unwrap();
        (steps, eval, tr.model.params.clone())
    });
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    for (rank, (steps, eval, _)) in runs.iter().enumerate() {
        // the same global batch in two halves: equal up to the order of f32 sums; the gradient
        // norm checks the scale of the summed gradients (AdamW alone would hide a wrong scale)
        for (step, ((loss, norm), (want_loss, want_norm))) in steps.iter().zip(&want).enumerate() {
            assert!(close(*loss, *want_loss), "rank {rank} step {step}: loss {loss} vs {want_loss}");
            assert!(close(*norm, *want_norm), "rank {rank} step {step}: gradient norm {norm} vs {want_norm}");
        }
        assert!(close(*eval, want_eval.loss), "rank {rank} eval {eval} vs {}", want_eval.loss);
    }
    assert_eq!(runs[0].2, runs[1].2, "the ranks step on the same summed gradients: identical weights");
    assert_eq!(runs[0].0, runs[1].0, "every rank reports the global loss and norm");
}

#[test]
fn a_stop_flag_on_any_rank_stops_every_rank() {
    let (mc, tc) = run_cfg(1);
    for flags in [[false, false], [true, false], [false, true]] {
        let got = on_ranks(2, &mc, &tc, |rank, mut tr| tr.any_rank(flags[rank]).unwrap());
        let want = flags.iter().any(|&f| f);
        assert_eq!(got, vec![want; 2], "flags {flags:?}");
    }
    // one process: its own flag
    let mut one = Trainer::new(mc, tc).unwrap();
    assert!(one.any_rank(true).unwrap() && !one.any_rank(false).unwrap());
}
