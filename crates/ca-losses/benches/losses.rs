//! Criterion benches of the loss terms at the shapes one CA-GAN / CA-diffusion training step
//! uses (batch 64, codes `dz = 32`, `ds = 4`, 32x32 RGB images, discriminator features at
//! 16x16/8x8/4x4): forward + backward of each term on the CPU.
//!
//! Run: `cargo bench -p ca-losses --bench losses -- --warm-up-time 1 --measurement-time 2`
//! (`cargo xtask bench` runs it and copies the times into benches/RESULTS.md).

use ca_losses::{adversarial, diffusion, info, invariance, reconstruction};
use criterion::{Criterion, criterion_group, criterion_main};
use tch::{Device, Kind, Tensor};

const B: i64 = 64;

fn leaf(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
}

/// Forward and backward of a scalar loss built by `f`.
fn fwd_bwd(c: &mut Criterion, name: &str, f: impl Fn() -> Tensor) {
    c.bench_function(name, |b| {
        b.iter(|| {
            let l = f().mean(Kind::Float);
            l.backward();
            std::hint::black_box(l)
        })
    });
}

fn losses(c: &mut Criterion) {
    tch::manual_seed(0);
    let logits_r = leaf(&[B]);
    let logits_f = leaf(&[B]);
    let is_target = Tensor::cat(
        &[
            Tensor::zeros([B / 2], (Kind::Float, Device::Cpu)),
            Tensor::ones([B / 2], (Kind::Float, Device::Cpu)),
        ],
        0,
    );
    let z_pred = leaf(&[B, 32]);
    let z = Tensor::randn([B, 32], (Kind::Float, Device::Cpu));
    let s_pred = leaf(&[B, 4]);
    let img = leaf(&[B, 3, 32, 32]);
    let real = Tensor::randn([B, 3, 32, 32], (Kind::Float, Device::Cpu));
    let feats_fake: Vec<Tensor> = [(16, 16), (32, 8), (64, 4)]
        .iter()
        .map(|&(ch, r)| leaf(&[B, ch, r, r]))
        .collect();
    let feats_real: Vec<Tensor> = feats_fake.iter().map(|f| f.detach().randn_like()).collect();

    fwd_bwd(c, "losses/d_nonsaturating_b64", || {
        adversarial::d_nonsaturating(&logits_r, &logits_f)
    });
    fwd_bwd(c, "losses/g_nonsaturating_b64", || {
        adversarial::g_nonsaturating(&logits_f)
    });
    fwd_bwd(c, "losses/class_bce_b64", || {
        info::class_bce(&logits_r, &is_target)
    });
    fwd_bwd(c, "losses/info_l1_b64x32", || info::info_l1(&z_pred, &z));
    fwd_bwd(c, "losses/salient_zero_b64x4", || {
        info::salient_zero(&s_pred)
    });
    fwd_bwd(c, "losses/pixel_l1_b64_3x32x32", || {
        reconstruction::pixel_l1(&img, &real)
    });
    fwd_bwd(c, "losses/feature_matching_3_scales_b64", || {
        reconstruction::feature_matching(&feats_real, &feats_fake)
    });
    fwd_bwd(c, "losses/mmd_rbf_32x32_vs_32x32", || {
        invariance::mmd_rbf(
            &z_pred.narrow(0, 0, B / 2),
            &z_pred.narrow(0, B / 2, B / 2),
            &[0.5, 1.0, 2.0, 4.0, 8.0],
        )
    });
    fwd_bwd(c, "losses/eps_mse_b64_3x32x32", || {
        diffusion::eps_mse(&img, &real)
    });
    // R1 needs a graph from images to logits: a tiny quadratic "discriminator".
    let w = leaf(&[3 * 32 * 32]);
    c.bench_function("losses/r1_penalty_b64_3x32x32", |b| {
        b.iter(|| {
            let x = real.detach().set_requires_grad(true);
            let d = (x.view([B, -1]).square() * &w).sum_dim_intlist(1, false, Kind::Float);
            let r1 = adversarial::r1_penalty(&d, &x).expect("images require grad");
            let l = r1.mean(Kind::Float);
            l.backward();
            std::hint::black_box(l)
        })
    });
}

criterion_group!(benches, losses);
criterion_main!(benches);
