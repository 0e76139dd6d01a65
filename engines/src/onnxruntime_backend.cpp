// ONNX Runtime backend. libonnxruntime is opened at run time (dlopen) and its API table fetched with
// OrtGetApiBase()->GetApi(ORT_API_VERSION), so one binary works with any ONNX Runtime at least as new
// as the headers it was compiled with; the C++ wrapper is used with ORT_API_MANUAL_INIT.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "backend.hpp"
#include "common.hpp"

#ifndef EDGESEG_DEFAULT_ONNXRUNTIME_LIBRARY
#define EDGESEG_DEFAULT_ONNXRUNTIME_LIBRARY ""
#endif

namespace edgeseg {
namespace detail {

namespace {

static_assert(sizeof(bool) == 1, "the mask buffer is bound as an ONNX bool tensor");

bool file_exists(const std::string& path) { return !path.empty() && ::access(path.c_str(), R_OK) == 0; }

std::string library_path(const edgeseg_options& options) {
  if (options.onnxruntime_library != nullptr && options.onnxruntime_library[0] != '\0') return options.onnxruntime_library;
  const char* env = std::getenv("EDGESEG_ONNXRUNTIME_LIBRARY");
  if (env != nullptr && env[0] != '\0') return env;
  if (file_exists(EDGESEG_DEFAULT_ONNXRUNTIME_LIBRARY)) return EDGESEG_DEFAULT_ONNXRUNTIME_LIBRARY;
  return "libonnxruntime.so";
}

// The process's ONNX Runtime: loaded once and never unloaded (ORT does not support unloading).
struct Loaded {
  std::mutex mutex;
  std::string path;
  const OrtApi* api = nullptr;
  std::string version;
};

Loaded& loaded() {
  static Loaded* instance = new Loaded();  // intentionally leaked: ORT may be used during static destruction
  return *instance;
}

// Returns the library's version string; afterwards the Ort:: C++ wrapper may be used.
std::string load_api(const std::string& path) {
  Loaded& state = loaded();
  std::lock_guard<std::mutex> lock(state.mutex);
  if (state.api != nullptr) {
    if (path != state.path) {
      fail(EDGESEG_ERROR_BACKEND, "ONNX Runtime is already loaded from " + state.path + " in this process; cannot also load " + path);
    }
    return state.version;
  }
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    fail(EDGESEG_ERROR_BACKEND, "cannot load ONNX Runtime library '" + path + "' (" + (why ? why : "unknown error") +
                                    "); set edgeseg_options.onnxruntime_library or EDGESEG_ONNXRUNTIME_LIBRARY");
  }
  using GetApiBase = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetApiBase>(::dlsym(handle, "OrtGetApiBase"));
  if (get_base == nullptr) fail(EDGESEG_ERROR_BACKEND, path + " is not an ONNX Runtime library (no OrtGetApiBase)");
  const OrtApiBase* base = get_base();
  std::string have = base->GetVersionString();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    fail(EDGESEG_ERROR_BACKEND, "ONNX Runtime " + have + " at " + path + " does not provide API version " +
                                    std::to_string(ORT_API_VERSION) + " (this edgeseg was built against ONNX Runtime 1." +
                                    std::to_string(ORT_API_VERSION) + " headers); use a newer ONNX Runtime");
  }
  Ort::InitApi(api);
  state.path = path;
  state.api = api;
  state.version = have;
  return have;
}

class OnnxRuntimeBackend final : public Backend {
 public:
  OnnxRuntimeBackend(const Bundle& bundle, const edgeseg_options& options)
      // version_ is the first member: if loading throws, no Ort:: member exists yet (their destructors
      // need the API table).
      : version_(load_api(library_path(options))), context_length_(bundle.context_length), dim_(bundle.output_dim) {
    try {
      env_ = Ort::Env(ORT_LOGGING_LEVEL_ERROR, "edgeseg");
      Ort::SessionOptions session_options;
      if (options.intra_op_threads > 0) {
        session_options.SetIntraOpNumThreads(options.intra_op_threads);
        session_options.SetInterOpNumThreads(1);
      }
      session_ = Ort::Session(env_, bundle.model_path.c_str(), session_options);
      memory_info_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      check_names(bundle);
    } catch (const Ort::Exception& e) {
      fail(EDGESEG_ERROR_BACKEND, "ONNX Runtime " + version_ + " cannot load " + bundle.model_path + ": " + first_line(e.what()));
    }
    input_name_ = bundle.input_name;
    output_names_ = {bundle.memory_name, bundle.mask_name};
  }

  void run(const int64_t* ids, int64_t batch, float* memory, uint8_t* mask) override {
    const int64_t in_shape[2] = {batch, context_length_};
    const int64_t mem_shape[3] = {batch, context_length_, dim_};
    const size_t tokens = static_cast<size_t>(batch * context_length_);
    try {
      Ort::Value input = Ort::Value::CreateTensor<int64_t>(memory_info_, const_cast<int64_t*>(ids), tokens, in_shape, 2);
      Ort::Value outputs[2] = {
          Ort::Value::CreateTensor<float>(memory_info_, memory, tokens * static_cast<size_t>(dim_), mem_shape, 3),
          Ort::Value::CreateTensor<bool>(memory_info_, reinterpret_cast<bool*>(mask), tokens, in_shape, 2)};
      const char* in_names[1] = {input_name_.c_str()};
      const char* out_names[2] = {output_names_[0].c_str(), output_names_[1].c_str()};
      session_.Run(Ort::RunOptions{nullptr}, in_names, &input, 1, out_names, outputs, 2);
    } catch (const Ort::Exception& e) {
      fail(EDGESEG_ERROR_BACKEND, "ONNX Runtime failed to run the model: " + first_line(e.what()));
    }
  }

 private:
  static std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

  void check_names(const Bundle& bundle) {
    Ort::AllocatorWithDefaultOptions allocator;
    if (session_.GetInputCount() != 1 || session_.GetOutputCount() != 2) {
      fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + " does not have one input and two outputs");
    }
    std::string input = session_.GetInputNameAllocated(0, allocator).get();
    auto type = session_.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetElementType();
    if (input != bundle.input_name || type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + ": input is '" + input + "', the manifest expects int64 '" + bundle.input_name + "'");
    }
    for (size_t i = 0; i < 2; ++i) {
      std::string name = session_.GetOutputNameAllocated(i, allocator).get();
      if (name != bundle.memory_name && name != bundle.mask_name) {
        fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + " has output '" + name + "' that the manifest does not name");
      }
      auto t = session_.GetOutputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
      auto want = name == bundle.memory_name ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
      if (t != want) fail(EDGESEG_ERROR_BUNDLE, bundle.model_path + ": output '" + name + "' has an unexpected element type");
    }
  }

  std::string version_;
  int64_t context_length_, dim_;
  Ort::Env env_{nullptr};
  Ort::Session session_{nullptr};
  Ort::MemoryInfo memory_info_{nullptr};
  std::string input_name_;
  std::vector<std::string> output_names_;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const Bundle& bundle, const edgeseg_options& options) {
  return std::make_unique<OnnxRuntimeBackend>(bundle, options);
}

}  // namespace detail
}  // namespace edgeseg
