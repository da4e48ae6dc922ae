/* io.c -- the model file (.vaec), one format for every kind of model.
 *
 * Layout (little-endian; the endian marker rejects other byte orders):
 *   magic      8 bytes  "\x89VAEC\r\n\x1a"  (binary-safe: detects text-mode mangling)
 *   version    u32      VAEC_FILE_VERSION
 *   endian     u32      0x01020304
 *   kind       u32      VAEC_KIND_VAE, ...
 *   config     u32 length, then that many bytes (the kind's own config record)
 *   arena      i64 n, f32 beta1, f32 beta2, f32 eps, i32 optimizer, i64 step
 *              (optimizer: what adam_m / adam_v hold, vaec_optimizer: 0 Adam, 1 Adagrad;
 *              the field was a zero pad before Adagrad, so files of 0.1.0 read as Adam;
 *              the weight decay is a training option, not kept)
 *   rng        u64 seed, u64 counter
 *   data       f32 params[n], f32 adam_m[n], f32 adam_v[n] (the optimizer's state),
 *              every tensor row-major (one
 *              the arena keeps transposed is written and read back in its (out, in) order)
 *   extra      u32 length, then that many bytes (e.g. a trainer's state; may be empty)
 *   checksum   u32 CRC-32 (zlib's polynomial) of every byte before it
 * Saving writes "<path>.tmp-<pid>-<n>" (a name of its own per save), fsyncs it, renames it
 * over path and fsyncs the folder, so a reader never sees a half-written file, even after a
 * crash or a power cut; a failed save removes its temporary file and leaves path as it was.
 * (A process killed while saving can leave its temporary file: never read, safe to delete.)
 * Reading checks the size, the magic, the version and the checksum before anything is used;
 * docs/FORMAT.md describes the format and its versions. */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#define VAEC_FILE_VERSION 1u
static const unsigned char MAGIC[8] = {0x89, 'V', 'A', 'E', 'C', '\r', '\n', 0x1a};
#define FIXED_HEAD (8 + 4 * 4)           /* magic, version, endian, kind, config length */
#define ARENA_HEAD (8 + 4 * 4 + 8 + 16)  /* n, adam (3 f32 + pad), step, rng */

