//! The metrics judge: ground truth scores near the top, and each corruption scores measurably
//! lower on what it breaks. Also the probe's accuracy, fitting, and the report files.

use storyreel_eval::corrupt::{corrupt, Corruption};
use storyreel_eval::evaluate::{embedding_distance, evaluate_story, summarise, EvalOptions, Metrics};
use storyreel_eval::probe::{render_samples, Probe, ProbeFitOptions, PROBE_TEST_SEED_BASE};
use storyreel_eval::report::{batch_markdown, compare_markdown, contact_sheet, story_markdown, table_markdown};
use storyreel_world::{generate_story, render_story, Story, StoryOptions, StoryPattern};

fn stories() -> Vec<Story> {
    let options = |p| StoryOptions { min_shots: 5, max_shots: 6, pattern: Some(p), ..StoryOptions::default() };
    (0..6u64).map(|i| generate_story(31_000 + i, &options(StoryPattern::ALL[i as usize % 3])).unwrap()).collect()
}

/// Mean metrics of every story under `corruption` (None = ground truth), with the Fréchet
/// distance to the rendered ground truth.
fn run(probe: &Probe, stories: &[Story], corruption: Option<Corruption>) -> Metrics {
    let (mut reports, mut gen, mut reference) = (Vec::new(), Vec::new(), Vec::new());
    for story in stories {
        let frames = render_story(story).unwrap().frames;
        let video = match corruption {
            Some(c) => corrupt(story, &frames, c, 7).unwrap(),
            None => frames.clone(),
        };
        assert_eq!(video.len(), frames.len());
        let (report, emb) = evaluate_story(probe, story, &video, 16.0, &EvalOptions::default()).unwrap();
        reports.push(report);
        gen.extend(emb);
        reference.extend(probe.read_frames(&frames).unwrap().into_iter().map(|r| r.embedding));
    }
    let fd = embedding_distance(&gen, &reference).unwrap();
    summarise(reports, Some(fd)).metrics
}

#[test]
fn ground_truth_tops_the_metrics_and_every_corruption_scores_lower() {
    let probe = Probe::embedded().unwrap();
    let stories = stories();
    let gt = run(&probe, &stories, None);
    assert!(gt.shot_cut_accuracy > 0.98, "ground-truth cut accuracy {}", gt.shot_cut_accuracy);
    assert!(gt.prompt_adherence > 0.9, "ground-truth adherence {}", gt.prompt_adherence);
    assert!(gt.intra_shot_consistency > 0.9, "{gt:?}");
    assert!(gt.quality_fd.unwrap() < 1e-3, "ground truth against itself: {:?}", gt.quality_fd);
    let gt_char = gt.inter_shot_character_consistency.unwrap();

    let shuffled = run(&probe, &stories, Some(Corruption::ShuffledShots));
    assert!(shuffled.prompt_adherence < gt.prompt_adherence - 0.1, "shuffled {shuffled:?} vs {gt:?}");
    assert!(shuffled.shot_cut_accuracy < gt.shot_cut_accuracy - 0.05, "shuffled {shuffled:?}");

    let swapped = run(&probe, &stories, Some(Corruption::SwappedCharacters));
    assert!(swapped.adherence_characters < gt.adherence_characters - 0.2, "swapped {swapped:?}");
    assert!(swapped.inter_shot_character_consistency.unwrap() < gt_char - 0.03, "swapped {swapped:?} vs {gt:?}");

    // Captions never name a look, so only the look-aware consistency measures can see this.
    let gt_place = gt.inter_shot_place_consistency.unwrap();
    let changed = run(&probe, &stories, Some(Corruption::ChangedLooks));
    assert!(changed.inter_shot_character_consistency.unwrap() < gt_char - 0.1, "changed looks {changed:?} vs {gt:?}");
    assert!(changed.inter_shot_place_consistency.unwrap() < gt_place - 0.1, "changed looks {changed:?} vs {gt:?}");
    assert!(changed.prompt_adherence > gt.prompt_adherence - 0.05, "changed looks {changed:?} vs {gt:?}");

    let frozen = run(&probe, &stories, Some(Corruption::FrozenFrames));
    assert!(frozen.mean_motion < 0.2 * gt.mean_motion, "frozen {frozen:?}");
    assert!(frozen.dynamic_degree < gt.dynamic_degree, "frozen {frozen:?} vs {gt:?}");

    let shifted = run(&probe, &stories, Some(Corruption::ShiftedCuts(4)));
    assert!(shifted.shot_cut_accuracy < gt.shot_cut_accuracy - 0.05, "shifted {shifted:?}");

    let noisy = run(&probe, &stories, Some(Corruption::Noise(40.0)));
    assert!(noisy.quality_fd.unwrap() > 1.0, "noise {noisy:?}");
    assert!(noisy.intra_shot_consistency < gt.intra_shot_consistency, "noise {noisy:?}");

    let table = table_markdown(&[("ground truth".into(), gt), ("noise".into(), noisy)]);
    assert!(table.contains("`prompt_adherence`") && table.contains("ground truth"));
}

