/*
 * emu_device.cpp - the device half of the CUDA emulator (tests only): launches, the thread
 * hierarchy, barriers, warp collectives and the warp-level matrix instructions used by
 * kernels/zi_cuda_*.cu, run on the CPU (declarations and contract: zi_cuda_emu.h, emu.h).
 *
 * Execution model: a launch is queued on its stream (zi_emu_enqueue, emu.h) and runs on the
 * OS thread that waits for the stream, under a process lock. Blocks run one after the other; the
 * threads of a block are fibers (ucontext, pooled stacks with a guard page) that switch only where
 * CUDA threads can wait for each other:
 * __syncthreads and the warp collectives (shuffles, __syncwarp, ldmatrix, mma). A fiber whose
 * thread returns without having waited starts the block's next unstarted thread itself, so a
 * kernel without barriers costs no context switch per thread. A thread arriving at a
 * collective deposits its operands; the last lane of the mask computes every lane's result
 * (the instruction's semantics are those of the whole warp, as on the GPU) and wakes the
 * others. Exited threads count as arrived at __syncthreads (sm_70+); a collective whose mask
 * names an exited or missing lane, divergent barriers or collectives, and deadlock abort
 * with a message that names the kernel, the block and the thread.
 *
 * cp.async copies are queued per thread and performed at the cp.async.wait_group that covers
 * them (PTX: nothing else guarantees completion), so a kernel that reads the destination
 * before waiting sees stale data here too. ZI_EMU_CP_ASYNC=eager goes to the other end of
 * what the hardware may do: each copy lands when it is issued, and the lanes a warp
 * collective wakes run before any other warp's threads, so a warp runs as far ahead of the
 * others as the barriers allow. Then a refill of a stage that other warps have not finished
 * reading (a missing __syncthreads before it) overwrites data they still read.
 *
 * References (cited next to each instruction): CUDA C++ Programming Guide, "Execution
 * configuration", "Synchronization functions", "Warp shuffle functions"; PTX ISA 9.0
 * 9.7.14.5.8 (mma.m16n8k16 fragments), 9.7.14.5.15 (ldmatrix), 9.7.9.25.3 (cp.async).
 */
/* _longjmp between fiber stacks is the point: glibc's fortified __longjmp_chk would
 * refuse to jump to another stack */
#undef _FORTIFY_SOURCE

#include "zi_cuda_emu.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define ZI_EMU_ASAN 1
#endif

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace
{

constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;
#ifdef ZI_EMU_ASAN
constexpr size_t kStackSize = (size_t)1 << 20; /* instrumented frames are larger */
#else
constexpr size_t kStackSize = (size_t)256 << 10;
#endif

enum thread_state { T_UNSTARTED, T_RUNNING, T_RUNNABLE, T_BARRIER, T_WARP, T_DONE };

enum coll_op {
    C_NONE,
    C_SHFL_XOR,
    C_SHFL_IDX,
    C_SHFL_UP,
    C_SHFL_DOWN,
    C_SYNCWARP,
    C_LDMATRIX,
    C_LDMATRIX_TRANS,
    C_MMA,
};

const char *op_name(int op)
{
    switch (op) {
    case C_SHFL_XOR:
        return "__shfl_xor_sync";
    case C_SHFL_IDX:
        return "__shfl_sync";
    case C_SHFL_UP:
        return "__shfl_up_sync";
    case C_SHFL_DOWN:
        return "__shfl_down_sync";
    case C_SYNCWARP:
        return "__syncwarp";
    case C_LDMATRIX:
        return "ldmatrix.sync.aligned.m8n8.x4.shared.b16";
    case C_LDMATRIX_TRANS:
        return "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16";
    case C_MMA:
        return "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    default:
        return "(none)";
    }
}

struct fiber;

struct cp_async_op {
    void *dst;
    const void *src;
    int src_bytes;
    int group; /* -1 until committed */
};

struct thread {
    uint3 idx;
    int lin; /* linear index in the block: warp = lin / 32, lane = lin % 32 */
    thread_state state;
    fiber *fib;
    std::vector<cp_async_op> cp; /* issued, not yet waited for */
    int next_group;
};

struct fiber {
    ucontext_t ctx; /* the first entry (makecontext); every switch with ASan */
    jmp_buf jb;     /* later switches without ASan */
    bool started;
    char *map; /* guard page + stack */
    size_t map_size;
    char *stack;
    size_t stack_size;
    thread *th;
    void *asan_fake;
};

struct warp {
    unsigned exists;  /* lanes present in the block */
    unsigned exited;  /* lanes whose thread returned */
    unsigned arrived; /* lanes waiting at the pending collective */
    int op;
    unsigned mask;
    const void *site;
    int width;
    /* operands (per lane) and results */
    uint64_t v[32];
    int arg[32];
    uint64_t out[32];
    const void *addr[32];
    uint32_t a[32][4];
    uint32_t b[32][2];
    float c[32][4];
    uint32_t r[32][4];
};

struct emu_state {
    std::mutex lock;
    /* the launch */
    const zi_emu::launch_config *cfg = nullptr;
    void (*body)(void *) = nullptr;
    void *body_ctx = nullptr;
    /* the running block */
    int n = 0;
    thread threads[kMaxThreads];
    warp warps[kMaxWarps];
    int next_unstarted = 0;
    int runq[kMaxThreads];
    int rq_head = 0, rq_len = 0;
    int done = 0;
    int bar_count = 0;
    const void *bar_site = nullptr;
    char *smem = nullptr;
    bool smem_ready = false;
    thread *cur = nullptr;
    /* fibers */
    std::vector<fiber *> fibers;
    std::vector<fiber *> free_fibers;
    ucontext_t main_ctx;
    jmp_buf main_jb;
    void *main_fake = nullptr;
    void *main_stack = nullptr;
    size_t main_stack_size = 0;
};

/* never destroyed: the fiber pool stays reachable (LeakSanitizer) and usable until exit */
emu_state &g = *new emu_state;

/* ---- messages ---- */

[[noreturn]] void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *name = g.cfg ? g.cfg->name : "(no kernel)";
    if (g.cur)
        fprintf(stderr,
                "zi_cuda_emu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u) [warp %d lane %d]: "
                "%s\n",
                name, blockIdx.x, blockIdx.y, blockIdx.z, g.cur->idx.x, g.cur->idx.y, g.cur->idx.z,
                g.cur->lin / 32, g.cur->lin % 32, msg);
    else
        fprintf(stderr, "zi_cuda_emu: kernel %s: %s\n", name, msg);
    fflush(stderr);
    abort();
}

