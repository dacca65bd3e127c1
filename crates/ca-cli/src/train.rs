//! `ca train`: parse options, build the run config, draw a progress bar, dispatch to
//! `ca_train::run::train`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use ca_train::config::RunConfig;
use ca_train::run::{self, Progress, RunOptions};
use indicatif::{ProgressBar, ProgressStyle};

/// Options of `ca train`.
#[derive(clap::Args)]
pub struct Train {
    /// The run config (TOML), e.g. configs/ca-gan-synthetic.toml. With --resume, the run's own
    /// config.toml is used and this may be omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key: --set train.batch_size=32 (repeatable; typed like the key).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) sets: Vec<String>,
    /// Run directory (default: runs/NNNNN-<dataset>-<model>-bs<batch>). Must be new or empty,
    /// unless --resume.
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// Seed (overrides train.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in total (overrides train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Stop cleanly, with a final checkpoint, after this many minutes (overrides train.max_minutes).
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Print the resolved config and exit (a run writes it to RUN/config.toml).
    #[arg(long)]
    dry_run: bool,
}

struct Bar {
    bar: ProgressBar,
    last: String,
}

impl Progress for Bar {
    fn on_step(&mut self, step: u64, _total: u64, logged: Option<&[(String, f64)]>) {
        if let Some(l) = logged {
            let main: Vec<String> = l
                .iter()
                .filter(|(n, _)| {
                    matches!(
                        n.as_str(),
                        "loss_d" | "loss_g" | "recon_pixel" | "e_recon" | "denoise"
                    )
                })
                .map(|(n, v)| format!("{n} {v:.3}"))
                .collect();
            self.last = main.join("  ");
        }
        self.bar.set_position(step);
        self.bar.set_message(self.last.clone());
    }
    fn message(&mut self, msg: &str) {
        // A hidden bar (stderr not a terminal: batch jobs, nohup, tests) drops println.
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }
}

impl Train {
    pub fn run(self) -> anyhow::Result<()> {
        let mut sets = self.sets.clone();
        if let Some(s) = self.seed {
            sets.push(format!("train.seed={s}"));
        }
        if let Some(s) = self.max_steps {
            sets.push(format!("train.max_steps={s}"));
        }
        if let Some(m) = self.max_minutes {
            sets.push(format!("train.max_minutes={m}"));
        }
        let (cfg, run_dir) = if self.resume {
            let Some(dir) = self.out.clone() else {
                bail!("--resume needs --out RUN_DIR (the run to continue)");
            };
            let saved = dir.join("config.toml");
            let cfg = RunConfig::load(&saved, &sets).with_context(|| {
                format!(
                    "cannot read the config of the run to resume ('{}')",
                    saved.display()
                )
            })?;
            if let Some(c) = &self.config {
                let given = RunConfig::load(c, &sets)?;
                if given.model_digest() != cfg.model_digest() {
                    bail!(
                        "--config {} describes another model than the run '{}' being resumed; drop --config to use the run's own",
                        c.display(),
                        dir.display()
                    );
                }
            }
            (cfg, dir)
        } else {
            let Some(c) = &self.config else {
                bail!("--config FILE is required (e.g. --config configs/ca-gan-synthetic.toml)");
            };
            let cfg = RunConfig::load(c, &sets)?;
            let dir = self.out.clone().unwrap_or_else(|| {
                run::next_run_dir(std::path::Path::new("runs"), &run::describe(&cfg))
            });
            (cfg, dir)
        };
        if self.dry_run {
            print!("{}", cfg.to_toml());
            return Ok(());
        }
        let device = crate::apply::parse_device(&self.device)?;
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination` feature): finish the step, write a
        // checkpoint, exit 0. A second signal exits at once (the previous checkpoint stays valid).
        let flag = run::stop_flag();
        if let Err(e) = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "\nsecond stop signal: exiting now without a final checkpoint (the last one stays valid)"
                );
                std::process::exit(130);
            }
            eprintln!(
                "\nstop signal received (SIGINT/SIGTERM): finishing the current step and writing a checkpoint (send it again to exit at once)"
            );
        }) {
            tracing::warn!(
                "cannot install the SIGINT/SIGTERM handler ({e}); a signal will stop the run without a final checkpoint"
            );
        }
        let bar = ProgressBar::new(cfg.train.max_steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let mut progress = Bar {
            bar,
            last: String::new(),
        };
        let opts = RunOptions {
            run_dir,
            resume: self.resume,
            device,
        };
        let summary = run::train(&cfg, &opts, &mut progress)?;
        progress.bar.finish();
        println!(
            "trained {} steps in {:.0} s ({}); run directory: {}",
            summary.steps,
            summary.wall_clock_s,
            summary.stopped_because,
            summary.run_dir.display()
        );
        if run::stop_flag().load(Ordering::SeqCst) {
            println!(
                "stopped on request at step {} with a final checkpoint; continue with: ca train --resume --out {}",
                summary.steps,
                summary.run_dir.display()
            );
        }
        Ok(())
    }
}
