//! A tiny CA-GAN run through the CLI: finite losses, exact resume, save/load, the inference
//! verbs, exact resume.

use std::path::Path;

use crate::util::{ca, err, losses, ok, root, tiny_gan, train};

fn tiny(steps: u64) -> Vec<String> {
    tiny_gan(steps, 3)
}

const CONFIG: &str = "configs/ca-gan-synthetic.toml";

#[test]
fn tiny_gan_run_trains_resumes_exactly_and_serves_every_verb() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let part = tmp.path().join("part");

    // Uninterrupted: 6 steps. Interrupted: 3 steps, then resumed to 6.
    train(CONFIG, &full, &tiny(6), false);
    train(CONFIG, &part, &tiny(3), false);
    let out = train(CONFIG, &part, &tiny(6), true);
    assert!(out.contains("trained 6 steps"), "{out}");

    let (header, rows_full) = losses(&full);
    let (_, rows_part) = losses(&part);
    assert_eq!(rows_full.len(), 6, "one row per step");
    assert_eq!(rows_part.len(), 6, "3 rows, then 3 more after resuming");
    // Losses are finite.
    for row in &rows_full {
        for (name, v) in header.iter().zip(row).skip(3) {
            if !v.is_empty() {
                let x: f64 = v.parse().unwrap();
                assert!(x.is_finite(), "{name} = {v}");
            }
        }
    }
    // Resume is exact: the same losses, step for step (wall clock column excluded).
    for (a, b) in rows_full.iter().zip(&rows_part) {
        assert_eq!(a[0], b[0], "step");
        assert_eq!(
            a[3..],
            b[3..],
            "losses differ at step {} after resume",
            a[0]
        );
    }
    let meta = std::fs::read_to_string(part.join("checkpoints/ckpt-0000006/meta.json")).unwrap();
    assert!(meta.contains("\"step\": 6"), "{meta}");

    // Save -> load gives bit-identical outputs: the final sample grid was drawn by the
    // in-memory EMA generator; the loaded model redraws it.
    let (cfg, model, _) = ca_train::run::load_run(&full, tch::Device::Cpu, None).unwrap();
    let (dz, ds) = cfg.model.dims();
    let codes = ca_train::run::fixed_grid_codes(dz, ds, cfg.train.seed, tch::Device::Cpu);
    let x = model.decode(&codes, 0);
    let again = tmp.path().join("again.png");
    ca_data::grid::save_grid(&x, 8, &again).unwrap();
    let a = image_pixels(&again);
    let b = image_pixels(&full.join("samples/step-0000006.png"));
    assert!(
        a == b,
        "decoding after load differs from the in-memory generator"
    );

    // The inference verbs, on 12 + 12 exported images (seed 0 is the default: the run's own).
    let export = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        ok(ca()
            .args(["data", "export-synthetic", "--n-background", "12"])
            .args(["--n-target", "12", "--seed", seed, "--out"])
            .arg(&out));
        out
    };
    let data = export("data", "0");
    let csv = tmp.path().join("codes.csv");
    ok(ca()
        .arg("encode")
        .arg("--run")
        .arg(&full)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&csv));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 25, "header + 24 images");
    assert_eq!(lines[0].split(',').count(), 2 + 6 + 2);
    assert!(lines[0].starts_with("file,split,common_0"), "{}", lines[0]);
    // Refuses to overwrite.
    let e = err(ca()
        .arg("encode")
        .arg("--run")
        .arg(&full)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&csv));
    assert!(e.contains("refusing to overwrite"), "{e}");

    let g = tmp.path().join("gen");
    ok(ca()
        .arg("generate")
        .arg("--run")
        .arg(&full)
        .args(["--n", "3", "--out"])
        .arg(&g));
    let (w, h) = image::image_dimensions(g.join("generate.png")).unwrap();
    assert_eq!(
        (w, h),
        (3 * 34 + 2, 2 * 34 + 2),
        "3 columns x 2 rows of 32x32 with 2 px gutters"
    );

    let bg = data.join("background/000000.png");
    let tg = data.join("target/000000.png");
    let sw = tmp.path().join("swap");
    ok(ca()
        .arg("swap")
        .arg("--run")
        .arg(&full)
        .arg("--background")
        .arg(&bg)
        .arg("--target")
        .arg(&tg)
        .arg("--out")
        .arg(&sw));
    assert!(sw.join("swap.png").exists() && sw.join("swap.txt").exists());
    // `ca counterfactual` on the target image, with extra arguments, into `out`.
    let counterfactual = |extra: &[&str], out: &Path| {
        let mut c = ca();
        c.arg("counterfactual")
            .arg("--run")
            .arg(&full)
            .arg("--images")
            .arg(&tg)
            .args(extra)
            .arg("--out")
            .arg(out);
        c
    };
    let cf = tmp.path().join("cf");
    ok(&mut counterfactual(&[], &cf));
    assert!(cf.join("counterfactual.png").exists() && cf.join("000000-saliency.png").exists());
    let caption = std::fs::read_to_string(cf.join("counterfactual.txt")).unwrap();
    assert!(
        caption.contains("Edit settings ([apply]): gan_edit = \"masked\", mask_scale = 0.1"),
        "{caption}"
    );
    // Another edit setting for one command: a different counterpart, named in the caption; the
    // run's config.toml unchanged.
    let config_before = std::fs::read_to_string(full.join("config.toml")).unwrap();
    let cf_decode = tmp.path().join("cf-decode");
    ok(&mut counterfactual(
        &["--set", "apply.gan_edit=decode"],
        &cf_decode,
    ));
    let caption = std::fs::read_to_string(cf_decode.join("counterfactual.txt")).unwrap();
    assert!(
        caption.contains("Edit settings ([apply]): gan_edit = \"decode\"\n"),
        "{caption}"
    );
    assert_ne!(
        image_pixels(&cf.join("000000-counterpart.png")),
        image_pixels(&cf_decode.join("000000-counterpart.png")),
        "--set apply.gan_edit=decode must change the counterpart"
    );
    assert_eq!(
        std::fs::read_to_string(full.join("config.toml")).unwrap(),
        config_before
    );
    for (set, want) in [
        ("model.dz=3", "only the edit settings"),
        ("apply.mask_scale=5", "apply.mask_scale"),
        ("apply.gan_edt=decode", "gan_edit"),
    ] {
        let e = err(&mut counterfactual(
            &["--set", set],
            &tmp.path().join("cf-bad"),
        ));
        assert!(e.contains(want), "--set {set}: {e}");
    }
    let tr = tmp.path().join("tr");
    ok(ca()
        .arg("traverse")
        .arg("--run")
        .arg(&full)
        .arg("--images")
        .arg(&tg)
        .args(["--steps", "3", "--out"])
        .arg(&tr));
    let (w, h) = image::image_dimensions(tr.join("traverse.png")).unwrap();
    assert_eq!(
        (w, h),
        (3 * 34 + 2, 2 * 34 + 2),
        "3 values x 2 salient dimensions"
    );

    // `data` was exported with the default seed 0, the run's own data.seed: it holds images the
    // run trained on, so evaluating all of it is refused, naming the cause.
    let e = err(ca()
        .arg("eval")
        .arg("--run")
        .arg(&full)
        .arg("--data")
        .arg(&data)
        .args(["--all-images", "--device", "cpu"]));
    assert!(
        e.contains("images the run trained on") && e.contains("another --seed"),
        "{e}"
    );
    assert!(!full.join("eval/metrics.json").exists());
    let e = err(ca().arg("eval").arg("--run").arg(&full).arg("--all-images"));
    assert!(e.contains("give --data ROOT"), "{e}");
    // Evaluation on images never trained on (another seed): metrics.json in the schema, reports.
    let unseen = export("unseen", "7");
    let eval_export = || {
        let mut c = ca();
        c.arg("eval")
            .arg("--run")
            .arg(&full)
            .arg("--data")
            .arg(&unseen)
            .args(["--all-images", "--device", "cpu"]);
        c
    };
    ok(&mut eval_export());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("eval/metrics.json")).unwrap())
            .unwrap();
    for key in [
        "model",
        "dataset",
        "steps",
        "wall_clock_s",
        "separation",
        "ground_truth",
        "reconstruction",
        "quality",
    ] {
        assert!(m.get(key).is_some(), "metrics.json lacks `{key}`: {m}");
    }
    let gt = &m["ground_truth"];
    for key in [
        "counterfactual_psnr_db",
        "identity_psnr_db",
        "flat_psnr_db",
        "counterfactual_gain_db",
        "saliency_iou",
        "swap_success",
    ] {
        assert!(gt[key].is_number(), "ground_truth.{key} = {}", gt[key]);
    }
    assert!(
        m["quality"]["fid"].is_null(),
        "no Inception weights: FID must be null"
    );
    assert!(full.join("eval/report.md").exists() && full.join("eval/report.html").exists());
    assert_eq!(m["eval"]["apply"]["gan_edit"], "masked", "{m}");
    let e = err(&mut eval_export());
    assert!(e.contains("--force"), "{e}");

    // The FID/KID path, with an Inception network of the real architecture (untrained weights,
    // seeded: the numbers mean nothing, the path is what is checked): both are numbers, over
    // the requested image count, and nothing else changes.
    let weights = tmp.path().join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    tch::manual_seed(0);
    ca_eval::metrics::inception::InceptionFeatures::untrained(tch::Device::Cpu)
        .save(&weights.join(ca_eval::metrics::inception::WEIGHTS_FILE_NAME))
        .unwrap();
    let fid_dir = tmp.path().join("fid-eval");
    ok(eval_export()
        .env("CA_WEIGHTS_DIR", &weights)
        .args(["--fid-images", "8", "--out"])
        .arg(&fid_dir));
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fid_dir.join("metrics.json")).unwrap())
            .unwrap();
    let q = &f["quality"];
    assert!(
        q["fid"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0)
            && q["kid"].as_f64().is_some_and(f64::is_finite)
            && q["fid_images"] == 8,
        "{q}"
    );
    assert_eq!(
        f["separation"], m["separation"],
        "FID changes no other number"
    );
    std::fs::remove_dir_all(&weights).unwrap();

    // Another edit setting: its own folder named after it, the setting recorded, other
    // counterfactual numbers; the run's own evaluation untouched.
    let own = std::fs::read_to_string(full.join("eval/metrics.json")).unwrap();
    ok(eval_export().args(["--set", "apply.gan_edit=decode"]));
    let dir = full.join("eval-gan_edit=decode");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(d["eval"]["apply"]["gan_edit"], "decode", "{d}");
    assert_ne!(
        d["ground_truth"]["counterfactual_psnr_db"],
        gt["counterfactual_psnr_db"]
    );
    assert_eq!(d["separation"], m["separation"], "encoding is not an edit");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("gan_edit = \"decode\""), "{report}");
    assert_eq!(
        std::fs::read_to_string(full.join("eval/metrics.json")).unwrap(),
        own
    );
    let e = err(eval_export().args(["--set", "train.seed=3"]));
    assert!(e.contains("only the edit settings"), "{e}");
    // Anywhere with --out, compared with an evaluation folder by its run and folder name.
    let elsewhere = tmp.path().join("export-eval");
    ok(eval_export()
        .arg("--out")
        .arg(&elsewhere)
        .arg("--compare")
        .arg(&dir));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(elsewhere.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(
        again["ground_truth"], m["ground_truth"],
        "same run, data and settings"
    );
    let report = std::fs::read_to_string(elsewhere.join("report.md")).unwrap();
    assert!(report.contains("full/eval-gan_edit=decode"), "{report}");

    // The quick check: the same separation numbers as the full evaluation, in its own file.
    ok(eval_export().arg("--separation-only"));
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("eval/separation.json")).unwrap())
            .unwrap();
    assert_eq!(q["separation"], m["separation"]);
    assert_eq!(q["probe_matrix"], gt["probe_matrix"]);
    assert_eq!(q["steps"], 6);

    // An earlier checkpoint, by step: its own folder, its step recorded, RUN/eval/ untouched.
    ok(eval_export().args(["--separation-only", "--checkpoint", "3"]));
    let c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(full.join("eval-ckpt-0000003/separation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(c["steps"], 3);
    let e = err(eval_export().args(["--separation-only", "--checkpoint", "4"]));
    assert!(
        e.contains("no checkpoint '4'") && e.contains("it has: ckpt-0000003, ckpt-0000006"),
        "{e}"
    );
}

fn image_pixels(p: &Path) -> Vec<u8> {
    image::open(p).unwrap().to_rgb8().into_raw()
}

#[test]
fn train_refuses_a_used_run_directory_and_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), "user data").unwrap();
    let cfg = root().join("configs/ca-gan-synthetic.toml");
    let e = err(ca()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path())
        .args(["--max-steps", "1"]));
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("precious.txt")).unwrap(),
        "user data"
    );
    let e = err(ca().arg("train").arg("--config").arg(&cfg).args([
        "--dry-run",
        "--set",
        "train.batch_sise=3",
    ]));
    assert!(e.contains("did you mean `batch_size`"), "{e}");
    let e = err(ca()
        .arg("train")
        .arg("--resume")
        .arg("--out")
        .arg(tmp.path().join("nope")));
    assert!(e.contains("config.toml"), "{e}");
}