thread *current(const char *what)
{
    if (!g.cur)
        fail("%s called outside a kernel", what);
    return g.cur;
}

/* ---- fibers ---- */

void fiber_start(void);

fiber *fiber_new(void)
{
    fiber *f = new fiber();
    long page = sysconf(_SC_PAGESIZE);
    f->map_size = kStackSize + (size_t)page;
    void *m = mmap(nullptr, f->map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED)
        fail("cannot map a fiber stack of %zu bytes", f->map_size);
    f->map = static_cast<char *>(m);
    if (mprotect(f->map, (size_t)page, PROT_NONE) != 0) /* guard: stacks grow down */
        fail("cannot protect a fiber stack guard page");
    f->stack = f->map + page;
    f->stack_size = kStackSize;
    if (getcontext(&f->ctx) != 0)
        fail("getcontext failed");
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = f->stack_size;
    f->ctx.uc_link = nullptr;
    makecontext(&f->ctx, fiber_start, 0);
    /* makecontext has placed the stack pointer; forget the stack so that ASan's
     * swapcontext interceptor does not unpoison the whole stack at every switch */
    f->ctx.uc_stack.ss_sp = nullptr;
    f->ctx.uc_stack.ss_size = 0;
    g.fibers.push_back(f);
    return f;
}

fiber *fiber_get(void)
{
    if (!g.free_fibers.empty()) {
        fiber *f = g.free_fibers.back();
        g.free_fibers.pop_back();
        return f;
    }
    return fiber_new();
}

fiber *g_starting; /* the fiber a switch enters (read by a fresh fiber's entry) */

/*
 * Leaves the running context - fiber `from`, or the launching thread's context when null -
 * for fiber `to` (null: the launching context); returns when something switches back.
 * Without ASan a switch is _setjmp/_longjmp (glibc's swapcontext makes a sigprocmask system
 * call per switch, about 20 times the cost); a fiber is entered the first time with
 * setcontext. With ASan every switch is swapcontext with the fiber annotations ASan
 * documents (its longjmp interceptor would unpoison the suspended fiber's frames).
 */
void switch_to(fiber *from, fiber *to)
{
    g_starting = to;
#ifdef ZI_EMU_ASAN
    void **fake = from ? &from->asan_fake : &g.main_fake;
    if (to)
        __sanitizer_start_switch_fiber(fake, to->stack, to->stack_size);
    else
        __sanitizer_start_switch_fiber(fake, g.main_stack, g.main_stack_size);
    if (to)
        to->started = true;
    if (swapcontext(from ? &from->ctx : &g.main_ctx, to ? &to->ctx : &g.main_ctx) != 0)
        fail("swapcontext failed");
    __sanitizer_finish_switch_fiber(*fake, nullptr, nullptr);
#else
    if (_setjmp(from ? from->jb : g.main_jb) == 0) {
        if (!to)
            _longjmp(g.main_jb, 1);
        if (!to->started) {
            to->started = true;
            setcontext(&to->ctx);
            fail("setcontext failed");
        }
        _longjmp(to->jb, 1);
    }
#endif
}

void bind(fiber *f, thread *t)
{
    f->th = t;
    t->fib = f;
}

void enter(thread *t)
{
    t->state = T_RUNNING;
    g.cur = t;
    threadIdx = t->idx;
}

void make_runnable(thread *t)
{
    t->state = T_RUNNABLE;
    g.runq[(g.rq_head + g.rq_len) % kMaxThreads] = t->lin;
    g.rq_len++;
}

/* make_runnable(), but at the head of the queue: t runs next. */
void make_runnable_first(thread *t)
{
    t->state = T_RUNNABLE;
    g.rq_head = (g.rq_head + kMaxThreads - 1) % kMaxThreads;
    g.runq[g.rq_head] = t->lin;
    g.rq_len++;
}

[[noreturn]] void deadlock(void);

/* The fiber to run next: a woken thread, else a new fiber for the next unstarted thread,
 * else (the block is done) the launching context, as null. */
fiber *pick_next(void)
{
    if (g.rq_len > 0) {
        thread *t = &g.threads[g.runq[g.rq_head]];
        g.rq_head = (g.rq_head + 1) % kMaxThreads;
        g.rq_len--;
        return t->fib;
    }
    if (g.next_unstarted < g.n) {
        fiber *f = fiber_get();
        bind(f, &g.threads[g.next_unstarted++]);
        return f;
    }
    if (g.done == g.n)
        return nullptr;
    deadlock();
}

