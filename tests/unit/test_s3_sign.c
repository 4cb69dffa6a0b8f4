/*
 * test_s3_sign.c - presigned GET URLs (SigV4 query signing), URI encoding and key templates.
 *
 * Known answers: the AWS documentation's presigned GET example ("Authenticating Requests:
 * Using Query Parameters": examplebucket/test.txt, 20130524T000000Z, 86400 s), and a
 * path-style vector with a session token and reserved characters in the key that was
 * computed with an independent implementation (Python hashlib/hmac/urllib).
 */
#include "zi_test.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "s3.h"
#include "zi_err.h"

static time_t zi_utc(int y, int mo, int d, int h, int mi, int s)
{
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    return timegm(&tm);
}

static void test_presign_aws_example(void **state)
{
    (void)state;
    zi_s3_config cfg = {.endpoint = "https://s3.amazonaws.com",
                        .region = "us-east-1",
                        .bucket = "examplebucket",
                        .path_style = 0,
                        .access_key = "AKIAIOSFODNN7EXAMPLE",
                        .secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"};
    char url[ZI_S3_MAX_URL];
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "test.txt", 86400, zi_utc(2013, 5, 24, 0, 0, 0),
                                           url, sizeof url),
                     ZI_OK);
    assert_string_equal(
        url, "https://examplebucket.s3.amazonaws.com/test.txt"
             "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
             "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");

    /* the same through a handle */
    zi_s3 *s3 = NULL;
    assert_int_equal(zi_s3_create(&cfg, &s3), ZI_OK);
    char url2[ZI_S3_MAX_URL];
    assert_int_equal(
        zi_s3_presign_get(s3, "test.txt", 86400, zi_utc(2013, 5, 24, 0, 0, 0), url2, sizeof url2),
        ZI_OK);
    assert_string_equal(url, url2);
    zi_s3_destroy(s3);
}

static void test_presign_path_style_token(void **state)
{
    (void)state;
    zi_s3_config cfg = {.endpoint = "http://127.0.0.1:9999",
                        .public_endpoint = "http://127.0.0.1:7480",
                        .region = "eu-west-1",
                        .bucket = "zimage",
                        .path_style = 1,
                        .access_key = "AKIDTEST",
                        .secret_key = "secret/Key+123",
                        .session_token = "tok/en+=="};
    char url[ZI_S3_MAX_URL];
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "2024-01-02/a b+c.png", 3600,
                                           zi_utc(2024, 1, 2, 3, 4, 5), url, sizeof url),
                     ZI_OK);
    /* host from public_endpoint, not endpoint; token signed, in name order */
    assert_string_equal(
        url, "http://127.0.0.1:7480/zimage/2024-01-02/a%20b%2Bc.png"
             "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIDTEST%2F20240102%2Feu-west-1%2Fs3%2Faws4_request"
             "&X-Amz-Date=20240102T030405Z&X-Amz-Expires=3600"
             "&X-Amz-Security-Token=tok%2Fen%2B%3D%3D&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=ab8fd7ce8dbb7f4538d8d880ac9e0fa7688551bf7c6cf4a36d82625b5aebc635");
}

static void test_presign_limits(void **state)
{
    (void)state;
    zi_s3_config cfg = {.endpoint = "http://127.0.0.1:7480",
                        .region = "us-east-1",
                        .bucket = "zimage",
                        .path_style = 1,
                        .access_key = "A",
                        .secret_key = "B"};
    char url[ZI_S3_MAX_URL];
    time_t t = zi_utc(2024, 1, 1, 0, 0, 0);
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 0, t, url, sizeof url), ZI_EINVAL);
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 604801, t, url, sizeof url), ZI_EINVAL);
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 604800, t, url, sizeof url), ZI_OK);
    assert_non_null(strstr(url, "&X-Amz-Expires=604800&"));
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "", 60, t, url, sizeof url), ZI_EINVAL);
    /* a buffer too small is an error, never a cut URL */
    char small[64];
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 60, t, small, sizeof small), ZI_EINVAL);
    /* default port dropped: the Host a client sends for the URL has none either */
    cfg.endpoint = "http://example.com:80";
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 60, t, url, sizeof url), ZI_OK);
    assert_true(strncmp(url, "http://example.com/zimage/k?", 28) == 0);
    /* virtual host addressing */
    cfg.path_style = 0;
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 60, t, url, sizeof url), ZI_OK);
    assert_true(strncmp(url, "http://zimage.example.com/k?", 28) == 0);
    /* the signature depends on the time */
    char url2[ZI_S3_MAX_URL];
    assert_int_equal(zi_s3_presign_get_cfg(&cfg, "k", 60, t + 1, url2, sizeof url2), ZI_OK);
    assert_string_not_equal(url, url2);
}

