// Native activations that tch 0.24 does not bind with their arguments.
//
// tch binds `leaky_relu` only with PyTorch's default slope 0.01. Writing leaky_relu(x, 0.2) as a
// combination of other tch ops costs 4 elementwise kernels forward and as many backward (about
// 2x the native op, fwd + bwd, on this project's 2-core CPU); this file calls ATen's own
// `leaky_relu`, one kernel each way, recorded by autograd like any other op.
//
// Calling convention: tensors cross the boundary as `at::Tensor*` (tch's `C_tensor`). Each
// function returns NULL on success, or an error message allocated with malloc that the caller
// frees with `ca_free_error`.

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {
char* error_message(const char* what) {
  size_t n = std::strlen(what) + 1;
  char* out = static_cast<char*>(std::malloc(n));
  if (out != nullptr) std::memcpy(out, what, n);
  return out;
}
}  // namespace

extern "C" {

// *out = leaky_relu(*x, slope).
char* ca_leaky_relu(const at::Tensor* x, double slope, at::Tensor** out) {
  try {
    *out = new at::Tensor(at::leaky_relu(*x, slope));
    return nullptr;
  } catch (const c10::Error& e) {
    return error_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_message(e.what());
  }
}

// *out = leaky_relu(*x + bias (broadcast along axis 1), slope) * gain: StyleGAN2's fused bias
// + activation, three kernels instead of six.
char* ca_bias_leaky_relu(const at::Tensor* x, const at::Tensor* bias, double slope,
                         double gain, at::Tensor** out) {
  try {
    TORCH_CHECK(x->dim() >= 2 && bias->dim() == 1 && bias->size(0) == x->size(1),
                "bias_leaky_relu: bias of shape ", bias->sizes(), " does not match axis 1 of ",
                x->sizes());
    std::vector<int64_t> shape(x->dim(), 1);
    shape[1] = bias->size(0);
    at::Tensor y = at::leaky_relu(*x + bias->view(shape), slope);
    *out = new at::Tensor(y * gain);
    return nullptr;
  } catch (const c10::Error& e) {
    return error_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_message(e.what());
  }
}

void ca_free_error(char* err) { std::free(err); }

}  // extern "C"