/* The running thread waits (its state says for what) until another thread wakes it. */
void wait_here(void)
{
    thread *t = g.cur;
    fiber *f = t->fib;
    fiber *next = pick_next();
    switch_to(f, next);
    enter(t);
}

void cp_async_complete(thread *t, int upto_group);
void thread_exit(thread *t);

void fiber_loop(fiber *self)
{
    for (;;) {
        thread *t = self->th;
        enter(t);
        g.body(g.body_ctx);
        thread_exit(t);
        self->th = nullptr;
        t->fib = nullptr;
        if (g.rq_len == 0 && g.next_unstarted < g.n) {
            bind(self, &g.threads[g.next_unstarted++]);
            continue;
        }
        g.free_fibers.push_back(self);
        g.cur = nullptr;
        fiber *next = pick_next();
        switch_to(self, next);
    }
}

void fiber_start(void)
{
#ifdef ZI_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    fiber_loop(g_starting);
}

/* ---- lane masks in messages ---- */

void lanes_str(unsigned m, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < 32 && len + 12 < cap;) {
        if (!(m >> i & 1u)) {
            i++;
            continue;
        }
        int j = i;
        while (j + 1 < 32 && (m >> (j + 1) & 1u))
            j++;
        int k = j == i ? snprintf(buf + len, cap - len, "%s%d", len ? "," : "", i)
                       : snprintf(buf + len, cap - len, "%s%d-%d", len ? "," : "", i, j);
        len += (size_t)k;
        i = j + 1;
    }
    if (!len)
        snprintf(buf, cap, "none");
}

void deadlock(void)
{
    fprintf(stderr,
            "zi_cuda_emu: kernel %s, block (%u,%u,%u): deadlock: no thread can run, %d of %d "
            "have returned\n",
            g.cfg->name, blockIdx.x, blockIdx.y, blockIdx.z, g.done, g.n);
    for (int w = 0; w * 32 < g.n; w++) {
        const warp &W = g.warps[w];
        unsigned bar = 0, coll = 0;
        for (int l = 0; l < 32 && w * 32 + l < g.n; l++) {
            thread_state s = g.threads[w * 32 + l].state;
            bar |= (unsigned)(s == T_BARRIER) << l;
            coll |= (unsigned)(s == T_WARP) << l;
        }
        char b1[200], b2[200], b3[200];
        lanes_str(bar, b1, sizeof b1);
        lanes_str(coll, b2, sizeof b2);
        lanes_str(W.exited, b3, sizeof b3);
        fprintf(stderr,
                "  warp %d: at __syncthreads: lanes %s; at %s (mask 0x%08x): lanes %s; "
                "returned: lanes %s\n",
                w, b1, op_name(W.op), W.mask, b2, b3);
    }
    fflush(stderr);
    abort();
}

/* ---- barriers ---- */

void barrier_release(void)
{
    g.bar_count = 0;
    for (int i = 0; i < g.n; i++)
        if (g.threads[i].state == T_BARRIER)
            make_runnable(&g.threads[i]);
}

void thread_exit(thread *t)
{
    cp_async_complete(t, 1 << 30);
    if (!t->cp.empty()) /* issued but never committed: it still lands */
        for (const cp_async_op &op : t->cp) {
            memcpy(op.dst, op.src, (size_t)op.src_bytes);
            memset(static_cast<char *>(op.dst) + op.src_bytes, 0, (size_t)(16 - op.src_bytes));
        }
    t->cp.clear();
    t->state = T_DONE;
    g.done++;
    warp &w = g.warps[t->lin / 32];
    unsigned bit = 1u << (t->lin % 32);
    w.exited |= bit;
    if (w.arrived && (w.mask & bit)) {
        char b[200];
        lanes_str(w.arrived, b, sizeof b);
        fail("returned while lanes %s of its warp wait for it at %s (mask 0x%08x): every lane "
             "named in the mask must execute it",
             b, op_name(w.op), w.mask);
    }
    if (g.bar_count > 0 && g.bar_count + g.done == g.n)
        barrier_release();
}

/* ---- warp collectives ---- */

/* Registers the running lane at the warp's pending collective (or opens one) after the
 * checks every *.sync instruction implies; returns its warp. */
warp &coll_enter(int op, unsigned mask, const void *site, int width)
{
    thread *t = current(op_name(op));
    warp &w = g.warps[t->lin / 32];
    unsigned bit = 1u << (t->lin % 32);
    if (!(mask & bit))
        fail("%s: the calling lane is not in the mask 0x%08x (undefined behaviour)", op_name(op),
             mask);
    if (mask & ~w.exists)
        fail("%s: the mask 0x%08x names lanes that do not exist in this block (warp lanes "
             "0x%08x)",
             op_name(op), mask, w.exists);
    if (mask & w.exited) {
        char b[200];
        lanes_str(mask & w.exited, b, sizeof b);
        fail("%s: lanes %s named in the mask 0x%08x have already returned: they can never "
             "reach it",
             op_name(op), b, mask);
    }
    if (w.arrived) {
        if (w.op != op || w.mask != mask || w.site != site || w.width != width) {
            char b[200];
            lanes_str(w.arrived, b, sizeof b);
            fail("divergent warp collectives: lanes %s wait at %s (mask 0x%08x, width %d, call "
                 "site %p) but this lane reached %s (mask 0x%08x, width %d, call site %p)",
                 b, op_name(w.op), w.mask, w.width, w.site, op_name(op), mask, width, site);
        }
    } else {
        w.op = op;
        w.mask = mask;
        w.site = site;
        w.width = width;
    }
    return w;
}

