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

#include "safetensors.h"

/* Path of a file under the source tree: zi_test_path("tests/golden/data/x") (static buffer,
 * valid until the next call on the thread). */
const char *zi_test_path(const char *rel);

/* The golden data folder: tests/golden/data (tiny-zimage/ and vectors/). */
const char *zi_test_golden(const char *rel);

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
