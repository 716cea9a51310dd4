//! The `storyreel` command line.

mod bench;
mod bench_serve;
mod bench_text;
mod bench_train;
mod bench_vae;
mod codec;
mod context_relevance;
mod decode;
mod default_model;
mod device;
mod encode_text;
mod eval_cmd;
mod frames_out;
mod generate_cmd;
mod generate_latents;
mod serve_cmd;
mod testcase;
mod train_cmd;
mod world_cmd;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// storyreel: streaming, interactive, multi-shot video generation (ShotStream on Wan2.1).
#[derive(Parser)]
#[command(name = "storyreel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a checkpoint's layout, config, parameter count and dtypes (file or model folder).
    Inspect {
        /// Weights file (.safetensors, .pt, .pth), shard index, or model folder.
        path: PathBuf,
    },
    /// Generate a story (or a folder of stories) with a story model, shot by shot.
    Generate(generate_cmd::Args),
    /// Serve the HTTP + WebSocket API and the web page (interactive stories in a browser).
    Serve(serve_cmd::Args),
    /// Run one shot of the streaming loop from given inputs (for comparison with the reference).
    GenerateLatents(generate_latents::Args),
    /// Decode latents to video (MP4, PNG folder, contact sheet, GIF) or to a frames tensor.
    Decode(decode::DecodeArgs),
    /// Encode frames to normalised latents with the model's VAE.
    EncodeFrames(decode::EncodeArgs),
    /// Encode a caption with a text encoder (UMT5 or the toy encoder), with an embedding cache.
    EncodeText(encode_text::Args),
    /// Write a random model folder and matching generate-latents inputs (tests, parity checks).
    Testcase(testcase::Args),
    /// Measure speed: the DiT chunk forward or the machine's matmul peak.
    Bench {
        #[command(subcommand)]
        what: bench::What,
    },
    /// Score generated videos against their stories (cuts, consistency, adherence, motion, quality).
    Eval(eval_cmd::EvalArgs),
    /// Train a model stage (resumes from the stage's checkpoints).
    Train {
        #[command(subcommand)]
        stage: train_cmd::TrainStage,
    },
    /// The synthetic story world: datasets, the held-out benchmark, story renders, the shot detector.
    World {
        #[command(subcommand)]
        what: world_cmd::WorldCommand,
    },
}

fn main() {
    keep_large_allocations();
    quiet_broken_pipe();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Inspect { path } => inspect(&path),
        Command::Generate(args) => generate_cmd::run(&args),
        Command::Serve(args) => serve_cmd::run(&args),
        Command::GenerateLatents(args) => generate_latents::run(&args),
        Command::Decode(args) => decode::run_decode(&args),
        Command::EncodeFrames(args) => decode::run_encode(&args),
        Command::EncodeText(args) => encode_text::run(&args),
        Command::Testcase(args) => testcase::run(&args),
        Command::Bench { what } => bench::run(&what),
        Command::Eval(args) => eval_cmd::run(&args),
        Command::Train { stage } => train_cmd::run(&stage),
        Command::World { what } => world_cmd::run(&what),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Keeps freed large blocks in the heap instead of returning them to the kernel: activations of
/// tens of MB are allocated every layer, and glibc would otherwise mmap and zero-fault each one
/// afresh (measured: half the page faults and 5% less CPU time in `bench dit`).
fn keep_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// `storyreel … | head` ends quietly when the reader goes away, as other command-line tools do,
/// instead of panicking in `println!` with a backtrace (Rust ignores SIGPIPE by default).
fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let report = storyreel_nn::checkpoint::inspect(path)
        .map_err(|e| anyhow::anyhow!(e))
        .map_err(|e| e.context(format!("inspecting {}", path.display())))?;
    println!("{report}");
    Ok(())
}
