// edgeseg_example_cxx BUNDLE PROMPT...: the same with the C++ API (edgeseg::Runtime throws edgeseg::Error).
#include <edgeseg/edgeseg.hpp>

#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " BUNDLE PROMPT...\n";
    return 2;
  }
  try {
    edgeseg::Runtime runtime(argv[1]);
    std::vector<std::string> prompts(argv + 2, argv + argc);
    edgeseg::Encoded out = runtime.encode(prompts);
    std::cout << runtime.encoder_name() << " bundle (" << runtime.backend() << "): memory [" << out.batch << ", "
              << out.context_length << ", " << out.dim << "]\n";
  } catch (const edgeseg::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