static void test_create_rejects_bad_config(void **state)
{
    (void)state;
    zi_s3 *s3 = NULL;
    zi_s3_config cfg = {.endpoint = "ftp://x", .region = "r", .bucket = "b"};
    assert_int_equal(zi_s3_create(&cfg, &s3), ZI_EINVAL);
    cfg.endpoint = "http://host/path";
    assert_int_equal(zi_s3_create(&cfg, &s3), ZI_EINVAL);
    cfg.endpoint = "http://host:1234/";
    cfg.bucket = "";
    assert_int_equal(zi_s3_create(&cfg, &s3), ZI_EINVAL);
    cfg.bucket = "b";
    cfg.retry_s = -1;
    assert_int_equal(zi_s3_create(&cfg, &s3), ZI_EINVAL);
    cfg.retry_s = 0;
    assert_int_equal(zi_s3_create(&cfg, &s3), ZI_OK);
    zi_s3_destroy(s3);
}

static void test_uri_encode(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(zi_s3_uri_encode("a b/\xc3\xbc~-_.Z9", 1, out, sizeof out), ZI_OK);
    assert_string_equal(out, "a%20b/%C3%BC~-_.Z9");
    assert_int_equal(zi_s3_uri_encode("a/b=c&d", 0, out, sizeof out), ZI_OK);
    assert_string_equal(out, "a%2Fb%3Dc%26d");
    assert_int_equal(zi_s3_uri_encode("abc", 0, out, 3), ZI_EINVAL);
    assert_int_equal(zi_s3_uri_encode("abc", 0, out, 4), ZI_OK);
}

