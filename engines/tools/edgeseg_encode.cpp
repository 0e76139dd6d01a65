// edgeseg-encode: encode a prompts file with a bundle, like `edgeseg encode --bundle`, without Python.
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "edgeseg/edgeseg.h"
#include "npy.hpp"

namespace {

const char* kUsage =
    "usage: edgeseg-encode BUNDLE --prompts FILE --out OUT.npz|OUT.npy [options]\n"
    "\n"
    "Tokenize and encode prompts (UTF-8, one per line, blank lines skipped) with an edgeseg bundle.\n"
    "OUT.npz holds input_ids int64 [B, L], mask bool [B, L] (True = padding) and memory float32\n"
    "[B, L, D], the arrays `edgeseg encode --bundle` writes; OUT.npy holds memory only.\n"
    "\n"
    "options:\n"
    "  --threads N              ONNX Runtime intra-op threads (default: ONNX Runtime's choice)\n"
    "  --batch-size N           prompts per model run (default 64)\n"
    "  --bank BANK              answer the prompts a prompt bank holds from it (edgeseg bank build;\n"
    "                           it must have been built from BUNDLE); the others run the model\n"
    "  --onnxruntime-library P  libonnxruntime.so to load (default: $EDGESEG_ONNXRUNTIME_LIBRARY,\n"
    "                           then the library configured at build time)\n"
    "  --no-verify              skip the sha256 check of the bundle's files\n"
    "  -h, --help               show this help\n"
    "\n"
    "Errors print one line on stderr and exit with status 2.\n";

struct UsageError {
  std::string message;
};

[[noreturn]] void usage_error(const std::string& message) { throw UsageError{message}; }

bool is_blank(const std::string& line) {
  auto data = reinterpret_cast<const utf8proc_uint8_t*>(line.data());
  utf8proc_ssize_t i = 0, size = static_cast<utf8proc_ssize_t>(line.size());
  while (i < size) {
    utf8proc_int32_t c = 0;
    utf8proc_ssize_t n = utf8proc_iterate(data + i, size - i, &c);
    if (n <= 0) return false;
    int cat = utf8proc_category(c);
    bool space = (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || cat == UTF8PROC_CATEGORY_ZS ||
                 cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
    if (!space) return false;
    i += n;
  }
  return true;
}

// Same rules as edgeseg.fileio.read_prompts.
std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage_error("prompts file " + path + " does not exist or cannot be read");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  auto data = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  utf8proc_ssize_t i = 0, size = static_cast<utf8proc_ssize_t>(text.size());
  while (i < size) {
    utf8proc_int32_t c = 0;
    utf8proc_ssize_t n = utf8proc_iterate(data + i, size - i, &c);
    if (n <= 0) {
      size_t line = 1;
      for (utf8proc_ssize_t k = 0; k < i; ++k) line += text[static_cast<size_t>(k)] == '\n';
      usage_error("prompts file " + path + " is not UTF-8 text (bad byte at line " + std::to_string(line) + ")");
    }
    i += n;
  }
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    std::string line = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::vector<std::string> prompts;
  for (auto& line : lines) {
    if (!is_blank(line)) prompts.push_back(std::move(line));
  }
  if (prompts.empty()) usage_error("prompts file " + path + " holds no prompts (expected one prompt per line)");
  return prompts;
}

long parse_positive(const std::string& flag, const char* value) {
  char* end = nullptr;
  long n = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || n <= 0) usage_error(flag + " expects a positive integer, got '" + value + "'");
  return n;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Args {
  std::string bundle, prompts_path, out, library, bank;
  long threads = 0, batch_size = 64;
  bool verify = true, help = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const std::string& flag) -> const char* {
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      a.help = true;
      return a;
    } else if (arg == "--prompts") {
      a.prompts_path = value(arg);
    } else if (arg == "--out") {
      a.out = value(arg);
    } else if (arg == "--threads") {
      a.threads = parse_positive(arg, value(arg));
    } else if (arg == "--batch-size") {
      a.batch_size = parse_positive(arg, value(arg));
    } else if (arg == "--bank") {
      a.bank = value(arg);
    } else if (arg == "--onnxruntime-library") {
      a.library = value(arg);
    } else if (arg == "--no-verify") {
      a.verify = false;
    } else if (!arg.empty() && arg[0] == '-') {
      usage_error("unknown option " + arg + " (see --help)");
    } else if (a.bundle.empty()) {
      a.bundle = arg;
    } else {
      usage_error("unexpected argument " + arg + " (see --help)");
    }
  }
  if (a.bundle.empty()) usage_error("missing BUNDLE (see --help)");
  if (a.prompts_path.empty()) usage_error("missing --prompts FILE (see --help)");
  if (a.out.empty()) usage_error("missing --out OUT.npz|OUT.npy (see --help)");
  return a;
}

