//! Loading DiT checkpoints: the three layouts in safetensors and PyTorch form give bit-identical
//! canonical tensors; shards, dtype conversion, folder discovery and every error path.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use storyreel_nn::checkpoint::{
    dit_tensor_shapes, find_model_files, from_canonical, load_dit_checkpoint, load_dit_checkpoint_from_key,
    rename_to_layout, save_checkpoint, save_pth, save_pth_dicts, save_safetensors, CheckpointLayout, WeightFormat,
};
use storyreel_nn::{NnError, WanConfig};

mod common;
use common::bits;

fn tiny_model(cfg: &WanConfig, dtype: DType) -> HashMap<String, Tensor> {
    dit_tensor_shapes(cfg)
        .into_iter()
        .map(|(n, s)| (n, Tensor::randn(0f32, 1.0, s, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()))
        .collect()
}

fn assert_identical(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    let ka: BTreeMap<_, _> = a.keys().map(|k| (k, ())).collect();
    let kb: BTreeMap<_, _> = b.keys().map(|k| (k, ())).collect();
    assert_eq!(ka, kb, "{what}: names differ");
    for (name, t) in a {
        let u = &b[name];
        assert_eq!(t.dims(), u.dims(), "{what}: {name}");
        assert_eq!(t.dtype(), u.dtype(), "{what}: {name}");
        assert!(bits(t) == bits(u), "{what}: {name} differs");
    }
}

fn sorted(v: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut v = v;
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn tensor_shapes_add_up_to_the_parameter_count() {
    for cfg in [WanConfig::tiny(), WanConfig::wan_1_3b()] {
        let shapes = dit_tensor_shapes(&cfg);
        assert_eq!(shapes.len(), 15 + 27 * cfg.num_layers);
        let total: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total, cfg.parameter_count());
        let names: std::collections::HashSet<_> = shapes.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), shapes.len(), "duplicate names");
    }
    let big = dit_tensor_shapes(&WanConfig::wan_1_3b());
    assert_eq!(big.len(), 825);
    let get = |n: &str| big.iter().find(|(m, _)| m == n).unwrap().1.clone();
    assert_eq!(get("patch_embedding.weight"), vec![1536, 16, 1, 2, 2]);
    assert_eq!(get("head.head.weight"), vec![64, 1536]);
    assert_eq!(get("time_projection.1.weight"), vec![9216, 1536]);
    assert_eq!(get("blocks.29.modulation"), vec![1, 6, 1536]);
    assert_eq!(get("blocks.0.ffn.2.weight"), vec![1536, 8960]);
}

