//! Samplers: ShotStream's few-step student sampler and a multi-step Euler sampler with CFG.

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::schedule::FlowSchedule;

/// x0 = x_t − σ·v, evaluated in f64 as the reference does, returned in f32.
pub fn x0_from_flow(x_t: &Tensor, v: &Tensor, sigma: f32) -> Result<Tensor> {
    let x = x_t.to_dtype(DType::F64)?;
    let v = v.to_dtype(DType::F64)?;
    Ok((x - (v * sigma as f64)?)?.to_dtype(DType::F32)?)
}

/// x_t = (1−σ)·x0 + σ·ε.
pub fn add_noise(x0: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok(((x0 * (1.0 - sigma) as f64)? + (noise * sigma as f64)?)?)
}

/// ShotStream's student sampler: per step predict x0, then re-noise to the next level with
/// fresh noise; the output is the last x0 (shotstream.md §4.3).
#[derive(Debug, Clone, PartialEq)]
pub struct FewStepSampler {
    schedule: FlowSchedule,
    timesteps: Vec<f32>,
}

impl FewStepSampler {
    /// A sampler over warped `steps` (0–1000 scale) of a 1000-entry table with `shift`.
    pub fn new(steps: &[u32], shift: f32) -> Result<Self> {
        if steps.is_empty() {
            return Err(EngineError::Config("the denoising step list is empty".into()));
        }
        if !(shift > 0.0 && shift.is_finite()) {
            return Err(EngineError::Config(format!("shift {shift} must be positive")));
        }
        let schedule = FlowSchedule::new(1000, shift);
        let timesteps = schedule.warp(steps).map_err(EngineError::Config)?;
        if timesteps.iter().any(|&t| t <= 0.0) {
            return Err(EngineError::Config("denoising steps must be above 0".into()));
        }
        Ok(Self { schedule, timesteps })
    }

    /// ShotStream's 4 steps [1000, 740, 500, 260] with shift 8.
    pub fn shotstream() -> Self {
        Self::new(&[1000, 740, 500, 260], 8.0).expect("the ShotStream schedule is valid")
    }

    /// The warped timesteps.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// σ of a timestep (nearest table entry).
    pub fn sigma(&self, t: f32) -> f32 {
        self.schedule.sigma_at(t)
    }

    /// Runs the steps. `flow(x, t)` is the model; `noise(i)` gives the starting noise (i = 0)
    /// and the noise re-injected before step i; `cancelled()` is polled before every step.
    pub fn sample(
        &self,
        flow: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
        noise: &mut dyn FnMut(usize) -> Result<Tensor>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        self.sample_to_exit(self.timesteps.len().saturating_sub(1), flow, noise, cancelled)
    }

    /// Runs steps 0..=`exit` and returns the x0 estimate of step `exit` (self-forcing's random
    /// exit, shotstream.md §5.4). Estimates before the exit are detached, so autograd sees only
    /// the exit step's model call; with `exit` = the last step this is [`Self::sample`].
    pub fn sample_to_exit(
        &self,
        exit: usize,
        flow: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
        noise: &mut dyn FnMut(usize) -> Result<Tensor>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        if exit >= self.timesteps.len() {
            return Err(EngineError::Config(format!(
                "exit step {exit} is past the {} denoising steps",
                self.timesteps.len()
            )));
        }
        let mut x = noise(0)?;
        for (i, &t) in self.timesteps.iter().enumerate().take(exit + 1) {
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            let v = flow(&x, t)?;
            let pred = x0_from_flow(&x, &v, self.sigma(t))?;
            if i == exit {
                return Ok(pred);
            }
            x = add_noise(&pred.detach(), &noise(i + 1)?, self.sigma(self.timesteps[i + 1]))?;
        }
        Err(EngineError::Config("no denoising steps".into()))
    }
}

/// Which conditioning a guided model call sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowBranch {
    /// The shot's captions and its context.
    Conditional,
    /// The unconditional caption, with the context (classifier-free guidance's negative).
    Unconditional,
    /// The shot's captions with the context dropped (context guidance's negative).
    WithoutContext,
}

