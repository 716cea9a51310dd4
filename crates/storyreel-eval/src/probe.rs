//! The world probe: reads place, framing, light, which characters are present and where the
//! foreground is from a single frame. It is a small MLP over [`global_features`], fitted on
//! rendered frames with exact ground truth (blurred, noisy and re-scaled copies included, so it
//! still reads the soft frames a small generator makes). Its last hidden layer is the feature
//! space of the consistency and Fréchet metrics, as DINO/Inception features are for real video.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, Linear, Optimizer, VarBuilder, VarMap};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use storyreel_media::RgbFrame;
use storyreel_world::catalog::{Framing, Lighting, Place, CHARACTERS, LOOKS};
use storyreel_world::rng::WorldRng;
use storyreel_world::{generate_story, render_story, FrameTruth, StoryOptions};

use crate::error::{EvalError, Result};
use crate::features::{global_features, ProbeImage, GLOBAL_FEATURES, GRID, PROBE_SIZE};

/// Number of characters the probe knows.
pub const N_CHARACTERS: usize = CHARACTERS.len();
/// Number of (character, look) pairs the probe tells apart.
pub const N_CHARACTER_LOOKS: usize = N_CHARACTERS * LOOKS;
/// Width of the probe's embedding (its last hidden layer).
pub const EMBEDDING: usize = 128;
const HIDDEN: usize = 256;
const CELLS: usize = GRID * GRID;
/// File names inside a probe folder.
pub const PROBE_WEIGHTS: &str = "probe.safetensors";
/// The probe's description file.
pub const PROBE_CARD: &str = "probe.json";
/// The shipped probe's weights.
const EMBEDDED_PROBE: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/world-probe/probe.safetensors"));

/// What the probe reads from one frame.
#[derive(Debug, Clone)]
pub struct ProbeReading {
    /// Probability of each place, [`Place::ALL`] order.
    pub place: [f32; 6],
    /// Probability of each framing, [`Framing::ALL`] order.
    pub framing: [f32; 3],
    /// Probability of each light, [`Lighting::ALL`] order.
    pub lighting: [f32; 3],
    /// Probability that each character is in view, [`CHARACTERS`] order.
    pub characters: [f32; N_CHARACTERS],
    /// Probability that character `c` in look `l` is in view, at index `c * LOOKS + l`.
    pub character_looks: [f32; N_CHARACTER_LOOKS],
    /// Probability of each look of the place.
    pub place_look: [f32; LOOKS],
    /// Probability that each grid cell (row-major, [`GRID`]²) is mostly foreground.
    pub foreground: [f32; CELLS],
    /// The last hidden layer.
    pub embedding: Vec<f32>,
}

impl ProbeReading {
    /// The most likely place.
    pub fn top_place(&self) -> Place {
        Place::ALL[argmax(&self.place)]
    }

    /// The most likely framing.
    pub fn top_framing(&self) -> Framing {
        Framing::ALL[argmax(&self.framing)]
    }

    /// The most likely light.
    pub fn top_lighting(&self) -> Lighting {
        Lighting::ALL[argmax(&self.lighting)]
    }

    /// Characters with probability above one half, in id order.
    pub fn present(&self) -> Vec<usize> {
        (0..N_CHARACTERS).filter(|&c| self.characters[c] > 0.5).collect()
    }
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// One training or test example.
#[derive(Debug, Clone)]
pub struct ProbeSample {
    /// [`global_features`] of the frame.
    pub features: Vec<f32>,
    /// Place index.
    pub place: u32,
    /// Framing index.
    pub framing: u32,
    /// Light index.
    pub lighting: u32,
    /// 1 for each character in view.
    pub characters: [f32; N_CHARACTERS],
    /// 1 at `c * LOOKS + l` for each character `c` in view wearing look `l`.
    pub character_looks: [f32; N_CHARACTER_LOOKS],
    /// The place's look.
    pub place_look: u32,
    /// Fraction of each grid cell covered by a character box.
    pub foreground: [f32; CELLS],
}

/// How the probe is fitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeFitOptions {
    /// First story seed of the fitting set (kept apart from training data and the benchmark).
    pub first_seed: u64,
    /// Stories rendered for fitting.
    pub stories: usize,
    /// Keep every n-th frame.
    pub frame_stride: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Examples per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
}