#[test]
fn a_video_of_the_wrong_length_is_refused() {
    let probe = Probe::embedded().unwrap();
    let story = &stories()[0];
    let frames = render_story(story).unwrap().frames;
    let err = evaluate_story(&probe, story, &frames[..frames.len() - 3], 16.0, &EvalOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&format!("{} frames", frames.len() - 3)) && err.contains(&story.id), "{err}");
}

#[test]
fn shipped_probe_reads_held_out_rendered_frames() {
    let probe = Probe::embedded().unwrap();
    let test = render_samples(PROBE_TEST_SEED_BASE, 12, 3, None).unwrap();
    let acc = probe.accuracy(&test).unwrap();
    assert!(acc.place > 0.97, "{acc:?}");
    assert!(acc.framing > 0.95, "{acc:?}");
    assert!(acc.characters_f1 > 0.85, "{acc:?}");
    assert!(acc.place_look > 0.9, "{acc:?}");
    assert!(acc.character_looks_f1 > 0.8, "{acc:?}");
    assert!(acc.foreground > 0.9, "{acc:?}");
}

#[test]
fn fitting_lowers_the_loss_and_the_probe_round_trips() {
    let options = ProbeFitOptions { stories: 6, epochs: 6, batch: 64, ..ProbeFitOptions::default() };
    let samples = render_samples(options.first_seed, options.stories, 4, Some(3)).unwrap();
    let mut losses = Vec::new();
    let probe = Probe::fit_samples(&samples, &options, &mut |_, _, loss| losses.push(loss)).unwrap();
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < losses[0] * 0.8, "{losses:?}");
    let dir = tempfile::tempdir().unwrap();
    let card = storyreel_eval::probe::ProbeCard {
        fit: options,
        fit_frames: samples.len(),
        test_rendered: Default::default(),
        test_blurred: Default::default(),
        fit_seconds: 0.0,
    };
    probe.save(dir.path(), &card).unwrap();
    let back = Probe::load(dir.path()).unwrap();
    let a = probe.read_features(&[samples[0].features.clone()]).unwrap();
    let b = back.read_features(&[samples[0].features.clone()]).unwrap();
    assert_eq!(a[0].embedding, b[0].embedding);
    let missing = Probe::load(&dir.path().join("nope")).err().unwrap().to_string();
    assert!(missing.contains("no probe weights"), "{missing}");
    // A probe fitted before looks lacks their heads: the error says to refit.
    let weights = dir.path().join("probe.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    tensors.retain(|name, _| !name.starts_with("place_look") && !name.starts_with("character_looks"));
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let old = Probe::load(dir.path()).err().unwrap().to_string();
    assert!(old.contains("fit-probe") && old.contains("looks"), "{old}");
    std::fs::write(dir.path().join("probe.safetensors"), b"not safetensors").unwrap();
    assert!(Probe::load(dir.path()).is_err());
}

