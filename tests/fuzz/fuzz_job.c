/*
 * fuzz_job.c - libFuzzer target for job message validation (worker/job.c).
 *
 * Any byte string must parse to either a good job or a bad job with an error code, never
 * crash or leak; a good job must satisfy every rule and survive a JSON round trip; a bad
 * job's id, when present, must itself be valid. The corpus (tests/fuzz/corpus/fuzz_job/)
 * is replayed by ctest.
 */
#include "job.h"
#include "zi_err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const zi_job_limits zi_fuzz_lim = {
    .def_width = 64,
    .def_height = 64,
    .def_steps = 2,
    .def_guidance = 0.0,
    .min_side = 64,
    .max_side = 4096,
    .max_pixels = 4194304,
    .max_steps = 50,
    .max_message_bytes = 4096,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    zi_job job = {0};
    int rc = zi_job_parse(data, size, &zi_fuzz_lim, &job);
    if (rc == ZI_OK) {
        if (!zi_job_id_valid(job.job_id) || !job.prompt || !job.negative_prompt ||
            strlen(job.prompt) > ZI_JOB_PROMPT_MAX ||
            !zi_job_utf8_valid(job.prompt, strlen(job.prompt)) || job.width % 16 != 0 ||
            job.height % 16 != 0 || job.width < 64 || job.height < 64 ||
            (int64_t)job.width * job.height > zi_fuzz_lim.max_pixels || job.steps < 1 ||
            job.steps > 50 || !(job.guidance >= 0.0 && job.guidance <= 20.0) ||
            size > (size_t)zi_fuzz_lim.max_message_bytes)
            abort();
        char *text = NULL;
        if (zi_job_to_json(&job, &text) == ZI_OK) {
            zi_job back = {0};
            zi_job_limits big = zi_fuzz_lim;
            big.max_message_bytes = 1 << 20;
            if (zi_job_parse(text, strlen(text), &big, &back) != ZI_OK ||
                strcmp(back.job_id, job.job_id) != 0 || strcmp(back.prompt, job.prompt) != 0 ||
                back.seed != job.seed || back.width != job.width || back.steps != job.steps)
                abort();
            zi_job_clear(&back);
            free(text);
        }
    } else if (rc == ZI_EINVAL) {
        if (job.error_code[0] == '\0' || job.error[0] == '\0' || job.prompt)
            abort();
        if (job.job_id[0] && !zi_job_id_valid(job.job_id))
            abort();
    }
    zi_job_clear(&job);
    return 0;
}
