/* tools/pinsctl/bench_report.c: pinsctl bench's report, as text and as one JSON object. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const double percentiles[] = {50.0, 90.0, 99.0, 99.9};
static const char *const percentile_names[] = {"p50", "p90", "p99", "p99.9"};
#define NPCT (sizeof(percentiles) / sizeof(percentiles[0]))

void bench_stats_init(bench_stats *st)
{
    memset(st, 0, sizeof(*st));
    for (int op = 0; op < BENCH_OP__COUNT; op++)
        bench_hist_init(&st->lat[op]);
}

void bench_stats_clear(bench_stats *st)
{
    for (uint64_t i = 0; i < BENCH_TIMELINE_MAX; i++) {
        free(st->timeline_lat[i]);
        st->timeline_lat[i] = NULL;
    }
}

int bench_stats_timeline_record(bench_stats *st, uint64_t sec, uint64_t ns)
{
    if (sec >= BENCH_TIMELINE_MAX)
        sec = BENCH_TIMELINE_MAX - 1;
    bench_shist *h = st->timeline_lat[sec];
    if (h == NULL) {
        /* Allocated as the seconds are reached: a short run costs a few KiB, not 15 MiB. */
        h = malloc(sizeof(*h));
        if (h == NULL) {
            st->timeline_lat_lost++;
            return -1;
        }
        bench_shist_init(h);
        st->timeline_lat[sec] = h;
    }
    bench_shist_record(h, ns);
    return 0;
}

static uint64_t sum_ops(const uint64_t v[BENCH_OP__COUNT])
{
    uint64_t n = 0;
    for (int op = 0; op < BENCH_OP__COUNT; op++)
        n += v[op];
    return n;
}

static double per_second(uint64_t n, uint64_t ns)
{
    return ns == 0 ? 0.0 : (double)n * 1e9 / (double)ns;
}

static void all_latencies(const bench_stats *st, bench_hist *all)
{
    bench_hist_init(all);
    for (int op = 0; op < BENCH_OP__COUNT; op++)
        bench_hist_merge(all, &st->lat[op]);
}

uint64_t bench_stall_end_ns(const bench_stats *st)
{
    /* A paced run's last answer can come before the end of -d: its last second is whole all the
     * same, as nothing more was to be sent in it. */
    return st->measured_ns > st->sending_ns ? st->measured_ns : st->sending_ns;
}

bool bench_stall_second_counts(const bench_stats *st, uint64_t i)
{
    const bench_shist *h = i < BENCH_TIMELINE_MAX ? st->timeline_lat[i] : NULL;
    return h != NULL && h->count >= BENCH_STALL_MIN_ANSWERS && i + 1 < BENCH_TIMELINE_MAX &&
           (i + 1) * UINT64_C(1000000000) <= bench_stall_end_ns(st);
}

void bench_stall_compute(const bench_stats *st, bench_stall *pstall)
{
    static bench_hist all;
    all_latencies(st, &all);
    bench_stall s = {.run_p99_ns = bench_hist_percentile(&all, 99.0)};
    uint64_t n = st->timeline_len < BENCH_TIMELINE_MAX ? st->timeline_len : BENCH_TIMELINE_MAX;
    for (uint64_t i = 0; i < n; i++) {
        if (!bench_stall_second_counts(st, i))
            continue;
        uint64_t p99 = bench_shist_percentile(st->timeline_lat[i], 99.0);
        if (s.considered == 0 || p99 > s.worst_p99_ns) {
            s.worst_second = i;
            s.worst_p99_ns = p99;
        }
        s.considered++;
        if (p99 > BENCH_STALL_FACTOR * s.run_p99_ns)
            s.over++;
    }
    *pstall = s;
}

static void mix_text(char *buf, size_t size, const bench_config *cfg)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int op = 0; op < BENCH_OP__COUNT && off < size; op++) {
        if (cfg->mix[op] == 0)
            continue;
        int n = snprintf(buf + off, size - off, "%s%s=%u", off > 0 ? "," : "",
                         bench_op_name((bench_op)op), cfg->mix[op]);
        if (n < 0)
            break;
        off += (size_t)n;
    }
}

