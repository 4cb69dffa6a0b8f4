/*
 * test_top_render.c - `zimage top` without Redis or a terminal: human units, the `lost` rule,
 * sanitizing of strings read from Redis, and the rendered frame (columns, width and height
 * limits, colour codes only when asked for). The Redis side is tests/integration/test_top.sh.
 */
#include "top.h"
#include "zi_err.h"
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_human_bytes(void **state)
{
    (void)state;
    char b[32];
    struct {
        long long in;
        const char *want;
    } cases[] = {
        {-1, "-"},
        {0, "0B"},
        {1023, "1023B"},
        {1536, "1.5K"},
        {21LL << 30, "21G"},
        {80LL << 30, "80G"},
        {(long long)(9.99 * (1LL << 30)), "10G"},
        {3LL << 40, "3.0T"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        zi_top_human_bytes(cases[i].in, b, sizeof b);
        assert_string_equal(b, cases[i].want);
    }
}

static void test_human_age(void **state)
{
    (void)state;
    char b[32];
    zi_top_human_age(400, b, sizeof b);
    assert_string_equal(b, "0.4s");
    zi_top_human_age(-50, b, sizeof b); /* a clock slightly ahead */
    assert_string_equal(b, "0.0s");
    zi_top_human_age(9900, b, sizeof b); /* tenths below 10 s, whole seconds from 10 s */
    assert_string_equal(b, "9.9s");
    zi_top_human_age(9999, b, sizeof b); /* cut, not rounded up to "10.0s" */
    assert_string_equal(b, "9.9s");
    zi_top_human_age(1250, b, sizeof b);
    assert_string_equal(b, "1.2s");
    zi_top_human_age(10000, b, sizeof b);
    assert_string_equal(b, "10s");
    zi_top_human_age(42000, b, sizeof b);
    assert_string_equal(b, "42s");
    zi_top_human_age(12 * 60000 + 5, b, sizeof b);
    assert_string_equal(b, "12m");
    zi_top_human_age(3 * 3600000LL + 1, b, sizeof b);
    assert_string_equal(b, "3h");
    zi_top_human_age(2 * 86400000LL, b, sizeof b);
    assert_string_equal(b, "2d");
}

static void test_worker_state(void **state)
{
    (void)state;
    const int64_t now = 1700000000000LL;
    zi_top_worker w = {.heartbeat_ms = now - 15000, .has_hash = 1, .state = "busy"};
    /* lost means older than 3 x heartbeat_s: exactly 3 x is still alive */
    assert_string_equal(zi_top_worker_state(&w, now, 5), "busy");
    w.heartbeat_ms = now - 15001;
    assert_string_equal(zi_top_worker_state(&w, now, 5), "lost");
    /* the hash may still say ready: the heartbeat wins */
    w.state = "ready";
    assert_string_equal(zi_top_worker_state(&w, now, 5), "lost");
    w.heartbeat_ms = now;
    w.has_hash = 0;
    assert_string_equal(zi_top_worker_state(&w, now, 5), "unknown");
}

static void test_sanitize(void **state)
{
    (void)state;
    char *s = zi_top_sanitize("a\x1b[2Jb\x7f", 7);
    assert_string_equal(s, "a?[2Jb?");
    free(s);
    s = zi_top_sanitize("caf\xc3\xa9 \xff \xc2\x9b x", 12); /* é kept; bad byte, C1 CSI not */
    assert_string_equal(s, "caf\xc3\xa9 ? ? x");
    free(s);
    s = zi_top_sanitize("\xe2\x82", 2); /* a cut sequence */
    assert_string_equal(s, "??");
    free(s);
    char big[ZI_TOP_STR_MAX * 2];
    memset(big, 'x', sizeof big);
    s = zi_top_sanitize(big, sizeof big);
    assert_int_equal(strlen(s), ZI_TOP_STR_MAX);
    free(s);
}

/* A fleet: a busy worker at step 3/8, a lost one, one whose id tries to drive the terminal. */
static void make_snapshot(zi_top_snapshot *s, int64_t now)
{
    static zi_top_worker w[3];
    static zi_top_event ev[3], fail[1];
    memset(s, 0, sizeof *s);
    memset(w, 0, sizeof w);
    s->now_ms = now;
    s->heartbeat_s = 5;
    snprintf(s->redis_addr, sizeof s->redis_addr, "127.0.0.1:6379/0");
    snprintf(s->prefix, sizeof s->prefix, "zimage:");
    w[0] = (zi_top_worker){.id = "gpu-0",
                           .heartbeat_ms = now - 1200,
                           .has_hash = 1,
                           .state = "busy",
                           .current_job = "job-42",
                           .backend = "cuda",
                           .gpu_name = "NVIDIA H100 80GB HBM3",
                           .jobs_succeeded = 12,
                           .jobs_failed = 1,
                           .vram_total = 80LL << 30,
                           .vram_free = 50LL << 30,
                           .alloc_reserved = 22LL << 30,
                           .alloc_allocated = 21LL << 30,
                           .alloc_peak = 23LL << 30,
                           .job_step = 3,
                           .job_steps = 8,
                           .job_progress = 0.375};
    w[1] = (zi_top_worker){.id = "gpu-1",
                           .heartbeat_ms = now - 60000,
                           .state = "",
                           .current_job = "",
                           .backend = "",
                           .gpu_name = "",
                           .jobs_succeeded = -1,
                           .jobs_failed = -1,
                           .vram_total = -1,
                           .vram_free = -1,
                           .alloc_reserved = -1,
                           .alloc_allocated = -1,
                           .alloc_peak = -1,
                           .job_step = -1,
                           .job_steps = -1,
                           .job_progress = -1};
    w[2] = w[1];
    w[2].id = "evil\x1b]0;owned\x07";
    w[2].heartbeat_ms = now;
    w[2].has_hash = 1;
    w[2].state = "ready";
    s->workers = w;
    s->nworkers = s->workers_total = 3;
    ev[0] = (zi_top_event){now - 1000, "job-42", "running", "gpu-0", "", ""};
    ev[1] = (zi_top_event){now - 2000, "job-41", "failed", "gpu-0", "oom", ""};
    ev[2] = (zi_top_event){now - 3000, "job-40", "succeeded", "gpu-0", "", ""};
    fail[0] = (zi_top_event){now - 2000, "job-41", "failed", "gpu-0", "oom", "out of memory"};
    s->events = ev;
    s->nevents = 3;
    s->failures = fail;
    s->nfailures = 1;
    s->finished_last_min = 2;
    s->succeeded_last_min = 1;
    s->failed_last_min = 1;
}

static const char *find_line(const zi_top_frame *f, const char *prefix)
{
    for (size_t i = 0; i < f->n; i++)
        if (strncmp(f->lines[i], prefix, strlen(prefix)) == 0)
            return f->lines[i];
    return NULL;
}

/* Columns of a line: code points outside ESC [ ... m sequences. */
static size_t visible_cols(const char *s)
{
    size_t c = 0;
    while (*s) {
        if (*s == '\033') {
            while (*s && *s != 'm')
                s++;
            if (*s)
                s++;
            continue;
        }
        if (((unsigned char)*s & 0xc0) != 0x80)
            c++;
        s++;
    }
    return c;
}

static void test_render_plain(void **state)
{
    (void)state;
    zi_top_snapshot s;
    make_snapshot(&s, 1700000000000LL);
    zi_top_view v = {.max_events = -1, .max_failures = -1, .pruned_total = 2};
    zi_top_frame f;
    assert_int_equal(zi_top_render(&s, &v, &f), ZI_OK);
    for (size_t i = 0; i < f.n; i++) {
        assert_null(strchr(f.lines[i], '\033'));
        assert_null(strchr(f.lines[i], '\a'));
    }
    assert_non_null(find_line(&f, "zimage top "));
    assert_non_null(strstr(f.lines[0], "redis 127.0.0.1:6379/0"));
    assert_null(strstr(f.lines[0], "q to quit")); /* one frame: no key help */
    assert_non_null(find_line(&f, "workers 3: 1 ready, 1 busy, 1 lost, 0 other; pruned 2"));
    const char *busy = find_line(&f, "gpu-0 ");
    assert_non_null(busy);
    const char *want[] = {" busy ",    " cuda ", " H100 80GB HBM3 ",
                          " job-42 ",  " 3/8 ",  " 38% ",
                          " 30G/80G ", " 22G ",  " 21G ",
                          " 23G ",     " 12 ",   " 1.2s"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(busy, want[i]))
            fail_msg("busy row '%s' lacks '%s'", busy, want[i]);
    const char *lost = find_line(&f, "gpu-1 ");
    assert_non_null(lost);
    assert_non_null(strstr(lost, " lost "));
    assert_non_null(strstr(lost, " 1m"));
    assert_non_null(find_line(&f, "evil?]0;owned? ready "));
    assert_non_null(strstr(f.lines[1], "jobs/min 2 (1 succeeded, 1 failed)"));
    /* recent jobs newest first, failures with their message */
    const char *r1 = NULL, *r3 = NULL;
    for (size_t i = 0; i < f.n; i++) {
        if (strstr(f.lines[i], " job-42 ") && strstr(f.lines[i], " running "))
            r1 = f.lines[i];
        if (strstr(f.lines[i], " job-40 ") && strstr(f.lines[i], " succeeded "))
            r3 = f.lines[i];
    }
    assert_non_null(r1);
    assert_non_null(r3);
    size_t i1 = 0, i3 = 0;
    for (size_t i = 0; i < f.n; i++) {
        if (f.lines[i] == r1)
            i1 = i;
        if (f.lines[i] == r3)
            i3 = i;
    }
    assert_true(i1 < i3);
    int has_fail = 0;
    for (size_t i = 0; i < f.n; i++)
        has_fail |= strstr(f.lines[i], "job-41") && strstr(f.lines[i], "oom") &&
                    strstr(f.lines[i], "out of memory");
    assert_true(has_fail);
    zi_top_frame_free(&f);
}

static void test_render_limits(void **state)
{
    (void)state;
    zi_top_snapshot s;
    make_snapshot(&s, 1700000000000LL);
    zi_top_frame f;
    /* width: every line cut to 40 columns, also with colour codes */
    for (int color = 0; color <= 1; color++) {
        zi_top_view v = {.width = 40, .color = color, .max_events = -1, .max_failures = -1};
        assert_int_equal(zi_top_render(&s, &v, &f), ZI_OK);
        int saw_esc = 0;
        for (size_t i = 0; i < f.n; i++) {
            if (visible_cols(f.lines[i]) > 40)
                fail_msg("line %zu has %zu columns: '%s'", i, visible_cols(f.lines[i]), f.lines[i]);
            saw_esc |= strchr(f.lines[i], '\033') != NULL;
            /* a colour is always reset on the same line */
            const char *last = strrchr(f.lines[i], '\033');
            if (last)
                assert_int_equal(strncmp(last, "\033[0m", 4), 0);
        }
        assert_int_equal(saw_esc, color);
        zi_top_frame_free(&f);
    }
    /* height: the frame stops at 6 lines */
    zi_top_view v = {.height = 6, .max_events = -1, .max_failures = -1};
    assert_int_equal(zi_top_render(&s, &v, &f), ZI_OK);
    assert_int_equal(f.n, 6);
    zi_top_frame_free(&f);
    /* max_events: one recent job only */
    zi_top_view v1 = {.max_events = 1, .max_failures = 0};
    assert_int_equal(zi_top_render(&s, &v1, &f), ZI_OK);
    int n40 = 0, n42 = 0;
    for (size_t i = 0; i < f.n; i++) {
        n40 += strstr(f.lines[i], "job-40") != NULL;
        n42 += strstr(f.lines[i], "job-42") != NULL; /* the busy row and the newest event */
    }
    assert_int_equal(n40, 0);
    assert_int_equal(n42, 2);
    zi_top_frame_free(&f);
}

/* A worker id longer than its column's 32: cut to 31 columns and '~', so every later column
 * of its row starts where the header's does. */
static void test_render_long_id(void **state)
{
    (void)state;
    zi_top_snapshot s;
    make_snapshot(&s, 1700000000000LL);
    zi_top_worker w[2] = {s.workers[0], s.workers[0]};
    w[1].id = "worker-0123456789abcdefghijklmnopqrstuvw"; /* 40 columns */
    assert_int_equal(strlen(w[1].id), 40);
    s.workers = w;
    s.nworkers = s.workers_total = 2;
    zi_top_view v = {.max_events = -1, .max_failures = -1};
    zi_top_frame f;
    assert_int_equal(zi_top_render(&s, &v, &f), ZI_OK);
    const char *head = find_line(&f, "WORKER "), *row0 = find_line(&f, "gpu-0 "),
               *row1 = find_line(&f, "worker-0123");
    assert_non_null(head);
    assert_non_null(row0);
    assert_non_null(row1);
    assert_int_equal(strncmp(row1, "worker-0123456789abcdefghijklmn~ busy ", 38), 0);
    const char *state_col = strstr(head, "STATE");
    assert_non_null(state_col);
    assert_int_equal(state_col - head, 33); /* 32 columns and a space */
    assert_int_equal(strstr(row0, "busy") - row0, 33);
    assert_int_equal(strstr(row1, "busy") - row1, 33);
    assert_int_equal(strlen(row1), strlen(row0)); /* the same cells after the id */
    assert_int_equal(visible_cols(row1), visible_cols(row0));
    zi_top_frame_free(&f);
}

static void test_render_empty(void **state)
{
    (void)state;
    zi_top_snapshot s;
    memset(&s, 0, sizeof s);
    s.now_ms = 1700000000000LL;
    s.heartbeat_s = 5;
    snprintf(s.prefix, sizeof s.prefix, "p:");
    snprintf(s.error, sizeof s.error, "redis 127.0.0.1:6379: cannot connect");
    zi_top_view v = {.interval_s = 2, .max_events = -1, .max_failures = -1};
    zi_top_frame f;
    assert_int_equal(zi_top_render(&s, &v, &f), ZI_OK);
    assert_non_null(strstr(f.lines[0], "every 2s, q to quit"));
    assert_non_null(find_line(&f, "redis error: redis 127.0.0.1:6379: cannot connect"));
    assert_non_null(find_line(&f, "(no workers in p:workers)"));
    assert_non_null(find_line(&f, "(no events in p:events)"));
    zi_top_frame_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_human_bytes),    cmocka_unit_test(test_human_age),
        cmocka_unit_test(test_worker_state),   cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_render_plain),   cmocka_unit_test(test_render_limits),
        cmocka_unit_test(test_render_long_id), cmocka_unit_test(test_render_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
