/*
 * edgeseg C API: turn prompt strings into the text memory SAM3's decoder consumes, from an edgeseg
 * bundle (a directory with manifest.json, the model, the tokenizer vocabulary and their sha256s).
 *
 * The same token ids and the same numbers as the Python pipeline (edgeseg.runtime.load(dir).encode):
 *   prompts (UTF-8) -> ids int64 [B, L] -> memory float32 [B, L, D], mask uint8 [B, L] (1 = padding)
 * with L the bundle's context length and D its output width (256 for SAM3).
 *
 * Rules:
 *   - Every function returns EDGESEG_OK or an error status; no C++ exception crosses this boundary.
 *   - After an error, edgeseg_last_error() returns a one-line message (per calling thread) that
 *     stays valid until the next edgeseg call on that thread.
 *   - A runtime handle may be used from one thread at a time (its tokenizer keeps a cache).
 *     Create one handle per thread, or serialise calls.
 *
 * Prompt banks (edgeseg bank build): a file of token ids, masks and memory for known prompts. With a bank
 * (edgeseg_options.bank_path, or one the bundle ships), a prompt found in it by its exact text or by its
 * token ids is answered from it, bit for bit what the bundle's encoder gave when the bank was built, at the
 * bank's dtype; the others run the model. A bank-only bundle (no model) or a tokenizer_only runtime answers
 * only known prompts; edgeseg_bank_lookup never runs a model (an app can run its own, e.g. Core ML).
 * Swift: engines/include/edgeseg/module.modulemap makes this header a Clang module (import EdgesegC).
 */
#ifndef EDGESEG_EDGESEG_H
#define EDGESEG_EDGESEG_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define EDGESEG_API
#else
#define EDGESEG_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define EDGESEG_VERSION_MAJOR 0
#define EDGESEG_VERSION_MINOR 1
#define EDGESEG_VERSION_PATCH 0
/* The bundle manifest format version this runtime reads. */
#define EDGESEG_BUNDLE_FORMAT_VERSION 1

typedef enum edgeseg_status {
  EDGESEG_OK = 0,
  EDGESEG_ERROR_INVALID_ARGUMENT = 1, /* NULL pointers, empty prompt list, invalid UTF-8, ... */
  EDGESEG_ERROR_BUNDLE = 2,           /* missing/malformed bundle, wrong format version, sha256 mismatch */
  EDGESEG_ERROR_BACKEND = 3,          /* ONNX Runtime / TensorRT could not be loaded or failed to run */
  EDGESEG_ERROR_UNSUPPORTED = 4,      /* a backend this build does not include (e.g. TensorRT, Core ML) */
  EDGESEG_ERROR_INTERNAL = 5,         /* out of memory or a bug */
  EDGESEG_ERROR_NOT_IN_BANK = 6       /* a prompt the bank does not hold, and no model to run it */
} edgeseg_status;

typedef struct edgeseg_runtime edgeseg_runtime;

/* Options for edgeseg_create. Initialise with edgeseg_options_init, then change fields. */
typedef struct edgeseg_options {
  uint32_t struct_size;            /* sizeof(edgeseg_options); set by edgeseg_options_init */
  const char* onnxruntime_library; /* path of libonnxruntime.so; NULL: $EDGESEG_ONNXRUNTIME_LIBRARY, then
                                      the path configured at build time, then "libonnxruntime.so" */
  int32_t intra_op_threads;        /* 0: the backend's default */
  int32_t verify_hashes;           /* 1 (default): check every bundle file's size and sha256 on load */
  int32_t device;                  /* CUDA device for TensorRT bundles (default 0) */
  int32_t tokenizer_only;          /* 1: load the tokenizer (and a bank, if any) but not the model */
  const char* bank_path;           /* a prompt-bank file built from this bundle; NULL: the bundle's own, if any.
                                      Must match the bundle (model, vocabulary, context length): else an error */
} edgeseg_options;

/* The result of edgeseg_encode_alloc, owned by the library; free with edgeseg_result_free. */
typedef struct edgeseg_result {
  size_t batch;           /* B */
  int64_t context_length; /* L */
  int64_t dim;            /* D */
  const int64_t* ids;     /* [B, L] */
  const uint8_t* mask;    /* [B, L], 1 = padding */
  const float* memory;    /* [B, L, D] */
  size_t truncated;       /* prompts longer than L tokens (incl. SOT/EOT), cut to L with EOT last */
} edgeseg_result;

EDGESEG_API const char* edgeseg_version(void);
EDGESEG_API void edgeseg_options_init(edgeseg_options* options);

/* The last error message of this thread ("" if none). */
EDGESEG_API const char* edgeseg_last_error(void);

/* Load a bundle directory: manifest checks, sha256 verification, tokenizer, backend session.
 * options may be NULL (defaults). On success *out owns the runtime; on error *out is NULL. */
EDGESEG_API edgeseg_status edgeseg_create(const char* bundle_dir, const edgeseg_options* options,
                                          edgeseg_runtime** out);
EDGESEG_API void edgeseg_destroy(edgeseg_runtime* runtime); /* NULL is fine */

/* Bundle facts (valid while the runtime lives). */
EDGESEG_API int64_t edgeseg_context_length(const edgeseg_runtime* runtime);
EDGESEG_API int64_t edgeseg_output_dim(const edgeseg_runtime* runtime);
EDGESEG_API const char* edgeseg_backend(const edgeseg_runtime* runtime);      /* "onnxruntime", ... */
EDGESEG_API const char* edgeseg_encoder_name(const edgeseg_runtime* runtime); /* manifest "encoder" */

/* Tokenize only: ids [count, L] (int64, padded with the pad id); lengths [count] (optional, may be
 * NULL) receives each prompt's token count with SOT/EOT before truncation. */
EDGESEG_API edgeseg_status edgeseg_tokenize(edgeseg_runtime* runtime, const char* const* prompts, size_t count,
                                            int64_t* ids, int64_t* lengths);

/* Tokenize and run the model into caller-provided buffers:
 * memory [count, L, D] float32 (required), ids [count, L] int64 and mask [count, L] uint8 (optional,
 * may be NULL). count must be at least 1. Batches larger than the engine's limit are split. */
EDGESEG_API edgeseg_status edgeseg_encode(edgeseg_runtime* runtime, const char* const* prompts, size_t count,
                                          int64_t* ids, uint8_t* mask, float* memory);

/* The same with library-owned buffers: *out is valid until edgeseg_result_free. */
EDGESEG_API edgeseg_status edgeseg_encode_alloc(edgeseg_runtime* runtime, const char* const* prompts, size_t count,
                                                edgeseg_result** out);
EDGESEG_API void edgeseg_result_free(edgeseg_result* result); /* NULL is fine */

/* Prompt banks. The number of distinct token-id rows the runtime's bank holds (0 without a bank). */
EDGESEG_API int64_t edgeseg_bank_entries(const edgeseg_runtime* runtime);

/* Look prompts up in the bank without running any model: found[count] (required) receives 1 where the
 * prompt is in the bank and 0 where not. ids [count, L] (required) receives every prompt's ids (tokenized
 * where the exact text is not stored); mask [count, L] and memory [count, L, D] (optional) receive the
 * rows of found prompts only, other rows are left as they were: run your own model on their ids. */
EDGESEG_API edgeseg_status edgeseg_bank_lookup(edgeseg_runtime* runtime, const char* const* prompts, size_t count,
                                               int64_t* ids, uint8_t* mask, float* memory, uint8_t* found);

#ifdef __cplusplus
}
#endif

#endif /* EDGESEG_EDGESEG_H */