/* The CRC table is made once per process, by whichever thread first needs it (pthread_once:
 * a thread that finds it half made would compute a wrong checksum). */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32_update(uint32_t crc, const void *data, size_t n) {
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* fsync of the folder holding path (best effort: some file systems refuse it), after which
 * a rename into it survives a power cut. */
static void sync_folder(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else return;
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

static vaec_status write_atomic(const char *path, const unsigned char *buf, size_t len);

typedef struct { unsigned char *buf; size_t len; } bytes;
static void put(bytes *b, const void *p, size_t n) { memcpy(b->buf + b->len, p, n); b->len += n; }
#define PUT(b, T, v) do { T tmp_ = (v); put((b), &tmp_, sizeof tmp_); } while (0)

vaec_status vaec_file_write(const char *path, uint32_t kind, const void *config, uint32_t config_len,
                            const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter) {
    return vaec_file_write_ex(path, kind, config, config_len, a, rng_seed, rng_counter, NULL, 0);
}

vaec_status vaec_file_write_ex(const char *path, uint32_t kind, const void *config, uint32_t config_len,
                               const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter,
                               const void *extra, uint32_t extra_len) {
    size_t total = FIXED_HEAD + config_len + ARENA_HEAD + (size_t)a->n * 12 + 4 + extra_len + 4;
    bytes b = {vaec_alloc(total, 1), 0};
    const int transposed = vaec_arena_has_transposed(a);   /* then a row-major copy of each buffer */
    float *rm = transposed ? vaec_alloc((size_t)(a->n > 0 ? a->n : 1), sizeof(float)) : NULL;
    if (!b.buf || (transposed && !rm)) {
        vaec_free(b.buf);
        return vaec_fail(VAEC_ERR_NOMEM, "out of memory serializing the model");
    }
    put(&b, MAGIC, 8);
    PUT(&b, uint32_t, VAEC_FILE_VERSION);
    PUT(&b, uint32_t, 0x01020304u);
    PUT(&b, uint32_t, kind);
    PUT(&b, uint32_t, config_len);
    put(&b, config, config_len);
    PUT(&b, int64_t, a->n);
    PUT(&b, float, a->adam.beta1);
    PUT(&b, float, a->adam.beta2);
    PUT(&b, float, a->adam.eps);
    PUT(&b, int32_t, (int32_t)a->optimizer);
    PUT(&b, int64_t, a->step);
    PUT(&b, uint64_t, rng_seed);
    PUT(&b, uint64_t, rng_counter);
    const float *bufs[3] = {a->params, a->adam_m, a->adam_v};
    for (int k = 0; k < 3; k++) {
        if (rm) {
            memcpy(rm, bufs[k], (size_t)a->n * 4);
            vaec_arena_to_rowmajor(a, bufs[k], rm);
        }
        put(&b, rm ? rm : bufs[k], (size_t)a->n * 4);
    }
    vaec_free(rm);
    PUT(&b, uint32_t, extra_len);
    if (extra_len) put(&b, extra, extra_len);
    PUT(&b, uint32_t, crc32_update(0, b.buf, b.len));

    vaec_status st = write_atomic(path, b.buf, b.len);
    vaec_free(b.buf);
    return st;
}

/* Each save's temporary file has a name of its own: the process id and a counter, so that
 * threads saving to the same path at once never write into one file. */
static _Atomic unsigned tmp_counter;

/* A failed write: the message names the file and the cause; errno kept for the caller. */
static vaec_status io_fail(const char *path, int err) {
    vaec_set_errno(err);
    return vaec_fail(err == ENOENT ? VAEC_ERR_NOTFOUND : VAEC_ERR_IO, "cannot write '%s': %s", path, strerror(err));
}

/* buf written to "<path>.tmp-<pid>-<n>" (created exclusively), fsynced, renamed over path,
 * and the folder fsynced so that the rename itself is durable. Any failure removes the
 * temporary file and leaves path as it was; the first error's errno is the one reported. */
static vaec_status write_atomic(const char *path, const unsigned char *buf, size_t len) {
    size_t plen = strlen(path);
    char *tmp = vaec_alloc(plen + 64, 1);
    if (!tmp) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    snprintf(tmp, plen + 64, "%s.tmp-%ld-%u", path, (long)getpid(), atomic_fetch_add(&tmp_counter, 1u));
    int err = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        err = errno;
    } else {
        for (size_t off = 0; off < len && !err;) {
            ssize_t w = write(fd, buf + off, len - off);
            if (w > 0) off += (size_t)w;
            else if (w < 0 && errno != EINTR) err = errno;
            else if (w == 0) err = EIO;
        }
        if (!err && fsync(fd) != 0) err = errno;
        if (close(fd) != 0 && !err) err = errno;
        if (!err && rename(tmp, path) != 0) err = errno;
        if (err) unlink(tmp);
    }
    if (!err) sync_folder(path);
    vaec_free(tmp);
    return err ? io_fail(path, err) : VAEC_OK;
}

typedef struct { const unsigned char *p; size_t pos; } reader;
static void take(reader *r, void *dst, size_t n) { memcpy(dst, r->p + r->pos, n); r->pos += n; }

vaec_status vaec_file_read(vaec_file *out, const char *path) {
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);
    FILE *f = fopen(path, "rb");
    if (!f) return vaec_set_errno(errno), vaec_fail(errno == ENOENT ? VAEC_ERR_NOTFOUND : VAEC_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char *buf = NULL;
    vaec_status st = VAEC_OK;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    rewind(f);
    if (size < 0) { st = vaec_fail(VAEC_ERR_IO, "cannot read '%s'", path); goto fail; }
    if (size < (long)(FIXED_HEAD + ARENA_HEAD + 4)) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is not a vaec model file (too short: %ld bytes)", path, size);
        goto fail;
    }
    buf = vaec_alloc((size_t)size, 1);
    if (!buf) { st = vaec_fail(VAEC_ERR_NOMEM, "out of memory reading '%s'", path); goto fail; }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) { st = vaec_fail(VAEC_ERR_IO, "cannot read '%s'", path); goto fail; }
    reader r = {buf, 0};
    unsigned char magic[8];
    uint32_t version, endian, clen, stored;
    take(&r, magic, 8);
    take(&r, &version, 4);
    take(&r, &endian, 4);
    take(&r, &out->kind, 4);
    take(&r, &clen, 4);
    if (memcmp(magic, MAGIC, 8) != 0) { st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is not a vaec model file (bad magic)", path); goto fail; }
    if (endian != 0x01020304u) { st = vaec_fail(VAEC_ERR_FORMAT, "'%s' was written on a machine of other byte order", path); goto fail; }
    if (version != VAEC_FILE_VERSION) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' has format version %u; this vaec reads version %u", path, version, VAEC_FILE_VERSION);
        goto fail;
    }
    memcpy(&stored, buf + size - 4, 4);
    if (crc32_update(0, buf, (size_t)size - 4) != stored) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is corrupted or truncated (checksum mismatch)", path);
        goto fail;
    }
    if ((size_t)clen > (size_t)size - FIXED_HEAD - ARENA_HEAD - 4) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its config record overruns the file", path);
        goto fail;
    }
    out->config = buf + r.pos;
    out->config_len = clen;
    r.pos += clen;
    int32_t optimizer;
    take(&r, &out->nparams, 8);
    take(&r, &out->adam.beta1, 4);
    take(&r, &out->adam.beta2, 4);
    take(&r, &out->adam.eps, 4);
    take(&r, &optimizer, 4);
    if (optimizer != VAEC_OPT_ADAM && optimizer != VAEC_OPT_ADAGRAD) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' holds the state of an unknown optimizer (code %d)", path, (int)optimizer);
        goto fail;
    }
    out->optimizer = (vaec_optimizer)optimizer;
    take(&r, &out->step, 8);
    take(&r, &out->rng_seed, 8);
    take(&r, &out->rng_counter, 8);
    /* what is left must hold the data (12 bytes a parameter), the extra length and the CRC */
    if ((size_t)size < r.pos + 8 || out->nparams < 0 || (size_t)out->nparams > ((size_t)size - r.pos - 8) / 12) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its parameter count does not match its size", path);
        goto fail;
    }
    out->params = (const float *)(buf + r.pos);
    out->adam_m = out->params + out->nparams;
    out->adam_v = out->adam_m + out->nparams;
    r.pos += (size_t)out->nparams * 12;
    uint32_t elen;
    take(&r, &elen, 4);
    if (r.pos + (size_t)elen + 4 != (size_t)size) {
        st = vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: its sections do not add up to its size", path);
        goto fail;
    }
    out->extra = buf + r.pos;
    out->extra_len = elen;
    out->buffer = buf;
    fclose(f);
    return VAEC_OK;
