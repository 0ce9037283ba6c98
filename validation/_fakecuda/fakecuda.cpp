// Minimal CUDA stand-ins that let a CPU-only PyTorch build run autograd on fake "cuda"
// tensors (FakeTensorMode). Nothing here touches a GPU: no memory is ever allocated on it.
//
// 1. c10's own FakeGuardImpl<CUDA> becomes the CUDA device-guard implementation, so the
//    autograd engine can set/restore a "current cuda device" (index 0 of 1 device).
// 2. A CUDAHooksInterface whose hasCUDA() is true and init() does nothing, so code paths
//    that ask "is CUDA available / initialised" (autograd engine device threads, autocast,
//    optimizers) get a yes instead of "Cannot initialize CUDA without ATen_cuda library".
//
// Loaded with ctypes (RTLD_GLOBAL) *before* `import torch`: at::detail::getCUDAHooks()
// creates the hooks object once, on first use, from CUDAHooksRegistry.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

namespace at {
namespace vramcalc_fake {

struct FakeCUDAHooks final : public at::CUDAHooksInterface {
  explicit FakeCUDAHooks(at::CUDAHooksArgs) {}
  void init() const override {}
  bool hasCUDA() const override { return true; }
  bool isBuilt() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex current_device() const override { return 0; }
};

}  // namespace vramcalc_fake
}  // namespace at

namespace at {
C10_REGISTER_CLASS(CUDAHooksRegistry, CUDAHooks, at::vramcalc_fake::FakeCUDAHooks)
}

C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::FakeGuardImpl<c10::DeviceType::CUDA>)

extern "C" int vramcalc_fakecuda_loaded() { return 1; }
