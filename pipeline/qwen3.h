/*
 * qwen3.h - the Qwen3 text encoder as Z-Image uses it (zimage-spec.md §2.4-2.5).
 *
 * Runs layers 0 .. n_layers-2 over the L real tokens with plain causal attention and
 * returns the residual stream after layer n_layers-2 (transformers' hidden_states[-2]):
 * the last layer, the final norm and the LM head never run and are never uploaded.
 * Every size comes from the zi_te_config; all arithmetic goes through the backend.
 */
#ifndef ZI_QWEN3_H
#define ZI_QWEN3_H

#include "backend.h"
#include "config.h"
#include "safetensors.h"

#include <stdint.h>

typedef struct zi_qwen3 zi_qwen3;

/*
 * Checks every tensor of the checkpoint against the typed table built from `cfg` and
 * uploads the weights of layers 0 .. n-2 with be->upload_weight. Names may carry a
 * leading "model."; `lm_head.*` is ignored and `norm.weight` is optional (unused). A
 * missing, mis-shaped or unexpected tensor is a load error naming it. `st` may be
 * closed after the call; `be` must outlive the model.
 */
int zi_qwen3_load(zi_qwen3 **out, const zi_st *st, const zi_te_config *cfg, zi_backend *be);

/* The same shapes with random weights (for benchmarks without a checkpoint): projection
 * weights ~ N(0, 0.02), norm weights 1 + N(0, 0.02); deterministic in `seed`. */
int zi_qwen3_load_random(zi_qwen3 **out, const zi_te_config *cfg, zi_backend *be, uint64_t seed);

/*
 * Encodes L token ids (L > 0; max_position_embeddings does not bound L: the RoPE
 * angles are computed for every position, as transformers does). `out` receives a new [L, hidden]
 * tensor from be->alloc (the caller frees it with be->free). When `hidden_states` is not NULL it
 * must hold n_layers entries, which receive new [L, hidden] tensors: entry i is the
 * residual stream after i layers (0 = the embeddings; entry n_layers-1 equals `out`).
 * On error nothing is left allocated in `out` / `hidden_states`.
 */
int zi_qwen3_forward(zi_qwen3 *m, const int32_t *ids, int L, zi_tensor *out,
                     zi_tensor *hidden_states);

const zi_te_config *zi_qwen3_config(const zi_qwen3 *m);

void zi_qwen3_free(zi_qwen3 *m);

#endif
