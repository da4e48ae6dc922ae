/*
 * vaec.h -- the one public header of the vaec C core.
 *
 * vaec trains variational autoencoders on the CPU. This library is plain C11 with
 * no Python in it; the CPython binding (vaec/_core.c) is one client of this header.
 *
 * Overview
 *   A model is networks of layers, a posterior, a likelihood and an objective:
 *   - A network (csrc/net.h) is an ordered list of layers; each layer kind is one file
 *     (layer_linear.c, layer_act.c, layer_label.c) with its output shape, its parameters,
 *     its workspace and a forward/backward pair, registered by one line in layers.c.
 *     Users describe networks by vaec_layer_spec lists (below); an MLP config (hidden +
 *     activation) is turned into such lists.
 *   - Models are opaque handles: vaec_vae here (also a plain autoencoder,
 *     config.deterministic), the semi-supervised M2 (m2.h) and the stand-alone flow
 *     (flows.h). A VAE is an encoder network (with the heads encoder.mu and
 *     encoder.logvar), optionally a normalizing flow on its posterior (flows.h: one table
 *     of operations per flow type), and a decoder network; its objectives are functions
 *     over them (vae_objectives.c: the ELBO, reparameterized or by the score function, the
 *     ELBO through a flow, the IWAE bound; vae_wake_sleep.c; vae_hmc.c: HMC on the decoder's
 *     posterior, Monte Carlo EM, the appendix-D log-likelihood estimator). M2 is three networks
 *     (classifier, encoder and decoder on [x, onehot(y)] and [z, onehot(y)]); Real NVP's s
 *     and t nets are networks too.
 *   - A model owns:
 *       * one parameter arena: every weight and bias in ONE contiguous float32 buffer,
 *         with gradients and the optimizer's state (Adam's two moments, or Adagrad's
 *         sums of squares) in buffers of the same layout, so
 *         the optimizer is one flat loop and a client can expose zero-copy views. The
 *         arena's tensor order (the rule, stated here once): tensors lie in the order the
 *         model plans them -- its networks and flow in the order the model names (the VAE:
 *         encoder layers, heads, flow, decoder layers; M2: classifier, encoder, decoder),
 *         each layer's weight then its bias (a multi-head layer: every head's weight, then
 *         every head's bias), each tensor starting on a 16-float boundary. The model file
 *         stores the buffers in that order, so it is part of the file format;
 *       * a table of named tensors (torch naming: "encoder.0.weight" is (out, in)) pointing
 *         into the arena, row-major except where a tensor says `transposed` (a VAE's first
 *         Linear on the data keeps W^T for the sparse path; model files hold every tensor
 *         row-major);
 *       * a workspace planned once per size (each network counts what it needs with no
 *         buffer and lays it out with one), so a warm training step does not allocate;
 *       * a thread pool (vaec_pool) and a counter-based RNG key (csrc/streams.h: which
 *         stream draws which noise).
 *   - Gradients: within a call, the first backward through a layer writes its gradients and
 *     later ones add (net.h states the protocol).
 *   - Inputs are described by vaec_input: float32 (used in place) or uint8 images
 *     (scaled by 1/255 inside, chunk by chunk, so data sets never need a float copy).
 *   - The pieces below any model (built and tested without one): vaec_sgemm (packed,
 *     register-tiled, ISA chosen at run time from CPUID; its packing buffers are per
 *     thread) under vaec_dense_*; vaec_act_* and the likelihoods on vectorized math
 *     (elem.h); vaec_rng_* (Philox); vaec_arena_* (parameters + Adam or Adagrad); vaec_file_* (one
 *     model-file format for every model kind, each kind with a versioned config record).
 *   - Every function returns a vaec_status; on failure vaec_last_error() gives a
 *     human-readable message (per thread).
 *   - Determinism: for a given seed, results are bitwise identical whatever the
 *     thread count (work is split by output tiles / rows, never by reduction order).
 *   - Subnormal floats are flushed to zero inside every job of the pool (FTZ/DAZ, FPCR.FZ);
 *     the caller's floating-point mode is restored after it. VAEC_DENORMALS=keep: IEEE.
 *
 * Naming: vaec_<noun>_<verb>. Shapes are written as (rows, cols), row-major.
 */
#ifndef VAEC_H
#define VAEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VAEC_VERSION_STRING "0.1.0"
#define VAEC_MAX_HIDDEN 8          /* hidden layers per network */
#define VAEC_NAME_LEN 48

typedef enum {
    VAEC_OK = 0,
    VAEC_ERR_ARG = 1,        /* invalid argument (message says which)   */
    VAEC_ERR_NOMEM = 2,      /* allocation failed or size overflow      */
    VAEC_ERR_IO = 3,         /* file could not be opened/read/written   */
    VAEC_ERR_FORMAT = 4,     /* file is corrupted, truncated or foreign */
    VAEC_ERR_NONFINITE = 5,  /* a NaN or Inf appeared                   */
    VAEC_ERR_NOTFOUND = 6,   /* file does not exist                     */
    VAEC_ERR_INTERRUPTED = 7 /* stopped by vaec_interrupt_request       */
} vaec_status;

