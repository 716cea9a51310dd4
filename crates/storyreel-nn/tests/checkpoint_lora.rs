//! LoRA: PEFT folders, ShotStream `.pt` files, plain and kohya-style safetensors are read under
//! canonical paths, and `merge_lora` equals W + scale·B·A computed independently.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use storyreel_nn::checkpoint::{
    dit_tensor_shapes, from_canonical, lora_target_paths, merge_lora, read_lora, save_checkpoint, save_pth_dicts,
    save_safetensors, CheckpointLayout, LoraWeights,
};
use storyreel_nn::{NnError, WanConfig};

mod common;
use common::bits;

const RANK: usize = 4;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn tiny_model(cfg: &WanConfig) -> HashMap<String, Tensor> {
    dit_tensor_shapes(cfg).into_iter().map(|(n, s)| (n, randn(&s))).collect()
}

/// Random adapters for every ShotStream target: canonical path → (A [r, in], B [out, r]).
fn adapters(cfg: &WanConfig) -> Vec<(String, Tensor, Tensor)> {
    let shapes: HashMap<String, Vec<usize>> = dit_tensor_shapes(cfg).into_iter().collect();
    lora_target_paths(cfg.num_layers)
        .into_iter()
        .map(|p| {
            let w = &shapes[&format!("{p}.weight")];
            let (a, b) = (randn(&[RANK, w[1]]), randn(&[w[0], RANK]));
            (p, a, b)
        })
        .collect()
}

/// PEFT keys for the adapters; `module` turns a canonical path into the stored module path.
fn peft_keys(ad: &[(String, Tensor, Tensor)], module: impl Fn(&str) -> String) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (p, a, b) in ad {
        let m = module(p);
        out.push((format!("base_model.model.{m}.lora_A.weight"), a.clone()));
        out.push((format!("base_model.model.{m}.lora_B.weight"), b.clone()));
    }
    out
}

fn check_read(loras: &HashMap<String, LoraWeights>, ad: &[(String, Tensor, Tensor)], scale: f64) {
    assert_eq!(loras.len(), ad.len());
    for (p, a, b) in ad {
        let l = loras.get(p).unwrap_or_else(|| panic!("no LoRA for {p}; have {:?}", loras.keys()));
        assert_eq!(l.rank(), RANK);
        assert_eq!(l.scale, scale, "{p}");
        assert_eq!(bits(&l.a), bits(a), "{p} A");
        assert_eq!(bits(&l.b), bits(b), "{p} B");
    }
}

fn diffusers_module(p: &str) -> String {
    let w = from_canonical(&format!("{p}.weight"), CheckpointLayout::Diffusers);
    w.strip_suffix(".weight").unwrap().to_string()
}

fn write_st(path: &Path, tensors: Vec<(String, Tensor)>) {
    save_safetensors(path, &tensors.into_iter().collect()).unwrap();
}