/* After the lane stored its operands: true for the last lane of the mask, which then
 * computes every lane's result and calls coll_release; the others wait here. */
bool coll_arrive(warp &w)
{
    unsigned bit = 1u << (g.cur->lin % 32);
    w.arrived |= bit;
    if (w.arrived == w.mask)
        return true;
    g.cur->state = T_WARP;
    wait_here();
    return false;
}

/* ZI_EMU_CP_ASYNC=eager: cp.async copies land when issued, and a warp runs as far ahead of
 * the others as the barriers allow (see the file's header). */
int g_eager = -1; /* -1: not read from the environment yet */

bool eager_mode(void)
{
    if (g_eager < 0) {
        const char *e = getenv("ZI_EMU_CP_ASYNC");
        g_eager = e && strcmp(e, "eager") == 0;
    }
    return g_eager != 0;
}

void coll_release(warp &w)
{
    unsigned others = w.mask & ~(1u << (g.cur->lin % 32));
    int base = g.cur->lin & ~31;
    w.arrived = 0;
    if (eager_mode()) { /* the warp's lanes first, in lane order: the warp runs ahead */
        for (int l = 31; l >= 0; l--)
            if (others >> l & 1u)
                make_runnable_first(&g.threads[base + l]);
        return;
    }
    for (int l = 0; l < 32; l++)
        if (others >> l & 1u)
            make_runnable(&g.threads[base + l]);
}

/* CUDA C++ Programming Guide, "Warp shuffle functions": the lane reads `var` of the source
 * lane; width (a power of 2 <= 32) splits the warp into segments; a source past the
 * segment (down/xor) or before it (up) yields the lane's own value. The source lane must
 * be in the mask (its value is undefined otherwise: reported). */
uint64_t shfl(int op, unsigned mask, uint64_t v, int arg, int width, const void *site)
{
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail("%s: width %d is not a power of 2 in [1, 32]", op_name(op), width);
    warp &w = coll_enter(op, mask, site, width);
    int lane = g.cur->lin % 32;
    w.v[lane] = v;
    w.arg[lane] = arg;
    if (coll_arrive(w)) {
        for (int l = 0; l < 32; l++) {
            if (!(w.mask >> l & 1u))
                continue;
            int seg = l & ~(width - 1), src = l, a = w.arg[l];
            switch (w.op) {
            case C_SHFL_XOR:
                src = l ^ a;
                if (src < 0 || src > 31 || src >= seg + width)
                    src = l;
                break;
            case C_SHFL_IDX:
                src = seg + (a & (width - 1));
                break;
            case C_SHFL_UP:
                src = l - a;
                if (a < 0 || src < seg)
                    src = l;
                break;
            default: /* down */
                src = l + a;
                if (a < 0 || src >= seg + width)
                    src = l;
                break;
            }
            if (!(w.mask >> src & 1u)) {
                fail("%s: lane %d reads lane %d, which is not in the mask 0x%08x (undefined "
                     "value)",
                     op_name(w.op), l, src, w.mask);
            }
            w.out[l] = w.v[src];
        }
        coll_release(w);
    }
    return w.out[lane];
}

template <class T> T shfl_t(int op, unsigned mask, T var, int arg, int width, const void *site)
{
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof var);
    bits = shfl(op, mask, bits, arg, width, site);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* ---- shared memory checks ---- */

/* ldmatrix and cp.async address the .shared state space: the block's dynamic shared
 * memory or a __shared__ variable (static storage here). Global (device) memory and a
 * thread's own stack are caught; a range must lie inside the dynamic buffer when it
 * starts there. */
void check_shared(const void *p, size_t n, const char *what)
{
    uintptr_t a = (uintptr_t)p;
    if (g.smem) {
        uintptr_t s = (uintptr_t)g.smem, e = s + g.cfg->smem;
        if (a >= s && a < e + 4096) {
            if (a + n > e)
                fail("%s: shared address %p + %zu is past the end of the %zu bytes of dynamic "
                     "shared memory",
                     what, p, n, g.cfg->smem);
            return;
        }
    }
    if (zi_emu_is_device_range(p, 1))
        fail("%s: %p is global (device) memory, not shared memory", what, p);
    for (const fiber *f : g.fibers)
        if (a >= (uintptr_t)f->stack && a < (uintptr_t)f->stack + f->stack_size)
            fail("%s: %p is a thread's local memory, not shared memory", what, p);
}

void cp_async_complete(thread *t, int upto_group)
{
    size_t keep = 0;
    for (size_t i = 0; i < t->cp.size(); i++) {
        cp_async_op &op = t->cp[i];
        if (op.group >= 0 && op.group < upto_group) {
            /* PTX 9.7.9.25.3.1: src-size bytes from src, the rest of cp-size zero-filled */
            memcpy(op.dst, op.src, (size_t)op.src_bytes);
            memset(static_cast<char *>(op.dst) + op.src_bytes, 0, (size_t)(16 - op.src_bytes));
        } else {
            t->cp[keep++] = op;
        }
    }
    t->cp.resize(keep);
}

} // namespace