/* Message describing the last error on this thread ("" if none). */
const char *vaec_last_error(void);
/* The errno behind the last VAEC_ERR_IO or VAEC_ERR_NOTFOUND on this thread (e.g. ENOSPC,
 * EACCES, EROFS), 0 after any other error. */
int vaec_last_errno(void);

/* ------------------------------------------------------------- interruption */
/* Long calls (a VAE's ELBO, IWAE bound / log-likelihood and loss over many rows or samples)
 * check between chunks of about a millisecond whether an interrupt was requested, when the
 * calling thread has armed itself; they then return VAEC_ERR_INTERRUPTED, leaving the model
 * as before the call (parameters, Adam state, RNG position; a loss call's gradients are
 * undefined). Arming clears a pending request. vaec_interrupt_request is async-signal-safe
 * (for a SIGINT handler) and may come from any thread; it stops every armed call. */
void vaec_interrupt_arm(int on);
void vaec_interrupt_request(void);
/* Whether this thread is armed and a request is pending. */
int vaec_interrupt_pending(void);

/* ---------------------------------------------------------------- CPU / ISA */
typedef enum { VAEC_ISA_NAIVE = 0, VAEC_ISA_SCALAR = 1, VAEC_ISA_NEON = 2,
               VAEC_ISA_AVX2 = 3, VAEC_ISA_AVX512 = 4 } vaec_isa;
/* The best ISA the CPU supports (CPUID / build target). */
vaec_isa vaec_cpu_best_isa(void);
/* The ISA the kernels use now: the best one, lowered by the environment variable
 * VAEC_ISA=avx512|avx2|neon|scalar|naive (never raised above what the CPU has). */
vaec_isa vaec_cpu_active_isa(void);
/* Force a kernel path (clamped to the best supported); returns the one now active. */
vaec_isa vaec_cpu_set_isa(vaec_isa isa);
const char *vaec_isa_name(vaec_isa isa);
/* Comma-separated CPU features detected, e.g. "sse2,avx,avx2,fma". */
const char *vaec_cpu_features(void);
/* Number of cores this process may run on (>= 1). */
int vaec_cpu_count(void);

/* ------------------------------------------------------------- sparse inputs */
/* A VAE's first encoder layer can skip the zeros of its input (MNIST-like data are mostly
 * zeros): AUTO (the default) does so for a chunk of at least 32 rows with at most 30 %
 * nonzeros, ALWAYS whenever the kernel path has the sparse kernels (not on the naive
 * path), OFF never. The results differ from the dense product only by the order of the
 * sums. The environment variable VAEC_SPARSE_INPUT=off|auto|always sets the start mode. */
typedef enum { VAEC_SPARSE_OFF = 0, VAEC_SPARSE_AUTO = 1, VAEC_SPARSE_ALWAYS = 2 } vaec_sparse;
vaec_sparse vaec_sparse_mode(void);
/* Sets the mode for every model of the process (an unknown value changes nothing);
 * returns the mode before. */
vaec_sparse vaec_sparse_mode_set(vaec_sparse mode);

/* --------------------------------------------------------------- thread pool */
typedef struct vaec_pool vaec_pool;
/* A persistent pool of nthreads-1 workers (the caller is the nthreads-th). */
vaec_status vaec_pool_create(vaec_pool **out, int nthreads);
void vaec_pool_destroy(vaec_pool *pool);
int vaec_pool_size(const vaec_pool *pool);
/* Run fn(ctx, task, tid) for task in [0, ntasks); returns when all are done.
 * tid in [0, size) names the thread running it (0 is the caller), e.g. to pick a
 * per-thread scratch buffer. pool may be NULL (runs serially, tid 0).
 * Tasks must write disjoint outputs. */
typedef void (*vaec_task_fn)(void *ctx, int64_t task, int tid);
void vaec_pool_run(vaec_pool *pool, vaec_task_fn fn, void *ctx, int64_t ntasks);
/* Measured round trip of one cache line between the caller's thread and a worker of the
 * pool, in nanoseconds: the mean over `rounds` exchanges (after as many again to warm up).
 * It says whether the two CPUs share a cache level (tens of ns) or not (hundreds), which
 * decides how fast threads that hand data to each other can be (docs/PERFORMANCE.md).
 * -1 when the pool has one thread or no worker took part within 50 ms; the exchanges stop
 * after a second (two threads sharing one CPU): the mean over those timed, -1 if none. */
double vaec_pool_roundtrip_ns(vaec_pool *pool, int64_t rounds);

