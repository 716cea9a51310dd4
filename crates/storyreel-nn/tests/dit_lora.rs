//! LoRA: running with adapters equals running with the merged weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use storyreel_nn::checkpoint::{lora_target_paths, merge_lora, LoraWeights};
use storyreel_nn::dit::random_weights;
use storyreel_nn::linear::LoraAdapter;
use storyreel_nn::{FrameInfo, FramePhase, RopeConfig, WanConfig, WanModel};

#[test]
fn merged_lora_equals_running_with_the_adapter() {
    let cfg = WanConfig::tiny();
    let dev = Device::Cpu;
    let base = random_weights(&cfg, 11, DType::F32, &dev).unwrap();
    let rank = 3;
    let mut loras: HashMap<String, LoraWeights> = HashMap::new();
    for path in lora_target_paths(cfg.num_layers) {
        let w = &base[&format!("{path}.weight")];
        let (out_dim, in_dim) = w.dims2().unwrap();
        let a = (Tensor::randn(0f32, 1.0, (rank, in_dim), &dev).unwrap() * 0.2).unwrap();
        let b = (Tensor::randn(0f32, 1.0, (out_dim, rank), &dev).unwrap() * 0.2).unwrap();
        loras.insert(path, LoraWeights { a, b, scale: 0.5 });
    }
    assert_eq!(loras.len(), 10 * cfg.num_layers);

    let mut merged = base.clone();
    assert_eq!(merge_lora(&mut merged, &loras).unwrap(), loras.len());
    let merged_model = WanModel::from_tensors(merged, &cfg, RopeConfig::default(), DType::F32, &dev).unwrap();

    let mut adapted = WanModel::from_tensors(base.clone(), &cfg, RopeConfig::default(), DType::F32, &dev).unwrap();
    let adapters = loras
        .iter()
        .map(|(k, l)| (k.clone(), LoraAdapter { a: l.a.clone(), b: l.b.clone(), scale: l.scale }))
        .collect();
    assert_eq!(adapted.set_lora(adapters).unwrap(), loras.len());
    let plain = WanModel::from_tensors(base, &cfg, RopeConfig::default(), DType::F32, &dev).unwrap();

    let x = Tensor::randn(0f32, 1.0, (3, cfg.in_dim, 4, 6), &dev).unwrap();
    let caps = Tensor::randn(0f32, 1.0, (1, cfg.text_len, cfg.text_dim), &dev).unwrap();
    let frames: Vec<_> =
        (0..3).map(|i| FrameInfo { t: 500.0, phase: FramePhase { position: i, shot_flag: 1 }, caption: 0 }).collect();
    let run = |m: &WanModel| m.forward_bidirectional(&x, &frames, &m.embed_captions(&caps).unwrap()).unwrap();
    let (a, b, c) = (run(&adapted), run(&merged_model), run(&plain));
    let diff = |p: &Tensor, q: &Tensor| (p - q).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff(&a, &b) / scale < 1e-5, "adapter vs merged: {}", diff(&a, &b) / scale);
    assert!(diff(&a, &c) / scale > 1e-3, "the adapter had no effect");
}

#[test]
fn adapters_with_wrong_shapes_or_targets_are_rejected() {
    let cfg = WanConfig::tiny();
    let dev = Device::Cpu;
    let mut m = WanModel::from_tensors(
        random_weights(&cfg, 1, DType::F32, &dev).unwrap(),
        &cfg,
        RopeConfig::default(),
        DType::F32,
        &dev,
    )
    .unwrap();
    let bad = LoraAdapter {
        a: Tensor::zeros((2, 5), DType::F32, &dev).unwrap(),
        b: Tensor::zeros((cfg.dim, 2), DType::F32, &dev).unwrap(),
        scale: 1.0,
    };
    let err = m.set_lora([("blocks.0.self_attn.q".to_string(), bad.clone())].into()).unwrap_err().to_string();
    assert!(err.contains("blocks.0.self_attn.q"), "{err}");
    let err = m.set_lora([("blocks.9.ffn.0".to_string(), bad)].into()).unwrap_err().to_string();
    assert!(err.contains("blocks.9.ffn.0"), "{err}");
}
