/*
 * http.c - /healthz, /readyz and /metrics on libmicrohttpd's internal polling thread.
 *
 * Limits: GET/HEAD only, no request bodies, at most 16 concurrent connections, at most
 * ZI_HTTP_PER_IP of them from one address, and a 10 s connection timeout, so a misbehaving
 * scraper cannot pin the worker nor lock the kubelet's probes out. Binds exactly
 * the configured address (tests and the local stack use 127.0.0.1).
 */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "zi_err.h"

#define ZI_HTTP_MAX_CONN 16
#define ZI_HTTP_PER_IP 4 /* a probe pair and a scrape, with room to spare */

struct zi_http {
    struct MHD_Daemon *daemon;
    zi_metrics *metrics;
    atomic_int ready;
    zi_http_collect_fn collect;
    void *collect_ud;
    int port;
};

int zi_http_parse_listen(const char *spec, char *host, size_t cap, int *port)
{
    if (!spec || !*spec)
        return zi_errorf(ZI_EINVAL, "listen address is empty (expected HOST:PORT)");
    const char *colon;
    const char *h = spec;
    size_t hl;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':')
            return zi_errorf(ZI_EINVAL, "listen address '%s': expected [V6ADDR]:PORT", spec);
        h = spec + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon || strchr(spec, ':') != colon)
            return zi_errorf(ZI_EINVAL, "listen address '%s': expected HOST:PORT", spec);
        hl = (size_t)(colon - spec);
    }
    if (hl == 0 || hl >= cap)
        return zi_errorf(ZI_EINVAL, "listen address '%s': bad host", spec);
    const char *ps = colon + 1;
    if (!*ps || strlen(ps) > 5)
        return zi_errorf(ZI_EINVAL, "listen address '%s': bad port", spec);
    long p = 0;
    for (const char *q = ps; *q; q++) {
        if (*q < '0' || *q > '9')
            return zi_errorf(ZI_EINVAL, "listen address '%s': bad port", spec);
        p = p * 10 + (*q - '0');
    }
    if (p > 65535)
        return zi_errorf(ZI_EINVAL, "listen address '%s': port out of range", spec);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return ZI_OK;
}

static enum MHD_Result zi_http_send(struct MHD_Connection *conn, unsigned status, const char *ctype,
                                    void *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) /* RFC 9110 15.5.6: a 405 lists what is */
        MHD_add_response_header(r, "Allow", "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result zi_http_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **req_cls)
{
    (void)version;
    (void)upload_data;
    zi_http *h = cls;
    static int first_call_marker;
    /* MHD calls twice per request: first with headers only; answer on the second */
    if (*req_cls == NULL) {
        *req_cls = &first_call_marker;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* discard bodies: no endpoint takes one */
        return MHD_YES;
    }
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return zi_http_send(conn, MHD_HTTP_METHOD_NOT_ALLOWED, text, "method not allowed\n", 19,
                            MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/healthz") == 0)
        return zi_http_send(conn, MHD_HTTP_OK, text, "ok\n", 3, MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/readyz") == 0) {
        if (atomic_load(&h->ready))
            return zi_http_send(conn, MHD_HTTP_OK, text, "ready\n", 6, MHD_RESPMEM_PERSISTENT);
        return zi_http_send(conn, MHD_HTTP_SERVICE_UNAVAILABLE, text, "not ready\n", 10,
                            MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/metrics") == 0) {
        zi_http_collect_fn fn = h->collect;
        if (fn)
            fn(h->collect_ud);
        char *body = NULL;
        size_t len = 0;
        if (h->metrics && zi_metrics_render(h->metrics, &body, &len) != ZI_OK)
            return zi_http_send(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, text, "metrics unavailable\n",
                                20, MHD_RESPMEM_PERSISTENT);
        if (!body)
            return zi_http_send(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", "", 0,
                                MHD_RESPMEM_PERSISTENT);
        return zi_http_send(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body,
                            len, MHD_RESPMEM_MUST_FREE);
    }
    return zi_http_send(conn, MHD_HTTP_NOT_FOUND, text, "not found\n", 10, MHD_RESPMEM_PERSISTENT);
}

int zi_http_start(const char *listen, zi_metrics *metrics, zi_http **out)
{
    char host[256];
    int port;
    int rc = zi_http_parse_listen(listen, host, sizeof host, &port);
    if (rc)
        return rc;
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        return zi_errorf(ZI_EINVAL,
                         "listen address '%s': host must be an IP address or "
                         "localhost",
                         listen);
    }

    zi_http *h = calloc(1, sizeof *h);
    if (!h)
        return zi_errorf(ZI_ENOMEM, "http: out of memory");
    h->metrics = metrics;
    atomic_init(&h->ready, 0);
    h->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, zi_http_handle, h,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)ZI_HTTP_MAX_CONN,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)ZI_HTTP_PER_IP,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!h->daemon) {
        rc = zi_errorf(ZI_EIO, "http: cannot listen on %s (address in use or not available)",
                       listen);
        goto err;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? (int)info->port : port;
    *out = h;
    return ZI_OK;
err:
    free(h);
    return rc;
}

void zi_http_set_collect(zi_http *h, zi_http_collect_fn fn, void *ud)
{
    h->collect_ud = ud;
    h->collect = fn;
}

int zi_http_port(const zi_http *h)
{
    return h->port;
}

void zi_http_set_ready(zi_http *h, int ready)
{
    atomic_store(&h->ready, ready ? 1 : 0);
}

int zi_http_ready(const zi_http *h)
{
    return atomic_load(&((zi_http *)h)->ready);
}

void zi_http_stop(zi_http *h)
{
    if (!h)
        return;
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    free(h);
}
