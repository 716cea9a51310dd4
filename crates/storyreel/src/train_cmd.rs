//! `storyreel train <stage> --config FILE`: runs a training stage (resuming when its output
//! folder holds checkpoints of the same recipe).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use storyreel_train::caption_check::{caption_check, CaptionCheckOptions};
use storyreel_train::stage_teacher::{run_teacher_stage, TeacherStageConfig};
use storyreel_train::stage_vae::{run_vae_stage, VaeStageConfig};

/// The training stages.
#[derive(Subcommand)]
pub enum TrainStage {
    /// The toy VAE on world clips (held-out PSNR; writes OUT/model with measured latent statistics).
    Vae(StageArgs),
    /// The bidirectional next-shot teacher and the toy text encoder on world stories (needs a
    /// trained VAE: `vae` in the config; writes OUT/model, a story model folder).
    Teacher(TeacherArgs),
    /// Check whether a trained teacher reads its captions: flow loss on held-out stories with
    /// their own prompts, another story's prompts and the zero caption, at a few timesteps.
    CheckCaptions(CheckCaptionsArgs),
    /// Print a stage's full default config as JSON (a starting point for --config).
    DefaultConfig {
        /// The stage: vae or teacher.
        stage: String,
    },
}

/// Arguments every stage takes.
#[derive(Args)]
pub struct StageArgs {
    /// Config file (.json or .toml); keys left out take their defaults (`storyreel train default-config vae`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the number of steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Override the output folder (checkpoints, train.jsonl, model/).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Arguments of the teacher stage.
#[derive(Args)]
pub struct TeacherArgs {
    #[command(flatten)]
    common: StageArgs,
    /// Override the VAE folder.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Train the no-context ablation (context always zero).
    #[arg(long)]
    no_context: bool,
}

/// Arguments of `storyreel train check-captions`.
#[derive(Args)]
pub struct CheckCaptionsArgs {
    /// The story model folder (a teacher).
    #[arg(long)]
    model: PathBuf,
    /// Held-out stories to measure.
    #[arg(long, default_value_t = 16)]
    stories: u64,
    /// First story seed (default: the toy VAE's held-out range).
    #[arg(long, default_value_t = storyreel_train::caption_check::DEFAULT_FIRST_SEED)]
    first_seed: u64,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `storyreel train`.
pub fn run(stage: &TrainStage) -> Result<()> {
    match stage {
        TrainStage::Vae(args) => {
            let mut cfg = match &args.config {
                Some(path) => VaeStageConfig::read(path).context("reading the stage config")?,
                None => VaeStageConfig::default(),
            };
            if let Some(steps) = args.steps {
                cfg.steps = steps;
            }
            if let Some(out) = &args.out {
                cfg.train.out_dir = out.clone();
            }
            cfg.validate().context("checking the vae stage config")?;
            eprintln!("training the toy VAE for {} steps into {}", cfg.steps, cfg.train.out_dir.display());
            let report = run_vae_stage(&cfg).context("training the toy VAE")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        TrainStage::Teacher(args) => {
            let mut cfg = match &args.common.config {
                Some(path) => TeacherStageConfig::read(path).context("reading the stage config")?,
                None => TeacherStageConfig::default(),
            };
            if let Some(steps) = args.common.steps {
                cfg.steps = steps;
            }
            if let Some(out) = &args.common.out {
                cfg.train.out_dir = out.clone();
            }
            if let Some(vae) = &args.vae {
                cfg.vae = vae.clone();
            }
            if args.no_context {
                cfg.use_context = false;
            }
            cfg.validate().context("checking the teacher stage config")?;
            eprintln!(
                "training the toy teacher ({}) for {} steps into {}",
                if cfg.use_context { "with context" } else { "no-context ablation" },
                cfg.steps,
                cfg.train.out_dir.display()
            );
            let report = run_teacher_stage(&cfg).context("training the teacher")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        TrainStage::CheckCaptions(args) => check_captions(args),
        TrainStage::DefaultConfig { stage } => match stage.as_str() {
            "vae" => {
                println!("{}", serde_json::to_string_pretty(&VaeStageConfig::default())?);
                Ok(())
            }
            "teacher" => {
                println!("{}", serde_json::to_string_pretty(&TeacherStageConfig::default())?);
                Ok(())
            }
            other => anyhow::bail!("unknown stage {other:?}; stages: vae, teacher"),
        },
    }
}

fn check_captions(args: &CheckCaptionsArgs) -> Result<()> {
    let model = storyreel_engine::StoryModel::load(&args.model, &candle_core::Device::Cpu)
        .with_context(|| format!("loading the model {}", args.model.display()))?;
    let options = CaptionCheckOptions {
        first_seed: args.first_seed,
        stories: args.stories,
        progress: !args.json,
        ..CaptionCheckOptions::default()
    };
    let report = caption_check(&model, &options).context("checking caption use")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("flow MSE of the last shot of {} held-out stories", report.stories);
    println!("{:>6}  {:>8}  {:>8}  {:>8}", "t", "own", "other", "none");
    for r in &report.rows {
        println!("{:>6.0}  {:>8.4}  {:>8.4}  {:>8.4}", r.t, r.own, r.other, r.unconditional);
    }
    let top = report.rows.iter().map(|r| r.t).fold(0.0, f32::max);
    println!("caption gain at t = {top:.0}: {:.1}%", 100.0 * report.caption_gain);
    Ok(())
}
