/*
 * png.h - PNG output (RGB8; zlib on several threads, libspng to read back) with the generation
 * parameters in an iTXt chunk.
 *
 * The chunk has keyword "parameters" and UTF-8 text (docs/contract.md, "S3 object"):
 *   <prompt>
 *   Negative prompt: <negative>            (only when a negative prompt was used)
 *   Steps: N, Sampler: flow-euler, CFG scale: G, Seed: S, Size: WxH, Model: NAME, Version: V
 * Lines are separated by "\n"; there is no trailing newline. The prompt is written as
 * given (it may itself contain newlines). G is the shortest decimal that reads back as
 * the same float, with ".0" added to whole numbers ("0.0", "4.0", "3.5"); S is the
 * unsigned 64-bit seed in decimal.
 */
#ifndef ZI_PNG_H
#define ZI_PNG_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes of parameters text accepted (prompts are at most 16 KiB). */
#define ZI_PNG_MAX_TEXT (1u << 20)

typedef struct zi_png_params {
    const char *prompt;          /* NULL is written as "" */
    const char *negative_prompt; /* NULL or "": no "Negative prompt:" line */
    int steps;
    float guidance;
    uint64_t seed;
    int width, height;
    const char *model;   /* model name, e.g. the checkpoint folder's base name */
    const char *version; /* zimage version */
} zi_png_params;

/* Builds the parameters text; *out is malloc'ed (caller frees). ZI_EINVAL when it would
 * exceed ZI_PNG_MAX_TEXT. Always valid UTF-8: a byte of the inputs that is not becomes '?'. */
int zi_png_params_text(const zi_png_params *p, char **out);

/* How hard the encoder compresses; the pixels are the same either way.
 *  ZI_PNG_FAST: zlib's run-length strategy (Z_RLE) over adaptively filtered rows. On
 *    photographic images - what the model makes - filtered rows are noise-like and long
 *    matches are rare, so this is about 4x faster than ZI_PNG_SMALL for files within about
 *    1% of its size (docs/performance.md, "PNG encoding"; zimage bench: png_*).
 *  ZI_PNG_SMALL: zlib's default level with the filtered strategy (libspng's defaults):
 *    smaller files where the image has long repeats (flat areas, drawn graphics). */
typedef enum zi_png_compression { ZI_PNG_FAST = 0, ZI_PNG_SMALL = 1 } zi_png_compression;

/* "fast" or "small" -> *out; ZI_EINVAL naming the word otherwise. */
int zi_png_compression_parse(const char *name, zi_png_compression *out);

/* Encodes rgb [height, width, 3] to a PNG in memory; *png is malloc'ed (caller frees),
 * *len its size. parameters may be NULL (no iTXt chunk). */
int zi_png_encode(const uint8_t *rgb, int width, int height, const char *parameters,
                  zi_png_compression compression, uint8_t **png, size_t *len);

/* The same with `threads` encoder threads (0: one per core this process may run on, at
 * most 8; 1: the calling thread only). The bytes written do not depend on the thread
 * count: the image is cut into bands by its size alone. */
int zi_png_encode_threads(const uint8_t *rgb, int width, int height, const char *parameters,
                          zi_png_compression compression, int threads, uint8_t **png, size_t *len);

/* The encoder threads of `threads` 0: the cores this process may run on, at most 8. */
int zi_png_threads(void);

/* Same (ZI_PNG_FAST), written to `path` (created or truncated). */
int zi_png_write(const char *path, const uint8_t *rgb, int width, int height,
                 const char *parameters);

/* Decodes a PNG held in memory to RGB8: *rgb malloc'ed [height, width, 3]; *parameters
 * (may be NULL to skip) receives the malloc'ed text of the "parameters" iTXt or tEXt
 * chunk, or NULL when there is none. */
int zi_png_decode(const void *png, size_t len, uint8_t **rgb, int *width, int *height,
                  char **parameters);

/* Reads and decodes a PNG file (as zi_png_decode). */
int zi_png_read(const char *path, uint8_t **rgb, int *width, int *height, char **parameters);

#endif