// --out is never an input (the prompts file, through links too), inside the bundle, or anything but a regular file.
void check_not_an_input(const std::string& out, const std::string& prompts, const std::string& bundle) {
  struct stat o {}, p {};
  if (::lstat(out.c_str(), &o) == 0) {
    if (!S_ISREG(o.st_mode)) usage_error("--out " + out + " exists and is not a regular file: refusing to replace it");
    if (::stat(prompts.c_str(), &p) == 0 && o.st_dev == p.st_dev && o.st_ino == p.st_ino) {
      usage_error("--out " + out + " is the input " + prompts + ": refusing to overwrite it");
    }
  }
  const std::string parent = out.find('/') == std::string::npos ? "." : out.substr(0, out.rfind('/') + 1);
  char* real_parent = ::realpath(parent.c_str(), nullptr);
  char* real_bundle = ::realpath(bundle.c_str(), nullptr);
  const bool inside = real_parent && real_bundle &&
                      (std::string(real_parent) + "/").rfind(std::string(real_bundle) + "/", 0) == 0;
  std::free(real_parent);
  std::free(real_bundle);
  if (inside) usage_error("--out " + out + " is inside the bundle " + bundle + ": refusing to change it");
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  if (args.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const std::string& bundle = args.bundle;
  const std::string& out = args.out;
  const long threads = args.threads, batch_size = args.batch_size;
  const bool npz = ends_with(out, ".npz");
  if (!npz && !ends_with(out, ".npy")) usage_error("--out must end in .npz or .npy, got " + out);
  {
    std::string parent = out.find('/') == std::string::npos ? "." : out.substr(0, out.rfind('/'));
    if (parent.empty()) parent = "/";
    if (::access(parent.c_str(), W_OK) != 0) usage_error("output folder " + parent + " does not exist or is not writable");
    check_not_an_input(out, args.prompts_path, bundle);
  }
  std::vector<std::string> prompts = read_prompts(args.prompts_path);

  edgeseg_options options;
  edgeseg_options_init(&options);
  options.intra_op_threads = static_cast<int32_t>(threads);
  options.verify_hashes = args.verify ? 1 : 0;
  if (!args.library.empty()) options.onnxruntime_library = args.library.c_str();
  if (!args.bank.empty()) options.bank_path = args.bank.c_str();
  edgeseg_runtime* runtime = nullptr;
  if (edgeseg_create(bundle.c_str(), &options, &runtime) != EDGESEG_OK) usage_error(edgeseg_last_error());
  const size_t n = prompts.size();
  const auto length = static_cast<size_t>(edgeseg_context_length(runtime));
  const auto dim = static_cast<size_t>(edgeseg_output_dim(runtime));
  std::vector<int64_t> ids(n * length);
  std::vector<uint8_t> mask(n * length);
  std::vector<float> memory(n * length * dim);
  const bool progress = ::isatty(STDERR_FILENO) && n > static_cast<size_t>(batch_size);
  for (size_t start = 0; start < n; start += static_cast<size_t>(batch_size)) {
    size_t count = std::min(static_cast<size_t>(batch_size), n - start);
    std::vector<const char*> ptrs;
    for (size_t i = start; i < start + count; ++i) ptrs.push_back(prompts[i].c_str());
    if (edgeseg_encode(runtime, ptrs.data(), count, ids.data() + start * length, mask.data() + start * length,
                       memory.data() + start * length * dim) != EDGESEG_OK) {
      std::string message = edgeseg_last_error();
      edgeseg_destroy(runtime);
      usage_error(message);
    }
    if (progress) std::fprintf(stderr, "\rencoding: %zu/%zu prompts", start + count, n);
  }
  if (progress) std::fputc('\n', stderr);
  edgeseg_destroy(runtime);
  using edgeseg_tools::Array;
  const auto b = static_cast<int64_t>(n), l = static_cast<int64_t>(length), d = static_cast<int64_t>(dim);
  Array mem{"memory", "<f4", {b, l, d}, memory.data(), memory.size() * sizeof(float)};
  try {
    if (npz) {
      Array id_array{"input_ids", "<i8", {b, l}, ids.data(), ids.size() * sizeof(int64_t)};
      Array mask_array{"mask", "|b1", {b, l}, mask.data(), mask.size()};
      edgeseg_tools::write_file_atomic(out, edgeseg_tools::npz_bytes({id_array, mask_array, mem}));
    } else {
      edgeseg_tools::write_file_atomic(out, edgeseg_tools::npy_bytes(mem));
    }
  } catch (const std::exception& e) {
    usage_error(e.what());
  }
  std::fprintf(stderr, "encoded %zu prompts -> %s (L=%zu, D=%zu)\n", n, out.c_str(), length, dim);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "edgeseg-encode: error: %s\n", e.message.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgeseg-encode: error: %s\n", e.what());
    return 2;
  }
}
