// A CUDA runtime that runs no kernel: linked into a JIT module in place of libcudart, it records what
// the module's host code asks for (the dynamic shared memory it opts into, each launch's grid, block,
// dynamic shared memory and cluster shape) and answers device queries as an RTX PRO 6000 Blackwell
// (compute capability 12.0) would. The SM120 audit calls a module's entry points through it with
// tensors that only describe shapes, so the launch code SGLang ships is evaluated, not re-derived.
//
// Anything else the host code calls is an undefined symbol at link time: the audit then says which
// runtime call the launch code needs, instead of guessing its answer.

#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>

namespace {

// Constructed on first use: the module's own static initialisers register its kernels, possibly
// before this file's globals would be constructed.
std::mutex& g_lock() {
  static std::mutex m;
  return m;
}
std::map<const void*, std::string>& g_names() {  // host stub -> mangled device name
  static std::map<const void*, std::string> m;
  return m;
}
std::string& g_records() {  // JSON lines
  static std::string s;
  return s;
}

// RTX PRO 6000 Blackwell Workstation Edition: 188 SMs, CC 12.0, 99 KB opt-in shared memory per block
int device_attribute(cudaDeviceAttr attr, bool* known) {
  *known = true;
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: return 12;
    case cudaDevAttrComputeCapabilityMinor: return 0;
    case cudaDevAttrMultiProcessorCount: return 188;
    case cudaDevAttrMaxSharedMemoryPerBlock: return 49152;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: return 101376;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: return 102400;
    case cudaDevAttrMaxThreadsPerBlock: return 1024;
    case cudaDevAttrMaxThreadsPerMultiProcessor: return 1536;
    case cudaDevAttrMaxRegistersPerBlock: return 65536;
    case cudaDevAttrMaxRegistersPerMultiprocessor: return 65536;
    case cudaDevAttrWarpSize: return 32;
    case cudaDevAttrL2CacheSize: return 128 * 1024 * 1024;
    case cudaDevAttrMaxGridDimX: return 2147483647;
    case cudaDevAttrMaxGridDimY: return 65535;
    case cudaDevAttrMaxGridDimZ: return 65535;
    case cudaDevAttrMaxBlockDimX: return 1024;
    case cudaDevAttrMaxBlockDimY: return 1024;
    case cudaDevAttrMaxBlockDimZ: return 64;
    default: *known = false; return 0;
  }
}

std::string name_of(const void* func) {
  auto it = g_names().find(func);
  return it == g_names().end() ? std::string("?") : it->second;
}

void record(const std::string& line) {
  std::lock_guard<std::mutex> guard(g_lock());
  g_records() += line;
  g_records() += '\n';
}

std::string dims(dim3 d) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "[%u, %u, %u]", d.x, d.y, d.z);
  return buf;
}

void record_launch(const void* func, dim3 grid, dim3 block, size_t smem, const cudaLaunchConfig_t* config) {
  std::string cluster = "null", pdl = "false";
  if (config != nullptr) {
    for (unsigned i = 0; i < config->numAttrs; ++i) {
      const auto& a = config->attrs[i];
      if (a.id == cudaLaunchAttributeClusterDimension) {
        cluster = dims(dim3(a.val.clusterDim.x, a.val.clusterDim.y, a.val.clusterDim.z));
      } else if (a.id == cudaLaunchAttributeProgrammaticStreamSerialization) {
        pdl = a.val.programmaticStreamSerializationAllowed ? "true" : "false";
      }
    }
  }
  record("{\"event\": \"launch\", \"kernel\": \"" + name_of(func) + "\", \"grid\": " + dims(grid) +
         ", \"block\": " + dims(block) + ", \"dynamic_shared_bytes\": " + std::to_string(smem) +
         ", \"cluster\": " + cluster + ", \"pdl\": " + pdl + "}");
}

thread_local dim3 t_grid, t_block;
thread_local size_t t_smem = 0;

}  // namespace

extern "C" {

// what the audit reads back, and clears
const char* sm120_harness_launch_records() {
  static std::string out;
  std::lock_guard<std::mutex> guard(g_lock());
  out.swap(g_records());
  g_records().clear();
  return out.c_str();
}

void** __cudaRegisterFatBinary(void* fatCubin) {
  static void* handle = nullptr;
  (void)fatCubin;
  return &handle;
}
void __cudaRegisterFatBinaryEnd(void**) {}
void __cudaUnregisterFatBinary(void**) {}
void __cudaRegisterFunction(void**, const char* hostFun, char*, const char* deviceName, int, uint3*, uint3*, dim3*,
                            dim3*, int*) {
  std::lock_guard<std::mutex> guard(g_lock());
  g_names()[hostFun] = deviceName;
}
void __cudaRegisterVar(void**, char*, char*, const char*, int, size_t, int, int) {}

cudaError_t __cudaGetKernel(cudaKernel_t* kernel, const void* func) {
  *kernel = reinterpret_cast<cudaKernel_t>(const_cast<void*>(func));
  return cudaSuccess;
}
unsigned __cudaPushCallConfiguration(dim3 grid, dim3 block, size_t smem, struct CUstream_st*) {
  t_grid = grid, t_block = block, t_smem = smem;
  return 0;
}
cudaError_t __cudaPopCallConfiguration(dim3* grid, dim3* block, size_t* smem, void* stream) {
  *grid = t_grid, *block = t_block, *smem = t_smem;
  *static_cast<cudaStream_t*>(stream) = nullptr;
  return cudaSuccess;
}
cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 grid, dim3 block, void**, size_t smem, cudaStream_t) {
  record_launch(reinterpret_cast<const void*>(kernel), grid, block, smem, nullptr);
  return cudaSuccess;
}
cudaError_t __cudaLaunchKernel_ptsz(cudaKernel_t kernel, dim3 grid, dim3 block, void** args, size_t smem,
                                    cudaStream_t stream) {
  return __cudaLaunchKernel(kernel, grid, block, args, smem, stream);
}
cudaError_t cudaLaunchKernel(const void* func, dim3 grid, dim3 block, void**, size_t smem, cudaStream_t) {
  record_launch(func, grid, block, smem, nullptr);
  return cudaSuccess;
}
cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t* config, const void* func, void**) {
  record_launch(func, config->gridDim, config->blockDim, config->dynamicSmemBytes, config);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    record("{\"event\": \"max_dynamic_shared\", \"kernel\": \"" + name_of(func) +
           "\", \"bytes\": " + std::to_string(value) + "}");
  } else if (attr == cudaFuncAttributeNonPortableClusterSizeAllowed && value) {
    record("{\"event\": \"non_portable_cluster\", \"kernel\": \"" + name_of(func) + "\"}");
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  bool known = false;
  *value = device_attribute(attr, &known);
  if (!known) {
    record("{\"event\": \"unanswered\", \"call\": \"cudaDeviceGetAttribute\", \"attribute\": " +
           std::to_string(static_cast<int>(attr)) + "}");
    return cudaErrorNotSupported;
  }
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaErrorNotSupported ? "not answered by the SM120 audit's launch recorder" : "cuda error";
}
const char* cudaGetErrorName(cudaError_t) { return "cudaError"; }

}  // extern "C"
