/*
 * fuzz_config.c - libFuzzer target for the component config parsers.
 *
 * The first byte picks the parser (text encoder, transformer, VAE, scheduler); the rest is
 * the JSON text. A parse either fails with a message or yields a config whose invariants
 * hold (sizes positive, heads dividing, RoPE axes summing to head_dim, ...). The corpus
 * (tests/fuzz/corpus/fuzz_config/) is replayed by ctest.
 */
#include "config.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *json = (const char *)data + 1;
    size_t len = size - 1;
    int rc;
    switch (data[0] % 4) {
    case 0: {
        zi_te_config c;
        rc = zi_te_config_parse(json, len, "fuzz.json", &c);
        if (rc == ZI_OK && (c.hidden <= 0 || c.n_layers <= 0 || c.n_heads <= 0 ||
                            c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads || c.head_dim <= 0 ||
                            c.head_dim % 2 || !(c.rope_theta > 0) || !(c.rms_eps > 0)))
            abort();
        break;
    }
    case 1: {
        zi_dit_config c;
        rc = zi_dit_config_parse(json, len, "fuzz.json", &c);
        if (rc == ZI_OK &&
            (c.dim <= 0 || c.n_heads <= 0 || c.dim % c.n_heads || c.head_dim * c.n_heads != c.dim ||
             c.axes_dims[0] + c.axes_dims[1] + c.axes_dims[2] != c.head_dim || c.patch <= 0 ||
             c.ffn_hidden < 0 || c.adaln_dim > 256)) /* n_kv_heads: any value, unused */
            abort();
        break;
    }
    case 2: {
        zi_vae_config c;
        rc = zi_vae_config_parse(json, len, "fuzz.json", &c);
        if (rc == ZI_OK &&
            (c.n_blocks < 1 || c.n_blocks > ZI_VAE_MAX_BLOCKS || c.norm_groups <= 0 ||
             c.block_out[0] % c.norm_groups || c.scaling_factor == 0.0f))
            abort();
        break;
    }
    default: {
        zi_sched_config c;
        rc = zi_sched_config_parse(json, len, "fuzz.json", &c);
        if (rc == ZI_OK && (c.num_train_timesteps <= 0 || !(c.shift > 0)))
            abort();
        break;
    }
    }
    if (rc != ZI_OK && zi_errmsg()[0] == '\0')
        abort();
    return 0;
}
