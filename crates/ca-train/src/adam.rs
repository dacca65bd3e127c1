//! Adam (Kingma & Ba 2015, arXiv 1412.6980) over tensors whose state this project owns.
//!
//! tch's `nn::Optimizer` cannot export its moments, so a resumed run would restart them from
//! zero. This Adam keeps `m`, `v` and the step count as plain tensors that
//! [`Adam::state`] / [`Adam::load_state`] save and restore, so an interrupted-and-resumed run
//! continues bit for bit. The update is PyTorch's `torch.optim.Adam` (L2 weight decay added to
//! the gradient, bias-corrected moments, `eps` outside the square root).

use std::collections::HashMap;

use tch::{Kind, Tensor};

/// Hyper-parameters of [`Adam`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
    /// L2 penalty added to the gradient (PyTorch `weight_decay`).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam over a named set of parameters (usually all trainable variables of one `VarStore`).
pub struct Adam {
    /// Hyper-parameters; `lr` may be changed between steps (schedules).
    pub config: AdamConfig,
    step: i64,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    /// An optimiser over `params` (name, variable); names key the saved state.
    /// Parameters that do not require a gradient are ignored.
    pub fn new(mut params: Vec<(String, Tensor)>, config: AdamConfig) -> Self {
        params.retain(|(_, p)| p.requires_grad());
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Adam {
            config,
            step: 0,
            params,
            m,
            v,
        }
    }

    /// An optimiser over every trainable variable of a var store.
    pub fn for_var_store(vs: &tch::nn::VarStore, config: AdamConfig) -> Self {
        Adam::new(vs.variables().into_iter().collect(), config)
    }

    /// Number of updates done so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Zero (and detach) the gradients of all parameters.
    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// One update from the current gradients. Parameters without a gradient are left alone
    /// (their moments are not decayed), as in PyTorch.
    pub fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = c.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for ((_, p), (m, v)) in self
            .params
            .iter_mut()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = if c.weight_decay != 0.0 {
                &g + &*p * c.weight_decay
            } else {
                g
            };
            let _ = m.lerp_(&g, 1.0 - c.beta1);
            let _ = v.g_mul_scalar_(c.beta2);
            let _ = v.addcmul_(&(&g * (1.0 - c.beta2)), &g);
            let denom = v.sqrt() / bc2_sqrt + c.eps;
            let _ = p.addcdiv_(&(&*m * (-step_size)), &denom);
        }
    }

    /// Clip the global L2 norm of all gradients to `max_norm`; returns the norm before clipping
    /// as a 0-d tensor (no host sync).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        self.clip_grad_norm_by_groups(max_norm, &[])
    }

    /// Clip the gradient norm of each group of parameters to `max_norm` separately; a group is
    /// the parameters whose names start with one of its prefixes (the first matching group
    /// wins), and the parameters in no group form one more. Returns the global norm before
    /// clipping as a 0-d tensor (no host sync).
    pub fn clip_grad_norm_by_groups(&mut self, max_norm: f64, groups: &[&[&str]]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let group_of = |name: &str| {
            groups
                .iter()
                .position(|g| g.iter().any(|p| name.starts_with(p)))
                .unwrap_or(groups.len())
        };
        let mut total: Vec<Tensor> = Vec::new();
        for gi in 0..=groups.len() {
            let grads = self.grads_where(|n| group_of(n) == gi);
            let Some(sq) = squared_norm(&grads) else {
                continue;
            };
            let scale = (max_norm / (sq.sqrt() + 1e-6)).clamp_max(1.0);
            for mut g in grads {
                let _ = g.g_mul_(&scale);
            }
            total.push(sq);
        }
        if total.is_empty() {
            return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        }
        Tensor::stack(&total, 0).sum(Kind::Float).sqrt()
    }

    /// L2 norm of the gradients of the parameters whose names start with each prefix, as 0-d
    /// tensors (no host sync); parameters without a gradient count 0.
    pub fn grad_norms_by_prefix(&self, prefixes: &[&str]) -> Vec<Tensor> {
        let _guard = tch::no_grad_guard();
        prefixes
            .iter()
            .map(|prefix| {
                squared_norm(&self.grads_where(|n| n.starts_with(prefix))).map_or_else(
                    || Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                    |sq| sq.sqrt(),
                )
            })
            .collect()
    }

    /// The defined gradients of the parameters whose names `keep` accepts, in parameter order.
    fn grads_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Tensor> {
        self.params
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// The optimiser state as named tensors: `step`, `m.<param>`, `v.<param>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for ((name, _), (m, v)) in self.params.iter().zip(self.m.iter().zip(self.v.iter())) {
            out.push((format!("m.{name}"), m.shallow_clone()));
            out.push((format!("v.{name}"), v.shallow_clone()));
        }
        out
    }

    /// Restore the state written by [`Adam::state`]. Errors name the first missing or
    /// mis-shaped entry.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), String> {
        let step = state
            .get("step")
            .ok_or("optimizer state has no `step` entry")?;
        let _guard = tch::no_grad_guard();
        for ((name, p), (m, v)) in self
            .params
            .iter()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            for (prefix, dst) in [("m", &mut *m), ("v", &mut *v)] {
                let key = format!("{prefix}.{name}");
                let src = state
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state has no `{key}`"))?;
                if src.size() != p.size() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, the parameter has {:?}",
                        src.size(),
                        p.size()
                    ));
                }
                dst.copy_(src);
            }
        }
        self.step = step.int64_value(&[]);
        Ok(())
    }
}