/// Multi-step Euler flow sampler with classifier-free guidance (the teacher's sampler).
///
/// Besides caption guidance `g` it can guide on the context, as the teacher is trained with
/// context dropout: v = u + g·(c − u) + g_ctx·(c − n), where c is conditional, u has the
/// unconditional caption and n has the context dropped. `g_ctx` = 0 (the default) is plain CFG.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerSampler {
    schedule: FlowSchedule,
    guidance: f32,
    context_guidance: f32,
}

impl EulerSampler {
    /// `steps` Euler steps on a table with `shift`, guidance scale `guidance` (1 = no CFG).
    pub fn new(steps: usize, shift: f32, guidance: f32) -> Result<Self> {
        if steps == 0 {
            return Err(EngineError::Config("Euler sampling needs at least one step".into()));
        }
        if !(shift > 0.0 && shift.is_finite() && guidance.is_finite()) {
            return Err(EngineError::Config(format!(
                "shift {shift} and guidance {guidance} must be finite, shift positive"
            )));
        }
        Ok(Self { schedule: FlowSchedule::new(steps, shift), guidance, context_guidance: 0.0 })
    }

    /// The same sampler with context guidance `g_ctx` (0 = off; ≥ 0 and finite).
    pub fn with_context_guidance(mut self, context_guidance: f32) -> Result<Self> {
        if !(context_guidance >= 0.0 && context_guidance.is_finite()) {
            return Err(EngineError::Config(format!(
                "context guidance {context_guidance} must be a finite number ≥ 0"
            )));
        }
        self.context_guidance = context_guidance;
        Ok(self)
    }

    /// ShotStream's ODE-pair sampler: 50 steps, shift 8, CFG 6.
    pub fn shotstream_teacher() -> Self {
        Self::new(50, 8.0, 6.0).expect("valid")
    }

    /// The timesteps visited.
    pub fn timesteps(&self) -> &[f32] {
        self.schedule.timesteps()
    }

    /// Guidance scale.
    pub fn guidance(&self) -> f32 {
        self.guidance
    }

    /// Context guidance scale (0 = off).
    pub fn context_guidance(&self) -> f32 {
        self.context_guidance
    }

    /// Model calls per step: 1, plus one with caption guidance, plus one with context guidance.
    pub fn calls_per_step(&self) -> usize {
        1 + usize::from(self.caption_guided()) + usize::from(self.context_guidance > 0.0)
    }

    fn caption_guided(&self) -> bool {
        (self.guidance - 1.0).abs() > f32::EPSILON
    }

    /// Integrates from `x` (pure noise at σ = 1) to σ = 0. `flow(x, t, branch)` is the model;
    /// the unconditional branch runs only when guidance ≠ 1, the context-free one only when
    /// context guidance > 0. `on_step(i, x)` sees the input of every step (for ODE pairs).
    pub fn sample(
        &self,
        x: Tensor,
        flow: &mut dyn FnMut(&Tensor, f32, FlowBranch) -> Result<Tensor>,
        on_step: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        self.integrate(x, self.schedule.sigmas(), self.schedule.timesteps(), flow, on_step, cancelled)
    }

    /// Noise levels a run from `sigma` visits: `sigma` itself, then the table's levels below it.
    pub fn sigmas_from(&self, sigma: f32) -> Vec<f32> {
        std::iter::once(sigma).chain(self.schedule.sigmas().iter().copied().filter(|&s| s < sigma)).collect()
    }

    /// Integrates `x`, a sample at noise level `sigma` in (0, 1], to σ = 0 over the table's
    /// steps below `sigma` (SDEdit: denoising a noised picture the way sampling would).
    pub fn sample_from(
        &self,
        x: Tensor,
        sigma: f32,
        flow: &mut dyn FnMut(&Tensor, f32, FlowBranch) -> Result<Tensor>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        if !(sigma > 0.0 && sigma <= 1.0) {
            return Err(EngineError::Config(format!("a run must start at a noise level in (0, 1], not {sigma}")));
        }
        let sigmas = self.sigmas_from(sigma);
        let timesteps: Vec<f32> = sigmas.iter().map(|s| s * 1000.0).collect();
        self.integrate(x, &sigmas, &timesteps, flow, &mut |_, _| Ok(()), cancelled)
    }

