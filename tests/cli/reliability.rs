//! No lost work: A run killed with SIGKILL after a checkpoint resumes from it with a
//! continuous, duplicate-free loss log equal to what the killed run had logged; SIGTERM
//! finishes the step and writes a final checkpoint; a run another trainer holds, a checkpoint of
//! another config and an output folder that cannot exist are refused before training.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, ca, err, losses, tiny_gan};

const CONFIG: &str = "configs/ca-gan-synthetic.toml";

fn tiny(steps: u64, checkpoint_every: u64) -> Vec<String> {
    tiny_gan(steps, checkpoint_every)
}

fn train_cmd(out: &Path, sets: &[String], resume: bool) -> Command {
    util::train_cmd(CONFIG, out, sets, resume)
}

/// The step recorded in the run's latest checkpoint, if one is complete.
fn latest_step(run: &Path) -> Option<u64> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    let meta = std::fs::read_to_string(run.join("checkpoints").join(name.trim()).join("meta.json"))
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&meta).ok()?;
    v["step"].as_u64()
}

/// Complete rows of losses.csv (a row being written may be cut).
fn logged_steps(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("losses.csv"))
        .map(|t| t.matches('\n').count().saturating_sub(1) as u64)
        .unwrap_or(0)
}

/// Poll until `ready` holds (or panic after 60 s, killing the child).
fn wait_for(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ca train exited ({status}) before {what}");
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn loss_columns(row: &[String]) -> Vec<String> {
    row[3..].to_vec()
}

#[test]
fn sigkill_after_a_checkpoint_resumes_from_it_with_a_continuous_log() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = train_cmd(&run, &tiny(500, 4), false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill between checkpoints: a checkpoint exists and steps after it are logged.
    wait_for(&mut child, "a checkpoint and two more logged steps", || {
        latest_step(&run).is_some_and(|c| logged_steps(&run) >= c + 2)
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let ckpt = latest_step(&run).unwrap();
    let (header, before) = losses(&run);
    let killed_at: u64 = before.last().unwrap()[0].parse().unwrap();
    assert!(killed_at > ckpt, "killed at {killed_at}, checkpoint {ckpt}");

    let target = killed_at + 3;
    let out = train_cmd(&run, &tiny(target, 4), true).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("at step {ckpt}")) && stderr.contains("dropped"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("trained {target} steps")),
        "{stdout}"
    );

    let (_, after) = losses(&run);
    let steps: Vec<u64> = after.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(
        steps,
        (1..=target).collect::<Vec<_>>(),
        "one row per step: no gap, no duplicate"
    );
    // Every step the killed run had logged is replayed identically (exact resume), so the
    // curve is continuous across the seam.
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a[0], b[0]);
        assert_eq!(loss_columns(a), loss_columns(b), "step {} differs", a[0]);
    }
    for r in &after {
        for v in &r[3..] {
            assert!(
                v.is_empty() || v.parse::<f64>().unwrap().is_finite(),
                "{r:?}"
            );
        }
    }
    // The record for the issue note: step at kill, step resumed from, losses around the seam.
    let col = header.iter().position(|h| h == "loss_g").unwrap_or(3);
    let seam: Vec<String> = after
        .iter()
        .filter(|r| {
            let s: u64 = r[0].parse().unwrap();
            s + 2 >= ckpt && s <= killed_at + 2
        })
        .map(|r| format!("{}:{}", r[0], r[col]))
        .collect();
    eprintln!(
        "SIGKILL: killed at step {killed_at}, resumed from checkpoint step {ckpt}, {} = {}",
        header[col],
        seam.join(" ")
    );
    assert_eq!(latest_step(&run), Some(target));
}

#[test]
fn sigterm_finishes_the_step_writes_a_checkpoint_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // No periodic checkpoint: the only one is written on SIGTERM.
    let mut child = train_cmd(&run, &tiny(500, 0), false)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&mut child, "three logged steps", || logged_steps(&run) >= 3);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stderr.contains("stop signal received (SIGINT/SIGTERM)"),
        "{stderr}"
    );
    let (_, rows) = losses(&run);
    let last: u64 = rows.last().unwrap()[0].parse().unwrap();
    assert!(last < 500);
    assert!(
        stdout.contains(&format!(
            "stopped on request at step {last} with a final checkpoint"
        )) && stdout.contains("ca train --resume --out"),
        "{stdout}"
    );
    assert_eq!(
        latest_step(&run),
        Some(last),
        "final checkpoint at the last step"
    );
    let steps: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(steps, (1..=last).collect::<Vec<_>>());
    eprintln!("SIGTERM: stopped cleanly at step {last}, final checkpoint step {last}");
}

