/*
 * cmd_top.c - `zimage top`: a live terminal view of the worker fleet, read from Redis.
 *
 * Live mode redraws in place every --interval seconds on the terminal's alternate screen
 * (cursor home, each line followed by clear-to-end-of-line, then clear-to-end-of-screen;
 * cursor hidden), sized to the terminal (TIOCGWINSZ, re-read on SIGWINCH). When stdin is a
 * terminal it is put in non-canonical, no-echo mode and polled, so `q` quits at once.
 * SIGINT/SIGTERM/SIGHUP (sigaction, no SA_RESTART, so poll() wakes up) end the loop; the
 * terminal is restored on every exit path (and by atexit as a last resort). Ctrl-Z restores
 * it before stopping and sets it up again on SIGCONT. A Redis outage while running is shown
 * in the header over the last data, and retried; at start-up it is an error (exit 1).
 *
 * --once prints one frame without any control code and exits (for scripts and tests);
 * its lines are cut to the terminal width only when stdout is a terminal (or $COLUMNS).
 *
 * Side effect: every refresh removes members older than one hour from P workers
 * (ZREMRANGEBYSCORE): a worker that died without saying so never removes itself.
 *
 * Exit status: 0 ok, 2 usage or configuration error, 1 Redis unreachable or failing.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "rstatus.h"
#include "top.h"
#include "wconfig.h"
#include "zi_err.h"

#define ZI_TOP_DEFAULT_INTERVAL 2.0
#define ZI_TOP_ONCE_EVENTS 10
#define ZI_TOP_ONCE_FAILURES 5

static volatile sig_atomic_t zi_top_stop;
static volatile sig_atomic_t zi_top_winch;

/* Terminal state. The "use" flags say what live mode set up (stdin raw, alternate screen
 * on stdout); the "on" flags say what is in effect now. They are changed by the main
 * thread, the atexit handler and the SIGTSTP handler, which only uses write(), tcsetattr()
 * and sigaction() (async-signal-safe). */
static struct termios zi_top_saved_tio, zi_top_raw_tio;
static int zi_top_use_tio, zi_top_use_screen;
static volatile sig_atomic_t zi_top_tio_on, zi_top_screen_on;

static void zi_top_on_signal(int sig)
{
    if (sig == SIGWINCH)
        zi_top_winch = 1;
    else
        zi_top_stop = 1;
}

static void zi_top_put_seq(const char *seq, size_t n)
{
    ssize_t w = write(STDOUT_FILENO, seq, n);
    (void)w; /* nothing better to do when the terminal is gone */
}

/* Leaves the alternate screen, shows the cursor and restores stdin's mode. Idempotent. */
static void zi_top_restore(void)
{
    if (zi_top_screen_on) {
        static const char seq[] = "\033[0m\033[?25h\033[?1049l";
        zi_top_put_seq(seq, sizeof seq - 1);
        zi_top_screen_on = 0;
    }
    if (zi_top_tio_on) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &zi_top_saved_tio);
        zi_top_tio_on = 0;
    }
}

/* Sets up what live mode uses: stdin raw, alternate screen, cursor hidden. */
static void zi_top_enter(void)
{
    if (zi_top_use_tio && tcsetattr(STDIN_FILENO, TCSAFLUSH, &zi_top_raw_tio) == 0)
        zi_top_tio_on = 1;
    if (zi_top_use_screen) {
        static const char seq[] = "\033[?1049h\033[?25l\033[H\033[2J";
        zi_top_screen_on = 1;
        zi_top_put_seq(seq, sizeof seq - 1);
    }
}

/* Ctrl-Z: give the shell its terminal back, stop, and take it again on SIGCONT. */
static void zi_top_on_tstp(int sig)
{
    int saved = errno;
    zi_top_restore();
    struct sigaction dfl, mine;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGTSTP, &dfl, &mine);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTSTP);
    sigprocmask(SIG_UNBLOCK, &set, NULL); /* blocked while this handler runs */
    kill(getpid(), sig);                  /* stops here until SIGCONT */
    sigaction(SIGTSTP, &mine, NULL);
    zi_top_enter();
    zi_top_winch = 1; /* redraw all (the size may have changed meanwhile) */
    errno = saved;
}

