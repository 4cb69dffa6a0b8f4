/*
 * test_stack_redis.c - the local stack's Redis answers through hiredis (the library the
 * worker links): PING, and a value written is read back.
 *
 * The address comes from ZI_REDIS_URL (redis://127.0.0.1:PORT/DB), exported by
 * `deploy/local/stack.sh env` (tests/run-all.sh does that). Without it the test fails.
 */
#include "zi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

/* Splits redis://HOST:PORT[/DB] into host and port; returns 0 on success. */
static int zi_test_parse_redis_url(const char *url, char *host, size_t cap, int *port)
{
    const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : NULL;
    if (!p)
        return -1;
    const char *colon = strchr(p, ':');
    if (!colon || (size_t)(colon - p) >= cap || colon == p)
        return -1;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    char *end = NULL;
    long v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end != '\0' && *end != '/') || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

static redisContext *zi_test_connect(void)
{
    const char *url = getenv("ZI_REDIS_URL");
    if (!url || !*url)
        fail_msg("ZI_REDIS_URL is not set: run through `make test`, or "
                 "eval \"$(deploy/local/stack.sh env)\" after `deploy/local/stack.sh up`");
    char host[256];
    int port = 0;
    if (zi_test_parse_redis_url(url, host, sizeof host, &port) != 0)
        fail_msg("ZI_REDIS_URL '%s' is not redis://HOST:PORT/DB", url);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err)
        fail_msg("cannot connect to Redis at %s: %s", url, c ? c->errstr : "out of memory");
    return c;
}

static void test_redis_ping(void **state)
{
    (void)state;
    redisContext *c = zi_test_connect();
    redisReply *r = redisCommand(c, "PING");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    assert_string_equal(r->str, "PONG");
    freeReplyObject(r);
    redisFree(c);
}

static void test_redis_set_get(void **state)
{
    (void)state;
    redisContext *c = zi_test_connect();
    char key[64], val[64];
    snprintf(key, sizeof key, "zitest:stack:%ld", (long)getpid());
    snprintf(val, sizeof val, "value-%ld", (long)getpid());
    redisReply *r = redisCommand(c, "SET %s %s EX 60", key, val);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    assert_string_equal(r->str, "OK");
    freeReplyObject(r);
    r = redisCommand(c, "GET %s", key);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, val);
    freeReplyObject(r);
    r = redisCommand(c, "DEL %s", key);
    assert_non_null(r);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    redisFree(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_ping),
        cmocka_unit_test(test_redis_set_get),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
