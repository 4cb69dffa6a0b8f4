/*
 * profile.c - per-op timing wrappers swapped into a backend's function table (profile.h).
 *
 * Each profiled backend has a slot holding a copy of its original table and the per-op
 * totals; a wrapper finds the slot of the backend it is called with, calls the original
 * entry, waits with be->sync() and adds the wall time. Only the entries listed in
 * ZI_PROF_OPS are wrapped; memory management, sync and stats stay as they are.
 */
#include "profile.h"
#include "zi_err.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* X(name): every wrapped entry of zi_backend, in report order for equal times. */
#define ZI_PROF_OPS(X)                                                                             \
    X(upload_weight)                                                                               \
    X(upload)                                                                                      \
    X(download)                                                                                    \
    X(linear)                                                                                      \
    X(embedding)                                                                                   \
    X(rmsnorm)                                                                                     \
    X(layernorm)                                                                                   \
    X(groupnorm)                                                                                   \
    X(rope)                                                                                        \
    X(attention)                                                                                   \
    X(add)                                                                                         \
    X(silu)                                                                                        \
    X(tanh_)                                                                                       \
    X(silu_mul)                                                                                    \
    X(affine)                                                                                      \
    X(mul_row)                                                                                     \
    X(gated_add)                                                                                   \
    X(copy)                                                                                        \
    X(transpose)                                                                                   \
    X(conv2d)                                                                                      \
    X(upsample2x)                                                                                  \
    X(to_rgb8)

enum {
#define ZI_PROF_ENUM(name) ZI_PROF_##name,
    ZI_PROF_OPS(ZI_PROF_ENUM)
#undef ZI_PROF_ENUM
        ZI_PROF_NOPS
};

_Static_assert(ZI_PROF_NOPS <= ZI_PROFILE_MAX_OPS, "raise ZI_PROFILE_MAX_OPS");

static const char *const zi_prof_names[ZI_PROF_NOPS] = {
#define ZI_PROF_NAME(name) #name,
    ZI_PROF_OPS(ZI_PROF_NAME)
#undef ZI_PROF_NAME
};

#define ZI_PROF_SLOTS 8

typedef struct zi_prof_slot {
    zi_backend *be; /* NULL: free */
    zi_backend orig;
    double ms[ZI_PROF_NOPS];
    uint64_t calls[ZI_PROF_NOPS];
} zi_prof_slot;

static zi_prof_slot zi_prof_slots[ZI_PROF_SLOTS];
static pthread_mutex_t zi_prof_lock = PTHREAD_MUTEX_INITIALIZER;

static double zi_prof_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The slot of a profiled backend. A wrapper is only ever installed in a profiled
 * backend's table, so a miss is a broken invariant, not an input error. */
static zi_prof_slot *zi_prof_find(const zi_backend *be)
{
    pthread_mutex_lock(&zi_prof_lock);
    zi_prof_slot *s = NULL;
    for (int i = 0; i < ZI_PROF_SLOTS && !s; i++)
        if (zi_prof_slots[i].be == be)
            s = &zi_prof_slots[i];
    pthread_mutex_unlock(&zi_prof_lock);
    if (!s)
        abort();
    return s;
}

static void zi_prof_account(zi_prof_slot *s, zi_backend *be, int op, double t0)
{
    be->sync(be);
    s->ms[op] += zi_prof_now_ms() - t0;
    s->calls[op]++;
}