#[test]
fn reports_name_every_metric() {
    let probe = Probe::embedded().unwrap();
    let story = &stories()[1];
    let frames = render_story(story).unwrap().frames;
    let (report, _) = evaluate_story(&probe, story, &frames, 16.0, &EvalOptions::default()).unwrap();
    let md = story_markdown(&report);
    for key in [
        "shot_cut_accuracy",
        "intra_shot_consistency",
        "inter_shot_character_consistency",
        "prompt_adherence",
        "dynamic_degree",
    ] {
        assert!(md.contains(key), "{key} missing from\n{md}");
    }
    assert_eq!(report.shots.len(), story.shots.len());
    let sheet = contact_sheet(&report, &frames).unwrap();
    assert_eq!(sheet.rows(), story.shots.len());
    let json = serde_json::to_string(&report).unwrap();
    let back: storyreel_eval::evaluate::StoryReport = serde_json::from_str(&json).unwrap();
    // JSON keeps 17 significant digits; the last bit may differ.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(back.metrics.intra_shot_consistency, report.metrics.intra_shot_consistency));
    assert!(close(back.metrics.prompt_adherence, report.metrics.prompt_adherence));
    assert_eq!(back.shots.len(), report.shots.len());
    let batch = summarise(vec![report.clone(), report.clone()], None);
    assert_eq!(batch.metrics.prompt_adherence, report.metrics.prompt_adherence);
    assert!(batch_markdown(&batch).contains(&story.id));
    // The by-shot-index rows are the per-shot numbers, grouped: here two copies of one story.
    assert_eq!(batch.by_shot_index.len(), report.shots.len());
    for (row, shot) in batch.by_shot_index.iter().zip(&report.shots) {
        assert_eq!((row.index, row.shots), (shot.index, 2));
        assert!((row.adherence - shot.adherence).abs() < 1e-12);
        let later: Vec<f64> =
            report.pairs.iter().filter(|p| p.b == shot.index && p.kind == "character").map(|p| p.similarity).collect();
        match row.character_consistency {
            Some(c) => assert!((c - later.iter().sum::<f64>() / later.len() as f64).abs() < 1e-12),
            None => assert!(later.is_empty()),
        }
    }
    assert!(batch.by_shot_index[0].character_consistency.is_none(), "the first shot has nothing earlier");
    assert!(batch_markdown(&batch).contains("By shot index"));
    let cmp = compare_markdown("a", &report.metrics, "b", &batch.metrics);
    assert!(cmp.contains("+0.0000"), "{cmp}");
}

#[test]
fn chroma_420_keeps_luma_and_averages_colour() {
    use storyreel_eval::features::PROBE_SIZE;
    use storyreel_eval::probe::chroma_420;
    let n = PROBE_SIZE;
    let grey = vec![[0.4f32; 3]; n * n];
    for (a, b) in chroma_420(&grey).iter().zip(&grey) {
        assert!((a[0] - b[0]).abs() < 1e-5 && (a[2] - b[2]).abs() < 1e-5);
    }
    // A red/blue checkerboard loses its colour contrast but keeps each pixel's brightness.
    let checker: Vec<[f32; 3]> =
        (0..n * n).map(|i| if (i % n + i / n).is_multiple_of(2) { [0.9, 0.1, 0.1] } else { [0.1, 0.1, 0.9] }).collect();
    let out = chroma_420(&checker);
    let luma = |p: [f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    for (a, b) in out.iter().zip(&checker) {
        assert!((luma(*a) - luma(*b)).abs() < 0.02, "{a:?} vs {b:?}");
    }
    let spread = |v: &[[f32; 3]]| (v[0][0] - v[1][0]).abs();
    assert!(spread(&out) < 0.5 * spread(&checker));
}
