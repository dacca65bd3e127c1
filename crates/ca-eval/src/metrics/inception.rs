//! The FID Inception-v3 network: 2048-d `pool3` features of the TensorFlow Inception graph
//! `inception-2015-12-05` used by the original FID code (Heusel, Ramsauer, Unterthiner, Nessler,
//! Hochreiter, "GANs trained by a two time-scale update rule converge to a local Nash
//! equilibrium", NeurIPS 2017, arXiv 1706.08500), as ported to PyTorch by pytorch-fid
//! (M. Seitzer, weights `pt_inception-2015-12-05-6726825d.pth`).
//!
//! The architecture is Inception-v3 (Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the
//! Inception architecture for computer vision", CVPR 2016, arXiv 1512.00567) in torchvision's
//! module layout, with the differences of the TensorFlow graph:
//!
//! * every 3x3 average pool of a branch (`Mixed_5b..d`, `Mixed_6b..e`, `Mixed_7b`) divides by the
//!   number of real pixels under the window (`count_include_pad = false`);
//! * the pool branch of the last block `Mixed_7c` is a 3x3 **max** pool (stride 1, padding 1);
//! * 1008 output classes (`fc`), no auxiliary classifier; batch norm with `eps = 0.001`;
//! * inputs are resized bilinearly (`align_corners = false`) to 299x299 and scaled to [-1, 1].
//!
//! Variable names are the checkpoint's `state_dict` keys (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_7c.branch_pool.bn.running_var`, `fc.weight`, ...), so the converted safetensors file
//! loads by name; the checkpoint's `num_batches_tracked` counters are not needed and ignored.
//! `cargo xtask fetch-weights` downloads, verifies and converts the weights into
//! [`default_weights_path`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

/// Environment variable naming the folder of downloaded weights (overrides the default
/// `~/.cache/ca/weights`).
pub const WEIGHTS_DIR_ENV: &str = "CA_WEIGHTS_DIR";

/// File name of the converted FID Inception weights inside the weights folder.
pub const WEIGHTS_FILE_NAME: &str = "pt_inception-2015-12-05.safetensors";

/// Side of the square input of the network, pixels.
pub const INPUT_SIZE: i64 = 299;

/// Dimension of the `pool3` features.
pub const FEATURE_DIM: i64 = 2048;

/// Classes of the TensorFlow graph's classifier (`fc`): 1008, not 1000.
pub const NUM_CLASSES: i64 = 1008;

/// The folder of downloaded weights: `$CA_WEIGHTS_DIR` when set and not empty, else
/// `$HOME/.cache/ca/weights`; `None` when neither variable is set. Independent of the current
/// directory, so `ca eval` finds the weights from anywhere.
pub fn default_weights_dir() -> Option<PathBuf> {
    weights_dir_from(std::env::var_os(WEIGHTS_DIR_ENV), std::env::var_os("HOME"))
}

fn weights_dir_from(
    dir: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    match dir.filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => home
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache").join("ca").join("weights")),
    }
}

/// Where the FID Inception weights are looked for: [`default_weights_dir`]`/`[`WEIGHTS_FILE_NAME`].
pub fn default_weights_path() -> Option<PathBuf> {
    default_weights_dir().map(|d| d.join(WEIGHTS_FILE_NAME))
}

