/* elem_check.c -- checks of the elementwise kernels (csrc/elem*.c, csrc/vmath.inc) on the
 * ISA chosen by the environment variable VAEC_ISA (cpu.c honours it; never above what
 * the CPU has, so the program prints the path that actually ran).
 *
 * Build (from the repository root):
 *   cc -std=c11 -O2 -Icsrc tests/c/elem_check.c csrc/elem*.c csrc/cpu.c -lm -lpthread
 * Run:
 *   VAEC_ISA=avx2 ./a.out [--stride N] [--bench] [--no-check]
 *
 * 1. Every vector function (exp, expm1, log1p, tanh, sigmoid, softplus, through the test
 *    hook vaec_elem_test_fn) against float64 libm on every N-th float bit pattern
 *    (default N = 97; N = 1 is exhaustive) plus special values, the overflow/underflow
 *    boundaries and their neighbours: max error in ULP of the float result (the
 *    distance to the float64 value in units of the float spacing there; 0.5 means
 *    correctly rounded). NaN must give NaN, infinities and signed zeros must be exact.
 * 2. act_forward / act_backward of every activation against the naive loops.
 * 3. bernoulli_rows / gaussian_rows against the naive float64 rows: values, gradients,
 *    awkward D, strides, dl == NULL, in-place gradients, row splits (bitwise equal).
 * Prints `elem_check: N passed, M failed` last; exits 1 on any failure.
 * --bench: ns per element of the activations and the likelihood rows, naive vs the
 *    active path (single thread). */
#define _POSIX_C_SOURCE 200809L
#include "elem.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int n_pass = 0, n_fail = 0;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (ok) {
        n_pass++;
    } else {
        n_fail++;
        printf("FAIL: ");
        vprintf(fmt, ap);
        printf("\n");
    }
    va_end(ap);
}

static float f_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Spacing of floats at |v| (denormal spacing below FLT_MIN). */
static double ulp_at(double v) {
    int e;
    v = fabs(v);
    if (v < 0x1p-126) return 0x1p-149;
    frexp(v, &e);                 /* v = m 2^e, m in [0.5, 1) */
    return ldexp(1.0, e - 24);
}

/* Error of a float result against the float64 reference, in ULP. NaN/inf/zero-sign
 * mismatches are infinite. */
static double ulp_err(float got, double ref) {
    if (isnan(ref)) return isnan(got) ? 0.0 : INFINITY;
    if (isnan(got)) return INFINITY;
    float rf = (float)ref;
    if (isinf(rf) || isinf(got)) return got == rf ? 0.0 : INFINITY;
    if (ref == 0.0 || got == 0.0f) {
        if (ref == 0.0 && got == 0.0f) return !signbit(ref) == !signbit(got) ? 0.0 : INFINITY;
    }
    return fabs((double)got - ref) / ulp_at(ref);
}

/* --------------------------------------------------------------- references */
static double ref_sigmoid(double x) {
    double e = exp(-fabs(x));
    return x >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}
static double ref_softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }

static double ref_fn(int which, double x) {
    switch (which) {
    case VAEC_ELEM_FN_EXP: return exp(x);
    case VAEC_ELEM_FN_EXPM1: return expm1(x);
    case VAEC_ELEM_FN_LOG1P: return log1p(x);
    case VAEC_ELEM_FN_TANH: return tanh(x);
    case VAEC_ELEM_FN_SIGMOID: return ref_sigmoid(x);
    case VAEC_ELEM_FN_SOFTPLUS: return ref_softplus(x);
    }
    return NAN;
}
static const char *fn_name[VAEC_ELEM_FN_COUNT] = {"exp", "expm1", "log1p", "tanh", "sigmoid", "softplus"};
/* Allowed max ULP per function (vector paths and libm alike). */
static const double fn_limit[VAEC_ELEM_FN_COUNT] = {2.0, 2.5, 2.5, 3.0, 3.0, 3.0};

/* Special inputs: signed zeros, infinities, NaN, denormals, limits, and the points where
 * the functions overflow, underflow, saturate or switch formula, with neighbours. */
