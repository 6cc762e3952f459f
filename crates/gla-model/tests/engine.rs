//! The training [`Engine`] seam (what `gla train --device cuda` plugs the GPU into), driven by a
//! test engine that runs the CPU model behind the trait: the trainer must give the same losses,
//! weights, checkpoints and resume as without an engine, and stop on a diverged gradient without
//! touching the weights.

use std::path::PathBuf;

use gla_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
use gla_model::{Activations, Engine, Error, GlaConfig, GlaModel, LossOut, Mqar, Result, TrainConfig, Trainer};

/// The CPU model behind the engine trait, with its own copies of everything (as a GPU has).
struct CpuBehindTrait {
    model: GlaModel,
    opt: AdamW,
    acts: Activations,
    grads: Vec<f32>,
    poison_grads: bool,
}

impl Engine for CpuBehindTrait {
    fn name(&self) -> String {
        "test-engine".into()
    }
    fn forward(&mut self, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        self.model.forward(&mut self.acts, ids, targets)
    }
    fn backward(&mut self, scale: f32) -> Result<()> {
        self.model.backward(&mut self.acts, &mut self.grads, scale)?;
        if self.poison_grads {
            self.grads[0] = f32::NAN;
        }
        Ok(())
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.grads.fill(0.0);
        Ok(())
    }
    fn update(&mut self, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        assert_eq!(*cfg, self.opt.cfg);
        let norm = clip_grad_norm(&mut self.grads, clip);
        if norm.is_finite() {
            self.opt.update(&mut self.model.params, &self.grads, lr);
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

fn attach(tr: Trainer, poison_grads: bool) -> Trainer {
    tr.with_engine(|model, opt, b, t| {
        Ok(Box::new(CpuBehindTrait {
            model: model.clone(),
            opt: opt.clone(),
            acts: Activations::new(&model.dims, b, t),
            grads: vec![0.0; model.num_params()],
            poison_grads,
        }) as Box<dyn Engine>)
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
