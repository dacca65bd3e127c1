//! The inference verbs: `encode`, `generate`, `swap`, `counterfactual`, `traverse`.
//! Each loads a run (config + latest checkpoint) and speaks only `ca_models::CaModel`,
//! so GAN and diffusion runs are used the same way.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ca_data::grid as images;
use ca_data::{DataConfig, Dataset, EvalBatches, Split};
use ca_models::CaCode;
use ca_models::inference::{self as model, CaModel};
use ca_train::run;
use tch::{Device, Kind, Tensor};

/// Parse `auto | cpu | cuda | cuda:N`.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!(
                    "--device cuda: no CUDA device is available (run `ca doctor`); use --device cpu"
                );
            }
            Ok(Device::Cuda(0))
        }
        other => {
            let Some(n) = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                bail!("--device {other}: expected auto, cpu, cuda or cuda:N");
            };
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                bail!("--device {other}: this machine has {count} CUDA device(s)");
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// Load a run for inference, its `[apply]` settings overridden by `apply_sets`
/// (`apply.KEY=VALUE`; the run itself is not changed).
pub fn load(
    run_dir: &Path,
    device: &str,
    apply_sets: &[String],
) -> anyhow::Result<(ca_train::config::RunConfig, Box<dyn CaModel>)> {
    let device = parse_device(device)?;
    let (cfg, m, meta) = run::load_run_edited(run_dir, device, None, apply_sets)
        .with_context(|| format!("cannot load run '{}'", run_dir.display()))?;
    tracing::info!(
        "loaded {} model of {} at step {}",
        m.family(),
        run_dir.display(),
        meta.step
    );
    Ok((cfg, m))
}

/// Read image files into a float `[N, C, H, W]` tensor in [-1, 1] at the model's geometry.
pub fn read_images(paths: &[PathBuf], m: &dyn CaModel) -> anyhow::Result<Tensor> {
    if paths.is_empty() {
        bail!("no image given");
    }
    let g = m.geometry();
    let mut buf = Vec::new();
    for p in paths {
        let img = ca_data::imageio::decode_file(p)?;
        buf.extend(ca_data::imageio::to_chw(
            img,
            g.channels as usize,
            g.size as usize,
        ));
    }
    let t = Tensor::from_slice(&buf).view([paths.len() as i64, g.channels, g.size, g.size]);
    Ok(ca_data::loader::u8_to_unit(&t.to_device(m.device())))
}

/// A dataset for `encode` and `eval`: a folder pair at the run's geometry, or the run's own
/// data (also when `data` is the run's own root: then with its own `data.seed` and
/// `eval_fraction`, so the held-out split is the run's).
pub(crate) fn dataset_for(
    cfg: &ca_train::config::RunConfig,
    data: Option<&Path>,
) -> anyhow::Result<Box<dyn Dataset>> {
    let common = cfg.data.common()?;
    match data {
        None => Ok(cfg.data.open()?),
        Some(root) if is_own_root(&cfg.data, root) => Ok(cfg.data.open()?),
        Some(root) => {
            let text = format!(
                "kind = \"folder\"\nroot = {:?}\nsize = {}\nchannels = {}\n",
                root.display().to_string(),
                common.size,
                common.channels
            );
            let dc: DataConfig =
                toml::from_str(&text).context("building the folder data config")?;
            Ok(dc.open()?)
        }
    }
}