/// Errors of loading or running the Inception network. Every loading error names the file and
/// says how to (re)install the weights.
#[derive(Debug, thiserror::Error)]
pub enum InceptionError {
    /// The weights file does not exist.
    #[error(
        "FID Inception weights '{}' are not installed: run `cargo xtask fetch-weights` (it writes them to ${WEIGHTS_DIR_ENV}, default ~/.cache/ca/weights)",
        path.display()
    )]
    NotInstalled {
        /// The file looked for.
        path: PathBuf,
    },
    /// The file could not be read as safetensors.
    #[error(
        "cannot read FID Inception weights '{}': {source}; run `cargo xtask fetch-weights` to reinstall them",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: tch::TchError,
    },
    /// A tensor of the network is not in the file.
    #[error(
        "FID Inception weights '{}' have no tensor '{name}' (not the pt_inception-2015-12-05 weights?): run `cargo xtask fetch-weights` to reinstall them",
        path.display()
    )]
    MissingTensor {
        /// The variable name.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// A tensor of the file has the wrong shape.
    #[error(
        "FID Inception weights '{}': tensor '{name}' has shape {got:?}, expected {expected:?}: run `cargo xtask fetch-weights` to reinstall them",
        path.display()
    )]
    Shape {
        /// The variable name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The network's shape.
        expected: Vec<i64>,
        /// The file's shape.
        got: Vec<i64>,
    },
    /// The images are not `[N, 1 or 3, H, W]`.
    #[error("Inception features: expected images [N, 1 or 3, H, W], got shape {0:?}")]
    Input(Vec<i64>),
    /// libtorch reported an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Convolution without bias, batch norm (`eps = 0.001`, running statistics), ReLU: torchvision's
/// `BasicConv2d`, parameters `<name>.conv.weight` and `<name>.bn.{weight, bias, running_mean,
/// running_var}`.
#[derive(Debug)]
struct BasicConv2d {
    conv: nn::Conv<[i64; 2]>,
    bn: nn::BatchNorm,
}

impl BasicConv2d {
    fn new(p: nn::Path, cin: i64, cout: i64, k: [i64; 2], stride: i64, pad: [i64; 2]) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: [stride, stride],
            padding: pad,
            bias: false,
            ..Default::default()
        };
        let conv = nn::conv(&p / "conv", cin, cout, k, cfg);
        let bn_cfg = nn::BatchNormConfig {
            eps: 1e-3,
            ..Default::default()
        };
        let bn = nn::batch_norm2d(&p / "bn", cout, bn_cfg);
        BasicConv2d { conv, bn }
    }

    /// Square kernel `k`, stride 1, padding `pad`.
    fn square(p: nn::Path, cin: i64, cout: i64, k: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], 1, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward_t(&self.conv.forward(x), false).relu()
    }
}