/* ---------------------------------------------------------------------- GEMM */
/* C(M,N) = beta*C + op(A)(M,K) . op(B)(K,N), row-major, beta in {0, 1}.
 * op(A) = A (lda >= K) or A^T when transA (A is (K,M), lda >= M); likewise B.
 * Packed, register-tiled, dispatched to the active ISA, split over the pool. */
void vaec_sgemm(vaec_pool *pool, int transA, int transB, int64_t M, int64_t N, int64_t K,
                const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc);
/* Measured peak FP32 FMA throughput of the active ISA in GFLOP/s, on `threads` threads of
 * the pool (NULL: one), from a register-resident FMA loop run for about `seconds`. */
double vaec_cpu_peak_gflops(vaec_pool *pool, double seconds);
/* The plain triple loop (float64 accumulation): reference and fallback. */
void vaec_sgemm_naive(int transA, int transB, int64_t M, int64_t N, int64_t K,
                      const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc);

/* --------------------------------------------------------------- activations */
typedef enum { VAEC_ACT_IDENTITY = 0, VAEC_ACT_TANH, VAEC_ACT_RELU, VAEC_ACT_SOFTPLUS,
               VAEC_ACT_SIGMOID, VAEC_ACT_ELU, VAEC_ACT_LEAKY_RELU, VAEC_ACT_COUNT } vaec_act;
const char *vaec_act_name(vaec_act act);
/* Vectorized on the active ISA (within 3 ULP of float64 libm over the whole float range,
 * NaN and infinities handled); the naive path is the plain libm loop. */
/* y = act(x), n elements (x may equal y). */
void vaec_act_forward(vaec_act act, float *y, const float *x, int64_t n);
/* d *= act'(.) written in terms of the OUTPUT y (every activation here allows it). */
void vaec_act_backward(vaec_act act, float *d, const float *y, int64_t n);

/* -------------------------------------------------------------- dense layers */
/* out(B,OUT) = in(B,IN) . W(OUT,IN)^T + b(OUT) */
void vaec_dense_forward(vaec_pool *pool, float *out, const float *in, const float *W,
                        const float *b, int64_t B, int64_t IN, int64_t OUT);
/* Adds: dW(OUT,IN) += dout^T . in, db(OUT) += colsum(dout); writes din(B,IN) = dout . W
 * when din != NULL. */
void vaec_dense_backward(vaec_pool *pool, float *din, float *dW, float *db, const float *dout,
                         const float *in, const float *W, int64_t B, int64_t IN, int64_t OUT);

/* ----------------------------------------------------------------------- RNG */
/* Counter-based (Philox4x32-10): the k-th number of stream `stream` under `seed`
 * depends only on (seed, stream, k), so any split of the work gives the same numbers. */
void vaec_rng_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);
void vaec_rng_uniform(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);

/* -------------------------------------------------------------------- inputs */
typedef enum { VAEC_F32 = 0, VAEC_U8 = 1 } vaec_dtype;
typedef struct {
    const void *data;   /* (n, dim) row-major, contiguous */
    vaec_dtype dtype;   /* float32 used as is; uint8 scaled by 1/255 */
    int64_t n;
    int64_t dim;
    int binarize;       /* 1: each pixel resampled as Bernoulli(value) (dynamic binarization) */
} vaec_input;
/* Index of the first non-finite or out-of-[lo,hi] float, or -1 if all are fine. */
int64_t vaec_check_range(const float *x, int64_t n, float lo, float hi, int check_range);

/* ------------------------------------------------------------ parameter arena */
/* Every model keeps all its parameters in ONE contiguous float32 buffer, with gradients
 * and the optimizer's state (Adam's two moments, or Adagrad's sums of squares in adam_v)
 * in buffers of the same layout: the optimizer is one flat loop and clients get zero-copy
 * views. Tensors are planned first (vaec_arena_add_*), then vaec_arena_alloc allocates
 * and initializes them. */
#define VAEC_MAX_TENSORS 512   /* a VAE with planar:128 needs about 400 */

typedef struct {
    char name[VAEC_NAME_LEN];
    int64_t offset;    /* in floats from the start of the arena */
    int ndim;          /* 1 to 4 (a convolution's weight is 4-D) */
    int64_t shape[4];
    float init_bound;  /* initialized ~ U(-bound, bound); 0 gives zeros */
    int transposed;    /* 2-D kept transposed: element (i, j) at offset + j * shape[0] + i,
                          the (shape[1], shape[0]) array row-major (a column-major view) */
} vaec_tensor_info;

typedef struct {
    float beta1, beta2, eps;   /* torch defaults 0.9, 0.999, 1e-8; eps is Adagrad's too */
} vaec_adam_config;

