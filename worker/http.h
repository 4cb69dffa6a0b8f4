/*
 * http.h - the worker's HTTP endpoint (libmicrohttpd): /healthz, /readyz, /metrics.
 *
 *   GET /healthz -> 200 "ok" while the process is alive
 *   GET /readyz  -> 200 "ready" when the ready flag is set (model loaded and consuming),
 *                   503 "not ready" otherwise (loading, draining)
 *   GET /metrics -> 200 Prometheus text (text/plain; version=0.0.4) from the registry,
 *                   after calling the collect hook (to refresh gauges such as GPU memory)
 *   anything else -> 404; methods other than GET/HEAD -> 405
 *
 * The server runs its own thread (MHD internal polling thread); the ready flag is atomic.
 * Listens on worker.http_listen "HOST:PORT" (IPv4 dotted quad, "localhost", or "[v6]");
 * port 0 picks a free port (zi_http_port tells which).
 */
#ifndef ZI_HTTP_H
#define ZI_HTTP_H

#include <stddef.h>

#include "metrics.h"

typedef struct zi_http zi_http;

/* Called on the server thread before /metrics is rendered. */
typedef void (*zi_http_collect_fn)(void *ud);

/* Parses "HOST:PORT" into host (cap bytes) and port (0..65535). ZI_EINVAL otherwise. */
int zi_http_parse_listen(const char *spec, char *host, size_t cap, int *port);

/* Starts serving. metrics is borrowed (must outlive the server; may be NULL = empty body).
 * ZI_EINVAL for a bad listen spec, ZI_EIO when the address cannot be bound. */
int zi_http_start(const char *listen, zi_metrics *metrics, zi_http **out);

/* Sets the collect hook (NULL removes). Call before traffic or accept a benign race. */
void zi_http_set_collect(zi_http *h, zi_http_collect_fn fn, void *ud);

/* The bound TCP port. */
int zi_http_port(const zi_http *h);

/* Ready flag for /readyz (0 at start). Thread-safe. */
void zi_http_set_ready(zi_http *h, int ready);
int zi_http_ready(const zi_http *h);

/* Stops the server thread and frees h (NULL is fine). */
void zi_http_stop(zi_http *h);

#endif
