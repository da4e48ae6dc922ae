/* model_check.c -- the models built from the C core alone (no Python):
 *   - a VAE trains (the loss after 30 Adam steps is well below the first), and so does a
 *     convolutional one (conv, conv, linear; linear, linear, transposed conv x 2);
 *   - a VAE whose networks are given as layer lists, Linear then an activation layer, is
 *     the MLP of the same widths bit for bit (the activations fuse into the Linear layers;
 *     only the tensors' names differ: they follow the list's positions);
 *   - the gradient of a list with activation layers that run alone (one after another,
 *     one first) matches central finite differences of the loss;
 *   - HMC on a linear-Gaussian model (no hidden layer, Gaussian decoder of constant
 *     variance) draws from its exact posterior (mean and variances within Monte Carlo
 *     error), the same bits on 1 and 2 threads, and MCEM steps lower -log p(x, z).
 * Prints "model_check: N passed, M failed" and exits non-zero on failure. */
#include "vaec.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;
static void check(int ok, const char *what) {
    printf("  %-64s %s\n", what, ok ? "ok" : "FAILED");
    if (ok) passed++; else failed++;
}

static float *digits(int n, int D) {
    float *x = malloc(sizeof(float) * n * D);
    unsigned s = 7;
    for (int i = 0; i < n * D; i++) { s = s * 1664525u + 1013904223u; x[i] = (s >> 24) < 40 ? 1.0f : 0.0f; }
    return x;
}

static void vae_trains(void) {
    vaec_vae_config c = {0};
    c.input_dim = 64; c.latent_dim = 4; c.n_hidden = 1; c.hidden[0] = 32;
    c.activation = VAEC_ACT_TANH; c.likelihood = VAEC_LIK_BERNOULLI; c.seed = 1; c.threads = 2;
    vaec_vae *m = NULL;
    float *x = malloc(sizeof(float) * 128 * 64);
    for (int i = 0; i < 128 * 64; i++) x[i] = (i % 64) < 32 ? 1.0f : 0.0f;
    vaec_input in = {x, VAEC_F32, 128, 64, 0};
    double first = 0, last = 0;
    if (vaec_vae_create(&m, &c) == VAEC_OK) {
        for (int step = 0; step < 30; step++) vaec_vae_train_step(m, &in, NULL, NULL, 1e-2f, step ? &last : &first);
        vaec_vae_destroy(m);
    }
    check(last < first - 10, "a VAE trains");
    free(x);
}

static vaec_layer_spec linear(int64_t out) { vaec_layer_spec s = {0}; s.kind = VAEC_LAYER_LINEAR; s.out = out; return s; }
static vaec_layer_spec act(vaec_act a) { vaec_layer_spec s = {0}; s.kind = VAEC_LAYER_ACT; s.act = a; return s; }

static void list_is_mlp(void) {
    enum { D = 300, Z = 6, N = 600 };   /* 600 rows: two chunks; the first layer sparse */
    vaec_vae_config a = {0};
    a.input_dim = D; a.latent_dim = Z; a.n_hidden = 2; a.hidden[0] = 40; a.hidden[1] = 24;
    a.activation = VAEC_ACT_SOFTPLUS; a.likelihood = VAEC_LIK_BERNOULLI; a.seed = 5; a.threads = 2;
    vaec_vae_config b = a;
    b.layers = 1;
    b.input_shape[0] = D; b.input_shape[1] = b.input_shape[2] = 1;
    b.n_enc = 4;
    b.enc[0] = linear(40); b.enc[1] = act(VAEC_ACT_SOFTPLUS); b.enc[2] = linear(24); b.enc[3] = act(VAEC_ACT_SOFTPLUS);
    b.n_dec = 5;
    b.dec[0] = linear(24); b.dec[1] = act(VAEC_ACT_SOFTPLUS); b.dec[2] = linear(40); b.dec[3] = act(VAEC_ACT_SOFTPLUS);
    b.dec[4] = linear(D);
    vaec_vae *ma = NULL, *mb = NULL;
    int ok = vaec_vae_create(&ma, &a) == VAEC_OK && vaec_vae_create(&mb, &b) == VAEC_OK;
    float *x = digits(N, D);
    vaec_input in = {x, VAEC_F32, N, D, 0};
    vaec_noise noise = {NULL, 2, 1, 3};
    for (int step = 0; ok && step < 3; step++) {
        double la, lb;
        ok = vaec_vae_train_step(ma, &in, &noise, NULL, 1e-2f, &la) == VAEC_OK &&
             vaec_vae_train_step(mb, &in, &noise, NULL, 1e-2f, &lb) == VAEC_OK && la == lb;
    }
    if (ok) {
        vaec_arena *pa = vaec_vae_arena(ma), *pb = vaec_vae_arena(mb);
        ok = pa->n == pb->n && memcmp(pa->params, pb->params, sizeof(float) * pa->n) == 0 &&
             vaec_arena_find(pb, "encoder.2.weight") >= 0 && vaec_arena_find(pb, "decoder.4.bias") >= 0;
    }
    check(ok, "layer lists of Linear + activation are the MLP, bit for bit");
    vaec_vae_destroy(ma);
    vaec_vae_destroy(mb);
    free(x);
}