    /// The guided velocity at `x` and timestep `t`: the conditional flow, pushed away from the
    /// unconditional one by the guidance scale and from the context-free one by the context
    /// guidance scale.
    pub fn velocity(
        &self,
        x: &Tensor,
        t: f32,
        flow: &mut dyn FnMut(&Tensor, f32, FlowBranch) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let cond = flow(x, t, FlowBranch::Conditional)?;
        let mut v = if self.caption_guided() {
            let uncond = flow(x, t, FlowBranch::Unconditional)?;
            (&uncond + ((&cond - &uncond)? * self.guidance as f64)?)?
        } else {
            cond.clone()
        };
        if self.context_guidance > 0.0 {
            let without = flow(x, t, FlowBranch::WithoutContext)?;
            v = (v + ((cond - without)? * self.context_guidance as f64)?)?;
        }
        Ok(v)
    }

    fn integrate(
        &self,
        x: Tensor,
        sig: &[f32],
        ts: &[f32],
        flow: &mut dyn FnMut(&Tensor, f32, FlowBranch) -> Result<Tensor>,
        on_step: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let mut x = x;
        for i in 0..sig.len() {
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            on_step(i, &x)?;
            let v = self.velocity(&x, ts[i], flow)?;
            let next = sig.get(i + 1).copied().unwrap_or(0.0);
            x = (x + (v * (next - sig[i]) as f64)?)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn few_step_sampler_recovers_x0_of_an_exact_flow() {
        // A model that knows x0 exactly: v = (x_t − x0)/σ  ⇒ every step predicts x0.
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (3, 2, 2, 2), &dev).unwrap();
        let s = FewStepSampler::shotstream();
        let sched = s.clone();
        let target = x0.clone();
        let mut flow = |x: &Tensor, t: f32| -> Result<Tensor> {
            let sigma = sched.sigma(t);
            Ok(((x - &target)? / sigma as f64)?)
        };
        let mut calls = Vec::new();
        let mut noise = |i: usize| -> Result<Tensor> {
            calls.push(i);
            Ok(Tensor::randn(0f32, 1.0, (3, 2, 2, 2), &Device::Cpu)?)
        };
        let out = s.sample(&mut flow, &mut noise, &|| false).unwrap();
        let d = (out - x0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
        assert_eq!(calls, vec![0, 1, 2, 3]);
    }

    #[test]
    fn euler_integrates_a_straight_flow_exactly_and_applies_cfg() {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let eps = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let v = (&eps - &x0).unwrap();
        let s = EulerSampler::new(10, 8.0, 6.0).unwrap();
        let mut seen = 0;
        // Conditional = true flow, unconditional = the same: CFG leaves it unchanged.
        let out = s
            .sample(
                eps.clone(),
                &mut |_, _, _| Ok(v.clone()),
                &mut |_, _| {
                    seen += 1;
                    Ok(())
                },
                &|| false,
            )
            .unwrap();
        assert_eq!(seen, 10);
        let d = (out - &x0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
        // With uncond = 0, the guided velocity is 6·cond.
        let mut got = Vec::new();
        let s1 = EulerSampler::new(1, 1.0, 6.0).unwrap();
        let out = s1
            .sample(
                eps.clone(),
                &mut |_, _, c| {
                    got.push(c);
                    Ok(if c == FlowBranch::Conditional { v.clone() } else { v.zeros_like()? })
                },
                &mut |_, _| Ok(()),
                &|| false,
            )
            .unwrap();
        assert_eq!(got, vec![FlowBranch::Conditional, FlowBranch::Unconditional]);
        let want = (&eps - (&v * 6.0).unwrap()).unwrap();
        let d = (out - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5);
    }

    #[test]
    fn context_guidance_adds_the_context_direction() {
        let dev = Device::Cpu;
        let eps = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let c = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let u = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let n = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let s = EulerSampler::new(1, 1.0, 3.0).unwrap().with_context_guidance(2.0).unwrap();
        assert_eq!(s.calls_per_step(), 3);
        let mut got = Vec::new();
        let out = s
            .sample(
                eps.clone(),
                &mut |_, _, b| {
                    got.push(b);
                    Ok(match b {
                        FlowBranch::Conditional => c.clone(),
                        FlowBranch::Unconditional => u.clone(),
                        FlowBranch::WithoutContext => n.clone(),
                    })
                },
                &mut |_, _| Ok(()),
                &|| false,
            )
            .unwrap();
        assert_eq!(got, vec![FlowBranch::Conditional, FlowBranch::Unconditional, FlowBranch::WithoutContext]);
        // One step from σ = 1 to 0: x = eps − v, v = u + 3(c − u) + 2(c − n).
        let v = ((&u + ((&c - &u).unwrap() * 3.0).unwrap()).unwrap() + ((&c - &n).unwrap() * 2.0).unwrap()).unwrap();
        let d = (out - (&eps - v).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
        // Without caption guidance only the context branch is added.
        let s = EulerSampler::new(1, 1.0, 1.0).unwrap().with_context_guidance(1.0).unwrap();
        assert_eq!(s.calls_per_step(), 2);
        assert_eq!(EulerSampler::new(1, 1.0, 1.0).unwrap().calls_per_step(), 1);
    }

    #[test]
    fn cancellation_stops_before_the_next_step() {
        let s = FewStepSampler::shotstream();
        let dev = Device::Cpu;
        let n = std::cell::Cell::new(0);
        let r = s.sample(
            &mut |x, _| {
                n.set(n.get() + 1);
                Ok(x.clone())
            },
            &mut |_| Ok(Tensor::zeros(2, DType::F32, &dev)?),
            &|| n.get() >= 2,
        );
        assert!(matches!(r, Err(EngineError::Cancelled)));
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn a_run_from_a_noise_level_follows_the_table_below_it() {
        let dev = Device::Cpu;
        let s = EulerSampler::new(4, 1.0, 2.0).unwrap();
        assert_eq!(s.sigmas_from(0.6), vec![0.6, 0.5, 0.25]);
        assert_eq!(s.sigmas_from(1.0), vec![1.0, 0.75, 0.5, 0.25]);
        // A flow that knows x0 lands on it from any level, guided or not.
        let x0 = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let eps = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let mut exact = |_: &Tensor, _: f32, _: FlowBranch| -> Result<Tensor> { Ok((&eps - &x0)?) };
        for sigma in [1.0f32, 0.6, 0.1] {
            let x_t = ((&x0 * (1.0 - sigma) as f64).unwrap() + (&eps * sigma as f64).unwrap()).unwrap();
            let out = s.sample_from(x_t, sigma, &mut exact, &|| false).unwrap();
            let d = (out - &x0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "from {sigma}: {d}");
        }
        // From σ = 1 it is `sample`, call for call.
        let mut calls = Vec::new();
        let mut seen = |x: &Tensor, t: f32, b: FlowBranch| -> Result<Tensor> {
            calls.push((t, b));
            Ok((x * 0.5)?)
        };
        let a = s.sample_from(eps.clone(), 1.0, &mut seen, &|| false).unwrap();
        let from_one = std::mem::take(&mut calls);
        let mut seen = |x: &Tensor, t: f32, b: FlowBranch| -> Result<Tensor> {
            calls.push((t, b));
            Ok((x * 0.5)?)
        };
        let b = s.sample(eps.clone(), &mut seen, &mut |_, _| Ok(()), &|| false).unwrap();
        assert_eq!(from_one, calls);
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        for bad in [0.0, 1.5, f32::NAN] {
            assert!(s.sample_from(eps.clone(), bad, &mut exact, &|| false).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(FewStepSampler::new(&[], 8.0).is_err());
        assert!(FewStepSampler::new(&[1000, 0], 8.0).is_err());
        assert!(FewStepSampler::new(&[1000], -1.0).is_err());
        assert!(EulerSampler::new(0, 8.0, 1.0).is_err());
        for bad in [-0.5, f32::NAN, f32::INFINITY] {
            assert!(EulerSampler::new(4, 8.0, 1.0).unwrap().with_context_guidance(bad).is_err());
        }
    }
}