static void zi_top_warn(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "zimage: warning: %s\n", msg);
}

static void zi_top_usage(FILE *f)
{
    fprintf(f,
            "usage: zimage top --config FILE [--interval S] [--once] [--no-color] [--events N]\n"
            "\n"
            "Live view of the worker fleet from Redis: workers (state, backend, GPU, current\n"
            "job and step, VRAM and allocator figures, jobs done, heartbeat age), recent jobs\n"
            "and recent failures. Workers silent for more than 3 x worker.heartbeat_s are shown\n"
            "as `lost`; members silent for more than an hour are pruned from <prefix>workers.\n"
            "\n"
            "options:\n"
            "  --config FILE   worker configuration (redis.*, worker.heartbeat_s are used)\n"
            "  --interval S    refresh period in seconds, 0.1..3600 (default 2)\n"
            "  --once          print one frame without terminal control codes and exit\n"
            "  --no-color      no colours (also when NO_COLOR is set or TERM=dumb)\n"
            "  --events N      recent jobs to show (default: what fits; 10 with --once)\n"
            "  --help          show this help\n"
            "\n"
            "Keys: q quits (when stdin is a terminal); Ctrl-C too.\n");
}

/* Terminal size of fd, or 0 x 0. */
static void zi_top_term_size(int fd, int *cols, int *rows)
{
    struct winsize ws;
    *cols = *rows = 0;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0) {
        *cols = ws.ws_col;
        *rows = ws.ws_row;
    }
}

