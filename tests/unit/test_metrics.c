/*
 * test_metrics.c - the Prometheus registry: exact exposition lines, cumulative histogram
 * buckets with _sum/_count, label escaping, registration errors, thread safety, and the
 * worker's contract metric names.
 */
#include "zi_test.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "zi_err.h"

static char *zi_render(zi_metrics *m)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(zi_metrics_render(m, &text, &len), ZI_OK);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    return text;
}

static void test_counter_gauge_exact(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    assert_non_null(m);
    zi_metric *c, *g, *u;
    assert_int_equal(zi_metrics_counter(m, "zimage_jobs_total", "Jobs finished.", "outcome", &c),
                     ZI_OK);
    assert_int_equal(zi_metrics_gauge(m, "zimage_consumer_lag", "Lag.", NULL, &g), ZI_OK);
    assert_int_equal(zi_metrics_counter(m, "plain_total", "Line1\nback\\slash", NULL, &u), ZI_OK);
    zi_metric_inc(c, "succeeded");
    zi_metric_inc(c, "succeeded");
    zi_metric_add(c, "failed", 0);
    zi_metric_add(c, "failed", -5);  /* ignored: counters never go down */
    zi_metric_add(c, "failed", NAN); /* ignored too: NaN would poison the total */
    zi_metric_add(c, "we\"ird\\label\n", 0.5);
    zi_metric_set(g, NULL, 42);
    zi_metric_gauge_add(g, NULL, -2.5);
    char *text = zi_render(m);
    assert_string_equal(text, "# HELP zimage_jobs_total Jobs finished.\n"
                              "# TYPE zimage_jobs_total counter\n"
                              "zimage_jobs_total{outcome=\"succeeded\"} 2\n"
                              "zimage_jobs_total{outcome=\"failed\"} 0\n"
                              "zimage_jobs_total{outcome=\"we\\\"ird\\\\label\\n\"} 0.5\n"
                              "# HELP zimage_consumer_lag Lag.\n"
                              "# TYPE zimage_consumer_lag gauge\n"
                              "zimage_consumer_lag 39.5\n"
                              "# HELP plain_total Line1\\nback\\\\slash\n"
                              "# TYPE plain_total counter\n"
                              "plain_total 0\n");
    free(text);
    assert_true(zi_metric_value(c, "succeeded") == 2.0);
    assert_true(zi_metric_value(c, "failed") == 0.0);
    assert_true(zi_metric_value(c, "absent") == 0.0);
    assert_true(zi_metric_value(g, NULL) == 39.5);
    zi_metrics_destroy(m);
}

static void test_histogram_cumulative(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_metric *h;
    const double b[] = {0.125, 0.5, 1};
    assert_int_equal(zi_metrics_histogram(m, "step_seconds", "Steps.", b, 3, &h), ZI_OK);
    /* binary-exact values so the sum has one exact spelling */
    zi_metric_observe(h, 0.0625); /* le 0.125 */
    zi_metric_observe(h, 0.125);  /* le 0.125 (bounds are inclusive) */
    zi_metric_observe(h, 0.25);   /* le 0.5 */
    zi_metric_observe(h, 2);      /* +Inf only */
    char *text = zi_render(m);
    assert_string_equal(text, "# HELP step_seconds Steps.\n"
                              "# TYPE step_seconds histogram\n"
                              "step_seconds_bucket{le=\"0.125\"} 2\n"
                              "step_seconds_bucket{le=\"0.5\"} 3\n"
                              "step_seconds_bucket{le=\"1\"} 3\n"
                              "step_seconds_bucket{le=\"+Inf\"} 4\n"
                              "step_seconds_sum 2.4375\n"
                              "step_seconds_count 4\n");
    free(text);
    assert_true(zi_metric_value(h, NULL) == 4.0);
    zi_metrics_destroy(m);
}

static void test_registration_errors(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_metric *x;
    assert_int_equal(zi_metrics_counter(m, "1bad", "", NULL, &x), ZI_EINVAL);
    assert_int_equal(zi_metrics_counter(m, "bad-name", "", NULL, &x), ZI_EINVAL);
    assert_int_equal(zi_metrics_counter(m, "ok", "", "bad label", &x), ZI_EINVAL);
    assert_int_equal(zi_metrics_counter(m, "ok", "", "le", &x), ZI_EINVAL);
    assert_int_equal(zi_metrics_counter(m, "ok", "", NULL, &x), ZI_OK);
    assert_int_equal(zi_metrics_gauge(m, "ok", "", NULL, &x), ZI_EINVAL); /* duplicate */
    const double unsorted[] = {1, 0.5};
    assert_int_equal(zi_metrics_histogram(m, "h", "", unsorted, 2, &x), ZI_EINVAL);
    assert_int_equal(zi_metrics_histogram(m, "h", "", unsorted, 0, &x), ZI_EINVAL);
    const double dup[] = {1, 1}; /* two le="1" buckets: strictly increasing only */
    assert_int_equal(zi_metrics_histogram(m, "h", "", dup, 2, &x), ZI_EINVAL);
    const double inc[] = {1, 1.5};
    assert_int_equal(zi_metrics_histogram(m, "h", "", inc, 2, &x), ZI_OK);
    zi_metrics_destroy(m);
}

