/* rng.c -- a counter-based random number generator (Philox4x32-10, Salmon et al. 2011).
 *
 * The k-th number of stream s under seed is a pure function of (seed, s, k): block
 * k/4 of the stream is Philox(key = seed, counter = (k/4 lo, k/4 hi, s lo, s hi)).
 * So a tensor filled in pieces, in any order, by any number of threads, gets the same
 * numbers. Normals come from Box-Muller on pairs of uniforms, computed in float64. */
#include "internal.h"
#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t block) {
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* uniform in (0, 1]: never 0, so log() is safe */
static inline double u01(uint32_t x) { return ((double)x + 1.0) * (1.0 / 4294967296.0); }

void vaec_rng_uniform(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
    uint32_t r[4];
    for (int64_t i = 0; i < n; i++) {
        uint64_t k = offset + (uint64_t)i;
        if (i == 0 || (k & 3) == 0) philox(r, seed, stream, k >> 2);
        /* in [0, 1): float of the top 24 bits */
        out[i] = (float)(r[k & 3] >> 8) * (1.0f / 16777216.0f);
    }
}

void vaec_rng_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
    /* numbers 4b..4b+3 of the stream are two Box-Muller pairs from block b */
    uint32_t r[4];
    double z[4];
    uint64_t have = UINT64_MAX;
    for (int64_t i = 0; i < n; i++) {
        uint64_t k = offset + (uint64_t)i, b = k >> 2;
        if (b != have) {
            philox(r, seed, stream, b);
            for (int p = 0; p < 2; p++) {
                double rad = sqrt(-2.0 * log(u01(r[2 * p])));
                double th = 6.283185307179586 * u01(r[2 * p + 1]);
                z[2 * p] = rad * cos(th);
                z[2 * p + 1] = rad * sin(th);
            }
            have = b;
        }
        out[i] = (float)z[k & 3];
    }
}
