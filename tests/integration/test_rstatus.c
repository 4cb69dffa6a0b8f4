/*
 * test_rstatus.c - worker/rstatus.c against a real Redis: every contract key and field,
 * TTLs, the events stream, attempts, rate-limited progress, writes fenced by a run's
 * attempt, lease exclusivity between two connections, renew/release only while ours, lease
 * expiry, cancel flags, heartbeats (and the token each reads back), AUTH + SELECT, and
 * surviving a Redis restart (ZI_ETRANSIENT meanwhile, then reconnect).
 *
 * Redis: the local stack's (ZI_REDIS_URL + ZI_STACK_DIR from `deploy/local/stack.sh env`;
 * restarted with stack.sh stop-redis/start-redis), else a private redis-server started
 * here on a free port in a scratch directory (restarted by this test). The AUTH test always
 * uses a private server with --requirepass. Everything started here is stopped here.
 */
#include "zi_test.h"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rstatus.h"
#include "zi_err.h"

/* ---- a private redis-server ---- */

typedef struct zi_redis_proc {
    pid_t pid;
    int port;
    char dir[64];
    char pass[64];
} zi_redis_proc;

static int zi_free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &l) != 0)
        fail_msg("cannot find a free port");
    int port = ntohs(a.sin_port);
    close(s);
    return port;
}

static int zi_redis_pings(int port, const char *pass)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    int ok = 0;
    if (c && !c->err) {
        redisReply *r = pass && *pass ? redisCommand(c, "AUTH %s", pass) : NULL;
        if (r)
            freeReplyObject(r);
        r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r)
            freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return ok;
}

