//! ShotStream's own demo layout: `demo/testdata/testset.csv` names its caption files relative to
//! the repository root it is run from, and its `01.json` holds six captions under a row of five.
//! This file holds one test because it changes the process's current directory.

use storyreel_story::read_stories;

#[test]
fn shotstream_demo_index_reads_from_the_repository_root() {
    let repo = tempfile::tempdir().unwrap();
    let json_dir = repo.path().join("demo/testdata/json");
    std::fs::create_dir_all(&json_dir).unwrap();
    let captions: Vec<String> = (1..=6).map(|i| format!("\"shot{i}\": \"A red fox walks right, shot {i}.\"")).collect();
    std::fs::write(json_dir.join("01.json"), format!("{{\"global_caption\": \"A fox.\", {}}}", captions.join(", ")))
        .unwrap();
    std::fs::write(
        repo.path().join("demo/testdata/testset.csv"),
        "shot_num_from_caption,json_path,frame_number\n\
         5,demo/testdata/json/01.json,\"[[0, 81], [81, 162], [162, 243], [243, 324], [324, 405]]\"\n",
    )
    .unwrap();
    std::env::set_current_dir(repo.path()).unwrap();
    let stories = read_stories(std::path::Path::new("demo/testdata/testset.csv"), None).unwrap();
    assert_eq!(stories.len(), 1);
    assert_eq!(stories[0].id.as_deref(), Some("testset"));
    assert_eq!(stories[0].shots.len(), 5, "the first five of six captions, as ShotStream reads them");
    assert!(stories[0].shots.iter().all(|s| s.frames == Some(81)));
    assert_eq!(stories[0].shots[4].caption, "A red fox walks right, shot 5.");
}