static int special_inputs(float *out, int cap) {
    const float base[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN,
                          0x1p-149f, -0x1p-149f, 0x1.fffffcp-127f, -0x1.fffffcp-127f,
                          0x1p-126f, -0x1p-126f, 3.40282347e38f, -3.40282347e38f,
                          88.7228317f, 88.7228394f, 89.0f, -87.3365479f, -103.972076f, -103.278931f,
                          -104.0f, -25.0f, -17.32868f, 17.32868f, 0x1p-25f, -0x1p-25f, 0x1p-13f, -0x1p-13f,
                          -1.0f, -0.99999994f, -0.29289322f, 0.41421357f, 1.0f, 2.0f, 0.5f, -0.5f,
                          0.34657359f, -0.34657359f, 0.69314718f, -0.69314718f, 9.01f, -9.01f, 10.0f, -10.0f,
                          16777216.0f, 1e30f, -1e30f, 0x1p64f, 0x1p127f, 1e-20f, -1e-20f, 0.625f, -0.625f};
    int n = 0;
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
        float b = base[i];
        if (n < cap) out[n++] = b;
        if (isnan(b) || isinf(b)) continue;
        float lo = b, hi = b;
        for (int k = 0; k < 40 && n + 2 <= cap; k++) {
            lo = nextafterf(lo, -INFINITY);
            hi = nextafterf(hi, INFINITY);
            out[n++] = lo;
            out[n++] = hi;
        }
    }
    return n;
}

/* ---------------------------------------------------------------- ULP sweep */
typedef struct { double max_ulp; float worst_x; float worst_got; int64_t bad_special; int64_t n; } sweep_result;

static void eval_batch(int which, const float *x, float *y, int64_t n, sweep_result *res) {
    vaec_elem_test_fn(which, y, x, n);
    for (int64_t i = 0; i < n; i++) {
        double e = ulp_err(y[i], ref_fn(which, (double)x[i]));
        if (e > res->max_ulp || (isnan(e) && !isnan(res->max_ulp))) {
            res->max_ulp = e;
            res->worst_x = x[i];
            res->worst_got = y[i];
        }
        res->n++;
    }
}