static void test_key_expand(void **state)
{
    (void)state;
    char key[ZI_S3_MAX_KEY + 1];
    /* 1700000000000 ms = 2023-11-14T22:13:20Z */
    assert_int_equal(zi_s3_key_expand("{job_id}.png", "j-1", 1700000000000LL, key, sizeof key),
                     ZI_OK);
    assert_string_equal(key, "j-1.png");
    assert_int_equal(
        zi_s3_key_expand("img/{date}/{job_id}.png", "j.2", 1700000000000LL, key, sizeof key),
        ZI_OK);
    assert_string_equal(key, "img/2023-11-14/j.2.png");
    /* the date is UTC: 23:59:59.999 on Dec 31 stays in that year */
    assert_int_equal(zi_s3_key_expand("{date}", "x", 1704067199999LL, key, sizeof key), ZI_OK);
    assert_string_equal(key, "2023-12-31");
    /* no timestamp: today's date (10 characters, YYYY-MM-DD) */
    assert_int_equal(zi_s3_key_expand("{date}", "x", -1, key, sizeof key), ZI_OK);
    assert_int_equal(strlen(key), 10);
    assert_true(key[4] == '-' && key[7] == '-');

    assert_int_equal(zi_s3_key_expand("{jobid}.png", "x", 0, key, sizeof key), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "{jobid}"));
    assert_int_equal(zi_s3_key_expand("{job_id", "x", 0, key, sizeof key), ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("/{job_id}", "x", 0, key, sizeof key), ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("a//{job_id}", "x", 0, key, sizeof key), ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("{job_id}", "", 0, key, sizeof key), ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("../{job_id}", "x", 0, key, sizeof key), ZI_EINVAL);
    /* "." segments: curl would drop them from the request while presigned URLs sign them */
    static const char *const dots[] = {"out/./{job_id}.png", "./{job_id}", "{job_id}/.", "."};
    for (size_t i = 0; i < sizeof dots / sizeof dots[0]; i++) {
        assert_int_equal(zi_s3_key_expand(dots[i], "x", 0, key, sizeof key), ZI_EINVAL);
        assert_non_null(strstr(zi_errmsg(), "'.' segments"));
    }
    /* dots inside names stay fine */
    assert_int_equal(zi_s3_key_expand("a.b/.hidden/{job_id}.x.png", "j.1", 0, key, sizeof key),
                     ZI_OK);
    assert_string_equal(key, "a.b/.hidden/j.1.x.png");
    char small[8];
    assert_int_equal(zi_s3_key_expand("{job_id}.png", "abcdef", 0, small, sizeof small), ZI_EINVAL);
    assert_int_equal(zi_s3_key_template_check("{date}/{job_id}.png"), ZI_OK);

    /* the longest key is ZI_S3_MAX_KEY bytes, whether the last byte comes from the template or
     * from a placeholder; one more is refused (the buffer holds exactly that plus the NUL) */
    static char tmpl[ZI_S3_MAX_KEY + 2];
    memset(tmpl, 'k', ZI_S3_MAX_KEY);
    tmpl[ZI_S3_MAX_KEY] = '\0';
    assert_int_equal(zi_s3_key_expand(tmpl, "x", 0, key, sizeof key), ZI_OK);
    assert_int_equal(strlen(key), ZI_S3_MAX_KEY);
    tmpl[ZI_S3_MAX_KEY] = 'k';
    tmpl[ZI_S3_MAX_KEY + 1] = '\0';
    assert_int_equal(zi_s3_key_expand(tmpl, "x", 0, key, sizeof key), ZI_EINVAL);
    assert_non_null(strstr(zi_errmsg(), "longer than 1024 bytes"));
    memcpy(tmpl + ZI_S3_MAX_KEY - 8, "{job_id}", 9);
    assert_int_equal(zi_s3_key_expand(tmpl, "12345678", 0, key, sizeof key), ZI_OK);
    assert_int_equal(strlen(key), ZI_S3_MAX_KEY);
    assert_int_equal(zi_s3_key_expand(tmpl, "123456789", 0, key, sizeof key), ZI_EINVAL);
    /* a larger buffer does not raise the limit; a smaller one lowers it to cap - 1 */
    static char roomy[ZI_S3_MAX_KEY + 64];
    assert_int_equal(zi_s3_key_expand(tmpl, "123456789", 0, roomy, sizeof roomy), ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("{job_id}.png", "abc", 0, small, sizeof small), ZI_OK);
    assert_string_equal(small, "abc.png");
    assert_int_equal(zi_s3_key_expand("{job_id}.png", "abcd", 0, small, sizeof small), ZI_EINVAL);

    /* control bytes, from the template or the id: all of 0x01..0x1F and DEL */
    for (int b = 1; b < 0x20; b++) {
        char t[8] = {'a', (char)b, 'b', '\0'};
        assert_int_equal(zi_s3_key_expand(t, "x", 0, key, sizeof key), ZI_EINVAL);
        assert_non_null(strstr(zi_errmsg(), "control character"));
    }
    assert_int_equal(zi_s3_key_expand("a\x7f"
                                      "b",
                                      "x", 0, key, sizeof key),
                     ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("{job_id}",
                                      "a\x1f"
                                      "b",
                                      0, key, sizeof key),
                     ZI_EINVAL);
    assert_int_equal(zi_s3_key_expand("a b~", "x", 0, key, sizeof key), ZI_OK); /* 0x20, 0x7E */
    assert_int_equal(zi_s3_key_template_check("{seed}.png"), ZI_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presign_aws_example),
        cmocka_unit_test(test_presign_path_style_token),
        cmocka_unit_test(test_presign_limits),
        cmocka_unit_test(test_create_rejects_bad_config),
        cmocka_unit_test(test_uri_encode),
        cmocka_unit_test(test_key_expand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
