//! AdamW with decoupled weight decay, global gradient-norm clipping and gradient accumulation.
//!
//! Ours rather than `candle_nn::AdamW` because exact resume needs the moments and the step count
//! saved and restored bit for bit, which candle's optimiser does not expose.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::params::NamedParams;
use crate::{Result, TrainError};

/// AdamW's hyper-parameters (PyTorch's defaults). The learning rate is not one of them: every
/// step takes it from the schedule, so there is a single place to set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay of the first moment (ShotStream uses 0).
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment to keep the step finite.
    pub eps: f64,
    /// Decoupled decay: each step multiplies the weights by `1 - lr * weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// Checks each setting is finite and in its range.
    pub fn validate(&self) -> Result<()> {
        for (what, beta) in [("optimizer.beta1", self.beta1), ("optimizer.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(TrainError::out_of_range(what, beta, "0 <= beta < 1"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(TrainError::out_of_range("optimizer.eps", self.eps, "a finite value > 0"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TrainError::out_of_range("optimizer.weight_decay", self.weight_decay, "a finite value >= 0"));
        }
        Ok(())
    }
}

/// AdamW over a fixed list of trainable variables, with f32 moments per variable.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: u64,
}

impl AdamW {
    /// An optimiser over `params`' trainable variables with zero moments.
    pub fn new(params: &NamedParams, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let trainable = params.trainable();
        let mut m = Vec::with_capacity(trainable.len());
        for p in &trainable {
            m.push(Tensor::zeros(p.var.shape(), DType::F32, p.var.device())?);
        }
        Ok(Self {
            config,
            names: trainable.iter().map(|p| p.name.clone()).collect(),
            vars: trainable.iter().map(|p| p.var.clone()).collect(),
            v: m.clone(),
            m,
            steps: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// How many updates have been applied (the `t` of bias correction).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The variables this optimiser updates, in name order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update at rate `lr`. A trainable variable with no gradient in `grads` is left alone
    /// (as PyTorch does for `grad is None`), though the shared step count still advances.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(TrainError::out_of_range("learning rate", lr, "a finite rate >= 0"));
        }
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = self.config;
        let t = self.steps as i32;
        let correction1 = 1.0 - beta1.powi(t);
        let correction2 = 1.0 - beta2.powi(t);
        for ((var, m), v) in self.vars.iter().zip(self.m.iter_mut()).zip(self.v.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let g = grad.detach().to_dtype(DType::F32)?;
            *m = (m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
            *v = (v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
            let denom = v.affine(1.0 / correction2, 0.0)?.sqrt()?.affine(1.0, eps)?;
            let update = m.affine(1.0 / correction1, 0.0)?.div(&denom)?;
            let p = var.as_tensor().detach().to_dtype(DType::F32)?;
            let p = (p.affine(1.0 - lr * weight_decay, 0.0)? - update.affine(lr, 0.0)?)?;
            var.set(&p.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// The moments, named `m.<param>` and `v.<param>`, for saving.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for ((name, m), v) in self.names.iter().zip(&self.m).zip(&self.v) {
            out.push((format!("m.{name}"), m.clone()));
            out.push((format!("v.{name}"), v.clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count; every name and shape
    /// must match this optimiser's (`source` names the file in errors).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64, source: &str) -> Result<()> {
        let expected: Vec<(String, Vec<usize>)> =
            self.state_tensors().into_iter().map(|(name, t)| (name, t.dims().to_vec())).collect();
        crate::state::check_tensors(&expected, tensors, source)?;
        let device = self.vars.first().map(|v| v.device().clone());
        for (i, name) in self.names.iter().enumerate() {
            let load = |key: String| -> Result<Tensor> {
                let t = &tensors[&key];
                let t = t.to_dtype(DType::F32)?;
                Ok(match &device {
                    Some(d) => t.to_device(d)?,
                    None => t,
                })
            };
            self.m[i] = load(format!("m.{name}"))?;
            self.v[i] = load(format!("v.{name}"))?;
        }
        self.steps = steps;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars` (missing gradients count as zero), in f64.
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sum = 0.0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}

/// Scales the gradients of `vars` so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, with its `1e-6` guard) and returns the norm before clipping.
///
/// A non-finite norm (a NaN or infinite gradient somewhere) leaves the gradients untouched and is
/// returned as is: scaling cannot repair it, so the caller must skip the update; the
/// [`crate::trainer::Trainer`] does, and counts it in `skipped_steps`.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(TrainError::out_of_range("clip_norm", max_norm, "a finite norm > 0"));
    }
    let norm = grad_norm(grads, vars)?;
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for var in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = g.affine(scale, 0.0)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Sums the gradients of several micro-batches and hands back their mean, so `k` micro-batches of
/// `b` samples (each with a mean loss) step exactly like one batch of `k * b`.
#[derive(Debug)]
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
    count: usize,
}

impl GradAccumulator {
    /// An empty accumulator for the gradients of `vars`; others are dropped as they arrive, which
    /// also frees the activations' gradients early.
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        Self { vars, sums, count: 0 }
    }

    /// Adds one micro-batch's gradients (summed in f32).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (var, sum) in self.vars.iter().zip(self.sums.iter_mut()) {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach().to_dtype(DType::F32)?;
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        self.count += 1;
        Ok(())
    }

    /// How many micro-batches have been added since the last [`GradAccumulator::finish`].
    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean gradients as a [`GradStore`], leaving the accumulator empty.
    pub fn finish(&mut self) -> Result<GradStore> {
        if self.count == 0 {
            return Err(TrainError::out_of_range("accumulated micro-batches", 0, "at least 1"));
        }
        let mut store = GradStore::default();
        let scale = 1.0 / self.count as f64;
        for (var, sum) in self.vars.iter().zip(self.sums.iter_mut()) {
            if let Some(s) = sum.take() {
                let mean = if self.count == 1 { s } else { s.affine(scale, 0.0)? };
                store.insert(var.as_tensor(), mean);
            }
        }
        self.count = 0;
        Ok(store)
    }
}
