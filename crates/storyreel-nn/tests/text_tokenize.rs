//! The UMT5 tokenizer wrapper on a small Unigram model trained inside the test (pad 0, `</s>` 1,
//! `<unk>` 2, as in google/umt5-xxl): cleaning, EOS, round trip, truncation, special-id checks.

use std::path::{Path, PathBuf};

use storyreel_nn::text::clean::clean_text;
use storyreel_nn::text::tokenize::{Umt5Tokenizer, EOS_ID, TEXT_LEN, UNK_ID};
use storyreel_nn::NnError;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

const CORPUS: &[&str] = &[
    "The video begins with an underwater shot of a rusted, ornate gate.",
    "A close-up of an elderly woman with white hair; her eyes are closed.",
    "The camera cuts to a wide, static shot of a dimly lit hallway.",
    "A young woman in a wizard's robe discovers a small, animated creature.",
    "The man in the gray sweater looks down at a small object in his hands.",
    "shot0: shot1: shot2: The scene cuts back to the older woman & the door.",
    "Rain falls on the neon street at night, and a lone figure walks past.",
    "\"Quoted\" words, numbers 0123456789 and the end of the frame.",
];

/// Trains a small Unigram tokenizer with the given special tokens (in id order) and saves it.
fn train(dir: &Path, specials: &[&str]) -> PathBuf {
    let mut tokenizer = Tokenizer::new(Unigram::default());
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    let unk = specials.contains(&"<unk>").then(|| "<unk>".to_string());
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(150)
        .special_tokens(specials.iter().map(|s| AddedToken::from(*s, true)).collect())
        .unk_token(unk)
        .build()
        .unwrap();
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    tokenizer.train(&mut trainer, CORPUS.iter()).unwrap();
    tokenizer.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true))).unwrap();
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, true).unwrap();
    path
}

fn umt5_like(dir: &Path) -> Umt5Tokenizer {
    Umt5Tokenizer::from_file(train(dir, &["<pad>", "</s>", "<unk>"])).unwrap()
}

#[test]
fn round_trips_cleaned_text_with_eos_appended() {
    let dir = tempfile::tempdir().unwrap();
    let tok = umt5_like(dir.path());
    assert_eq!(tok.max_len(), TEXT_LEN);
    for text in [
        "The camera cuts to a wide shot of the hallway.",
        "  A young woman   in a wizard\u{2019}s robe\n discovers a small creature.  ",
        "The man &amp; the older woman look at the door.",
        "shot0:A close-up of an elderly woman with white hair.",
    ] {
        let enc = tok.encode(text).unwrap();
        let cleaned = clean_text(text);
        assert_eq!(enc.cleaned, cleaned);
        assert_eq!(*enc.ids.last().unwrap(), EOS_ID, "{text:?}");
        assert_eq!(enc.ids.iter().filter(|&&i| i == EOS_ID).count(), 1);
        assert!(!enc.ids.contains(&UNK_ID), "{text:?}: {:?}", enc.ids);
        assert!(!enc.truncated);
        assert_eq!(enc.total_tokens, enc.len());
        assert_eq!(enc.kept_text(), cleaned);
        assert_eq!(enc.dropped_text(), "");
        assert_eq!(tok.decode(&enc.ids).unwrap(), cleaned, "{text:?}");
    }
    // Cleaning really ran: the curly apostrophe and the entity are gone.
    let enc = tok.encode("wizard\u{2019}s &amp; door").unwrap();
    assert_eq!(enc.cleaned, "wizard's & door");
    // The empty caption is EOS alone.
    let enc = tok.encode("  ").unwrap();
    assert_eq!(enc.ids, vec![EOS_ID]);
}

#[test]
fn unknown_characters_become_unk() {
    let dir = tempfile::tempdir().unwrap();
    let tok = umt5_like(dir.path());
    let enc = tok.encode("The 猫 door").unwrap();
    assert!(enc.ids.contains(&UNK_ID), "{:?}", enc.ids);
    assert_eq!(*enc.ids.last().unwrap(), EOS_ID);
}

#[test]
fn truncation_keeps_eos_last_and_reports_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let full = umt5_like(dir.path());
    let text = "The video begins with an underwater shot of a rusted, ornate gate. The camera cuts to a wide, static shot of a dimly lit hallway.";
    let untruncated = full.encode(text).unwrap();
    let n = untruncated.len();
    assert!(n > 12, "{n}");

    for max_len in [1, 2, 5, 12, n - 1] {
        let tok = full.clone().with_max_len(max_len).unwrap();
        let enc = tok.encode(text).unwrap();
        assert_eq!(enc.len(), max_len);
        assert!(enc.truncated);
        assert_eq!(enc.total_tokens, n);
        assert_eq!(*enc.ids.last().unwrap(), EOS_ID);
        assert_eq!(enc.ids[..max_len - 1], untruncated.ids[..max_len - 1]);
        // The kept text is a prefix of the cleaned caption and decodes from the kept ids.
        assert!(untruncated.cleaned.starts_with(enc.kept_text()));
        assert!(enc.kept_bytes < enc.cleaned.len());
        assert_eq!(tok.decode(&enc.ids).unwrap().trim_end(), enc.kept_text().trim_end(), "max_len {max_len}");
        assert_eq!(format!("{}{}", enc.kept_text(), enc.dropped_text()), enc.cleaned);
    }

    // Exactly fitting is not truncation.
    let tok = full.clone().with_max_len(n).unwrap();
    let enc = tok.encode(text).unwrap();
    assert!(!enc.truncated);
    assert_eq!(enc, untruncated);

    assert!(full.with_max_len(0).is_err());
}

#[test]
fn batch_encoding_matches_single() {
    let dir = tempfile::tempdir().unwrap();
    let tok = umt5_like(dir.path());
    let texts = ["The door.", "A lone figure walks past the neon street."];
    let batch = tok.encode_batch(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        assert_eq!(&tok.encode(t).unwrap(), b);
    }
}

#[test]
fn rejects_wrong_special_ids() {
    let dir = tempfile::tempdir().unwrap();
    // EOS and pad swapped.
    let path = train(dir.path(), &["</s>", "<pad>", "<unk>"]);
    let err = Umt5Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, NnError::Config(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("`<pad>` at id 1"), "{msg}");
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn rejects_a_tokenizer_without_eos() {
    let dir = tempfile::tempdir().unwrap();
    let path = train(dir.path(), &["<pad>", "<s>", "<unk>"]);
    let err = Umt5Tokenizer::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("no `</s>`"), "{err}");
}

#[test]
fn missing_or_malformed_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Umt5Tokenizer::from_file(dir.path().join("nope.json")).unwrap_err();
    assert!(matches!(err, NnError::Io { .. }), "{err}");
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let err = Umt5Tokenizer::from_file(&bad).unwrap_err();
    assert!(matches!(err, NnError::Config(_)), "{err}");
}
