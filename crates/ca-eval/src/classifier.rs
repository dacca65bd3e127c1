//! The domain classifier of the evaluation: a small CNN trained to tell background from target
//! images on the real evaluation images. It judges swaps and counterparts (swap success,
//! docs/design.md section 6) and its penultimate features give the domain distances `dfd`/`dkd`
//! (used instead of Inception features, which need downloaded weights; never called FID).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Width of the penultimate features.
pub const FEATURES: i64 = 128;

/// Training settings of the domain classifier.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierOptions {
    /// Adam steps.
    pub steps: usize,
    /// Batch size.
    pub batch: i64,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the weights and of the batches.
    pub seed: u64,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        ClassifierOptions {
            steps: 300,
            batch: 64,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// A trained background-vs-target CNN: three stride-2 3x3 convolutions (32, 64, 128 channels,
/// leaky ReLU), global average pooling (the features), one linear logit (target).
#[derive(Debug)]
pub struct DomainClassifier {
    _vs: nn::VarStore,
    convs: Vec<nn::Conv2D>,
    head: nn::Linear,
    /// Accuracy on the real images held out from its training (NaN when none were held out).
    pub heldout_accuracy: f64,
}

impl DomainClassifier {
    /// Train on real images `x` (`[N, C, H, W]` in [-1, 1], any device) with `group` (`[N]`,
    /// 0 = background, 1 = target). Every fifth row is held out to measure the accuracy.
    pub fn train(x: &Tensor, group: &Tensor, device: Device, opts: ClassifierOptions) -> Self {
        tch::manual_seed(opts.seed as i64);
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let c = x.size()[1];
        let cfg = nn::ConvConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let chans = [c, 32, 64, FEATURES];
        let convs: Vec<nn::Conv2D> = (0..3)
            .map(|i| nn::conv2d(&p / "conv" / i, chans[i], chans[i + 1], 3, cfg))
            .collect();
        let head = nn::linear(&p / "head", FEATURES, 1, Default::default());
        let mut me = DomainClassifier {
            _vs: vs,
            convs,
            head,
            heldout_accuracy: f64::NAN,
        };
        let n = x.size()[0];
        let (train, test): (Vec<i64>, Vec<i64>) = (0..n).partition(|i| i % 5 != 4 || n < 10);
        let train_t = Tensor::from_slice(&train);
        let xt = x.index_select(0, &train_t).to_device(device);
        let yt = group
            .index_select(0, &train_t)
            .to_kind(Kind::Float)
            .to_device(device);
        let mut opt = nn::Adam::default()
            .build(&me._vs, opts.lr)
            .expect("Adam over a fresh VarStore");
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xC1A5);
        let nt = train.len();
        if nt > 0 {
            for _ in 0..opts.steps {
                let idx: Vec<i64> = (0..opts.batch.min(nt as i64))
                    .map(|_| rng.random_range(0..nt) as i64)
                    .collect();
                let idx = Tensor::from_slice(&idx).to_device(device);
                let logits = me.logits_t(&xt.index_select(0, &idx), true);
                let loss = logits.binary_cross_entropy_with_logits::<Tensor>(
                    &yt.index_select(0, &idx),
                    None,
                    None,
                    tch::Reduction::Mean,
                );
                opt.backward_step(&loss);
            }
        }
        if !test.is_empty() {
            let test_t = Tensor::from_slice(&test);
            let pred = me.predict_target(&x.index_select(0, &test_t), 256);
            let truth = group.index_select(0, &test_t).to_device(Device::Cpu);
            me.heldout_accuracy = pred
                .eq_tensor(&truth.to_kind(Kind::Bool))
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]);
        }
        me
    }

    fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.to_kind(Kind::Float);
        for c in &self.convs {
            h = c.forward_t(&h, train).leaky_relu();
        }
        h.mean_dim(Some([2i64, 3].as_slice()), false, Kind::Float)
    }

    fn logits_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.head
            .forward_t(&self.features_t(x, train), train)
            .view([-1])
    }

    /// Penultimate features `[N, 128]` on the CPU, computed in batches without gradients.
    pub fn features(&self, x: &Tensor, batch: i64) -> Tensor {
        let _g = tch::no_grad_guard();
        let dev = self.head.ws.device();
        ca_models::inference::batched(x, batch.max(1), |b| {
            self.features_t(&b.to_device(dev), false)
                .to_device(Device::Cpu)
        })
    }

    /// Whether each image is classified target (`[N]` bool on the CPU).
    pub fn predict_target(&self, x: &Tensor, batch: i64) -> Tensor {
        let _g = tch::no_grad_guard();
        let dev = self.head.ws.device();
        ca_models::inference::batched(x, batch.max(1), |b| {
            self.logits_t(&b.to_device(dev), false)
                .gt(0.0)
                .to_device(Device::Cpu)
        })
    }

    /// Fraction of `x` classified as target.
    pub fn target_rate(&self, x: &Tensor, batch: i64) -> f64 {
        if x.size()[0] == 0 {
            return f64::NAN;
        }
        self.predict_target(x, batch)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    }
}
