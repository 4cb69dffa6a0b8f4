/*
 * emu_test.h - helpers shared by the CUDA emulator's own tests (tests/cudaemu/test_emu_*.c and
 * test_emu_*.cpp): device memory and streams that must be created, an expected abort of the
 * emulator in a forked child, event timing over a nap, bf16 -> f32. Tests only: the emulator's
 * sources never include it (CMake builds them from this folder's .c and .cpp files that are
 * not test_*; a header is compiled only where it is included). Static inline functions, C11
 * and C++17.
 *
 * Failures: in a cmocka test (cmocka.h included before this header) ZI_EMU_CHECK,
 * ZI_EMU_CHECK_EQ and ZI_EMU_FAIL are cmocka's assert_true, assert_int_equal and fail_msg; in a
 * plain test they print the check (or the message) on stderr and exit with status 1.
 */
#ifndef ZI_EMU_TEST_H
#define ZI_EMU_TEST_H

#include <cuda_runtime_api.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef assert_true /* cmocka */
#define ZI_EMU_CHECK(cond) assert_true(cond)
#define ZI_EMU_CHECK_EQ(a, b) assert_int_equal((a), (b))
#define ZI_EMU_FAIL(...) fail_msg(__VA_ARGS__)
#else
#define ZI_EMU_CHECK(cond)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define ZI_EMU_CHECK_EQ(a, b) ZI_EMU_CHECK((a) == (b))
#define ZI_EMU_FAIL(...)                                                                           \
    do {                                                                                           \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        exit(1);                                                                                   \
    } while (0)
#endif

/* `bytes` (> 0) of device memory from cudaMalloc. */
static inline void *zi_emu_test_dev_alloc(size_t bytes)
{
    void *p = NULL;
    ZI_EMU_CHECK_EQ(cudaMalloc(&p, bytes), cudaSuccess);
    ZI_EMU_CHECK(p != NULL);
    return p;
}

static inline cudaStream_t zi_emu_test_stream_new(unsigned flags)
{
    cudaStream_t s = NULL;
    ZI_EMU_CHECK_EQ(cudaStreamCreateWithFlags(&s, flags), cudaSuccess);
    return s;
}

/* bf16 bits -> f32: a bf16 is the high half of an IEEE single. */
static inline float zi_emu_test_bf2f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Event times are the emulated device's: an idle stream reaches an event when it is
 * recorded, so host time between two records counts. With e0 just recorded on the idle
 * stream s: naps 20 ms, records e1 on s and checks that the elapsed time covers the nap. */
static inline void zi_emu_test_check_nap_timed(cudaEvent_t e0, cudaEvent_t e1, cudaStream_t s)
{
    struct timespec nap = {0, 20 * 1000 * 1000};
    nanosleep(&nap, NULL);
    ZI_EMU_CHECK_EQ(cudaEventRecord(e1, s), cudaSuccess);
    ZI_EMU_CHECK_EQ(cudaEventSynchronize(e1), cudaSuccess);
    float ms = -1.0f;
    ZI_EMU_CHECK_EQ(cudaEventElapsedTime(&ms, e0, e1), cudaSuccess);
    ZI_EMU_CHECK(ms >= 19.0f && ms < 2000.0f);
}

/* Runs fn in a forked child, then cudaDeviceSynchronize there (launches and copies are queued:
 * device-side faults show when they run); the child must die of SIGABRT with both needles on
 * its stderr. */
static inline void zi_emu_test_expect_abort(void (*fn)(void), const char *needle1,
                                            const char *needle2)
{
    int fds[2];
    ZI_EMU_CHECK_EQ(pipe(fds), 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ZI_EMU_CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn();
        cudaDeviceSynchronize();
        _exit(0);
    }
    close(fds[1]);
    size_t len = 0, cap = 4096;
    char *err = (char *)malloc(cap);
    ZI_EMU_CHECK(err != NULL);
    ssize_t k;
    while ((k = read(fds[0], err + len, cap - 1 - len)) > 0) {
        len += (size_t)k;
        if (len == cap - 1) {
            char *grown = (char *)realloc(err, 2 * cap);
            ZI_EMU_CHECK(grown != NULL);
            err = grown;
            cap *= 2;
        }
    }
    err[len] = 0;
    close(fds[0]);
    int st = 0;
    ZI_EMU_CHECK_EQ(waitpid(pid, &st, 0), pid);
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT) || !strstr(err, needle1) ||
        !strstr(err, needle2))
        ZI_EMU_FAIL("expected an abort mentioning \"%s\" and \"%s\"; status 0x%x, stderr:\n%s",
                    needle1, needle2, st, err);
    free(err);
}

#endif
