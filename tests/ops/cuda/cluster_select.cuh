// A planted JIT CUDA kernel for the SM120 audit: a row selection that, like top-k v2's small-batch
// path, runs one row per cluster of 8 blocks sharing distributed shared memory. SGLang compiles its
// cluster paths only for SM90/SM100 (topk_impl.cuh: SUPPORT_CLUSTER is SGL_CUDA_ARCH >= 900 && < 1100);
// this one has the guard dropped, so the cluster path is selected on SM120.
#include <sgl_kernel/tensor.h>
#include <sgl_kernel/utils.h>

#include <sgl_kernel/utils.cuh>

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>

#include <cstdint>

namespace sglang {

constexpr uint32_t kClusterSize = 8;
constexpr uint32_t kBlockSize = 1024;
constexpr uint32_t kSmemFloats = 8192;  // 32 KB of each row's chunk staged per block

__global__ void cluster_row_max_kernel(const float* scores, float* out, int64_t n) {
  __shared__ float s_chunk[kSmemFloats];
  const int64_t row = blockIdx.x;
  const int64_t chunk = n / kClusterSize;
  float best = -INFINITY;
  for (int64_t i = threadIdx.x; i < chunk && i < kSmemFloats; i += kBlockSize) {
    s_chunk[i] = scores[row * n + blockIdx.y * chunk + i];
    best = fmaxf(best, s_chunk[i]);
  }
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<int*>(out + row), __float_as_int(best));
}

struct ClusterSelect {
  static void run(const tvm::ffi::TensorView scores, const tvm::ffi::TensorView out) {
    using namespace host;
    auto B = SymbolicSize{"batch_size"};
    auto N = SymbolicSize{"num_scores"};
    auto device = SymbolicDevice{};
    device.set_options<kDLCUDA>();
    TensorMatcher({B, N}).with_dtype<float>().with_device(device).verify(scores);
    TensorMatcher({B}).with_dtype<float>().with_device(device).verify(out);
    LaunchKernel({static_cast<uint32_t>(B.unwrap()), kClusterSize}, kBlockSize, device.unwrap())
        .config({.cluster_dim = dim3{1, kClusterSize}})(
            cluster_row_max_kernel,
            static_cast<const float*>(scores.data_ptr()),
            static_cast<float*>(out.data_ptr()),
            N.unwrap());
  }
};

}  // namespace sglang
