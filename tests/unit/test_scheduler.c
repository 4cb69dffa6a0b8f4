/*
 * test_scheduler.c - the flow-matching sigma table against scheduler.json, bit for bit (with
 * the golden checkpoint's own scheduler config), plus the fp32 forms of the model time and
 * the Euler step, and dynamic shifting against a double-precision twin.
 */
#include "config.h"
#include "scheduler.h"
#include "zi_err.h"
#include "zi_test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const zi_sched_config turbo = {.num_train_timesteps = 1000,
                                      .shift = 3.0,
                                      .base_shift = 0.5,
                                      .max_shift = 1.15,
                                      .base_seq_len = 256,
                                      .max_seq_len = 4096};

static void test_scheduler_json_bit_exact(void **state)
{
    (void)state;
    char *text = zi_test_read_file(zi_test_golden("vectors/scheduler.json"));
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    zi_model_config mc;
    if (zi_config_load(zi_test_model(""), &mc) != ZI_OK)
        fail_msg("golden checkpoint config: %s", zi_errmsg());
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
        /* seq is the image sequence length, which only dynamic shifting reads */
        assert_int_equal(zi_sched_sigmas(&mc.sched, n, seq, sig, tim), ZI_OK);
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
    assert_int_equal(zi_sched_sigmas(&turbo, 8, 4096, sig, tim), ZI_OK);
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

/* A static shift between 1 and 2: diffusers computes shift - 1 in Python floats (double)
 * before numpy rounds it to fp32, which differs from fp32(shift) - 1 (1.3: 0.3 against
 * 0.29999995). The expected bits are numpy 1.24's for shift * s / (1 + (shift - 1) * s)
 * on the fp32 base sigmas. */
static void test_static_shift_in_double(void **state)
{
    (void)state;
    static const struct {
        double shift;
        int n, i;
        uint32_t bits;
    } want[] = {
        {1.3, 3, 1, 1060692876u}, /* 0.722222089767456 (fp32 shift - 1: ...1493...) */
        {1.3, 9, 4, 1058961895u}, /* 0.6190475821495056 */
        {1.7, 9, 2, 1062939228u}, /* 0.8561151027679443 */
        {1.1, 3, 1, 1060110336u}, /* 0.6875 */
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        zi_sched_config c = turbo;
        c.shift = want[k].shift;
        float sig[ZI_SCHED_MAX_STEPS + 1], tim[ZI_SCHED_MAX_STEPS];
        assert_int_equal(zi_sched_sigmas(&c, want[k].n, 16, sig, tim), ZI_OK);
        uint32_t got;
        memcpy(&got, &sig[want[k].i], sizeof got);
        if (got != want[k].bits)
            fail_msg("shift %g, %d steps, sigma[%d]: bits %u, numpy %u", want[k].shift, want[k].n,
                     want[k].i, got, want[k].bits);
    }
}

static void test_bad_steps(void **state)
{
    (void)state;
    float sig[2], tim[1];
    assert_int_equal(zi_sched_sigmas(&turbo, 0, 16, sig, tim), ZI_EINVAL);
    assert_true(strstr(zi_errmsg(), "steps") != NULL);
    zi_sched_config dyn = turbo;
    dyn.use_dynamic_shifting = 1;
    assert_int_equal(zi_sched_sigmas(&dyn, 1, 0, sig, tim), ZI_EINVAL); /* no length */
    assert_int_equal(zi_sched_sigmas(&turbo, 1, 0, sig, tim), ZI_OK);   /* static: unused */

    /* ZI_SCHED_MAX_STEPS itself is allowed, one more is not */
    static float big_sig[ZI_SCHED_MAX_STEPS + 2], big_tim[ZI_SCHED_MAX_STEPS + 1];
    assert_int_equal(zi_sched_sigmas(&turbo, ZI_SCHED_MAX_STEPS, 16, big_sig, big_tim), ZI_OK);
    assert_true(big_sig[0] == 1.0f && big_sig[ZI_SCHED_MAX_STEPS] == 0.0f);
    assert_int_equal(zi_sched_sigmas(&turbo, ZI_SCHED_MAX_STEPS + 1, 16, big_sig, big_tim),
                     ZI_EINVAL);
    assert_true(strstr(zi_errmsg(), "steps") != NULL);

    /* the shift must be positive: zero and NaN are refused (NaN compares false with 0) */
    const double bad_shift[] = {0.0, -1.0, NAN};
    for (size_t i = 0; i < sizeof bad_shift / sizeof bad_shift[0]; i++) {
        zi_sched_config c = turbo;
        c.shift = bad_shift[i];
        if (zi_sched_sigmas(&c, 1, 16, sig, tim) != ZI_EINVAL)
            fail_msg("shift %g was taken", bad_shift[i]);
        assert_true(strstr(zi_errmsg(), "bad shift") != NULL);
    }
}

/* Dynamic shifting (FlowMatchEulerDiscreteScheduler with use_dynamic_shifting, as
 * ZImagePipeline drives it): mu = calculate_shift(seq), sigma = e^mu / (e^mu + 1/s - 1)
 * (linear: mu / (mu + 1/s - 1)), checked against the same formulas in double (the fp32
 * forms differ from them by rounding only), and the mu end points. */
static void test_dynamic_shifting(void **state)
{
    (void)state;
    zi_sched_config dyn = turbo;
    dyn.use_dynamic_shifting = 1;
    dyn.shift = 1.0f; /* unused by dynamic shifting */
    assert_true(fabs(zi_sched_mu(&dyn, 256) - 0.5) < 1e-15);
    assert_true(fabs(zi_sched_mu(&dyn, 4096) - 1.15) < 1e-15);
    assert_true(fabs(zi_sched_mu(&dyn, 8192) - (0.5 + 0.65 * 7936.0 / 3840.0)) < 1e-12);
    static const int64_t seqs[] = {16, 256, 576, 1024, 4096, 16384};
    static const int steps[] = {1, 2, 8, 9, 50};
    float sig[51], tim[50];
    for (int lin = 0; lin < 2; lin++)
        for (size_t a = 0; a < sizeof seqs / sizeof seqs[0]; a++)
            for (size_t b = 0; b < sizeof steps / sizeof steps[0]; b++) {
                dyn.time_shift_linear = lin;
                int n = steps[b];
                assert_int_equal(zi_sched_sigmas(&dyn, n, seqs[a], sig, tim), ZI_OK);
                double mu = 0.5 + (double)(seqs[a] - 256) * 0.65 / 3840.0;
                double e = lin ? mu : exp(mu);
                for (int i = 0; i < n; i++) {
                    double s = n == 1 ? 1.0 : 1.0 - (double)i * (1.0 - 1.0 / n) / (n - 1);
                    double want = e / (e + (1.0 / s - 1.0));
                    if (fabs(sig[i] - want) > 4e-7)
                        fail_msg("seq %lld n %d %s: sigma[%d] = %.9g, want %.9g",
                                 (long long)seqs[a], n, lin ? "linear" : "exponential", i,
                                 (double)sig[i], want);
                    assert_true(tim[i] == sig[i] * 1000.0f);
                    if (i)
                        assert_true(sig[i] < sig[i - 1]);
                }
                assert_true(sig[0] == 1.0f);
                assert_true(sig[n] == 0.0f);
            }
    /* a longer image shifts harder (exponential, 8 steps) */
    float lo[9], hi[9], t8[8];
    dyn.time_shift_linear = 0;
    assert_int_equal(zi_sched_sigmas(&dyn, 8, 256, lo, t8), ZI_OK);
    assert_int_equal(zi_sched_sigmas(&dyn, 8, 4096, hi, t8), ZI_OK);
    for (int i = 1; i < 8; i++)
        assert_true(hi[i] > lo[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scheduler_json_bit_exact),
        cmocka_unit_test(test_turbo_table),
        cmocka_unit_test(test_linspace_halves),
        cmocka_unit_test(test_dynamic_shifting),
        cmocka_unit_test(test_static_shift_in_double),
        cmocka_unit_test(test_euler_step),
        cmocka_unit_test(test_bad_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
