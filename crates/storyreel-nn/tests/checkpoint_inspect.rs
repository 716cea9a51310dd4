//! `inspect` on model folders, single files and LoRA checkpoints.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use storyreel_nn::checkpoint::{
    dit_tensor_shapes, inspect, lora_target_paths, save_checkpoint, save_pth_dicts, save_safetensors, CheckpointLayout,
    InferredShape, InspectContent, WeightFormat,
};
use storyreel_nn::WanConfig;

fn tiny_model(cfg: &WanConfig, dtype: DType) -> HashMap<String, Tensor> {
    dit_tensor_shapes(cfg).into_iter().map(|(n, s)| (n, Tensor::zeros(s, dtype, &Device::Cpu).unwrap())).collect()
}

fn lora_keys(cfg: &WanConfig, prefix: &str) -> Vec<(String, Tensor)> {
    let shapes: HashMap<String, Vec<usize>> = dit_tensor_shapes(cfg).into_iter().collect();
    let mut out = Vec::new();
    for p in lora_target_paths(cfg.num_layers) {
        let w = &shapes[&format!("{p}.weight")];
        let a = Tensor::zeros((4, w[1]), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((w[0], 4), DType::F32, &Device::Cpu).unwrap();
        out.push((format!("base_model.model.{prefix}{p}.lora_A.weight"), a));
        out.push((format!("base_model.model.{prefix}{p}.lora_B.weight"), b));
    }
    out
}

#[test]
fn inspect_a_model_folder_with_config() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    save_checkpoint(
        &dir.path().join("diffusion_pytorch_model.safetensors"),
        &tiny_model(&cfg, DType::BF16),
        CheckpointLayout::Wan,
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_json()).unwrap();
    let r = inspect(dir.path()).unwrap();
    assert_eq!(r.format, WeightFormat::Safetensors);
    assert_eq!(r.tensor_count, 69);
    assert_eq!(r.parameter_count, cfg.parameter_count());
    assert_eq!(r.dtypes, BTreeMap::from([("bf16".to_string(), 69)]));
    assert_eq!(r.files.len(), 1);
    match &r.content {
        InspectContent::Model(m) => {
            assert_eq!(m.layout, CheckpointLayout::Wan);
            assert_eq!(m.config.as_ref(), Some(&cfg));
            assert_eq!(m.check, Ok(()));
            assert_eq!(m.inferred.as_ref().unwrap().num_layers, 2);
        }
        other => panic!("{other:?}"),
    }
    let text = r.to_string();
    for needle in
        ["full DiT model", "Wan (original names)", "140,496 parameters", "bf16 ×69", "num_heads 2", "match the config"]
    {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }

    // A config that disagrees with the weights is reported, not fatal.
    let mut three = cfg.clone();
    three.num_layers = 3;
    std::fs::write(dir.path().join("config.json"), three.to_json()).unwrap();
    let r = inspect(dir.path()).unwrap();
    let InspectContent::Model(m) = &r.content else { panic!() };
    assert!(m.check.as_ref().unwrap_err().contains("blocks.2."), "{:?}", m.check);
}

#[test]
fn inspect_a_diffusers_pt_without_config_infers_the_shape() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("transformer.pt");
    save_checkpoint(&path, &tiny_model(&cfg, DType::F32), CheckpointLayout::Diffusers).unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.format, WeightFormat::Pth);
    match &r.content {
        InspectContent::Model(m) => {
            assert_eq!(m.layout, CheckpointLayout::Diffusers);
            assert!(m.config.is_none());
            assert_eq!(
                m.inferred.as_ref().unwrap(),
                &InferredShape {
                    dim: 64,
                    num_layers: 2,
                    ffn_dim: 128,
                    in_dim: 4,
                    out_dim: 4,
                    text_dim: 24,
                    freq_dim: 32,
                    patch_size: [1, 2, 2]
                }
            );
            assert!(m.check.is_ok(), "{:?}", m.check);
        }
        other => panic!("{other:?}"),
    }
    let text = r.to_string();
    assert!(text.contains("num_heads    cannot be inferred"), "{text}");
    assert!(text.contains("diffusers"), "{text}");
}

#[test]
fn inspect_a_shotstream_lora_pt() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.pt");
    let g = lora_keys(&cfg, "model.");
    let c = lora_keys(&cfg, "model.");
    save_pth_dicts(&path, &[("generator_lora", &g), ("critic_lora", &c)]).unwrap();
    let r = inspect(&path).unwrap();
    assert_eq!(r.state_key.as_deref(), Some("generator_lora"));
    assert_eq!(r.tensor_count, 40);
    match &r.content {
        InspectContent::Lora(l) => {
            assert_eq!(l.ranks, vec![4]);
            assert_eq!(l.targets, 20);
            assert_eq!(l.blocks, 2);
            assert_eq!(l.kinds.len(), 10);
            assert!(l.kinds.contains(&"self_attn.q".to_string()) && l.kinds.contains(&"ffn.2".to_string()));
        }
        other => panic!("{other:?}"),
    }
    let text = r.to_string();
    for needle in [
        "LoRA adapter (not a full model)",
        "rank         4",
        "20 linear layers in 2 blocks",
        "critic_lora",
        "alpha = r",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
}

#[test]
fn inspect_a_peft_folder() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let keys: HashMap<String, Tensor> = lora_keys(&cfg, "").into_iter().collect();
    save_safetensors(&dir.path().join("adapter_model.safetensors"), &keys).unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), r#"{"r":4,"lora_alpha":16}"#).unwrap();
    let r = inspect(dir.path()).unwrap();
    let InspectContent::Lora(l) = &r.content else { panic!("{:?}", r.content) };
    assert_eq!(l.targets, 20);
    assert!(l.scale.contains("= 4"), "{}", l.scale);
}