#[test]
fn peft_folder_uses_alpha_over_r() {
    let cfg = WanConfig::tiny();
    let ad = adapters(&cfg);
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("adapter_model.safetensors"), peft_keys(&ad, |p| p.to_string()));
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"lora_dropout":0.0,"target_modules":["q","k","v","o","ffn.0","ffn.2"]}"#,
    )
    .unwrap();
    let loras = read_lora(dir.path(), DType::F32, &Device::Cpu).unwrap();
    check_read(&loras, &ad, 2.0);
    // The adapter file on its own still finds its sibling config.
    let loras = read_lora(&dir.path().join("adapter_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    check_read(&loras, &ad, 2.0);
}

#[test]
fn shotstream_pt_reads_generator_lora_with_scale_one() {
    let cfg = WanConfig::tiny();
    let gen = adapters(&cfg);
    let critic = adapters(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora_step_100.pt");
    let g = peft_keys(&gen, |p| format!("model.{p}"));
    let c = peft_keys(&critic, |p| format!("model.{p}"));
    save_pth_dicts(&path, &[("generator_lora", &g), ("critic_lora", &c)]).unwrap();
    let loras = read_lora(&path, DType::F32, &Device::Cpu).unwrap();
    check_read(&loras, &gen, 1.0);
}

#[test]
fn plain_safetensors_in_diffusers_naming_and_bf16() {
    let cfg = WanConfig::tiny();
    let ad: Vec<(String, Tensor, Tensor)> = adapters(&cfg)
        .into_iter()
        .map(|(p, a, b)| (p, a.to_dtype(DType::BF16).unwrap(), b.to_dtype(DType::BF16).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.safetensors");
    write_st(&path, peft_keys(&ad, diffusers_module));
    let loras = read_lora(&path, DType::F32, &Device::Cpu).unwrap();
    check_read(&loras, &ad, 1.0);
    assert!(loras.values().all(|l| l.a.dtype() == DType::F32));
    assert!(loras.contains_key("blocks.1.ffn.0") && loras.contains_key("blocks.0.cross_attn.o"));
}

#[test]
fn kohya_style_alpha_tensors_set_the_scale() {
    let cfg = WanConfig::tiny();
    let ad = adapters(&cfg);
    let mut keys = Vec::new();
    for (p, a, b) in &ad {
        keys.push((format!("diffusion_model.{p}.lora_down.weight"), a.clone()));
        keys.push((format!("diffusion_model.{p}.lora_up.weight"), b.clone()));
        keys.push((format!("diffusion_model.{p}.alpha"), Tensor::new(2f32, &Device::Cpu).unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kohya.safetensors");
    write_st(&path, keys);
    check_read(&read_lora(&path, DType::F32, &Device::Cpu).unwrap(), &ad, 0.5);
}

/// W + s·B·A in f64 from plain vectors.
fn reference_merge(w: &Tensor, a: &Tensor, b: &Tensor, s: f64) -> Vec<Vec<f64>> {
    let w = w.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let a = a.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let mut out = w.clone();
    for (o, row) in out.iter_mut().enumerate() {
        for (i, x) in row.iter_mut().enumerate() {
            let dot: f64 = (0..a.len()).map(|k| b[o][k] * a[k][i]).sum();
            *x += s * dot;
        }
    }
    out
}

#[test]
fn merge_equals_w_plus_scaled_b_times_a() {
    let cfg = WanConfig::tiny();
    let base = tiny_model(&cfg);
    let ad = adapters(&cfg);
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("adapter_model.safetensors"), peft_keys(&ad, |p| p.to_string()));
    std::fs::write(dir.path().join("adapter_config.json"), r#"{"r":4,"lora_alpha":2}"#).unwrap();
    let loras = read_lora(dir.path(), DType::F32, &Device::Cpu).unwrap();

    let mut merged = base.clone();
    assert_eq!(merge_lora(&mut merged, &loras).unwrap(), 20);
    for (name, t) in &base {
        let target = ad.iter().find(|(p, _, _)| format!("{p}.weight") == *name);
        match target {
            None => assert_eq!(bits(t), bits(&merged[name]), "{name} must be untouched"),
            Some((_, a, b)) => {
                let expected = reference_merge(t, a, b, 0.5);
                let got = merged[name].to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
                for (er, gr) in expected.iter().zip(&got) {
                    for (e, g) in er.iter().zip(gr) {
                        assert!((e - g).abs() <= 1e-5 * (1.0 + e.abs()), "{name}: {e} vs {g}");
                    }
                }
            }
        }
    }

    // bf16 weights stay bf16 and equal the f32 merge rounded once.
    let mut bf: HashMap<String, Tensor> =
        base.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::BF16).unwrap())).collect();
    merge_lora(&mut bf, &loras).unwrap();
    let name = "blocks.1.ffn.2.weight";
    assert_eq!(bf[name].dtype(), DType::BF16);
    let (_, a, b) = ad.iter().find(|(p, _, _)| p == "blocks.1.ffn.2").unwrap();
    let w_bf = base[name].to_dtype(DType::BF16).unwrap();
    let expected = reference_merge(&w_bf, a, b, 0.5);
    let got = bf[name].to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    for (er, gr) in expected.iter().zip(&got) {
        for (e, g) in er.iter().zip(gr) {
            assert!((e - g).abs() <= 1e-2 * (1.0 + e.abs()), "{e} vs {g}");
        }
    }
}

#[test]
fn merge_errors_name_the_weight_and_shapes_and_change_nothing() {
    let cfg = WanConfig::tiny();
    let base = tiny_model(&cfg);
    let lw = |a: &[usize], b: &[usize]| LoraWeights { a: randn(a), b: randn(b), scale: 1.0 };

    let mut loras = HashMap::new();
    loras.insert("blocks.0.self_attn.q".to_string(), lw(&[4, 64], &[64, 4]));
    loras.insert("blocks.7.self_attn.q".to_string(), lw(&[4, 64], &[64, 4]));
    let mut t = base.clone();
    let err = merge_lora(&mut t, &loras).unwrap_err();
    assert!(matches!(err, NnError::MissingTensor { .. }), "{err:?}");
    assert!(err.to_string().contains("blocks.7.self_attn.q.weight"), "{err}");
    assert_eq!(bits(&t["blocks.0.self_attn.q.weight"]), bits(&base["blocks.0.self_attn.q.weight"]));

    let mut loras = HashMap::new();
    loras.insert("blocks.1.ffn.0".to_string(), lw(&[4, 32], &[128, 4]));
    let err = merge_lora(&mut t, &loras).unwrap_err().to_string();
    assert!(err.contains("blocks.1.ffn.0.weight") && err.contains("[128, 32]") && err.contains("[128, 64]"), "{err}");

    let mut loras = HashMap::new();
    loras.insert("blocks.1.ffn.0".to_string(), lw(&[4, 64], &[128, 3]));
    let err = merge_lora(&mut t, &loras).unwrap_err().to_string();
    assert!(err.contains("blocks.1.ffn.0") && err.contains("[4, 64]") && err.contains("[128, 3]"), "{err}");
}

#[test]
fn non_lora_files_and_half_adapters_are_rejected() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("model.safetensors");
    save_checkpoint(&full, &tiny_model(&cfg), CheckpointLayout::Wan).unwrap();
    let err = read_lora(&full, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("not a LoRA weight") && err.contains("model.safetensors"), "{err}");

    let half = dir.path().join("half.safetensors");
    write_st(&half, vec![("base_model.model.blocks.0.self_attn.q.lora_A.weight".into(), randn(&[4, 64]))]);
    let err = read_lora(&half, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("blocks.0.self_attn.q") && err.contains("lora_B"), "{err}");

    let bad_rank = dir.path().join("rank.safetensors");
    write_st(
        &bad_rank,
        vec![
            ("blocks.0.self_attn.q.lora_A.weight".into(), randn(&[4, 64])),
            ("blocks.0.self_attn.q.lora_B.weight".into(), randn(&[64, 8])),
        ],
    );
    let err = read_lora(&bad_rank, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("[4, 64]") && err.contains("[64, 8]"), "{err}");
}
