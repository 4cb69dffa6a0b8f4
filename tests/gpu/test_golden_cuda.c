/*
 * test_golden_cuda.c - the bf16 GPU path end to end (label gpu): `zimage generate
 * --backend cuda` for every case of vectors/manifest.json of the golden set (ZI_GOLDEN_DIR
 * or tests/golden/data, see zi_test_golden) on its checkpoint, compared with the case's PNG
 * (made by the fp32 reference): vectors/<name>.png, else the case file's name with .png.
 * The golden README's bar for the bf16 GPU path is >= 38 dB PSNR (diffusers' own bf16 run
 * of p0 is 45.9 dB). The binary is run without a shell (prompts hold quotes and CJK text).
 * With ZI_GOLDEN_JSON set, one JSON line per case is appended to that file.
 */
#include "zi_test.h"

#ifdef ZI_HAVE_CUDA

#include "backend.h"
#include "png.h"
#include "zi_err.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ZG_MIN_PSNR 38.0

/* Runs argv (argv[0] a path) and returns its exit status, -1 if it could not run. */
static int zg_run(char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_golden_cases(void **state)
{
    (void)state;
    assert_true(zi_backend_cuda_available());
    const char *bin = getenv("ZI_BINARY");
    if (!bin || !*bin)
        bin = ZI_BINARY;
    cJSON *root = zi_test_manifest();
    const cJSON *cases = zi_test_manifest_cases(root);
    char model[4096];
    snprintf(model, sizeof model, "%s", zi_test_model(""));
    char dir[] = "/tmp/zi_golden_cuda_XXXXXX";
    assert_non_null(mkdtemp(dir));
    FILE *js = NULL;
    const char *jpath = getenv("ZI_GOLDEN_JSON");
    if (jpath && *jpath)
        js = fopen(jpath, "a");
    int ncases = 0, nbad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        const char *prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt")->valuestring;
        const cJSON *neg = cJSON_GetObjectItemCaseSensitive(c, "negative");
        char w[32], h[32], steps[32], guid[32], seed[32], out[4200], ref[4200];
        snprintf(w, sizeof w, "%d", cJSON_GetObjectItemCaseSensitive(c, "width")->valueint);
        snprintf(h, sizeof h, "%d", cJSON_GetObjectItemCaseSensitive(c, "height")->valueint);
        snprintf(steps, sizeof steps, "%d", cJSON_GetObjectItemCaseSensitive(c, "steps")->valueint);
        snprintf(guid, sizeof guid, "%g",
                 cJSON_GetObjectItemCaseSensitive(c, "guidance")->valuedouble);
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)zi_test_case_seed(c));
        snprintf(out, sizeof out, "%s/%s.png", dir, name);
        snprintf(ref, sizeof ref, "%s", zi_test_case_png(c));
        char *argv[32];
        int a = 0;
        argv[a++] = (char *)bin;
        argv[a++] = "generate";
        argv[a++] = "--model", argv[a++] = model;
        argv[a++] = "--prompt", argv[a++] = (char *)prompt;
        if (cJSON_IsString(neg))
            argv[a++] = "--negative-prompt", argv[a++] = neg->valuestring;
        argv[a++] = "--width", argv[a++] = w;
        argv[a++] = "--height", argv[a++] = h;
        argv[a++] = "--steps", argv[a++] = steps;
        argv[a++] = "--guidance", argv[a++] = guid;
        argv[a++] = "--seed", argv[a++] = seed;
        argv[a++] = "--rng", argv[a++] = zi_test_case_rng(root, c) == ZI_RNG_CPU ? "cpu" : "cuda";
        argv[a++] = "--backend", argv[a++] = "cuda";
        argv[a++] = "--quiet";
        argv[a++] = "--output", argv[a++] = out;
        argv[a] = NULL;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int rc = zg_run(argv);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
        if (rc != 0)
            fail_msg("%s: zimage generate --backend cuda exited with %d", name, rc);
        uint8_t *img = NULL, *want = NULL;
        int iw = 0, ih = 0, rw = 0, rh = 0;
        if (zi_png_read(out, &img, &iw, &ih, NULL) != ZI_OK ||
            zi_png_read(ref, &want, &rw, &rh, NULL) != ZI_OK)
            fail_msg("%s: reading PNGs: %s", name, zi_errmsg());
        assert_int_equal(iw, rw);
        assert_int_equal(ih, rh);
        double psnr = zi_psnr_u8(img, want, (size_t)iw * ih * 3);
        int ok = psnr >= ZG_MIN_PSNR;
        printf("golden %-18s %4dx%-4d PSNR %6.2f dB (min %.0f) %s  %.2f s\n", name, iw, ih, psnr,
               ZG_MIN_PSNR, ok ? "ok" : "FAIL", secs);
        if (js)
            fprintf(js, "{\"case\":\"%s\",\"psnr_db\":%.3f,\"ok\":%s,\"seconds\":%.3f}\n", name,
                    psnr > 999 ? 999.0 : psnr, ok ? "true" : "false", secs);
        nbad += !ok;
        ncases++;
        free(img);
        free(want);
        unlink(out);
    }
    if (js)
        fclose(js);
    rmdir(dir);
    assert_int_equal(ncases, cJSON_GetArraySize(cases));
    assert_true(ncases >= 1);
    cJSON_Delete(root);
    assert_int_equal(nbad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else /* !ZI_HAVE_CUDA */

#include <stdio.h>

int main(void)
{
    fprintf(stderr, "test_golden_cuda: built without CUDA\n");
    return 1;
}

#endif
