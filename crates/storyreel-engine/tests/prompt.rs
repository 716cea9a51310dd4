//! ShotStream prompt assembly (exact strings) and the truncation warning, on a character-level
//! fake tokenizer whose cuts can be worked out by hand.

use storyreel_engine::prompt::{
    check_story, check_truncation, shot_label, shot_prompt, story_prompts, PromptCut, PromptFit, PromptTokenizer,
};
use storyreel_engine::Result;

/// Every non-space character is a token; cleaning collapses whitespace; EOS is one more token.
struct CharTokens {
    max_len: usize,
}

impl PromptTokenizer for CharTokens {
    fn max_len(&self) -> usize {
        self.max_len
    }

    fn fit(&self, text: &str) -> Result<PromptFit> {
        let cleaned = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let tokens: Vec<usize> = cleaned.char_indices().filter(|(_, c)| *c != ' ').map(|(i, _)| i).collect();
        let kept_bytes = tokens.get(self.max_len - 1).copied().unwrap_or(cleaned.len());
        Ok(PromptFit { total_tokens: tokens.len() + 1, kept_bytes, cleaned })
    }
}

#[test]
fn prompts_are_plain_concatenation_with_a_zero_based_label() {
    assert_eq!(shot_label(0), "shot0:");
    assert_eq!(shot_label(12), "shot12:");
    assert_eq!(
        shot_prompt("A rusted gate under water.", 0, "An underwater view of the gate."),
        "A rusted gate under water.shot0:An underwater view of the gate."
    );
    // Whatever spacing the captions carry is kept as is.
    assert_eq!(shot_prompt("Global. ", 3, " caption"), "Global. shot3: caption");
    assert_eq!(shot_prompt("", 1, ""), "shot1:");
    let prompts = story_prompts("G.", &["first", "second", "third"]);
    assert_eq!(prompts, vec!["G.shot0:first", "G.shot1:second", "G.shot2:third"]);
    let owned: Vec<String> = (0..11).map(|i| format!("c{i}")).collect();
    assert_eq!(story_prompts("G.", &owned)[10], "G.shot10:c10");
    assert!(story_prompts::<&str>("G.", &[]).is_empty());
}

// "aaaa bbbb" + "shot0:" + "cc dd ee" = "aaaa bbbbshot0:cc dd ee": 20 character tokens + EOS.
const GLOBAL: &str = "aaaa bbbb";
const CAPTION: &str = "cc dd ee";

fn check(max_len: usize) -> Option<storyreel_engine::prompt::PromptWarning> {
    check_truncation(&CharTokens { max_len }, GLOBAL, 0, CAPTION).unwrap()
}

#[test]
fn no_warning_when_the_prompt_fits() {
    assert_eq!(check(21), None);
    assert_eq!(check(512), None);
}

#[test]
fn warns_when_the_shot_caption_is_cut() {
    // 17 content tokens: everything up to "cc d".
    let w = check(18).unwrap();
    assert_eq!(w.shot, 0);
    assert_eq!(w.prompt_tokens, 21);
    assert_eq!(w.max_len, 18);
    assert_eq!(w.cut, PromptCut::ShotCaptionCut { kept_words: 1, total_words: 3, kept_tokens: 3, total_tokens: 6 });
    let msg = w.to_string();
    assert!(msg.contains("shot 0"), "{msg}");
    assert!(msg.contains("1 of its 3 words"), "{msg}");
    assert!(msg.contains("3 of 6 tokens"), "{msg}");

    // One token short: only the last "e" goes.
    let w = check(20).unwrap();
    assert_eq!(w.cut, PromptCut::ShotCaptionCut { kept_words: 2, total_words: 3, kept_tokens: 5, total_tokens: 6 });
    // One caption token kept: no whole word.
    let w = check(16).unwrap();
    assert_eq!(w.cut, PromptCut::ShotCaptionCut { kept_words: 0, total_words: 3, kept_tokens: 1, total_tokens: 6 });
}

#[test]
fn a_different_note_when_the_caption_is_lost_or_the_global_caption_is_cut() {
    // The cut lands exactly before the caption, then inside the label.
    for max_len in [15, 12, 10] {
        let w = check(max_len).unwrap();
        assert_eq!(w.cut, PromptCut::ShotCaptionLost, "max_len {max_len}");
        assert!(w.to_string().contains("none of the shot's own caption"));
    }
    // Inside the global caption: "aaaa b" kept.
    let w = check(6).unwrap();
    assert_eq!(w.cut, PromptCut::GlobalCaptionCut { kept_words: 1, total_words: 2 });
    assert!(w.to_string().contains("global caption alone overflows"), "{w}");
}