/* The optimizer of an arena's steps (the model file keeps which one its state is for). */
typedef enum {
    VAEC_OPT_ADAM = 0,      /* bias-corrected Adam, torch's form: adam_m, adam_v the moments */
    VAEC_OPT_ADAGRAD = 1    /* Adagrad (Duchi et al. 2011), torch's form without lr decay:
                               s += g^2 (s in adam_v; adam_m unused, zero), p -= lr g / (sqrt(s) + eps) */
} vaec_optimizer;

typedef struct {
    int64_t n;                          /* floats in each buffer (groups padded to 16) */
    float *params, *grads, *adam_m, *adam_v;
    vaec_tensor_info tensors[VAEC_MAX_TENSORS];
    int ntensors;
    vaec_adam_config adam;
    int64_t step;                       /* optimizer steps taken */
    vaec_optimizer optimizer;           /* the rule of the steps (VAEC_OPT_ADAM unless set) */
    float weight_decay;                 /* >= 0: each step uses grad + weight_decay * param (torch's
                                           L2 weight_decay, for both optimizers); 0 unless set. A
                                           training option: the model file does not keep it */
} vaec_arena;

/* A dense layer's place in the arena: W (out, in) at offset W, b (out) at offset b; with
 * wt, W is kept transposed, as W^T (in, out) row-major (its tensor says `transposed`). */
typedef struct {
    int64_t W, b;
    int64_t in, out;
    int wt;
} vaec_linear;

/* Plan a dense layer with `heads` output heads of `out` rows each (named names[h]): the
 * weights of all heads are stacked, then the biases, so the heads cost one GEMM of
 * heads*out rows. Initialized like torch.nn.Linear: U(+-1/sqrt(in)). */
vaec_status vaec_arena_add_linear(vaec_arena *a, vaec_linear *out, const char *const *names, int heads,
                                  int64_t in, int64_t out_rows);
/* The same with one more head after them, names[heads], of `extra_rows` rows (0: none),
 * e.g. an amortized flow's parameters beside [mu | logvar]. */
vaec_status vaec_arena_add_linear_ex(vaec_arena *a, vaec_linear *out, const char *const *names, int heads,
                                     int64_t in, int64_t out_rows, int64_t extra_rows);
/* The same for one head kept as W^T (in, out): the layout a layer reading sparse inputs
 * wants (its forward sums rows of W^T, its weight gradient writes them); the tensor's
 * shape is still (out, in), as a client sees it through a column-major view. */
vaec_status vaec_arena_add_linear_wt(vaec_arena *a, vaec_linear *out, const char *name, int64_t in,
                                     int64_t out_rows);
/* Plan one free tensor (1-D: d1 = 0); returns its offset through *offset. */
vaec_status vaec_arena_add_tensor(vaec_arena *a, int64_t *offset, const char *name, int ndim,
                                  int64_t d0, int64_t d1, float init_bound);
/* The same for a tensor of 1 to 4 dimensions (shape[0..ndim)). */
vaec_status vaec_arena_add_tensor_nd(vaec_arena *a, int64_t *offset, const char *name, int ndim,
                                     const int64_t *shape, float init_bound);
/* Allocate the four buffers and initialize the parameters from `seed`. */
vaec_status vaec_arena_alloc(vaec_arena *a, uint64_t seed);
/* Draw every tensor that vaec_arena_alloc initializes at random (init_bound != 0) again,
 * from N(0, std^2) (Kingma & Welling's N(0, 0.01) with std = 0.01): element k of tensor t
 * is the k-th normal of t's init stream under `seed` (streams.h). std must be > 0 and
 * finite. Zero-initialized tensors stay zero; the gradients are zeroed (a model calls it
 * right after creation), the optimizer's state is untouched. */
vaec_status vaec_arena_init_normal(vaec_arena *a, uint64_t seed, float std);
void vaec_arena_free(vaec_arena *a);
void vaec_arena_zero_grads(vaec_arena *a);
/* One step of the arena's optimizer (Adam unless vaec_arena_optimizer_set chose Adagrad)
 * over the flat buffers; refuses non-finite grads (VAEC_ERR_NONFINITE, nothing changed). */
vaec_status vaec_arena_step(vaec_arena *a, vaec_pool *pool, float lr);
/* The same on the floats [lo, hi) only (0 <= lo <= hi <= n): a model training some of its
 * tensors (MCEM trains the decoder alone); the step count advances as for a whole step. */
vaec_status vaec_arena_step_range(vaec_arena *a, vaec_pool *pool, float lr, int64_t lo, int64_t hi);
/* vaec_arena_step's name from before Adagrad (it takes the arena's optimizer too). */
vaec_status vaec_arena_adam_step(vaec_arena *a, vaec_pool *pool, float lr);
vaec_status vaec_arena_adam_set(vaec_arena *a, vaec_adam_config cfg);
/* The optimizer of the next steps and the weight decay (finite, >= 0). Only sets them: a
 * caller switching optimizers resets the state first (vaec_arena_adam_reset). */