/* A wrapper for entry `name` of type (params) returning void or int. */
#define ZI_PROF_VOID(name, params, args)                                                           \
    static void zi_prof_##name params                                                              \
    {                                                                                              \
        zi_prof_slot *s = zi_prof_find(be);                                                        \
        double t0 = zi_prof_now_ms();                                                              \
        s->orig.name args;                                                                         \
        zi_prof_account(s, be, ZI_PROF_##name, t0);                                                \
    }
#define ZI_PROF_INT(name, params, args)                                                            \
    static int zi_prof_##name params                                                               \
    {                                                                                              \
        zi_prof_slot *s = zi_prof_find(be);                                                        \
        double t0 = zi_prof_now_ms();                                                              \
        int rc = s->orig.name args;                                                                \
        zi_prof_account(s, be, ZI_PROF_##name, t0);                                                \
        return rc;                                                                                 \
    }

typedef const zi_tensor ct;

ZI_PROF_INT(upload_weight,
            (zi_backend * be, zi_tensor *t, const void *src, zi_dtype dt, int nd,
             const int64_t *sh),
            (be, t, src, dt, nd, sh))
ZI_PROF_INT(upload, (zi_backend * be, zi_tensor *dst, const float *src, size_t n),
            (be, dst, src, n))
ZI_PROF_INT(download, (zi_backend * be, float *dst, ct *src, size_t n), (be, dst, src, n))
ZI_PROF_VOID(linear, (zi_backend * be, zi_tensor *o, ct *in, ct *w, ct *b, int M, int K, int N),
             (be, o, in, w, b, M, K, N))
ZI_PROF_VOID(embedding, (zi_backend * be, zi_tensor *o, ct *t, const int32_t *ids, int R, int D),
             (be, o, t, ids, R, D))
ZI_PROF_VOID(rmsnorm, (zi_backend * be, zi_tensor *o, ct *in, ct *w, int R, int D, float eps),
             (be, o, in, w, R, D, eps))
ZI_PROF_VOID(layernorm, (zi_backend * be, zi_tensor *o, ct *in, int R, int D, float eps),
             (be, o, in, R, D, eps))
ZI_PROF_VOID(groupnorm,
             (zi_backend * be, zi_tensor *o, ct *in, ct *g, ct *b, int C, int HW, int G, float eps,
              int silu),
             (be, o, in, g, b, C, HW, G, eps, silu))
ZI_PROF_VOID(rope,
             (zi_backend * be, zi_tensor *x, ct *c, ct *s_, int S, int H, int hd,
              zi_rope_layout layout),
             (be, x, c, s_, S, H, hd, layout))
ZI_PROF_VOID(attention,
             (zi_backend * be, zi_tensor *o, ct *q, ct *k, ct *v, int Sq, int Skv, int H, int KVH,
              int hd, float scale, int causal),
             (be, o, q, k, v, Sq, Skv, H, KVH, hd, scale, causal))
ZI_PROF_VOID(add, (zi_backend * be, zi_tensor *o, ct *a, ct *b, size_t n), (be, o, a, b, n))
ZI_PROF_VOID(silu, (zi_backend * be, zi_tensor *o, ct *in, size_t n), (be, o, in, n))
ZI_PROF_VOID(tanh_, (zi_backend * be, zi_tensor *o, ct *in, size_t n), (be, o, in, n))
ZI_PROF_VOID(silu_mul, (zi_backend * be, zi_tensor *o, ct *g, ct *u, size_t n), (be, o, g, u, n))
ZI_PROF_VOID(affine, (zi_backend * be, zi_tensor *o, ct *in, float a, float b, size_t n),
             (be, o, in, a, b, n))
ZI_PROF_VOID(mul_row, (zi_backend * be, zi_tensor *o, ct *in, ct *s_, int R, int D),
             (be, o, in, s_, R, D))
ZI_PROF_VOID(gated_add, (zi_backend * be, zi_tensor *x, ct *g, ct *y, int R, int D),
             (be, x, g, y, R, D))
ZI_PROF_VOID(copy, (zi_backend * be, zi_tensor *d, ct *src, size_t n), (be, d, src, n))
ZI_PROF_VOID(transpose, (zi_backend * be, zi_tensor *o, ct *in, int R, int C), (be, o, in, R, C))
ZI_PROF_VOID(conv2d,
             (zi_backend * be, zi_tensor *o, ct *in, ct *w, ct *b, int Ci, int Co, int h, int wd,
              int k),
             (be, o, in, w, b, Ci, Co, h, wd, k))
ZI_PROF_VOID(upsample2x, (zi_backend * be, zi_tensor *o, ct *in, int C, int h, int wd),
             (be, o, in, C, h, wd))
ZI_PROF_INT(to_rgb8, (zi_backend * be, uint8_t *rgb, ct *in, int h, int wd), (be, rgb, in, h, wd))

int zi_profile_start(zi_backend *be)
{
    if (!be)
        return zi_errorf(ZI_EINVAL, "profile: no backend");
    pthread_mutex_lock(&zi_prof_lock);
    zi_prof_slot *free_slot = NULL;
    for (int i = 0; i < ZI_PROF_SLOTS; i++) {
        if (zi_prof_slots[i].be == be) {
            pthread_mutex_unlock(&zi_prof_lock);
            return zi_errorf(ZI_EINVAL, "profile: backend %s is already being profiled", be->name);
        }
        if (!zi_prof_slots[i].be && !free_slot)
            free_slot = &zi_prof_slots[i];
    }
    if (!free_slot) {
        pthread_mutex_unlock(&zi_prof_lock);
        return zi_errorf(ZI_EINVAL, "profile: more than %d backends profiled at once",
                         ZI_PROF_SLOTS);
    }
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->be = be;
    free_slot->orig = *be;
    pthread_mutex_unlock(&zi_prof_lock);
#define ZI_PROF_SWAP(name) be->name = zi_prof_##name;
    ZI_PROF_OPS(ZI_PROF_SWAP)
#undef ZI_PROF_SWAP
    return ZI_OK;
}

int zi_profile_stop(zi_backend *be, zi_profile_entry *out, int cap, int *n)
{
    if (n)
        *n = 0;
    pthread_mutex_lock(&zi_prof_lock);
    zi_prof_slot *s = NULL;
    for (int i = 0; i < ZI_PROF_SLOTS && !s; i++)
        if (be && zi_prof_slots[i].be == be)
            s = &zi_prof_slots[i];
    pthread_mutex_unlock(&zi_prof_lock);
    if (!s)
        return zi_errorf(ZI_EINVAL, "profile: backend is not being profiled");
#define ZI_PROF_RESTORE(name) be->name = s->orig.name;
    ZI_PROF_OPS(ZI_PROF_RESTORE)
#undef ZI_PROF_RESTORE
    zi_profile_entry all[ZI_PROF_NOPS] = {{0}};
    int k = 0;
    for (int op = 0; op < ZI_PROF_NOPS; op++) {
        if (!s->calls[op])
            continue;
        zi_profile_entry e = {zi_prof_names[op], s->calls[op], s->ms[op]};
        int j = k++; /* insertion by time, largest first; ties keep the table order */
        while (j > 0 && all[j - 1].ms < e.ms) {
            all[j] = all[j - 1];
            j--;
        }
        all[j] = e;
    }
    if (k > cap)
        k = cap > 0 ? cap : 0;
    if (out && k > 0)
        memcpy(out, all, (size_t)k * sizeof *out);
    if (n)
        *n = out ? k : 0;
    pthread_mutex_lock(&zi_prof_lock);
    s->be = NULL;
    pthread_mutex_unlock(&zi_prof_lock);
    return ZI_OK;
}