/* ---- text ---------------------------------------------------------------------------------- */

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

void bench_report_text(FILE *out, const bench_config *cfg, const pins_options *opts,
                       const bench_stats *st)
{
    char mix[128];
    mix_text(mix, sizeof(mix), cfg);
    uint64_t sent = sum_ops(st->sent), answers = sum_ops(st->answers);
    uint64_t ok = sum_ops(st->ok), errors = sum_ops(st->errors);
    uint64_t local = sum_ops(st->failed_locally);
    fprintf(out, "pinsctl bench: %s, %d connection%s x %d stream%s, ", opts->addr, cfg->connections,
            cfg->connections == 1 ? "" : "s", cfg->streams, cfg->streams == 1 ? "" : "s");
    if (cfg->rate > 0)
        fprintf(out, "paced at %.1f req/s\n", cfg->rate);
    else
        fprintf(out, "closed loop\n");
    fprintf(out, "workload: %s, %llu keys x %d tenant%s, %s", mix, (unsigned long long)cfg->keys,
            cfg->tenants, cfg->tenants == 1 ? "" : "s",
            cfg->dist == BENCH_DIST_ZIPFIAN ? "zipfian" : "uniform");
    if (cfg->dist == BENCH_DIST_ZIPFIAN)
        fprintf(out, " (s=%.3g)", cfg->zipf_s);
    fprintf(out, ", values of %zu bytes", cfg->value_size);
    if (cfg->conflicts > 0)
        fprintf(out, ", conflicts %.3g of puts", cfg->conflicts);
    fprintf(out, "\n");
    if (cfg->prefill)
        fprintf(out, "prefill: %llu upserts in %.2f s, %llu errors\n",
                (unsigned long long)st->prefill_sent, (double)st->prefill_ns / 1e9,
                (unsigned long long)st->prefill_errors);
    fprintf(out, "measured: %.3f s", (double)st->measured_ns / 1e9);
    if (cfg->warmup_ms > 0)
        fprintf(out, " (after %.3f s of warmup)", (double)cfg->warmup_ms / 1e3);
    fprintf(out, "\n\n");
    fprintf(out, "requests: %llu sent, %llu answered, %llu failed locally, %llu unanswered\n",
            (unsigned long long)sent, (unsigned long long)answers, (unsigned long long)local,
            (unsigned long long)st->unanswered);
    fprintf(out, "answers:  %llu ok, %llu errors, %llu conflicts (ABORTED of %llu stale puts)\n",
            (unsigned long long)ok, (unsigned long long)errors, (unsigned long long)st->aborted,
            (unsigned long long)st->conflicts_sent);
    fprintf(out, "rate:     %.1f req/s (answers per second)\n\n",
            per_second(answers, st->measured_ns));

    fprintf(out, "%-8s %10s %10s %10s %10s %10s %10s %11s %9s %9s\n", "op", "sent", "answers", "ok",
            "errors", "aborted", "local", "req/s", "p50 ms", "p99 ms");
    for (int op = 0; op < BENCH_OP__COUNT; op++) {
        if (st->sent[op] == 0 && cfg->mix[op] == 0)
            continue;
        fprintf(out, "%-8s %10llu %10llu %10llu %10llu %10llu %10llu %11.1f %9.3f %9.3f\n",
                bench_op_name((bench_op)op), (unsigned long long)st->sent[op],
                (unsigned long long)st->answers[op], (unsigned long long)st->ok[op],
                (unsigned long long)st->errors[op],
                (unsigned long long)(op == BENCH_OP_PUT ? st->aborted : 0),
                (unsigned long long)st->failed_locally[op],
                per_second(st->answers[op], st->measured_ns),
                ms(bench_hist_percentile(&st->lat[op], 50)),
                ms(bench_hist_percentile(&st->lat[op], 99)));
    }
    if (errors > 0) {
        fprintf(out, "\nerrors by status:");
        for (int c = 0; c < BENCH_CODES; c++)
            if (st->codes[c] > 0)
                fprintf(out, " %s %llu", pins_code_name(c), (unsigned long long)st->codes[c]);
        fprintf(out, "\n");
    }
    if (local > 0) {
        fprintf(out, "\nfailed locally (no answer from pinsd) by status:");
        for (int c = 0; c < BENCH_CODES; c++)
            if (st->local_codes[c] > 0)
                fprintf(out, " %s %llu", pins_code_name(c), (unsigned long long)st->local_codes[c]);
        fprintf(out, "\n");
    }
    static bench_hist all;
    all_latencies(st, &all);
    fprintf(out, "\nlatency (ms, from the %s send time, of %llu answers):\n",
            cfg->rate > 0 ? "scheduled" : "actual", (unsigned long long)all.count);
    fprintf(out, "  %9s %9s", "min", "mean");
    for (size_t i = 0; i < NPCT; i++)
        fprintf(out, " %9s", percentile_names[i]);
    fprintf(out, " %9s\n", "max");
    fprintf(out, "  %9.3f %9.3f", ms(all.count > 0 ? all.min : 0), bench_hist_mean(&all) / 1e6);
    for (size_t i = 0; i < NPCT; i++)
        fprintf(out, " %9.3f", ms(bench_hist_percentile(&all, percentiles[i])));
    fprintf(out, " %9.3f\n", ms(all.max));

    bench_stall stall;
    bench_stall_compute(st, &stall);
    if (stall.considered > 0)
        fprintf(out,
                "per second: worst p99 %.3f ms in second %llu (%.2f x the run's p99), %llu "
                "second%s over %dx (of %llu complete seconds with %d answers or more)\n",
                ms(stall.worst_p99_ns), (unsigned long long)stall.worst_second,
                stall.run_p99_ns > 0 ? (double)stall.worst_p99_ns / (double)stall.run_p99_ns : 0.0,
                (unsigned long long)stall.over, stall.over == 1 ? "" : "s", BENCH_STALL_FACTOR,
                (unsigned long long)stall.considered, BENCH_STALL_MIN_ANSWERS);
    else
        fprintf(out, "per second: no complete second with %d answers or more\n",
                BENCH_STALL_MIN_ANSWERS);
    if (st->timeline_lat_lost > 0)
        fprintf(out, "per second: %llu answers left out (out of memory)\n",
                (unsigned long long)st->timeline_lat_lost);
    if (!cfg->timeline)
        return;
    /* Seconds by the answers' arrival; "-": no answer; "*": not counted in the line above. */
    fprintf(out, "\n%8s %10s %10s %10s %10s %10s %10s\n", "second", "answers", "errors", "local",
            "p50 ms", "p99 ms", "max ms");
    for (uint64_t i = 0; i < st->timeline_len && i < BENCH_TIMELINE_MAX; i++) {
        const bench_shist *h = st->timeline_lat[i];
        fprintf(out, "%8llu %10llu %10llu %10llu", (unsigned long long)i,
                (unsigned long long)(st->timeline_ok[i] + st->timeline_err[i]),
                (unsigned long long)st->timeline_err[i], (unsigned long long)st->timeline_local[i]);
        if (h != NULL && h->count > 0)
            fprintf(out, " %10.3f %10.3f %10.3f%s\n", ms(bench_shist_percentile(h, 50.0)),
                    ms(bench_shist_percentile(h, 99.0)), ms(h->max),
                    bench_stall_second_counts(st, i) ? "" : " *");
        else
            fprintf(out, " %10s %10s %10s\n", "-", "-", "-");
    }
    fprintf(out, "(* not counted per second: partial, or fewer than %d answers)\n",
            BENCH_STALL_MIN_ANSWERS);
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

static double us(uint64_t ns)
{
    return (double)ns / 1e3;
}

/* The percentiles of each second of the timeline ("p50_ms" ...), and max_ms. */
static const double second_percentiles[] = {50.0, 99.0, 99.9};
static const char *const second_percentile_names[] = {"p50", "p99", "p99.9"};
#define NSEC_PCT (sizeof(second_percentiles) / sizeof(second_percentiles[0]))

static void json_ms_or_null(FILE *out, uint64_t ns, bool present)
{
    if (present)
        fprintf(out, "%.3f", ms(ns));
    else
        fprintf(out, "null");
}

static void json_latency(FILE *out, const bench_hist *h)
{
    fprintf(out, "{\"count\":%llu,\"min\":%.3f,\"mean\":%.3f", (unsigned long long)h->count,
            us(h->count > 0 ? h->min : 0), bench_hist_mean(h) / 1e3);
    for (size_t i = 0; i < NPCT; i++)
        fprintf(out, ",\"%s\":%.3f", percentile_names[i],
                us(bench_hist_percentile(h, percentiles[i])));
    fprintf(out, ",\"max\":%.3f}", us(h->max));
}

/* {"CODE":n,...} of the non-zero counts. */
static void json_codes(FILE *out, const uint64_t codes[BENCH_CODES])
{
    fputc('{', out);
    bool first = true;
    for (int c = 0; c < BENCH_CODES; c++) {
        if (codes[c] == 0)
            continue;
        fprintf(out, "%s\"%s\":%llu", first ? "" : ",", pins_code_name(c),
                (unsigned long long)codes[c]);
        first = false;
    }
    fputc('}', out);
}

void bench_report_json(FILE *out, const bench_config *cfg, const pins_options *opts,
                       const bench_stats *st)
{
    uint64_t sent = sum_ops(st->sent), answers = sum_ops(st->answers);
    fprintf(out, "{\"addr\":");
    json_string(out, opts->addr);
    fprintf(out, ",\"connections\":%d,\"streams\":%d", cfg->connections, cfg->streams);
    if (cfg->rate > 0)
        fprintf(out, ",\"target_rate\":%.3f", cfg->rate);
    else
        fprintf(out, ",\"target_rate\":null");
    fprintf(out, ",\"requests_target\":%llu,\"duration_target_s\":%.3f,\"warmup_s\":%.3f",
            (unsigned long long)cfg->requests,
            cfg->requests > 0 ? 0.0 : (double)cfg->duration_ms / 1e3, (double)cfg->warmup_ms / 1e3);
    fprintf(out, ",\"mix\":{");
    for (int op = 0; op < BENCH_OP__COUNT; op++)
        fprintf(out, "%s\"%s\":%u", op > 0 ? "," : "", bench_op_name((bench_op)op), cfg->mix[op]);
    fprintf(out, "},\"keys\":%llu,\"tenants\":%d,\"dist\":\"%s\",\"zipf_s\":%.6g",
            (unsigned long long)cfg->keys, cfg->tenants,
            cfg->dist == BENCH_DIST_ZIPFIAN ? "zipfian" : "uniform", cfg->zipf_s);
    fprintf(out, ",\"value_size\":%zu,\"list_limit\":%d,\"conflicts\":%.6g,\"seed\":%llu",
            cfg->value_size, cfg->list_limit, cfg->conflicts, (unsigned long long)cfg->seed);
    fprintf(out, ",\"key_prefix\":");
    json_string(out, cfg->prefix);
    fprintf(out, ",\"tenant_prefix\":");
    json_string(out, cfg->tenant_prefix);
    fprintf(out, ",\"prefill\":{\"enabled\":%s,\"upserts\":%llu,\"errors\":%llu,\"seconds\":%.3f}",
            cfg->prefill ? "true" : "false", (unsigned long long)st->prefill_sent,
            (unsigned long long)st->prefill_errors, (double)st->prefill_ns / 1e9);
    fprintf(out,
            ",\"duration_s\":%.6f,\"requests\":%llu,\"answers\":%llu,\"ok\":%llu,\"errors\":%llu"
            ",\"aborted\":%llu,\"conflicts_sent\":%llu,\"failed_locally\":%llu,\"unanswered\":%llu"
            ",\"rps\":%.3f",
            (double)st->measured_ns / 1e9, (unsigned long long)sent, (unsigned long long)answers,
            (unsigned long long)sum_ops(st->ok), (unsigned long long)sum_ops(st->errors),
            (unsigned long long)st->aborted, (unsigned long long)st->conflicts_sent,
            (unsigned long long)sum_ops(st->failed_locally), (unsigned long long)st->unanswered,
            per_second(answers, st->measured_ns));
    fprintf(out, ",\"errors_by_code\":");
    json_codes(out, st->codes);
    fprintf(out, ",\"failed_locally_by_code\":");
    json_codes(out, st->local_codes);
    fprintf(out, ",\"ops\":{");
    for (int op = 0; op < BENCH_OP__COUNT; op++) {
        fprintf(out,
                "%s\"%s\":{\"sent\":%llu,\"answers\":%llu,\"ok\":%llu,\"errors\":%llu,"
                "\"aborted\":%llu,\"failed_locally\":%llu,\"rps\":%.3f,\"latency_us\":",
                op > 0 ? "," : "", bench_op_name((bench_op)op), (unsigned long long)st->sent[op],
                (unsigned long long)st->answers[op], (unsigned long long)st->ok[op],
                (unsigned long long)st->errors[op],
                (unsigned long long)(op == BENCH_OP_PUT ? st->aborted : 0),
                (unsigned long long)st->failed_locally[op],
                per_second(st->answers[op], st->measured_ns));
        json_latency(out, &st->lat[op]);
        fputc('}', out);
    }
    static bench_hist all;
    all_latencies(st, &all);
    fprintf(out, "},\"latency_us\":");
    json_latency(out, &all);
    fprintf(out, ",\"timeline\":[");
    for (uint64_t i = 0; i < st->timeline_len && i < BENCH_TIMELINE_MAX; i++) {
        fprintf(out, "%s{\"ok\":%llu,\"errors\":%llu,\"failed_locally\":%llu", i > 0 ? "," : "",
                (unsigned long long)st->timeline_ok[i], (unsigned long long)st->timeline_err[i],
                (unsigned long long)st->timeline_local[i]);
        const bench_shist *h = st->timeline_lat[i];
        if (h != NULL && h->count > 0) {
            for (size_t k = 0; k < NSEC_PCT; k++)
                fprintf(out, ",\"%s_ms\":%.3f", second_percentile_names[k],
                        ms(bench_shist_percentile(h, second_percentiles[k])));
            fprintf(out, ",\"max_ms\":%.3f}", ms(h->max));
        } else {
            for (size_t k = 0; k < NSEC_PCT; k++)
                fprintf(out, ",\"%s_ms\":null", second_percentile_names[k]);
            fprintf(out, ",\"max_ms\":null}");
        }
    }
    bench_stall stall;
    bench_stall_compute(st, &stall);
    fprintf(out, "],\"stall\":{\"run_p99_ms\":");
    json_ms_or_null(out, stall.run_p99_ns, all.count > 0);
    fprintf(out, ",\"worst_second\":");
    if (stall.considered > 0)
        fprintf(out, "%llu", (unsigned long long)stall.worst_second);
    else
        fprintf(out, "null");
    fprintf(out, ",\"worst_p99_ms\":");
    json_ms_or_null(out, stall.worst_p99_ns, stall.considered > 0);
    if (stall.considered > 0 && stall.run_p99_ns > 0)
        fprintf(out, ",\"ratio\":%.3f", (double)stall.worst_p99_ns / (double)stall.run_p99_ns);
    else
        fprintf(out, ",\"ratio\":null");
    fprintf(out,
            ",\"seconds_over_3x\":%llu,\"seconds_considered\":%llu,\"min_answers\":%d"
            ",\"complete_until_s\":%.6f}}\n",
            (unsigned long long)stall.over, (unsigned long long)stall.considered,
            BENCH_STALL_MIN_ANSWERS, (double)bench_stall_end_ns(st) / 1e9);
}
