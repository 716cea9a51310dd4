//! The world's vocabulary file is the toy text encoder's: its tokenizer reads it and knows
//! every word of every caption and ShotStream prompt the world writes.

use storyreel_engine::prompt::story_prompts;
use storyreel_nn::text::toy::ToyTokenizer;
use storyreel_world::dataset::write_vocabulary;
use storyreel_world::{generate_story, StoryOptions};

#[test]
fn toy_tokenizer_knows_every_world_word() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    write_vocabulary(&path).unwrap();
    let tokenizer = ToyTokenizer::from_file(&path).unwrap();
    let mut longest = 0;
    for seed in 0..400u64 {
        let story = generate_story(seed, &StoryOptions::default()).unwrap();
        let captions: Vec<&str> = story.shots.iter().map(|s| s.caption.as_str()).collect();
        for prompt in story_prompts(&story.global_caption, &captions) {
            let tokens = tokenizer.tokenize(&prompt, 512);
            assert!(tokens.unknown.is_empty(), "unknown {:?} in {prompt:?}", tokens.unknown);
            assert!(!tokens.truncated);
            longest = longest.max(tokens.ids.len());
        }
    }
    // World prompts are short: a toy text length of 64 tokens holds every one of them.
    assert!(longest <= 64, "longest prompt has {longest} tokens");
}
