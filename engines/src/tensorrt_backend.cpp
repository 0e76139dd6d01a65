// TensorRT backend (compiled only when CMake finds TensorRT and CUDA: EDGESEG_WITH_TENSORRT).
//
// Deserializes the bundle's engine (`edgeseg build --target gpu|jetson`) and runs it on a CUDA stream.
// Before loading it checks what the manifest's "tensorrt" section says the engine was built with: the
// TensorRT version (unless the engine was built version-compatible) and the GPU's compute capability,
// so a foreign engine is a clear error instead of a crash inside TensorRT.
//
// NOTE: written against the TensorRT 10 C++ API (enqueueV3, named I/O tensors). It was not compiled or
// run in the environment where edgeseg's CI runs (no TensorRT there); see README "C++ runtime".
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "backend.hpp"
#include "common.hpp"

namespace edgeseg {
namespace detail {

namespace {

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kERROR && message != nullptr) last_error = message;
  }
  std::string last_error;
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    fail(EDGESEG_ERROR_BACKEND, std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

struct CudaFree {
  void operator()(void* p) const noexcept { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<void, CudaFree>;

DevicePtr device_alloc(size_t bytes) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cudaMalloc");
  return DevicePtr(p);
}

// "10.3.0.26" -> {10, 3, 0}
std::vector<int> version_numbers(const std::string& text) {
  std::vector<int> parts;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, '.') && parts.size() < 3) {
    try {
      parts.push_back(std::stoi(item));
    } catch (const std::exception&) {
      break;
    }
  }
  return parts;
}

size_t element_size(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kBOOL:
    case nvinfer1::DataType::kINT8:
    case nvinfer1::DataType::kUINT8: return 1;
    default: return 0;
  }
}

