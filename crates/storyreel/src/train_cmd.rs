//! `storyreel train <stage> --config FILE`: runs a training stage (resuming when its output
//! folder holds checkpoints of the same recipe).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use storyreel_train::caption_check::{caption_check, CaptionCheckOptions};
use storyreel_train::context_check::{context_check, ContextCheckOptions};
use storyreel_train::denoise_check::{denoise_check, DenoiseCheckOptions};
use storyreel_train::look_ceiling::corpus_look_ceiling;
use storyreel_train::lora::merge_lora_model;
use storyreel_train::ode_pairs::{make_ode_pairs, OdePairsConfig};
use storyreel_train::stage_dmd::{run_dmd_stage, DmdConfig, History};
use storyreel_train::stage_ode_init::{run_ode_init_stage, OdeInitConfig};
use storyreel_train::stage_teacher::{run_teacher_stage, TeacherStageConfig};
use storyreel_train::stage_tiny_decoder::{run_tiny_decoder_stage, TinyDecoderStageConfig};
use storyreel_train::stage_vae::{run_vae_stage, VaeStageConfig};

/// The training stages.
#[derive(Subcommand)]
pub enum TrainStage {
    /// The toy VAE on world clips (held-out PSNR; writes OUT/model with measured latent statistics).
    Vae(StageArgs),
    /// The bidirectional next-shot teacher and the toy text encoder on world stories (needs a
    /// trained VAE: `vae` in the config; writes OUT/model, a story model folder).
    Teacher(TeacherArgs),
    /// ODE pairs from a trained teacher (multi-step Euler + CFG, states kept at the student's
    /// timesteps); writes shards to OUT and resumes after the last finished one.
    OdePairs(OdePairsArgs),
    /// ODE-regression init of the causal student from the teacher and its ODE pairs (writes
    /// OUT/model, a student story model folder).
    OdeInit(OdeInitArgs),
    /// DMD with intra-shot self-forcing (stage 3): the student's rollouts through the KV caches,
    /// the teacher as real score, a trainable critic; writes OUT/model, the distilled student.
    Dmd(DmdArgs),
    /// DMD with inter-shot self-forcing (stage 4): whole stories shot by shot, each shot's
    /// context taken from the student's own earlier shots; LoRA adapters on generator and
    /// critic by default, merged into OUT/model at the end.
    DmdLong(DmdArgs),
    /// A tiny TAEHV-style decoder for a trained VAE's latents (several times faster decoding;
    /// writes OUT/model/tiny_vae.safetensors + tiny_vae_config.json, to copy into a model
    /// folder's tiny_vae/ for `generate --decoder tiny`).
    TinyDecoder(TinyDecoderArgs),
    /// Fold a LoRA adapter folder (PEFT layout, e.g. OUT/generator-lora of `dmd-long`) into a
    /// model folder's DiT and write the merged model folder.
    MergeLora(MergeLoraArgs),
    /// Check whether a trained teacher reads its captions: flow loss on held-out stories with
    /// their own prompts, another story's prompts and the zero caption, at a few timesteps.
    CheckCaptions(CheckCaptionsArgs),
    /// Check whether a trained teacher reads its context: flow loss on held-out stories with
    /// their own context latents, another story's and none, at a few timesteps.
    CheckContext(CheckContextArgs),
    /// From which noise level a trained teacher keeps a shot's shapes: held-out ground-truth
    /// shots noised to a few timesteps, denoised in one step and by the card's sampler, scored
    /// against the clean shot (optionally drawn into a picture).
    CheckDenoise(CheckDenoiseArgs),
    /// What a place's look is worth at the top of the noise schedule, on a teacher config's
    /// encoded training corpus: the bound on what reading context can gain (see
    /// `check-context`).
    CheckLooks(CheckLooksArgs),
    /// Print a stage's full default config as JSON (a starting point for --config).
    DefaultConfig {
        /// The stage: vae, teacher, ode-pairs, ode-init, dmd, dmd-long or tiny-decoder.
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

/// Arguments of `storyreel train tiny-decoder`.
#[derive(Args)]
pub struct TinyDecoderArgs {
    #[command(flatten)]
    common: StageArgs,
    /// Override the VAE (model folder or weights file) whose latents it decodes.
    #[arg(long)]
    vae: Option<PathBuf>,
}

/// Arguments of `storyreel train ode-pairs`.
#[derive(Args)]
pub struct OdePairsArgs {
    /// Config file (.json or .toml); keys left out take their defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the teacher's model folder.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Override the number of training stories (every shot of each is one pair).
    #[arg(long)]
    stories: Option<u64>,
    /// Override the output folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Arguments of `storyreel train ode-init`.
#[derive(Args)]
pub struct OdeInitArgs {
    #[command(flatten)]
    common: StageArgs,
    /// Override the teacher's model folder.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Override the folders of ODE pairs (one or more; runs made side by side on different
    /// story seeds train one student).
    #[arg(long, num_args = 1..)]
    pairs: Vec<PathBuf>,
}

/// Arguments of `storyreel train dmd`.
#[derive(Args)]
pub struct DmdArgs {
    /// Config file (.json or .toml); keys left out take their defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the number of steps (generator and critic together).
    #[arg(long)]
    steps: Option<u64>,
    /// Override the output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the teacher's model folder.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Override the student to distil into (an ODE-init model folder for dmd, a stage-3 one for dmd-long).
    #[arg(long)]
    student: Option<PathBuf>,
}

/// Arguments of `storyreel train merge-lora`.
#[derive(Args)]
pub struct MergeLoraArgs {
    /// The base model folder the adapters were trained on.
    #[arg(long)]
    model: PathBuf,
    /// The LoRA adapters: a PEFT folder (adapter_model.safetensors + adapter_config.json) or file.
    #[arg(long)]
    lora: PathBuf,
    /// The merged model folder to write (must differ from --model).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `storyreel train check-captions` and `check-context`.
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

/// Arguments of `storyreel train check-context`.
#[derive(Args)]
pub struct CheckContextArgs {
    #[command(flatten)]
    common: CheckCaptionsArgs,
    /// Measure with the unconditional caption instead of the shots' captions, so that only the
    /// context can tell the place and cast (does the context path carry anything at all?).
    #[arg(long)]
    without_captions: bool,
}

/// Arguments of `storyreel train check-denoise`.
#[derive(Args)]
pub struct CheckDenoiseArgs {
    #[command(flatten)]
    common: CheckCaptionsArgs,
    /// Write a PNG: per story, the ground truth's middle frame, then the shot resampled from
    /// each timestep.
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Guidance scale (default: the card's; 1 turns CFG off).
    #[arg(long)]
    guidance: Option<f32>,
}

/// Arguments of `storyreel train check-looks`.
#[derive(Args)]
pub struct CheckLooksArgs {
    /// The teacher stage config whose encoded corpus (OUT/latents) to read.
    #[arg(long)]
    config: PathBuf,
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
        TrainStage::OdePairs(args) => {
            let mut cfg = match &args.config {
                Some(path) => OdePairsConfig::read(path).context("reading the stage config")?,
                None => OdePairsConfig::default(),
            };
            if let Some(teacher) = &args.teacher {
                cfg.teacher = teacher.clone();
            }
            if let Some(stories) = args.stories {
                cfg.data.stories = stories;
            }
            if let Some(out) = &args.out {
                cfg.out_dir = out.clone();
            }
            cfg.validate().context("checking the ode-pairs config")?;
            eprintln!(
                "sampling ODE pairs of {} stories with the teacher {} into {}",
                cfg.data.stories,
                cfg.teacher.display(),
                cfg.out_dir.display()
            );
            let report = make_ode_pairs(&cfg).context("making ODE pairs")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        TrainStage::OdeInit(args) => {
            let mut cfg = match &args.common.config {
                Some(path) => OdeInitConfig::read(path).context("reading the stage config")?,
                None => OdeInitConfig::default(),
            };
            if let Some(steps) = args.common.steps {
                cfg.steps = steps;
            }
            if let Some(out) = &args.common.out {
                cfg.train.out_dir = out.clone();
            }
            if let Some(teacher) = &args.teacher {
                cfg.teacher = teacher.clone();
            }
            if !args.pairs.is_empty() {
                cfg.pairs = args.pairs.clone();
            }
            cfg.validate().context("checking the ode-init config")?;
            eprintln!("ODE init of the student for {} steps into {}", cfg.steps, cfg.train.out_dir.display());
            let report = run_ode_init_stage(&cfg).context("training the ODE init")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        TrainStage::Dmd(args) => run_dmd(args, DmdConfig::default(), DmdConfig::read),
        TrainStage::DmdLong(args) => run_dmd(args, DmdConfig::inter_shot(), DmdConfig::read_inter_shot),
        TrainStage::TinyDecoder(args) => {
            let mut cfg = match &args.common.config {
                Some(path) => TinyDecoderStageConfig::read(path).context("reading the stage config")?,
                None => TinyDecoderStageConfig::default(),
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
            cfg.validate().context("checking the tiny-decoder stage config")?;
            eprintln!("training a tiny decoder for {} steps into {}", cfg.steps, cfg.train.out_dir.display());
            let report = run_tiny_decoder_stage(&cfg).context("training the tiny decoder")?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        TrainStage::MergeLora(args) => {
            let report = merge_lora_model(&args.model, &args.lora, &args.out, None)
                .with_context(|| format!("merging {} into {}", args.lora.display(), args.model.display()))?;
            eprintln!("merged {} adapted layers into {}", report.merged, report.model_dir.display());
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        TrainStage::CheckCaptions(args) => check_captions(args),
        TrainStage::CheckContext(args) => check_context(args),
        TrainStage::CheckDenoise(args) => check_denoise(args),
        TrainStage::CheckLooks(args) => check_looks(args),
        TrainStage::DefaultConfig { stage } => match stage.as_str() {
            "vae" => {
                println!("{}", serde_json::to_string_pretty(&VaeStageConfig::default())?);
                Ok(())
            }
            "teacher" => {
                println!("{}", serde_json::to_string_pretty(&TeacherStageConfig::default())?);
                Ok(())
            }
            "ode-pairs" => {
                println!("{}", serde_json::to_string_pretty(&OdePairsConfig::default())?);
                Ok(())
            }
            "ode-init" => {
                println!("{}", serde_json::to_string_pretty(&OdeInitConfig::default())?);
                Ok(())
            }
            "dmd" => {
                println!("{}", serde_json::to_string_pretty(&DmdConfig::default())?);
                Ok(())
            }
            "dmd-long" => {
                println!("{}", serde_json::to_string_pretty(&DmdConfig::inter_shot())?);
                Ok(())
            }
            "tiny-decoder" => {
                println!("{}", serde_json::to_string_pretty(&TinyDecoderStageConfig::default())?);
                Ok(())
            }
            other => anyhow::bail!(
                "unknown stage {other:?}; stages: vae, teacher, ode-pairs, ode-init, dmd, dmd-long, tiny-decoder"
            ),
        },
    }
}

/// `train dmd` and `train dmd-long`: the same stage over different defaults.
fn run_dmd(
    args: &DmdArgs,
    defaults: DmdConfig,
    read: fn(&std::path::Path) -> storyreel_train::Result<DmdConfig>,
) -> Result<()> {
    let mut cfg = match &args.config {
        Some(path) => read(path).context("reading the stage config")?,
        None => defaults,
    };
    if let Some(steps) = args.steps {
        cfg.steps = steps;
    }
    if let Some(out) = &args.out {
        cfg.out_dir = out.clone();
    }
    if let Some(teacher) = &args.teacher {
        cfg.teacher = teacher.clone();
    }
    if let Some(student) = &args.student {
        cfg.student = student.clone();
    }
    cfg.validate().context("checking the dmd config")?;
    let stage = match cfg.history {
        History::GroundTruth => "stage 3, ground-truth context",
        History::SelfGenerated => "stage 4, self-generated context",
    };
    eprintln!("DMD ({stage}) of {} for {} steps into {}", cfg.student.display(), cfg.steps, cfg.out_dir.display());
    let report = run_dmd_stage(&cfg).context("training DMD")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn check_looks(args: &CheckLooksArgs) -> Result<()> {
    let cfg = TeacherStageConfig::read(&args.config).context("reading the teacher config")?;
    let report = corpus_look_ceiling(&cfg).context("measuring what the looks are worth")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("first latent frame of {} shots, error of the best prediction at t = 1000 by:", report.shots);
    println!("  the mean of every shot      {:.4}", report.mse_overall_mean);
    println!("  the mean of its place       {:.4}", report.mse_place_mean);
    println!("  the mean of its place+look  {:.4}", report.mse_look_mean);
    println!("{} later shots whose place appeared earlier in their story:", report.later_shots);
    println!("  place mean                  {:.4}", report.later_mse_place_mean);
    println!(
        "  place+look mean             {:.4}  ({:.1}% less)",
        report.later_mse_look_mean,
        100.0 * report.later_look_gain()
    );
    println!(
        "  look read from earlier shots {:.4}  ({:.1}% less; the right look {:.0}% of the time)",
        report.later_mse_read_look,
        100.0 * report.later_read_gain(),
        100.0 * report.read_look_accuracy
    );
    println!("by place (all shots):          place mean  place+look mean");
    for row in &report.per_place {
        let name = storyreel_world::Place::ALL.get(row.place).map(|p| format!("{p:?}")).unwrap_or_default();
        println!(
            "  {name:<12} {:>5} shots      {:.4}      {:.4}  ({:.1}% less)",
            row.shots,
            row.mse_place_mean,
            row.mse_look_mean,
            100.0 * (1.0 - row.mse_look_mean / row.mse_place_mean)
        );
    }
    Ok(())
}

fn check_context(args: &CheckContextArgs) -> Result<()> {
    let (common, without_captions) = (&args.common, args.without_captions);
    let model = load_checked_model(&common.model)?;
    let options = ContextCheckOptions {
        first_seed: common.first_seed,
        stories: common.stories,
        progress: !common.json,
        without_captions,
        ..ContextCheckOptions::default()
    };
    let report = context_check(&model, &options).context("checking context use")?;
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    print_loss_table(report.stories, "none", report.rows.iter().map(|r| (r.t, r.own, r.other, r.none)));
    println!(
        "context gain{}: {:.1}% against another story's context, {:.1}% against none",
        if without_captions { " without captions" } else { "" },
        100.0 * report.context_gain,
        100.0 * report.gain_over_none
    );
    Ok(())
}

fn check_denoise(args: &CheckDenoiseArgs) -> Result<()> {
    let common = &args.common;
    let model = load_checked_model(&common.model)?;
    let options = DenoiseCheckOptions {
        first_seed: common.first_seed,
        stories: common.stories,
        progress: !common.json,
        sheet: args.sheet.clone(),
        guidance: args.guidance,
        ..DenoiseCheckOptions::default()
    };
    let report = denoise_check(&model, &options).context("checking what the teacher denoises")?;
    if common.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "last shots of {} stories (seeds {}..{}), guidance {}; a flat shot of the right colours has error {:.4}",
        report.stories,
        common.first_seed,
        common.first_seed + report.stories,
        report.guidance,
        report.flat_error
    );
    println!(
        "{:>6}  {:>5}  {:>14}  {:>14}  {:>15}  {:>15}",
        "t", "steps", "one-step error", "resampled err.", "one-step struct.", "resampled struct."
    );
    for r in &report.rows {
        println!(
            "{:>6.0}  {:>5}  {:>14.4}  {:>14.4}  {:>15.1}%  {:>15.1}%",
            r.t,
            r.steps,
            r.one_step_error,
            r.resampled_error,
            100.0 * r.one_step_structure,
            100.0 * r.resampled_structure
        );
    }
    if let Some(path) = &args.sheet {
        println!("picture: {}", path.display());
    }
    Ok(())
}

fn check_captions(args: &CheckCaptionsArgs) -> Result<()> {
    let model = load_checked_model(&args.model)?;
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
    print_loss_table(report.stories, "none", report.rows.iter().map(|r| (r.t, r.own, r.other, r.unconditional)));
    let top = report.rows.iter().map(|r| r.t).fold(0.0, f32::max);
    println!("caption gain at t = {top:.0}: {:.1}%", 100.0 * report.caption_gain);
    Ok(())
}

/// Loads the teacher a check measures.
fn load_checked_model(path: &std::path::Path) -> Result<storyreel_engine::StoryModel> {
    storyreel_engine::StoryModel::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("loading the model {}", path.display()))
}

/// Prints a check's rows: timestep, then the flow MSE with the story's own conditioning, with
/// another story's, and with the `last` column's.
fn print_loss_table(stories: u64, last: &str, rows: impl Iterator<Item = (f32, f64, f64, f64)>) {
    println!("flow MSE of the last shot of {stories} held-out stories");
    println!("{:>6}  {:>8}  {:>8}  {:>8}", "t", "own", "other", last);
    for (t, own, other, none) in rows {
        println!("{t:>6.0}  {own:>8.4}  {other:>8.4}  {none:>8.4}");
    }
}