/// 3x3 average pool, stride 1, padding 1, averaging real pixels only (TensorFlow's `SAME` pool).
fn avg_pool_same(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

/// 3x3 max pool, stride 1, padding 1.
fn max_pool_same(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
}

/// 3x3 max pool, stride 2, no padding.
fn max_pool_reduce(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `Mixed_5b..d` (35x35): 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avg pool→1x1 (`pool_features`).
#[derive(Debug)]
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(p: nn::Path, cin: i64, pool_features: i64) -> Self {
        InceptionA {
            branch1x1: BasicConv2d::square(&p / "branch1x1", cin, 64, 1, 0),
            branch5x5_1: BasicConv2d::square(&p / "branch5x5_1", cin, 48, 1, 0),
            branch5x5_2: BasicConv2d::square(&p / "branch5x5_2", 48, 64, 5, 2),
            branch3x3dbl_1: BasicConv2d::square(&p / "branch3x3dbl_1", cin, 64, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(&p / "branch3x3dbl_2", 64, 96, 3, 1),
            branch3x3dbl_3: BasicConv2d::square(&p / "branch3x3dbl_3", 96, 96, 3, 1),
            branch_pool: BasicConv2d::square(&p / "branch_pool", cin, pool_features, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.branch1x1.forward(x);
        let b = self.branch5x5_2.forward(&self.branch5x5_1.forward(x));
        let c = self
            .branch3x3dbl_3
            .forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)));
        let d = self.branch_pool.forward(&avg_pool_same(x));
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// `Mixed_6a` (35x35 → 17x17): 3x3/2 | 1x1→3x3→3x3/2 | max pool/2.
#[derive(Debug)]
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(p: nn::Path, cin: i64) -> Self {
        InceptionB {
            branch3x3: BasicConv2d::new(&p / "branch3x3", cin, 384, [3, 3], 2, [0, 0]),
            branch3x3dbl_1: BasicConv2d::square(&p / "branch3x3dbl_1", cin, 64, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(&p / "branch3x3dbl_2", 64, 96, 3, 1),
            branch3x3dbl_3: BasicConv2d::new(&p / "branch3x3dbl_3", 96, 96, [3, 3], 2, [0, 0]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.branch3x3.forward(x);
        let b = self
            .branch3x3dbl_3
            .forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x)));
        Tensor::cat(&[a, b, max_pool_reduce(x)], 1)
    }
}

/// `Mixed_6b..e` (17x17) with factorised 7x7 convolutions of width `c7`: 1x1 | 1x1→1x7→7x1 |
/// 1x1→7x1→1x7→7x1→1x7 | avg pool→1x1.
#[derive(Debug)]
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(p: nn::Path, cin: i64, c7: i64) -> Self {
        let row = |name: &str, i: i64, o: i64| BasicConv2d::new(&p / name, i, o, [1, 7], 1, [0, 3]);
        let col = |name: &str, i: i64, o: i64| BasicConv2d::new(&p / name, i, o, [7, 1], 1, [3, 0]);
        InceptionC {
            branch1x1: BasicConv2d::square(&p / "branch1x1", cin, 192, 1, 0),
            branch7x7: [
                BasicConv2d::square(&p / "branch7x7_1", cin, c7, 1, 0),
                row("branch7x7_2", c7, c7),
                col("branch7x7_3", c7, 192),
            ],
            branch7x7dbl: [
                BasicConv2d::square(&p / "branch7x7dbl_1", cin, c7, 1, 0),
                col("branch7x7dbl_2", c7, c7),
                row("branch7x7dbl_3", c7, c7),
                col("branch7x7dbl_4", c7, c7),
                row("branch7x7dbl_5", c7, 192),
            ],
            branch_pool: BasicConv2d::square(&p / "branch_pool", cin, 192, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let chain =
            |convs: &[BasicConv2d]| convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        let a = self.branch1x1.forward(x);
        let b = chain(&self.branch7x7);
        let c = chain(&self.branch7x7dbl);
        let d = self.branch_pool.forward(&avg_pool_same(x));
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// `Mixed_7a` (17x17 → 8x8): 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | max pool/2.
#[derive(Debug)]
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(p: nn::Path, cin: i64) -> Self {
        InceptionD {
            branch3x3: [
                BasicConv2d::square(&p / "branch3x3_1", cin, 192, 1, 0),
                BasicConv2d::new(&p / "branch3x3_2", 192, 320, [3, 3], 2, [0, 0]),
            ],
            branch7x7x3: [
                BasicConv2d::square(&p / "branch7x7x3_1", cin, 192, 1, 0),
                BasicConv2d::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv2d::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv2d::new(&p / "branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0]),
            ],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let chain =
            |convs: &[BasicConv2d]| convs.iter().fold(x.shallow_clone(), |h, c| c.forward(&h));
        Tensor::cat(
            &[
                chain(&self.branch3x3),
                chain(&self.branch7x7x3),
                max_pool_reduce(x),
            ],
            1,
        )
    }
}

/// Pool of the last branch of an [`InceptionE`] block.
#[derive(Debug, Clone, Copy)]
enum EPool {
    /// `Mixed_7b`: average over real pixels.
    Average,
    /// `Mixed_7c`: max pool (the TensorFlow graph's quirk).
    Max,
}

/// `Mixed_7b, 7c` (8x8): 1x1 | 1x1→(1x3 ‖ 3x1) | 1x1→3x3→(1x3 ‖ 3x1) | pool→1x1.
#[derive(Debug)]
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    pool: EPool,
}

impl InceptionE {
    fn new(p: nn::Path, cin: i64, pool: EPool) -> Self {
        let row = |name: &str| BasicConv2d::new(&p / name, 384, 384, [1, 3], 1, [0, 1]);
        let col = |name: &str| BasicConv2d::new(&p / name, 384, 384, [3, 1], 1, [1, 0]);
        InceptionE {
            branch1x1: BasicConv2d::square(&p / "branch1x1", cin, 320, 1, 0),
            branch3x3_1: BasicConv2d::square(&p / "branch3x3_1", cin, 384, 1, 0),
            branch3x3_2a: row("branch3x3_2a"),
            branch3x3_2b: col("branch3x3_2b"),
            branch3x3dbl_1: BasicConv2d::square(&p / "branch3x3dbl_1", cin, 448, 1, 0),
            branch3x3dbl_2: BasicConv2d::square(&p / "branch3x3dbl_2", 448, 384, 3, 1),
            branch3x3dbl_3a: row("branch3x3dbl_3a"),
            branch3x3dbl_3b: col("branch3x3dbl_3b"),
            branch_pool: BasicConv2d::square(&p / "branch_pool", cin, 192, 1, 0),
            pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.branch1x1.forward(x);
        let h = self.branch3x3_1.forward(x);
        let b = Tensor::cat(
            &[self.branch3x3_2a.forward(&h), self.branch3x3_2b.forward(&h)],
            1,
        );
        let h = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x));
        let c = Tensor::cat(
            &[
                self.branch3x3dbl_3a.forward(&h),
                self.branch3x3dbl_3b.forward(&h),
            ],
            1,
        );
        let pooled = match self.pool {
            EPool::Average => avg_pool_same(x),
            EPool::Max => max_pool_same(x),
        };
        let d = self.branch_pool.forward(&pooled);
        Tensor::cat(&[a, b, c, d], 1)
    }
}

/// The network up to the global average pool (`pool3`). `fc` is created so that the names match
/// the checkpoint, but the features do not use it.
#[derive(Debug)]
struct FidInceptionV3 {
    stem: [BasicConv2d; 5],
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
}

impl FidInceptionV3 {
    fn new(p: &nn::Path) -> Self {
        let stem = [
            BasicConv2d::new(p / "Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0]),
            BasicConv2d::square(p / "Conv2d_2a_3x3", 32, 32, 3, 0),
            BasicConv2d::square(p / "Conv2d_2b_3x3", 32, 64, 3, 1),
            BasicConv2d::square(p / "Conv2d_3b_1x1", 64, 80, 1, 0),
            BasicConv2d::square(p / "Conv2d_4a_3x3", 80, 192, 3, 0),
        ];
        let net = FidInceptionV3 {
            stem,
            mixed_5: [
                InceptionA::new(p / "Mixed_5b", 192, 32),
                InceptionA::new(p / "Mixed_5c", 256, 64),
                InceptionA::new(p / "Mixed_5d", 288, 64),
            ],
            mixed_6a: InceptionB::new(p / "Mixed_6a", 288),
            mixed_6: [
                InceptionC::new(p / "Mixed_6b", 768, 128),
                InceptionC::new(p / "Mixed_6c", 768, 160),
                InceptionC::new(p / "Mixed_6d", 768, 160),
                InceptionC::new(p / "Mixed_6e", 768, 192),
            ],
            mixed_7a: InceptionD::new(p / "Mixed_7a", 768),
            mixed_7b: InceptionE::new(p / "Mixed_7b", 1280, EPool::Average),
            mixed_7c: InceptionE::new(p / "Mixed_7c", 2048, EPool::Max),
        };
        // The classifier: only for the names (the checkpoint has it).
        let _fc = nn::linear(p / "fc", FEATURE_DIM, NUM_CLASSES, Default::default());
        net
    }

    /// `x: [B, 3, 299, 299]` in [-1, 1] → `[B, 2048]`.
    fn pool3(&self, x: &Tensor) -> Tensor {
        let s = &self.stem;
        let h = s[2].forward(&s[1].forward(&s[0].forward(x)));
        let h = max_pool_reduce(&h);
        let h = max_pool_reduce(&s[4].forward(&s[3].forward(&h)));
        let h = self.mixed_5.iter().fold(h, |h, m| m.forward(&h));
        let h = self.mixed_6a.forward(&h);
        let h = self.mixed_6.iter().fold(h, |h, m| m.forward(&h));
        let h = self.mixed_7a.forward(&h);
        let h = self.mixed_7c.forward(&self.mixed_7b.forward(&h));
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// The FID Inception-v3 feature extractor with its weights (frozen, evaluation mode).
#[derive(Debug)]
pub struct InceptionFeatures {
    vs: nn::VarStore,
    net: FidInceptionV3,
}

impl InceptionFeatures {
    /// Load the converted `pt_inception-2015-12-05` weights from the safetensors file `path`
    /// onto `device`. Every variable of the network must be in the file with its exact shape;
    /// extra tensors (`num_batches_tracked`) are ignored. Errors name the file and say to run
    /// `cargo xtask fetch-weights`.
    pub fn load(path: &Path, device: Device) -> Result<Self, InceptionError> {
        if !path.is_file() {
            return Err(InceptionError::NotInstalled {
                path: path.to_path_buf(),
            });
        }
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|source| InceptionError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .into_iter()
            .collect();
        let mut me = Self::untrained(device);
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = me.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let src = tensors
                .get(&name)
                .ok_or_else(|| InceptionError::MissingTensor {
                    name: name.clone(),
                    path: path.to_path_buf(),
                })?;
            if src.size() != var.size() {
                return Err(InceptionError::Shape {
                    name,
                    path: path.to_path_buf(),
                    expected: var.size(),
                    got: src.size(),
                });
            }
            var.f_copy_(&src.to_kind(var.kind()))?;
        }
        me.vs.freeze();
        Ok(me)
    }

    /// The network with libtorch's default initialisation: the base of [`Self::load`], and for
    /// tests and timing (`examples/untrained_inception.rs`); its features mean nothing.
    pub fn untrained(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let net = FidInceptionV3::new(&vs.root());
        InceptionFeatures { vs, net }
    }

    /// Write every variable to a safetensors file that [`Self::load`] reads.
    pub fn save(&self, path: &Path) -> Result<(), tch::TchError> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&vars, path)
    }

    /// The device the network runs on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// `pool3` features of `x: [B, 3, 299, 299]` already in the network's input range [-1, 1],
    /// on the network's device: `[B, 2048]`.
    pub fn forward_pool3(&self, x: &Tensor) -> Tensor {
        self.net.pool3(x)
    }

    /// Features of `images: [N, C, H, W]` (float in [-1, 1], the project's convention; `C` 1 or 3,
    /// any size, any device), `batch_size` images at a time: each batch is clamped to [-1, 1]
    /// (as saving to 8-bit would), grey images are repeated to 3 channels, resized bilinearly
    /// (`align_corners = false`) to 299x299 unless already that size, and run without
    /// gradients. Returns `[N, 2048]` float on the CPU.
    ///
    /// pytorch-fid resizes images in [0, 1] and then maps them to [-1, 1]; bilinear weights sum
    /// to 1, so resizing in [-1, 1] gives the same input up to float rounding.
    pub fn features(&self, images: &Tensor, batch_size: i64) -> Result<Tensor, InceptionError> {
        let size = images.size();
        if size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
            return Err(InceptionError::Input(size));
        }
        let _guard = tch::no_grad_guard();
        let (n, bs) = (size[0], batch_size.max(1));
        let dev = self.device();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < n {
            let len = bs.min(n - i);
            let mut x = images
                .narrow(0, i, len)
                .to_device(dev)
                .to_kind(Kind::Float)
                .clamp(-1.0, 1.0);
            if size[1] == 1 {
                x = x.repeat([1, 3, 1, 1]);
            }
            if size[2] != INPUT_SIZE || size[3] != INPUT_SIZE {
                x = x.f_upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None)?;
            }
            parts.push(self.net.pool3(&x).to_device(Device::Cpu));
            i += len;
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros([0, FEATURE_DIM], (Kind::Float, Device::Cpu)));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of the sorted `"name d0,d1,...\n"` lines of `(name, shape)`.
    fn fnv1a_key_list(mut entries: Vec<(String, Vec<i64>)>) -> u64 {
        entries.sort();
        let mut h = ca_data::digest::Fnv1a64::default();
        for (name, shape) in entries {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            h.update(format!("{name} {}\n", dims.join(",")).as_bytes());
        }
        h.finish()
    }

    fn var_shapes(f: &InceptionFeatures) -> Vec<(String, Vec<i64>)> {
        f.vs.variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect()
    }

    #[test]
    fn names_and_shapes_match_the_pt_inception_checkpoint() {
        tch::manual_seed(0);
        let f = InceptionFeatures::untrained(Device::Cpu);
        let shapes: HashMap<String, Vec<i64>> = var_shapes(&f).into_iter().collect();
        // 94 BasicConv2d (conv.weight + 4 batch-norm tensors each) and fc.{weight, bias}: the
        // checkpoint's 566 entries less its 94 `num_batches_tracked` counters.
        assert_eq!(shapes.len(), 94 * 5 + 2);
        let expected: [(&str, &[i64]); 14] = [
            ("Conv2d_1a_3x3.conv.weight", &[32, 3, 3, 3]),
            ("Conv2d_4a_3x3.bn.running_var", &[192]),
            ("Mixed_5b.branch_pool.conv.weight", &[32, 192, 1, 1]),
            ("Mixed_5d.branch5x5_2.conv.weight", &[64, 48, 5, 5]),
            ("Mixed_6a.branch3x3.conv.weight", &[384, 288, 3, 3]),
            ("Mixed_6b.branch7x7_2.conv.weight", &[128, 128, 1, 7]),
            ("Mixed_6e.branch7x7dbl_2.conv.weight", &[192, 192, 7, 1]),
            ("Mixed_7a.branch7x7x3_4.conv.weight", &[192, 192, 3, 3]),
            ("Mixed_7b.branch3x3_2b.conv.weight", &[384, 384, 3, 1]),
            ("Mixed_7c.branch3x3dbl_1.conv.weight", &[448, 2048, 1, 1]),
            ("Mixed_7c.branch_pool.conv.weight", &[192, 2048, 1, 1]),
            ("Mixed_7c.branch_pool.bn.bias", &[192]),
            ("fc.weight", &[1008, 2048]),
            ("fc.bias", &[1008]),
        ];
        for (name, shape) in expected {
            assert_eq!(shapes.get(name).map(Vec::as_slice), Some(shape), "{name}");
        }
        assert!(!shapes.keys().any(|k| k.contains("AuxLogits")));
        // Trainable parameters: torchvision's inception_v3 has 27,161,264 (with the auxiliary
        // classifier, 3,326,696, and 1000 classes); without the auxiliary head and with 1008
        // classes (+8 x 2049) that is 23,850,960.
        let trainable: i64 =
            f.vs.trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum();
        assert_eq!(trainable, 23_850_960);
        // Digest of the full key list of pytorch-fid's FID Inception `state_dict()` without
        // `num_batches_tracked` (torchvision 0.26, pytorch-fid 0.3.0), computed in Python with
        // the same FNV-1a over the sorted "name d0,d1,...\n" lines:
        //   sd = InceptionV3.fid_inception_v3().state_dict()   # download patched out
        //   lines = sorted(f"{k} {','.join(map(str, v.shape))}\n" for k, v in sd.items()
        //                  if not k.endswith("num_batches_tracked"))
        assert_eq!(
            fnv1a_key_list(var_shapes(&f)),
            PT_INCEPTION_KEY_DIGEST,
            "variable names/shapes differ from pt_inception-2015-12-05"
        );
    }

    /// See `names_and_shapes_match_the_pt_inception_checkpoint`.
    const PT_INCEPTION_KEY_DIGEST: u64 = 0x1430_fa0c_b804_cc51;

    #[test]
    fn random_network_gives_2048_features_for_small_inputs() {
        tch::manual_seed(1);
        let f = InceptionFeatures::untrained(Device::Cpu);
        for (c, s) in [(3, 32), (1, 64)] {
            let x = Tensor::rand([2, c, s, s], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let feat = f.features(&x, 2).unwrap();
            assert_eq!(feat.size(), [2, FEATURE_DIM], "{c}x{s}x{s}");
            assert!(
                feat.isfinite().all().int64_value(&[]) == 1,
                "non-finite features"
            );
            // After ReLU and average pooling every feature is >= 0, and the two images differ.
            assert!(feat.min().double_value(&[]) >= 0.0);
            assert!(
                (feat.get(0) - feat.get(1))
                    .abs()
                    .sum(Kind::Double)
                    .double_value(&[])
                    > 0.0
            );
        }
        assert!(matches!(
            f.features(&Tensor::zeros([2, 2, 8, 8], (Kind::Float, Device::Cpu)), 2),
            Err(InceptionError::Input(_))
        ));
    }

    #[test]
    fn load_round_trips_and_names_the_file_when_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere.safetensors");
        let e = InceptionFeatures::load(&missing, Device::Cpu).unwrap_err();
        assert!(matches!(e, InceptionError::NotInstalled { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("nowhere.safetensors") && msg.contains("cargo xtask fetch-weights"),
            "{msg}"
        );

        tch::manual_seed(2);
        let src = InceptionFeatures::untrained(Device::Cpu);
        let mut vars: Vec<(String, Tensor)> = src.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));

        // A file with everything but the first key (and an extra counter, ignored).
        let partial = dir.path().join("partial.safetensors");
        let mut some: Vec<(String, Tensor)> = vars[1..4]
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        some.push((
            "Conv2d_1a_3x3.bn.num_batches_tracked".into(),
            Tensor::from(0i64),
        ));
        Tensor::write_safetensors(&some, &partial).unwrap();
        let e = InceptionFeatures::load(&partial, Device::Cpu).unwrap_err();
        match &e {
            InceptionError::MissingTensor { name, .. } => assert_eq!(name, &vars[0].0),
            other => panic!("expected MissingTensor, got {other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("partial.safetensors")
                && msg.contains(&vars[0].0)
                && msg.contains("cargo xtask fetch-weights"),
            "{msg}"
        );

        // Wrong shape of the first key.
        let wrong = dir.path().join("wrong.safetensors");
        let bad = vec![(
            vars[0].0.clone(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        )];
        Tensor::write_safetensors(&bad, &wrong).unwrap();
        let e = InceptionFeatures::load(&wrong, Device::Cpu).unwrap_err();
        assert!(matches!(e, InceptionError::Shape { .. }), "{e}");

        // Not a safetensors file.
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a safetensors file").unwrap();
        let e = InceptionFeatures::load(&junk, Device::Cpu).unwrap_err();
        assert!(matches!(e, InceptionError::Read { .. }), "{e}");

        // The full file loads and gives the source network's features.
        let full = dir.path().join("full.safetensors");
        Tensor::write_safetensors(&vars, &full).unwrap();
        let loaded = InceptionFeatures::load(&full, Device::Cpu).unwrap();
        let x = Tensor::rand([1, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let (a, b) = (
            src.features(&x, 1).unwrap(),
            loaded.features(&x, 1).unwrap(),
        );
        assert!(a.equal(&b));
    }

    #[test]
    fn weights_dir_prefers_the_env_var_then_home_cache() {
        let d = weights_dir_from(Some("/w".into()), Some("/users/u".into()));
        assert_eq!(d, Some(PathBuf::from("/w")));
        let d = weights_dir_from(Some("".into()), Some("/users/u".into()));
        assert_eq!(d, Some(PathBuf::from("/users/u/.cache/ca/weights")));
        assert_eq!(weights_dir_from(None, None), None);
    }
}