static void test_children_capped(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_metric *c;
    assert_int_equal(zi_metrics_counter(m, "c_total", "", "l", &c), ZI_OK);
    char lv[16];
    for (int i = 0; i < ZI_METRICS_MAX_CHILDREN + 10; i++) {
        snprintf(lv, sizeof lv, "v%d", i);
        zi_metric_inc(c, lv);
    }
    char *text = zi_render(m);
    int lines = 0;
    for (char *p = text; (p = strstr(p, "c_total{")) != NULL; p++)
        lines++;
    assert_int_equal(lines, ZI_METRICS_MAX_CHILDREN);
    free(text);
    zi_metrics_destroy(m);
}

typedef struct {
    zi_metric *c;
    zi_metric *h;
} zi_thr_arg;

static void *zi_thr(void *p)
{
    zi_thr_arg *a = p;
    for (int i = 0; i < 10000; i++) {
        zi_metric_inc(a->c, "x");
        zi_metric_observe(a->h, 1.0);
    }
    return NULL;
}

static void test_thread_safety(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_thr_arg a;
    const double b[] = {0.5, 2};
    assert_int_equal(zi_metrics_counter(m, "t_total", "", "l", &a.c), ZI_OK);
    assert_int_equal(zi_metrics_histogram(m, "t_h", "", b, 2, &a.h), ZI_OK);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, zi_thr, &a), 0);
    for (int i = 0; i < 4; i++) {
        char *text = zi_render(m); /* scrapes while writers run */
        free(text);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_true(zi_metric_value(a.c, "x") == 40000.0);
    char *text = zi_render(m);
    assert_non_null(strstr(text, "t_h_bucket{le=\"0.5\"} 0\n"));
    assert_non_null(strstr(text, "t_h_bucket{le=\"2\"} 40000\n"));
    assert_non_null(strstr(text, "t_h_sum 40000\n"));
    assert_non_null(strstr(text, "t_h_count 40000\n"));
    free(text);
    zi_metrics_destroy(m);
}

static void test_worker_metrics(void **state)
{
    (void)state;
    zi_metrics *m = zi_metrics_create();
    zi_worker_metrics wm;
    assert_int_equal(zi_metrics_register_worker(m, &wm), ZI_OK);
    zi_metric_observe(wm.job_duration, 3.0);
    zi_metric_observe(wm.step_duration, 0.2);
    zi_metric_set(wm.worker_busy, NULL, 1);
    zi_metric_set(wm.gpu_memory, "peak", 1073741824.0);
    zi_metric_inc(wm.jobs_total, "succeeded");
    zi_metric_inc(wm.job_failures, "s3_auth");
    char *text = zi_render(m);
    const char *want[] = {
        "# TYPE zimage_jobs_total counter\n",
        "zimage_jobs_total{outcome=\"succeeded\"} 1\n",
        "zimage_jobs_total{outcome=\"failed\"} 0\n",
        "zimage_jobs_total{outcome=\"cancelled\"} 0\n",
        "zimage_jobs_total{outcome=\"superseded\"} 0\n",
        "# TYPE zimage_job_duration_seconds histogram\n",
        "zimage_job_duration_seconds_bucket{le=\"2\"} 0\n",
        "zimage_job_duration_seconds_bucket{le=\"5\"} 1\n",
        "zimage_job_duration_seconds_count 1\n",
        "# TYPE zimage_step_duration_seconds histogram\n",
        "zimage_step_duration_seconds_bucket{le=\"0.25\"} 1\n",
        "zimage_step_duration_seconds_sum 0.2\n",
        "# TYPE zimage_consumer_lag gauge\n",
        "zimage_consumer_lag 0\n",
        "zimage_gpu_memory_bytes{kind=\"reserved\"} 0\n",
        "zimage_gpu_memory_bytes{kind=\"allocated\"} 0\n",
        "zimage_gpu_memory_bytes{kind=\"peak\"} 1073741824\n",
        "zimage_gpu_memory_bytes{kind=\"total\"} 0\n",
        "zimage_gpu_memory_bytes{kind=\"free\"} 0\n",
        "zimage_worker_busy 1\n",
        "# TYPE zimage_job_failures_total counter\n",
        "zimage_job_failures_total{error_code=\"s3_auth\"} 1\n",
        /* every error_code from the start (an alert's increase() sees the first one) */
        "zimage_job_failures_total{error_code=\"invalid_job\"} 0\n",
        "zimage_job_failures_total{error_code=\"oom\"} 0\n",
        "zimage_job_failures_total{error_code=\"too_many_attempts\"} 0\n",
        "# TYPE zimage_worker_id_conflicts_total counter\n",
        "zimage_worker_id_conflicts_total 0\n",
        "# TYPE zimage_weight_bytes gauge\n",
        "zimage_weight_bytes{where=\"device\"} 0\n",
        "zimage_weight_bytes{where=\"mapped\"} 0\n",
        "# TYPE zimage_weight_prefetch_total counter\n",
        "zimage_weight_prefetch_total{result=\"hit\"} 0\n",
        "zimage_weight_prefetch_total{result=\"miss\"} 0\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i]))
            fail_msg("missing line: %s\nin:\n%s", want[i], text);
    free(text);
    zi_metrics_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_gauge_exact), cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_registration_errors), cmocka_unit_test(test_children_capped),
        cmocka_unit_test(test_thread_safety),       cmocka_unit_test(test_worker_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