impl Default for ProbeFitOptions {
    fn default() -> Self {
        Self {
            first_seed: PROBE_FIT_SEED_BASE,
            stories: 2000,
            frame_stride: 3,
            epochs: 15,
            batch: 128,
            learning_rate: 2e-3,
            seed: 1,
        }
    }
}

/// Seeds of the probe's fitting stories.
pub const PROBE_FIT_SEED_BASE: u64 = 7_000_000_000;
/// Seeds of the probe's held-out test stories.
pub const PROBE_TEST_SEED_BASE: u64 = 7_500_000_000;

/// Accuracy of the probe on labelled frames.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeAccuracy {
    /// Frames scored.
    pub frames: usize,
    /// Fraction with the right place.
    pub place: f64,
    /// Fraction with the right framing.
    pub framing: f64,
    /// Fraction with the right light.
    pub lighting: f64,
    /// Fraction with exactly the right set of characters.
    pub characters_exact: f64,
    /// F1 of character presence over all (frame, character) pairs.
    pub characters_f1: f64,
    /// Fraction of grid cells whose foreground call (coverage > 0.5) is right.
    pub foreground: f64,
    /// Fraction with the right look of the place.
    #[serde(default)]
    pub place_look: f64,
    /// F1 of (character, look) presence over all (frame, character, look) triples.
    #[serde(default)]
    pub character_looks_f1: f64,
}

/// The fitted probe.
pub struct Probe {
    mean: Tensor,
    std: Tensor,
    l1: Linear,
    l2: Linear,
    place: Linear,
    framing: Linear,
    lighting: Linear,
    characters: Linear,
    character_looks: Linear,
    place_look: Linear,
    foreground: Linear,
}

struct Heads {
    embedding: Tensor,
    place: Tensor,
    framing: Tensor,
    lighting: Tensor,
    characters: Tensor,
    character_looks: Tensor,
    place_look: Tensor,
    foreground: Tensor,
}

