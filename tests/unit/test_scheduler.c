/*
 * test_scheduler.c - the flow-matching sigma table against scheduler.json, bit for bit,
 * plus the fp32 forms of the model time and the Euler step.
 */
#include "scheduler.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const zi_sched_config turbo = {.num_train_timesteps = 1000, .shift = 3.0f};

static void test_scheduler_json_bit_exact(void **state)
{
    (void)state;
    char *text = zi_test_read_file(zi_test_golden("vectors/scheduler.json"));
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    int cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, root)
    {
        int n = 0, seq = 0;
        assert_int_equal(sscanf(c->string, "n%d_seq%d", &n, &seq), 2);
        const cJSON *ts = cJSON_GetObjectItem(c, "timesteps");
        const cJSON *sg = cJSON_GetObjectItem(c, "sigmas");
        assert_int_equal(cJSON_GetArraySize(ts), n);
        assert_int_equal(cJSON_GetArraySize(sg), n + 1);
        float *sig = malloc(sizeof(float) * (size_t)(n + 1));
        float *tim = malloc(sizeof(float) * (size_t)n);
        assert_int_equal(zi_sched_sigmas(&turbo, n, sig, tim), ZI_OK);
        for (int i = 0; i <= n; i++) {
            float want = (float)cJSON_GetArrayItem(sg, i)->valuedouble;
            if (sig[i] != want)
                fail_msg("%s: sigma[%d] = %.9g, want %.9g", c->string, i, (double)sig[i],
                         (double)want);
        }
        for (int i = 0; i < n; i++) {
            float want = (float)cJSON_GetArrayItem(ts, i)->valuedouble;
            if (tim[i] != want)
                fail_msg("%s: timestep[%d] = %.9g, want %.9g", c->string, i, (double)tim[i],
                         (double)want);
        }
        free(sig);
        free(tim);
        cases++;
    }
    assert_true(cases >= 8);
    cJSON_Delete(root);
    free(text);
}

/* Spec section 4.1 table for N = 8: model times and dt in fp32. */
static void test_turbo_table(void **state)
{
    (void)state;
    float sig[9], tim[8];
    assert_int_equal(zi_sched_sigmas(&turbo, 8, sig, tim), ZI_OK);
    assert_true(sig[0] == 1.0f && sig[4] == 0.75f && sig[6] == 0.5f && sig[8] == 0.0f);
    assert_true(zi_sched_model_time(tim[0]) == 0.0f);
    assert_true(zi_sched_model_time(tim[2]) == 0.1f);
    assert_true(zi_sched_model_time(tim[6]) == 0.5f);
    assert_true(fabsf(zi_sched_model_time(tim[1]) - 0.045454592f) < 1e-9f);
}

static void test_linspace_halves(void **state)
{
    (void)state;
    float v[20];
    zi_sched_linspace_f32(1.0f, 0.05f, 20, v);
    assert_true(v[0] == 1.0f);
    assert_true(v[19] == 0.05f);
    zi_sched_linspace_f32(1.0f, 1.0f, 1, v);
    assert_true(v[0] == 1.0f);
}

static void test_euler_step(void **state)
{
    (void)state;
    float x[3] = {1.0f, -2.0f, 0.5f};
    const float out[3] = {0.25f, 1.0f, -3.0f};
    zi_sched_euler_step(x, out, 1.0f, 0.75f, 3);
    /* dt = -0.25, v = -out */
    assert_true(x[0] == 1.0f + 0.0625f);
    assert_true(x[1] == -2.0f + 0.25f);
    assert_true(x[2] == 0.5f - 0.75f);
}

static void test_bad_steps(void **state)
{
    (void)state;
    float sig[2], tim[1];
    assert_int_equal(zi_sched_sigmas(&turbo, 0, sig, tim), ZI_EINVAL);
    assert_true(strstr(zi_errmsg(), "steps") != NULL);
    zi_sched_config dyn = turbo;
    dyn.use_dynamic_shifting = 1;
    assert_int_equal(zi_sched_sigmas(&dyn, 1, sig, tim), ZI_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scheduler_json_bit_exact),
        cmocka_unit_test(test_turbo_table),
        cmocka_unit_test(test_linspace_halves),
        cmocka_unit_test(test_euler_step),
        cmocka_unit_test(test_bad_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
