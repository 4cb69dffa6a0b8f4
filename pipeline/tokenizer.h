/*
 * tokenizer.h - the Qwen2/Qwen3 byte-level BPE tokenizer of a checkpoint's tokenizer/
 * folder (tokenizer.json + tokenizer_config.json), spec §2.1-2.3.
 *
 * Pipeline, as Hugging Face `tokenizers` runs it: added tokens are matched literally
 * first (leftmost-longest; they split the text) -> NFC on the text between them -> the
 * Split regex of tokenizer.json (Isolated) -> GPT-2 byte-level mapping -> BPE by merge
 * rank. No BOS/EOS is added. The regex, vocabulary, merges and added tokens all come from
 * tokenizer.json; a tokenizer.json whose pipeline differs from this shape is refused at
 * load with an error naming the key.
 *
 * Thread safety: a loaded tokenizer is immutable apart from an internal word cache that
 * is guarded by a mutex, so one zi_tokenizer may be shared by threads.
 * Limits: added tokens' lstrip/rstrip/single_word flags are not implemented (refused at
 * load when set); ids must be below 2^24.
 */
#ifndef ZI_TOKENIZER_H
#define ZI_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

/* diffusers ZImagePipeline: max_sequence_length = 512 */
#define ZI_TOKENIZER_MAX_LEN 512

typedef struct zi_tokenizer zi_tokenizer;

/* Loads DIR/tokenizer.json and (when present) DIR/tokenizer_config.json; DIR is the
 * checkpoint's tokenizer/ folder. */
int zi_tokenizer_load(const char *dir, zi_tokenizer **out);

void zi_tokenizer_free(zi_tokenizer *tok);

/* Encodes `len` bytes of UTF-8 text as is: no template, no truncation. On success *ids
 * is a malloc'ed array (never NULL, free() it) of *n ids. Invalid UTF-8 gives ZI_EINVAL
 * naming the byte offset. */
int zi_tokenizer_encode(const zi_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n);

/* What the text encoder sees (spec §2.1, §2.3): the one-user-message chat template
 *   "<|im_start|>user\n" PROMPT "<|im_end|>\n<|im_start|>assistant\n"
 * encoded, then cut to the first max_len ids (ZI_TOKENIZER_MAX_LEN in the pipeline;
 * 0 = no limit). No padding. */
int zi_tokenizer_encode_prompt(const zi_tokenizer *tok, const char *prompt, size_t max_len,
                               int32_t **ids, size_t *n);

/* The templated string itself (malloc'ed, NUL-terminated; free() it). */
int zi_tokenizer_template(const char *prompt, char **out, size_t *len);

/* Concatenated bytes of the ids (added tokens as their text). *text is malloc'ed and
 * NUL-terminated. An id that is not in the vocabulary gives ZI_EINVAL. */
int zi_tokenizer_decode(const zi_tokenizer *tok, const int32_t *ids, size_t n, char **text,
                        size_t *len);

/* Id of a token given by its text (a vocab entry in raw bytes, or an added token); -1 when
 * absent. */
int32_t zi_tokenizer_token_id(const zi_tokenizer *tok, const char *token);

/* The padding id (tokenizer_config.json pad_token; -1 when none). */
int32_t zi_tokenizer_pad_id(const zi_tokenizer *tok);

/* One more than the largest id in the vocabulary or added tokens. */
size_t zi_tokenizer_n_ids(const zi_tokenizer *tok);

#endif