vaec_status vaec_arena_optimizer_set(vaec_arena *a, vaec_optimizer optimizer, float weight_decay);
/* Zeroes the optimizer's state (both buffers) and the step count. */
void vaec_arena_adam_reset(vaec_arena *a);
/* Index of the tensor called name, or -1. */
int vaec_arena_find(const vaec_arena *a, const char *name);
/* Whether any tensor is kept transposed; and every such tensor copied from src to dst
 * (arena-sized buffers, src != dst) into row-major order, or back from it. */
int vaec_arena_has_transposed(const vaec_arena *a);
void vaec_arena_to_rowmajor(const vaec_arena *a, const float *src, float *dst);
void vaec_arena_from_rowmajor(const vaec_arena *a, const float *src, float *dst);

/* --------------------------------------------------------------- model files */
/* One format for every model: magic "\x89VAEC\r\n\x1a", format version, endian marker,
 * model kind, the kind's config blob, the arena (parameters, the optimizer's state and which
 * optimizer it is for), the RNG state, and a CRC-32 of all that (docs/FORMAT.md). Written to
 * a temporary file of its own ("<path>.tmp-<pid>-<n>"), fsynced, renamed over path, the
 * folder fsynced; a failed write leaves path as it was and no temporary file
 * (vaec_last_errno says why). */
enum { VAEC_KIND_VAE = 1, VAEC_KIND_M2 = 2, VAEC_KIND_FLOW = 3, VAEC_KIND_AE = 4 };
vaec_status vaec_file_write(const char *path, uint32_t kind, const void *config, uint32_t config_len,
                            const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter);
/* The same with an opaque `extra` record stored after the arena (e.g. a trainer's state). */
vaec_status vaec_file_write_ex(const char *path, uint32_t kind, const void *config, uint32_t config_len,
                               const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter,
                               const void *extra, uint32_t extra_len);
/* A file read and verified (size, magic, version, checksum) but not yet applied. */
typedef struct {
    uint32_t kind;
    const void *config;
    uint32_t config_len;
    int64_t nparams;
    vaec_adam_config adam;
    int64_t step;
    uint64_t rng_seed, rng_counter;
    const float *params, *adam_m, *adam_v;
    const void *extra;     /* the extra record (extra_len bytes, maybe 0) */
    uint32_t extra_len;
    void *buffer;     /* owns the bytes above */
    char path[256];
    vaec_optimizer optimizer;   /* what adam_m / adam_v hold (VAEC_OPT_ADAM in files of 0.1.0) */
} vaec_file;
vaec_status vaec_file_read(vaec_file *f, const char *path);
/* The model kind from the file's fixed head only (magic, version, byte order checked; the
 * checksum is left to vaec_file_read, which the loader of that kind then calls). */
vaec_status vaec_file_kind(const char *path, uint32_t *kind);
/* With extra != NULL: *extra = a malloc'ed copy of the file's extra record (NULL when it is
 * empty; free with free()) and *extra_len its length. */
vaec_status vaec_file_extra_copy(const vaec_file *f, void **extra, uint32_t *extra_len);
/* Copy the file's arena into `a` (same parameter count, else VAEC_ERR_FORMAT). */
vaec_status vaec_file_apply(const vaec_file *f, vaec_arena *a);
void vaec_file_close(vaec_file *f);

/* -------------------------------------------------------------------- layers */
/* A network is an ordered list of layers (csrc/net.h). A layer spec is what a user writes
 * (Python: vaec.layers); the shapes follow from the input's. Tensors are NCHW; a Linear
 * layer sees a (C, H, W) input as its C*H*W features, in that order (as torch's Flatten). */
typedef enum {
    VAEC_LAYER_LINEAR = 1,      /* out features; act: an activation fused into it */
    VAEC_LAYER_ACT = 2,         /* act */
    VAEC_LAYER_CONV2D = 3,      /* the spatial kinds: the convolutional issue adds them */
    VAEC_LAYER_CONVT2D = 4,
    VAEC_LAYER_MAXPOOL2D = 5,
    VAEC_LAYER_AVGPOOL2D = 6,
    VAEC_LAYER_UPSAMPLE = 7,
    VAEC_LAYER_FLATTEN = 8,
    VAEC_LAYER_UNFLATTEN = 9,
    VAEC_LAYER_LABEL_LINEAR = 64, /* internal: M2's Linear on [x, onehot(y)] (out, classes) */
    VAEC_LAYER_TO_NCHW = 65       /* internal: channels last to channels first (net.h) */
} vaec_layer_kind;
#define VAEC_MAX_LAYERS 32          /* layers in a network given as a list */
typedef struct {
    int32_t kind;               /* vaec_layer_kind */
    int32_t act;                /* ACT: the activation; LINEAR: one applied to its output */
    int64_t out;                /* LINEAR: output features; CONV2D, CONVT2D: output channels */
    int32_t kernel[2], stride[2], padding[2], output_padding[2];   /* (h, w) */
    int32_t scale;              /* UPSAMPLE: the factor; MAXPOOL2D, AVGPOOL2D use kernel/stride */
    float slope;                /* ACT leaky_relu: its negative slope (0: torch's 0.01) */
    int64_t shape[3];           /* UNFLATTEN: (C, H, W) */
    int64_t classes;            /* LABEL_LINEAR: the label columns after the input's */
} vaec_layer_spec;

