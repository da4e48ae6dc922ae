/* streams.h -- which random numbers vaec draws from which stream (the rule, stated once).
 *
 * Every random number is the k-th number of a stream s under a seed (vaec_rng_*: Philox,
 * counter-based), so it depends only on (seed, s, k), never on the thread that draws it
 * or the split of the work. A model has a key (its seed, the init seed unless set) and
 * a call counter c that each call drawing noise takes and advances (with an explicit
 * seed, the call draws under that seed with c = 0 and the counter stays). Under one seed:
 *
 *   stream             what                                       k
 *   4 t + 2            initial values of the arena's tensor t     element, row-major (params.c)
 *   VAE and autoencoder, call c:
 *   4 c + 0            eps of the reparameterization              ((sample * n) + row) * Z + j
 *   4 c + 1            dynamic binarization of the input          row * D + d
 *   4 c + 3            wake-sleep dreams: z, then the pixels      dream * Z + j; 2^40 + dream * D + d
 *   M2, call c (none is 2 mod 4, so they never meet the init streams):
 *   8 c + 0            eps of the labelled part                   row * Z + j
 *   8 c + 1            binarization of the labelled part          row * D + d
 *   8 c + 3            eps of the unlabelled part                 (row * C + class) * Z + j
 *   8 c + 4            binarization of the unlabelled part        row * D + d
 *   stand-alone flow, call c:
 *   4 c + 0            the base distribution's draws              row * dim + j
 *   HMC on a VAE's decoder, call c (vae_hmc.c; a family of its own, 2^62 + ..., which the
 *   streams above never reach; its input's binarization is the VAE's 4 c + 1):
 *   2^62 + 4 c + 0     the chains' starting points, z ~ N(0, I)   (k * n + row) * Z + j, draw k;
 *                      their resampling's uniforms                2^60 + k * n + row
 *   2^62 + 4 c + 1     the momenta                                (t * n + row) * Z + j
 *   2^62 + 4 c + 2     the Metropolis uniforms                    t * n + row
 *   2^62 + 4 c + 3     the step sizes' jitter                     t * n + row
 *   (t: the transition within the call, burn-in included; n: the call's rows)
 * Rows are numbered within the call's whole batch, not a chunk; a call on a share of a
 * batch (vaec_noise's row_offset and n_total, vaec_m2_batch's; data-parallel training)
 * numbers its rows from row_offset and takes n = n_total, so it draws what the whole
 * batch's call draws for those rows.
 */
#ifndef VAEC_STREAMS_H
#define VAEC_STREAMS_H
#include <stdint.h>

enum { VAE_STREAM_EPS = 0, VAE_STREAM_BINARIZE = 1, STREAM_INIT = 2, VAE_STREAM_DREAM = 3 };
enum { M2_STREAM_EPS_L = 0, M2_STREAM_BIN_L = 1, M2_STREAM_EPS_U = 3, M2_STREAM_BIN_U = 4 };
enum { FLOW_STREAM_NOISE = 0 };
enum { HMC_STREAM_INIT = 0, HMC_STREAM_MOMENTUM = 1, HMC_STREAM_UNIFORM = 2, HMC_STREAM_JITTER = 3 };
#define HMC_STREAM_BASE ((uint64_t)1 << 62)
#define HMC_RESAMPLE_OFFSET ((uint64_t)1 << 60)   /* the resampling's uniforms, after the draws */
#define VAE_DREAM_X_OFFSET ((uint64_t)1 << 40)   /* a dream's pixels are numbered after the codes */

static inline uint64_t vaec_stream_init(int tensor) { return (uint64_t)tensor * 4 + STREAM_INIT; }
static inline uint64_t vaec_stream_vae(uint64_t counter, int purpose) { return counter * 4 + (uint64_t)purpose; }
static inline uint64_t vaec_stream_m2(uint64_t counter, int purpose) { return counter * 8 + (uint64_t)purpose; }
static inline uint64_t vaec_stream_flow(uint64_t counter) { return counter * 4 + FLOW_STREAM_NOISE; }
static inline uint64_t vaec_stream_hmc(uint64_t counter, int purpose) {
    return HMC_STREAM_BASE + counter * 4 + (uint64_t)purpose;
}

#endif
