//! An exponential moving average of the trainable weights, kept in f32 and saved separately.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::params::NamedParams;
use crate::{Result, TrainError};

/// EMA settings; defaults: decay 0.999 from step 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// Weight of the old average at each update.
    pub decay: f64,
    /// Before this step the average just tracks the weights, so early noisy weights are forgotten.
    pub start_step: u64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay: 0.999, start_step: 0 }
    }
}

impl EmaConfig {
    /// Checks `decay` lies in [0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.decay) {
            return Err(TrainError::out_of_range("ema.decay", self.decay, "0 <= decay <= 1"));
        }
        Ok(())
    }
}

/// The moving average of each trainable parameter, by name.
#[derive(Debug)]
pub struct Ema {
    config: EmaConfig,
    names: Vec<String>,
    shadow: Vec<Tensor>,
}

impl Ema {
    /// An average starting at the current trainable weights.
    pub fn new(params: &NamedParams, config: EmaConfig) -> Result<Self> {
        config.validate()?;
        let trainable = params.trainable();
        let mut shadow = Vec::with_capacity(trainable.len());
        for p in &trainable {
            shadow.push(p.var.as_tensor().detach().to_dtype(DType::F32)?.copy()?);
        }
        Ok(Self { config, names: trainable.iter().map(|p| p.name.clone()).collect(), shadow })
    }

    /// The settings.
    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// Folds in the weights after optimiser step `step` (1-based):
    /// `avg = decay * avg + (1 - decay) * w`, or `avg = w` before `start_step`.
    pub fn update(&mut self, params: &NamedParams, step: u64) -> Result<()> {
        let decay = self.config.decay;
        for (name, avg) in self.names.iter().zip(self.shadow.iter_mut()) {
            let param = params
                .get(name)
                .ok_or_else(|| TrainError::File(format!("EMA parameter {name} is missing from the model")))?;
            let w = param.var.as_tensor().detach().to_dtype(DType::F32)?;
            *avg = if step < self.config.start_step {
                w.copy()?
            } else {
                (avg.affine(decay, 0.0)? + w.affine(1.0 - decay, 0.0)?)?
            };
        }
        Ok(())
    }

    /// The averaged weights by parameter name (f32), for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.shadow.iter().cloned()).collect()
    }

    /// Writes the averages into `varmap`'s variables of the same names (in their dtypes), e.g. to
    /// evaluate or export the EMA model.
    pub fn copy_into(&self, varmap: &VarMap) -> Result<()> {
        let data = varmap.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, avg) in self.names.iter().zip(&self.shadow) {
            let var = data
                .get(name)
                .ok_or_else(|| TrainError::File(format!("EMA tensor {name} has no variable in the model")))?;
            if var.dims() != avg.dims() {
                return Err(TrainError::File(format!(
                    "EMA tensor {name} has shape {:?} but the model's is {:?}",
                    avg.dims(),
                    var.dims()
                )));
            }
            var.set(&avg.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Restores averages saved by [`Ema::tensors`]; names and shapes must match (`source` names the file).
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        let expected: Vec<(String, Vec<usize>)> =
            self.names.iter().cloned().zip(self.shadow.iter().map(|t| t.dims().to_vec())).collect();
        crate::state::check_tensors(&expected, tensors, source)?;
        for (name, avg) in self.names.iter().zip(self.shadow.iter_mut()) {
            let t = tensors[name].to_dtype(DType::F32)?;
            *avg = t.to_device(avg.device())?;
        }
        Ok(())
    }
}