static void sweep(uint32_t stride) {
    enum { B = 4096 };
    static float xb[B], yb[B], sp[8192];
    int nsp = special_inputs(sp, 8192);
    for (int w = 0; w < VAEC_ELEM_FN_COUNT; w++) {
        sweep_result res = {0, 0, 0, 0, 0};
        eval_batch(w, sp, yb, nsp, &res);
        int64_t nb = 0;
        for (uint64_t u = 0; u <= 0xffffffffu; u += stride) {
            xb[nb++] = f_from_bits((uint32_t)u);
            if (nb == B) {
                eval_batch(w, xb, yb, nb, &res);
                nb = 0;
            }
        }
        if (nb) eval_batch(w, xb, yb, nb, &res);
        printf("  %-9s max %.3f ulp over %lld inputs (worst at x = %.9g [0x%08x] -> %.9g, ref %.12g)\n",
               fn_name[w], res.max_ulp, (long long)res.n, res.worst_x, bits_of(res.worst_x),
               res.worst_got, ref_fn(w, res.worst_x));
        check(res.max_ulp <= fn_limit[w], "%s: max ulp %.3f > %.1f", fn_name[w], res.max_ulp, fn_limit[w]);
    }
    /* exact values */
    struct { int w; float x; float want; } ex[] = {
        {VAEC_ELEM_FN_EXP, -INFINITY, 0.0f}, {VAEC_ELEM_FN_EXP, INFINITY, INFINITY},
        {VAEC_ELEM_FN_EXP, 0.0f, 1.0f}, {VAEC_ELEM_FN_EXP, -0.0f, 1.0f},
        {VAEC_ELEM_FN_EXP, 88.7228394f, INFINITY}, {VAEC_ELEM_FN_EXP, -104.0f, 0.0f},
        {VAEC_ELEM_FN_EXP, -103.278931f, 0x1p-149f},
        {VAEC_ELEM_FN_EXPM1, -0.0f, -0.0f}, {VAEC_ELEM_FN_EXPM1, -INFINITY, -1.0f},
        {VAEC_ELEM_FN_EXPM1, INFINITY, INFINITY}, {VAEC_ELEM_FN_EXPM1, 0x1p-149f, 0x1p-149f},
        {VAEC_ELEM_FN_LOG1P, -0.0f, -0.0f}, {VAEC_ELEM_FN_LOG1P, -1.0f, -INFINITY},
        {VAEC_ELEM_FN_LOG1P, INFINITY, INFINITY}, {VAEC_ELEM_FN_LOG1P, 0x1p-149f, 0x1p-149f},
        {VAEC_ELEM_FN_TANH, -0.0f, -0.0f}, {VAEC_ELEM_FN_TANH, INFINITY, 1.0f},
        {VAEC_ELEM_FN_TANH, -INFINITY, -1.0f}, {VAEC_ELEM_FN_TANH, 9.1f, 1.0f},
        {VAEC_ELEM_FN_TANH, -0x1p-149f, -0x1p-149f},
        {VAEC_ELEM_FN_SIGMOID, INFINITY, 1.0f}, {VAEC_ELEM_FN_SIGMOID, -INFINITY, 0.0f},
        {VAEC_ELEM_FN_SIGMOID, 0.0f, 0.5f}, {VAEC_ELEM_FN_SIGMOID, -1e4f, 0.0f},
        {VAEC_ELEM_FN_SOFTPLUS, INFINITY, INFINITY}, {VAEC_ELEM_FN_SOFTPLUS, -INFINITY, 0.0f},
        {VAEC_ELEM_FN_SOFTPLUS, 1e4f, 1e4f}, {VAEC_ELEM_FN_SOFTPLUS, -1e4f, 0.0f},
    };
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        float y;
        vaec_elem_test_fn(ex[i].w, &y, &ex[i].x, 1);
        check(bits_of(y) == bits_of(ex[i].want), "%s(%g) = %g, want %g", fn_name[ex[i].w], ex[i].x, y, ex[i].want);
    }
    const float nan_in[] = {NAN, -NAN, f_from_bits(0x7f800001u), f_from_bits(0xffc12345u)};
    for (int w = 0; w < VAEC_ELEM_FN_COUNT; w++)
        for (int i = 0; i < 4; i++) {
            float y;
            vaec_elem_test_fn(w, &y, &nan_in[i], 1);
            check(isnan(y), "%s(NaN 0x%08x) = %g, want NaN", fn_name[w], bits_of(nan_in[i]), y);
        }
    float y, bad[] = {-1.5f, -INFINITY, -1e30f};
    for (int i = 0; i < 3; i++) {
        vaec_elem_test_fn(VAEC_ELEM_FN_LOG1P, &y, &bad[i], 1);
        check(isnan(y), "log1p(%g) = %g, want NaN", bad[i], y);
    }
}

