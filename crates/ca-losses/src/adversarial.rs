//! Adversarial GAN losses and the R1 gradient penalty.
//!
//! * Non-saturating loss: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014,
//!   arXiv:1406.2661 (the generator maximises `log D(G(z))`), as used by Double InfoGAN
//!   (Carton, Louiset, Gori, AISTATS 2024) and StyleGAN2 (Karras et al. 2020, arXiv:1912.04958).
//! * Hinge loss: Lim & Ye, "Geometric GAN", 2017, arXiv:1705.02894; Miyato et al., "Spectral
//!   Normalization for GANs", ICLR 2018, arXiv:1802.05957.
//! * R1 penalty: Mescheder, Geiger, Nowozin, "Which Training Methods for GANs do actually
//!   Converge?", ICML 2018, arXiv:1801.04406.
//!
//! All losses are written with `softplus` (`-log σ(x) = softplus(-x)`), so logits of any size
//! give finite values and gradients. Every function returns one value per sample; the trainer
//! takes the mean (or a masked mean) and applies the weight.

use tch::Tensor;

/// Logits of shape `[B]` or `[B, 1]` (any `[B, 1, .., 1]`), as a `[B]` view.
///
/// Panics, naming the shape, if the tensor holds more than one value per sample.
pub(crate) fn logits_per_sample(logits: &Tensor, what: &str) -> Tensor {
    let size = logits.size();
    assert!(
        !size.is_empty() && logits.numel() as i64 == size[0],
        "{what}: expected logits of shape [B] or [B, 1], got {size:?}"
    );
    logits.reshape([size[0]])
}

/// Discriminator non-saturating loss: `softplus(-D(x_real)) + softplus(D(x_fake))`, that is
/// `-log σ(real) - log(1 - σ(fake))`, per sample.
///
/// Minimising it pushes real logits up and fake logits down. Detach the fakes before calling it
/// in the discriminator step.
///
/// # Shapes
/// * `real_logits`: `[B]` or `[B, 1]`
/// * `fake_logits`: `[B]` or `[B, 1]`, the same `B` (pair real row `i` with fake row `i`)
/// * returns `[B]`
pub fn d_nonsaturating(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    let real = logits_per_sample(real_logits, "d_nonsaturating real_logits");
    let fake = logits_per_sample(fake_logits, "d_nonsaturating fake_logits");
    assert_eq!(
        real.size(),
        fake.size(),
        "d_nonsaturating: real and fake batches differ"
    );
    (-real).softplus() + fake.softplus()
}

/// Generator non-saturating loss: `softplus(-D(G(z))) = -log σ(fake)`, per sample.
///
/// Its gradient with respect to the fake logit is `-σ(-fake) < 0`: the generator pushes the
/// discriminator's fake logits up.
///
/// # Shapes
/// * `fake_logits`: `[B]` or `[B, 1]`
/// * returns `[B]`
pub fn g_nonsaturating(fake_logits: &Tensor) -> Tensor {
    (-logits_per_sample(fake_logits, "g_nonsaturating fake_logits")).softplus()
}

/// Discriminator hinge loss: `relu(1 - D(x_real)) + relu(1 + D(x_fake))`, per sample.
///
/// # Shapes
/// * `real_logits`: `[B]` or `[B, 1]`
/// * `fake_logits`: `[B]` or `[B, 1]`, the same `B`
/// * returns `[B]`
pub fn d_hinge(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    let real = logits_per_sample(real_logits, "d_hinge real_logits");
    let fake = logits_per_sample(fake_logits, "d_hinge fake_logits");
    assert_eq!(
        real.size(),
        fake.size(),
        "d_hinge: real and fake batches differ"
    );
    (-real + 1.0).relu() + (fake + 1.0).relu()
}

/// Generator hinge loss: `-D(G(z))`, per sample.
///
/// # Shapes
/// * `fake_logits`: `[B]` or `[B, 1]`
/// * returns `[B]`
pub fn g_hinge(fake_logits: &Tensor) -> Tensor {
    -logits_per_sample(fake_logits, "g_hinge fake_logits")
}