/* ---- the device functions ---- */

void __syncthreads(void)
{
    const void *site = __builtin_return_address(0);
    thread *t = current("__syncthreads");
    /* Programming Guide: allowed in conditional code only if the condition is uniform
     * across the block; a different call site means divergence */
    if (g.bar_count == 0)
        g.bar_site = site;
    else if (site != g.bar_site)
        fail("divergent __syncthreads: %d threads wait at call site %p, this thread reached "
             "call site %p",
             g.bar_count, g.bar_site, site);
    g.bar_count++;
    if (g.bar_count + g.done == g.n) {
        barrier_release();
        return;
    }
    t->state = T_BARRIER;
    wait_here();
}

void __syncwarp(unsigned mask)
{
    warp &w = coll_enter(C_SYNCWARP, mask, __builtin_return_address(0), 32);
    if (coll_arrive(w))
        coll_release(w);
}

#define ZI_EMU_SHFL(name, op, T, argT)                                                             \
    T name(unsigned mask, T var, argT arg, int width)                                              \
    {                                                                                              \
        return shfl_t<T>(op, mask, var, (int)arg, width, __builtin_return_address(0));             \
    }
ZI_EMU_SHFL(__shfl_xor_sync, C_SHFL_XOR, int, int)
ZI_EMU_SHFL(__shfl_xor_sync, C_SHFL_XOR, unsigned, int)
ZI_EMU_SHFL(__shfl_xor_sync, C_SHFL_XOR, long long, int)
ZI_EMU_SHFL(__shfl_xor_sync, C_SHFL_XOR, unsigned long long, int)
ZI_EMU_SHFL(__shfl_xor_sync, C_SHFL_XOR, float, int)
ZI_EMU_SHFL(__shfl_xor_sync, C_SHFL_XOR, double, int)
ZI_EMU_SHFL(__shfl_sync, C_SHFL_IDX, int, int)
ZI_EMU_SHFL(__shfl_sync, C_SHFL_IDX, unsigned, int)
ZI_EMU_SHFL(__shfl_sync, C_SHFL_IDX, float, int)
ZI_EMU_SHFL(__shfl_sync, C_SHFL_IDX, double, int)
ZI_EMU_SHFL(__shfl_down_sync, C_SHFL_DOWN, int, unsigned)
ZI_EMU_SHFL(__shfl_down_sync, C_SHFL_DOWN, float, unsigned)
ZI_EMU_SHFL(__shfl_down_sync, C_SHFL_DOWN, double, unsigned)
ZI_EMU_SHFL(__shfl_up_sync, C_SHFL_UP, int, unsigned)
ZI_EMU_SHFL(__shfl_up_sync, C_SHFL_UP, float, unsigned)
#undef ZI_EMU_SHFL

size_t __cvta_generic_to_shared(const void *p)
{
    current("__cvta_generic_to_shared");
    check_shared(p, 1, "__cvta_generic_to_shared");
    return (size_t)((uintptr_t)p & 0xffffffffu);
}

/*
 * ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 (PTX ISA 9.0, 9.7.14.5.15):
 * - threads 8i .. 8i+7 hold the addresses of rows 0..7 of matrix i (.x4: i = 0..3); a row
 *   is 8 contiguous b16 elements (16 bytes) and must be 16-byte aligned;
 * - "a group of four threads loads an entire row": without .trans thread l receives, in
 *   destination register i, the 32-bit fragment (row l/4, columns 2(l%4), 2(l%4)+1) of
 *   matrix i, the lower column in the low half (Figure 104);
 * - .trans: "the matrix is loaded in column-major format", i.e. the same fragment layout
 *   applied to the transposed matrix: thread l receives elements (rows 2(l%4), 2(l%4)+1;
 *   column l/4) of the matrix as stored;
 * - all 32 lanes must execute it (.sync.aligned); undefined if a thread has exited.
 */
void zi_emu_ldmatrix_x4(uint32_t r[4], const void *row_addr, int trans)
{
    int op = trans ? C_LDMATRIX_TRANS : C_LDMATRIX;
    warp &w = coll_enter(op, 0xffffffffu, __builtin_return_address(0), 32);
    if ((uintptr_t)row_addr & 15u)
        fail("%s: row address %p is not 16-byte aligned", op_name(op), row_addr);
    check_shared(row_addr, 16, op_name(op));
    int lane = g.cur->lin % 32;
    w.addr[lane] = row_addr;
    if (coll_arrive(w)) {
        uint16_t m[4][8][8]; /* [matrix][row][col] */
        for (int l = 0; l < 32; l++)
            memcpy(m[l / 8][l % 8], w.addr[l], 16);
        for (int l = 0; l < 32; l++) {
            int gr = l / 4, tc = l % 4;
            for (int i = 0; i < 4; i++) {
                uint32_t lo, hi;
                if (!trans) {
                    lo = m[i][gr][2 * tc];
                    hi = m[i][gr][2 * tc + 1];
                } else {
                    lo = m[i][2 * tc][gr];
                    hi = m[i][2 * tc + 1][gr];
                }
                w.r[l][i] = lo | hi << 16;
            }
        }
        coll_release(w);
    }
    for (int i = 0; i < 4; i++)
        r[i] = w.r[lane][i];
}

namespace
{
float bf16_lo(uint32_t v)
{
    return __uint_as_float(v << 16);
}
float bf16_hi(uint32_t v)
{
    return __uint_as_float(v & 0xffff0000u);
}
} // namespace