/* -------------------------------------------------------------- random data */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) {  /* xorshift64*, [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) * 0x1p-53;
}
static double nrand(void) {
    double u = urand(), v = urand();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* Close in ULP of the naive (or reference) value, or within abs. */
static int close_ulp(float got, float want, double ulps, double abs_tol) {
    if (isnan(want) || isnan(got)) return isnan(want) && isnan(got);
    if (isinf(want) || isinf(got)) return got == want;
    double d = fabs((double)got - (double)want);
    return d <= ulps * ulp_at(want) + abs_tol;
}

/* ---------------------------------------------------------------- activations */
static const char *act_names[VAEC_ACT_COUNT] = {"identity", "tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu"};

static void check_acts(void) {
    enum { N = 20000 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float)), *yn = malloc(N * sizeof(float));
    float *d = malloc(N * sizeof(float)), *dn = malloc(N * sizeof(float)), *d0 = malloc(N * sizeof(float));
    float *yi = malloc(N * sizeof(float));
    int nsp = special_inputs(x, 4000);
    const double scales[] = {1e-3, 0.1, 1.0, 3.0, 10.0, 40.0, 120.0};
    for (int i = nsp; i < N; i++) x[i] = (float)(nrand() * scales[i % 7]);
    for (int i = 0; i < N; i++) d0[i] = (float)nrand();
    const int64_t sizes[] = {1, 3, 7, 8, 15, 16, 17, 33, 100, 1003, N - 5};
    vaec_isa isa = vaec_cpu_active_isa();
    for (int a = 0; a < VAEC_ACT_COUNT; a++) {
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            int64_t n = sizes[si];
            const float *xs = x + (si & 1) + (si > 8 ? 0 : 100);  /* odd offsets: unaligned */
            if (xs + n > x + N) xs = x;
            vaec_cpu_set_isa(VAEC_ISA_NAIVE);
            vaec_elem_act_forward((vaec_act)a, yn, xs, n);
            memcpy(dn, d0, (size_t)n * sizeof(float));
            vaec_elem_act_backward((vaec_act)a, dn, yn, n);
            vaec_cpu_set_isa(isa);
            vaec_elem_act_forward((vaec_act)a, y, xs, n);
            memcpy(yi, xs, (size_t)n * sizeof(float));
            vaec_elem_act_forward((vaec_act)a, yi, yi, n);   /* in place */
            memcpy(d, d0, (size_t)n * sizeof(float));
            vaec_elem_act_backward((vaec_act)a, d, yn, n);
            int64_t bad_f = -1, bad_b = -1, bad_i = -1;
            int exact = a == VAEC_ACT_IDENTITY || a == VAEC_ACT_RELU || a == VAEC_ACT_LEAKY_RELU;
            for (int64_t i = 0; i < n; i++) {
                int okf = exact ? (bits_of(y[i]) == bits_of(yn[i]) || (isnan(y[i]) && isnan(yn[i])))
                                : close_ulp(y[i], yn[i], 4.0, 0.0);
                if (!okf && bad_f < 0) bad_f = i;
                if (memcmp(&y[i], &yi[i], 4) != 0 && bad_i < 0) bad_i = i;
                /* backward: 4 ULP, plus the rounding of 1 - y^2 (naive rounds y^2 first) */
                double extra = 1.2e-7 * fabs(d0[i]) * (a == VAEC_ACT_TANH ? 1.0 : 0.0);
                if (!close_ulp(d[i], dn[i], 4.0, extra) && bad_b < 0) bad_b = i;
            }
            check(bad_f < 0, "act %s forward n=%lld: x=%.9g got %.9g naive %.9g", act_names[a], (long long)n,
                  bad_f >= 0 ? xs[bad_f] : 0.0f, bad_f >= 0 ? y[bad_f] : 0.0f, bad_f >= 0 ? yn[bad_f] : 0.0f);
            check(bad_i < 0, "act %s in place differs n=%lld at %lld", act_names[a], (long long)n, (long long)bad_i);
            check(bad_b < 0, "act %s backward n=%lld: y=%.9g d=%.9g got %.9g naive %.9g", act_names[a],
                  (long long)n, bad_b >= 0 ? yn[bad_b] : 0.0f, bad_b >= 0 ? d0[bad_b] : 0.0f,
                  bad_b >= 0 ? d[bad_b] : 0.0f, bad_b >= 0 ? dn[bad_b] : 0.0f);
        }
    }
    /* n = 0 writes nothing */
    y[0] = 42.0f;
    vaec_elem_act_forward(VAEC_ACT_TANH, y, x, 0);
    check(y[0] == 42.0f, "act n=0 wrote");
    free(x); free(y); free(yn); free(d); free(dn); free(d0); free(yi);
}

/* ------------------------------------------------------------ likelihood rows */
typedef void (*rows_fn)(int64_t, int64_t, const float *, int64_t, const float *, int64_t, float,
                        float *, int64_t, double *);

