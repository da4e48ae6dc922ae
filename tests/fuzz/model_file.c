/* model_file.c -- libFuzzer target: the model-file reader and every kind's loader.
 *
 * The input is a model file. Its last 4 bytes are replaced by the CRC-32 of the bytes
 * before them, so mutations get past the checksum to the parsing behind it (the header,
 * the config records of each model kind and version, the layer lists, the arena, the
 * extra record). A file that loads must then work: it is saved again and that file must
 * load to the same parameters, and a model with a small input runs encode/decode (VAE),
 * classify (M2) or log_prob (flow) on one row of zeros.
 *
 *   (tests/fuzz/run.sh builds it with clang -fsanitize=fuzzer,address,undefined and runs it)
 *   e.g. ./model_file -max_len=65536 tests/fuzz/corpus/model_file
 */
#define _GNU_SOURCE
#include "vaec.h"
#include "m2.h"
#include "flows.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t crc = ~0u;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static int in_fd = -1, out_fd = -1;
static char in_path[64], out_path[64];

static void put_file(int fd, const uint8_t *data, size_t size) {
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
}

/* The same arena, bit for bit (params, Adam moments, step). */
static void same_arena(const vaec_arena *a, const vaec_arena *b) {
    if (a->n != b->n || a->step != b->step || memcmp(a->params, b->params, (size_t)a->n * 4) ||
        memcmp(a->adam_m, b->adam_m, (size_t)a->n * 4) || memcmp(a->adam_v, b->adam_v, (size_t)a->n * 4)) {
        fprintf(stderr, "a loaded file saved again did not load to the same arena\n");
        abort();
    }
}

static void run_vae(const char *path) {
    vaec_vae *m = NULL, *m2 = NULL;
    void *extra = NULL;
    uint32_t elen = 0;
    if (vaec_vae_load(&m, path, 1, &extra, &elen)) return;
    if (vaec_vae_save(m, out_path, extra, elen) || vaec_vae_load(&m2, out_path, 1, NULL, NULL)) {
        fprintf(stderr, "save/load of a loaded VAE failed: %s\n", vaec_last_error());
        abort();
    }
    same_arena(vaec_vae_arena(m), vaec_vae_arena(m2));
    const vaec_vae_config *c = vaec_vae_config_get(m);
    if (c->input_dim <= 4096 && c->latent_dim <= 256) {
        float *x = calloc((size_t)c->input_dim, 4), *mu = calloc((size_t)c->latent_dim, 4);
        float *lv = calloc((size_t)c->latent_dim, 4), *out = calloc((size_t)c->input_dim, 4);
        vaec_input in = {x, VAEC_F32, 1, c->input_dim, 0};
        vaec_noise noise = {NULL, 1, 1, 7};
        double e;
        vaec_vae_encode(m, &in, mu, lv);
        vaec_vae_decode(m, mu, 1, out);
        vaec_vae_elbo(m, &in, &noise, &e);
        free(x); free(mu); free(lv); free(out);
    }
    free(extra);
    vaec_vae_destroy(m);
    vaec_vae_destroy(m2);
}

static void run_m2(const char *path) {
    vaec_m2 *m = NULL, *m2 = NULL;
    if (vaec_m2_load(&m, path, 1, NULL, NULL)) return;
    if (vaec_m2_save(m, out_path, NULL, 0) || vaec_m2_load(&m2, out_path, 1, NULL, NULL)) {
        fprintf(stderr, "save/load of a loaded M2 failed: %s\n", vaec_last_error());
        abort();
    }
    same_arena(vaec_m2_arena(m), vaec_m2_arena(m2));
    const vaec_m2_config *c = vaec_m2_config_get(m);
    if (c->input_dim <= 4096 && c->n_classes <= 64) {
        float *x = calloc((size_t)c->input_dim, 4), *p = calloc((size_t)c->n_classes, 4);
        vaec_input in = {x, VAEC_F32, 1, c->input_dim, 0};
        vaec_m2_classify(m, &in, p);
        free(x); free(p);
    }
    vaec_m2_destroy(m);
    vaec_m2_destroy(m2);
}

static void run_flow(const char *path) {
    vaec_flowmodel *m = NULL, *m2 = NULL;
    if (vaec_flowmodel_load(&m, path, 1, NULL, NULL)) return;
    if (vaec_flowmodel_save(m, out_path, NULL, 0) || vaec_flowmodel_load(&m2, out_path, 1, NULL, NULL)) {
        fprintf(stderr, "save/load of a loaded flow failed: %s\n", vaec_last_error());
        abort();
    }
    same_arena(vaec_flowmodel_arena(m), vaec_flowmodel_arena(m2));
    const vaec_flowmodel_config *c = vaec_flowmodel_config_get(m);
    if (c->dim <= 4096) {
        float *x = calloc((size_t)c->dim, 4);
        double lp;
        vaec_flowmodel_log_prob(m, x, 1, &lp);
        free(x);
    }
    vaec_flowmodel_destroy(m);
    vaec_flowmodel_destroy(m2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (in_fd < 0) {
        in_fd = memfd_create("vaec-fuzz-in", 0);
        out_fd = memfd_create("vaec-fuzz-out", 0);
        if (in_fd < 0 || out_fd < 0) abort();
        snprintf(in_path, sizeof in_path, "/proc/self/fd/%d", in_fd);
        snprintf(out_path, sizeof out_path, "/dev/shm/vaec-fuzz-%d.vaec", (int)getpid());
    }
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    if (size >= 4) {
        uint32_t crc = crc32_of(buf, size - 4);
        memcpy(buf + size - 4, &crc, 4);
    }
    put_file(in_fd, buf, size);
    free(buf);
    uint32_t kind = 0;
    if (vaec_file_kind(in_path, &kind) == VAEC_OK) {
        /* every loader gets every file: each must refuse the kinds it does not read */
        run_vae(in_path);
        run_m2(in_path);
        run_flow(in_path);
    }
    return 0;
}
