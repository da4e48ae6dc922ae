/* io.c -- the model file (.vaec).
 *
 * Layout (little-endian, as written by this host; the endian marker rejects others):
 *   magic      8 bytes  "\x89VAEC\r\n\x1a"  (binary-safe: detects text-mode mangling)
 *   version    u32      VAEC_FILE_VERSION
 *   endian     u32      0x01020304
 *   model kind u32      1 = VAE
 *   config     i64 input_dim, i64 latent_dim, i32 n_hidden, i32 activation,
 *              i32 likelihood, i32 0, i64 hidden[8], u64 seed
 *   arena      i64 nparams
 *   optimizer  f32 beta1, f32 beta2, f32 eps, i32 0, i64 step
 *   rng        u64 seed, u64 counter
 *   data       f32 params[nparams], f32 adam_m[nparams], f32 adam_v[nparams]
 *   checksum   u32 CRC-32 (zlib's polynomial) of every byte before it
 * Saving writes "<path>.tmp-<pid>", flushes and fsyncs it, then renames it over path,
 * so a reader never sees a half-written model. Loading checks the size, the magic,
 * the version, the checksum and the config before building the model. */
#define _POSIX_C_SOURCE 200809L
#include "vae_impl.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define VAEC_FILE_VERSION 1u
static const unsigned char MAGIC[8] = {0x89, 'V', 'A', 'E', 'C', '\r', '\n', 0x1a};
#define HEADER_BYTES (8 + 4 * 3 + (8 + 8 + 4 * 4 + 8 * VAEC_MAX_HIDDEN + 8) + 8 + (4 * 4 + 8) + 16)

