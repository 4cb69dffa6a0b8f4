/*
 * test_device_lost.c - a GPU fault during a job (label gpu; on a GPU machine through
 * tests/gpu/run.sh, in CI on the CPU emulator of CUDA).
 *
 * zi_cuda_inject_fault queues a kernel that writes to an illegal address: on a GPU a real
 * fault, which loses the CUDA context as an ECC error or a kernel bug would; on the
 * emulator its emulated form (tests/cudaemu: every later call returns the fault).
 *   - a job before the fault succeeds;
 *   - the job that meets it fails with ZI_EDEVICE, and the message names the CUDA error -
 *     also when the job stops before any op sees the fault: here it is injected at the
 *     first step's progress callback, which cancels the job in the same breath, and the
 *     pipeline's wait for the device at the end turns the cancel into ZI_EDEVICE;
 *   - the error survives zi_backend_clear_error (which a new job calls): the next job fails
 *     at once with ZI_EDEVICE - the worker then stops and its job is delivered again
 *     (docs/worker.md, "A lost GPU"), instead of failing every job that follows;
 *   - freeing the pipeline and the backend afterwards neither hangs nor crashes.
 * Its own process: the context stays lost until the process ends.
 */
#include "zi_test.h"

#ifdef ZI_HAVE_CUDA

#include "backend.h"
#include "pipeline.h"
#include "zi_cuda.h"
#include "zi_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static zi_gen_params zl_params(void)
{
    zi_gen_params p = {0};
    p.prompt = "a lighthouse at dusk";
    p.width = 32;
    p.height = 32;
    p.steps = 2;
    p.seed = 42;
    p.rng = ZI_RNG_CUDA;
    return p;
}

/* progress callback: at the first step, a device fault still in flight, and a cancel */
static int zl_fault_and_cancel(void *ud, int step, int steps, double step_seconds)
{
    (void)steps;
    (void)step_seconds;
    if (step == 1) {
        assert_int_equal(zi_cuda_inject_fault(ud), ZI_OK);
        return 1;
    }
    return 0;
}

static void test_fault_loses_the_device(void **state)
{
    (void)state;
    if (!zi_backend_cuda_available())
        fail_msg("no GPU visible: %s", zi_errmsg());
    zi_backend *gpu = zi_backend_cuda_new(0);
    if (!gpu)
        fail_msg("backend: %s", zi_errmsg());
    zi_pipeline *p = NULL;
    if (zi_pipeline_load(zi_test_model(""), gpu, &p) != ZI_OK)
        fail_msg("load: %s", zi_errmsg());
    zi_gen_params gp = zl_params();
    uint8_t *rgb = NULL;
    if (zi_pipeline_generate(p, &gp, NULL, NULL, &rgb) != ZI_OK)
        fail_msg("the job before the fault: %s", zi_errmsg());
    free(rgb);
    rgb = NULL;

    gp.seed = 43; /* another job: nothing of the first is reused */
    int rc = zi_pipeline_generate(p, &gp, zl_fault_and_cancel, gpu, &rgb);
    printf("the job after the fault: %s\n", zi_errmsg());
    assert_int_equal(rc, ZI_EDEVICE);
    assert_null(rgb);
    assert_non_null(strstr(zi_errmsg(), "the GPU failed"));
    assert_non_null(strstr(zi_errmsg(), "cudaErrorIllegalAddress"));

    zi_backend_clear_error(gpu); /* what the next job does first */
    assert_int_equal(gpu->err, ZI_EDEVICE);
    gp.seed = 44;
    rc = zi_pipeline_generate(p, &gp, NULL, NULL, &rgb);
    assert_int_equal(rc, ZI_EDEVICE);
    assert_null(rgb);
    /* an "auto" weight budget re-evaluated (as the headroom plan does) with the device lost
     * fails with the fault, never falls back to "all resident" */
    assert_int_equal(zi_cuda_set_weight_budget_spec(gpu, "auto"), ZI_EDEVICE);
    assert_non_null(strstr(zi_errmsg(), "cudaMemGetInfo"));

    zi_pipeline_free(p);
    zi_backend_destroy(gpu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_loses_the_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else /* !ZI_HAVE_CUDA */

#include <stdio.h>

int main(void)
{
    fprintf(stderr, "test_device_lost: built without CUDA\n");
    return 1;
}

#endif