/*
 * mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c (PTX ISA 9.0, 9.7.14.5.8,
 * "Matrix Fragments for mma.m16n8k16 with floating point type"); D = A B + C with A 16x16,
 * B 16x8, C/D 16x8; groupID = lane >> 2, threadID_in_group = lane % 4; in each .b32
 * register the lower-numbered element is the low half ("elements low to high"):
 * - A: four registers {a0,a1} {a2,a3} {a4,a5} {a6,a7}; ai has row groupID for i in
 *   {0,1,4,5}, groupID + 8 otherwise; column threadID_in_group*2 + (i & 1), + 8 for i >= 4;
 * - B: two registers {b0,b1} {b2,b3}; bi has row threadID_in_group*2 + (i & 1), + 8 for
 *   i >= 2; column groupID;
 * - C/D: c0..c3 (f32); ci has row groupID for i < 2, groupID + 8 otherwise; column
 *   threadID_in_group*2 + (i & 1).
 * Products of bf16 are exact in fp32; the sum over k is accumulated in fp32 onto C.
 */
void zi_emu_mma_m16n8k16_bf16_f32(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    warp &w = coll_enter(C_MMA, 0xffffffffu, __builtin_return_address(0), 32);
    int lane = g.cur->lin % 32;
    for (int i = 0; i < 4; i++) {
        w.a[lane][i] = a[i];
        w.c[lane][i] = c[i];
    }
    w.b[lane][0] = b0;
    w.b[lane][1] = b1;
    if (coll_arrive(w)) {
        float A[16][16], B[16][8], C[16][8];
        for (int l = 0; l < 32; l++) {
            int gid = l >> 2, tig = l % 4;
            for (int i = 0; i < 8; i++) {
                uint32_t reg = w.a[l][i / 2];
                float v = (i & 1) ? bf16_hi(reg) : bf16_lo(reg);
                int row = (i < 2 || (i >= 4 && i < 6)) ? gid : gid + 8;
                int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                A[row][col] = v;
            }
            for (int i = 0; i < 4; i++) {
                uint32_t reg = w.b[l][i / 2];
                float v = (i & 1) ? bf16_hi(reg) : bf16_lo(reg);
                int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
                B[row][gid] = v;
            }
            for (int i = 0; i < 4; i++)
                C[gid + (i >= 2 ? 8 : 0)][tig * 2 + (i & 1)] = w.c[l][i];
        }
        for (int l = 0; l < 32; l++) {
            int gid = l >> 2, tig = l % 4;
            for (int i = 0; i < 4; i++) {
                int row = gid + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
                float acc = C[row][col];
                /* a product of two bf16 is exact in fp32: this is fma */
                for (int k = 0; k < 16; k++)
                    acc += A[row][k] * B[k][col];
                w.c[l][i] = acc;
            }
        }
        coll_release(w);
    }
    for (int i = 0; i < 4; i++)
        c[i] = w.c[lane][i];
}

/*
 * cp.async.cg.shared.global [dst], [src], 16, src-size (PTX ISA 9.0, 9.7.9.25.3.1): copies
 * src-size bytes (at most cp-size = 16; larger is undefined) from global memory and fills
 * the rest of the 16 destination bytes with zeros; both addresses aligned to 16 bytes
 * ("Addresses as Operands"). Completion is guaranteed only by cp.async.wait_group /
 * wait_all (9.7.9.25.3.3-4), so the copy is queued until then.
 */
void zi_emu_cp_async16(void *smem, const void *gmem, int src_bytes)
{
    thread *t = current("cp.async");
    if (src_bytes < 0 || src_bytes > 16)
        fail("cp.async: src-size %d is outside [0, cp-size 16] (undefined behaviour)", src_bytes);
    if ((uintptr_t)smem & 15u)
        fail("cp.async: shared destination %p is not 16-byte aligned", smem);
    check_shared(smem, 16, "cp.async destination");
    if (src_bytes > 0) {
        if ((uintptr_t)gmem & 15u)
            fail("cp.async: global source %p is not 16-byte aligned", gmem);
        if (!zi_emu_is_device_range(gmem, (size_t)src_bytes))
            fail("cp.async: source %p + %d is not device (global) memory", gmem, src_bytes);
    }
    if (eager_mode()) { /* the copy lands at once */
        memcpy(smem, gmem, (size_t)src_bytes);
        memset(static_cast<char *>(smem) + src_bytes, 0, (size_t)(16 - src_bytes));
        return;
    }
    t->cp.push_back(cp_async_op{smem, gmem, src_bytes, -1});
}

void zi_emu_set_eager(int on)
{
    g_eager = on != 0;
}

/* cp.async.commit_group (9.7.9.25.3.3): the thread's uncommitted copies form a group. */
void zi_emu_cp_async_commit_group(void)
{
    thread *t = current("cp.async.commit_group");
    for (cp_async_op &op : t->cp)
        if (op.group < 0)
            op.group = t->next_group;
    t->next_group++;
}

/* cp.async.wait_group N (9.7.9.25.3.4): waits until at most the N most recent committed
 * groups are pending; uncommitted copies are not waited for. */
void zi_emu_cp_async_wait_group(int n)
{
    thread *t = current("cp.async.wait_group");
    if (n < 0)
        fail("cp.async.wait_group: negative count %d", n);
    cp_async_complete(t, t->next_group - n);
}

/* ---- launches ---- */

