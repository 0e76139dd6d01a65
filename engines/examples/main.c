/* edgeseg_example BUNDLE PROMPT...: encode prompts with the C API and print what came back. */
#include <edgeseg/edgeseg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s BUNDLE PROMPT...\n", argv[0]);
    return 2;
  }
  edgeseg_runtime* runtime = NULL;
  if (edgeseg_create(argv[1], NULL, &runtime) != EDGESEG_OK) {
    fprintf(stderr, "error: %s\n", edgeseg_last_error());
    return 2;
  }
  const size_t count = (size_t)(argc - 2);
  edgeseg_result* result = NULL;
  if (edgeseg_encode_alloc(runtime, (const char* const*)(argv + 2), count, &result) != EDGESEG_OK) {
    fprintf(stderr, "error: %s\n", edgeseg_last_error());
    edgeseg_destroy(runtime);
    return 2;
  }
  printf("%s bundle (%s): memory [%zu, %lld, %lld]\n", edgeseg_encoder_name(runtime), edgeseg_backend(runtime),
         result->batch, (long long)result->context_length, (long long)result->dim);
  for (size_t b = 0; b < result->batch; ++b) {
    long long tokens = 0;
    double norm = 0.0;
    for (long long t = 0; t < result->context_length; ++t) {
      if (result->mask[b * result->context_length + t]) continue;
      ++tokens;
      const float* row = result->memory + (b * result->context_length + t) * result->dim;
      for (long long d = 0; d < result->dim; ++d) norm += (double)row[d] * row[d];
    }
    printf("  \"%s\": %lld tokens, |memory| = %.4f\n", argv[2 + b], tokens, sqrt(norm));
  }
  edgeseg_result_free(result);
  edgeseg_destroy(runtime);
  return 0;
}
