/* server/main.c: pinsd's entry point: configuration, store, server, signals. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "auth/auth.h"
#include "common/config.h"
#include "common/error.h"
#include "observability/log.h"
#include "observability/metrics.h"
#include "server/sdnotify.h"
#include "server/server.h"
#include "store/breaker.h"
#include "store/store.h"

static pins_server *server;

static void on_stop_signal(int sig)
{
    (void)sig;
    if (server != NULL)
        pins_server_stop(server);
}

static void on_reload_signal(int sig)
{
    (void)sig;
    if (server != NULL)
        pins_server_reload(server);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_reload_signal;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);
}

int main(int argc, char **argv)
{
    pins_config cfg;
    pins_config_action action = PINS_CONFIG_RUN;
    char err[512] = "";
    int status = 1;
    store *st = NULL;

    if (pins_config_load(&cfg, argc, argv, &action, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinsd: %s\n", err);
        pins_config_free(&cfg);
        return 2;
    }
    if (action == PINS_CONFIG_HELP) {
        fputs(pins_config_usage(), stdout);
        pins_config_free(&cfg);
        return 0;
    }
    if (action == PINS_CONFIG_VERSION) {
        printf("pinsd %s\n", PINS_VERSION);
        pins_config_free(&cfg);
        return 0;
    }
    pins_log_setup(cfg.log_level, cfg.log_format);
    if (auth_init(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinsd: %s\n", err);
        auth_shutdown();
        metrics_shutdown();
        pins_config_free(&cfg);
        return 2;
    }
    install_signals();
    server_sdnotify_init();
    server_sdnotify("STATUS=opening the store");

    char store_err[256] = "";
    store_options so = {.database_url = cfg.database_url,
                        .listen_url = cfg.database_listen_url,
                        .data_dir = cfg.data_dir,
                        .pool_size = cfg.db_pool_size,
                        .cache_bytes = cfg.cache_max_bytes,
                        .pg_read_cache = cfg.pg_read_cache,
                        .workers = cfg.workers,
                        .err = store_err,
                        .err_cap = sizeof(store_err)};
    store_breaker_configure(cfg.breaker_errors_per_min, cfg.breaker_open_seconds);
    int rv = store_open(&so, &st);
    if (rv != 0) {
        /* store_err never holds the URL (it may hold a password), only why it was refused. */
        fprintf(stderr, "pinsd: cannot open the store: %s%s%s\n", pins_strerror(rv),
                store_err[0] != '\0' ? ": " : "", store_err);
        server_sdnotify("STATUS=cannot open the store");
        goto out;
    }
    rv = pins_server_new(&cfg, st, &server, err, sizeof(err));
    if (rv != 0) {
        fprintf(stderr, "pinsd: %s\n", err);
        server_sdnotify("STATUS=cannot start the server (see the log)");
        goto out;
    }
    char addrs[PINS_MAX_LISTEN * 72] = "";
    size_t off = 0;
    for (size_t i = 0; i < cfg.nlisten && off < sizeof(addrs); i++)
        off += (size_t)snprintf(addrs + off, sizeof(addrs) - off, "%s%s:%u", i ? "," : "",
                                cfg.listen[i].host, cfg.listen[i].port);
    char workers[16];
    snprintf(workers, sizeof(workers), "%d", cfg.workers);
    pins_log_info("pinsd listening", "listen", addrs, "workers", workers, "store",
                  store_backend_name(st), "tls", cfg.tls_cert_file ? "on" : "off", "version",
                  PINS_VERSION, NULL);
    rv = pins_server_run(server); /* sends READY=1 once serving, STOPPING=1 when draining */
    pins_log_info("pinsd stopped", NULL);
    status = rv == 0 ? 0 : 1;
out:
    if (server != NULL) {
        pins_server *s = server;
        server = NULL;
        pins_server_free(s);
    }
    if (st != NULL)
        store_close(st);
    auth_shutdown();
    metrics_shutdown();
    pins_config_free(&cfg);
    return status;
}