static void zi_redis_start(zi_redis_proc *p)
{
    char ports[16], logf[128];
    snprintf(ports, sizeof ports, "%d", p->port);
    snprintf(logf, sizeof logf, "%s/redis.log", p->dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* dies with this test even when it crashes; never holds the test's stdout */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        if (p->pass[0])
            execlp("redis-server", "redis-server", "--port", ports, "--bind", "127.0.0.1", "--save",
                   "", "--appendonly", "no", "--dir", p->dir, "--logfile", logf, "--requirepass",
                   p->pass, (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--port", ports, "--bind", "127.0.0.1", "--save",
                   "", "--appendonly", "no", "--dir", p->dir, "--logfile", logf, (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    for (int i = 0; i < 250; i++) { /* up to 5 s */
        if (zi_redis_pings(p->port, p->pass))
            return;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            p->pid = 0;
            fail_msg("redis-server exited at start-up (see %s)", logf);
        }
        usleep(20000);
    }
    fail_msg("redis-server on port %d did not answer within 5 s (see %s)", p->port, logf);
}

static void zi_redis_stop(zi_redis_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        int st;
        waitpid(p->pid, &st, 0);
        p->pid = 0;
    }
}

static void zi_redis_private(zi_redis_proc *p, const char *pass)
{
    memset(p, 0, sizeof *p);
    snprintf(p->dir, sizeof p->dir, "/tmp/zi_rstatus_XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    snprintf(p->pass, sizeof p->pass, "%s", pass ? pass : "");
    p->port = zi_free_port();
    zi_redis_start(p);
}

static void zi_redis_private_done(zi_redis_proc *p)
{
    zi_redis_stop(p);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p->dir);
    zi_test_run(cmd, NULL, 0);
}

/* ---- the Redis under test ---- */

static zi_redis_proc zi_priv;  /* used when there is no stack */
static zi_redis_proc zi_authp; /* the AUTH test's server (stopped in teardown if a check fails) */
static char zi_url[256];
static int zi_use_stack;
static char zi_ns[64]; /* unique per run: job ids and worker ids */

static int zi_setup(void **state)
{
    (void)state;
    const char *url = getenv("ZI_REDIS_URL");
    const char *dir = getenv("ZI_STACK_DIR");
    if (url && *url && dir && *dir) {
        zi_use_stack = 1;
        snprintf(zi_url, sizeof zi_url, "%s", url);
    } else {
        zi_redis_private(&zi_priv, NULL);
        snprintf(zi_url, sizeof zi_url, "redis://127.0.0.1:%d/0", zi_priv.port);
    }
    snprintf(zi_ns, sizeof zi_ns, "t%ld-%ld", (long)getpid(), (long)time(NULL));
    return 0;
}

static int zi_teardown(void **state)
{
    (void)state;
    if (!zi_use_stack)
        zi_redis_private_done(&zi_priv);
    else /* never leave the shared stack without Redis, whatever failed above */
        zi_test_run("deploy/local/stack.sh start-redis >/dev/null 2>&1", NULL, 0);
    if (zi_authp.pid > 0)
        zi_redis_private_done(&zi_authp);
    return 0;
}

static void zi_redis_restart_stop(void)
{
    if (zi_use_stack) {
        char out[4096];
        int rc = zi_test_run("deploy/local/stack.sh stop-redis 2>&1", out, sizeof out);
        if (rc != 0)
            fail_msg("stack.sh stop-redis failed: %s", out);
    } else {
        zi_redis_stop(&zi_priv);
    }
}

static void zi_redis_restart_start(void)
{
    if (zi_use_stack) {
        char out[4096];
        int rc = zi_test_run("deploy/local/stack.sh start-redis 2>&1", out, sizeof out);
        if (rc != 0)
            fail_msg("stack.sh start-redis failed: %s", out);
    } else {
        zi_redis_start(&zi_priv);
    }
}

static zi_rstatus *zi_open(const char *worker, const char *prefix)
{
    zi_rstatus_config cfg = {.url = zi_url,
                             .key_prefix = prefix,
                             .worker_id = worker,
                             .job_ttl_s = 600,
                             .heartbeat_s = 5};
    zi_rstatus *rs = NULL;
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_OK);
    assert_int_equal(zi_rstatus_ping(rs), ZI_OK);
    return rs;
}

static redisReply *zi_cmd(zi_rstatus *rs, int argc, const char **argv)
{
    void *r = NULL;
    int rc = zi_rstatus_command(rs, argc, argv, &r);
    if (rc != ZI_OK)
        fail_msg("%s: %s", argv[0], zi_errmsg());
    return r;
}

static long long zi_ttl(zi_rstatus *rs, const char *key)
{
    const char *argv[] = {"TTL", key};
    redisReply *r = zi_cmd(rs, 2, argv);
    long long t = r->integer;
    zi_rstatus_reply_free(r);
    return t;
}

static void zi_del(zi_rstatus *rs, const char *key)
{
    const char *argv[] = {"DEL", key};
    zi_rstatus_reply_free(zi_cmd(rs, 2, argv));
}

/* The newest event for job_id in zimage:events: field -> value lookup. */
static int zi_find_event(zi_rstatus *rs, const char *job_id, const char *status, const char *field,
                         char *val, size_t cap)
{
    const char *argv[] = {"XREVRANGE", "zimage:events", "+", "-", "COUNT", "200"};
    redisReply *r = zi_cmd(rs, 6, argv);
    int found = 0;
    for (size_t i = 0; i < r->elements && !found; i++) {
        redisReply *kv = r->element[i]->element[1];
        const char *jid = NULL, *st = NULL, *fv = NULL;
        for (size_t k = 0; k + 1 < kv->elements; k += 2) {
            const char *name = kv->element[k]->str;
            if (strcmp(name, "job_id") == 0)
                jid = kv->element[k + 1]->str;
            if (strcmp(name, "status") == 0)
                st = kv->element[k + 1]->str;
            if (field && strcmp(name, field) == 0)
                fv = kv->element[k + 1]->str;
        }
        if (jid && st && strcmp(jid, job_id) == 0 && strcmp(st, status) == 0) {
            found = 1;
            if (field) {
                snprintf(val, cap, "%s", fv ? fv : "");
                found = fv != NULL;
            }
        }
    }
    zi_rstatus_reply_free(r);
    return found;
}

/* ---- tests ---- */

static double zi_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void test_job_hash_and_events(void **state)
{
    (void)state;
    char wid[96], jid[96], key[256];
    snprintf(wid, sizeof wid, "w-%s", zi_ns);
    snprintf(jid, sizeof jid, "job-%s", zi_ns);
    snprintf(key, sizeof key, "zimage:job:%s", jid);
    zi_rstatus *rs = zi_open(wid, "zimage:");
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)zi_rstatus_now_ms());

    zi_rstatus_field q[] = {{"queued_at", now}, {"steps", "8"}};
    assert_int_equal(zi_rstatus_set_status(rs, jid, "queued", NULL, NULL, q, 2), ZI_OK);
    zi_rstatus_hash h;
    assert_int_equal(zi_rstatus_job_get(rs, jid, &h), ZI_OK);
    assert_string_equal(zi_rstatus_hash_get(&h, "status"), "queued");
    assert_string_equal(zi_rstatus_hash_get(&h, "worker"), wid);
    assert_string_equal(zi_rstatus_hash_get(&h, "queued_at"), now);
    /* every contract field is present; no failure: empty */
    assert_string_equal(zi_rstatus_hash_get(&h, "error_code"), "");
    assert_string_equal(zi_rstatus_hash_get(&h, "error"), "");
    zi_rstatus_hash_free(&h);
    long long ttl = zi_ttl(rs, key);
    assert_true(ttl > 590 && ttl <= 600);
    char v[64];
    assert_true(zi_find_event(rs, jid, "queued", "worker", v, sizeof v));
    assert_string_equal(v, wid);

    assert_int_equal(zi_rstatus_set_status(rs, jid, "failed", "s3_auth", "403 denied", NULL, 0),
                     ZI_OK);
    char buf[128];
    assert_int_equal(zi_rstatus_job_field(rs, jid, "error_code", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "s3_auth");
    assert_int_equal(zi_rstatus_job_field(rs, jid, "error", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "403 denied");
    assert_true(zi_find_event(rs, jid, "failed", "error_code", v, sizeof v));
    assert_string_equal(v, "s3_auth");
    /* no error_code on non-failure events */
    assert_false(zi_find_event(rs, jid, "queued", "error_code", v, sizeof v));

    /* a later run drops the stale error (the fields stay, empty) */
    assert_int_equal(zi_rstatus_set_status(rs, jid, "running", NULL, NULL, NULL, 0), ZI_OK);
    assert_int_equal(zi_rstatus_job_field(rs, jid, "error_code", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "");
    assert_int_equal(zi_rstatus_job_field(rs, jid, "error", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "");
    assert_int_equal(zi_rstatus_job_field(rs, jid, "status", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "running");
    assert_int_equal(zi_rstatus_job_field(rs, jid, "status", buf, 3), ZI_EINVAL);

    /* plain field writes keep the TTL armed */
    zi_rstatus_field f[] = {{"s3_key", "a/b.png"}, {"url", "http://x/y?z"}};
    const char *argv[] = {"PERSIST", key};
    zi_rstatus_reply_free(zi_cmd(rs, 2, argv));
    assert_int_equal(zi_ttl(rs, key), -1);
    assert_int_equal(zi_rstatus_job_set(rs, jid, f, 2), ZI_OK);
    assert_true(zi_ttl(rs, key) > 590);

    /* the stream is capped */
    const char *xinfo[] = {"XINFO", "STREAM", "zimage:events"};
    redisReply *r = zi_cmd(rs, 3, xinfo);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    zi_rstatus_reply_free(r);

    zi_rstatus_hash none;
    char other[128];
    snprintf(other, sizeof other, "absent-%s", zi_ns);
    assert_int_equal(zi_rstatus_job_get(rs, other, &none), ZI_ENOTFOUND);
    assert_int_equal(none.n, 0);
    assert_int_equal(zi_rstatus_set_status(rs, "", "queued", NULL, NULL, NULL, 0), ZI_EINVAL);
    zi_del(rs, key);
    zi_rstatus_destroy(rs);
}

static void test_prefix_and_attempts(void **state)
{
    (void)state;
    char prefix[96], jid[96], key[256];
    snprintf(prefix, sizeof prefix, "zt:%s:", zi_ns);
    snprintf(jid, sizeof jid, "j1");
    snprintf(key, sizeof key, "%sjob:%s", prefix, jid);
    zi_rstatus *rs = zi_open("w1", prefix);
    int64_t a = 0;
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(zi_rstatus_attempt_incr(rs, jid, 60000, &a), ZI_OK);
        assert_int_equal(a, i);
    }
    char buf[32];
    assert_int_equal(zi_rstatus_job_field(rs, jid, "attempt", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "3");
    assert_true(zi_ttl(rs, key) > 0);
    char ekey[256];
    assert_int_equal(zi_rstatus_key(rs, "events", "", ekey, sizeof ekey), ZI_OK);
    assert_int_equal(zi_rstatus_set_status(rs, jid, "queued", NULL, NULL, NULL, 0), ZI_OK);
    const char *xlen[] = {"XLEN", ekey};
    redisReply *r = zi_cmd(rs, 2, xlen);
    assert_int_equal(r->integer, 1); /* the events stream lives under the prefix too */
    zi_rstatus_reply_free(r);
    zi_del(rs, key);
    zi_del(rs, ekey);
    zi_rstatus_destroy(rs);
}

static void test_progress_rate_limit(void **state)
{
    (void)state;
    char prefix[96];
    snprintf(prefix, sizeof prefix, "zt:%s:", zi_ns);
    zi_rstatus *rs = zi_open("w1", prefix);
    int written, total = 0;
    double t0 = zi_now_s();
    for (int s = 1; s <= 20; s++) {
        assert_int_equal(zi_rstatus_progress(rs, "p1", s, 100, 0, &written), ZI_OK);
        total += written;
    }
    double ms = (zi_now_s() - t0) * 1000.0;
    /* the first call writes; after that at most one write per 100 ms that passed */
    assert_true(total >= 1 && total <= 1 + (int)(ms / 100.0) + 1);
    char buf[32];
    assert_int_equal(zi_rstatus_job_field(rs, "p1", "step", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "1");
    assert_int_equal(zi_rstatus_progress(rs, "p1", 100, 100, 0, &written), ZI_OK);
    assert_int_equal(written, 1); /* the last step always lands */
    assert_int_equal(zi_rstatus_job_field(rs, "p1", "progress", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "1.0000");
    assert_int_equal(zi_rstatus_progress(rs, "p1", 50, 100, 1, &written), ZI_OK);
    assert_int_equal(written, 1); /* forced */
    assert_int_equal(zi_rstatus_job_field(rs, "p1", "progress", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "0.5000");
    assert_int_equal(zi_rstatus_job_field(rs, "p1", "steps", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "100");
    usleep(120000);
    assert_int_equal(zi_rstatus_progress(rs, "p1", 51, 100, 0, &written), ZI_OK);
    assert_int_equal(written, 1); /* after 100 ms writes resume */
    assert_int_equal(zi_rstatus_progress(rs, "p1", 101, 100, 0, &written), ZI_EINVAL);
    char key[256];
    snprintf(key, sizeof key, "%sjob:p1", prefix);
    zi_del(rs, key);
    zi_rstatus_destroy(rs);
}

/* A fenced run writes only while the hash's attempt is its own (or gone): a later run's
 * attempt refuses every write of the earlier one (ZI_ECONFLICT, nothing written, no event). */
static void test_fence(void **state)
{
    (void)state;
    char prefix[96], key[256], ekey[256], lkey[256], buf[64];
    snprintf(prefix, sizeof prefix, "zt:%s:", zi_ns);
    snprintf(key, sizeof key, "%sjob:f1", prefix);
    snprintf(lkey, sizeof lkey, "%slease:f1", prefix);
    zi_rstatus *old = zi_open("w-old", prefix), *now = zi_open("w-new", prefix);
    assert_int_equal(zi_rstatus_key(old, "events", "", ekey, sizeof ekey), ZI_OK);
    const char *xlen[] = {"XLEN", ekey};
    const char *getlease[] = {"GET", lkey};
    int64_t a = 0;
    int got = 0;

    /* attempts are counted only under the lease: held by another worker, nothing counts */
    assert_int_equal(zi_rstatus_lease_acquire(now, "f1", 60000, &got, NULL, 0), ZI_OK);
    assert_int_equal(got, 1);
    assert_int_equal(zi_rstatus_attempt_incr(old, "f1", 60000, &a), ZI_ECONFLICT);
    assert_non_null(strstr(zi_errmsg(), "held by w-new"));
    assert_int_equal(zi_rstatus_job_field(old, "f1", "attempt", buf, sizeof buf), ZI_ENOTFOUND);
    zi_del(old, lkey); /* expired; free, the count takes it */
    assert_int_equal(zi_rstatus_attempt_incr(old, "f1", 60000, &a), ZI_OK);
    assert_int_equal(a, 1);
    redisReply *r = zi_cmd(old, 2, getlease);
    assert_string_equal(r->str, "w-old");
    zi_rstatus_reply_free(r);
    zi_rstatus_fence(old, "f1", a);
    zi_rstatus_field f[] = {{"attempt", "1"}, {"seed", "7"}};
    assert_int_equal(zi_rstatus_set_status(old, "f1", "running", NULL, NULL, f, 2), ZI_OK);
    assert_int_equal(zi_rstatus_progress(old, "f1", 1, 4, 1, NULL), ZI_OK);
    assert_int_equal(zi_rstatus_job_field(old, "f1", "status", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "running");
    assert_int_equal(zi_rstatus_job_field(old, "f1", "step", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "1");
    assert_true(zi_ttl(old, key) > 590); /* the script re-arms the TTL too */

    /* this one stalls past its lease; another worker takes the job over: attempt 2 */
    zi_del(old, lkey);
    assert_int_equal(zi_rstatus_attempt_incr(now, "f1", 60000, &a), ZI_OK);
    assert_int_equal(a, 2);
    zi_rstatus_fence(now, "f1", a);
    assert_int_equal(zi_rstatus_set_status(now, "f1", "running", NULL, NULL, NULL, 0), ZI_OK);
    r = zi_cmd(old, 2, xlen);
    long long events = r->integer;
    zi_rstatus_reply_free(r);

    assert_int_equal(zi_rstatus_progress(old, "f1", 3, 4, 1, NULL), ZI_ECONFLICT);
    assert_non_null(strstr(zi_errmsg(), "attempt 2 has started, this run is attempt 1"));
    assert_int_equal(zi_rstatus_fence_check(old, "f1"), ZI_ECONFLICT);
    assert_int_equal(zi_rstatus_fence_check(now, "f1"), ZI_OK);
    assert_int_equal(zi_rstatus_set_status(old, "f1", "failed", "s3_error", "x", f, 2),
                     ZI_ECONFLICT);
    assert_int_equal(zi_rstatus_job_set(old, "f1", f, 1), ZI_ECONFLICT);
    assert_int_equal(zi_rstatus_job_field(old, "f1", "status", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "running");
    assert_int_equal(zi_rstatus_job_field(old, "f1", "worker", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "w-new");
    assert_int_equal(zi_rstatus_job_field(old, "f1", "attempt", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "2");
    assert_int_equal(zi_rstatus_job_field(old, "f1", "step", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "1");
    r = zi_cmd(old, 2, xlen);
    assert_int_equal(r->integer, events); /* no event from the refused run */
    zi_rstatus_reply_free(r);

    /* the newer run writes; a fence on another job does not apply; lifted, none applies */
    assert_int_equal(zi_rstatus_set_status(now, "f1", "succeeded", NULL, NULL, NULL, 0), ZI_OK);
    zi_rstatus_fence(old, "other", 1);
    assert_int_equal(zi_rstatus_job_set(old, "f1", f + 1, 1), ZI_OK);
    zi_rstatus_fence(old, "f1", 1);
    assert_int_equal(zi_rstatus_job_set(old, "f1", f + 1, 1), ZI_ECONFLICT);
    zi_rstatus_fence(old, NULL, 0);
    assert_int_equal(zi_rstatus_job_set(old, "f1", f + 1, 1), ZI_OK);

    /* a resubmission resets the attempt to 0: not a later run, the fenced one still writes */
    const char *reset[] = {"HSET", key, "attempt", "0", "status", "queued", "worker", ""};
    zi_rstatus_reply_free(zi_cmd(old, 8, reset));
    zi_rstatus_fence(old, "f1", 1);
    assert_int_equal(zi_rstatus_job_set(old, "f1", f + 1, 1), ZI_OK);
    assert_int_equal(zi_rstatus_fence_check(old, "f1"), ZI_OK);

    /* a redelivery that found this run's upload records `succeeded` without a run (the
     * attempt stays 1): the fenced run stops; its own `succeeded` (a retry) it may rewrite */
    const char *ran[] = {"HSET", key, "attempt", "1", "status", "running", "worker", "w-old"};
    zi_rstatus_reply_free(zi_cmd(old, 8, ran));
    zi_rstatus_fence(now, NULL, 0);
    assert_int_equal(zi_rstatus_set_status(now, "f1", "succeeded", NULL, NULL, NULL, 0), ZI_OK);
    assert_int_equal(zi_rstatus_progress(old, "f1", 4, 4, 1, NULL), ZI_ECONFLICT);
    assert_non_null(strstr(zi_errmsg(), "w-new recorded it succeeded"));
    assert_int_equal(zi_rstatus_fence_check(old, "f1"), ZI_ECONFLICT);
    assert_int_equal(zi_rstatus_set_status(old, "f1", "succeeded", NULL, NULL, NULL, 0),
                     ZI_ECONFLICT);
    const char *mine[] = {"HSET", key, "worker", "w-old"};
    zi_rstatus_reply_free(zi_cmd(old, 4, mine));
    assert_int_equal(zi_rstatus_fence_check(old, "f1"), ZI_OK);
    assert_int_equal(zi_rstatus_set_status(old, "f1", "succeeded", NULL, NULL, f, 2), ZI_OK);

    /* a job given up (too_many_attempts records one attempt less than it counted, the runs:
     * the attempt alone would not fence the last run) */
    const char *gaveup[] = {
        "HSET",   key,     "status",  "failed", "error_code", "too_many_attempts",
        "worker", "w-new", "attempt", "1"};
    zi_rstatus_reply_free(zi_cmd(old, 10, gaveup));
    assert_int_equal(zi_rstatus_fence_check(old, "f1"), ZI_ECONFLICT);
    assert_non_null(strstr(zi_errmsg(), "too_many_attempts"));
    assert_int_equal(zi_rstatus_progress(old, "f1", 2, 4, 1, NULL), ZI_ECONFLICT);
    /* ... but a run's own `running` record replaces it (max_attempts raised since) */
    assert_int_equal(zi_rstatus_set_status(old, "f1", "running", NULL, NULL, NULL, 0), ZI_OK);
    /* no attempt is counted once the job succeeded (a worker that stalled in its checks) */
    const char *done[] = {"HSET", key, "status", "succeeded", "error_code", ""};
    zi_rstatus_reply_free(zi_cmd(old, 6, done));
    assert_int_equal(zi_rstatus_attempt_incr(now, "f1", 60000, &a), ZI_ECONFLICT);
    assert_non_null(strstr(zi_errmsg(), "succeeded meanwhile"));
    assert_int_equal(zi_rstatus_job_field(old, "f1", "attempt", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "1");

    /* the hash gone (Redis lost it): the fenced run writes its whole record again */
    zi_del(old, key);
    zi_rstatus_fence(old, "f1", 1);
    assert_int_equal(zi_rstatus_set_status(old, "f1", "succeeded", NULL, NULL, f, 2), ZI_OK);
    assert_int_equal(zi_rstatus_job_field(old, "f1", "attempt", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "1");
    assert_int_equal(zi_rstatus_job_field(old, "f1", "status", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "succeeded");
    r = zi_cmd(old, 2, xlen);
    assert_int_equal(r->integer, events + 5); /* the refused writes added none */
    zi_rstatus_reply_free(r);
    zi_del(old, key);
    zi_del(old, ekey);
    zi_del(old, lkey);
    zi_rstatus_destroy(old);
    zi_rstatus_destroy(now);
}

static void test_leases(void **state)
{
    (void)state;
    char prefix[96], lkey[256];
    snprintf(prefix, sizeof prefix, "zt:%s:", zi_ns);
    snprintf(lkey, sizeof lkey, "%slease:L1", prefix);
    zi_rstatus *a = zi_open("worker-a", prefix);
    zi_rstatus *b = zi_open("worker-b", prefix);
    int got, ours, rel;
    char holder[64];

    assert_int_equal(zi_rstatus_lease_acquire(a, "L1", 10000, &got, holder, sizeof holder), ZI_OK);
    assert_int_equal(got, 1);
    assert_int_equal(zi_rstatus_lease_acquire(b, "L1", 10000, &got, holder, sizeof holder), ZI_OK);
    assert_int_equal(got, 0);
    assert_string_equal(holder, "worker-a");
    /* B can neither renew nor release A's lease */
    assert_int_equal(zi_rstatus_lease_renew(b, "L1", 10000, &ours), ZI_OK);
    assert_int_equal(ours, 0);
    assert_int_equal(zi_rstatus_lease_release(b, "L1", &rel), ZI_OK);
    assert_int_equal(rel, 0);
    const char *get[] = {"GET", lkey};
    redisReply *r = zi_cmd(a, 2, get);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "worker-a"); /* the value is the owner */
    zi_rstatus_reply_free(r);

    /* renew re-arms the TTL */
    const char *pttl[] = {"PTTL", lkey};
    assert_int_equal(zi_rstatus_lease_renew(a, "L1", 30000, &ours), ZI_OK);
    assert_int_equal(ours, 1);
    r = zi_cmd(a, 2, pttl);
    assert_true(r->integer > 20000 && r->integer <= 30000);
    zi_rstatus_reply_free(r);
    /* re-acquiring our own lease (a restarted worker with the same id) succeeds */
    assert_int_equal(zi_rstatus_lease_acquire(a, "L1", 10000, &got, NULL, 0), ZI_OK);
    assert_int_equal(got, 1);

    assert_int_equal(zi_rstatus_lease_release(a, "L1", &rel), ZI_OK);
    assert_int_equal(rel, 1);
    assert_int_equal(zi_rstatus_lease_acquire(b, "L1", 200, &got, NULL, 0), ZI_OK);
    assert_int_equal(got, 1);

    /* expiry: B stops renewing, the lease goes, A takes it; B's renew then fails */
    usleep(350000);
    assert_int_equal(zi_rstatus_lease_acquire(a, "L1", 10000, &got, holder, sizeof holder), ZI_OK);
    assert_int_equal(got, 1);
    assert_int_equal(zi_rstatus_lease_renew(b, "L1", 10000, &ours), ZI_OK);
    assert_int_equal(ours, 0);
    assert_int_equal(zi_rstatus_lease_release(a, "L1", NULL), ZI_OK);
    assert_int_equal(zi_rstatus_lease_acquire(a, "L1", 0, &got, NULL, 0), ZI_EINVAL);
    zi_rstatus_destroy(a);
    zi_rstatus_destroy(b);
}

static void test_cancel(void **state)
{
    (void)state;
    char prefix[96], ckey[256];
    snprintf(prefix, sizeof prefix, "zt:%s:", zi_ns);
    snprintf(ckey, sizeof ckey, "%scancel:C1", prefix);
    zi_rstatus *rs = zi_open("w", prefix);
    int c = -1;
    assert_int_equal(zi_rstatus_cancel_requested(rs, "C1", &c), ZI_OK);
    assert_int_equal(c, 0);
    /* anyone may set it: a plain SET counts */
    const char *set[] = {"SET", ckey, "by-operator"};
    zi_rstatus_reply_free(zi_cmd(rs, 3, set));
    assert_int_equal(zi_rstatus_cancel_requested(rs, "C1", &c), ZI_OK);
    assert_int_equal(c, 1);
    zi_del(rs, ckey);
    assert_int_equal(zi_rstatus_cancel_request(rs, "C1", 60), ZI_OK);
    assert_int_equal(zi_rstatus_cancel_requested(rs, "C1", &c), ZI_OK);
    assert_int_equal(c, 1);
    long long t = zi_ttl(rs, ckey);
    assert_true(t > 50 && t <= 60);
    zi_del(rs, ckey);
    zi_rstatus_destroy(rs);
}

static void test_heartbeat(void **state)
{
    (void)state;
    char wid[96], wkey[256];
    snprintf(wid, sizeof wid, "hb-%s", zi_ns);
    snprintf(wkey, sizeof wkey, "zimage:worker:%s", wid);
    zi_rstatus *rs = zi_open(wid, "zimage:"); /* heartbeat_s 5 -> TTL 15 */
    zi_rstatus_worker_info info = {.state = "busy",
                                   .current_job = "job-1",
                                   .jobs_succeeded = 12,
                                   .jobs_failed = 3,
                                   .backend = "cuda",
                                   .gpu_name = "NVIDIA H100",
                                   .vram_total_bytes = 85899345920LL,
                                   .vram_free_bytes = 1000,
                                   .alloc_reserved_bytes = 2000,
                                   .alloc_allocated_bytes = 1500,
                                   .alloc_peak_bytes = 1800,
                                   .model = "Z-Image-Turbo",
                                   .version = "0.1.0",
                                   .instance = "aaaa1111"};
    int64_t before = zi_rstatus_now_ms();
    char prev[32] = "x";
    assert_int_equal(zi_rstatus_heartbeat(rs, &info, prev, sizeof prev), ZI_OK);
    assert_string_equal(prev, ""); /* no hash before */
    int64_t after = zi_rstatus_now_ms();
    const char *zs[] = {"ZSCORE", "zimage:workers", wid};
    redisReply *r = zi_cmd(rs, 3, zs);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    long long score = strtoll(r->str, NULL, 10);
    assert_true(score >= before && score <= after);
    zi_rstatus_reply_free(r);

    const char *hg[] = {"HGETALL", wkey};
    r = zi_cmd(rs, 2, hg);
    const char *want[][2] = {{"state", "busy"},
                             {"current_job", "job-1"},
                             {"jobs_succeeded", "12"},
                             {"jobs_failed", "3"},
                             {"backend", "cuda"},
                             {"gpu_name", "NVIDIA H100"},
                             {"vram_total_bytes", "85899345920"},
                             {"vram_free_bytes", "1000"},
                             {"alloc_reserved_bytes", "2000"},
                             {"alloc_allocated_bytes", "1500"},
                             {"alloc_peak_bytes", "1800"},
                             {"model", "Z-Image-Turbo"},
                             {"version", "0.1.0"},
                             {"instance", "aaaa1111"},
                             {"heartbeat_at", NULL}};
    assert_int_equal(r->elements, 2 * (sizeof want / sizeof want[0]));
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        int found = 0;
        for (size_t i = 0; i + 1 < r->elements; i += 2)
            if (strcmp(r->element[i]->str, want[w][0]) == 0) {
                found = 1;
                if (want[w][1])
                    assert_string_equal(r->element[i + 1]->str, want[w][1]);
                else
                    assert_true(strtoll(r->element[i + 1]->str, NULL, 10) == score);
            }
        if (!found)
            fail_msg("worker hash lacks %s", want[w][0]);
    }
    zi_rstatus_reply_free(r);
    long long t = zi_ttl(rs, wkey);
    assert_true(t > 10 && t <= 15);

    /* the token the hash held before each write: ours, then another process's */
    assert_int_equal(zi_rstatus_heartbeat(rs, &info, prev, sizeof prev), ZI_OK);
    assert_string_equal(prev, "aaaa1111");
    zi_rstatus_worker_info twin = info;
    twin.instance = "bbbb2222";
    assert_int_equal(zi_rstatus_heartbeat(rs, &twin, NULL, 0), ZI_OK);
    assert_int_equal(zi_rstatus_heartbeat(rs, &info, prev, 4), ZI_OK);
    assert_string_equal(prev, "bbb"); /* cut to the buffer */

    /* NULL strings are written as "" */
    zi_rstatus_worker_info idle = {.state = "ready"};
    assert_int_equal(zi_rstatus_heartbeat(rs, &idle, prev, sizeof prev), ZI_OK);
    assert_string_equal(prev, "aaaa1111");
    const char *hcur[] = {"HGET", wkey, "current_job"};
    r = zi_cmd(rs, 3, hcur);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "");
    zi_rstatus_reply_free(r);

    assert_int_equal(zi_rstatus_worker_remove(rs), ZI_OK);
    r = zi_cmd(rs, 3, zs);
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    zi_rstatus_reply_free(r);
    const char *ex[] = {"EXISTS", wkey};
    r = zi_cmd(rs, 2, ex);
    assert_int_equal(r->integer, 0);
    zi_rstatus_reply_free(r);
    zi_rstatus_destroy(rs);
}

static void test_unreachable(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", zi_free_port()); /* nobody listens */
    zi_rstatus_config cfg = {.url = url, .worker_id = "w"};
    zi_rstatus *rs = NULL;
    double t0 = zi_now_s();
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_OK); /* Redis may come later */
    assert_int_equal(zi_rstatus_ping(rs), ZI_ETRANSIENT);
    int c;
    assert_int_equal(zi_rstatus_cancel_requested(rs, "x", &c), ZI_ETRANSIENT);
    assert_int_equal(zi_rstatus_set_status(rs, "x", "running", NULL, NULL, NULL, 0), ZI_ETRANSIENT);
    assert_non_null(strstr(zi_errmsg(), "127.0.0.1"));
    assert_true(zi_now_s() - t0 < 1.0); /* refused connects never block */
    zi_rstatus_destroy(rs);

    cfg.url = "redis://127.0.0.1:notaport/0";
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_EINVAL);
}

static void test_reconnect_after_restart(void **state)
{
    (void)state;
    char prefix[96];
    snprintf(prefix, sizeof prefix, "zt:%s:", zi_ns);
    zi_rstatus *rs = zi_open("w-r", prefix);
    assert_int_equal(zi_rstatus_set_status(rs, "r1", "running", NULL, NULL, NULL, 0), ZI_OK);

    zi_redis_restart_stop();
    /* while Redis is down every call fails transiently, none crashes */
    for (int i = 0; i < 5; i++) {
        int rc = zi_rstatus_set_status(rs, "r1", "succeeded", NULL, NULL, NULL, 0);
        assert_int_equal(rc, ZI_ETRANSIENT);
        usleep(50000);
    }
    zi_redis_restart_start();

    /* the handle reconnects by itself (back-off is at most 5 s) */
    double t0 = zi_now_s();
    int rc;
    while ((rc = zi_rstatus_set_status(rs, "r1", "succeeded", NULL, NULL, NULL, 0)) != ZI_OK) {
        assert_int_equal(rc, ZI_ETRANSIENT);
        if (zi_now_s() - t0 > 10)
            fail_msg("no reconnect within 10 s: %s", zi_errmsg());
        usleep(100000);
    }
    char buf[32];
    assert_int_equal(zi_rstatus_job_field(rs, "r1", "status", buf, sizeof buf), ZI_OK);
    assert_string_equal(buf, "succeeded");
    char key[256];
    snprintf(key, sizeof key, "%sjob:r1", prefix);
    zi_del(rs, key);
    zi_rstatus_destroy(rs);
}

static void test_auth_and_select(void **state)
{
    (void)state;
    zi_redis_proc *p = &zi_authp;
    zi_redis_private(p, "s3cr%t/pw");
    char url[256];
    zi_rstatus_config cfg = {.url = url, .worker_id = "w", .key_prefix = "a:"};
    zi_rstatus *rs = NULL;

    /* password in the URL (percent-encoded) and database 3 */
    snprintf(url, sizeof url, "redis://:s3cr%%25t%%2Fpw@127.0.0.1:%d/3", p->port);
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_OK);
    assert_int_equal(zi_rstatus_ping(rs), ZI_OK);
    assert_int_equal(zi_rstatus_set_status(rs, "j", "queued", NULL, NULL, NULL, 0), ZI_OK);
    zi_rstatus_destroy(rs);

    /* the explicit password (ZIMAGE_REDIS_PASSWORD) wins over the URL's */
    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d/0", p->port);
    cfg.password = "s3cr%t/pw";
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_OK);
    assert_int_equal(zi_rstatus_ping(rs), ZI_OK);
    zi_rstatus_hash h;
    assert_int_equal(zi_rstatus_job_get(rs, "j", &h), ZI_ENOTFOUND); /* db 0, not 3 */
    zi_rstatus_destroy(rs);

    /* a wrong password is an authentication error whose message hides the password */
    cfg.password = "not-the-password";
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_OK);
    assert_int_equal(zi_rstatus_ping(rs), ZI_EAUTH);
    assert_null(strstr(zi_errmsg(), "not-the-password"));
    zi_rstatus_destroy(rs);
    cfg.password = NULL;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", p->port);
    assert_int_equal(zi_rstatus_create(&cfg, &rs), ZI_OK);
    assert_int_not_equal(zi_rstatus_ping(rs), ZI_OK); /* NOAUTH */
    zi_rstatus_destroy(rs);
    zi_redis_private_done(p);
}

static void test_url_parse(void **state)
{
    (void)state;
    zi_redis_url u;
    assert_int_equal(zi_redis_url_parse("redis://h", &u), ZI_OK);
    assert_string_equal(u.host, "h");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_int_equal(zi_redis_url_parse("redis://us%40r:p%3Aw@[::1]:7000/15", &u), ZI_OK);
    assert_string_equal(u.user, "us@r");
    assert_string_equal(u.password, "p:w");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 15);
    assert_int_equal(zi_redis_url_parse("redis://:a@b@h:1/", &u), ZI_OK);
    assert_string_equal(u.password, "a@b");
    assert_int_equal(zi_redis_url_parse("redis://:secretpw@h:0/0", &u), ZI_EINVAL);
    assert_null(strstr(zi_errmsg(), "secretpw"));
    assert_int_equal(zi_redis_url_parse("redis://h:1/x", &u), ZI_EINVAL);
    assert_int_equal(zi_redis_url_parse("redis://h:1/0?x=1", &u), ZI_EINVAL);
    assert_int_equal(zi_redis_url_parse("redis://", &u), ZI_EINVAL);
    assert_int_equal(zi_redis_url_parse("redis://:%zz@h", &u), ZI_EINVAL);
    char red[128];
    zi_redis_url_redact("redis://u:pw@h:1/0", red, sizeof red);
    assert_string_equal(red, "redis://u:<redacted>@h:1/0");
    zi_redis_url_redact("redis://h:1/0", red, sizeof red);
    assert_string_equal(red, "redis://h:1/0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),
        cmocka_unit_test(test_job_hash_and_events),
        cmocka_unit_test(test_prefix_and_attempts),
        cmocka_unit_test(test_progress_rate_limit),
        cmocka_unit_test(test_fence),
        cmocka_unit_test(test_leases),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_heartbeat),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_auth_and_select),
        cmocka_unit_test(test_reconnect_after_restart),
    };
    return cmocka_run_group_tests(tests, zi_setup, zi_teardown);
}