impl Probe {
    fn build(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            mean: vb.get(GLOBAL_FEATURES, "feature_mean")?,
            std: vb.get(GLOBAL_FEATURES, "feature_std")?,
            l1: linear(GLOBAL_FEATURES, HIDDEN, vb.pp("l1"))?,
            l2: linear(HIDDEN, EMBEDDING, vb.pp("l2"))?,
            place: linear(EMBEDDING, Place::ALL.len(), vb.pp("place"))?,
            framing: linear(EMBEDDING, Framing::ALL.len(), vb.pp("framing"))?,
            lighting: linear(EMBEDDING, Lighting::ALL.len(), vb.pp("lighting"))?,
            characters: linear(EMBEDDING, N_CHARACTERS, vb.pp("characters"))?,
            character_looks: linear(EMBEDDING, N_CHARACTER_LOOKS, vb.pp("character_looks"))?,
            place_look: linear(EMBEDDING, LOOKS, vb.pp("place_look"))?,
            foreground: linear(EMBEDDING, CELLS, vb.pp("foreground"))?,
        })
    }

    fn heads(&self, x: &Tensor) -> candle_core::Result<Heads> {
        let x = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let h = self.l1.forward(&x)?.relu()?;
        let e = self.l2.forward(&h)?.relu()?;
        Ok(Heads {
            place: self.place.forward(&e)?,
            framing: self.framing.forward(&e)?,
            lighting: self.lighting.forward(&e)?,
            characters: self.characters.forward(&e)?,
            character_looks: self.character_looks.forward(&e)?,
            place_look: self.place_look.forward(&e)?,
            foreground: self.foreground.forward(&e)?,
            embedding: e,
        })
    }

    /// Loads a probe folder written by [`Probe::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(PROBE_WEIGHTS);
        if !path.exists() {
            return Err(EvalError::Mismatch(format!(
                "{}: no probe weights here (fit one with `storyreel eval fit-probe --out {}`)",
                path.display(),
                dir.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// The probe shipped with storyreel (`assets/models/world-probe`), built into the binary so
    /// evaluation works from any directory.
    pub fn embedded() -> Result<Self> {
        Self::from_bytes(EMBEDDED_PROBE, "the built-in probe")
    }

    /// Loads probe weights from safetensors bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| EvalError::Mismatch(format!("{origin}: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Self::build(vb).map_err(|e| {
            EvalError::Mismatch(format!(
                "{origin}: not a world probe of this version (probes fitted before character and place looks lack \
                 their heads; refit with `storyreel eval fit-probe`): {e}"
            ))
        })
    }

    /// Writes the weights and a card with how the probe was fitted and how accurate it is.
    pub fn save(&self, dir: &Path, card: &ProbeCard) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("feature_mean".into(), self.mean.clone());
        map.insert("feature_std".into(), self.std.clone());
        for (name, l) in [
            ("l1", &self.l1),
            ("l2", &self.l2),
            ("place", &self.place),
            ("framing", &self.framing),
            ("lighting", &self.lighting),
            ("characters", &self.characters),
            ("character_looks", &self.character_looks),
            ("place_look", &self.place_look),
            ("foreground", &self.foreground),
        ] {
            map.insert(format!("{name}.weight"), l.weight().clone());
            if let Some(b) = l.bias() {
                map.insert(format!("{name}.bias"), b.clone());
            }
        }
        let path = dir.join(PROBE_WEIGHTS);
        let tmp = dir.join(format!(".{PROBE_WEIGHTS}.tmp"));
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| EvalError::Mismatch(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        let card_path = dir.join(PROBE_CARD);
        let text = serde_json::to_string_pretty(card).unwrap_or_default();
        std::fs::write(&card_path, text + "\n").map_err(|e| io_err(&card_path, e))?;
        Ok(())
    }

    /// Reads many frames (any size) at once.
    pub fn read_frames(&self, frames: &[RgbFrame]) -> Result<Vec<ProbeReading>> {
        let features: Vec<Vec<f32>> = frames.par_iter().map(|f| global_features(&ProbeImage::new(f))).collect();
        self.read_features(&features)
    }

    /// Reads precomputed [`global_features`].
    pub fn read_features(&self, features: &[Vec<f32>]) -> Result<Vec<ProbeReading>> {
        let mut out = Vec::with_capacity(features.len());
        for chunk in features.chunks(512) {
            let x = stack(chunk)?;
            let h = self.heads(&x).map_err(cerr)?;
            let place = candle_nn::ops::softmax(&h.place, D::Minus1).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let framing =
                candle_nn::ops::softmax(&h.framing, D::Minus1).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let lighting =
                candle_nn::ops::softmax(&h.lighting, D::Minus1).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let chars = candle_nn::ops::sigmoid(&h.characters).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let char_looks =
                candle_nn::ops::sigmoid(&h.character_looks).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let place_look =
                candle_nn::ops::softmax(&h.place_look, D::Minus1).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let fg = candle_nn::ops::sigmoid(&h.foreground).and_then(|t| t.to_vec2::<f32>()).map_err(cerr)?;
            let emb = h.embedding.to_vec2::<f32>().map_err(cerr)?;
            for i in 0..chunk.len() {
                out.push(ProbeReading {
                    place: to_array(&place[i]),
                    framing: to_array(&framing[i]),
                    lighting: to_array(&lighting[i]),
                    characters: to_array(&chars[i]),
                    character_looks: to_array(&char_looks[i]),
                    place_look: to_array(&place_look[i]),
                    foreground: to_array(&fg[i]),
                    embedding: emb[i].clone(),
                });
            }
        }
        Ok(out)
    }

    /// Scores the probe on labelled samples.
    pub fn accuracy(&self, samples: &[ProbeSample]) -> Result<ProbeAccuracy> {
        let features: Vec<Vec<f32>> = samples.iter().map(|s| s.features.clone()).collect();
        let readings = self.read_features(&features)?;
        let n = samples.len().max(1) as f64;
        let mut acc = ProbeAccuracy { frames: samples.len(), ..Default::default() };
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        let mut cells_right = 0usize;
        let (mut ltp, mut lfp, mut lfn) = (0usize, 0usize, 0usize);
        for (r, s) in readings.iter().zip(samples) {
            acc.place_look += (argmax(&r.place_look) as u32 == s.place_look) as u8 as f64;
            for k in 0..N_CHARACTER_LOOKS {
                match (r.character_looks[k] > 0.5, s.character_looks[k] > 0.5) {
                    (true, true) => ltp += 1,
                    (true, false) => lfp += 1,
                    (false, true) => lfn += 1,
                    _ => {}
                }
            }
            acc.place += (argmax(&r.place) as u32 == s.place) as u8 as f64;
            acc.framing += (argmax(&r.framing) as u32 == s.framing) as u8 as f64;
            acc.lighting += (argmax(&r.lighting) as u32 == s.lighting) as u8 as f64;
            let mut exact = true;
            for c in 0..N_CHARACTERS {
                let (p, t) = (r.characters[c] > 0.5, s.characters[c] > 0.5);
                exact &= p == t;
                match (p, t) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    _ => {}
                }
            }
            acc.characters_exact += exact as u8 as f64;
            cells_right += (0..CELLS).filter(|&k| (r.foreground[k] > 0.5) == (s.foreground[k] > 0.5)).count();
        }
        acc.place /= n;
        acc.framing /= n;
        acc.lighting /= n;
        acc.characters_exact /= n;
        acc.place_look /= n;
        acc.character_looks_f1 = if ltp == 0 { 0.0 } else { 2.0 * ltp as f64 / (2 * ltp + lfp + lfn) as f64 };
        acc.characters_f1 = if tp == 0 { 0.0 } else { 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64 };
        acc.foreground = cells_right as f64 / (n * CELLS as f64);
        Ok(acc)
    }

    /// Fits a probe on rendered stories; `progress(epoch, epochs, loss)` after each epoch.
    pub fn fit(options: &ProbeFitOptions, progress: &mut dyn FnMut(usize, usize, f64)) -> Result<Self> {
        if options.stories == 0 || options.epochs == 0 || options.batch == 0 || options.frame_stride == 0 {
            return Err(EvalError::out_of_range("probe fit options", format!("{options:?}"), "non-zero counts"));
        }
        let samples = render_samples(options.first_seed, options.stories, options.frame_stride, Some(options.seed))?;
        Self::fit_samples(&samples, options, progress)
    }

    /// Fits a probe on given samples.
    pub fn fit_samples(
        samples: &[ProbeSample],
        options: &ProbeFitOptions,
        progress: &mut dyn FnMut(usize, usize, f64),
    ) -> Result<Self> {
        if samples.len() < 2 {
            return Err(EvalError::out_of_range("probe samples", samples.len(), "at least 2"));
        }
        let dev = Device::Cpu;
        let n = samples.len();
        let mut mean = vec![0.0f32; GLOBAL_FEATURES];
        for s in samples {
            for (m, v) in mean.iter_mut().zip(&s.features) {
                *m += v / n as f32;
            }
        }
        let mut std = vec![0.0f32; GLOBAL_FEATURES];
        for s in samples {
            for ((sd, v), m) in std.iter_mut().zip(&s.features).zip(&mean) {
                *sd += (v - m).powi(2) / n as f32;
            }
        }
        let std: Vec<f32> = std.into_iter().map(|v| v.sqrt().max(1e-3)).collect();

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let l1 = linear(GLOBAL_FEATURES, HIDDEN, vb.pp("l1")).map_err(cerr)?;
        let l2 = linear(HIDDEN, EMBEDDING, vb.pp("l2")).map_err(cerr)?;
        let heads = [
            ("place", Place::ALL.len()),
            ("framing", Framing::ALL.len()),
            ("lighting", Lighting::ALL.len()),
            ("characters", N_CHARACTERS),
            ("character_looks", N_CHARACTER_LOOKS),
            ("place_look", LOOKS),
            ("foreground", CELLS),
        ]
        .map(|(name, out)| linear(EMBEDDING, out, vb.pp(name)));
        let [place, framing, lighting, characters, character_looks, place_look, foreground] = heads;
        let mut probe = Probe {
            mean: Tensor::from_vec(mean, GLOBAL_FEATURES, &dev).map_err(cerr)?,
            std: Tensor::from_vec(std, GLOBAL_FEATURES, &dev).map_err(cerr)?,
            l1,
            l2,
            place: place.map_err(cerr)?,
            framing: framing.map_err(cerr)?,
            lighting: lighting.map_err(cerr)?,
            characters: characters.map_err(cerr)?,
            character_looks: character_looks.map_err(cerr)?,
            place_look: place_look.map_err(cerr)?,
            foreground: foreground.map_err(cerr)?,
        };
        let mut opt = candle_nn::AdamW::new(
            varmap.all_vars(),
            candle_nn::ParamsAdamW { lr: options.learning_rate, weight_decay: 1e-4, ..Default::default() },
        )
        .map_err(cerr)?;

        let x_all = stack(&samples.iter().map(|s| s.features.clone()).collect::<Vec<_>>())?;
        let labels =
            |f: &dyn Fn(&ProbeSample) -> u32| Tensor::from_vec(samples.iter().map(f).collect::<Vec<u32>>(), n, &dev);
        let place_t = labels(&|s| s.place).map_err(cerr)?;
        let framing_t = labels(&|s| s.framing).map_err(cerr)?;
        let lighting_t = labels(&|s| s.lighting).map_err(cerr)?;
        let chars_t = stack(&samples.iter().map(|s| s.characters.to_vec()).collect::<Vec<_>>())?;
        let char_looks_t = stack(&samples.iter().map(|s| s.character_looks.to_vec()).collect::<Vec<_>>())?;
        let place_look_t = labels(&|s| s.place_look).map_err(cerr)?;
        let fg_t = stack(&samples.iter().map(|s| s.foreground.to_vec()).collect::<Vec<_>>())?;

        let mut rng = WorldRng::new(options.seed);
        let mut order: Vec<u32> = (0..n as u32).collect();
        for epoch in 0..options.epochs {
            rng.shuffle(&mut order);
            let mut total = 0.0;
            let mut steps = 0;
            // Cosine decay: large steps early, fine ones at the end.
            let lr = options.learning_rate
                * 0.5
                * (1.0 + (std::f64::consts::PI * epoch as f64 / options.epochs as f64).cos()).max(0.02);
            opt.set_learning_rate(lr);
            for batch in order.chunks(options.batch) {
                let idx = Tensor::from_slice(batch, batch.len(), &dev).map_err(cerr)?;
                let pick = |t: &Tensor| t.index_select(&idx, 0);
                let h = probe.heads(&pick(&x_all).map_err(cerr)?).map_err(cerr)?;
                let loss = (candle_nn::loss::cross_entropy(&h.place, &pick(&place_t).map_err(cerr)?).and_then(|a| {
                    a.add(&candle_nn::loss::cross_entropy(&h.framing, &pick(&framing_t)?)?)?
                        .add(&(candle_nn::loss::cross_entropy(&h.lighting, &pick(&lighting_t)?)? * 0.5)?)?
                        .add(&(bce_with_logits(&h.characters, &pick(&chars_t)?)? * 3.0)?)?
                        .add(&(bce_with_logits(&h.character_looks, &pick(&char_looks_t)?)? * 3.0)?)?
                        .add(&candle_nn::loss::cross_entropy(&h.place_look, &pick(&place_look_t)?)?)?
                        .add(&bce_with_logits(&h.foreground, &pick(&fg_t)?)?)
                }))
                .map_err(cerr)?;
                opt.backward_step(&loss).map_err(cerr)?;
                total += loss.to_scalar::<f32>().map_err(cerr)? as f64;
                steps += 1;
            }
            progress(epoch + 1, options.epochs, total / steps.max(1) as f64);
        }
        // The trained Linear layers share storage with the VarMap's variables; detach copies.
        probe.l1 = detach(&probe.l1)?;
        probe.l2 = detach(&probe.l2)?;
        probe.place = detach(&probe.place)?;
        probe.framing = detach(&probe.framing)?;
        probe.lighting = detach(&probe.lighting)?;
        probe.characters = detach(&probe.characters)?;
        probe.character_looks = detach(&probe.character_looks)?;
        probe.place_look = detach(&probe.place_look)?;
        probe.foreground = detach(&probe.foreground)?;
        Ok(probe)
    }
}

