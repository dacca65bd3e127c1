//! `ca doctor`: what libtorch this binary uses and what it can run on.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

/// Options of `ca doctor`.
#[derive(clap::Args)]
pub struct Doctor {
    /// Seconds of matmul per device for the throughput check.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

impl Doctor {
    pub fn run(&self) -> anyhow::Result<()> {
        println!("ca {}", env!("CARGO_PKG_VERSION"));
        println!(
            "libtorch {} (linked from {})",
            env!("CA_LIBTORCH_VERSION"),
            env!("CA_LIBTORCH_LIB")
        );
        println!(
            "threads: {} intra-op, {} inter-op (set with OMP_NUM_THREADS or --threads where offered)",
            tch::get_num_threads(),
            tch::get_num_interop_threads()
        );
        println!(
            "built with: CUDA {}, MKL {}, OpenMP {}, MKL-DNN {}",
            yes(tch::utils::has_cuda()),
            yes(tch::utils::has_mkl()),
            yes(tch::utils::has_openmp()),
            yes(tch::utils::has_mkldnn())
        );
        let cuda = tch::Cuda::is_available();
        let n = if cuda { tch::Cuda::device_count() } else { 0 };
        println!(
            "CUDA available: {} ({} device{})",
            yes(cuda),
            n,
            if n == 1 { "" } else { "s" }
        );
        if cuda {
            println!(
                "cuDNN available: {} (version {})",
                yes(tch::Cuda::cudnn_is_available()),
                tch::utils::version_cudnn()
            );
        }
        let mut devices = vec![Device::Cpu];
        devices.extend((0..n).map(|i| Device::Cuda(i as usize)));
        for device in devices {
            let (gflops, err) = matmul_check(device, Duration::from_secs_f64(self.seconds))?;
            println!(
                "{:<8} matmul 512x512 f32: {:>8.1} GFLOP/s, max |AB - reference| = {:.1e} {}",
                format!("{device:?}"),
                gflops,
                err,
                if err < 1e-3 { "ok" } else { "WRONG" }
            );
            if err >= 1e-3 {
                anyhow::bail!("matmul on {device:?} gave wrong results (error {err:.3e})");
            }
        }
        Ok(())
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Multiply two 512x512 matrices repeatedly for about `budget`; check one product against a
/// float64 CPU reference. Returns (GFLOP/s, max abs error).
fn matmul_check(device: Device, budget: Duration) -> anyhow::Result<(f64, f64)> {
    let n = 512i64;
    let a = Tensor::f_rand([n, n], (Kind::Float, device))?;
    let b = Tensor::f_rand([n, n], (Kind::Float, device))?;
    let reference = a
        .to_kind(Kind::Double)
        .to(Device::Cpu)
        .matmul(&b.to_kind(Kind::Double).to(Device::Cpu));
    let first = a.matmul(&b).to(Device::Cpu).to_kind(Kind::Double);
    let err = (first - reference).abs().max().double_value(&[]);
    let start = Instant::now();
    let mut iters = 0u64;
    while start.elapsed() < budget {
        let c = a.matmul(&b);
        if device.is_cuda() {
            let _ = c.sum(Kind::Float).double_value(&[]);
        }
        iters += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let gflops = 2.0 * (n as f64).powi(3) * iters as f64 / secs / 1e9;
    Ok((gflops, err))
}
