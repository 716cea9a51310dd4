//! Reading and checking a taew2_1 checkpoint (`taew2_1.pth` state dict or
//! `taew2_1.safetensors`): every name and shape is checked from the headers before any tensor
//! is read, and errors name the tensor.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::arch::{stack_tensors, tgrow_weight, TinyVaeConfig};
use crate::checkpoint::TensorFiles;
use crate::error::{NnError, Result};

/// Expected tensors of `config`: the decoder always, the encoder when `with_encoder`.
pub(crate) fn expected_tensors(config: &TinyVaeConfig, with_encoder: bool) -> Vec<(String, Vec<usize>)> {
    let mut v = stack_tensors("decoder", &config.decoder());
    if with_encoder {
        v.extend(stack_tensors("encoder", &config.encoder()));
    }
    v
}

/// How a stored tensor is turned into the model's: as is, or keeping the last `rows` output
/// channels (an oversized TGrow, as the reference's `patch_tgrow_layers` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    All,
    LastRows(usize),
}

/// Checks stored names and shapes against the architecture. The encoder is expected when any
/// `encoder.` tensor is present (a decoder-only file is valid). Reports the first shape
/// mismatch, then the first missing tensor, then unexpected extras.
pub(crate) fn check(
    config: &TinyVaeConfig,
    found: &BTreeMap<String, Vec<usize>>,
) -> Result<(bool, BTreeMap<String, Take>)> {
    let with_encoder = found.keys().any(|n| n.starts_with("encoder."));
    let expected = expected_tensors(config, with_encoder);
    let decoder = config.decoder();
    let mut plan = BTreeMap::new();
    for (name, shape) in &expected {
        let Some(f) = found.get(name) else { continue };
        let take = if f == shape {
            Take::All
        } else {
            match tgrow_weight(&decoder, name) {
                // More output channels than this model's stride needs: the last n·s are the
                // latest frames' channels, which is what a smaller stride keeps.
                Some(_) if f.len() == 4 && f[0] > shape[0] && f[1..] == shape[1..] => Take::LastRows(shape[0]),
                _ => {
                    return Err(NnError::ShapeMismatch {
                        name: name.clone(),
                        expected: shape.clone(),
                        found: f.clone(),
                    })
                }
            }
        };
        plan.insert(name.clone(), take);
    }
    if let Some((name, shape)) = expected.iter().find(|(n, _)| !found.contains_key(n)) {
        return Err(NnError::MissingTensor { name: name.clone(), expected: shape.clone() });
    }
    let extra: Vec<_> = found.iter().filter(|(n, _)| !plan.contains_key(*n)).collect();
    if let Some((first, shape)) = extra.first() {
        return Err(NnError::UnexpectedTensors {
            count: extra.len(),
            first: (*first).clone(),
            shape: (*shape).clone(),
        });
    }
    Ok((with_encoder, plan))
}

/// Reads a checkpoint's tensors (reference names), checked against `config` and converted to
/// `dtype` on `device`; also says whether it has an encoder.
pub(crate) fn read(
    path: &Path,
    config: &TinyVaeConfig,
    dtype: DType,
    device: &Device,
) -> Result<(bool, HashMap<String, Tensor>)> {
    let files = TensorFiles::open(path)?;
    let found: BTreeMap<String, Vec<usize>> =
        files.headers().iter().map(|h| (h.name.clone(), h.shape.clone())).collect();
    let (with_encoder, plan) = check(config, &found)?;
    let mut out = HashMap::with_capacity(plan.len());
    for (name, take) in plan {
        let t = files.load(&name, dtype, device)?;
        let t = match take {
            Take::All => t,
            Take::LastRows(rows) => {
                let total = t.dim(0)?;
                t.narrow(0, total - rows, rows)?.contiguous()?
            }
        };
        out.insert(name, t);
    }
    Ok((with_encoder, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(with_encoder: bool) -> BTreeMap<String, Vec<usize>> {
        expected_tensors(&TinyVaeConfig::taew2_1(), with_encoder).into_iter().collect()
    }

    fn check(found: &BTreeMap<String, Vec<usize>>) -> Result<(bool, BTreeMap<String, Take>)> {
        super::check(&TinyVaeConfig::taew2_1(), found)
    }

    #[test]
    fn decoder_only_and_full_layouts_pass() {
        assert!(!check(&all(false)).unwrap().0);
        assert!(check(&all(true)).unwrap().0);
    }

    #[test]
    fn oversized_tgrow_keeps_the_last_rows() {
        let mut f = all(false);
        f.insert("decoder.7.conv.weight".into(), vec![512, 256, 1, 1]);
        let (_, plan) = check(&f).unwrap();
        assert_eq!(plan["decoder.7.conv.weight"], Take::LastRows(256));
        // Oversized anywhere else is a mismatch.
        let mut f = all(false);
        f.insert("decoder.8.weight".into(), vec![256, 256, 3, 3]);
        assert!(matches!(check(&f), Err(NnError::ShapeMismatch { name, .. }) if name == "decoder.8.weight"));
        // A smaller TGrow cannot be patched.
        let mut f = all(false);
        f.insert("decoder.13.conv.weight".into(), vec![128, 128, 1, 1]);
        assert!(matches!(check(&f), Err(NnError::ShapeMismatch { .. })));
    }

    #[test]
    fn partial_encoder_is_missing_tensors() {
        let mut f = all(false);
        f.insert("encoder.0.weight".into(), vec![64, 3, 3, 3]);
        assert!(matches!(check(&f), Err(NnError::MissingTensor { name, .. }) if name == "encoder.0.bias"));
    }

    #[test]
    fn extras_are_reported() {
        let mut f = all(false);
        f.insert("decoder.99.weight".into(), vec![1]);
        assert!(matches!(check(&f), Err(NnError::UnexpectedTensors { first, .. }) if first == "decoder.99.weight"));
    }
}