namespace zi_emu
{

void *dynamic_smem(void)
{
    current("dynamic shared memory");
    if (!g.smem_ready) {
        /* exactly the launch's bytes, so that ASan reports overruns; filled with 0xff
         * (NaN as f32 and bf16) because shared memory starts undefined */
        void *p = nullptr;
        if (posix_memalign(&p, 16, g.cfg->smem) != 0 || (!p && g.cfg->smem))
            fail("cannot allocate %zu bytes of dynamic shared memory", g.cfg->smem);
        memset(p, 0xff, g.cfg->smem);
        g.smem = static_cast<char *>(p);
        g.smem_ready = true;
    }
    return g.smem;
}

/* CUDA C++ Programming Guide, execution configuration and "Compute capabilities"
 * (technical specifications, sm_90): at most 1024 threads per block, block dimensions
 * <= (1024, 1024, 64), grid <= (2^31-1, 65535, 65535), none zero -> cudaErrorInvalidConfiguration;
 * dynamic shared memory above the function's cudaFuncAttributeMaxDynamicSharedMemorySize
 * (48 KiB until raised) -> cudaErrorInvalidValue. */
namespace
{

/*
 * Static __shared__ data per kernel. Here a __shared__ variable is a function-local static,
 * so the program's symbol table has it: "_ZZ" + the kernel's mangled name without "_Z" +
 * "E" + the variable (Itanium C++ ABI, local entities), with its size. The executable's
 * .symtab is read once (from /proc/self/exe, mapped for the life of the process); a kernel
 * whose symbol is not found (a stripped binary) is not checked. Function-local statics that
 * are not __shared__ (other than __func__ & co) count too: on a GPU a kernel has no others.
 */
struct smem_symbols {
    std::mutex lock;
    bool loaded = false;
    const Elf64_Sym *syms = nullptr;
    size_t nsyms = 0;
    const char *str = nullptr;
    size_t nstr = 0;
    uintptr_t bias = 0;
    std::vector<std::pair<const void *, size_t>> cache;
};

smem_symbols &g_smem = *new smem_symbols;

int main_program_bias(struct dl_phdr_info *info, size_t, void *data)
{
    *static_cast<uintptr_t *>(data) = info->dlpi_addr; /* the first object is the program */
    return 1;
}

void smem_load(smem_symbols &t)
{
    t.loaded = true;
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
        if (fd >= 0)
            close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    void *m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return;
    const char *base = static_cast<const char *>(m);
    const Elf64_Ehdr *eh = reinterpret_cast<const Elf64_Ehdr *>(base);
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_shoff > size ||
        (size - eh->e_shoff) / sizeof(Elf64_Shdr) < eh->e_shnum)
        return;
    const Elf64_Shdr *sh = reinterpret_cast<const Elf64_Shdr *>(base + eh->e_shoff);
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum)
            continue;
        const Elf64_Shdr &ss = sh[sh[i].sh_link];
        if (sh[i].sh_offset > size || sh[i].sh_size > size - sh[i].sh_offset ||
            ss.sh_offset > size || ss.sh_size > size - ss.sh_offset)
            return;
        t.syms = reinterpret_cast<const Elf64_Sym *>(base + sh[i].sh_offset);
        t.nsyms = sh[i].sh_size / sizeof(Elf64_Sym);
        t.str = base + ss.sh_offset;
        t.nstr = ss.sh_size;
        dl_iterate_phdr(main_program_bias, &t.bias);
        return;
    }
}

const char *smem_name(const smem_symbols &t, const Elf64_Sym &s)
{
    if (s.st_name >= t.nstr || !memchr(t.str + s.st_name, 0, t.nstr - s.st_name))
        return "";
    return t.str + s.st_name;
}

/* Bytes of static __shared__ data kernel `fn` declares; 0 when unknown. */
size_t static_smem(const void *fn)
{
    std::lock_guard<std::mutex> hold(g_smem.lock);
    for (const auto &c : g_smem.cache)
        if (c.first == fn)
            return c.second;
    if (!g_smem.loaded)
        smem_load(g_smem);
    const char *fname = nullptr;
    for (size_t i = 0; i < g_smem.nsyms && !fname; i++) {
        const Elf64_Sym &s = g_smem.syms[i];
        if (ELF64_ST_TYPE(s.st_info) == STT_FUNC && s.st_value &&
            s.st_value + g_smem.bias == (uintptr_t)fn &&
            strncmp(smem_name(g_smem, s), "_Z", 2) == 0)
            fname = smem_name(g_smem, s);
    }
    size_t total = 0;
    if (fname) {
        std::string prefix = std::string("_ZZ") + (fname + 2) + "E";
        for (size_t i = 0; i < g_smem.nsyms; i++) {
            const Elf64_Sym &s = g_smem.syms[i];
            const char *n = smem_name(g_smem, s);
            if (ELF64_ST_TYPE(s.st_info) != STT_OBJECT || strncmp(n, prefix.c_str(), prefix.size()))
                continue;
            const char *v = n + prefix.size(); /* <length><identifier>: skip __func__ & co */
            while (*v >= '0' && *v <= '9')
                v++;
            if (strncmp(v, "__", 2) != 0)
                total += (size_t)s.st_size;
        }
    }
    g_smem.cache.emplace_back(fn, total);
    return total;
}

} // namespace