/// How a shipped probe was made and how well it reads rendered frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeCard {
    /// How it was fitted.
    pub fit: ProbeFitOptions,
    /// Frames it was fitted on.
    pub fit_frames: usize,
    /// Accuracy on held-out rendered frames.
    pub test_rendered: ProbeAccuracy,
    /// Accuracy on the same frames blurred, as a soft generator's would be.
    pub test_blurred: ProbeAccuracy,
    /// Seconds the fit took.
    pub fit_seconds: f64,
}

fn detach(l: &Linear) -> Result<Linear> {
    let w = l.weight().detach().copy().map_err(cerr)?;
    let b = match l.bias() {
        Some(b) => Some(b.detach().copy().map_err(cerr)?),
        None => None,
    };
    Ok(Linear::new(w, b))
}

/// Binary cross-entropy on logits in the stable form max(x, 0) − x·t + log(1 + e^−|x|):
/// candle's version takes the log of a sigmoid, which is −∞ once a logit saturates.
fn bce_with_logits(x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (x.relu()? - (x * t)?)?.add(&soft)?.mean_all()
}

fn to_array<const N: usize>(v: &[f32]) -> [f32; N] {
    let mut a = [0.0; N];
    a.copy_from_slice(&v[..N]);
    a
}

fn stack(rows: &[Vec<f32>]) -> Result<Tensor> {
    let width = rows.first().map_or(0, |r| r.len());
    if rows.iter().any(|r| r.len() != width) {
        return Err(EvalError::Mismatch("feature rows differ in length".into()));
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu).map_err(cerr)
}