/// Why [`r1_penalty`] could not compute the input gradient.
#[derive(Debug, thiserror::Error)]
pub enum R1Error {
    /// The images were not marked with `requires_grad` before the discriminator forward pass.
    #[error(
        "r1_penalty: real_images does not require grad; call `set_requires_grad(true)` on the \
         images before the discriminator forward pass"
    )]
    ImagesWithoutGrad,
    /// libtorch's autograd failed (e.g. the logits do not depend on the images).
    #[error("r1_penalty: autograd failed: {0}")]
    Autograd(#[from] tch::TchError),
}

/// R1 gradient penalty `‖∇ₓ D(x)‖²` on real images, per sample.
///
/// The gradient is taken with `create_graph = true`, so the penalty can be back-propagated into
/// the discriminator's parameters, and with `keep_graph = true`, so the caller can still
/// back-propagate the discriminator's other losses through the same forward pass. The usual
/// factor `γ / 2` (and the lazy-regularisation interval) is the caller's weight, not applied here.
///
/// Per-sample values are exact only when the discriminator treats samples independently (no
/// batch norm, no minibatch standard deviation across the rows); the batch mean is exact anyway.
///
/// # Shapes
/// * `real_logits`: `D(real_images)`, any shape (`[B]`, `[B, 1]`); summed before differentiating
/// * `real_images`: `[B, ..]` (e.g. `[B, C, H, W]`) with `requires_grad` set
/// * returns `[B]`
///
/// # Errors
/// [`R1Error::ImagesWithoutGrad`] if `real_images` does not require grad;
/// [`R1Error::Autograd`] if libtorch cannot differentiate the logits with respect to them.
pub fn r1_penalty(real_logits: &Tensor, real_images: &Tensor) -> Result<Tensor, R1Error> {
    if !real_images.requires_grad() {
        return Err(R1Error::ImagesWithoutGrad);
    }
    let mut grads = Tensor::f_run_backward(&[real_logits.sum(None)], &[real_images], true, true)?;
    let grad = grads.pop().expect("one input gives one gradient");
    let b = real_images.size()[0];
    Ok(grad
        .square()
        .reshape([b, -1])
        .sum_dim_intlist(1, false, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::LN_2;
    use tch::Kind;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn values(x: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&x.detach().to_kind(Kind::Float).reshape([-1])).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    /// Gradient of `loss(x).sum()` with respect to `x`.
    fn grad_of(x: &[f32], loss: impl Fn(&Tensor) -> Tensor) -> Vec<f32> {
        let x = t(x).set_requires_grad(true);
        loss(&x).sum(None).backward();
        values(&x.grad())
    }

    #[test]
    fn d_nonsaturating_known_values() {
        let real = t(&[0.0, 2.0]);
        let fake = t(&[0.0, -1.0]);
        // row 0: softplus(0) + softplus(0) = 2 ln 2 = 1.386294
        // row 1: softplus(-2) + softplus(-1) = ln(1 + e^-2) + ln(1 + e^-1)
        //        = 0.126928 + 0.313262 = 0.440190
        assert_close(
            &values(&d_nonsaturating(&real, &fake)),
            &[1.386294, 0.440190],
            1e-5,
        );
        // [B, 1] logits give the same [B] output.
        let out = d_nonsaturating(&real.view([2, 1]), &fake.view([2, 1]));
        assert_eq!(out.size(), vec![2]);
    }

    #[test]
    fn g_nonsaturating_known_values() {
        // softplus(-0) = ln 2 = 0.693147; softplus(-3) = ln(1 + e^-3) = 0.048587;
        // softplus(1) = ln(1 + e) = 1.313262
        assert_close(
            &values(&g_nonsaturating(&t(&[0.0, 3.0, -1.0]))),
            &[LN_2, 0.048587, 1.313262],
            1e-5,
        );
    }

    #[test]
    fn hinge_known_values() {
        let real = t(&[0.5, 2.0, -1.0]);
        let fake = t(&[-0.5, -2.0, 1.0]);
        // relu(1 - real) + relu(1 + fake):
        // row 0: 0.5 + 0.5 = 1; row 1: 0 + 0 = 0; row 2: 2 + 2 = 4
        assert_close(&values(&d_hinge(&real, &fake)), &[1.0, 0.0, 4.0], 1e-6);
        // -fake
        assert_close(&values(&g_hinge(&fake)), &[0.5, 2.0, -1.0], 1e-6);
    }

    #[test]
    fn generator_gradient_pushes_fake_logits_up() {
        // d/df softplus(-f) = -σ(-f): at f = 0 that is -0.5, at f = 2 it is -σ(-2) = -0.119203.
        let g = grad_of(&[0.0, 2.0, -3.0], g_nonsaturating);
        assert_close(&g[..2], &[-0.5, -0.119203], 1e-5);
        assert!(g.iter().all(|&v| v < 0.0), "{g:?}");
        // d/df (-f) = -1
        assert_close(&grad_of(&[0.0, 5.0], g_hinge), &[-1.0, -1.0], 0.0);
    }

    #[test]
    fn discriminator_gradient_pushes_real_up_and_fake_down() {
        let fake = t(&[0.3, -0.7]);
        let real = t(&[0.1, 1.0]);
        // d/dr softplus(-r) = -σ(-r) < 0: descending raises the real logit.
        let g_real = grad_of(&[0.1, 1.0], |r| d_nonsaturating(r, &fake));
        assert!(g_real.iter().all(|&v| v < 0.0), "{g_real:?}");
        // d/df softplus(f) = σ(f) > 0: descending lowers the fake logit. σ(0.3) = 0.574443.
        let g_fake = grad_of(&[0.3, -0.7], |f| d_nonsaturating(&real, f));
        assert!(g_fake.iter().all(|&v| v > 0.0), "{g_fake:?}");
        assert_close(&g_fake[..1], &[0.574443], 1e-5);
        // Hinge, inside the margins: d/dr = -1, d/df = +1.
        assert_close(
            &grad_of(&[0.1, 0.5], |r| d_hinge(r, &fake)),
            &[-1.0, -1.0],
            0.0,
        );
        assert_close(
            &grad_of(&[0.3, -0.7], |f| d_hinge(&real, f)),
            &[1.0, 1.0],
            0.0,
        );
    }

    #[test]
    fn large_logits_stay_finite() {
        let big = t(&[1e4, -1e4, 80.0, -80.0]);
        for out in [
            d_nonsaturating(&big, &big),
            g_nonsaturating(&big),
            d_hinge(&big, &big),
        ] {
            let v = values(&out);
            assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
        }
        // softplus(-1e4) = 0 exactly in f32, softplus(1e4) = 1e4.
        assert_close(
            &values(&g_nonsaturating(&t(&[1e4, -1e4]))),
            &[0.0, 1e4],
            0.0,
        );
        let g = grad_of(&[1e4, -1e4, 80.0, -80.0], g_nonsaturating);
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    }

    #[test]
    fn r1_penalty_matches_closed_form() {
        // D(x) = Σ_{c,h,w} w·x², so ∇ₓD = 2wx and R1 = 4w²·Σx².
        let w = Tensor::from_slice(&[1.5f32]).set_requires_grad(true);
        let x = t(&[1.0, 2.0, 3.0, -1.0])
            .view([2, 1, 1, 2])
            .set_requires_grad(true);
        let d = (&x.square() * &w).sum_dim_intlist([1i64, 2, 3].as_slice(), false, None);
        let r1 = r1_penalty(&d, &x).unwrap();
        // sample 0: 2wx = 3·(1, 2) = (3, 6) → 9 + 36 = 45
        // sample 1: 2wx = 3·(3, -1) = (9, -3) → 81 + 9 = 90
        assert_eq!(r1.size(), vec![2]);
        assert_close(&values(&r1), &[45.0, 90.0], 1e-4);
        // create_graph: d/dw Σ_b 4w²Σx² = 8w·(5 + 10) = 8·1.5·15 = 180
        r1.sum(None).backward();
        assert_close(&values(&w.grad()), &[180.0], 1e-3);
    }

    #[test]
    fn r1_penalty_without_grad_is_an_error() {
        let x = t(&[1.0, 2.0]).view([2, 1]);
        let d = x.square().view([2]);
        assert!(matches!(
            r1_penalty(&d, &x),
            Err(R1Error::ImagesWithoutGrad)
        ));
    }
}