/* ---------------------------------------------------------------------- VAE */
typedef enum { VAEC_LIK_BERNOULLI = 0, VAEC_LIK_GAUSSIAN = 1 } vaec_likelihood;

typedef struct {
    int64_t input_dim;
    int64_t latent_dim;
    int n_hidden;
    int64_t hidden[VAEC_MAX_HIDDEN];   /* encoder widths; the decoder mirrors them */
    vaec_act activation;
    vaec_likelihood likelihood;
    uint64_t seed;                     /* initialization and default noise */
    int threads;                       /* <= 0: vaec_cpu_count() */
    char flow[48];                     /* "" or a flow spec for the posterior: z_K = f_K o ... o
                                          f_1(z_0), z_0 ~ q0(z|x); "planar:K", "radial:K",
                                          "realnvp:K[:WIDTH[:tanh|relu[:learned|SCALE]]]", or
                                          "planar:K:amortized": u, w, b per example from a
                                          third encoder head, "encoder.flow" (K (2 latent + 1)) */
    int deterministic;                 /* 1: a plain autoencoder on the same layers: code z =
                                          mu(x) (one encoder head, no noise, no KL, no flow);
                                          loss -log p(x|z) for Bernoulli, the squared error
                                          sum_d (x_d - mean_d)^2 for Gaussian (one decoder
                                          head); saved as VAEC_KIND_AE */
    /* The networks as layer lists instead of hidden/activation (layers = 1): the encoder maps
     * an example of input_shape to features, to which the model adds the Linear heads
     * encoder.mu and encoder.logvar (encoder.code for an autoencoder); the decoder maps z to
     * the likelihood's parameters in the example's shape (Bernoulli: logits; Gaussian: 2C
     * channels, the means, then the log-variances). With layers = 0 (an MLP), create()
     * fills these from hidden/activation: encoder.i = Linear(hidden[i]) + activation, the
     * heads, decoder.i = Linear(hidden[nh-1-i]) + activation, then the output heads
     * decoder.out (and decoder.logvar). New fields go last: a struct from an older build
     * keeps its offsets. */
    int layers;
    int n_enc, n_dec;
    vaec_layer_spec enc[VAEC_MAX_LAYERS], dec[VAEC_MAX_LAYERS];
    int64_t input_shape[3];            /* (C, H, W); (input_dim, 1, 1) for flat rows */
} vaec_vae_config;

typedef struct vaec_vae vaec_vae;

vaec_status vaec_vae_create(vaec_vae **out, const vaec_vae_config *cfg);
void vaec_vae_destroy(vaec_vae *m);
const vaec_vae_config *vaec_vae_config_get(const vaec_vae *m);
int vaec_vae_threads(const vaec_vae *m);

/* The model's parameter arena (parameters, gradients, optimizer state). */
vaec_arena *vaec_vae_arena(vaec_vae *m);
/* One step of the arena's optimizer (Adam or Adagrad) with the current gradients. */
vaec_status vaec_vae_adam_step(vaec_vae *m, float lr);

uint64_t vaec_vae_rng_counter(const vaec_vae *m);
void vaec_vae_rng_set(vaec_vae *m, uint64_t seed, uint64_t counter);
uint64_t vaec_vae_rng_seed(const vaec_vae *m);

/* Noise source for a call: explicit eps (L, n, latent) float32, or the counter-based
 * RNG under `seed` (use_seed=1) or the model's own key and call counter (use_seed=0;
 * the counter then advances by one).
 * A share of a batch (data-parallel training: each process computes some rows of one
 * global batch): with n_total > 0 the call's n rows are rows [row_offset, row_offset + n)
 * of a batch of n_total rows. They draw the noise and binarization of those rows of that
 * batch (streams.h), and the loss and gradients are this share's part of the batch mean:
 * sums over the call's rows divided by n_total, so the shares' losses and gradients add
 * up to the whole batch's. An empty share (n = 0) is allowed: zero loss, zero gradients,
 * and the call counter still advances. Only with the RNG (eps NULL); not with free bits
 * (a statistic of the whole chunk) nor wake-sleep. 0, 0 (a zeroed struct): the call is
 * the whole batch. These fields come last so that a struct of an older build keeps its
 * offsets. */
typedef struct {
    const float *eps;  /* NULL: draw from the RNG */
    int samples;       /* L >= 1 */
    int use_seed;
    uint64_t seed;
    int64_t row_offset;   /* the call's first row within the whole batch (needs n_total) */
    int64_t n_total;      /* rows of the whole batch; 0: the call is the whole batch */
} vaec_noise;