/// Whether `root` is the root of the run's own folder or `.npy` data (the same folder, however
/// it is spelled).
fn is_own_root(data: &DataConfig, root: &Path) -> bool {
    let own = match data {
        DataConfig::Folder(f) => &f.root,
        DataConfig::Npy(n) => &n.root,
        DataConfig::Synthetic(_) => return false,
    };
    match (own.canonicalize(), root.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `ca encode`: one CSV row per image: `file,split,common_0..,salient_0..`.
pub fn encode(run_dir: &Path, data: Option<&Path>, out: &Path, device: &str) -> anyhow::Result<()> {
    let (cfg, m) = load(run_dir, device, &[])?;
    let ds = dataset_for(&cfg, data)?;
    if out.exists() {
        bail!(
            "'{}' exists; refusing to overwrite it (choose another --out)",
            out.display()
        );
    }
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("cannot create '{}'", out.display()))?,
    );
    let mut header = vec!["file".to_string(), "split".to_string()];
    header.extend((0..m.dz()).map(|i| format!("common_{i}")));
    header.extend((0..m.ds()).map(|i| format!("salient_{i}")));
    writeln!(w, "{}", header.join(","))?;
    let mut n = 0;
    for batch in EvalBatches::new(ds.as_ref(), Split::All, 256) {
        let batch = batch?;
        let code = m.encode(&batch.images_f32(m.device()));
        let zs = code.concat().to_device(Device::Cpu).to_kind(Kind::Double);
        let width = (m.dz() + m.ds()) as usize;
        let vals: Vec<f64> = Vec::try_from(zs.flatten(0, -1))?;
        for (r, &i) in batch.indices.iter().enumerate() {
            let row = &vals[r * width..(r + 1) * width];
            let nums: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            writeln!(
                w,
                "{},{},{}",
                csv_field(&ds.file(i)),
                ds.group(i).name(),
                nums.join(",")
            )?;
            n += 1;
        }
    }
    w.flush()?;
    println!(
        "encoded {n} images -> {} ({} common + {} salient columns)",
        out.display(),
        m.dz(),
        m.ds()
    );
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_grid(x: &Tensor, ncol: usize, path: &Path, caption: &str) -> anyhow::Result<()> {
    images::save_grid(x, ncol, path)?;
    std::fs::write(path.with_extension("txt"), caption)?;
    println!(
        "wrote {} (caption: {})",
        path.display(),
        path.with_extension("txt").display()
    );
    Ok(())
}

/// The caption line naming the edit settings the images were made with.
fn edit_line(cfg: &ca_train::config::RunConfig, m: &dyn CaModel) -> String {
    format!(
        "Edit settings ([apply]): {}\n",
        cfg.apply.describe(m.family())
    )
}

fn prepare_out(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create '{}'", out.display()))
}

fn refuse_existing(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "'{}' exists; refusing to overwrite it (choose another --out)",
            path.display()
        );
    }
    Ok(())
}

/// `ca generate`: `n` background samples `(z, 0)` and the same `z` with sampled `s`.
pub fn generate(run_dir: &Path, n: i64, seed: u64, out: &Path, device: &str) -> anyhow::Result<()> {
    let (_, m) = load(run_dir, device, &[])?;
    prepare_out(out)?;
    let path = out.join("generate.png");
    refuse_existing(&path)?;
    let bg = m.sample_codes(n, false, seed);
    let tg = m.sample_codes(n, true, seed);
    // Same common codes in both rows, so each column shows one z with and without salient content.
    let tg = CaCode::with_salient(bg.z.shallow_clone(), tg.s);
    let x = Tensor::cat(&[m.decode(&bg, seed), m.decode(&tg, seed)], 0);
    write_grid(
        &x,
        n as usize,
        &path,
        &format!(
            "Row 1: {n} background samples (z ~ prior, s = 0). Row 2: the same z with salient codes s ~ prior (target samples). Seed {seed}.\n"
        ),
    )
}

/// `ca swap`: the salient factors of each target image transferred onto each background image.
pub fn swap(
    run_dir: &Path,
    background: &[PathBuf],
    target: &[PathBuf],
    out: &Path,
    device: &str,
    apply_sets: &[String],
) -> anyhow::Result<()> {
    let (cfg, m) = load(run_dir, device, apply_sets)?;
    prepare_out(out)?;
    let path = out.join("swap.png");
    refuse_existing(&path)?;
    let xb = read_images(background, m.as_ref())?;
    let xt = read_images(target, m.as_ref())?;
    let (nb, nt) = (xb.size()[0], xt.size()[0]);
    // Grid: first row = target images (with a blank corner); each next row = one background
    // image followed by its swaps with every target.
    let blank = Tensor::ones(
        [1, xb.size()[1], xb.size()[2], xb.size()[3]],
        (Kind::Float, m.device()),
    );
    let mut rows = vec![blank, xt.shallow_clone()];
    for i in 0..nb {
        let b = xb.narrow(0, i, 1).repeat([nt, 1, 1, 1]);
        rows.push(xb.narrow(0, i, 1));
        rows.push(model::swap(m.as_ref(), &b, &xt));
    }
    let x = Tensor::cat(&rows, 0);
    let mut caption = String::from("First row: blank, then the target images (salient donors):\n");
    for t in target {
        caption.push_str(&format!("  {}\n", t.display()));
    }
    caption.push_str("Each next row: a background image, then it with the salient factors of each target image (z of the background, s of the target):\n");
    for b in background {
        caption.push_str(&format!("  {}\n", b.display()));
    }
    caption.push_str(&edit_line(&cfg, m.as_ref()));
    write_grid(&x, (nt + 1) as usize, &path, &caption)
}

