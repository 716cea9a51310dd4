//! The toy text encoder: word-level tokenizer, unknown words, save/load, training, the trait.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use storyreel_nn::text::toy::{ToyTextConfig, ToyTextEncoder, ToyTokenizer, UnknownWords};
use storyreel_nn::text::TextEncoder;

const CAPTIONS: [&str; 4] = [
    "A red fox walks left through a snowy forest.",
    "shot1: The same red fox, now at night, jumps.",
    "A blue owl turns in a desert at dusk.",
    "Close-up of the blue owl; it grows.",
];

fn tokenizer() -> ToyTokenizer {
    ToyTokenizer::from_texts(CAPTIONS).unwrap()
}

fn small() -> ToyTextConfig {
    ToyTextConfig { dim: 32, text_len: 16, layers: 2, heads: 4, ffn_dim: 64 }
}

#[test]
fn words_split_lowercase_and_numbers_apart() {
    let t = tokenizer();
    let toks = t.tokenize("Shot1: the RED fox", 16);
    let words: Vec<&str> = toks.ids.iter().map(|&i| t.words()[i as usize].as_str()).collect();
    assert_eq!(words, ["shot", "1", "the", "red", "fox", "</s>"]);
    assert!(toks.unknown.is_empty() && !toks.truncated);
    let long = t.tokenize("red fox red fox red fox", 4);
    assert_eq!(long.ids.len(), 4);
    assert_eq!(*long.ids.last().unwrap(), 1, "EOS is kept last");
    assert!(long.truncated);
}

#[test]
fn unknown_words_are_reported_not_dropped() {
    let enc = ToyTextEncoder::random(small(), tokenizer(), 1, &Device::Cpu).unwrap();
    let err = enc.encode(&["a purple zebra walks"]).unwrap_err().to_string();
    assert!(err.contains("\"purple\"") && err.contains("\"zebra\""), "{err}");
    let toks = enc.tokenizer().tokenize("a purple zebra walks", 16);
    assert_eq!(toks.unknown, ["purple", "zebra"]);
    assert_eq!(toks.ids.iter().filter(|&&i| i == 2).count(), 2, "mapped to <unk>, not dropped");
    let lenient = enc.with_unknown_words(UnknownWords::MapToUnk);
    assert_eq!(lenient.encode(&["a purple zebra walks"]).unwrap()[0].length, 5);
}

#[test]
fn embeddings_have_zero_rows_after_the_caption_and_depend_on_context() {
    let enc = ToyTextEncoder::random(small(), tokenizer(), 2, &Device::Cpu).unwrap();
    let out = enc.encode(&["the red fox", "the blue fox"]).unwrap();
    assert_eq!(out[0].embeddings.dims(), &[16, 32]);
    assert_eq!(out[0].length, 4);
    let pad = out[0].embeddings.narrow(0, 4, 12).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(pad.to_scalar::<f32>().unwrap(), 0.0);
    // "fox" (row 2) differs between the captions: the blocks mix context in.
    let a = out[0].embeddings.get(2).unwrap();
    let b = out[1].embeddings.get(2).unwrap();
    let d = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 1e-3);
}

#[test]
fn save_load_round_trip_and_identity() {
    let enc = ToyTextEncoder::random(small(), tokenizer(), 3, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    enc.save(dir.path()).unwrap();
    let back = ToyTextEncoder::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.identity(), enc.identity());
    let a = enc.encode(&[CAPTIONS[0]]).unwrap().remove(0).embeddings;
    let b = back.encode(&[CAPTIONS[0]]).unwrap().remove(0).embeddings;
    assert_eq!((a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let other = ToyTextEncoder::random(small(), tokenizer(), 4, &Device::Cpu).unwrap();
    assert_ne!(other.identity(), enc.identity());
    // A damaged file names the tensor.
    let mut t = enc.tensors();
    t.insert("pos_embedding.weight".into(), Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap());
    let err = ToyTextEncoder::from_tensors(small(), tokenizer(), t).err().unwrap().to_string();
    assert!(err.contains("pos_embedding.weight"), "{err}");
    assert!(ToyTokenizer::new(vec!["a".into(), "b".into()]).is_err(), "specials must come first");
}

#[test]
fn trains_on_a_fixed_batch() {
    // Regress each caption's mean embedding onto a target: the loss must fall.
    let varmap = VarMap::new();
    let enc = ToyTextEncoder::trainable(small(), tokenizer(), &varmap, &Device::Cpu).unwrap();
    let targets = Tensor::randn(0f32, 1.0, (CAPTIONS.len(), 32), &Device::Cpu).unwrap();
    let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-2).unwrap();
    let loss_at = |enc: &ToyTextEncoder| {
        let rows: Vec<Tensor> = CAPTIONS
            .iter()
            .map(|c| {
                let toks = enc.tokenizer().tokenize(c, 16);
                let n = toks.ids.len();
                enc.forward_ids(&toks.ids).unwrap().narrow(0, 0, n).unwrap().mean(0).unwrap()
            })
            .collect();
        (Tensor::stack(&rows, 0).unwrap() - &targets).unwrap().sqr().unwrap().mean_all().unwrap()
    };
    let first = loss_at(&enc).to_scalar::<f32>().unwrap();
    for _ in 0..30 {
        opt.backward_step(&loss_at(&enc)).unwrap();
    }
    let last = loss_at(&enc).to_scalar::<f32>().unwrap();
    assert!(last < 0.5 * first, "loss {first} → {last}");
}
