/*
 * fuzz_wconfig.c - libFuzzer target for the worker configuration parser (worker/wconfig.c).
 *
 * Any byte string applied over the defaults must either parse (and then validate or fail
 * validation with a message) or fail with ZI_EFORMAT and a non-empty message - never crash,
 * leak or leave a NULL string field. A parsed configuration must survive a dump -> parse
 * round trip to the same dump. The corpus (tests/fuzz/corpus/fuzz_wconfig/) is replayed by
 * ctest.
 */
#include "wconfig.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *zi_fuzz_dump(const zi_wconfig *c, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f || zi_wconfig_dump(c, f) != ZI_OK)
        abort();
    fclose(f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    zi_wconfig cfg;
    if (zi_wconfig_init_defaults(&cfg) != ZI_OK)
        abort();
    int rc = zi_wconfig_parse_buffer(&cfg, (const char *)data, size, "fuzz");
    if (rc != ZI_OK) {
        if (rc != ZI_EFORMAT || zi_errmsg()[0] == '\0')
            abort();
        zi_wconfig_free(&cfg);
        return 0;
    }
    if (!cfg.model_path || !cfg.kafka_topic || !cfg.worker_id || !cfg.s3_key_template)
        abort();
    rc = zi_wconfig_validate(&cfg);
    if (rc != ZI_OK && (rc != ZI_EFORMAT || zi_errmsg()[0] == '\0'))
        abort();

    size_t len1 = 0, len2 = 0;
    char *d1 = zi_fuzz_dump(&cfg, &len1);
    zi_wconfig again;
    if (zi_wconfig_init_defaults(&again) != ZI_OK)
        abort();
    if (zi_wconfig_parse_buffer(&again, d1, len1, "dump") != ZI_OK)
        abort(); /* what we print must read back */
    char *d2 = zi_fuzz_dump(&again, &len2);
    if (len1 != len2 || memcmp(d1, d2, len1) != 0)
        abort();
    free(d1);
    free(d2);
    zi_wconfig_free(&again);
    zi_wconfig_free(&cfg);
    return 0;
}