#[test]
fn another_config_and_an_impossible_output_folder_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train_cmd(&run, &tiny(2, 0), false).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    // What a new user reads first: a few lines (model, data, length, where the run goes), not
    // the effective config, which is in RUN/config.toml.
    let before_training: Vec<&str> = said
        .lines()
        .take_while(|l| !l.starts_with("final checkpoint"))
        .collect();
    assert!(
        before_training.len() <= 4
            && said.starts_with("training gan-style")
            && said.contains("48 background + 48 target images")
            && said.contains("up to 2 steps")
            && said.contains(&run.join("config.toml").display().to_string())
            && !said.contains("[model"),
        "{said}"
    );
    // A run another trainer is writing to (its lock held, here by this process): --resume is
    // refused, naming the holder, and nothing of the run is touched.
    let lock = ca_train::run::lock_run_dir(&run).unwrap();
    let e = err(&mut train_cmd(&run, &tiny(4, 0), true));
    assert!(
        e.contains("another `ca train`")
            && e.contains(&format!("process {}", std::process::id()))
            && e.contains("--resume"),
        "{e}"
    );
    assert_eq!((latest_step(&run), logged_steps(&run)), (Some(2), 2));
    drop(lock);
    // Resuming with another model config: refused, naming both digests.
    let mut sets = tiny(4, 0);
    sets.push("model.dz=7".into());
    let e = err(&mut train_cmd(&run, &sets, true));
    assert!(
        e.contains("was written by a gan model (config digest")
            && e.contains("but this run is a gan model")
            && e.contains("use the run directory it belongs to"),
        "{e}"
    );
    // A damaged checkpoint file: refused by name (no older checkpoint to fall back to).
    let model = run.join("checkpoints/ckpt-0000002/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&mut train_cmd(&run, &tiny(4, 0), true));
    assert!(
        e.contains("model.safetensors") && e.contains("is damaged") && e.contains("truncated"),
        "{e}"
    );
    // --out below a regular file cannot be created (root ignores permissions; this it cannot).
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = err(&mut train_cmd(&file.join("run"), &tiny(2, 0), false));
    assert!(
        e.contains("a-file/run") && e.contains("cannot be created") && e.contains("--out"),
        "{e}"
    );
    assert!(!file.join("run").exists());
}

/// A missing config file, a data folder without its target set and another family's key are
/// each reported once, first, naming the file, folder or key; nothing else is printed before.
#[test]
fn bad_input_is_the_first_and_only_thing_said() {
    let tmp = tempfile::tempdir().unwrap();
    let e = err(ca().args(["train", "--config", "/nope.toml"]));
    assert_eq!(
        e.matches("No such file or directory").count(),
        1,
        "the cause once: {e}"
    );
    assert!(e.starts_with("error: ") && e.contains("/nope.toml"), "{e}");
    let data = tmp.path().join("pair");
    std::fs::create_dir_all(data.join("background")).unwrap();
    let run = tmp.path().join("run");
    let e = err(crate::util::train_cmd(
        "configs/ca-gan-folder.toml",
        &run,
        &[format!("data.root=\"{}\"", data.display())],
        false,
    )
    .arg("--max-steps")
    .arg("1"));
    assert!(
        e.starts_with("error: ") && e.contains("target") && e.lines().count() <= 3,
        "the data error first, nothing before it: {e}"
    );
    assert!(!run.join("config.toml").exists(), "nothing written");
    let e = err(crate::util::train_cmd(
        "configs/ca-diffusion-synthetic.toml",
        &run,
        &["loss.swap=1".into()],
        false,
    )
    .arg("--max-steps")
    .arg("1"));
    assert!(
        e.contains("`loss.swap` is a key of the gan family")
            && e.contains("model.family is \"diffusion\""),
        "{e}"
    );
}

/// Two `ca train` started at once on the same new `--out`: exactly one trains, the other is
/// refused (the folder is locked, or already holds the winner's run), and the run's
/// `config.toml` is the winner's.
#[test]
fn two_trainers_on_one_new_run_directory_leave_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let spawn = |seed: u64| {
        let mut sets = tiny(2, 0);
        sets.push(format!("train.seed={seed}"));
        train_cmd(&run, &sets, false)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(11), spawn(22));
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let won: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one trainer wins");
    let lost = String::from_utf8_lossy(&outs[1 - won[0]].stderr);
    assert!(
        lost.contains("another `ca train`") || lost.contains("is not empty"),
        "{lost}"
    );
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let seed = [11, 22][won[0]];
    assert!(saved.contains(&format!("seed = {seed}")), "{saved}");
    assert_eq!((latest_step(&run), logged_steps(&run)), (Some(2), 2));
}