static void check_rows(int gaussian) {
    const int64_t Ds[] = {1, 2, 7, 8, 15, 16, 17, 31, 63, 64, 65, 127, 128, 129, 784, 785, 1000};
    const int64_t R = 6;
    const char *name = gaussian ? "gaussian_rows" : "bernoulli_rows";
    rows_fn fn = gaussian ? vaec_elem_gaussian_rows : vaec_elem_bernoulli_rows;
    vaec_isa isa = vaec_cpu_active_isa();
    for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++) {
        int64_t D = Ds[di], W = gaussian ? 2 * D : D;
        int64_t ldl = W + 3, ldx = D + 5, ldd = W + 1;
        float *l = malloc((size_t)(R * ldl) * sizeof(float)), *x = malloc((size_t)(R * ldx) * sizeof(float));
        float *g = malloc((size_t)(R * ldd) * sizeof(float)), *gn = malloc((size_t)(R * ldd) * sizeof(float));
        float *gi = malloc((size_t)(R * ldl) * sizeof(float));
        double lp[6], lpn[6], lp2[6], lp3[6], lpi[6], mag[6];
        for (int64_t r = 0; r < R; r++) {
            for (int64_t k = 0; k < ldl; k++) {
                double v;
                if (gaussian) v = k < D ? nrand() : 2.0 * (urand() - 0.5) * 3.0;  /* mean | logvar */
                else v = (r == R - 1 && k % 5 == 0) ? 60.0 * (urand() - 0.5) * 4 : 3.0 * nrand();
                l[r * ldl + k] = (float)v;
            }
            for (int64_t k = 0; k < ldx; k++)
                x[r * ldx + k] = gaussian ? (float)nrand() : (r % 2 ? (float)(urand() < 0.5) : (float)urand());
        }
        /* magnitude sum of the terms, for the tolerance of the row sums */
        for (int64_t r = 0; r < R; r++) {
            double s = 0;
            for (int64_t k = 0; k < D; k++) {
                double lv = l[r * ldl + k], xv = x[r * ldx + k];
                if (gaussian) {
                    double v = l[r * ldl + D + k], df = xv - lv;
                    s += 0.5 * (fabs(VAEC_LOG_2PI + v) + df * df * exp(-v));
                } else {
                    s += fabs(xv * lv - ref_softplus(lv));
                }
            }
            mag[r] = s;
        }
        const float scale = 1.0f / 3.0f;
        for (int64_t r = 0; r < R; r++) lp[r] = lpn[r] = lp2[r] = lp3[r] = lpi[r] = 1.25;  /* adds */
        vaec_cpu_set_isa(VAEC_ISA_NAIVE);
        fn(R, D, l, ldl, x, ldx, scale, gn, ldd, lpn);
        vaec_cpu_set_isa(isa);
        fn(R, D, l, ldl, x, ldx, scale, g, ldd, lp);
        fn(R, D, l, ldl, x, ldx, scale, NULL, 0, lp2);          /* no gradients */
        for (int64_t r = 0; r < R; r++)                          /* one row at a time */
            fn(1, D, l + r * ldl, ldl, x + r * ldx, ldx, scale, NULL, 0, lp3 + r);
        memcpy(gi, l, (size_t)(R * ldl) * sizeof(float));        /* gradients in place */
        fn(R, D, gi, ldl, x, ldx, scale, gi, ldl, lpi);
        int ok_v = 1, ok_g = 1, ok_det = 1, ok_inplace = 1;
        double worst = 0;
        int64_t bad_r = -1, bad_k = -1;
        for (int64_t r = 0; r < R; r++) {
            double err = fabs((lp[r] - 1.25) - (lpn[r] - 1.25));
            double tol = 1e-6 * mag[r] + 1e-9;
            if (err / (mag[r] + 1e-30) > worst) worst = err / (mag[r] + 1e-30);
            if (!(err <= tol)) ok_v = 0;
            if (memcmp(&lp[r], &lp2[r], sizeof(double)) || memcmp(&lp[r], &lp3[r], sizeof(double)) ||
                memcmp(&lp[r], &lpi[r], sizeof(double)))
                ok_det = 0;
            for (int64_t k = 0; k < W; k++) {
                float got = g[r * ldd + k], want = gn[r * ldd + k];
                double extra;
                if (!gaussian) {
                    extra = 2.5e-7 * scale;  /* sigmoid(l) - x in float */
                } else if (k < D) {
                    extra = 0.0;
                } else {
                    double v = l[r * ldl + k], df = (double)x[r * ldx + k - D] - l[r * ldl + k - D];
                    extra = 0.5 * scale * 3e-7 * (1.0 + df * df * exp(-v));  /* 1 - q in float */
                }
                if (!close_ulp(got, want, 4.0, extra) && ok_g) {
                    ok_g = 0;
                    bad_r = r;
                    bad_k = k;
                }
                if (memcmp(&gi[r * ldl + k], &g[r * ldd + k], 4)) ok_inplace = 0;
            }
        }
        check(ok_v, "%s D=%lld: row sums off (worst rel err %.3g)", name, (long long)D, worst);
        check(ok_g, "%s D=%lld: grad [%lld,%lld] got %.9g naive %.9g", name, (long long)D, (long long)bad_r,
              (long long)bad_k, ok_g ? 0.0f : g[bad_r * ldd + bad_k], ok_g ? 0.0f : gn[bad_r * ldd + bad_k]);
        check(ok_det, "%s D=%lld: sums differ between with/without grads, row splits or in place", name,
              (long long)D);
        check(ok_inplace, "%s D=%lld: in-place gradients differ", name, (long long)D);
        if (D == 784) printf("  %s D=784: max |sum - naive| / sum|terms| = %.3g\n", name, worst);
        free(l); free(x); free(g); free(gn); free(gi);
    }
}

