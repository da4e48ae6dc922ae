/* model_check.c -- the models built from the C core alone (no Python): a VAE trains (the
 * loss after 30 Adam steps is well below the first). Prints "model_check: N passed, M
 * failed" and exits non-zero on failure. */
#include "vaec.h"
#include <stdio.h>
#include <stdlib.h>

static int passed, failed;

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
    if (last < first - 10) passed++;
    else { failed++; printf("FAIL training: first %.3f last %.3f\n", first, last); }
    free(x);
}

int main(void) {
    vae_trains();
    printf("model_check: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