fn cerr(e: candle_core::Error) -> EvalError {
    EvalError::Mismatch(format!("probe tensor error: {e}"))
}

fn io_err(path: &Path, e: std::io::Error) -> EvalError {
    EvalError::Mismatch(format!("{}: {e}", path.display()))
}

/// A labelled sample from a rendered frame and its ground truth.
pub fn sample_from(image: &ProbeImage, truth: &FrameTruth, width: u32, height: u32) -> ProbeSample {
    let mut characters = [0.0; N_CHARACTERS];
    let mut character_looks = [0.0; N_CHARACTER_LOOKS];
    for c in &truth.characters {
        characters[c.character] = 1.0;
        character_looks[c.character * LOOKS + (c.look as usize).min(LOOKS - 1)] = 1.0;
    }
    let mut foreground = [0.0; CELLS];
    let (cw, ch) = (width as f32 / GRID as f32, height as f32 / GRID as f32);
    for (k, cell) in foreground.iter_mut().enumerate() {
        let (x0, y0) = ((k % GRID) as f32 * cw, (k / GRID) as f32 * ch);
        let covered: f32 = truth
            .characters
            .iter()
            .map(|c| {
                let ix = (c.bbox[2].min(x0 + cw) - c.bbox[0].max(x0)).max(0.0);
                let iy = (c.bbox[3].min(y0 + ch) - c.bbox[1].max(y0)).max(0.0);
                ix * iy / (cw * ch)
            })
            .sum();
        *cell = covered.min(1.0);
    }
    ProbeSample {
        features: global_features(image),
        place: truth.place.index() as u32,
        framing: truth.framing.index() as u32,
        lighting: Lighting::ALL.iter().position(|&l| l == truth.lighting).unwrap_or(0) as u32,
        characters,
        character_looks,
        place_look: truth.place_look as u32,
        foreground,
    }
}

