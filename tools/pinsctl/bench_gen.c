/* tools/pinsctl/bench_gen.c: draws and schedules of pinsctl bench (bench_gen.h). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench_gen.h"

static const char *const op_names[BENCH_OP__COUNT] = {"get", "put", "list", "delete"};

const char *bench_op_name(bench_op op)
{
    return (unsigned)op < BENCH_OP__COUNT ? op_names[op] : "?";
}

bool bench_parse_mix(const char *s, unsigned mix[BENCH_OP__COUNT])
{
    unsigned out[BENCH_OP__COUNT] = {0};
    bool seen[BENCH_OP__COUNT] = {false};
    uint64_t total = 0;
    const char *p = s;
    while (*p != '\0') {
        const char *eq = strchr(p, '=');
        if (eq == NULL)
            return false;
        int op = -1;
        for (int i = 0; i < BENCH_OP__COUNT; i++) {
            size_t n = strlen(op_names[i]);
            if ((size_t)(eq - p) == n && memcmp(p, op_names[i], n) == 0)
                op = i;
        }
        if (op < 0 || seen[op])
            return false;
        seen[op] = true;
        const char *v = eq + 1;
        if (*v < '0' || *v > '9')
            return false;
        char *end = NULL;
        errno = 0;
        unsigned long w = strtoul(v, &end, 10);
        if (errno != 0 || w > 1000000 || (*end != ',' && *end != '\0'))
            return false;
        out[op] = (unsigned)w;
        total += w;
        p = *end == ',' ? end + 1 : end;
        if (*end == ',' && *p == '\0')
            return false;
    }
    if (total == 0)
        return false;
    memcpy(mix, out, sizeof(out));
    return true;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void bench_rng_seed(bench_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

uint64_t bench_rng_next(bench_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double bench_rng_double(bench_rng *r)
{
    return (double)(bench_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t bench_rng_below(bench_rng *r, uint64_t n)
{
    unsigned __int128 m = (unsigned __int128)bench_rng_next(r) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (unsigned __int128)bench_rng_next(r) * n;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

/* ---- zipfian: rejection-inversion ---------------------------------------------------------- */

/* log1p(x)/x, continuous at 0. */
static double helper1(double x)
{
    if (fabs(x) > 1e-8)
        return log1p(x) / x;
    return 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}

/* expm1(x)/x, continuous at 0. */
static double helper2(double x)
{
    if (fabs(x) > 1e-8)
        return expm1(x) / x;
    return 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x));
}

/* h(x) = x^-s, the unnormalised density. */
static double zipf_h(double s, double x)
{
    return exp(-s * log(x));
}

/* H(x), an antiderivative of h: (x^(1-s) - 1) / (1-s), and log(x) for s = 1. */
static double zipf_hint(double s, double x)
{
    double lx = log(x);
    return helper2((1.0 - s) * lx) * lx;
}

/* H^-1. */
static double zipf_hint_inv(double s, double x)
{
    double t = x * (1.0 - s);
    if (t < -1.0)
        t = -1.0; /* rounding can push it past the pole */
    return exp(helper1(t) * x);
}

void bench_zipf_init(bench_zipf *z, uint64_t n, double s)
{
    z->n = n;
    z->s = s;
    z->h_integral_x1 = zipf_hint(s, 1.5) - 1.0;
    z->h_integral_n = zipf_hint(s, (double)n + 0.5);
    z->threshold = 2.0 - zipf_hint_inv(s, zipf_hint(s, 2.5) - zipf_h(s, 2.0));
}

uint64_t bench_zipf_next(const bench_zipf *z, bench_rng *r)
{
    /* Bounded: the acceptance probability is high for every s and n (the paper's bound); 1000
     * rejections in a row do not happen with a working generator. */
    double k = 1.0;
    for (int i = 0; i < 1000; i++) {
        double u = z->h_integral_n + bench_rng_double(r) * (z->h_integral_x1 - z->h_integral_n);
        double x = zipf_hint_inv(z->s, u);
        k = floor(x + 0.5);
        if (k < 1.0)
            k = 1.0;
        else if (k > (double)z->n)
            k = (double)z->n;
        if (k - x <= z->threshold || u >= zipf_hint(z->s, k + 0.5) - zipf_h(z->s, k))
            break;
    }
    return (uint64_t)k - 1;
}

double bench_zipf_pmf(uint64_t n, double s, uint64_t r)
{
    double sum = 0.0;
    /* Smallest terms first, for accuracy. */
    for (uint64_t k = n; k >= 1; k--)
        sum += pow((double)k, -s);
    return pow((double)(r + 1), -s) / sum;
}

/* ---- mix, fractions, pacing ---------------------------------------------------------------- */

void bench_mix_init(bench_mix *m, const unsigned weights[BENCH_OP__COUNT])
{
    *m = (bench_mix){0};
    for (int i = 0; i < BENCH_OP__COUNT; i++) {
        m->weight[i] = (int)weights[i];
        m->total += (int)weights[i];
    }
}

bench_op bench_mix_next(bench_mix *m)
{
    int best = 0;
    for (int i = 0; i < BENCH_OP__COUNT; i++) {
        m->current[i] += m->weight[i];
        if (m->weight[i] > 0 && (m->weight[best] == 0 || m->current[i] > m->current[best]))
            best = i;
    }
    m->current[best] -= m->total;
    return (bench_op)best;
}

void bench_frac_init(bench_frac *fr, double f)
{
    fr->f = f;
    fr->k = 0;
}

bool bench_frac_next(bench_frac *fr)
{
    uint64_t before = (uint64_t)floor((double)fr->k * fr->f);
    fr->k++;
    return (uint64_t)floor((double)fr->k * fr->f) > before;
}

void bench_pacer_init(bench_pacer *p, uint64_t start_ns, double rate, uint64_t offset_ns)
{
    p->start_ns = start_ns;
    p->interval_ns = rate > 0.0 ? 1e9 / rate : 0.0;
    p->offset_ns = offset_ns;
    p->next = 0;
}

uint64_t bench_pacer_due(const bench_pacer *p)
{
    return p->start_ns + p->offset_ns + (uint64_t)((double)p->next * p->interval_ns);
}

bool bench_pacer_take(bench_pacer *p, uint64_t now_ns, uint64_t *pdue)
{
    uint64_t due = bench_pacer_due(p);
    if (due > now_ns)
        return false;
    *pdue = due;
    p->next++;
    return true;
}