static void standalone_activations(void) {
    enum { D = 20, Z = 3, N = 7 };
    vaec_vae_config c = {0};
    c.input_dim = D; c.latent_dim = Z; c.likelihood = VAEC_LIK_BERNOULLI; c.seed = 9; c.threads = 1;
    c.layers = 1;
    c.input_shape[0] = D; c.input_shape[1] = c.input_shape[2] = 1;
    c.n_enc = 5;   /* sigmoid first and elu after tanh run alone */
    c.enc[0] = act(VAEC_ACT_SIGMOID); c.enc[1] = linear(12); c.enc[2] = act(VAEC_ACT_TANH);
    c.enc[3] = act(VAEC_ACT_ELU); c.enc[4] = linear(9);
    c.n_dec = 4;
    c.dec[0] = linear(11); c.dec[1] = act(VAEC_ACT_LEAKY_RELU); c.dec[2] = act(VAEC_ACT_SOFTPLUS); c.dec[3] = linear(D);
    vaec_vae *m = NULL;
    if (vaec_vae_create(&m, &c) != VAEC_OK) {
        check(0, vaec_last_error());
        return;
    }
    float *x = digits(N, D), eps[N * Z];
    unsigned s = 3;
    for (int i = 0; i < N * Z; i++) { s = s * 1664525u + 1013904223u; eps[i] = (float)(s >> 8) / 16777216.0f - 0.5f; }
    vaec_input in = {x, VAEC_F32, N, D, 0};
    vaec_noise noise = {eps, 1, 0, 0};
    vaec_arena *a = vaec_vae_arena(m);
    double loss;
    vaec_vae_loss_grad(m, &in, &noise, NULL, &loss);
    float *g = malloc(sizeof(float) * a->n);
    memcpy(g, a->grads, sizeof(float) * a->n);
    double worst = 0.0;
    for (int t = 0; t < a->ntensors; t++) {
        const vaec_tensor_info *ti = &a->tensors[t];
        for (int64_t i = 0; i < 3; i++) {   /* three entries of every tensor */
            int64_t at = ti->offset + i;
            float keep = a->params[at];
            const float h = 1e-2f;
            double lp, lm;
            a->params[at] = keep + h;
            vaec_vae_loss_grad(m, &in, &noise, NULL, &lp);
            a->params[at] = keep - h;
            vaec_vae_loss_grad(m, &in, &noise, NULL, &lm);
            a->params[at] = keep;
            /* float32 activations make the loss's noise about 1e-6 nats: 2e-3 on these differences */
            double fd = (lp - lm) / (2.0 * h), err = fabs(fd - g[at]) / (2e-3 + 2e-2 * fabs(fd));
            if (err > worst) worst = err;
            if (getenv("FD_DEBUG") && err > 0.5) printf("    %s[%lld]: fd %.6f grad %.6f\n", ti->name, (long long)i, fd, g[at]);
        }
    }
    char what[96];
    snprintf(what, sizeof what, "activation layers alone: gradient vs finite differences (%.2f)", worst);
    check(worst < 1.0, what);
    free(g);
    free(x);
    vaec_vae_destroy(m);
}

static vaec_layer_spec conv(int transposed, int64_t out, int k, int s, int p) {
    vaec_layer_spec l = {0};
    l.kind = transposed ? VAEC_LAYER_CONVT2D : VAEC_LAYER_CONV2D;
    l.out = out;
    l.kernel[0] = l.kernel[1] = k;
    l.stride[0] = l.stride[1] = s;
    l.padding[0] = l.padding[1] = p;
    return l;
}

