//! UMT5 as a `TextEncoder`: tokenizer.json + weights in a folder, caption in, embedding out.

use std::path::Path;

use candle_core::{DType, Device};
use storyreel_nn::text::umt5::{Umt5Config, Umt5Encoder, Umt5Layout};
use storyreel_nn::text::umt5_text::Umt5TextEncoder;
use storyreel_nn::text::TextEncoder;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

const CORPUS: [&str; 4] = [
    "A red fox walks left through a snowy forest at dawn.",
    "shot0: shot1: The same red fox, now at night, jumps over a log.",
    "A blue owl turns its head in a desert at dusk; the wind blows sand.",
    "Close-up of the owl's eyes, numbers 0123456789, and the end.",
];

fn write_tokenizer(dir: &Path) {
    let mut tokenizer = Tokenizer::new(Unigram::default());
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    let specials = ["<pad>", "</s>", "<unk>"];
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(120)
        .special_tokens(specials.iter().map(|s| AddedToken::from(*s, true)).collect())
        .unk_token(Some("<unk>".into()))
        .build()
        .unwrap();
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    tokenizer.train(&mut trainer, CORPUS.iter()).unwrap();
    tokenizer.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true))).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), true).unwrap();
}

#[test]
fn a_model_folder_encodes_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_tokenizer(dir);
    let cfg = Umt5Config { vocab: 160, ..Umt5Config::tiny() };
    let model = Umt5Encoder::random(&cfg, 3, DType::F32, DType::F32, &Device::Cpu).unwrap();
    model.save(&dir.join("umt5.safetensors"), Umt5Layout::HuggingFace).unwrap();
    let enc = Umt5TextEncoder::load(dir, DType::F32, DType::F32, &Device::Cpu).unwrap();
    let out = enc.encode(&[CORPUS[0], "the fox"]).unwrap();
    assert_eq!(out.len(), 2);
    let e = &out[1];
    assert_eq!(e.embeddings.dims(), &[enc.text_len(), cfg.dim]);
    assert!(e.length >= 2 && !e.truncated);
    let pad = e.embeddings.narrow(0, e.length, enc.text_len() - e.length).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(pad.to_scalar::<f32>().unwrap(), 0.0);
    // Encoding alone equals encoding in a batch (padded keys are masked).
    let alone = enc.encode(&["the fox"]).unwrap().remove(0).embeddings;
    let d = (alone - &e.embeddings).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    // The identity follows the files: reloading gives the same, other weights another.
    let again = Umt5TextEncoder::load(dir, DType::F32, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(again.identity(), enc.identity());
    Umt5Encoder::random(&cfg, 4, DType::F32, DType::F32, &Device::Cpu)
        .unwrap()
        .save(&dir.join("umt5.safetensors"), Umt5Layout::HuggingFace)
        .unwrap();
    let other = Umt5TextEncoder::load(dir, DType::F32, DType::F32, &Device::Cpu).unwrap();
    assert_ne!(other.identity(), enc.identity());
}

#[test]
fn a_folder_without_weights_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_tokenizer(tmp.path());
    let err = Umt5TextEncoder::load(tmp.path(), DType::F32, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("no text-encoder weights"), "{err}");
}