class TensorRTBackend final : public Backend {
 public:
  TensorRTBackend(const Bundle& bundle, const edgeseg_options& options)
      : length_(bundle.context_length), dim_(bundle.output_dim), input_name_(bundle.input_name),
        memory_name_(bundle.memory_name), mask_name_(bundle.mask_name) {
    const bool version_compatible = bundle.engine_version_compatible;
    max_batch_ = bundle.engine_max_batch;
    if (max_batch_ < 1) fail(EDGESEG_ERROR_BUNDLE, bundle.dir + ": engine.max_batch must be at least 1");

    // 1. The GPU: compute capability must be the one the engine was built for.
    const int device = options.device;
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    const std::string here_cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    const std::string built_cc = bundle.tensorrt_compute_capability;
    const std::string built_gpu = bundle.tensorrt_gpu_name.empty() ? "?" : bundle.tensorrt_gpu_name;
    if (built_cc.empty()) fail(EDGESEG_ERROR_BUNDLE, bundle.dir + ": manifest lacks tensorrt.gpu.compute_capability");
    if (built_cc != here_cc) {
      fail(EDGESEG_ERROR_BACKEND, "TensorRT engine " + bundle.model_path + " was built for " + built_gpu + " (sm " +
                                      built_cc + "); this GPU (" + prop.name + ") is sm " + here_cc +
                                      ": rebuild the engine on this device");
    }
    // 2. TensorRT version: engines are tied to the version that built them unless built version-compatible.
    const std::string built_version = bundle.tensorrt_version;
    const int lib = getInferLibVersion();  // major * 10000 + minor * 100 + patch (TensorRT 10)
    const std::vector<int> here = {lib / 10000, (lib / 100) % 100, lib % 100};
    const std::vector<int> built = version_numbers(built_version);
    const std::string here_text = std::to_string(here[0]) + "." + std::to_string(here[1]) + "." + std::to_string(here[2]);
    if (built.size() < 2) fail(EDGESEG_ERROR_BUNDLE, bundle.dir + ": manifest lacks tensorrt.version");
    const bool same = built[0] == here[0] && built[1] == here[1] && (built.size() < 3 || built[2] == here[2]);
    if (!same && !(version_compatible && built[0] == here[0])) {
      fail(EDGESEG_ERROR_BACKEND, "TensorRT engine " + bundle.model_path + " was built with TensorRT " + built_version +
                                      "; this runtime links TensorRT " + here_text +
                                      ": rebuild the engine here (or build it version-compatible)");
    }

    // 3. Deserialize.
    std::ifstream in(bundle.model_path, std::ios::binary);
    if (!in) fail(EDGESEG_ERROR_BUNDLE, "cannot read " + bundle.model_path);
    std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) fail(EDGESEG_ERROR_BACKEND, "TensorRT: createInferRuntime failed");
    if (version_compatible) runtime_->setEngineHostCodeAllowed(true);
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
      fail(EDGESEG_ERROR_BACKEND, "TensorRT " + here_text + " cannot deserialize " + bundle.model_path + ": " +
                                      (logger_.last_error.empty() ? "unknown error" : logger_.last_error));
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) fail(EDGESEG_ERROR_BACKEND, "TensorRT: createExecutionContext failed: " + logger_.last_error);

    input_type_ = engine_->getTensorDataType(input_name_.c_str());
    memory_type_ = engine_->getTensorDataType(memory_name_.c_str());
    mask_type_ = engine_->getTensorDataType(mask_name_.c_str());
    if (input_type_ != nvinfer1::DataType::kINT64 && input_type_ != nvinfer1::DataType::kINT32) {
      fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + ": input '" + input_name_ + "' is neither int64 nor int32");
    }
    if (memory_type_ != nvinfer1::DataType::kFLOAT) {
      fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + ": output '" + memory_name_ + "' is not float32");
    }
    if (element_size(mask_type_) == 0 || mask_type_ == nvinfer1::DataType::kHALF) {
      fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + ": output '" + mask_name_ + "' has an unsupported type");
    }

    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
    const size_t tokens = static_cast<size_t>(max_batch_ * length_);
    d_ids_ = device_alloc(tokens * element_size(input_type_));
    d_memory_ = device_alloc(tokens * static_cast<size_t>(dim_) * sizeof(float));
    d_mask_ = device_alloc(tokens * element_size(mask_type_));
    host_ids32_.resize(tokens);
    host_mask_.resize(tokens * element_size(mask_type_));
  }

  ~TensorRTBackend() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int64_t max_batch() const override { return max_batch_; }

  void run(const int64_t* ids, int64_t batch, float* memory, uint8_t* mask) override {
    if (batch < 1 || batch > max_batch_) {
      fail(EDGESEG_ERROR_INVALID_ARGUMENT, "batch " + std::to_string(batch) + " is outside the engine's profile (1.." +
                                               std::to_string(max_batch_) + ")");
    }
    const size_t tokens = static_cast<size_t>(batch * length_);
    if (!context_->setInputShape(input_name_.c_str(), nvinfer1::Dims2(batch, length_))) {
      fail(EDGESEG_ERROR_BACKEND, "TensorRT rejected input shape [" + std::to_string(batch) + ", " +
                                      std::to_string(length_) + "]: " + logger_.last_error);
    }
    if (input_type_ == nvinfer1::DataType::kINT64) {
      check_cuda(cudaMemcpyAsync(d_ids_.get(), ids, tokens * sizeof(int64_t), cudaMemcpyHostToDevice, stream_), "copy ids");
    } else {
      for (size_t i = 0; i < tokens; ++i) host_ids32_[i] = static_cast<int32_t>(ids[i]);
      check_cuda(cudaMemcpyAsync(d_ids_.get(), host_ids32_.data(), tokens * sizeof(int32_t), cudaMemcpyHostToDevice, stream_),
                 "copy ids");
    }
    bool ok = context_->setTensorAddress(input_name_.c_str(), d_ids_.get()) &&
              context_->setTensorAddress(memory_name_.c_str(), d_memory_.get()) &&
              context_->setTensorAddress(mask_name_.c_str(), d_mask_.get());
    if (!ok || !context_->enqueueV3(stream_)) {
      fail(EDGESEG_ERROR_BACKEND, "TensorRT failed to run the engine: " + logger_.last_error);
    }
    const size_t mask_bytes = tokens * element_size(mask_type_);
    check_cuda(cudaMemcpyAsync(memory, d_memory_.get(), tokens * static_cast<size_t>(dim_) * sizeof(float),
                               cudaMemcpyDeviceToHost, stream_), "copy memory");
    check_cuda(cudaMemcpyAsync(host_mask_.data(), d_mask_.get(), mask_bytes, cudaMemcpyDeviceToHost, stream_), "copy mask");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    const size_t width = element_size(mask_type_);
    for (size_t i = 0; i < tokens; ++i) {
      uint8_t any = 0;
      for (size_t b = 0; b < width; ++b) any |= host_mask_[i * width + b];
      mask[i] = any != 0 ? 1 : 0;
    }
  }

 private:
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  DevicePtr d_ids_, d_memory_, d_mask_;
  std::vector<int32_t> host_ids32_;
  std::vector<uint8_t> host_mask_;
  nvinfer1::DataType input_type_{}, memory_type_{}, mask_type_{};
  int64_t length_, dim_, max_batch_ = 1;
  std::string input_name_, memory_name_, mask_name_;
};

}  // namespace

std::unique_ptr<Backend> make_tensorrt_backend(const Bundle& bundle, const edgeseg_options& options) {
  return std::make_unique<TensorRTBackend>(bundle, options);
}

}  // namespace detail
}  // namespace edgeseg
