//! ATen activations that tch 0.24 binds without their arguments, called through the C++ shim
//! `csrc/activations.cpp` (built by this crate's `build.rs` against torch-sys' libtorch).
//!
//! The only unsafe code of the workspace lives here: passing tch's tensor handles
//! (`at::Tensor*`) to the shim and wrapping the handle it returns. Both shim functions copy
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
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
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