/// Sum of the squares of every element of `grads`, a 0-d float tensor (no host sync); `None`
/// for no tensors.
fn squared_norm(grads: &[Tensor]) -> Option<Tensor> {
    if grads.is_empty() {
        return None;
    }
    let sq: Vec<Tensor> = grads
        .iter()
        .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float))
        .collect();
    Some(Tensor::stack(&sq, 0).sum(Kind::Float))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One Adam step on f(x) = x^2 at x = 1 (grad 2), lr 0.1, betas (0.9, 0.999):
    /// m = 0.1*2 = 0.2, v = 0.001*4 = 0.004; m_hat = 0.2/0.1 = 2, v_hat = 0.004/0.001 = 4;
    /// x <- 1 - 0.1 * 2 / (2 + 1e-8) = 0.9 (to 1e-7).
    #[test]
    fn first_step_matches_hand_computation() {
        let x = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = Adam::new(
            vec![("x".into(), x.shallow_clone())],
            AdamConfig {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        );
        opt.zero_grad();
        (&x * &x).sum(Kind::Double).backward();
        opt.step();
        assert!(
            (x.double_value(&[0]) - 0.9).abs() < 1e-7,
            "{}",
            x.double_value(&[0])
        );
    }

    /// Per-prefix gradient norms by hand: f = 3a + 4b + 12c over scalars named `u.a`, `u.b`,
    /// `v.c`: |grad u.*| = 5, |grad v.*| = 12, and the global clip norm is 13.
    #[test]
    fn grad_norms_by_prefix_by_hand() {
        let p = |v: f64| Tensor::from_slice(&[v]).set_requires_grad(true);
        let (a, b, c) = (p(1.0), p(2.0), p(3.0));
        let mut opt = Adam::new(
            vec![
                ("u.a".into(), a.shallow_clone()),
                ("u.b".into(), b.shallow_clone()),
                ("v.c".into(), c.shallow_clone()),
            ],
            AdamConfig::default(),
        );
        opt.zero_grad();
        (&a * 3.0 + &b * 4.0 + &c * 12.0)
            .sum(Kind::Double)
            .backward();
        let n: Vec<f64> = opt
            .grad_norms_by_prefix(&["u.", "v.", "w."])
            .iter()
            .map(|t| t.double_value(&[]))
            .collect();
        assert_eq!(n, vec![5.0, 12.0, 0.0]);
        assert_eq!(opt.clip_grad_norm(100.0).double_value(&[]), 13.0);
    }

    /// Group clipping by hand: f = 3a + 4b + 12c + 0.5d over `u.a`, `u.b`, `v.c`, `w.d`; groups
    /// [u.] and [v.], the rest (w.d) a third. Clipped to 1: u grads (0.6, 0.8), v 1, w 0.5
    /// (under the bound, unchanged); the returned global norm before clipping is
    /// sqrt(9 + 16 + 144 + 0.25) = 13.0096.
    #[test]
    fn clip_by_groups_by_hand() {
        let p = |v: f64| Tensor::from_slice(&[v]).set_requires_grad(true);
        let (a, b, c, d) = (p(1.0), p(2.0), p(3.0), p(4.0));
        let mut opt = Adam::new(
            vec![
                ("u.a".into(), a.shallow_clone()),
                ("u.b".into(), b.shallow_clone()),
                ("v.c".into(), c.shallow_clone()),
                ("w.d".into(), d.shallow_clone()),
            ],
            AdamConfig::default(),
        );
        opt.zero_grad();
        (&a * 3.0 + &b * 4.0 + &c * 12.0 + &d * 0.5)
            .sum(Kind::Double)
            .backward();
        let norm = opt
            .clip_grad_norm_by_groups(1.0, &[&["u."], &["v."]])
            .double_value(&[]);
        assert!((norm - 169.25f64.sqrt()).abs() < 1e-5, "{norm}");
        let g: Vec<f64> = [&a, &b, &c, &d]
            .iter()
            .map(|t| t.grad().double_value(&[0]))
            .collect();
        for (got, want) in g.iter().zip([0.6, 0.8, 1.0, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{g:?}");
        }
    }

    /// Save after 3 steps, restore into a fresh optimiser on a copy: the next steps agree exactly.
    #[test]
    fn state_round_trip_continues_identically() {
        let cfg = AdamConfig {
            lr: 0.05,
            ..AdamConfig::default()
        };
        let run = |x: &Tensor, opt: &mut Adam, n: usize| {
            for _ in 0..n {
                opt.zero_grad();
                (x * x * x).sum(Kind::Double).backward();
                opt.step();
            }
        };
        let a = Tensor::from_slice(&[0.7f64, -0.3]).set_requires_grad(true);
        let mut oa = Adam::new(vec![("a".into(), a.shallow_clone())], cfg);
        run(&a, &mut oa, 3);
        let saved: HashMap<String, Tensor> =
            oa.state().into_iter().map(|(k, t)| (k, t.copy())).collect();
        let b = a.detach().copy().set_requires_grad(true);
        let mut ob = Adam::new(vec![("a".into(), b.shallow_clone())], cfg);
        ob.load_state(&saved).unwrap();
        assert_eq!(ob.steps(), 3);
        run(&a, &mut oa, 2);
        run(&b, &mut ob, 2);
        assert!(a.equal(&b));
    }

    #[test]
    fn load_state_names_missing_entry() {
        let a = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut o = Adam::new(vec![("w".into(), a)], AdamConfig::default());
        let mut st = HashMap::new();
        st.insert("step".to_string(), Tensor::from(1i64));
        let err = o.load_state(&st).unwrap_err();
        assert!(err.contains("m.w"), "{err}");
    }

    #[test]
    fn clip_grad_norm_scales_to_max() {
        let x = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut o = Adam::new(vec![("x".into(), x.shallow_clone())], AdamConfig::default());
        o.zero_grad();
        // grad of 0.5*||x||^2 is x = (3, 4), norm 5.
        (&x * &x * 0.5).sum(Kind::Float).backward();
        let n = o.clip_grad_norm(1.0).double_value(&[]);
        assert!((n - 5.0).abs() < 1e-5);
        let g = Vec::<f32>::try_from(x.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-4 && (g[1] - 0.8).abs() < 1e-4,
            "{g:?}"
        );
    }
}