static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32_update(uint32_t crc, const void *data, size_t n) {
    if (!crc_table[1]) crc_init();
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

typedef struct { unsigned char *buf; size_t len; } bytes;
static void put(bytes *b, const void *p, size_t n) { memcpy(b->buf + b->len, p, n); b->len += n; }
#define PUT(b, v) do { __typeof__(v) tmp_ = (v); put((b), &tmp_, sizeof tmp_); } while (0)

static size_t file_bytes(int64_t nparams) { return HEADER_BYTES + (size_t)nparams * 12 + 4; }

vaec_status vaec_vae_save(const vaec_vae *m, const char *path) {
    size_t total = file_bytes(m->nparams);
    bytes b = {vaec_alloc(total, 1), 0};
    if (!b.buf) return vaec_fail(VAEC_ERR_NOMEM, "out of memory serializing the model");
    const vaec_vae_config *c = &m->cfg;
    put(&b, MAGIC, 8);
    PUT(&b, (uint32_t)VAEC_FILE_VERSION);
    PUT(&b, (uint32_t)0x01020304u);
    PUT(&b, (uint32_t)1u);
    PUT(&b, (int64_t)c->input_dim);
    PUT(&b, (int64_t)c->latent_dim);
    PUT(&b, (int32_t)c->n_hidden);
    PUT(&b, (int32_t)c->activation);
    PUT(&b, (int32_t)c->likelihood);
    PUT(&b, (int32_t)0);
    for (int i = 0; i < VAEC_MAX_HIDDEN; i++) PUT(&b, (int64_t)(i < c->n_hidden ? c->hidden[i] : 0));
    PUT(&b, (uint64_t)c->seed);
    PUT(&b, (int64_t)m->nparams);
    PUT(&b, m->adam.beta1);
    PUT(&b, m->adam.beta2);
    PUT(&b, m->adam.eps);
    PUT(&b, (int32_t)0);
    PUT(&b, (int64_t)m->step);
    PUT(&b, (uint64_t)m->rng_seed);
    PUT(&b, (uint64_t)m->rng_counter);
    put(&b, m->params, (size_t)m->nparams * 4);
    put(&b, m->adam_m, (size_t)m->nparams * 4);
    put(&b, m->adam_v, (size_t)m->nparams * 4);
    PUT(&b, crc32_update(0, b.buf, b.len));

    size_t plen = strlen(path);
    char *tmp = vaec_alloc(plen + 48, 1);
    if (!tmp) { vaec_free(b.buf); return vaec_fail(VAEC_ERR_NOMEM, "out of memory"); }
    snprintf(tmp, plen + 48, "%s.tmp-%ld", path, (long)getpid());
    vaec_status st = VAEC_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        st = vaec_fail(errno == ENOENT ? VAEC_ERR_NOTFOUND : VAEC_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    } else {
        int ok = fwrite(b.buf, 1, b.len, f) == b.len;
        ok = fflush(f) == 0 && ok;
        ok = fsync(fileno(f)) == 0 && ok;
        ok = fclose(f) == 0 && ok;
        if (!ok || rename(tmp, path) != 0) {
            st = vaec_fail(VAEC_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
            remove(tmp);
        }
    }
    vaec_free(tmp);
    vaec_free(b.buf);
    return st;
}

typedef struct { const unsigned char *p; size_t pos; } reader;
static void take(reader *r, void *dst, size_t n) { memcpy(dst, r->p + r->pos, n); r->pos += n; }

vaec_status vaec_vae_load(vaec_vae **out, const char *path, int threads) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return vaec_fail(errno == ENOENT ? VAEC_ERR_NOTFOUND : VAEC_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char *buf = NULL;
    vaec_status st = VAEC_OK;
    vaec_vae *m = NULL;
    if (fseek(f, 0, SEEK_END) != 0) { st = vaec_fail(VAEC_ERR_IO, "cannot read '%s'", path); goto done; }
    long size = ftell(f);
    rewind(f);
    if (size < (long)(HEADER_BYTES + 4)) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is not a vaec model file (too short: %ld bytes)", path, size);
        goto done;
    }
    buf = vaec_alloc((size_t)size, 1);
    if (!buf) { st = vaec_fail(VAEC_ERR_NOMEM, "out of memory reading '%s'", path); goto done; }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) { st = vaec_fail(VAEC_ERR_IO, "cannot read '%s'", path); goto done; }
    reader r = {buf, 0};
    unsigned char magic[8];
    uint32_t version, endian, kind;
    take(&r, magic, 8);
    take(&r, &version, 4);
    take(&r, &endian, 4);
    take(&r, &kind, 4);
    if (memcmp(magic, MAGIC, 8) != 0) { st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is not a vaec model file (bad magic)", path); goto done; }
    if (endian != 0x01020304u) { st = vaec_fail(VAEC_ERR_FORMAT, "'%s' was written on a machine of other byte order", path); goto done; }
    if (version != VAEC_FILE_VERSION) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' has format version %u; this vaec reads version %u", path, version, VAEC_FILE_VERSION);
        goto done;
    }
    if (kind != 1u) { st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds a model of kind %u, not a VAE", path, kind); goto done; }
    uint32_t stored;
    memcpy(&stored, buf + size - 4, 4);
    if (crc32_update(0, buf, (size_t)size - 4) != stored) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is corrupted or truncated (checksum mismatch)", path);
        goto done;
    }
    vaec_vae_config c = {0};
    int64_t i64, hid[VAEC_MAX_HIDDEN];
    int32_t i32;
    take(&r, &i64, 8); c.input_dim = i64;
    take(&r, &i64, 8); c.latent_dim = i64;
    take(&r, &i32, 4); c.n_hidden = i32;
    take(&r, &i32, 4); c.activation = (vaec_act)i32;
    take(&r, &i32, 4); c.likelihood = (vaec_likelihood)i32;
    take(&r, &i32, 4);
    take(&r, hid, sizeof hid);
    take(&r, &c.seed, 8);
    for (int i = 0; i < VAEC_MAX_HIDDEN; i++) c.hidden[i] = hid[i];
    c.threads = threads;
    int64_t nparams, step;
    vaec_adam_config adam;
    uint64_t rs, rc;
    take(&r, &nparams, 8);
    take(&r, &adam.beta1, 4);
    take(&r, &adam.beta2, 4);
    take(&r, &adam.eps, 4);
    take(&r, &i32, 4);
    take(&r, &step, 8);
    take(&r, &rs, 8);
    take(&r, &rc, 8);
    if ((st = vaec_vae_create(&m, &c))) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds an invalid model configuration (%s)", path, vaec_last_error());
        goto done;
    }
    if (nparams != m->nparams || (size_t)size != file_bytes(nparams)) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its parameter count does not match its configuration", path);
        goto done;
    }
    take(&r, m->params, (size_t)nparams * 4);
    take(&r, m->adam_m, (size_t)nparams * 4);
    take(&r, m->adam_v, (size_t)nparams * 4);
    if ((st = vaec_vae_adam_set(m, adam))) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds invalid optimizer settings", path);
        goto done;
    }
    m->step = step;
    m->rng_seed = rs;
    m->rng_counter = rc;
done:
    fclose(f);
    vaec_free(buf);
    if (st) {
        vaec_vae_destroy(m);
        return st;
    }
    *out = m;
    return VAEC_OK;
}