/// Labelled samples from `stories` rendered stories starting at `first_seed`, every
/// `stride`-th frame; with `augment`, each frame is also blurred, noised or re-scaled at random.
pub fn render_samples(
    first_seed: u64,
    stories: usize,
    stride: usize,
    augment: Option<u64>,
) -> Result<Vec<ProbeSample>> {
    let per_story: Vec<Result<Vec<ProbeSample>>> = (0..stories)
        .into_par_iter()
        .map(|i| {
            let seed = first_seed + i as u64;
            let story = generate_story(seed, &StoryOptions::default())?;
            let rendered = render_story(&story)?;
            let (w, h) = (story.format.width, story.format.height);
            let mut rng = WorldRng::derived(augment.unwrap_or(0), seed);
            let mut out = Vec::new();
            for (k, (frame, truth)) in rendered.frames.iter().zip(&rendered.truth).enumerate() {
                if k % stride != 0 {
                    continue;
                }
                let image = ProbeImage::new(frame);
                out.push(sample_from(&image, truth, w, h));
                if augment.is_some() {
                    out.push(sample_from(&augment_image(&image, &mut rng), truth, w, h));
                }
            }
            Ok(out)
        })
        .collect();
    let mut all = Vec::new();
    for s in per_story {
        all.extend(s?);
    }
    Ok(all)
}

