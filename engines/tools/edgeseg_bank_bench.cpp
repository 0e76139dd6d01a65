// edgeseg-bank-bench: prompt-bank timings and memory for edgeseg/bench/bank.py, one JSON object on stdout.
//
//   edgeseg-bank-bench latency BUNDLE PROMPTS --bank BANK [--encoder] [--runs N] [--encoder-runs N] [--threads N]
//     per-call latency (median, p90; microseconds) of edgeseg_encode at batch 1 and 8 into caller buffers:
//     bank hits by exact text (the prompts as given), bank hits by token ids (each prompt + " ", which
//     tokenizes the same but is not stored as text) and, with --encoder, the bundle's model without the bank.
//   edgeseg-bank-bench serve BUNDLE PROMPTS [--bank BANK] [--batch N] [--threads N]
//     encodes every prompt once, in batches into one reused buffer, and reports the process's peak RSS.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "edgeseg/edgeseg.h"

namespace {

struct Args {
  std::string mode, bundle, prompts, bank;
  bool encoder = false;
  int runs = 2000, encoder_runs = 50, threads = 0, batch = 8;
};

struct Stats {
  double median_us = 0, p90_us = 0;
};

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "edgeseg-bank-bench: error: %s\n", message.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  if (argc < 4) die("usage: edgeseg-bank-bench latency|serve BUNDLE PROMPTS [--bank BANK] [options]");
  Args a{argv[1], argv[2], argv[3]};
  for (int i = 4; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--encoder") {
      a.encoder = true;
      continue;
    }
    if (i + 1 >= argc) die(flag + " needs a value");
    std::string value = argv[++i];
    if (flag == "--bank") a.bank = value;
    else if (flag == "--runs") a.runs = std::max(1, std::atoi(value.c_str()));
    else if (flag == "--encoder-runs") a.encoder_runs = std::max(1, std::atoi(value.c_str()));
    else if (flag == "--threads") a.threads = std::max(0, std::atoi(value.c_str()));
    else if (flag == "--batch") a.batch = std::max(1, std::atoi(value.c_str()));
    else die("unknown option " + flag);
  }
  if (a.mode != "latency" && a.mode != "serve") die("mode must be latency or serve");
  if (a.mode == "latency" && a.bank.empty()) die("latency needs --bank BANK");
  return a;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) die("cannot read " + path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  if (lines.empty()) die("no prompts in " + path);
  return lines;
}

edgeseg_runtime* create(const Args& a, const char* bank, bool tokenizer_only) {
  edgeseg_options options;
  edgeseg_options_init(&options);
  options.intra_op_threads = a.threads;
  options.bank_path = bank;
  options.tokenizer_only = tokenizer_only ? 1 : 0;
  edgeseg_runtime* runtime = nullptr;
  if (edgeseg_create(a.bundle.c_str(), &options, &runtime) != EDGESEG_OK) die(edgeseg_last_error());
  return runtime;
}

// Median and p90 of `runs` calls of edgeseg_encode on `batch` prompts (cycling), after 10 warm-up calls.
Stats time_encode(edgeseg_runtime* runtime, const std::vector<std::string>& prompts, size_t batch, int runs) {
  const auto length = static_cast<size_t>(edgeseg_context_length(runtime));
  const auto dim = static_cast<size_t>(edgeseg_output_dim(runtime));
  std::vector<int64_t> ids(batch * length);
  std::vector<uint8_t> mask(batch * length);
  std::vector<float> memory(batch * length * dim);
  std::vector<const char*> ptrs(batch);
  std::vector<double> times;
  for (int r = 0; r < runs + 10; ++r) {
    for (size_t k = 0; k < batch; ++k) ptrs[k] = prompts[(static_cast<size_t>(r) * batch + k) % prompts.size()].c_str();
    const double start = now_us();
    if (edgeseg_encode(runtime, ptrs.data(), batch, ids.data(), mask.data(), memory.data()) != EDGESEG_OK) {
      die(edgeseg_last_error());
    }
    if (r >= 10) times.push_back(now_us() - start);
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], times[std::min(times.size() - 1, times.size() * 9 / 10)]};
}

std::string field(const char* name, const Stats& s) {
  char text[160];
  std::snprintf(text, sizeof(text), ", \"%s_median_us\": %.4f, \"%s_p90_us\": %.4f", name, s.median_us, name, s.p90_us);
  return text;
}

int latency(const Args& a) {
  const std::vector<std::string> prompts = read_lines(a.prompts);
  std::vector<std::string> spaced;
  for (const auto& p : prompts) spaced.push_back(p + " ");
  edgeseg_runtime* banked = create(a, a.bank.c_str(), !a.encoder);
  std::string json = "{\"prompts\": " + std::to_string(prompts.size()) + ", \"bank_entries\": " +
                     std::to_string(edgeseg_bank_entries(banked)) + ", \"runs\": " + std::to_string(a.runs);
  json += field("bank_text_b1", time_encode(banked, prompts, 1, a.runs));
  json += field("bank_text_b8", time_encode(banked, prompts, 8, a.runs));
  json += field("bank_ids_b1", time_encode(banked, spaced, 1, a.runs));
  json += field("bank_ids_b8", time_encode(banked, spaced, 8, a.runs));
  edgeseg_destroy(banked);
  if (a.encoder) {
    edgeseg_runtime* plain = create(a, nullptr, false);
    json += ", \"encoder_runs\": " + std::to_string(a.encoder_runs);
    json += field("encoder_b1", time_encode(plain, prompts, 1, a.encoder_runs));
    json += field("encoder_b8", time_encode(plain, prompts, 8, a.encoder_runs));
    edgeseg_destroy(plain);
  }
  std::printf("%s}\n", json.c_str());
  return 0;
}

int serve(const Args& a) {
  const std::vector<std::string> prompts = read_lines(a.prompts);
  const double start = now_us();
  edgeseg_runtime* runtime = create(a, a.bank.empty() ? nullptr : a.bank.c_str(), false);
  const double loaded = now_us();
  const auto length = static_cast<size_t>(edgeseg_context_length(runtime));
  const auto dim = static_cast<size_t>(edgeseg_output_dim(runtime));
  const auto batch = static_cast<size_t>(a.batch);
  std::vector<int64_t> ids(batch * length);
  std::vector<uint8_t> mask(batch * length);
  std::vector<float> memory(batch * length * dim);
  size_t batches = 0;
  for (size_t begin = 0; begin < prompts.size(); begin += batch, ++batches) {
    const size_t count = std::min(batch, prompts.size() - begin);
    std::vector<const char*> ptrs;
    for (size_t k = 0; k < count; ++k) ptrs.push_back(prompts[begin + k].c_str());
    if (edgeseg_encode(runtime, ptrs.data(), count, ids.data(), mask.data(), memory.data()) != EDGESEG_OK) {
      die(edgeseg_last_error());
    }
  }
  const double done = now_us();
  const long long entries = static_cast<long long>(edgeseg_bank_entries(runtime));
  edgeseg_destroy(runtime);
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  std::printf("{\"prompts\": %zu, \"batches\": %zu, \"bank_entries\": %lld, \"load_s\": %.6f, \"encode_s\": %.6f, "
              "\"self_maxrss_kb\": %ld}\n", prompts.size(), batches, entries, (loaded - start) / 1e6,
              (done - loaded) / 1e6, usage.ru_maxrss);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  return args.mode == "latency" ? latency(args) : serve(args);
}