#[test]
fn every_layout_and_format_loads_to_the_same_canonical_tensors() {
    let cfg = WanConfig::tiny();
    let model = tiny_model(&cfg, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);

    // (file, expected layout, expected state key)
    let mut cases: Vec<(PathBuf, CheckpointLayout, Option<&str>)> = Vec::new();
    for layout in [CheckpointLayout::Wan, CheckpointLayout::ShotStream, CheckpointLayout::Diffusers] {
        let st = d(&format!("{layout:?}.safetensors"));
        save_checkpoint(&st, &model, layout).unwrap();
        cases.push((st, layout, None));
        let pt = d(&format!("{layout:?}.pt"));
        save_checkpoint(&pt, &model, layout).unwrap();
        let key = (layout == CheckpointLayout::ShotStream).then_some("generator");
        cases.push((pt, layout, key));
    }
    // Self-Forcing style: generator and generator_ema side by side; EMA is preferred by default.
    let sf = d("self_forcing.pt");
    let ema_model = tiny_model(&cfg, DType::F32);
    let named = rename_to_layout(&model, CheckpointLayout::ShotStream);
    let named_ema = rename_to_layout(&ema_model, CheckpointLayout::ShotStream);
    save_pth_dicts(&sf, &[("generator", &named), ("generator_ema", &named_ema)]).unwrap();
    // Diffusers names under `state_dict`, Wan names under `model`, torch.compile / DDP prefixes.
    let dsd = d("diffusers_state_dict.pth");
    save_pth(&dsd, &rename_to_layout(&model, CheckpointLayout::Diffusers), Some("state_dict")).unwrap();
    cases.push((dsd, CheckpointLayout::Diffusers, Some("state_dict")));
    let wm = d("wan_model.bin");
    save_pth(&wm, &rename_to_layout(&model, CheckpointLayout::Wan), Some("model")).unwrap();
    cases.push((wm, CheckpointLayout::Wan, Some("model")));
    let compiled = d("compiled.safetensors");
    let prefixed: HashMap<String, Tensor> =
        model.iter().map(|(n, t)| (format!("_orig_mod.module.model.{n}"), t.clone())).collect();
    save_safetensors(&compiled, &prefixed).unwrap();
    cases.push((compiled, CheckpointLayout::ShotStream, None));

    for (path, layout, key) in &cases {
        let loaded = load_dit_checkpoint(path, &cfg, DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(loaded.layout, *layout, "{}", path.display());
        assert_eq!(loaded.state_key.as_deref(), *key, "{}", path.display());
        assert_eq!(loaded.files, vec![path.clone()]);
        assert_eq!(loaded.stored_dtypes, BTreeMap::from([("f32".to_string(), 15 + 27 * cfg.num_layers)]));
        assert_identical(&model, &loaded.tensors, &path.display().to_string());
    }

    let ema = load_dit_checkpoint(&sf, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ema.state_key.as_deref(), Some("generator_ema"));
    assert_identical(&ema_model, &ema.tensors, "generator_ema");
    let gen = load_dit_checkpoint_from_key(&sf, "generator", &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_identical(&model, &gen.tensors, "generator");
}

#[test]
fn layout_names_match_the_reference_checkpoints() {
    let cfg = WanConfig::tiny();
    let model = tiny_model(&cfg, DType::F32);
    let dif: Vec<String> = rename_to_layout(&model, CheckpointLayout::Diffusers).into_iter().map(|(n, _)| n).collect();
    for name in [
        "scale_shift_table",
        "proj_out.weight",
        "condition_embedder.time_proj.weight",
        "condition_embedder.text_embedder.linear_1.bias",
        "blocks.1.norm2.weight",
        "blocks.1.attn1.to_out.0.weight",
        "blocks.1.attn2.norm_q.weight",
        "blocks.1.ffn.net.0.proj.bias",
        "blocks.1.scale_shift_table",
    ] {
        assert!(dif.iter().any(|n| n == name), "{name} missing from diffusers names");
    }
    assert!(!dif.iter().any(|n| n.contains("norm3")));
    assert_eq!(from_canonical("blocks.0.ffn.0.weight", CheckpointLayout::ShotStream), "model.blocks.0.ffn.0.weight");
}

fn write_shards(dir: &Path, model: &HashMap<String, Tensor>, with_index: bool) {
    let names = sorted(model.iter().map(|(n, t)| (n.clone(), t.clone())).collect());
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let map: HashMap<String, Tensor> = part.iter().cloned().collect();
        save_safetensors(&dir.join(&file), &map).unwrap();
        for (n, _) in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    if with_index {
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

#[test]
fn sharded_safetensors_load_from_folder_and_index() {
    let cfg = WanConfig::tiny();
    let model = tiny_model(&cfg, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    write_shards(dir.path(), &model, true);
    // Files a Wan model folder also holds: config, tokenizer, T5 and VAE weights (never read).
    std::fs::write(dir.path().join("config.json"), cfg.to_json()).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.path().join("models_t5_umt5-xxl-enc-bf16.pth"), b"not a checkpoint").unwrap();
    std::fs::write(dir.path().join("Wan2.1_VAE.pth"), b"not a checkpoint").unwrap();

    let mf = find_model_files(dir.path()).unwrap();
    assert_eq!(mf.format, WeightFormat::Safetensors);
    assert_eq!(mf.config, Some(dir.path().join("config.json")));
    assert_eq!(mf.weights.len(), 2);
    assert!(mf.index.is_some());

    let from_dir = load_dit_checkpoint(dir.path(), &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(from_dir.files, mf.weights);
    assert_identical(&model, &from_dir.tensors, "folder");
    let index = dir.path().join("diffusion_pytorch_model.safetensors.index.json");
    let from_index = load_dit_checkpoint(&index, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_identical(&model, &from_index.tensors, "index");

    // Without the index the shards are still read together.
    let plain = tempfile::tempdir().unwrap();
    write_shards(plain.path(), &model, false);
    let loaded = load_dit_checkpoint(plain.path(), &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.files.len(), 2);
    assert_identical(&model, &loaded.tensors, "shards without index");

    // An index that names a missing shard, or puts a tensor in the wrong shard, is an error.
    std::fs::remove_file(dir.path().join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    let err = load_dit_checkpoint(dir.path(), &cfg, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("00002-of-00002") && err.contains("missing"), "{err}");
    let text = std::fs::read_to_string(&index).unwrap().replace("00002-of", "00001-of");
    std::fs::write(&index, text).unwrap();
    let err = load_dit_checkpoint(dir.path(), &cfg, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("is listed in shard"), "{err}");
}

#[test]
fn stored_dtype_is_converted_on_load() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let bf = tiny_model(&cfg, DType::BF16);
    let n = 15 + 27 * cfg.num_layers;
    for file in ["bf16.safetensors", "bf16.pt"] {
        let path = dir.path().join(file);
        save_checkpoint(&path, &bf, CheckpointLayout::Wan).unwrap();
        let loaded = load_dit_checkpoint(&path, &cfg, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(loaded.stored_dtypes, BTreeMap::from([("bf16".to_string(), n)]));
        let expected: HashMap<String, Tensor> =
            bf.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::F32).unwrap())).collect();
        assert_identical(&expected, &loaded.tensors, file);
    }
    let f32m = tiny_model(&cfg, DType::F32);
    for file in ["f32.safetensors", "f32.pt"] {
        let path = dir.path().join(file);
        save_checkpoint(&path, &f32m, CheckpointLayout::Diffusers).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let loaded = load_dit_checkpoint(&path, &cfg, dtype, &Device::Cpu).unwrap();
            let expected: HashMap<String, Tensor> =
                f32m.iter().map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap())).collect();
            assert_identical(&expected, &loaded.tensors, file);
        }
    }
}

fn load_err(path: &Path) -> String {
    let cfg = WanConfig::tiny();
    match load_dit_checkpoint(path, &cfg, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_files_are_clear_errors_naming_the_file() {
    let cfg = WanConfig::tiny();
    let model = tiny_model(&cfg, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("good.safetensors");
    let pt = dir.path().join("good.pt");
    save_checkpoint(&st, &model, CheckpointLayout::Wan).unwrap();
    save_checkpoint(&pt, &model, CheckpointLayout::ShotStream).unwrap();

    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    for src in [&st, &pt] {
        let bytes = std::fs::read(src).unwrap();
        let ext = src.extension().unwrap().to_string_lossy().to_string();
        for (label, data) in [
            ("half", bytes[..bytes.len() / 2].to_vec()),
            ("minus1", bytes[..bytes.len() - 1].to_vec()),
            ("head", bytes[..7.min(bytes.len())].to_vec()),
            ("empty", Vec::new()),
            ("random", random(4096)),
            ("random_zip_magic", [b"PK\x03\x04".to_vec(), random(4096)].concat()),
        ] {
            let path = dir.path().join(format!("{label}.{ext}"));
            std::fs::write(&path, &data).unwrap();
            let err = load_dit_checkpoint(&path, &cfg, DType::F32, &Device::Cpu).unwrap_err();
            assert!(matches!(err, NnError::BadCheckpoint { .. }), "{label}.{ext}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{label}.{ext}")), "{msg}");
        }
    }
    let err = load_err(&dir.path().join("nope.safetensors"));
    assert!(err.contains("nope.safetensors"), "{err}");
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        std::io::Write::write_all(&mut z, data).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn a_corrupt_pickle_inside_a_valid_zip_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weird.pt");
    for (pkl, expect) in [
        (&[0x80, 2, 0x8a, 0xff, 1, 2, 3][..], "malformed pickle"), // LONG1 with 255 bytes
        (&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f][..], "malformed pickle"), // string past the end
        (&[0x80, 2, b'}', b'.'][..], "no tensors found"),
        (&[0x80, 2, b'K', 1, b'.'][..], "not a dict"),
    ] {
        write_zip(&path, &[("archive/data.pkl", pkl)]);
        let err = load_err(&path);
        assert!(err.contains("weird.pt") && err.contains(expect), "{err}");
    }
    write_zip(&path, &[("archive/version", b"3\n")]);
    let err = load_err(&path);
    assert!(err.contains("without data.pkl"), "{err}");
}

#[test]
fn a_pth_whose_storage_is_missing_or_short_is_an_error() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pt");
    save_checkpoint(&good, &tiny_model(&cfg, DType::F32), CheckpointLayout::Wan).unwrap();
    let mut src = zip::ZipArchive::new(std::fs::File::open(&good).unwrap()).unwrap();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..src.len() {
        let mut f = src.by_index(i).unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        entries.push((f.name().unwrap().to_string(), v));
    }
    // Shorten storage 3 and drop storage 5.
    let short = dir.path().join("short.pt");
    let edited: Vec<(String, Vec<u8>)> = entries
        .iter()
        .filter(|(n, _)| n != "archive/data/5")
        .map(
            |(n, v)| {
                if n == "archive/data/3" {
                    (n.clone(), v[..v.len() - 4].to_vec())
                } else {
                    (n.clone(), v.clone())
                }
            },
        )
        .collect();
    let refs: Vec<(&str, &[u8])> = edited.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    write_zip(&short, &refs);
    let err = load_err(&short);
    assert!(err.contains("short.pt") && (err.contains("truncated") || err.contains("missing")), "{err}");
}

