//! Criterion benches of `ca-data`: synthetic render rate (32x32, 64x64) and the folder loader
//! (decode + resize + batch) at 64x64 from PNG and from JPEG.
//!
//! Run: `cargo bench -p ca-data -- --warm-up-time 1 --measurement-time 3`.

use std::path::Path;
use std::sync::Arc;

use ca_data::config::{DataConfig, FolderConfig, SyntheticConfig};
use ca_data::synthetic::Renderer;
use ca_data::{Dataset, Group, LoaderOptions, Split, TrainLoader};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn render(c: &mut Criterion) {
    let mut g = c.benchmark_group("synthetic_render");
    for size in [32usize, 64] {
        let r = Renderer::new(size, &SyntheticConfig::default()).unwrap();
        let mut img = vec![0u8; 3 * size * size];
        let mut cp = vec![0u8; 3 * size * size];
        let mut mask = vec![0f32; size * size];
        g.throughput(Throughput::Elements(1));
        let mut j = 0usize;
        g.bench_function(format!("{size}x{size}_target_image"), |b| {
            b.iter(|| {
                j += 1;
                let f = r.factors(Group::Target, j);
                r.render(&f, j as u64, &mut img, None, None);
                std::hint::black_box(&img);
            })
        });
        g.bench_function(
            format!("{size}x{size}_target_with_counterpart_and_mask"),
            |b| {
                b.iter(|| {
                    j += 1;
                    let f = r.factors(Group::Target, j);
                    r.render(&f, j as u64, &mut img, Some(&mut cp), Some(&mut mask));
                    std::hint::black_box((&img, &cp, &mask));
                })
            },
        );
    }
    g.finish();
}

/// 256 background + 256 target images of 96x80 px (so every image is cropped and resized).
fn fixture(root: &Path, ext: &str) {
    for (split, n) in [("background", 256usize), ("target", 256)] {
        let dir = root.join(split);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(96, 80, |x, y| {
                image::Rgb([(x * 2 + i as u32) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8])
            });
            img.save(dir.join(format!("{i:04}.{ext}"))).unwrap();
        }
    }
}

fn folder_loader(c: &mut Criterion) {
    let mut g = c.benchmark_group("folder_loader_64px");
    let batch = 64usize;
    for ext in ["png", "jpg"] {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), ext);
        let cfg = DataConfig::Folder(FolderConfig {
            root: dir.path().to_path_buf(),
            size: Some(64),
            channels: None,
            eval_fraction: 0.0,
            seed: 0,
            cache_mb: 0, // measure decoding, not the cache
            hflip: true,
            skip_bad_images: false,
            target_fraction: 0.5,
            workers: 2,
            prefetch: 4,
        });
        let ds: Arc<dyn Dataset> = Arc::from(cfg.open().unwrap());
        let mut opts = LoaderOptions::from_dataset(ds.as_ref(), batch);
        opts.split = Split::All;
        let mut loader = TrainLoader::new(ds.clone(), opts).unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("{ext}_batch{batch}_2workers"), |b| {
            b.iter(|| std::hint::black_box(loader.next().unwrap().unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, render, folder_loader);
criterion_main!(benches);
