//! UMT5 encoder: buckets, checkpoint layouts, padding conventions, errors, and (ignored, by hand)
//! parity with the reference Wan `T5Encoder`.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use storyreel_nn::checkpoint::{save_pth, save_safetensors, TensorFiles};
use storyreel_nn::text::umt5::{
    hf_to_wan_name, relative_position_bucket, wan_to_hf_name, Umt5Config, Umt5Encoder, Umt5Layout,
};
use storyreel_nn::NnError;

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

fn tiny(seed: u64) -> Umt5Encoder {
    Umt5Encoder::random(&Umt5Config::tiny(), seed, DType::F32, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn buckets_by_hand() {
    // 32 buckets, max distance 128: keys after the query use 16..31, others 0..15; |rel| < 8 is
    // exact; beyond, 8 + ⌊ln(|rel|/8)/ln(16)·8⌋ capped at 15.
    // ln(9/8)/ln16·8 = 0.34 → 8; ln(20/8)/ln16·8 = 2.64 → 10; ln(127/8)/ln16·8 = 7.98 → 15;
    // ln(128/8)/ln16·8 = 8 → 16, capped to 15; 500 → capped to 15.
    let cases: &[(i64, usize)] = &[
        (0, 0),
        (1, 17),
        (-1, 1),
        (7, 23),
        (-7, 7),
        (8, 24),
        (-8, 8),
        (9, 24),
        (-9, 8),
        (16, 26),
        (-16, 10),
        (20, 26),
        (-20, 10),
        (32, 28),
        (-32, 12),
        (127, 31),
        (-127, 15),
        (128, 31),
        (-128, 15),
        (500, 31),
        (-500, 15),
    ];
    for &(rel, want) in cases {
        assert_eq!(relative_position_bucket(rel, 32, 128), want, "rel {rel}");
    }
}

#[test]
fn configs() {
    let xxl = Umt5Config::umt5_xxl();
    assert_eq!((xxl.head_dim(), xxl.num_layers, xxl.text_len), (64, 24, 512));
    let params: usize = xxl.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(params, 5_680_910_336);
    // The keys of google/umt5-xxl's config.json.
    let json = r#"{"architectures":["UMT5ForConditionalGeneration"],"d_ff":10240,"d_kv":64,"d_model":4096,
        "dense_act_fn":"gelu_new","feed_forward_proj":"gated-gelu","is_gated_act":true,"layer_norm_epsilon":1e-06,
        "model_type":"umt5","num_decoder_layers":24,"num_heads":64,"num_layers":24,
        "relative_attention_max_distance":128,"relative_attention_num_buckets":32,"vocab_size":256384}"#;
    assert_eq!(Umt5Config::from_hf_json_str(json).unwrap(), xxl);
    let err = Umt5Config::from_hf_json_str(r#"{"d_model": 8}"#).unwrap_err().to_string();
    assert!(err.contains("num_heads"), "{err}");
    // Inference from shapes.
    let shapes: BTreeMap<String, Vec<usize>> = Umt5Config::tiny().tensor_shapes().into_iter().collect();
    let inferred = Umt5Config::infer(&shapes).unwrap();
    assert_eq!(inferred, Umt5Config { text_len: 512, ..Umt5Config::tiny() });
    // Name maps are inverse.
    for (n, _) in Umt5Config::tiny().tensor_shapes() {
        assert_eq!(hf_to_wan_name(&wan_to_hf_name(&n).unwrap()).unwrap(), n);
    }
    assert_eq!(hf_to_wan_name("encoder.embed_tokens.weight").unwrap(), "token_embedding.weight");
}

#[test]
fn both_layouts_give_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny(3);
    let ids = [5u32, 17, 42, 99, 1];
    let want = enc.encode_ids(&ids).unwrap();
    let cfg = Umt5Config::tiny();
    for (file, layout) in [
        ("wan.pth", Umt5Layout::Wan),
        ("hf.safetensors", Umt5Layout::HuggingFace),
        ("wan.safetensors", Umt5Layout::Wan),
        ("hf.pth", Umt5Layout::HuggingFace),
    ] {
        let p = dir.path().join(file);
        enc.save(&p, layout).unwrap();
        let names: Vec<String> = TensorFiles::open(&p).unwrap().headers().iter().map(|h| h.name.clone()).collect();
        let hf = names.iter().any(|n| n == "shared.weight");
        assert_eq!(hf, layout == Umt5Layout::HuggingFace, "{file}");
        let loaded = Umt5Encoder::load(&p, Some(&cfg), DType::F32, DType::F32, &Device::Cpu).unwrap();
        let got = loaded.encode_ids(&ids).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "{file}");
        // Sizes inferred from shapes (text_len is then 512).
        let inferred = Umt5Encoder::load(&p, None, DType::F32, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(inferred.config().text_len, 512);
        let got = inferred.encode_ids(&ids).unwrap();
        assert_eq!(got.dims(), &[512, cfg.dim]);
        assert_eq!(max_diff(&got.narrow(0, 0, cfg.text_len).unwrap(), &want), 0.0, "{file}");
    }
}

#[test]
fn several_files_bf16_weights_and_tied_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny(4);
    let full = dir.path().join("full.safetensors");
    enc.save(&full, Umt5Layout::HuggingFace).unwrap();
    let all = TensorFiles::open(&full).unwrap().load_all(DType::BF16, &Device::Cpu).unwrap();
    // Two shards stored in bf16, the embedding stored twice (tied) as Hugging Face may do.
    let (mut a, mut b): (HashMap<String, Tensor>, HashMap<String, Tensor>) = (HashMap::new(), HashMap::new());
    for (n, t) in &all {
        if n.starts_with("encoder.block.0.") {
            a.insert(n.clone(), t.clone());
        } else {
            b.insert(n.clone(), t.clone());
        }
    }
    a.insert("encoder.embed_tokens.weight".into(), all["shared.weight"].clone());
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    let (pa, pb) = (shards.join("a.safetensors"), shards.join("b.safetensors"));
    save_safetensors(&pa, &a).unwrap();
    save_safetensors(&pb, &b).unwrap();
    let cfg = Umt5Config::tiny();
    let ids = [7u32, 8, 9, 1];
    for (wd, cd) in [(DType::BF16, DType::F32), (DType::F32, DType::F32), (DType::BF16, DType::BF16)] {
        let e = Umt5Encoder::load_files(&[pa.clone(), pb.clone()], Some(&cfg), wd, cd, &Device::Cpu).unwrap();
        assert_eq!(e.weight_dtype(), wd);
        let out = e.encode_ids(&ids).unwrap();
        assert_eq!(out.dtype(), DType::F32);
        let reference = enc.encode_ids(&ids).unwrap();
        let rel = max_diff(&out, &reference) / max_abs(&reference);
        let tol = if cd == DType::BF16 { 0.1 } else { 0.03 };
        assert!(rel < tol, "{wd:?}/{cd:?}: {rel}");
        // The folder holding both shards loads the same.
        let from_dir = Umt5Encoder::load(&shards, Some(&cfg), wd, cd, &Device::Cpu).unwrap();
        assert_eq!(max_diff(&from_dir.encode_ids(&ids).unwrap(), &out), 0.0);
    }
    // bf16 weights with f32 compute equal f32 weights rounded to bf16 with f32 compute.
    let e1 =
        Umt5Encoder::load_files(&[pa.clone(), pb.clone()], Some(&cfg), DType::BF16, DType::F32, &Device::Cpu).unwrap();
    let e2 = Umt5Encoder::load_files(&[pa, pb], Some(&cfg), DType::F32, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(max_diff(&e1.encode_ids(&ids).unwrap(), &e2.encode_ids(&ids).unwrap()), 0.0);
}

#[test]
fn padding_rows_are_zero_and_real_rows_do_not_depend_on_text_len() {
    let enc = tiny(5);
    let ids = [11u32, 12, 13, 14, 15, 1];
    let out = enc.encode_ids(&ids).unwrap();
    assert_eq!(out.dims(), &[16, 32]);
    assert_eq!(max_abs(&out.narrow(0, 6, 10).unwrap()), 0.0);
    assert!(max_abs(&out.narrow(0, 0, 6).unwrap()) > 0.1);
    // A longer text_len: same real rows, more zero rows.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    enc.save(&p, Umt5Layout::Wan).unwrap();
    let cfg = Umt5Config { text_len: 40, ..Umt5Config::tiny() };
    let long = Umt5Encoder::load(&p, Some(&cfg), DType::F32, DType::F32, &Device::Cpu).unwrap();
    let out2 = long.encode_ids(&ids).unwrap();
    assert_eq!(out2.dims(), &[40, 32]);
    assert_eq!(max_diff(&out2.narrow(0, 0, 6).unwrap(), &out.narrow(0, 0, 6).unwrap()), 0.0);
    assert_eq!(max_abs(&out2.narrow(0, 6, 34).unwrap()), 0.0);
    // The reference's padded run (pad keys masked) has the same real rows.
    let padded = enc.forward_padded(&[&ids], 16).unwrap().squeeze(0).unwrap();
    assert!(max_diff(&padded.narrow(0, 0, 6).unwrap(), &out.narrow(0, 0, 6).unwrap()) < 1e-5);
    assert!(max_abs(&padded.narrow(0, 6, 10).unwrap()) > 0.0, "pad rows are computed there");
    // A batch equals one-by-one encoding.
    let other = [3u32, 4, 1];
    let batch = enc.encode_ids_batch(&[&ids, &other]).unwrap();
    assert!(max_diff(&batch[0], &out) < 1e-5);
    assert!(max_diff(&batch[1], &enc.encode_ids(&other).unwrap()) < 1e-5);
    assert_eq!(max_abs(&batch[1].narrow(0, 3, 13).unwrap()), 0.0);
    // Exactly text_len ids: no zero rows, no error.
    let full: Vec<u32> = (0..16).map(|i| 2 + i as u32).collect();
    assert_eq!(enc.encode_ids(&full).unwrap().dims(), &[16, 32]);
}

fn tiny_tensors(seed: u64) -> Vec<(String, Tensor)> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    tiny(seed).save(&p, Umt5Layout::Wan).unwrap();
    let mut v: Vec<(String, Tensor)> =
        TensorFiles::open(&p).unwrap().load_all(DType::F32, &Device::Cpu).unwrap().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn load_err(tensors: &[(String, Tensor)], dir: &Path) -> String {
    let p = dir.join("bad.pth");
    save_pth(&p, tensors, None).unwrap();
    Umt5Encoder::load(&p, Some(&Umt5Config::tiny()), DType::F32, DType::F32, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn checkpoint_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = tiny_tensors(6);
    // Wrong shape.
    let mut t = good.clone();
    for (n, v) in t.iter_mut() {
        if n == "blocks.1.ffn.fc1.weight" {
            *v = Tensor::zeros((47, 32), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = load_err(&t, dir.path());
    assert!(e.contains("blocks.1.ffn.fc1.weight") && e.contains("[47, 32]") && e.contains("[48, 32]"), "{e}");
    // Missing.
    let t: Vec<_> = good.iter().filter(|(n, _)| n != "blocks.0.pos_embedding.embedding.weight").cloned().collect();
    let e = load_err(&t, dir.path());
    assert!(e.contains("blocks.0.pos_embedding.embedding.weight") && e.contains("missing"), "{e}");
    // Unexpected.
    let mut t = good.clone();
    t.push(("blocks.0.attn.q.bias".into(), Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap()));
    let e = load_err(&t, dir.path());
    assert!(e.contains("blocks.0.attn.q.bias") && e.contains("unexpected"), "{e}");
    // A model with an extra layer is caught as unexpected tensors under the given config.
    let p = dir.path().join("hf.safetensors");
    Umt5Encoder::random(&Umt5Config { num_layers: 3, ..Umt5Config::tiny() }, 1, DType::F32, DType::F32, &Device::Cpu)
        .unwrap()
        .save(&p, Umt5Layout::HuggingFace)
        .unwrap();
    let e =
        Umt5Encoder::load(&p, Some(&Umt5Config::tiny()), DType::F32, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("10 unexpected") && e.contains("encoder.block.2."), "{e}");
    // Missing under Hugging Face names is reported under the Wan name.
    let mut st = TensorFiles::open(&p).unwrap().load_all(DType::F32, &Device::Cpu).unwrap();
    st.remove("encoder.final_layer_norm.weight");
    save_safetensors(&p, &st).unwrap();
    let e = Umt5Encoder::load(&p, None, DType::F32, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(&e, NnError::MissingTensor { name, .. } if name == "norm.weight"), "{e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let enc = tiny(7);
    let e = enc.encode_ids(&[]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = enc.encode_ids(&[3, 100, 1]).unwrap_err().to_string();
    assert!(e.contains("100") && e.contains("vocabulary"), "{e}");
    let e = enc.encode_ids(&[3; 17]).unwrap_err().to_string();
    assert!(e.contains("17") && e.contains("text_len"), "{e}");
    assert!(enc.encode_ids_batch(&[&[3, 1], &[]]).is_err());
    assert!(enc.encode_ids_batch(&[]).unwrap().is_empty());
    let e = Umt5Encoder::random(&Umt5Config::tiny(), 0, DType::F32, DType::F16, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("f32 or bf16"), "{e}");
}

/// Parity with the reference Wan `T5Encoder` (umt5 settings, tiny, random weights, f32). Generate
/// the data with `python3 /work/parity/umt5/make_ref.py /work/parity/umt5/data`, then run
/// `UMT5_PARITY_DIR=/work/parity/umt5/data cargo test -p storyreel-nn --test umt5 -- --ignored --nocapture`.
#[test]
#[ignore = "needs reference outputs: set UMT5_PARITY_DIR (see docs/BENCHMARKS.md)"]
fn parity_with_reference() {
    let dir = std::path::PathBuf::from(std::env::var("UMT5_PARITY_DIR").expect("set UMT5_PARITY_DIR"));
    let wan = dir.join("umt5_tiny.pth");
    for file in ["ref.safetensors", "ref_long.safetensors"] {
        parity_case(&dir.join(file), &wan, None);
    }
    // A Hugging Face UMT5EncoderModel folder `hf/` and its outputs (make_hf_ref.py), if present.
    let hf = dir.join("hf");
    if dir.join("hf_ref.safetensors").is_file() {
        let cfg = Umt5Config::from_hf_json(&hf.join("config.json")).unwrap();
        parity_case(&dir.join("hf_ref.safetensors"), &hf, Some(cfg));
    }
}

fn parity_case(file: &Path, weights: &Path, cfg: Option<Umt5Config>) {
    let refs = TensorFiles::open(file).unwrap();
    let dev = Device::Cpu;
    // Buckets for every rel in [-600, 600].
    let rel = refs.load("rel", DType::I64, &dev).unwrap().to_vec1::<i64>().unwrap();
    let buckets = refs.load("buckets", DType::I64, &dev).unwrap().to_vec1::<i64>().unwrap();
    for (r, b) in rel.iter().zip(&buckets) {
        assert_eq!(relative_position_bucket(*r, 32, 128) as i64, *b, "rel {r}");
    }
    let ids = refs.load("ids", DType::I64, &dev).unwrap().to_vec2::<i64>().unwrap();
    let mask = refs.load("mask", DType::I64, &dev).unwrap().to_vec2::<i64>().unwrap();
    let want = refs.load("out", DType::F32, &dev).unwrap();
    let (bsz, len, dim) = want.dims3().unwrap();
    let seqs: Vec<Vec<u32>> = ids
        .iter()
        .zip(&mask)
        .map(|(i, m)| i.iter().zip(m).filter(|(_, &m)| m != 0).map(|(&i, _)| i as u32).collect())
        .collect();
    let base = match cfg {
        Some(c) => c,
        None => Umt5Encoder::load(weights, None, DType::F32, DType::F32, &dev).unwrap().config().clone(),
    };
    let cfg = Umt5Config { text_len: len, ..base };
    let enc = Umt5Encoder::load(weights, Some(&cfg), DType::F32, DType::F32, &dev).unwrap();
    let scale = max_abs(&want);
    // 1. The padded run, every position (pad rows included).
    let slices: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let padded = enc.forward_padded(&slices, len).unwrap();
    let d_padded = max_diff(&padded, &want) / scale;
    // 2. encode_ids on the real tokens alone (zero-padded), against the reference's real rows.
    let mut d_real = 0f32;
    for (b, s) in seqs.iter().enumerate() {
        let got = enc.encode_ids(s).unwrap();
        let n = s.len();
        d_real = d_real.max(max_diff(&got.narrow(0, 0, n).unwrap(), &want.get(b).unwrap().narrow(0, 0, n).unwrap()));
        if n < len {
            assert_eq!(max_abs(&got.narrow(0, n, len - n).unwrap()), 0.0);
        }
    }
    let d_real = d_real / scale;
    // 3. The batched variant.
    let batch = enc.encode_ids_batch(&slices).unwrap();
    let mut d_batch = 0f32;
    for (b, s) in seqs.iter().enumerate() {
        let n = s.len();
        d_batch =
            d_batch.max(max_diff(&batch[b].narrow(0, 0, n).unwrap(), &want.get(b).unwrap().narrow(0, 0, n).unwrap()));
    }
    let d_batch = d_batch / scale;
    println!(
        "{}: batch {bsz}×{len}×{dim}, lengths {:?}: max|ref| = {scale}; max|Δ|/max|ref|: padded run {d_padded:.3e}, \
         real tokens alone {d_real:.3e}, batched {d_batch:.3e}",
        file.display(),
        seqs.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(d_padded <= 1e-4 && d_real <= 1e-4 && d_batch <= 1e-4);
}