/* the convolutional VAE of the conv issue trains on 28 x 28 images */
static void conv_vae_trains(void) {
    enum { N = 64, D = 784 };
    vaec_vae_config c = {0};
    c.input_dim = D; c.latent_dim = 8; c.likelihood = VAEC_LIK_BERNOULLI; c.seed = 2; c.threads = 2;
    c.layers = 1;
    c.input_shape[0] = 1; c.input_shape[1] = c.input_shape[2] = 28;
    vaec_layer_spec flat = {0}, unflat = {0};
    flat.kind = VAEC_LAYER_FLATTEN;
    unflat.kind = VAEC_LAYER_UNFLATTEN;
    unflat.shape[0] = 16; unflat.shape[1] = unflat.shape[2] = 7;
    c.n_enc = 7;
    c.enc[0] = conv(0, 8, 4, 2, 1); c.enc[1] = act(VAEC_ACT_RELU); c.enc[2] = conv(0, 16, 4, 2, 1);
    c.enc[3] = act(VAEC_ACT_RELU); c.enc[4] = flat; c.enc[5] = linear(64); c.enc[6] = act(VAEC_ACT_RELU);
    c.n_dec = 8;
    c.dec[0] = linear(64); c.dec[1] = act(VAEC_ACT_RELU); c.dec[2] = linear(16 * 7 * 7); c.dec[3] = act(VAEC_ACT_RELU);
    c.dec[4] = unflat; c.dec[5] = conv(1, 8, 4, 2, 1); c.dec[6] = act(VAEC_ACT_RELU); c.dec[7] = conv(1, 1, 4, 2, 1);
    vaec_vae *m = NULL;
    if (vaec_vae_create(&m, &c) != VAEC_OK) {
        check(0, vaec_last_error());
        return;
    }
    float *x = malloc(sizeof(float) * N * D);
    for (int n = 0; n < N; n++)   /* a bar whose position depends on the example */
        for (int i = 0; i < 28; i++)
            for (int j = 0; j < 28; j++) x[n * D + i * 28 + j] = (j >= n % 20 && j < n % 20 + 6) ? 1.0f : 0.0f;
    vaec_input in = {x, VAEC_F32, N, D, 0};
    double first = 0, last = 0;
    for (int step = 0; step < 40; step++) vaec_vae_train_step(m, &in, NULL, NULL, 3e-3f, step ? &last : &first);
    char what[96];
    snprintf(what, sizeof what, "a convolutional VAE trains (loss %.1f -> %.1f)", first, last);
    check(last < 0.75 * first, what);
    vaec_vae_destroy(m);
    free(x);
}

/* x = W z + b + N(0, 1/2 I): posterior N(S W^T 2 (x - b), S), S = (I + 2 W^T W)^-1 */
enum { HD = 6, HZ = 2, HN = 4, HL = 4000 };
static vaec_vae *linear_gaussian(int threads, float W[HD][HZ], float *b) {
    vaec_vae_config c = {0};
    c.input_dim = HD; c.latent_dim = HZ; c.n_hidden = 0; c.activation = VAEC_ACT_TANH;
    c.likelihood = VAEC_LIK_GAUSSIAN; c.seed = 3; c.threads = threads;
    vaec_vae *m = NULL;
    if (vaec_vae_create(&m, &c)) return NULL;
    vaec_arena *a = vaec_vae_arena(m);
    float *p = a->params;
    int64_t w = a->tensors[vaec_arena_find(a, "decoder.out.weight")].offset;
    int64_t bo = a->tensors[vaec_arena_find(a, "decoder.out.bias")].offset;
    int64_t lw = a->tensors[vaec_arena_find(a, "decoder.logvar.weight")].offset;
    int64_t lb = a->tensors[vaec_arena_find(a, "decoder.logvar.bias")].offset;
    for (int d = 0; d < HD; d++) {
        for (int k = 0; k < HZ; k++) { p[w + d * HZ + k] = W[d][k]; p[lw + d * HZ + k] = 0.0f; }
        p[bo + d] = b[d];
        p[lb + d] = logf(0.5f);
    }
    return m;
}