/* -------------------------------------------------------------------- bench */
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static volatile double sink;

/* One benchmark job: kernel c (0..9 the activations forward/backward, 10 Bernoulli rows,
 * 11 Gaussian rows, 12 the former vae.c loop) on the active path. Returns ns/element of
 * the best of a ~20 ms slot. */
typedef struct {
    int64_t n, R, D;
    float *x, *y, *d, *l, *t, *g;
    double *lp;
} bench_data;

static void bern_float_libm(int64_t R, int64_t D, const float *l, int64_t ldl, const float *x, int64_t ldx,
                            float scale, float *dl, int64_t lddl, double *logp_add);

static double bench_slot(const bench_data *b, int c) {
    static const vaec_act acts[] = {VAEC_ACT_TANH, VAEC_ACT_SOFTPLUS, VAEC_ACT_SIGMOID, VAEC_ACT_ELU, VAEC_ACT_RELU};
    int64_t per = c < 10 ? b->n : b->R * b->D;
    if (c < 10 && (c & 1)) vaec_elem_act_forward(acts[c / 2], b->y, b->x, b->n);  /* y for backward */
    double best = 1e30, t0 = now(), t1;
    do {
        double s = now();
        if (c < 10 && !(c & 1)) vaec_elem_act_forward(acts[c / 2], b->y, b->x, b->n);
        else if (c < 10) vaec_elem_act_backward(acts[c / 2], b->d, b->y, b->n);
        else if (c == 10) vaec_elem_bernoulli_rows(b->R, b->D, b->l, b->D, b->t, b->D, 0.01f, b->g, b->D, b->lp);
        else if (c == 11) vaec_elem_gaussian_rows(b->R, b->D, b->l, 2 * b->D, b->t, b->D, 0.01f, b->g, 2 * b->D, b->lp);
        else bern_float_libm(b->R, b->D, b->l, b->D, b->t, b->D, 0.01f, b->g, b->D, b->lp);
        t1 = now();
        if (t1 - s < best) best = t1 - s;
    } while (t1 - t0 < 0.02);
    sink += b->y[0] + b->lp[0];
    return best / per * 1e9;
}

/* The Bernoulli loop of vae.c's lik_task before the elementwise kernels (float libm),
 * for comparison. */
static void bern_float_libm(int64_t R, int64_t D, const float *l, int64_t ldl, const float *x, int64_t ldx,
                            float scale, float *dl, int64_t lddl, double *logp_add) {
    for (int64_t r = 0; r < R; r++) {
        const float *o = l + r * ldl, *xr = x + r * ldx;
        double lp = 0.0;
        for (int64_t k = 0; k < D; k++) {
            float lv = o[k], e = expf(-fabsf(lv));
            float sp = fmaxf(lv, 0.0f) + log1pf(e);
            lp += (double)xr[k] * lv - sp;
            if (dl) {
                float s = lv >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
                dl[r * lddl + k] = scale * (s - xr[k]);
            }
        }
        logp_add[r] += lp;
    }
}