int launch_check(const launch_config &c)
{
    unsigned long long threads = (unsigned long long)c.block.x * c.block.y * c.block.z;
    if (c.block.x == 0 || c.block.y == 0 || c.block.z == 0 || c.block.x > 1024 ||
        c.block.y > 1024 || c.block.z > 64 || threads > (unsigned long long)kMaxThreads ||
        c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 2147483647u ||
        c.grid.y > 65535 || c.grid.z > 65535) {
        zi_emu_set_error(cudaErrorInvalidConfiguration);
        return 0;
    }
    if (c.smem > (size_t)zi_emu_func_max_smem(c.fn)) {
        zi_emu_set_error(cudaErrorInvalidValue);
        return 0;
    }
    /* Compute capabilities, sm_90: static shared memory is limited to 48 KB per block
     * (more must be dynamic, with opt-in) - nvcc (ptxas) rejects such a kernel, so it is
     * a bug of the source whatever the launch; and static + dynamic shared memory must fit
     * the opt-in maximum ("The sum of this value and the function attribute sharedSizeBytes
     * cannot exceed the device attribute cudaDevAttrMaxSharedMemoryPerBlockOptin"). */
    size_t st = static_smem(c.fn);
    if (st > (size_t)48 * 1024) {
        fprintf(stderr,
                "zi_cuda_emu: kernel %s declares %zu bytes of static __shared__ data: more than "
                "the 48 KiB per block a kernel may declare statically (ptxas would reject it; "
                "use dynamic shared memory with cudaFuncAttributeMaxDynamicSharedMemorySize)\n",
                c.name, st);
        fflush(stderr);
        abort();
    }
    if (st + c.smem > (size_t)zi_emu_max_optin_smem()) {
        zi_emu_set_error(cudaErrorInvalidValue);
        return 0;
    }
    return 1;
}

/* A pointer argument must be device memory or, with unified addressing, page-locked host
 * memory (Runtime API, "Unified Addressing": cudaHostAlloc memory "is always directly
 * accessible from all devices that support unified addressing"). Only the address itself
 * is checked (a kernel given an empty range may pass an end pointer). */
void check_pointer_arg(const launch_config &c, int index, const void *p, bool running)
{
    if (!p || zi_emu_is_device_range(p, 1) || zi_emu_is_pinned_range(p, 1))
        return;
    if (running)
        fprintf(stderr,
                "zi_cuda_emu: kernel %s: argument %d (%p) is no longer device memory when the "
                "queued kernel starts: it was freed or unmapped while the launch was queued "
                "(the GPU would fault: cudaErrorIllegalAddress; synchronise before freeing)\n",
                c.name, index, p);
    else
        fprintf(stderr,
                "zi_cuda_emu: kernel %s: argument %d (%p) is not device memory (nor page-locked "
                "host memory): the kernel would fault on a GPU (cudaErrorIllegalAddress)\n",
                c.name, index, p);
    fflush(stderr);
    abort();
}

void launch_enqueue(const launch_config &c, void (*run)(void *), void (*destroy)(void *), void *ctx)
{
    /* zi_emu_enqueue records a dead stream as the launch error and destroys ctx */
    if (zi_emu_enqueue(c.stream, c.name, run, destroy, ctx) == cudaSuccess)
        zi_emu_count_launch();
}

namespace
{

void run_block(void)
{
    int n = g.n;
    for (int i = 0; i < n; i++) {
        thread &t = g.threads[i];
        t.lin = i;
        t.idx.x = (unsigned)i % blockDim.x;
        t.idx.y = ((unsigned)i / blockDim.x) % blockDim.y;
        t.idx.z = (unsigned)i / (blockDim.x * blockDim.y);
        t.state = T_UNSTARTED;
        t.fib = nullptr;
        t.cp.clear();
        t.next_group = 0;
    }
    for (int w = 0; w * 32 < n; w++) {
        warp &W = g.warps[w];
        int lanes = n - w * 32 < 32 ? n - w * 32 : 32;
        W.exists = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
        W.exited = 0;
        W.arrived = 0;
        W.op = C_NONE;
        W.mask = 0;
    }
    g.next_unstarted = 0;
    g.rq_head = g.rq_len = 0;
    g.done = 0;
    g.bar_count = 0;
    g.smem = nullptr;
    g.smem_ready = false;
    g.cur = nullptr;

    fiber *first = pick_next();
    switch_to(nullptr, first);
    g.cur = nullptr;
    if (g.done != n)
        fail("internal error: block ended with %d of %d threads done", g.done, n);
    free(g.smem);
    g.smem = nullptr;
}

} // namespace

void launch_run(const launch_config &c, void (*body)(void *), void *ctx)
{
    std::lock_guard<std::mutex> hold(g.lock);
    g.cfg = &c;
    g.body = body;
    g.body_ctx = ctx;
    g.n = (int)(c.block.x * c.block.y * c.block.z);
    blockDim = c.block;
    gridDim = c.grid;
#ifdef ZI_EMU_ASAN
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &g.main_stack, &g.main_stack_size);
        pthread_attr_destroy(&attr);
    }
#endif
    for (unsigned z = 0; z < c.grid.z; z++)
        for (unsigned y = 0; y < c.grid.y; y++)
            for (unsigned x = 0; x < c.grid.x; x++) {
                blockIdx.x = x;
                blockIdx.y = y;
                blockIdx.z = z;
                run_block();
            }
    g.cfg = nullptr;
    g.body = nullptr;
    g.body_ctx = nullptr;
}

} // namespace zi_emu
