//! The fixed held-out benchmark: 64 stories from a seed range no training set may use, every
//! pattern equally often (22/21/21), at least five shots each.

use crate::dataset::DatasetSpec;
use crate::error::Result;
use crate::story::{Story, StoryOptions, VideoFormat};

/// Number of benchmark stories.
pub const BENCHMARK_STORIES: usize = 64;
/// Seed of benchmark story 0; story `i` uses `BENCHMARK_SEED_BASE + i`. Far above any seed range a
/// training run would start from, so the default `--seed 0` sets never touch it.
pub const BENCHMARK_SEED_BASE: u64 = 9_000_000_000;

/// How benchmark stories are drawn: 64×64 at 16 fps, 5 to 8 shots, default shot lengths.
pub fn benchmark_options() -> StoryOptions {
    StoryOptions {
        format: VideoFormat { width: 64, height: 64, fps: 16 },
        min_shots: 5,
        max_shots: 8,
        pattern: None,
        ..StoryOptions::default()
    }
}

/// The dataset spec that writes the benchmark (videos included, patterns cycled).
pub fn benchmark_spec() -> DatasetSpec {
    DatasetSpec {
        first_seed: BENCHMARK_SEED_BASE,
        stories: BENCHMARK_STORIES,
        options: benchmark_options(),
        write_videos: true,
        cycle_patterns: true,
        benchmark: true,
        overwrite: false,
    }
}

/// The 64 benchmark stories; story `i` has pattern `StoryPattern::ALL[i % 3]` and seed
/// `BENCHMARK_SEED_BASE + i`.
pub fn benchmark_stories() -> Result<Vec<Story>> {
    let spec = benchmark_spec();
    (0..spec.stories).map(|i| spec.story(i)).collect()
}

/// Whether `seed` belongs to the held-out benchmark.
pub fn is_benchmark_seed(seed: u64) -> bool {
    (BENCHMARK_SEED_BASE..BENCHMARK_SEED_BASE + BENCHMARK_STORIES as u64).contains(&seed)
}
