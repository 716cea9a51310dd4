//! `save_pth` writes real `torch.save` archives: they round-trip through our reader and through
//! candle's own pickle reader, for every supported dtype, wrapped or not.

use candle_core::{DType, Device, Tensor};
use storyreel_nn::checkpoint::{save_pth, save_pth_dicts, TensorFiles};

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F64 => t.to_vec1::<f64>().unwrap().into_iter().map(f64::to_bits).collect(),
        DType::I64 => t.to_vec1::<i64>().unwrap().into_iter().map(|x| x as u64).collect(),
        DType::U8 => t.to_vec1::<u8>().unwrap().into_iter().map(|x| x as u64).collect(),
        _ => {
            t.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap().into_iter().map(|x| x.to_bits() as u64).collect()
        }
    }
}

fn samples() -> Vec<(String, Tensor)> {
    let dev = Device::Cpu;
    let base = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
    vec![
        ("f32".into(), base.clone()),
        ("bf16".into(), base.to_dtype(DType::BF16).unwrap()),
        ("f16".into(), base.to_dtype(DType::F16).unwrap()),
        ("f64".into(), base.to_dtype(DType::F64).unwrap()),
        ("i64".into(), Tensor::arange(0i64, 7, &dev).unwrap()),
        ("u8".into(), Tensor::new(&[1u8, 2, 255], &dev).unwrap()),
        ("transposed".into(), base.t().unwrap()),
        ("scalar".into(), Tensor::new(2.5f32, &dev).unwrap()),
        ("empty".into(), Tensor::zeros((0, 4), DType::F32, &dev).unwrap()),
        ("five_d".into(), Tensor::randn(0f32, 1.0, (4, 2, 1, 2, 2), &dev).unwrap()),
    ]
}

fn check_same(expected: &[(String, Tensor)], got: &std::collections::HashMap<String, Tensor>) {
    assert_eq!(got.len(), expected.len());
    for (name, t) in expected {
        let g = &got[name];
        assert_eq!(g.dims(), t.dims(), "{name}");
        assert_eq!(g.dtype(), t.dtype(), "{name}");
        assert_eq!(bits(g), bits(t), "{name}");
    }
}

#[test]
fn save_pth_round_trips_through_our_reader_for_all_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = samples();
    for wrap in [None, Some("generator")] {
        let path = dir.path().join("x.pt");
        save_pth(&path, &tensors, wrap).unwrap();
        let files = TensorFiles::open(&path).unwrap();
        assert_eq!(files.state_key(), wrap);
        let mut got = std::collections::HashMap::new();
        for (name, t) in &tensors {
            got.insert(name.clone(), files.load(name, t.dtype(), &Device::Cpu).unwrap());
        }
        check_same(&tensors, &got);
        assert_eq!(files.header("bf16").unwrap().dtype, "bf16");
        assert_eq!(files.header("transposed").unwrap().shape, vec![5, 3]);
    }
}

#[test]
fn save_pth_round_trips_through_candles_pickle_reader() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = samples();
    for wrap in [None, Some("generator")] {
        let path = dir.path().join("y.pth");
        save_pth(&path, &tensors, wrap).unwrap();
        let read: std::collections::HashMap<String, Tensor> =
            candle_core::pickle::read_all_with_key(&path, wrap).unwrap().into_iter().collect();
        check_same(&tensors, &read);
    }
}

#[test]
fn several_dicts_are_nested_under_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.pt");
    let dev = Device::Cpu;
    let g = vec![("a".to_string(), Tensor::ones((2, 2), DType::F32, &dev).unwrap())];
    let c = vec![("a".to_string(), Tensor::zeros((2, 2), DType::F32, &dev).unwrap())];
    save_pth_dicts(&path, &[("generator_lora", &g), ("critic_lora", &c)]).unwrap();
    let gen = TensorFiles::open_with_key(&path, "generator_lora").unwrap();
    assert_eq!(gen.load("a", DType::F32, &dev).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 4.0);
    let critic = TensorFiles::open_with_key(&path, "critic_lora").unwrap();
    assert_eq!(critic.load("a", DType::F32, &dev).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let mut keys = gen.top_level_keys().to_vec();
    keys.sort();
    assert_eq!(keys, vec!["critic_lora".to_string(), "generator_lora".to_string()]);
    let err = TensorFiles::open_with_key(&path, "fake_score").unwrap_err().to_string();
    assert!(err.contains("fake_score") && err.contains("generator_lora"), "{err}");
}

#[test]
fn save_pth_rejects_duplicates_and_unsupported_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.pt");
    let t = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let err = save_pth(&path, &[("a".into(), t.clone()), ("a".into(), t)], None).unwrap_err().to_string();
    assert!(err.contains("duplicate tensor name `a`"), "{err}");
    assert!(!path.exists());
    let u32t = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let err = save_pth(&path, &[("u".into(), u32t)], None).unwrap_err().to_string();
    assert!(err.contains("`u`") && err.contains("U32"), "{err}");
}
