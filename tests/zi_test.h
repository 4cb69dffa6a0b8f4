/*
 * zi_test.h - helpers shared by the C tests (cmocka): paths and numeric comparison.
 */
#ifndef ZI_TEST_H
#define ZI_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "pipeline.h" /* zi_rng_kind */
#include "safetensors.h"

/* Path of a file under the source tree: zi_test_path("tests/golden/data/x") (static buffer,
 * valid until the next call on the thread). */
const char *zi_test_path(const char *rel);

/* Path of `rel` in the golden data folder (tiny-zimage/ and vectors/): tests/golden/data
 * under the source tree, or the folder named by the environment variable ZI_GOLDEN_DIR when
 * it is set and not empty (another reference set with the same layout, e.g. a held-out one;
 * the golden tests take every case, size, step count and file name from its
 * vectors/manifest.json). Same buffer rules as zi_test_path. */
const char *zi_test_golden(const char *rel);

/* Path of `rel` inside the golden set's checkpoint folder (rel "" or NULL: the folder
 * itself): tiny-zimage/ when the set has one, else the set's only subfolder holding a
 * model_index.json (a held-out set may name its checkpoint otherwise). No such folder, or
 * more than one, fails the test. Same buffer rules as zi_test_golden. */
const char *zi_test_model(const char *rel);

/* The golden set's vectors/manifest.json, parsed (the caller cJSON_Delete()s it). Fails the
 * test when it cannot be read or parsed, or when its "cases" array is missing or empty. */
cJSON *zi_test_manifest(void);

/* The manifest's "cases" array (never empty: zi_test_manifest checked it). */
const cJSON *zi_test_manifest_cases(const cJSON *manifest);

/* A case's string / number field `key`; a missing or mistyped one fails the test. */
const char *zi_test_case_str(const cJSON *cs, const char *key);
double zi_test_case_num(const cJSON *cs, const char *key);

/* A case's seed, all 64 bits (zi_test_manifest keeps the digits of an integer seed as text;
 * a decimal string is taken too); a missing or malformed one fails the test. */
uint64_t zi_test_case_seed(const cJSON *cs);

/* The generator of a case's initial noise: the case's or else the manifest's "latents_rng"
 * ("torch.Generator('cuda')..." or "...('cpu')..."), ZI_RNG_CUDA when neither says. */
zi_rng_kind zi_test_case_rng(const cJSON *manifest, const cJSON *cs);

/* DiT calls per step of a case: 2 under classifier-free guidance (guidance > 0), else 1. */
int zi_test_case_branches(const cJSON *cs);

/* Opens the case's file (vectors/<"file">); a failure fails the test. */
zi_st *zi_test_case_open(const cJSON *cs);

/* Path of the case's reference PNG: vectors/<"name">.png, else the case file's name with
 * .png for .safetensors (same buffer rules as zi_test_golden). */
const char *zi_test_case_png(const cJSON *cs);

/* The first case of the manifest whose file holds the tensor `tensor`: the per-layer
 * intermediates (te.*, dit.*, vae.decoder.*) are in one case file only, whichever it is.
 * Fails the test when no case has it. */
const cJSON *zi_test_case_with(const cJSON *manifest, const char *tensor);

/* max |a-b| / max |ref|: the parity metric of the golden README. */
double zi_rel_err(const float *out, const float *ref, size_t n);
double zi_max_abs_diff(const float *a, const float *b, size_t n);
/* PSNR in dB of two uint8 images of n bytes. */
double zi_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n);

/* The whole file at `path`, malloc'ed and NUL-terminated (the caller frees it); NULL when
 * it cannot be read. */
char *zi_test_read_file(const char *path);

/* Tensor `t` (any float dtype) as malloc'ed f32; *n (when n != NULL) its element count.
 * A failed read fails the test. */
float *zi_test_tensor_f32(const zi_st_tensor *t, size_t *n);

/* The same for the tensor `name` of `st`; a missing tensor fails the test. */
float *zi_test_st_f32(const zi_st *st, const char *name, size_t *n);

/* Runs a shell command, returns its exit status (-1 when it could not run). The
 * command's stdout is stored in out (NUL-terminated, cut to cap) when out != NULL. */
int zi_test_run(const char *cmd, char *out, size_t cap);

#endif
