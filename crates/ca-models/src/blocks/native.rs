//! ATen functions that tch 0.24 binds without the arguments we need, called through the C++
//! shim in `csrc/` (built by this crate's `build.rs` against torch-sys' libtorch):
//!
//! * `leaky_relu` with a slope (`csrc/activations.cpp`);
//! * autocast regions for the CPU as well as CUDA, with bfloat16 (`csrc/autocast.cpp`; tch's
//!   `autocast` only covers CUDA with float16).
//!
//! The only unsafe code of the workspace lives here: passing tch's tensor handles
//! (`at::Tensor*`) to the shim and wrapping the handle it returns. The tensor functions copy
//! nothing but the handle, catch every C++ exception and return it as a message.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char};

use tch::Tensor;
use torch_sys::C_tensor;

unsafe extern "C" {
    fn ca_leaky_relu(x: *const C_tensor, slope: f64, out: *mut *mut C_tensor) -> *mut c_char;
    fn ca_bias_leaky_relu(
        x: *const C_tensor,
        bias: *const C_tensor,
        slope: f64,
        gain: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn ca_free_error(err: *mut c_char);
    fn ca_autocast_enter(device: i32, dtype: i32, prev_enabled: *mut i32, prev_dtype: *mut i32);
    fn ca_autocast_exit(device: i32, prev_enabled: i32, prev_dtype: i32);
    fn ca_autocast_is_enabled(device: i32) -> i32;
}

/// Turns the shim's return value into a `Result`, freeing the message.
///
/// # Safety
/// `err` is null or an error message from the shim (freed here with `ca_free_error`); on
/// success `out` is the handle the shim allocated.
unsafe fn take_result(err: *mut c_char, out: *mut C_tensor) -> Result<Tensor, tch::TchError> {
    if err.is_null() {
        // SAFETY: on success the shim stored a fresh `new at::Tensor`, owned by the caller; tch's
        // `Tensor` frees it on drop.
        Ok(unsafe { Tensor::from_ptr(out) })
    } else {
        // SAFETY: a NUL-terminated string from the shim (see above), read once and freed once.
        let msg = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { ca_free_error(err) };
        Err(tch::TchError::Torch(msg))
    }
}

/// ATen's `leaky_relu(x, slope)`, recorded by autograd.
pub fn f_leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor, tch::TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `x` is a live tensor handle for the duration of the call; `out` is written only on
    // success.
    unsafe {
        let err = ca_leaky_relu(x.as_ptr(), slope, &mut out);
        take_result(err, out)
    }
}

/// `leaky_relu(x + bias, slope) * gain`, `bias` of shape `[C]` broadcast along axis 1.
pub fn f_bias_leaky_relu(
    x: &Tensor,
    bias: &Tensor,
    slope: f64,
    gain: f64,
) -> Result<Tensor, tch::TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as in `f_leaky_relu`.
    unsafe {
        let err = ca_bias_leaky_relu(x.as_ptr(), bias.as_ptr(), slope, gain, &mut out);
        take_result(err, out)
    }
}

/// The lower-precision type of an autocast region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDtype {
    /// bfloat16: fp32's exponent range, so no loss scaling is needed.
    BFloat16,
    /// float16 (CUDA; needs loss scaling against underflowing gradients).
    Float16,
}

/// An open autocast region on this thread for one device type; leaving it (drop) restores the
/// previous state. Ops dispatched meanwhile on that device type run in the lower precision
/// where PyTorch's autocast lists allow it (convolutions, matrix products) and in fp32 where
/// they need it (reductions, losses).
///
/// ATen's autocast state is thread-local, so the guard is `!Send`: it must close on the thread
/// that opened it.
#[derive(Debug)]
#[must_use = "the region closes when the guard is dropped"]
pub struct AutocastGuard {
    device: i32,
    prev_enabled: i32,
    prev_dtype: i32,
    _thread_bound: std::marker::PhantomData<*const ()>,
}

/// The shim's device-type code: 0 = CPU, 1 = CUDA (any index); `None` for other devices.
fn device_code(device: tch::Device) -> Option<i32> {
    match device {
        tch::Device::Cpu => Some(0),
        tch::Device::Cuda(_) => Some(1),
        _ => None,
    }
}

impl AutocastGuard {
    /// Open a region for `device`'s type (any CUDA index counts as CUDA; MPS/Vulkan are not
    /// supported and open nothing).
    pub fn enter(device: tch::Device, dtype: AutocastDtype) -> Option<AutocastGuard> {
        let device = device_code(device)?;
        let dtype = match dtype {
            AutocastDtype::BFloat16 => 0,
            AutocastDtype::Float16 => 1,
        };
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain integers in and out; the shim only touches ATen's thread-local state.
        unsafe { ca_autocast_enter(device, dtype, &mut prev_enabled, &mut prev_dtype) };
        Some(AutocastGuard {
            device,
            prev_enabled,
            prev_dtype,
            _thread_bound: std::marker::PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: restores the state saved by `enter`, on the same thread (the guard is !Send).
        unsafe { ca_autocast_exit(self.device, self.prev_enabled, self.prev_dtype) };
    }
}

/// Whether an autocast region is open on this thread for `device`'s type.
pub fn autocast_enabled(device: tch::Device) -> bool {
    let Some(d) = device_code(device) else {
        return false;
    };
    // SAFETY: reads ATen's thread-local state.
    unsafe { ca_autocast_is_enabled(d) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn cpu_autocast_runs_matmul_in_bf16_and_restores_the_state() {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(Device::Cpu));
        {
            let _g = AutocastGuard::enter(Device::Cpu, AutocastDtype::BFloat16).unwrap();
            assert!(autocast_enabled(Device::Cpu));
            assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
            // fp32-list ops stay fp32.
            assert_eq!(a.softmax(-1, Kind::Float).kind(), Kind::Float);
            {
                let _inner = AutocastGuard::enter(Device::Cpu, AutocastDtype::BFloat16).unwrap();
            }
            // Closing a nested region keeps the outer one open.
            assert!(autocast_enabled(Device::Cpu));
        }
        assert!(!autocast_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }

    #[test]
    fn gradients_flow_back_to_fp32_leaves_through_a_bf16_region() {
        let w = Tensor::ones([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::ones([4, 3], (Kind::Float, Device::Cpu));
        let y = {
            let _g = AutocastGuard::enter(Device::Cpu, AutocastDtype::BFloat16).unwrap();
            x.matmul(&w).sum(Kind::Float)
        };
        y.backward();
        let g = w.grad();
        assert_eq!(g.kind(), Kind::Float);
        // d(sum(x w))/dw = x^T 1 = 4 everywhere (exact in bf16).
        assert_eq!(
            Vec::<f32>::try_from(g.flatten(0, -1)).unwrap(),
            vec![4.0; 6]
        );
    }
}