fail:
    fclose(f);
    vaec_free(buf);
    out->buffer = NULL;
    return st;
}

vaec_status vaec_file_kind(const char *path, uint32_t *kind) {
    FILE *f = fopen(path, "rb");
    if (!f) return vaec_set_errno(errno), vaec_fail(errno == ENOENT ? VAEC_ERR_NOTFOUND : VAEC_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char head[FIXED_HEAD];
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    uint32_t version, endian;
    if (got < sizeof head)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' is not a vaec model file (too short: %zu bytes)", path, got);
    if (memcmp(head, MAGIC, 8) != 0)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' is not a vaec model file (bad magic)", path);
    memcpy(&version, head + 8, 4);
    memcpy(&endian, head + 12, 4);
    memcpy(kind, head + 16, 4);
    if (endian != 0x01020304u) return vaec_fail(VAEC_ERR_FORMAT, "'%s' was written on a machine of other byte order", path);
    if (version != VAEC_FILE_VERSION)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' has format version %u; this vaec reads version %u", path, version, VAEC_FILE_VERSION);
    return VAEC_OK;
}

vaec_status vaec_file_apply(const vaec_file *f, vaec_arena *a) {
    if (f->nparams != a->n)
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' is inconsistent: %lld parameters stored, its configuration has %lld",
                         f->path, (long long)f->nparams, (long long)a->n);
    const int transposed = vaec_arena_has_transposed(a);
    float *rm = transposed ? vaec_alloc((size_t)(a->n > 0 ? a->n : 1), sizeof(float)) : NULL;
    if (transposed && !rm) return vaec_fail(VAEC_ERR_NOMEM, "out of memory loading '%s'", f->path);
    vaec_status st = vaec_arena_adam_set(a, f->adam);
    if (st) {
        vaec_free(rm);
        return vaec_fail(VAEC_ERR_FORMAT, "'%s' holds invalid optimizer settings", f->path);
    }
    /* the data may sit at any byte offset after a variable-length config: memcpy; the
     * file's row-major tensors then go back into the arena's layout */
    const float *src[3] = {f->params, f->adam_m, f->adam_v};
    float *dst[3] = {a->params, a->adam_m, a->adam_v};
    for (int k = 0; k < 3; k++) {
        memcpy(dst[k], src[k], (size_t)a->n * 4);
        if (rm) {
            memcpy(rm, src[k], (size_t)a->n * 4);
            vaec_arena_from_rowmajor(a, rm, dst[k]);
        }
    }
    vaec_free(rm);
    a->step = f->step;
    a->optimizer = f->optimizer;
    return VAEC_OK;
}

vaec_status vaec_file_extra_copy(const vaec_file *f, void **extra, uint32_t *extra_len) {
    if (!extra) return VAEC_OK;
    *extra = NULL;
    *extra_len = 0;
    if (!f->extra_len) return VAEC_OK;
    if (!(*extra = malloc(f->extra_len))) return vaec_fail(VAEC_ERR_NOMEM, "out of memory");
    memcpy(*extra, f->extra, f->extra_len);
    *extra_len = f->extra_len;
    return VAEC_OK;
}

void vaec_file_close(vaec_file *f) {
    vaec_free(f->buffer);
    f->buffer = NULL;
}