static void hmc_posterior(void) {
    float W[HD][HZ], b[HD], x[HN * HD];
    unsigned s = 11;
    for (int i = 0; i < HD * HZ; i++) { s = s * 1664525u + 1013904223u; W[i / HZ][i % HZ] = (float)(s >> 8) / 16777216.0f - 0.5f; }
    for (int d = 0; d < HD; d++) b[d] = 0.1f * (float)d;
    for (int i = 0; i < HN * HD; i++) { s = s * 1664525u + 1013904223u; x[i] = 2.0f * ((float)(s >> 8) / 16777216.0f) - 1.0f; }
    vaec_vae *m1 = linear_gaussian(1, W, b), *m2 = linear_gaussian(2, W, b);
    float *out1 = malloc(sizeof(float) * HL * HN * HZ), *out2 = malloc(sizeof(float) * HL * HN * HZ);
    if (!m1 || !m2 || !out1 || !out2) { check(0, "HMC: the linear-Gaussian model"); return; }
    vaec_input in = {x, VAEC_F32, HN, HD, 0};
    vaec_noise noise = {NULL, HL, 1, 5};
    vaec_hmc_config cfg = {10, 0.9f, 0.1f, 200, VAEC_HMC_INIT_PRIOR, 1};
    int st = vaec_vae_hmc_sample(m1, &in, &noise, &cfg, NULL, out1, NULL, NULL) |
             vaec_vae_hmc_sample(m2, &in, &noise, &cfg, NULL, out2, NULL, NULL);
    /* the exact posterior: P = I + 2 W^T W (2 x 2), S = P^-1, mean = S W^T 2 (x - b) */
    double P[2][2] = {{1, 0}, {0, 1}};
    for (int d = 0; d < HD; d++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) P[i][j] += 2.0 * W[d][i] * W[d][j];
    double det = P[0][0] * P[1][1] - P[0][1] * P[1][0];
    double S[2][2] = {{P[1][1] / det, -P[0][1] / det}, {-P[1][0] / det, P[0][0] / det}};
    int ok = st == 0;
    for (int r = 0; r < HN && ok; r++) {
        double v[2] = {0, 0}, mean[2], m[2] = {0, 0}, q[2] = {0, 0};
        for (int d = 0; d < HD; d++)
            for (int k = 0; k < 2; k++) v[k] += 2.0 * W[d][k] * (x[r * HD + d] - b[d]);
        for (int k = 0; k < 2; k++) mean[k] = S[k][0] * v[0] + S[k][1] * v[1];
        for (int l = 0; l < HL; l++)
            for (int k = 0; k < 2; k++) m[k] += out1[(l * HN + r) * HZ + k];
        for (int k = 0; k < 2; k++) m[k] /= HL;
        for (int l = 0; l < HL; l++)
            for (int k = 0; k < 2; k++) { double e = out1[(l * HN + r) * HZ + k] - m[k]; q[k] += e * e; }
        for (int k = 0; k < 2; k++) {
            double var = q[k] / (HL - 1), se = sqrt(S[k][k] / (HL / 4.0));   /* ESS >= L/4 allowed */
            ok = ok && fabs(m[k] - mean[k]) < 5 * se && fabs(var - S[k][k]) < 5 * S[k][k] * sqrt(2.0 / (HL / 4.0));
        }
    }
    check(ok, "HMC draws a linear-Gaussian model's exact posterior");
    check(st == 0 && memcmp(out1, out2, sizeof(float) * HL * HN * HZ) == 0, "HMC: the same chains on 1 and 2 threads");
    /* MCEM: the chains from the samples' last states, 20 steps */
    float z[HN * HZ], step[HN];
    for (int i = 0; i < HN * HZ; i++) z[i] = 0.0f;
    for (int r = 0; r < HN; r++) step[r] = 0.2f;
    double first = 0, last = 0, acc;
    for (int i = 0; i < 20 && st == 0; i++)
        st = vaec_vae_mcem_step(m1, &in, NULL, &cfg, z, step, 5, 0.05f, i ? &last : &first, &acc);
    check(st == 0 && last < first, "MCEM steps lower -log p(x, z)");
    vaec_vae_destroy(m1);
    vaec_vae_destroy(m2);
    free(out1);
    free(out2);
}

int main(void) {
    vae_trains();
    hmc_posterior();
    conv_vae_trains();
    list_is_mlp();
    standalone_activations();
    printf("model_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