#[test]
fn a_story_warns_only_for_the_shots_that_lose_caption_text() {
    let tok = CharTokens { max_len: 30 };
    let global = "g".repeat(20);
    // shot0: 20 + 6 + 2 = 28 tokens + EOS fits; shot1: 20 + 6 + 4 = 30 + EOS does not.
    let captions = ["ab", "ab cd", "x"];
    let warnings = check_story(&tok, &global, &captions).unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].shot, 1);
    assert_eq!(
        warnings[0].cut,
        PromptCut::ShotCaptionCut { kept_words: 1, total_words: 2, kept_tokens: 3, total_tokens: 4 }
    );
    // The label grows with the index: shot 10 with "ab" needs 20 + 7 + 2 + 1 = 30 tokens (fits),
    // with "abc" it does not.
    assert_eq!(check_truncation(&tok, &global, 10, "ab").unwrap(), None);
    assert!(check_truncation(&tok, &global, 10, "abc").unwrap().is_some());
}

#[test]
fn cleaning_is_taken_into_account() {
    // Extra whitespace costs no tokens and does not shift the cut.
    let tok = CharTokens { max_len: 18 };
    let w = check_truncation(&tok, "  aaaa \n bbbb", 0, "  cc   dd ee ").unwrap().unwrap();
    assert_eq!(w.cut, PromptCut::ShotCaptionCut { kept_words: 1, total_words: 3, kept_tokens: 3, total_tokens: 6 });
}

/// The real tokenizer wrapper: a small Unigram model trained here (pad 0, `</s>` 1, `<unk>` 2).
fn trained_umt5(dir: &std::path::Path) -> storyreel_nn::text::tokenize::Umt5Tokenizer {
    use tokenizers::models::unigram::{Unigram, UnigramTrainer};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::{AddedToken, Tokenizer};
    let corpus = [
        "The video begins with an underwater shot of a rusted, ornate gate.",
        "shot0:A close-up of an elderly woman with white hair. shot1:shot2:",
        "The camera cuts to a wide, static shot of a dimly lit hallway.",
        "The man in the gray sweater looks down at a small object in his hands.",
    ];
    let specials = ["<pad>", "</s>", "<unk>"];
    let mut tokenizer = Tokenizer::new(Unigram::default());
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(120)
        .special_tokens(specials.iter().map(|s| AddedToken::from(*s, true)).collect())
        .unk_token(Some("<unk>".into()))
        .build()
        .unwrap();
    tokenizer.train(&mut TrainerWrapper::UnigramTrainer(trainer), corpus.iter()).unwrap();
    tokenizer.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true))).unwrap();
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).unwrap();
    storyreel_nn::text::tokenize::Umt5Tokenizer::from_file(path).unwrap()
}

#[test]
fn works_with_the_umt5_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let tok = trained_umt5(dir.path());
    let global = "The video begins with an underwater shot of a rusted, ornate gate. ".repeat(3);
    let caption = "A close-up of an elderly woman with white hair.";
    let prompt = shot_prompt(&global, 1, caption);
    let full = tok.encode(&prompt).unwrap();
    let head = tok.encode(&format!("{global}shot1:")).unwrap();
    // Room for the head and a few caption tokens, not all of them.
    let max_len = head.len() + 3;
    assert!(full.len() > max_len + 2);
    let short = tok.clone().with_max_len(max_len).unwrap();
    let w = check_truncation(&short, &global, 1, caption).unwrap().unwrap();
    match w.cut {
        PromptCut::ShotCaptionCut { kept_words, total_words, kept_tokens, total_tokens } => {
            assert_eq!(total_words, 9);
            assert!(kept_words < 3, "{w}");
            assert_eq!(kept_tokens, 3);
            assert_eq!(total_tokens, full.len() - head.len());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(w.prompt_tokens, full.len());
    // A global caption longer than the window loses the shot caption altogether.
    let tiny = tok.clone().with_max_len(10).unwrap();
    let w = check_truncation(&tiny, &global, 1, caption).unwrap().unwrap();
    assert!(matches!(w.cut, PromptCut::GlobalCaptionCut { .. }), "{w}");
    // The full 512-token window holds it all.
    assert_eq!(check_truncation(&tok, &global, 1, caption).unwrap(), None);
}
