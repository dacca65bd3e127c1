// Autocast (automatic mixed precision) for any device type: tch 0.24 only switches CUDA
// autocast on and off, with its default dtype (fp16). These two functions enter and leave an
// autocast region for the CPU or CUDA with a chosen lower-precision dtype, the way PyTorch's
// `torch.autocast(device_type, dtype)` context manager does: save the previous state, enable,
// set the dtype, increment the nesting level; on exit decrement it, clear the cast cache when
// the outermost region closes, and restore the previous state.
//
// The state is thread-local (as in PyTorch): a region covers the ops its thread dispatches.

#include <ATen/autocast_mode.h>

extern "C" {

// device: 0 = CPU, 1 = CUDA. dtype: 0 = bfloat16, 1 = float16.
// Writes the previous state to *prev_enabled / *prev_dtype (pass them back to the exit call).
void ca_autocast_enter(int device, int dtype, int* prev_enabled, int* prev_dtype) {
  const at::DeviceType dt = device == 1 ? at::kCUDA : at::kCPU;
  *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
  *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
  at::autocast::set_autocast_enabled(dt, true);
  at::autocast::set_autocast_dtype(dt, dtype == 1 ? at::kHalf : at::kBFloat16);
  at::autocast::increment_nesting();
}

void ca_autocast_exit(int device, int prev_enabled, int prev_dtype) {
  const at::DeviceType dt = device == 1 ? at::kCUDA : at::kCPU;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
  at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(prev_dtype));
}

// 1 when autocast is on for the device (0 = CPU, 1 = CUDA).
int ca_autocast_is_enabled(int device) {
  return at::autocast::is_autocast_enabled(device == 1 ? at::kCUDA : at::kCPU) ? 1 : 0;
}

}  // extern "C"