/// A degraded copy: 4:2:0 chroma, box blur, down-and-up scaling, noise or a colour shift, as
/// generated and H.264-coded frames show.
pub fn augment_image(image: &ProbeImage, rng: &mut WorldRng) -> ProbeImage {
    let mut raw = image.raw.clone();
    if rng.chance(0.5) {
        raw = chroma_420(&raw);
    }
    let passes = rng.range(0, 3);
    for _ in 0..passes {
        raw = box_blur(&raw);
    }
    if rng.chance(0.3) {
        raw = down_up(&raw);
    }
    if rng.chance(0.5) {
        let sigma = rng.range_f(0.01, 0.06) as f32;
        for p in raw.iter_mut() {
            for v in p.iter_mut() {
                // Sum of uniforms: close enough to Gaussian for augmentation.
                let u = (rng.uniform() + rng.uniform() + rng.uniform() - 1.5) as f32 * 2.0;
                *v = (*v + u * sigma).clamp(0.0, 1.0);
            }
        }
    }
    if rng.chance(0.3) {
        let gain = [rng.range_f(0.85, 1.15) as f32, rng.range_f(0.85, 1.15) as f32, rng.range_f(0.85, 1.15) as f32];
        for p in raw.iter_mut() {
            for k in 0..3 {
                p[k] = (p[k] * gain[k]).clamp(0.0, 1.0);
            }
        }
    }
    ProbeImage::from_raw(raw)
}

/// A 3×3 box blur of a probe-sized image.
pub fn box_blur(raw: &[[f32; 3]]) -> Vec<[f32; 3]> {
    let n = PROBE_SIZE as isize;
    let mut out = vec![[0.0f32; 3]; raw.len()];
    for y in 0..n {
        for x in 0..n {
            let mut acc = [0.0f32; 3];
            let mut count = 0.0;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx >= 0 && yy >= 0 && xx < n && yy < n {
                        let p = raw[(yy * n + xx) as usize];
                        for k in 0..3 {
                            acc[k] += p[k];
                        }
                        count += 1.0;
                    }
                }
            }
            out[(y * n + x) as usize] = [acc[0] / count, acc[1] / count, acc[2] / count];
        }
    }
    out
}

/// Halves the colour resolution as yuv420p video does: luma kept per pixel, chroma averaged
/// over 2×2 blocks (BT.601).
pub fn chroma_420(raw: &[[f32; 3]]) -> Vec<[f32; 3]> {
    let n = PROBE_SIZE;
    let ycc = |p: [f32; 3]| {
        let y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        [y, (p[2] - y) * 0.564, (p[0] - y) * 0.713]
    };
    let mut out = raw.to_vec();
    for y in (0..n).step_by(2) {
        for x in (0..n).step_by(2) {
            let cells = [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| (y + dy) * n + x + dx);
            let (mut cb, mut cr) = (0.0, 0.0);
            for &i in &cells {
                let c = ycc(raw[i]);
                cb += c[1] / 4.0;
                cr += c[2] / 4.0;
            }
            for &i in &cells {
                let l = ycc(raw[i])[0];
                let r = l + cr / 0.713;
                let b = l + cb / 0.564;
                let g = (l - 0.299 * r - 0.114 * b) / 0.587;
                out[i] = [r.clamp(0.0, 1.0), g.clamp(0.0, 1.0), b.clamp(0.0, 1.0)];
            }
        }
    }
    out
}

fn down_up(raw: &[[f32; 3]]) -> Vec<[f32; 3]> {
    let n = PROBE_SIZE;
    let mut out = raw.to_vec();
    for y in (0..n).step_by(2) {
        for x in (0..n).step_by(2) {
            let mut acc = [0.0f32; 3];
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = raw[(y + dy) * n + x + dx];
                for k in 0..3 {
                    acc[k] += p[k] / 4.0;
                }
            }
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                out[(y + dy) * n + x + dx] = acc;
            }
        }
    }
    out
}