/* The training objective; NULL means the plain ELBO. */
typedef struct {
    int iw;           /* 0: the ELBO with analytic KL; k >= 1: the k-sample IWAE bound
                         (Burda et al. 2016), k = noise->samples */
    float beta;       /* weight of the KL term (ELBO only); 1 gives the ELBO */
    float free_bits;  /* ELBO only: each latent dimension's KL, averaged over the batch
                         (over each 256-row chunk of larger batches), counts at least this
                         many nats and passes no gradient below it (Kingma et al. 2016) */
    int estimator;    /* ELBO only, no flow: VAEC_EST_REPARAM, or VAEC_EST_SCORE: the
                         encoder's gradient of E_q[log p(x|z)] by the score function,
                         (log p(x|z) - baseline) * grad log q(z|x) at z ~ q (REINFORCE);
                         the KL's gradient stays analytic, the decoder's is unchanged */
    float baseline;   /* VAEC_EST_SCORE: subtracted from log p(x|z) (it must not depend
                         on this call's noise to keep the estimator unbiased) */
} vaec_objective;
enum { VAEC_EST_REPARAM = 0, VAEC_EST_SCORE = 1 };

/* Mean over the batch of the negative objective; gradients of it are written (not added)
 * to the arena's grads. */
vaec_status vaec_vae_loss_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                               const vaec_objective *obj, double *loss);
/* loss_grad followed by one step of the arena's optimizer (Adam unless set to Adagrad)
 * with learning rate lr. */
vaec_status vaec_vae_train_step(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                                const vaec_objective *obj, float lr, double *loss);
/* Mean over the batch of (1/L) sum_l log p(x|z_l) in the last ELBO loss_grad / train_step /
 * wake-sleep call (e.g. for a running-mean baseline of the score-function estimator); 0
 * after an IWAE call. */
double vaec_vae_last_rec(const vaec_vae *m);
/* Wake-sleep (Hinton et al. 1995) on the same networks; gradients written to grads.
 * Wake: the decoder's gradient of -log p(x|z), z ~ q(z|x), on the batch x (its loss, the
 * batch's mean -ELBO, into *wake_loss). Sleep: `dreams` pairs z ~ N(0, I), x ~ p(x|z)
 * drawn from the model, and the encoder's gradient of -log q(z|x) on them (mean into
 * *sleep_loss). Not for flows or autoencoders. */
vaec_status vaec_vae_wake_sleep_grad(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, int64_t dreams,
                                     double *wake_loss, double *sleep_loss);
/* Per-example k-sample importance-weighted bound log (1/k) sum_l p(x,z_l)/q(z_l|x),
 * k = noise->samples, out (n,) float64. Streams the samples through a float64
 * log-sum-exp: memory does not grow with k. With large k, an estimate of log p(x). */
vaec_status vaec_vae_iwae(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *out);
/* Per-example ELBO averaged over the L samples, out (n,) float64. */
vaec_status vaec_vae_elbo(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, double *out);
/* mu, logvar (n, latent). */
vaec_status vaec_vae_encode(vaec_vae *m, const vaec_input *x, float *mu, float *logvar);
/* One code per row: mu(x), carried through the posterior's flow when there is one (an
 * amortized flow with x's own parameters): zk (n, latent), the decoder's input space. */
vaec_status vaec_vae_code(vaec_vae *m, const vaec_input *x, float *zk);
/* The posterior's flow on given codes: z (n, latent) -> zk (n, latent) = f_K o ... o f_1(z)
 * and logdet (n,) = log|det dzk/dz| (may be NULL); the identity (logdet 0) without a flow.
 * VAEC_ERR_ARG for an amortized flow, whose parameters depend on x. */
vaec_status vaec_vae_flow_forward(vaec_vae *m, const float *z, int64_t n, float *zk, double *logdet);
/* z (n, latent) -> out (n, input_dim): Bernoulli probabilities or Gaussian means. */
vaec_status vaec_vae_decode(vaec_vae *m, const float *z, int64_t n, float *out);

/* ------------------------------------------------ HMC on the decoder's posterior */
/* Hamiltonian Monte Carlo on p(z|x), proportional to N(z; 0, I) p(x|z), the decoder's posterior (z is the
 * decoder's input; the encoder is not used unless a chain starts at its mean), one chain
 * per example: each transition draws a momentum p ~ N(0, I), takes `leapfrog` steps along
 * the gradient of U(z) = -log p(z) - log p(x|z) (the decoder's backward to its input) and
 * accepts the end point by the Metropolis rule. Each chain has its own step size, adapted
 * after each transition while it adapts, log eps += 0.1 (a - target_accept) with a the
 * transition's acceptance probability. Random numbers are the HMC streams of streams.h
 * (call, transition, example), so results do not depend on the thread count. The calls
 * below other than vaec_vae_mcem_step leave the model's gradients as they were. Not for an
 * autoencoder (no prior). noise: its seed (use_seed) or the model's stream; `samples`
 * where a call says; eps must be NULL. */