/* Writes all of buf (retrying short writes and EINTR). */
static int zi_top_write_all(const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Draws a frame in place: home, each line + clear-to-EOL, clear below. One write. */
static int zi_top_draw(const zi_top_frame *f)
{
    size_t cap = 16;
    for (size_t i = 0; i < f->n; i++)
        cap += strlen(f->lines[i]) + 8;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    size_t n = 0;
    memcpy(buf + n, "\033[H", 3);
    n += 3;
    for (size_t i = 0; i < f->n; i++) {
        size_t len = strlen(f->lines[i]);
        memcpy(buf + n, f->lines[i], len);
        n += len;
        memcpy(buf + n, "\033[K", 3);
        n += 3;
        /* no newline after the last row: it would scroll a full screen by one line */
        if (i + 1 < f->n)
            buf[n++] = '\n';
    }
    memcpy(buf + n, "\033[J", 3);
    n += 3;
    int rc = zi_top_write_all(buf, n);
    free(buf);
    return rc;
}

/* Waits up to ms for a key or a signal. Returns 1 when the user asked to quit. */
static int zi_top_wait(int tty_in, int ms)
{
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    int rc = poll(tty_in ? &p : NULL, tty_in ? 1 : 0, ms);
    if (rc > 0 && (p.revents & POLLIN)) {
        char keys[64];
        ssize_t n = read(STDIN_FILENO, keys, sizeof keys);
        for (ssize_t i = 0; i < n; i++)
            if (keys[i] == 'q' || keys[i] == 'Q')
                return 1;
    } else if (rc > 0 && (p.revents & (POLLHUP | POLLERR))) {
        return 1; /* the terminal went away */
    }
    return 0;
}

int zi_cmd_top(int argc, char **argv)
{
    const char *config = NULL;
    double interval = ZI_TOP_DEFAULT_INTERVAL;
    int once = 0, color = 1;
    long events = -1;

    static const char *const opts[] = {"--config", "--interval", "--events"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            zi_top_usage(stdout);
            return 0;
        } else if (strcmp(a, "--once") == 0) {
            once = 1;
        } else if (strcmp(a, "--no-color") == 0) {
            color = 0;
        } else if ((r = zi_cli_opt_of(argc, argv, &i, opts, sizeof opts / sizeof opts[0], &a,
                                      &v)) != 0) {
            if (r < 0) {
                return zi_cli_usage_error("top", "%s needs a value", a);
            }
            if (strcmp(a, "--config") == 0) {
                config = v;
            } else if (strcmp(a, "--interval") == 0) {
                if (zi_cli_parse_double(v, 0.1, 3600.0, &interval) != 0) {
                    return zi_cli_usage_error(
                        "top", "--interval: '%s' is not a number of seconds in 0.1..3600", v);
                }
            } else if (zi_cli_parse_long(v, 0, 10000, &events) != 0) {
                return zi_cli_usage_error("top", "--events: '%s' is not an integer in 0..10000", v);
            }
        } else {
            return zi_cli_usage_error("top", "top: unknown option '%s'", a);
        }
    }
    if (!config) {
        return zi_cli_usage_error("top", "top: --config FILE is required");
    }

    zi_wconfig cfg = {0};
    if (zi_wconfig_load(&cfg, config, zi_top_warn, NULL) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        return 2;
    }

    int ret = 1;
    zi_rstatus *rs = NULL;
    zi_redis_url url;
    char addr[320];
    if (zi_redis_url_parse(cfg.redis_url, &url) != ZI_OK) {
        fprintf(stderr, "zimage: error: redis.url: %s\n", zi_errmsg());
        ret = 2;
        goto out;
    }
    snprintf(addr, sizeof addr, "%s:%d/%d", url.host, url.port, url.db);
    zi_rstatus_config rc_cfg = zi_wconfig_rstatus(&cfg, "top", 2000, 3000);
    if (zi_rstatus_create(&rc_cfg, &rs) != ZI_OK) {
        fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
        ret = 2;
        goto out;
    }
    if (zi_top_redis_ping(rs) != ZI_OK) {
        fprintf(stderr, "zimage: error: redis at %s is unreachable: %s\n", addr, zi_errmsg());
        goto out;
    }

    int tty_out = isatty(STDOUT_FILENO);
    const char *nc = getenv("NO_COLOR");
    const char *term = getenv("TERM");
    if (once || !tty_out || (nc && nc[0]) || (term && strcmp(term, "dumb") == 0))
        color = 0;
    zi_top_fetch_opts fo = {
        .heartbeat_s = cfg.worker_heartbeat_s,
        .prune = 1,
        .prefix = cfg.redis_key_prefix,
        .redis_addr = addr,
    };
    zi_top_view view = {.color = color, .interval_s = once ? 0.0 : interval};

    if (once) {
        int cols = 0, rows = 0;
        long ncols = 0;
        if (tty_out)
            zi_top_term_size(STDOUT_FILENO, &cols, &rows);
        else if (getenv("COLUMNS"))
            cols = zi_cli_parse_long(getenv("COLUMNS"), 1, 100000, &ncols) == 0 ? (int)ncols : 0;
        view.width = cols;
        view.max_events = view.max_failures = -1;
        fo.max_events = events >= 0 ? (size_t)events : ZI_TOP_ONCE_EVENTS;
        fo.max_failures = ZI_TOP_ONCE_FAILURES;
        zi_top_snapshot snap;
        int frc = zi_top_fetch(rs, &fo, &snap);
        view.pruned_total = snap.pruned;
        if (frc != ZI_OK) {
            fprintf(stderr, "zimage: error: redis at %s: %s\n", addr, snap.error);
            zi_top_snapshot_free(&snap);
            goto out;
        }
        zi_top_frame frame;
        if (zi_top_render(&snap, &view, &frame) != ZI_OK) {
            fprintf(stderr, "zimage: error: %s\n", zi_errmsg());
            zi_top_snapshot_free(&snap);
            goto out;
        }
        for (size_t i = 0; i < frame.n; i++)
            printf("%s\n", frame.lines[i]);
        zi_top_frame_free(&frame);
        zi_top_snapshot_free(&snap);
        ret = fflush(stdout) == 0 ? 0 : 1;
        goto out;
    }

    /* live mode */
    /* no SA_RESTART (zi_cli_on_signals): poll() returns EINTR at once */
    static const int live_sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};
    zi_cli_on_signals(zi_top_on_signal, live_sigs, sizeof live_sigs / sizeof live_sigs[0]);
    atexit(zi_top_restore);

    int tty_in = isatty(STDIN_FILENO);
    if (tty_in && tcgetattr(STDIN_FILENO, &zi_top_saved_tio) == 0) {
        zi_top_raw_tio = zi_top_saved_tio;
        /* keys arrive one by one without echo; ISIG stays on so Ctrl-C still signals */
        zi_top_raw_tio.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        zi_top_raw_tio.c_cc[VMIN] = 0;
        zi_top_raw_tio.c_cc[VTIME] = 0;
        zi_top_use_tio = 1;
    }
    zi_top_use_screen = tty_out;
    zi_top_enter();
    tty_in = zi_top_tio_on; /* poll stdin for keys only when it is in raw mode */
    static const int tstp_sig[] = {SIGTSTP};
    zi_cli_on_signals(zi_top_on_tstp, tstp_sig, 1);

    int cols = 0, rows = 0;
    if (tty_out)
        zi_top_term_size(STDOUT_FILENO, &cols, &rows);
    size_t pruned_total = 0;
    zi_top_snapshot last;
    int have_last = 0;
    char cause[sizeof last.error] = "";
    ret = 0;
    while (!zi_top_stop) {
        if (zi_top_winch) {
            zi_top_winch = 0;
            zi_top_term_size(STDOUT_FILENO, &cols, &rows);
        }
        view.width = cols;
        view.height = rows;
        /* fetch enough for a tall screen, then show what fits */
        zi_top_snapshot snap;
        fo.max_events = events >= 0 ? (size_t)events : (rows > 10 ? (size_t)rows : 10);
        fo.max_failures = rows > 15 ? (size_t)rows / 3 : 5;
        int good = zi_top_fetch(rs, &fo, &snap) == ZI_OK;
        pruned_total += snap.pruned;
        if (good) {
            cause[0] = '\0';
        } else {
            /* keep the first cause rather than rstatus's back-off notices, and show the
             * last good data under it */
            if (!cause[0] || !strstr(snap.error, "next connect in"))
                snprintf(cause, sizeof cause, "%s", snap.error);
            if (have_last) {
                zi_top_snapshot_free(&snap);
                snap = last; /* moved */
                have_last = 0;
                good = 1;
                char when[32] = "?";
                time_t t = (time_t)(snap.now_ms / 1000);
                struct tm tm;
                if (localtime_r(&t, &tm))
                    strftime(when, sizeof when, "%H:%M:%S", &tm);
                snprintf(snap.error, sizeof snap.error, "%.200s (showing data from %s)", cause,
                         when);
            } else {
                snprintf(snap.error, sizeof snap.error, "%s", cause);
            }
        }
        view.max_events = events >= 0 ? (int)events : -1;
        view.max_failures = -1;
        if (events < 0 && rows > 0) {
            /* rows left by the header (3), the table (its rows + 2) and the two section
             * titles and blank lines (6): 2/3 to recent jobs, 1/3 to failures */
            long room = (long)rows - 11 - (long)(snap.nworkers ? snap.nworkers : 1);
            view.max_failures = room > 3 ? (int)(room / 3) : 1;
            view.max_events = room > 3 ? (int)(room - room / 3) : 2;
        }
        view.pruned_total = pruned_total;
        zi_top_frame frame;
        if (zi_top_render(&snap, &view, &frame) == ZI_OK) {
            if (tty_out) {
                zi_top_draw(&frame);
            } else {
                for (size_t i = 0; i < frame.n; i++)
                    printf("%s\n", frame.lines[i]);
                printf("\n");
                fflush(stdout);
            }
            zi_top_frame_free(&frame);
        }
        if (good) {
            snap.error[0] = '\0';
            if (have_last)
                zi_top_snapshot_free(&last);
            last = snap; /* moved: shown again if the next fetch fails */
            have_last = 1;
        } else {
            zi_top_snapshot_free(&snap);
        }

        /* sleep until the next refresh, a key, a resize or a signal */
        int64_t until = zi_rstatus_now_ms() + (int64_t)(interval * 1000.0);
        while (!zi_top_stop && !zi_top_winch) {
            int64_t left = until - zi_rstatus_now_ms();
            if (left <= 0)
                break;
            if (zi_top_wait(tty_in, (int)left)) {
                zi_top_stop = 1;
                break;
            }
        }
    }
    if (have_last)
        zi_top_snapshot_free(&last);
    zi_top_restore();

out:
    if (rs)
        zi_rstatus_destroy(rs);
    zi_wconfig_free(&cfg);
    return ret;
}
