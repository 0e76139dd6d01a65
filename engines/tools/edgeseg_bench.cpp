// edgeseg-bench: timings for benchmarks/cpp_bench.py, printed as one JSON object on stdout.
//   edgeseg-bench BUNDLE PROMPTS_FILE [--passes N] [--latency-runs N] [--threads N]
// Tokenizer: prompts/s over all prompts (first pass = cold BPE cache, then warm passes); encode:
// per-call latency at batch 1 over the first prompts, after warm-up.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "edgeseg/edgeseg.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int die(const std::string& message) {
  std::fprintf(stderr, "edgeseg-bench: error: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return die("usage: edgeseg-bench BUNDLE PROMPTS_FILE [--passes N] [--latency-runs N] [--threads N]");
  int passes = 5, latency_runs = 200, threads = 0;
  for (int i = 3; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    int value = std::atoi(argv[i + 1]);
    if (flag == "--passes") passes = std::max(1, value);
    else if (flag == "--latency-runs") latency_runs = std::max(1, value);
    else if (flag == "--threads") threads = std::max(0, value);
    else return die("unknown option " + flag);
  }
  std::vector<std::string> prompts;
  {
    std::ifstream in(argv[2]);
    if (!in) return die(std::string("cannot read ") + argv[2]);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) prompts.push_back(line);
    }
  }
  if (prompts.empty()) return die("no prompts");
  std::vector<const char*> ptrs;
  for (const auto& p : prompts) ptrs.push_back(p.c_str());

  edgeseg_options options;
  edgeseg_options_init(&options);
  options.intra_op_threads = threads;
  edgeseg_runtime* runtime = nullptr;
  double t0 = now_s();
  if (edgeseg_create(argv[1], &options, &runtime) != EDGESEG_OK) return die(edgeseg_last_error());
  const double load_s = now_s() - t0;
  const auto length = static_cast<size_t>(edgeseg_context_length(runtime));
  const auto dim = static_cast<size_t>(edgeseg_output_dim(runtime));

  std::vector<int64_t> ids(prompts.size() * length);
  std::vector<double> pass_s;
  for (int p = 0; p < passes; ++p) {
    double start = now_s();
    if (edgeseg_tokenize(runtime, ptrs.data(), ptrs.size(), ids.data(), nullptr) != EDGESEG_OK) return die(edgeseg_last_error());
    pass_s.push_back(now_s() - start);
  }
  std::vector<double> warm(pass_s.begin() + (passes > 1 ? 1 : 0), pass_s.end());
  std::sort(warm.begin(), warm.end());
  const double warm_median = warm[warm.size() / 2];

  std::vector<float> memory(length * dim);
  std::vector<uint8_t> mask(length);
  std::vector<int64_t> one(length);
  std::vector<double> lat;
  const int warmup = 10;
  for (int i = 0; i < warmup + latency_runs; ++i) {
    const char* prompt = ptrs[static_cast<size_t>(i) % ptrs.size()];
    double start = now_s();
    if (edgeseg_encode(runtime, &prompt, 1, one.data(), mask.data(), memory.data()) != EDGESEG_OK) return die(edgeseg_last_error());
    if (i >= warmup) lat.push_back(now_s() - start);
  }
  std::sort(lat.begin(), lat.end());
  edgeseg_destroy(runtime);
  std::printf("{\"prompts\": %zu, \"load_s\": %.6f, \"tokenize_cold_s\": %.6f, \"tokenize_warm_s\": %.6f, "
              "\"encode_b1_median_ms\": %.6f, \"encode_b1_p90_ms\": %.6f, \"encode_runs\": %zu}\n",
              prompts.size(), load_s, pass_s[0], warm_median, lat[lat.size() / 2] * 1e3,
              lat[std::min(lat.size() - 1, lat.size() * 9 / 10)] * 1e3, lat.size());
  return 0;
}