typedef struct {
    int leapfrog;            /* >= 1 leapfrog steps per transition */
    float target_accept;     /* in (0, 1) */
    float step_size;         /* > 0: the chains' first step size (where the caller gives none) */
    int64_t burn_in;         /* >= 0 transitions (the step size adapting) before the first kept state */
    int init;                /* where the chains start: VAEC_HMC_INIT_* */
    int init_draws;          /* VAEC_HMC_INIT_PRIOR: the start is one of this many (<= 1: one) draws
                                from the prior, chosen with probability proportional to p(x|z)
                                (sampling-importance-resampling): a chain from a single prior
                                draw can settle in a mode of little mass and stay there */
} vaec_hmc_config;
enum {
    VAEC_HMC_INIT_PRIOR = 0,    /* z ~ N(0, I) (resampled: init_draws) */
    VAEC_HMC_INIT_ENCODER = 1,  /* the encoder's mean (through the flow, with one) */
    VAEC_HMC_INIT_GIVEN = 2     /* the caller's points */
};
/* noise->samples = L states of each chain after burn_in transitions, one a transition, the
 * step size fixed after the burn-in: out (L, n, latent). z0 (n, latent): the starting
 * points for VAEC_HMC_INIT_GIVEN (else unused, may be NULL). accept (n): each chain's mean
 * acceptance probability over the kept transitions; step (n): its step size; either NULL. */
vaec_status vaec_vae_hmc_sample(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, const vaec_hmc_config *cfg,
                                const float *z0, float *out, float *accept, float *step);
/* The marginal-likelihood estimator of Kingma & Welling (2014), appendix D, per example
 * into out (n,) float64: after burn_in transitions, L = noise->samples (>= 2) states fit a
 * full-covariance Gaussian q(z) (their mean and covariance, 1e-6 of the mean variance added
 * to the diagonal), then L further states z_l of the same chain give
 *   log p(x) ~= -log (1/L) sum_l q(z_l) / (p(z_l) p(x|z_l))
 * (E_{p(z|x)}[q(z) / p(x, z)] = 1 / p(x)), a float64 log-sum-exp. accept (n) as above, over
 * the 2L kept transitions (may be NULL). Chains start as cfg->init says (not GIVEN). */
vaec_status vaec_vae_hmc_log_likelihood(vaec_vae *m, const vaec_input *x, const vaec_noise *noise,
                                        const vaec_hmc_config *cfg, double *out, float *accept);
/* One step of Monte Carlo EM (Kingma & Welling 2014, section 5) on the batch x: the chains
 * z (n, latent), the examples' persistent states, take one transition from where they are
 * with step sizes step (n), both updated in place (the step sizes adapted toward
 * cfg->target_accept; cfg->init and burn_in are not used), then `updates` (>= 1) steps of
 * the arena's optimizer on the decoder's parameters alone, each on the gradient of the batch
 * mean of -log p(x|z) at the new states (written to grads; the encoder's are zero). *loss:
 * the batch mean of -log p(x, z) = U(z) at those states before the updates; *accept: the
 * mean acceptance probability (either may be NULL). */
vaec_status vaec_vae_mcem_step(vaec_vae *m, const vaec_input *x, const vaec_noise *noise, const vaec_hmc_config *cfg,
                               float *z, float *step, int updates, float lr, double *loss, double *accept);
/* The pieces, for tests: U(z) = -log N(z; 0, I) - log p(x|z) (n,) float64 and its gradient
 * grad (n, latent) at z (n, latent); and `steps` leapfrog steps of sizes step (n) from
 * (z, p) (n, latent), both updated in place (no Metropolis rule; reversible: from the end
 * with p negated they come back). x has n rows (binarized under the model's stream when
 * x->binarize). */
vaec_status vaec_vae_hmc_potential(vaec_vae *m, const vaec_input *x, const float *z, double *U, float *grad);
vaec_status vaec_vae_hmc_leapfrog(vaec_vae *m, const vaec_input *x, float *z, float *p, const float *step, int steps);

/* Model file (see vaec_file_write): config, parameters, optimizer and RNG state, an
 * optional extra record, checksum; written atomically. */
vaec_status vaec_vae_save(const vaec_vae *m, const char *path, const void *extra, uint32_t extra_len);
/* threads <= 0: default. When extra is given, *extra receives a malloc'ed copy of the
 * file's extra record (free with free()) and *extra_len its length. */
vaec_status vaec_vae_load(vaec_vae **out, const char *path, int threads, void **extra, uint32_t *extra_len);

#ifdef __cplusplus
}
#endif
#endif /* VAEC_H */