static void bench(void) {
    bench_data b = {128 * 512, 128, 784, 0, 0, 0, 0, 0, 0, 0};  /* batch 128: a 512-wide layer; 784 pixels */
    b.x = malloc(b.n * sizeof(float)), b.y = malloc(b.n * sizeof(float)), b.d = malloc(b.n * sizeof(float));
    b.l = malloc(b.R * 2 * b.D * sizeof(float)), b.t = malloc(b.R * b.D * sizeof(float));
    b.g = malloc(b.R * 2 * b.D * sizeof(float)), b.lp = calloc((size_t)b.R, sizeof(double));
    for (int64_t i = 0; i < b.n; i++) b.x[i] = (float)(2.0 * nrand()), b.d[i] = 1.0f;
    for (int64_t i = 0; i < b.R * 2 * b.D; i++) b.l[i] = (float)(3.0 * nrand());
    for (int64_t i = 0; i < b.R * b.D; i++) b.t[i] = (float)(urand() < 0.2);
    vaec_isa isa = vaec_cpu_active_isa();
    vaec_isa paths[2] = {VAEC_ISA_NAIVE, isa};
    double res[2][13];
    for (int c = 0; c < 13; c++) res[0][c] = res[1][c] = 1e30;
    /* naive and the active path alternate, slot by slot, so both see the same machine load */
    for (int round = 0; round < 8; round++)
        for (int c = 0; c < 13; c++)
            for (int p = 0; p < 2; p++) {
                if (c == 12 && p == 0) continue;
                vaec_cpu_set_isa(paths[p]);
                double t = bench_slot(&b, c);
                if (t < res[p][c]) res[p][c] = t;
            }
    vaec_cpu_set_isa(isa);
    const char *labels[12] = {"tanh fwd", "tanh bwd", "softplus fwd", "softplus bwd", "sigmoid fwd",
                              "sigmoid bwd", "elu fwd", "elu bwd", "relu fwd", "relu bwd",
                              "bernoulli_rows+grad", "gaussian_rows+grad"};
    printf("bench: ns/element, one thread, best of 8 interleaved slots (%lld elements; rows %lldx%lld)\n",
           (long long)b.n, (long long)b.R, (long long)b.D);
    printf("  %-20s %10s %10s %8s\n", "kernel", "naive", vaec_isa_name(isa), "speedup");
    for (int c = 0; c < 12; c++)
        printf("  %-20s %10.3f %10.3f %7.1fx\n", labels[c], res[0][c], res[1][c], res[0][c] / res[1][c]);
    printf("  (vae.c's former float-libm Bernoulli loop: %.3f ns/element; the %s kernel is %.1fx faster)\n",
           res[1][12], vaec_isa_name(isa), res[1][12] / res[1][10]);
    free(b.x); free(b.y); free(b.d); free(b.l); free(b.t); free(b.g); free(b.lp);
}

int main(int argc, char **argv) {
    uint32_t stride = 97;
    int do_bench = 0, do_check = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--stride") && i + 1 < argc) stride = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--bench")) do_bench = 1;
        else if (!strcmp(argv[i], "--no-check")) do_check = 0;
        else {
            fprintf(stderr, "usage: %s [--stride N] [--bench] [--no-check]\n", argv[0]);
            return 2;
        }
    }
    if (stride == 0) stride = 1;
    const char *env = getenv("VAEC_ISA");
    printf("isa: %s (requested %s, best %s)\n", vaec_isa_name(vaec_cpu_active_isa()), env ? env : "-",
           vaec_isa_name(vaec_cpu_best_isa()));
    if (do_check) {
        printf("ULP error against float64 libm (every %u-th float bit pattern + specials):\n", stride);
        sweep(stride);
        check_acts();
        check_rows(0);
        check_rows(1);
    }
    if (do_bench) bench();
    printf("elem_check: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