/// `ca counterfactual`: per image, the input, its reconstruction, its background counterpart
/// and the saliency map `|x - counterpart(x)|`.
pub fn counterfactual(
    run_dir: &Path,
    paths: &[PathBuf],
    out: &Path,
    device: &str,
    apply_sets: &[String],
) -> anyhow::Result<()> {
    let (cfg, m) = load(run_dir, device, apply_sets)?;
    prepare_out(out)?;
    let path = out.join("counterfactual.png");
    refuse_existing(&path)?;
    let x = read_images(paths, m.as_ref())?;
    let n = x.size()[0];
    let ones = Tensor::ones([n], (Kind::Float, m.device()));
    let rec = model::reconstruct(m.as_ref(), &x, &ones);
    let cf = model::counterpart(m.as_ref(), &x);
    let sal = model::saliency(&x, &cf); // [N,1,H,W] in [0,1]
    let sal_img = (sal * 2.0 - 1.0).repeat([1, x.size()[1], 1, 1]);
    let grid = Tensor::cat(&[x.shallow_clone(), rec, cf.shallow_clone(), sal_img], 0);
    let mut caption = String::from(
        "Rows: 1 input, 2 reconstruction (as target), 3 background counterpart (s := 0), 4 saliency map |x - counterpart| (white = changed).\nColumns:\n",
    );
    for p in paths {
        caption.push_str(&format!("  {}\n", p.display()));
    }
    caption.push_str(&edit_line(&cfg, m.as_ref()));
    write_grid(&grid, n as usize, &path, &caption)?;
    // Also the counterparts and maps one file each, named after the inputs.
    for (i, p) in paths.iter().enumerate() {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("{i}"));
        images::save_grid(
            &cf.narrow(0, i as i64, 1),
            1,
            &out.join(format!("{stem}-counterpart.png")),
        )?;
        let s = model::saliency(&x.narrow(0, i as i64, 1), &cf.narrow(0, i as i64, 1)) * 2.0 - 1.0;
        images::save_grid(&s, 1, &out.join(format!("{stem}-saliency.png")))?;
    }
    Ok(())
}

/// `ca traverse`: for each image and each salient dimension, vary `s_k` over `[-range, range]`
/// (other coordinates from the image's own code).
pub fn traverse(
    run_dir: &Path,
    paths: &[PathBuf],
    steps: i64,
    range: f64,
    out: &Path,
    device: &str,
    apply_sets: &[String],
) -> anyhow::Result<()> {
    let (cfg, m) = load(run_dir, device, apply_sets)?;
    prepare_out(out)?;
    let path = out.join("traverse.png");
    refuse_existing(&path)?;
    if steps < 2 {
        bail!("--steps must be at least 2");
    }
    let x = read_images(paths, m.as_ref())?;
    let own = m.encode(&x);
    let values = Tensor::linspace(-range, range, steps, (Kind::Float, m.device()));
    let mut rows = Vec::new();
    let mut caption = format!(
        "Salient traversal, values of s_k from {} to {range} in {steps} steps (columns).\nRows:\n",
        -range
    );
    for i in 0..x.size()[0] {
        let xi = x.narrow(0, i, 1).repeat([steps, 1, 1, 1]);
        let oi = own.narrow(i, 1);
        let own_rep = CaCode::new(oi.z.repeat([steps, 1]), oi.s.repeat([steps, 1]));
        for k in 0..m.ds() {
            let s = own_rep.s.copy();
            s.narrow(1, k, 1).copy_(&values.view([steps, 1]));
            let new = CaCode::with_salient(own_rep.z.shallow_clone(), s);
            rows.push(m.edit(&xi, &own_rep, &new));
            caption.push_str(&format!("  {} s_{k}\n", paths[i as usize].display()));
        }
    }
    caption.push_str(&edit_line(&cfg, m.as_ref()));
    write_grid(&Tensor::cat(&rows, 0), steps as usize, &path, &caption)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--data` naming the run's own folder reads it with the run's own `data.seed` and
    /// `eval_fraction`, so "held out" is the run's held-out split; another folder is read as a
    /// new folder pair.
    #[test]
    fn the_runs_own_root_keeps_its_split() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pair");
        ca_data::export_synthetic(&Default::default(), &root, 40, 40, 3).unwrap();
        let text = format!(
            "[data]\nkind = \"folder\"\nroot = {:?}\nsize = 32\nseed = 5\neval_fraction = 0.4\n[model]\nfamily = \"gan\"\n",
            root.display().to_string()
        );
        let cfg = ca_train::config::RunConfig::from_toml(&text, "t.toml", &[]).unwrap();
        let held = |ds: &dyn Dataset| ca_data::split_indices(ds, Split::Eval);
        let own = held(cfg.data.open().unwrap().as_ref());
        // The same folder, spelled another way.
        let spelled = root.join("..").join("pair");
        assert_eq!(
            held(dataset_for(&cfg, Some(&spelled)).unwrap().as_ref()),
            own
        );
        let copy = tmp.path().join("copy");
        ca_data::export_synthetic(&Default::default(), &copy, 40, 40, 3).unwrap();
        assert_ne!(
            held(dataset_for(&cfg, Some(&copy)).unwrap().as_ref()),
            own,
            "another folder is read with the defaults (seed 0, eval_fraction 0.1)"
        );
    }
}
