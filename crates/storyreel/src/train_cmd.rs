//! `storyreel train <stage> --config FILE`: runs a training stage (resuming when its output
//! folder holds checkpoints of the same recipe).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
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