#[test]
fn wrong_missing_and_unexpected_tensors_are_named() {
    let cfg = WanConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_model(&cfg, DType::F32);

    // Wrong shape: the message names the canonical tensor and both shapes, in every layout.
    let mut wrong = base.clone();
    wrong.insert("blocks.1.ffn.0.weight".into(), Tensor::zeros((129, 64), DType::F32, &Device::Cpu).unwrap());
    for (file, layout) in [("w.safetensors", CheckpointLayout::Diffusers), ("w.pt", CheckpointLayout::ShotStream)] {
        let path = dir.path().join(file);
        save_checkpoint(&path, &wrong, layout).unwrap();
        let err = load_dit_checkpoint(&path, &cfg, DType::F32, &Device::Cpu).unwrap_err();
        match &err {
            NnError::ShapeMismatch { name, expected, found } => {
                assert_eq!(name, "blocks.1.ffn.0.weight");
                assert_eq!(expected, &vec![128, 64]);
                assert_eq!(found, &vec![129, 64]);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("blocks.1.ffn.0.weight") && msg.contains("[129, 64]") && msg.contains("[128, 64]"),
            "{msg}"
        );
    }

    // Missing tensor.
    let mut missing = base.clone();
    missing.remove("blocks.1.norm3.bias");
    let path = dir.path().join("m.safetensors");
    save_checkpoint(&path, &missing, CheckpointLayout::Diffusers).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("blocks.1.norm3.bias") && msg.contains("missing") && msg.contains("[64]"), "{msg}");

    // Unexpected tensors are reported under their stored names.
    let mut extra = base.clone();
    extra.insert("blocks.0.extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    extra.insert("blocks.2.modulation".into(), Tensor::zeros((1, 6, 64), DType::F32, &Device::Cpu).unwrap());
    let path = dir.path().join("u.pt");
    save_checkpoint(&path, &extra, CheckpointLayout::ShotStream).unwrap();
    let err = load_dit_checkpoint(&path, &cfg, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, NnError::UnexpectedTensors { count: 2, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("2 unexpected") && msg.contains("model.blocks.0.extra.weight"), "{msg}");

    // A config with fewer layers than the checkpoint sees the extra blocks as unexpected.
    let mut one = cfg.clone();
    one.num_layers = 1;
    let path = dir.path().join("full.safetensors");
    save_checkpoint(&path, &base, CheckpointLayout::Wan).unwrap();
    let err = load_dit_checkpoint(&path, &one, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, NnError::UnexpectedTensors { count: 27, .. }), "{err:?}");
}

#[test]
fn model_folders_without_weights_or_with_ambiguous_weights_are_rejected() {
    let cfg = WanConfig::tiny();
    let model = tiny_model(&cfg, DType::F32);

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("config.json"), cfg.to_json()).unwrap();
    std::fs::write(empty.path().join("Wan2.1_VAE.pth"), b"x").unwrap();
    let err = find_model_files(empty.path()).unwrap_err().to_string();
    assert!(err.contains("no DiT weights") && err.contains("Wan2.1_VAE.pth"), "{err}");

    let both = tempfile::tempdir().unwrap();
    save_checkpoint(&both.path().join("a.safetensors"), &model, CheckpointLayout::Wan).unwrap();
    save_checkpoint(&both.path().join("b.pt"), &model, CheckpointLayout::ShotStream).unwrap();
    let err = find_model_files(both.path()).unwrap_err().to_string();
    assert!(err.contains("ambiguous") && err.contains("a.safetensors") && err.contains("b.pt"), "{err}");
    let err = load_err(both.path());
    assert!(err.contains("ambiguous"), "{err}");

    let two_pt = tempfile::tempdir().unwrap();
    save_checkpoint(&two_pt.path().join("ode_init.pt"), &model, CheckpointLayout::ShotStream).unwrap();
    save_checkpoint(&two_pt.path().join("shotstream_merged.pt"), &model, CheckpointLayout::ShotStream).unwrap();
    let err = find_model_files(two_pt.path()).unwrap_err().to_string();
    assert!(err.contains("several PyTorch") && err.contains("ode_init.pt"), "{err}");

    // A single .pt in a folder is found and loaded.
    let one_pt = tempfile::tempdir().unwrap();
    save_checkpoint(&one_pt.path().join("shotstream_merged.pt"), &model, CheckpointLayout::ShotStream).unwrap();
    let loaded = load_dit_checkpoint(one_pt.path(), &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.layout, CheckpointLayout::ShotStream);

    // A diffusers pipeline folder is followed into transformer/.
    let pipe = tempfile::tempdir().unwrap();
    std::fs::create_dir(pipe.path().join("transformer")).unwrap();
    std::fs::write(pipe.path().join("model_index.json"), "{}").unwrap();
    save_checkpoint(
        &pipe.path().join("transformer/diffusion_pytorch_model.safetensors"),
        &model,
        CheckpointLayout::Diffusers,
    )
    .unwrap();
    let loaded = load_dit_checkpoint(pipe.path(), &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.layout, CheckpointLayout::Diffusers);
    assert_identical(&model, &loaded.tensors, "pipeline folder");
}
