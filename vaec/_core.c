/* _core.c -- the CPython + NumPy binding of the vaec C core: the VAE type and the module.
 *
 * Nothing numerical lives here: converters (_common.c) check every array argument (kind,
 * dtype, ndim, shape, finiteness, range) and say which argument is wrong; float32 and
 * uint8 C-contiguous inputs are passed to C without a copy; the GIL is released only
 * around pure C work, and a model refuses a second caller while it is busy.
 * Multi-phase initialisation (PEP 489); NumPy's API is imported in the exec slot. */
#define VAEC_BINDING_MAIN
#include "_common.h"
#include "internal.h"   /* the fused dense kernels, for the test hook */
#include <math.h>
#include <time.h>

/* ------------------------------------------------------------- the type */
/* An object is a vaec_py_model (_common.h) whose m is a vaec_vae. */
VAEC_PY_MODEL_OPS(vaec_py_vae_ops, vaec_vae, "model");

static PyObject *VAE_new(PyTypeObject *tp, PyObject *args, PyObject *kw) { return vaec_py_model_new(tp, &vaec_py_vae_ops); }

/* A layer list: a sequence of 16-tuples (kind, act, out, kh, kw, sh, sw, ph, pw, oph, opw,
 * scale, slope, C, H, W), as vaec/layers.py makes them, into at most VAEC_MAX_LAYERS specs. */
static int parse_layers(PyObject *obj, const char *name, int *n, vaec_layer_spec *out) {
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq) {
        PyErr_Format(PyExc_TypeError, "%s: expected a list of layers", name);
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (len > VAEC_MAX_LAYERS) {
        PyErr_Format(PyExc_ValueError, "%s: at most %d layers, got %zd", name, VAEC_MAX_LAYERS, len);
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        vaec_layer_spec *s = &out[i];
        memset(s, 0, sizeof *s);
        long long o, c, h, w;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iiLiiiiiiiiifLLL", &s->kind, &s->act, &o,
                              &s->kernel[0], &s->kernel[1], &s->stride[0], &s->stride[1], &s->padding[0],
                              &s->padding[1], &s->output_padding[0], &s->output_padding[1], &s->scale, &s->slope,
                              &c, &h, &w)) {
            PyErr_Format(PyExc_TypeError, "%s[%zd]: not a layer spec (vaec.layers makes them)", name, i);
            Py_DECREF(seq);
            return -1;
        }
        s->out = o;
        s->shape[0] = c;
        s->shape[1] = h;
        s->shape[2] = w;
    }
    *n = (int)len;
    Py_DECREF(seq);
    return 0;
}

static PyObject *layers_tuple(int n, const vaec_layer_spec *l) {
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++) {
        const vaec_layer_spec *s = &l[i];
        PyObject *item = Py_BuildValue("(iiLiiiiiiiiifLLL)", s->kind, s->act, (long long)s->out, s->kernel[0],
                                       s->kernel[1], s->stride[0], s->stride[1], s->padding[0], s->padding[1],
                                       s->output_padding[0], s->output_padding[1], s->scale, (double)s->slope,
                                       (long long)s->shape[0], (long long)s->shape[1], (long long)s->shape[2]);
        if (!item) { Py_CLEAR(t); break; }
        PyTuple_SET_ITEM(t, i, item);
    }
    return t;
}

static int VAE_init(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"input_dim", "latent_dim", "hidden", "activation", "likelihood", "seed", "threads",
                             "flow", "deterministic", "input_shape", "encoder", "decoder", "init_std", NULL};
    long long input_dim, latent_dim;
    unsigned long long seed = 0;
    PyObject *hidden;
    PyObject *act, *lik, *shape = Py_None, *enc = Py_None, *dec = Py_None;
    int threads = 0, deterministic = 0;
    const char *flow = "";
    float init_std = 0.0f;   /* 0: torch's uniform initialization; > 0: N(0, init_std^2) */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLOUUKi|spOOOf", kwlist, &input_dim, &latent_dim, &hidden, &act, &lik,
                                     &seed, &threads, &flow, &deterministic, &shape, &enc, &dec, &init_std))
        return -1;
    if (init_std != 0.0f && !(init_std > 0.0f && isfinite(init_std))) {
        PyErr_Format(PyExc_ValueError, "init_std: expected a finite number > 0, got %g", (double)init_std);
        return -1;
    }
    vaec_vae_config c = {0};
    if ((enc == Py_None) != (dec == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "encoder, decoder: give both layer lists, or neither");
        return -1;
    }
    if (enc != Py_None) {
        long long s0, s1, s2;
        c.layers = 1;
        if (shape == Py_None || !PyArg_ParseTuple(shape, "LLL", &s0, &s1, &s2)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "input_shape: expected (C, H, W) with the layer lists");
            return -1;
        }
        c.input_shape[0] = s0;
        c.input_shape[1] = s1;
        c.input_shape[2] = s2;
        if (parse_layers(enc, "encoder", &c.n_enc, c.enc) || parse_layers(dec, "decoder", &c.n_dec, c.dec)) return -1;
    }
    c.deterministic = deterministic;
    if (strlen(flow) >= sizeof c.flow) {
        PyErr_Format(PyExc_ValueError, "flow: spec too long: %s", flow);
        return -1;
    }
    memcpy(c.flow, flow, strlen(flow) + 1);
    c.input_dim = input_dim;
    c.latent_dim = latent_dim;
    c.seed = (uint64_t)seed;
    c.threads = threads;
    if (!c.layers && vaec_py_parse_widths(hidden, "hidden", &c.n_hidden, c.hidden)) return -1;
    if (!c.layers && vaec_py_parse_act(act, &c.activation)) return -1;
    if (vaec_py_parse_likelihood(lik, &c.likelihood)) return -1;
    vaec_vae *m = NULL;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_vae_create(&m, &c);
    if (!st && init_std > 0.0f) st = vaec_arena_init_normal(vaec_vae_arena(m), c.seed, init_std);
    Py_END_ALLOW_THREADS
    if (st) { vaec_vae_destroy(m); vaec_py_raise(st); return -1; }
    return vaec_py_model_install(self, m);
}

/* Common argument handling for loss_grad / train_step / elbo. */
typedef struct {
    vaec_input x;
    vaec_noise noise;
    PyArrayObject *xa, *ea;
} call_args;

static void call_args_clear(call_args *a) {
    Py_XDECREF(a->xa);
    Py_XDECREF(a->ea);
}

static int parse_call(vaec_py_model *self, call_args *a, PyObject *x, PyObject *eps, PyObject *samples,
                      PyObject *seed, int binarize) {
    memset(a, 0, sizeof *a);
    const vaec_vae_config *c = vaec_vae_config_get(self->m);
    int unit = c->likelihood == VAEC_LIK_BERNOULLI || binarize;
    if (vaec_py_convert_x(x, "x", c->input_dim, unit, &a->x, &a->xa)) return -1;
    a->x.binarize = binarize;
    int64_t dims[2] = {a->x.n, c->latent_dim};
    return vaec_py_convert_noise(eps, samples, seed, "eps", 2, dims, 1, &a->noise, &a->ea);
}

static PyObject *VAE_loss_grad(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "eps", "samples", "seed", "binarize", "lr", "iw", "beta", "free_bits", "score",
                             "baseline", "row_offset", "n_total", NULL};
    PyObject *x, *eps = Py_None, *samples = Py_None, *seed = Py_None;
    int binarize = 0, iw = 0, score = 0;
    double lr = -1.0;  /* < 0: no optimizer step */
    float beta = 1.0f, free_bits = 0.0f, baseline = 0.0f;
    long long row_offset = 0, n_total = 0;   /* a share of a batch (vaec_noise) */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOpdpffpfLL", kwlist, &x, &eps, &samples, &seed, &binarize, &lr,
                                     &iw, &beta, &free_bits, &score, &baseline, &row_offset, &n_total))
        return NULL;
    vaec_objective obj = {iw, beta, free_bits, score ? VAEC_EST_SCORE : VAEC_EST_REPARAM, baseline};
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyObject *res = NULL;
    if (parse_call(self, &a, x, eps, samples, seed, binarize)) goto done;
    if (a.x.n == 0 && n_total <= 0) {
        PyErr_SetString(PyExc_ValueError, "x: empty batch; the loss needs at least one example");
        goto done;
    }
    a.noise.row_offset = row_offset;
    a.noise.n_total = n_total;
    double loss = 0.0;
    vaec_status st;
    vaec_py_interrupt intr;   /* Ctrl-C stops the call (_common.h) */
    if (vaec_py_interrupt_begin(&intr)) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = lr >= 0.0 ? vaec_vae_train_step(self->m, &a.x, &a.noise, &obj, (float)lr, &loss)
                   : vaec_vae_loss_grad(self->m, &a.x, &a.noise, &obj, &loss);
    Py_END_ALLOW_THREADS
    vaec_py_interrupt_end(&intr);
    if (st) { vaec_py_raise(st); goto done; }
    res = PyFloat_FromDouble(loss);
done:
    call_args_clear(&a);
    vaec_py_release(self);
    return res;
}

/* wake_sleep(x, seed=None, binarize=False, lr=-1, dreams=0) -> (wake loss, sleep loss);
 * dreams 0: as many as x has rows; lr >= 0: followed by one Adam step. */
static PyObject *VAE_wake_sleep(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "seed", "binarize", "lr", "dreams", NULL};
    PyObject *x, *seed = Py_None;
    int binarize = 0;
    double lr = -1.0;
    long long dreams = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OpdL", kwlist, &x, &seed, &binarize, &lr, &dreams)) return NULL;
    if (dreams < 0) return PyErr_Format(PyExc_ValueError, "dreams must be >= 0, got %lld", dreams);
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyObject *res = NULL;
    if (parse_call(self, &a, x, Py_None, Py_None, seed, binarize)) goto done;
    if (a.x.n == 0) {
        PyErr_SetString(PyExc_ValueError, "x: empty batch; the loss needs at least one example");
        goto done;
    }
    double wl = 0.0, sl = 0.0;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_vae_wake_sleep_grad(self->m, &a.x, &a.noise, dreams ? dreams : a.x.n, &wl, &sl);
    if (!st && lr >= 0.0) st = vaec_vae_adam_step(self->m, (float)lr);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = Py_BuildValue("(dd)", wl, sl);
done:
    call_args_clear(&a);
    vaec_py_release(self);
    return res;
}

/* ------------------------------------------------------------------ HMC */
static const char *const hmc_inits[] = {"prior", "encoder", "given"};

/* cfg from the keyword values; ValueError naming a bad one (the C core checks them too). */
static int parse_hmc(vaec_hmc_config *cfg, int leapfrog, float target, float step_size, long long burn_in,
                     const char *init, int init_draws) {
    cfg->init_draws = init_draws;
    cfg->leapfrog = leapfrog;
    cfg->target_accept = target;
    cfg->step_size = step_size;
    cfg->burn_in = burn_in;
    cfg->init = -1;
    for (int i = 0; i < 3; i++)
        if (init && strcmp(init, hmc_inits[i]) == 0) cfg->init = i;
    if (cfg->init < 0) {
        PyErr_Format(PyExc_ValueError, "init: expected 'prior', 'encoder' or 'given', got '%s'", init ? init : "None");
        return -1;
    }
    return 0;
}

/* A float32 (n, cols) array (cols 0: (n,)) converted from obj, finite; *keep owns it. */
static float *latent_rows(PyObject *obj, const char *name, int64_t n, int64_t cols, PyArrayObject **keep) {
    PyArrayObject *a = vaec_py_real_array(obj, name), *f = NULL;
    *keep = NULL;
    if (!a) return NULL;
    char expected[64];
    if (cols) snprintf(expected, sizeof expected, "an array of shape (%lld, %lld)", (long long)n, (long long)cols);
    else snprintf(expected, sizeof expected, "an array of shape (%lld,)", (long long)n);
    int ok = cols ? PyArray_NDIM(a) == 2 && PyArray_DIM(a, 0) == n && PyArray_DIM(a, 1) == cols
                  : PyArray_NDIM(a) == 1 && PyArray_DIM(a, 0) == n;
    if (!ok) vaec_py_wrong_shape(a, name, expected);
    else if ((f = vaec_py_as_f32(a)) && vaec_py_check_values(f, name, 0, "")) Py_CLEAR(f);
    Py_DECREF(a);
    *keep = f;
    return f ? (float *)PyArray_DATA(f) : NULL;
}

/* An array the call writes into: float32, C-contiguous, aligned, writeable, of shape (n, cols)
 * or (n,). */
static float *inout_rows(PyObject *obj, const char *name, int64_t n, int64_t cols) {
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj) || !PyArray_ISALIGNED((PyArrayObject *)obj) ||
        !PyArray_ISWRITEABLE((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a writeable, aligned, C-contiguous float32 array (updated in place)",
                     name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int ok = cols ? PyArray_NDIM(a) == 2 && PyArray_DIM(a, 0) == n && PyArray_DIM(a, 1) == cols
                  : PyArray_NDIM(a) == 1 && PyArray_DIM(a, 0) == n;
    if (!ok) {
        char expected[64];
        if (cols) snprintf(expected, sizeof expected, "shape (%lld, %lld)", (long long)n, (long long)cols);
        else snprintf(expected, sizeof expected, "shape (%lld,)", (long long)n);
        vaec_py_wrong_shape(a, name, expected);
        return NULL;
    }
    return (float *)PyArray_DATA(a);
}

/* hmc_sample(x, samples=1, leapfrog=10, target_accept=0.9, step_size=0.1, burn_in=100,
 * init='prior', z0=None, seed=None, binarize=False) -> (states (L, n, latent), mean
 * acceptance (n,), step sizes (n,)) */
static PyObject *VAE_hmc_sample(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "samples", "leapfrog", "target_accept", "step_size", "burn_in", "init", "z0",
                             "seed", "binarize", "init_draws", NULL};
    PyObject *x, *samples = Py_None, *z0 = Py_None, *seed = Py_None;
    int leapfrog = 10, binarize = 0, init_draws = 1;
    float target = 0.9f, step_size = 0.1f;
    long long burn_in = 100;
    const char *init = "prior";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OiffLsOOpi", kwlist, &x, &samples, &leapfrog, &target, &step_size,
                                     &burn_in, &init, &z0, &seed, &binarize, &init_draws))
        return NULL;
    vaec_hmc_config cfg;
    if (parse_hmc(&cfg, leapfrog, target, step_size, burn_in, init, init_draws)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyArrayObject *zk = NULL;
    PyObject *out = NULL, *acc = NULL, *stp = NULL, *res = NULL;
    const float *zp = NULL;
    if (parse_call(self, &a, x, Py_None, samples, seed, binarize)) goto done;
    const int64_t Z = vaec_vae_config_get(self->m)->latent_dim, n = a.x.n;
    if (z0 != Py_None && !(zp = latent_rows(z0, "z0", n, Z, &zk))) goto done;
    if ((z0 != Py_None) != (cfg.init == VAEC_HMC_INIT_GIVEN)) {
        PyErr_SetString(PyExc_ValueError, "z0: give the starting points exactly when init is 'given'");
        goto done;
    }
    npy_intp d3[3] = {a.noise.samples, (npy_intp)n, (npy_intp)Z}, d1[1] = {(npy_intp)n};
    if (!(out = PyArray_SimpleNew(3, d3, NPY_FLOAT32)) || !(acc = PyArray_SimpleNew(1, d1, NPY_FLOAT32)) ||
        !(stp = PyArray_SimpleNew(1, d1, NPY_FLOAT32)))
        goto done;
    vaec_status st;
    vaec_py_interrupt intr;   /* Ctrl-C stops the call (_common.h) */
    if (vaec_py_interrupt_begin(&intr)) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_vae_hmc_sample(self->m, &a.x, &a.noise, &cfg, zp, PyArray_DATA((PyArrayObject *)out),
                             PyArray_DATA((PyArrayObject *)acc), PyArray_DATA((PyArrayObject *)stp));
    Py_END_ALLOW_THREADS
    vaec_py_interrupt_end(&intr);
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(3, out, acc, stp);
done:
    Py_XDECREF(out);
    Py_XDECREF(acc);
    Py_XDECREF(stp);
    Py_XDECREF(zk);
    call_args_clear(&a);
    vaec_py_release(self);
    return res;
}

/* hmc_log_likelihood(x, samples=1000, leapfrog=4, target_accept=0.9, step_size=0.1,
 * burn_in=100, init='prior', seed=None, binarize=False) -> (log p(x) (n,), acceptance (n,)) */
static PyObject *VAE_hmc_log_likelihood(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "samples", "leapfrog", "target_accept", "step_size", "burn_in", "init", "seed",
                             "binarize", "init_draws", NULL};
    PyObject *x, *samples = NULL, *seed = Py_None;
    int leapfrog = 4, binarize = 0, init_draws = 1;
    float target = 0.9f, step_size = 0.1f;
    long long burn_in = 100;
    const char *init = "prior";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OiffLsOpi", kwlist, &x, &samples, &leapfrog, &target, &step_size,
                                     &burn_in, &init, &seed, &binarize, &init_draws))
        return NULL;
    vaec_hmc_config cfg;
    if (parse_hmc(&cfg, leapfrog, target, step_size, burn_in, init, init_draws)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyObject *out = NULL, *acc = NULL, *res = NULL, *dflt = NULL;
    if (!samples && !(samples = dflt = PyLong_FromLong(1000))) goto done_early;
    if (parse_call(self, &a, x, Py_None, samples, seed, binarize)) goto done;
    npy_intp d1[1] = {(npy_intp)a.x.n};
    if (!(out = PyArray_SimpleNew(1, d1, NPY_FLOAT64)) || !(acc = PyArray_SimpleNew(1, d1, NPY_FLOAT32))) goto done;
    vaec_status st;
    vaec_py_interrupt intr;   /* Ctrl-C stops the call (_common.h) */
    if (vaec_py_interrupt_begin(&intr)) goto done;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_vae_hmc_log_likelihood(self->m, &a.x, &a.noise, &cfg, PyArray_DATA((PyArrayObject *)out),
                                     PyArray_DATA((PyArrayObject *)acc));
    Py_END_ALLOW_THREADS
    vaec_py_interrupt_end(&intr);
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(2, out, acc);
done:
    Py_XDECREF(out);
    Py_XDECREF(acc);
    call_args_clear(&a);
done_early:
    Py_XDECREF(dflt);
    vaec_py_release(self);
    return res;
}

/* mcem_step(x, z, step, leapfrog=10, target_accept=0.9, updates=5, lr=0.01, seed=None,
 * binarize=False) -> (mean -log p(x, z), mean acceptance); z (n, latent) and step (n,),
 * float32, updated in place. */
static PyObject *VAE_mcem_step(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "z", "step", "leapfrog", "target_accept", "updates", "lr", "seed", "binarize", NULL};
    PyObject *x, *zo, *so, *seed = Py_None;
    int leapfrog = 10, updates = 5, binarize = 0;
    float target = 0.9f;
    double lr = 0.01;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|ifidOp", kwlist, &x, &zo, &so, &leapfrog, &target, &updates, &lr,
                                     &seed, &binarize))
        return NULL;
    vaec_hmc_config cfg;
    if (parse_hmc(&cfg, leapfrog, target, 1.0f, 0, "given", 1)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyObject *res = NULL;
    if (parse_call(self, &a, x, Py_None, Py_None, seed, binarize)) goto done;
    const int64_t Z = vaec_vae_config_get(self->m)->latent_dim, n = a.x.n;
    float *z = inout_rows(zo, "z", n, Z), *step = z ? inout_rows(so, "step", n, 0) : NULL;
    if (!step) goto done;
    double loss = 0.0, accept = 0.0;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_vae_mcem_step(self->m, &a.x, &a.noise, &cfg, z, step, updates, (float)lr, &loss, &accept);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = Py_BuildValue("(dd)", loss, accept);
done:
    call_args_clear(&a);
    vaec_py_release(self);
    return res;
}

/* hmc_potential(x, z) -> (U (n,), grad U (n, latent)); hmc_leapfrog(x, z, p, step, steps)
 * -> (z, p) after the steps: the pieces, for tests. */
static PyObject *VAE_hmc_pieces(vaec_py_model *self, PyObject *args, PyObject *kw, int leap) {
    static char *kwlist[] = {"x", "z", "p", "step", "steps", "binarize", NULL};
    PyObject *x, *zo, *po = Py_None, *so = Py_None;
    int steps = 1, binarize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, leap ? "OOOO|ip" : "OO|OOip", kwlist, &x, &zo, &po, &so, &steps,
                                     &binarize))
        return NULL;
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyArrayObject *zk = NULL, *pk = NULL, *sk = NULL;
    PyObject *o1 = NULL, *o2 = NULL, *res = NULL;
    if (parse_call(self, &a, x, Py_None, Py_None, Py_None, binarize)) goto done;
    const int64_t Z = vaec_vae_config_get(self->m)->latent_dim, n = a.x.n;
    const float *z = latent_rows(zo, "z", n, Z, &zk), *p = NULL, *step = NULL;
    if (!z || (leap && (!(p = latent_rows(po, "p", n, Z, &pk)) || !(step = latent_rows(so, "step", n, 0, &sk)))))
        goto done;
    npy_intp d2[2] = {(npy_intp)n, (npy_intp)Z}, d1[1] = {(npy_intp)n};
    vaec_status st;
    if (leap) {
        if (!(o1 = PyArray_NewCopy(zk, NPY_CORDER)) || !(o2 = PyArray_NewCopy(pk, NPY_CORDER))) goto done;
        Py_BEGIN_ALLOW_THREADS
        st = vaec_vae_hmc_leapfrog(self->m, &a.x, PyArray_DATA((PyArrayObject *)o1), PyArray_DATA((PyArrayObject *)o2),
                                   step, steps);
        Py_END_ALLOW_THREADS
    } else {
        if (!(o1 = PyArray_SimpleNew(1, d1, NPY_FLOAT64)) || !(o2 = PyArray_SimpleNew(2, d2, NPY_FLOAT32))) goto done;
        Py_BEGIN_ALLOW_THREADS
        st = vaec_vae_hmc_potential(self->m, &a.x, z, PyArray_DATA((PyArrayObject *)o1),
                                    PyArray_DATA((PyArrayObject *)o2));
        Py_END_ALLOW_THREADS
    }
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(2, o1, o2);
done:
    Py_XDECREF(o1);
    Py_XDECREF(o2);
    Py_XDECREF(zk);
    Py_XDECREF(pk);
    Py_XDECREF(sk);
    call_args_clear(&a);
    vaec_py_release(self);
    return res;
}

static PyObject *VAE_hmc_potential(vaec_py_model *self, PyObject *args, PyObject *kw) {
    return VAE_hmc_pieces(self, args, kw, 0);
}
static PyObject *VAE_hmc_leapfrog(vaec_py_model *self, PyObject *args, PyObject *kw) {
    return VAE_hmc_pieces(self, args, kw, 1);
}

static PyObject *VAE_last_rec(vaec_py_model *self, PyObject *noargs) {
    if (vaec_py_ready(self)) return NULL;
    return PyFloat_FromDouble(vaec_vae_last_rec(self->m));
}

static PyObject *VAE_bound(vaec_py_model *self, PyObject *args, PyObject *kw, int iwae) {
    static char *kwlist[] = {"x", "eps", "samples", "seed", "binarize", NULL};
    PyObject *x, *eps = Py_None, *samples = Py_None, *seed = Py_None;
    int binarize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOp", kwlist, &x, &eps, &samples, &seed, &binarize))
        return NULL;
    if (vaec_py_acquire(self)) return NULL;
    call_args a;
    PyObject *res = NULL;
    if (parse_call(self, &a, x, eps, samples, seed, binarize)) goto done;
    npy_intp dims[1] = {(npy_intp)a.x.n};
    res = PyArray_SimpleNew(1, dims, NPY_FLOAT64);
    if (!res) goto done;
    double *out = (double *)PyArray_DATA((PyArrayObject *)res);
    vaec_status st;
    vaec_py_interrupt intr;   /* Ctrl-C stops the call (_common.h) */
    if (vaec_py_interrupt_begin(&intr)) { Py_CLEAR(res); goto done; }
    Py_BEGIN_ALLOW_THREADS
    st = iwae ? vaec_vae_iwae(self->m, &a.x, &a.noise, out) : vaec_vae_elbo(self->m, &a.x, &a.noise, out);
    Py_END_ALLOW_THREADS
    vaec_py_interrupt_end(&intr);
    if (st) { Py_CLEAR(res); vaec_py_raise(st); }
done:
    call_args_clear(&a);
    vaec_py_release(self);
    return res;
}

static PyObject *VAE_elbo(vaec_py_model *self, PyObject *args, PyObject *kw) { return VAE_bound(self, args, kw, 0); }
static PyObject *VAE_iwae(vaec_py_model *self, PyObject *args, PyObject *kw) { return VAE_bound(self, args, kw, 1); }

/* encode(x) -> (mu, logvar) (an autoencoder: (code, None)); code(x) -> z: mu(x) through
 * the posterior's flow, if any. Both run the encoder on x, sharing their argument checks. */
static PyObject *VAE_encoder_map(vaec_py_model *self, PyObject *args, PyObject *kw, int code) {
    static char *kwlist[] = {"x", NULL};
    PyObject *x;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &x)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_vae_config *c = vaec_vae_config_get(self->m);
    vaec_input in;
    PyArrayObject *xa = NULL;
    PyObject *mu = NULL, *lv = NULL, *res = NULL;
    if (vaec_py_convert_x(x, "x", c->input_dim, c->likelihood == VAEC_LIK_BERNOULLI, &in, &xa)) goto done;
    npy_intp dims[2] = {(npy_intp)in.n, (npy_intp)c->latent_dim};
    mu = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    /* an autoencoder has no variance: (code, None); code() returns one array */
    const int no_lv = code || c->deterministic;
    if (no_lv) Py_INCREF(Py_None);
    lv = no_lv ? Py_None : PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!mu || !lv) goto done;
    vaec_status st;
    float *mp = (float *)PyArray_DATA((PyArrayObject *)mu);
    VAEC_PY_BEGIN_ALLOW_THREADS_IF(in.n * in.dim > VAEC_PY_SMALL_WORK)
    st = code ? vaec_vae_code(self->m, &in, mp)
              : vaec_vae_encode(self->m, &in, mp, no_lv ? NULL : (float *)PyArray_DATA((PyArrayObject *)lv));
    VAEC_PY_END_ALLOW_THREADS_IF
    if (st) { vaec_py_raise(st); goto done; }
    if (code) Py_INCREF(mu);
    res = code ? mu : PyTuple_Pack(2, mu, lv);
done:
    Py_XDECREF(mu);
    Py_XDECREF(lv);
    Py_XDECREF(xa);
    vaec_py_release(self);
    return res;
}

static PyObject *VAE_encode(vaec_py_model *self, PyObject *args, PyObject *kw) { return VAE_encoder_map(self, args, kw, 0); }
static PyObject *VAE_code(vaec_py_model *self, PyObject *args, PyObject *kw) { return VAE_encoder_map(self, args, kw, 1); }

/* decode(z) -> (n, input_dim); flow(z) -> (z_K (n, latent), logdet (n,)): the two maps
 * of latent codes, sharing their argument checks. */
static PyObject *VAE_latent_map(vaec_py_model *self, PyObject *args, PyObject *kw, int flow) {
    static char *kwlist[] = {"z", NULL};
    PyObject *z;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &z)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_vae_config *c = vaec_vae_config_get(self->m);
    PyObject *out = NULL, *ld = NULL, *res = NULL;
    PyArrayObject *za = vaec_py_real_array(z, "z"), *zf = NULL;
    char expected[64];
    snprintf(expected, sizeof expected, "a 2-D array of shape (n, %lld)", (long long)c->latent_dim);
    if (!za) goto done;
    if (PyArray_NDIM(za) != 2 || PyArray_DIM(za, 1) != c->latent_dim) { vaec_py_wrong_shape(za, "z", expected); goto done; }
    if (!(zf = vaec_py_as_f32(za))) goto done;
    if (vaec_py_check_values(zf, "z", 0, "")) goto done;
    npy_intp dims[2] = {PyArray_DIM(zf, 0), flow ? (npy_intp)c->latent_dim : (npy_intp)c->input_dim};
    out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out || (flow && !(ld = PyArray_SimpleNew(1, dims, NPY_FLOAT64)))) goto done;
    vaec_status st;
    const float *zp = (const float *)PyArray_DATA(zf);
    float *op = (float *)PyArray_DATA((PyArrayObject *)out);
    double *lp = ld ? (double *)PyArray_DATA((PyArrayObject *)ld) : NULL;
    int64_t n = (int64_t)dims[0];
    Py_BEGIN_ALLOW_THREADS
    st = flow ? vaec_vae_flow_forward(self->m, zp, n, op, lp) : vaec_vae_decode(self->m, zp, n, op);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    if (!flow) Py_INCREF(out);
    res = flow ? PyTuple_Pack(2, out, ld) : out;
done:
    Py_XDECREF(out);
    Py_XDECREF(ld);
    Py_XDECREF(za);
    Py_XDECREF(zf);
    vaec_py_release(self);
    return res;
}

static PyObject *VAE_decode(vaec_py_model *self, PyObject *args, PyObject *kw) { return VAE_latent_map(self, args, kw, 0); }
static PyObject *VAE_flow(vaec_py_model *self, PyObject *args, PyObject *kw) { return VAE_latent_map(self, args, kw, 1); }

static PyObject *VAE_config(vaec_py_model *self, PyObject *noargs) {
    if (vaec_py_ready(self)) return NULL;
    const vaec_vae_config *c = vaec_vae_config_get(self->m);
    PyObject *hidden = PyTuple_New(c->n_hidden);
    if (!hidden) return NULL;
    for (int i = 0; i < c->n_hidden; i++) PyTuple_SET_ITEM(hidden, i, PyLong_FromLongLong(c->hidden[i]));
    PyObject *enc = layers_tuple(c->n_enc, c->enc), *dec = layers_tuple(c->n_dec, c->dec);
    if (!enc || !dec) {
        Py_DECREF(hidden);
        Py_XDECREF(enc);
        Py_XDECREF(dec);
        return NULL;
    }
    /* layers: the networks were given as lists (else hidden/activation made them) */
    return Py_BuildValue("{s:L,s:L,s:N,s:s,s:s,s:K,s:s,s:O,s:O,s:(LLL),s:N,s:N}", "input_dim", (long long)c->input_dim,
                         "latent_dim", (long long)c->latent_dim, "hidden", hidden,
                         "activation", c->layers ? "" : vaec_act_name(c->activation),
                         "likelihood", c->likelihood == VAEC_LIK_BERNOULLI ? "bernoulli" : "gaussian",
                         "seed", (unsigned long long)c->seed, "flow", c->flow,
                         "deterministic", c->deterministic ? Py_True : Py_False, "layers", c->layers ? Py_True : Py_False,
                         "input_shape", (long long)c->input_shape[0], (long long)c->input_shape[1],
                         (long long)c->input_shape[2], "encoder", enc, "decoder", dec);
}

static PyMethodDef VAE_methods[] = {
    {"loss_grad", (PyCFunction)(void (*)(void))VAE_loss_grad, METH_VARARGS | METH_KEYWORDS,
     "loss_grad(x, eps=None, samples=None, seed=None, binarize=False, lr=-1, iw=False, beta=1, free_bits=0,\n"
     "          score=False, baseline=0, row_offset=0, n_total=0)\n"
     "Mean negative objective (ELBO, or IWAE with iw); gradients written to the grads arena;\n"
     "with lr >= 0 also one Adam step. n_total > 0: x is rows [row_offset, row_offset + n) of a\n"
     "batch of n_total rows (their noise; sums divided by n_total; x may be empty)."},
    {"wake_sleep", (PyCFunction)(void (*)(void))VAE_wake_sleep, METH_VARARGS | METH_KEYWORDS,
     "wake_sleep(x, seed=None, binarize=False, lr=-1, dreams=0) -> (wake loss, sleep loss); gradients in grads"},
    {"last_rec", (PyCFunction)VAE_last_rec, METH_NOARGS, "mean log p(x|z) of the last loss_grad call"},
    {"hmc_sample", VAEC_PY_KW(VAE_hmc_sample),
     "hmc_sample(x, samples=1, leapfrog=10, target_accept=0.9, step_size=0.1, burn_in=100, init='prior', z0=None,\n"
     "           seed=None, binarize=False) -> (states (L, n, latent), acceptance (n,), step sizes (n,))"},
    {"hmc_log_likelihood", VAEC_PY_KW(VAE_hmc_log_likelihood),
     "hmc_log_likelihood(x, samples=1000, leapfrog=4, target_accept=0.9, step_size=0.1, burn_in=100, init='prior',\n"
     "                   seed=None, binarize=False) -> (log p(x) (n,), acceptance (n,)): Kingma & Welling's app. D"},
    {"mcem_step", VAEC_PY_KW(VAE_mcem_step),
     "mcem_step(x, z, step, leapfrog=10, target_accept=0.9, updates=5, lr=0.01, seed=None, binarize=False)\n"
     "-> (mean -log p(x, z), mean acceptance); z, step (float32) updated in place"},
    {"hmc_potential", VAEC_PY_KW(VAE_hmc_potential), "hmc_potential(x, z) -> (U (n,), grad U (n, latent))"},
    {"hmc_leapfrog", VAEC_PY_KW(VAE_hmc_leapfrog), "hmc_leapfrog(x, z, p, step, steps=1) -> (z, p) after the steps"},
    {"elbo", (PyCFunction)(void (*)(void))VAE_elbo, METH_VARARGS | METH_KEYWORDS,
     "elbo(x, eps=None, samples=None, seed=None, binarize=False) -> float64 (n,)"},
    {"iwae", (PyCFunction)(void (*)(void))VAE_iwae, METH_VARARGS | METH_KEYWORDS,
     "iwae(x, eps=None, samples=None, seed=None, binarize=False) -> float64 (n,): the k-sample bound"},
    {"encode", VAEC_PY_KW(VAE_encode), "encode(x) -> (mu, logvar)"},
    {"code", VAEC_PY_KW(VAE_code), "code(x) -> z: mu(x) through the posterior's flow, if any"},
    {"decode", VAEC_PY_KW(VAE_decode), "decode(z) -> (n, input_dim)"},
    {"flow", VAEC_PY_KW(VAE_flow), "flow(z) -> (z_K, logdet): the posterior's flow (identity without)"},
    {"config", (PyCFunction)VAE_config, METH_NOARGS, "the configuration as a dict"},
    VAEC_PY_MODEL_METHODS,
    {NULL}
};

/* ------------------------------------------------------ module functions */
/* ------------------------------------------------------------ model kinds */
/* The one table of model kinds: each kind a .vaec file can hold, the binding type that
 * holds it and that type's ops (whose load reads it). load(), file_kind() and the
 * module's KIND_* constants and MODEL_KINDS dict come from it. */
static const struct {
    uint32_t kind;
    const char *constant, *type_name;
    const vaec_py_model_ops *ops;
} model_kinds[] = {
    {VAEC_KIND_VAE, "KIND_VAE", "VAECore", &vaec_py_vae_ops},
    {VAEC_KIND_M2, "KIND_M2", "M2Core", &vaec_py_m2_ops},
    {VAEC_KIND_FLOW, "KIND_FLOW", "FlowCore", &vaec_py_flow_ops},
    {VAEC_KIND_AE, "KIND_AE", "VAECore", &vaec_py_vae_ops},   /* an Autoencoder: a VAECore, deterministic */
};
#define N_MODEL_KINDS ((int)(sizeof model_kinds / sizeof model_kinds[0]))

static int kind_index(uint32_t kind) {
    for (int i = 0; i < N_MODEL_KINDS; i++)
        if (model_kinds[i].kind == kind) return i;
    return -1;
}

/* load(path, threads=0, kind=None) -> (the file's kind, core, extra bytes or None): the
 * model in path, read by the loader of its kind, or with `kind` by that kind's loader
 * (which refuses a file of another kind, naming both). */
static PyObject *mod_load(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "threads", "kind", NULL};
    PyObject *path = NULL, *kind_obj = Py_None, *obj = NULL, *extra = NULL, *res = NULL;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|iO", kwlist, PyUnicode_FSConverter, &path, &threads, &kind_obj))
        return NULL;
    const char *p = PyBytes_AS_STRING(path);
    uint32_t kind = 0;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_file_kind(p, &kind);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    int i;
    if (kind_obj == Py_None) {
        if ((i = kind_index(kind)) < 0) {
            PyErr_Format(PyExc_ValueError, "'%s' holds a model of unknown kind %u (a newer vaec?)", p, (unsigned)kind);
            goto done;
        }
    } else {
        long want = PyLong_AsLong(kind_obj);
        if (want == -1 && PyErr_Occurred()) goto done;
        if (want < 0 || (i = kind_index((uint32_t)want)) < 0) {
            PyErr_Format(PyExc_ValueError, "kind: unknown model kind %ld", want);
            goto done;
        }
    }
    if ((obj = vaec_py_model_load(module, p, threads, model_kinds[i].type_name, model_kinds[i].ops, &extra)))
        res = Py_BuildValue("(kNN)", (unsigned long)kind, obj, extra);
done:
    Py_DECREF(path);
    return res;
}

/* file_kind(path) -> the model kind stored in a .vaec file (KIND_*) */
static PyObject *mod_file_kind(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, PyUnicode_FSConverter, &path)) return NULL;
    uint32_t kind = 0;
    vaec_status st;
    const char *p = PyBytes_AS_STRING(path);
    Py_BEGIN_ALLOW_THREADS
    st = vaec_file_kind(p, &kind);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (st) return vaec_py_raise(st);
    return PyLong_FromUnsignedLong(kind);
}

/* KIND_* constants, and MODEL_KINDS = {kind: binding type} */
static int add_model_kinds(PyObject *module) {
    PyObject *d = PyDict_New();
    if (!d) return -1;
    for (int i = 0; i < N_MODEL_KINDS; i++) {
        PyObject *k = PyLong_FromUnsignedLong(model_kinds[i].kind);
        PyObject *tp = PyObject_GetAttrString(module, model_kinds[i].type_name);
        int bad = !k || !tp || PyDict_SetItem(d, k, tp) < 0 ||
                  PyModule_AddIntConstant(module, model_kinds[i].constant, (long)model_kinds[i].kind) < 0;
        Py_XDECREF(k);
        Py_XDECREF(tp);
        if (bad) { Py_DECREF(d); return -1; }
    }
    if (PyModule_AddObject(module, "MODEL_KINDS", d) < 0) { Py_DECREF(d); return -1; }
    return 0;
}

static PyObject *mod_cpu_features(PyObject *module, PyObject *noargs) {
    return Py_BuildValue("{s:s,s:s,s:s,s:i}", "isa", vaec_isa_name(vaec_cpu_active_isa()),
                         "best_isa", vaec_isa_name(vaec_cpu_best_isa()), "features", vaec_cpu_features(),
                         "cores", vaec_cpu_count());
}

static PyObject *mod_set_isa(PyObject *module, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i <= VAEC_ISA_AVX512; i++)
        if (strcmp(name, vaec_isa_name((vaec_isa)i)) == 0)
            return PyUnicode_FromString(vaec_isa_name(vaec_cpu_set_isa((vaec_isa)i)));
    PyErr_Format(PyExc_ValueError, "isa: expected one of 'avx512', 'avx2', 'neon', 'scalar', 'naive', got '%s'", name);
    return NULL;
}

/* conv_timing(on) -> (seconds, multiply-adds) in the convolution layers since the last call;
 * then counts (or not). */
static PyObject *mod_conv_timing(PyObject *module, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    double seconds, macs;
    vaec_conv_timing(on, &seconds, &macs);
    return Py_BuildValue("(dd)", seconds, macs);
}

/* gemm_timing(on) -> (seconds, flops) spent in GEMMs since the last call; then counts
 * from zero while on (the benchmark's dense-layer figure) */
static PyObject *mod_gemm_timing(PyObject *module, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    double seconds, flops;
    vaec_gemm_timing(on, &seconds, &flops);
    return Py_BuildValue("(dd)", seconds, flops);
}

static const char *const sparse_names[] = {"off", "auto", "always"};
/* set_sparse_input(mode) -> the mode before */
static PyObject *mod_set_sparse_input(PyObject *module, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = VAEC_SPARSE_OFF; i <= VAEC_SPARSE_ALWAYS; i++)
        if (strcmp(name, sparse_names[i]) == 0) return PyUnicode_FromString(sparse_names[vaec_sparse_mode_set((vaec_sparse)i)]);
    PyErr_Format(PyExc_ValueError, "mode: expected one of 'off', 'auto', 'always', got '%s'", name);
    return NULL;
}

static PyObject *mod_sparse_input(PyObject *module, PyObject *noargs) {
    return PyUnicode_FromString(sparse_names[vaec_sparse_mode()]);
}

/* Whether two contiguous arrays' bytes overlap. */
static int bytes_overlap(PyArrayObject *x, PyArrayObject *y) {
    const char *a = PyArray_BYTES(x), *b = PyArray_BYTES(y);
    npy_intp na = PyArray_NBYTES(x), nb = PyArray_NBYTES(y);
    return na > 0 && nb > 0 && a < b + nb && b < a + na;
}

/* sgemm(A, B, transA, transB, C=None, naive=False, threads=1, calls=0, out=None) -> C = op(A) op(B)
 * (+ C), for tests and the benchmark; `out`, a C-contiguous float32 array of shape (M, N),
 * takes the result in place (the benchmark times vaec and NumPy writing the same buffer). */
static PyObject *mod_sgemm(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"A", "B", "transA", "transB", "C", "naive", "threads", "calls", "out", NULL};
    PyObject *Ao, *Bo, *Co = Py_None, *Oo = Py_None;
    int ta = 0, tb = 0, naive = 0, threads = 1, calls = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|ppOpiiO", kwlist, &Ao, &Bo, &ta, &tb, &Co, &naive, &threads, &calls,
                                     &Oo))
        return NULL;
    if (calls < 0) {
        PyErr_Format(PyExc_ValueError, "calls must be >= 0, got %d", calls);
        return NULL;
    }
    if (Co != Py_None && Oo != Py_None) {
        PyErr_SetString(PyExc_ValueError, "out: give C (to add to) or out (to write into), not both");
        return NULL;
    }
    PyArrayObject *A = NULL, *B = NULL, *C = NULL, *Ar = NULL, *Br = NULL, *Cr = NULL;
    PyObject *res = NULL;
    if (!(Ar = vaec_py_real_array(Ao, "A")) || !(Br = vaec_py_real_array(Bo, "B"))) goto done;
    if (!(A = vaec_py_as_f32(Ar)) || !(B = vaec_py_as_f32(Br))) goto done;
    if (PyArray_NDIM(A) != 2) { vaec_py_wrong_shape(A, "A", "a 2-D array"); goto done; }
    if (PyArray_NDIM(B) != 2) { vaec_py_wrong_shape(B, "B", "a 2-D array"); goto done; }
    int64_t M = ta ? PyArray_DIM(A, 1) : PyArray_DIM(A, 0), K = ta ? PyArray_DIM(A, 0) : PyArray_DIM(A, 1);
    int64_t KB = tb ? PyArray_DIM(B, 1) : PyArray_DIM(B, 0), N = tb ? PyArray_DIM(B, 0) : PyArray_DIM(B, 1);
    if (K != KB) { PyErr_SetString(PyExc_ValueError, "B: inner dimensions of op(A) and op(B) differ"); goto done; }
    float beta = 0.0f;
    if (Co != Py_None) {
        if (!(Cr = vaec_py_real_array(Co, "C"))) goto done;
        C = (PyArrayObject *)PyArray_FromAny((PyObject *)Cr, PyArray_DescrFromType(NPY_FLOAT32), 2, 2,
                                             NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_ENSURECOPY |
                                             NPY_ARRAY_FORCECAST, NULL);
        if (!C) goto done;
        if (PyArray_DIM(C, 0) != M || PyArray_DIM(C, 1) != N) { vaec_py_wrong_shape(C, "C", "shape (M, N)"); goto done; }
        beta = 1.0f;
    } else if (Oo != Py_None) {
        if (!inout_rows(Oo, "out", M, N)) goto done;
        C = (PyArrayObject *)Oo;
        Py_INCREF(C);
        if (bytes_overlap(C, A) || bytes_overlap(C, B)) {
            PyErr_SetString(PyExc_ValueError, "out: must not share memory with A or B");
            goto done;
        }
    } else {
        npy_intp dims[2] = {(npy_intp)M, (npy_intp)N};
        C = (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_FLOAT32, 0);
        if (!C) goto done;
    }
    vaec_pool *pool = NULL;
    if (!naive && threads > 1) {
        vaec_status st = vaec_pool_create(&pool, threads);
        if (st) { vaec_py_raise(st); goto done; }
    }
    const float *a = PyArray_DATA(A), *b = PyArray_DATA(B);
    float *c = PyArray_DATA(C);
    int64_t lda = PyArray_DIM(A, 1), ldb = PyArray_DIM(B, 1);
    double per_call = 0.0;
    Py_BEGIN_ALLOW_THREADS
    if (naive) vaec_sgemm_naive(ta, tb, M, N, K, a, lda, b, ldb, beta, c, N);
    else vaec_sgemm(pool, ta, tb, M, N, K, a, lda, b, ldb, beta, c, N);
    if (calls > 0) {   /* the benchmark's timing: `calls` more products on the same pool (C = op(A) op(B)) */
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < calls; i++)
            if (naive) vaec_sgemm_naive(ta, tb, M, N, K, a, lda, b, ldb, 0.0f, c, N);
            else vaec_sgemm(pool, ta, tb, M, N, K, a, lda, b, ldb, 0.0f, c, N);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        per_call = ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) / calls;
    }
    Py_END_ALLOW_THREADS
    vaec_pool_destroy(pool);
    res = calls > 0 ? Py_BuildValue("Nd", (PyObject *)C, per_call) : (PyObject *)C;
    C = NULL;
done:
    Py_XDECREF(A); Py_XDECREF(B); Py_XDECREF(C); Py_XDECREF(Ar); Py_XDECREF(Br); Py_XDECREF(Cr);
    return res;
}

/* act(name, x, backward_of=None): forward y = act(x), or d * act'(y) with d = x and y given. */
static PyObject *mod_act(PyObject *module, PyObject *args) {
    PyObject *nameo, *xo, *yo = Py_None;
    if (!PyArg_ParseTuple(args, "UO|O", &nameo, &xo, &yo)) return NULL;
    vaec_act act;
    if (PyUnicode_CompareWithASCIIString(nameo, "identity") == 0) act = VAEC_ACT_IDENTITY;
    else if (vaec_py_parse_act(nameo, &act)) return NULL;
    PyArrayObject *xr = vaec_py_real_array(xo, "x"), *x = NULL, *yr = NULL, *y = NULL;
    PyObject *res = NULL;
    if (!xr) return NULL;
    x = (PyArrayObject *)PyArray_FromAny((PyObject *)xr, PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
                                         NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_ENSURECOPY |
                                         NPY_ARRAY_FORCECAST, NULL);
    if (!x) goto done;
    int64_t n = (int64_t)PyArray_SIZE(x);
    if (yo == Py_None) {
        vaec_act_forward(act, PyArray_DATA(x), PyArray_DATA(x), n);
    } else {
        if (!(yr = vaec_py_real_array(yo, "y")) || !(y = vaec_py_as_f32(yr))) goto done;
        if (PyArray_SIZE(y) != n) { PyErr_SetString(PyExc_ValueError, "y: must have the size of x"); goto done; }
        vaec_act_backward(act, PyArray_DATA(x), PyArray_DATA(y), n);
    }
    res = (PyObject *)x;
    x = NULL;
done:
    Py_XDECREF(xr); Py_XDECREF(x); Py_XDECREF(yr); Py_XDECREF(y);
    return res;
}

/* dense(x, W, b, act, fused, threads, dout), for tests: the dense layer's fused kernels
 * (fused true) or their unfused _naive references on the active path. Forward (dout
 * None): act(x W^T + b). Backward: (din, dW, db) with din = (dout W) * act'(x), x being
 * the activation's output, dW = dout^T x, db = colsum(dout). b may be None. */
static PyObject *mod_dense(PyObject *module, PyObject *args) {
    PyObject *xo, *Wo, *bo, *nameo, *douto;
    int fused, threads;
    if (!PyArg_ParseTuple(args, "OOOUpiO", &xo, &Wo, &bo, &nameo, &fused, &threads, &douto)) return NULL;
    vaec_act act;
    if (PyUnicode_CompareWithASCIIString(nameo, "identity") == 0) act = VAEC_ACT_IDENTITY;
    else if (vaec_py_parse_act(nameo, &act)) return NULL;
    if (threads < 1 || threads > 256) { PyErr_SetString(PyExc_ValueError, "threads: 1 to 256"); return NULL; }
    PyArrayObject *r[4] = {NULL}, *a[4] = {NULL};  /* x, W, b, dout */
    PyObject *objs[4] = {xo, Wo, bo, douto}, *res = NULL, *o1 = NULL, *o2 = NULL, *o3 = NULL;
    const char *names[4] = {"x", "W", "b", "dout"};
    vaec_pool *pool = NULL;
    for (int i = 0; i < 4; i++) {
        if (objs[i] == Py_None && (i == 2 || i == 3)) continue;
        if (!(r[i] = vaec_py_real_array(objs[i], names[i])) || !(a[i] = vaec_py_as_f32(r[i]))) goto done;
    }
    if (PyArray_NDIM(a[0]) != 2) { vaec_py_wrong_shape(a[0], "x", "(B, IN)"); goto done; }
    int64_t B = PyArray_DIM(a[0], 0), IN = PyArray_DIM(a[0], 1);
    if (PyArray_NDIM(a[1]) != 2 || PyArray_DIM(a[1], 1) != IN) { vaec_py_wrong_shape(a[1], "W", "(OUT, IN)"); goto done; }
    int64_t OUT = PyArray_DIM(a[1], 0);
    if (a[2] && (PyArray_NDIM(a[2]) != 1 || PyArray_DIM(a[2], 0) != OUT)) { vaec_py_wrong_shape(a[2], "b", "(OUT,)"); goto done; }
    if (a[3] && (PyArray_NDIM(a[3]) != 2 || PyArray_DIM(a[3], 0) != B || PyArray_DIM(a[3], 1) != OUT)) {
        vaec_py_wrong_shape(a[3], "dout", "(B, OUT)");
        goto done;
    }
    if (threads > 1) {
        vaec_status st = vaec_pool_create(&pool, threads);
        if (st) { vaec_py_raise(st); goto done; }
    }
    const float *x = PyArray_DATA(a[0]), *W = PyArray_DATA(a[1]), *b = a[2] ? PyArray_DATA(a[2]) : NULL;
    if (!a[3]) {
        npy_intp dims[2] = {(npy_intp)B, (npy_intp)OUT};
        if (!(o1 = PyArray_ZEROS(2, dims, NPY_FLOAT32, 0))) goto done;
        float *out = PyArray_DATA((PyArrayObject *)o1);
        Py_BEGIN_ALLOW_THREADS
        if (fused) vaec_dense_forward_act_strided(pool, out, OUT, x, IN, W, 0, b, act, B, IN, OUT);
        else vaec_dense_forward_act_strided_naive(pool, out, OUT, x, IN, W, 0, b, act, B, IN, OUT);
        Py_END_ALLOW_THREADS
        res = o1;
        o1 = NULL;
    } else {
        npy_intp d1[2] = {(npy_intp)B, (npy_intp)IN}, d2[2] = {(npy_intp)OUT, (npy_intp)IN}, d3[1] = {(npy_intp)OUT};
        if (!(o1 = PyArray_ZEROS(2, d1, NPY_FLOAT32, 0)) || !(o2 = PyArray_ZEROS(2, d2, NPY_FLOAT32, 0)) ||
            !(o3 = PyArray_ZEROS(1, d3, NPY_FLOAT32, 0)))
            goto done;
        float *din = PyArray_DATA((PyArrayObject *)o1), *dW = PyArray_DATA((PyArrayObject *)o2);
        float *db = PyArray_DATA((PyArrayObject *)o3);
        const float *dout = PyArray_DATA(a[3]);
        Py_BEGIN_ALLOW_THREADS
        if (fused) vaec_dense_backward_act_strided(pool, din, IN, dW, db, dout, OUT, x, IN, W, act, B, IN, OUT);
        else vaec_dense_backward_act_strided_naive(pool, din, IN, dW, db, dout, OUT, x, IN, W, 0, act, B, IN, OUT);
        Py_END_ALLOW_THREADS
        res = PyTuple_Pack(3, o1, o2, o3);
    }
done:
    vaec_pool_destroy(pool);
    for (int i = 0; i < 4; i++) { Py_XDECREF(r[i]); Py_XDECREF(a[i]); }
    Py_XDECREF(o1); Py_XDECREF(o2); Py_XDECREF(o3);
    return res;
}

static PyObject *mod_rng(PyObject *module, PyObject *args) {
    const char *kind;
    long long n;
    unsigned long long seed, stream, offset;
    if (!PyArg_ParseTuple(args, "sLKKK", &kind, &n, &seed, &stream, &offset)) return NULL;
    if (n < 0) { PyErr_SetString(PyExc_ValueError, "n: must be >= 0"); return NULL; }
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *out = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!out) return NULL;
    float *p = PyArray_DATA((PyArrayObject *)out);
    if (strcmp(kind, "normal") == 0) vaec_rng_normal(p, n, seed, stream, offset);
    else if (strcmp(kind, "uniform") == 0) vaec_rng_uniform(p, n, seed, stream, offset);
    else { Py_DECREF(out); PyErr_SetString(PyExc_ValueError, "kind: 'normal' or 'uniform'"); return NULL; }
    return out;
}

/* The pool of a machine probe (peak_gflops, roundtrip_ns): its own threads, made per call;
 * NULL with the exception set on a bad thread count or no memory. */
static vaec_pool *probe_pool(int threads) {
    if (threads < 1 || threads > 256) {
        PyErr_SetString(PyExc_ValueError, "threads: 1 to 256");
        return NULL;
    }
    vaec_pool *pool = NULL;
    vaec_status st = vaec_pool_create(&pool, threads);
    if (st) vaec_py_raise(st);
    return pool;
}

static PyObject *mod_peak(PyObject *module, PyObject *args) {
    int threads = 1;
    double seconds = 0.5;
    if (!PyArg_ParseTuple(args, "|id", &threads, &seconds)) return NULL;
    vaec_pool *pool = probe_pool(threads);
    if (!pool) return NULL;
    double g;
    Py_BEGIN_ALLOW_THREADS
    g = vaec_cpu_peak_gflops(pool, seconds);
    Py_END_ALLOW_THREADS
    vaec_pool_destroy(pool);
    return PyFloat_FromDouble(g);
}

static PyObject *mod_roundtrip(PyObject *module, PyObject *args) {
    int threads = 2;
    long long rounds = 20000;
    if (!PyArg_ParseTuple(args, "|iL", &threads, &rounds)) return NULL;
    if (rounds < 1 || rounds > 1000000) { PyErr_SetString(PyExc_ValueError, "rounds: 1 to 1000000"); return NULL; }
    vaec_pool *pool = probe_pool(threads);
    if (!pool) return NULL;
    double ns;
    Py_BEGIN_ALLOW_THREADS
    ns = vaec_pool_roundtrip_ns(pool, rounds);
    Py_END_ALLOW_THREADS
    vaec_pool_destroy(pool);
    if (ns < 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(ns);
}

static PyMethodDef module_methods[] = {
    {"peak_gflops", mod_peak, METH_VARARGS, "peak_gflops(threads=1, seconds=0.5): measured FP32 FMA peak"},
    {"roundtrip_ns", mod_roundtrip, METH_VARARGS,
     "roundtrip_ns(threads=2, rounds=20000): a cache line's round trip between two of the pool's threads, "
     "in ns (None on one thread, when no worker took part within 50 ms, or when nothing was timed within a second)"},
    {"load", VAEC_PY_KW(mod_load),
     "load(path, threads=0, kind=None) -> (kind, core, extra bytes or None): a model file of any kind"},
    {"file_kind", VAEC_PY_KW(mod_file_kind), "file_kind(path) -> model kind of a .vaec file (KIND_*)"},
    {"cpu_features", mod_cpu_features, METH_NOARGS, "the kernel path in use and the CPU's features"},
    {"set_isa", mod_set_isa, METH_VARARGS, "set_isa(name) -> the path now active (never above the CPU's)"},
    {"set_sparse_input", mod_set_sparse_input, METH_VARARGS, "set_sparse_input(mode) -> the mode before"},
    {"gemm_timing", mod_gemm_timing, METH_VARARGS, "gemm_timing(on) -> (seconds, flops) in GEMMs since the last call"},
    {"conv_timing", mod_conv_timing, METH_VARARGS,
     "conv_timing(on) -> (seconds, multiply-adds) in the convolution layers since the last call"},
    {"sparse_input", mod_sparse_input, METH_NOARGS, "sparse_input() -> 'off', 'auto' or 'always'"},
    {"sgemm", (PyCFunction)(void (*)(void))mod_sgemm, METH_VARARGS | METH_KEYWORDS,
     "GEMM, for tests; with calls=n also (C, seconds per call of n more products on one pool), for the benchmark"},
    {"act", mod_act, METH_VARARGS, "activation forward/backward, for tests"},
    {"dense", mod_dense, METH_VARARGS, "dense(x, W, b, act, fused, threads, dout): the dense layer's kernels, for tests"},
    {"rng", mod_rng, METH_VARARGS, "rng(kind, n, seed, stream, offset): the counter-based RNG, for tests"},
    {NULL}
};

/* the other models' types, each registered by its own binding file */
int vaec_py_add_flow(PyObject *module);
int vaec_py_add_m2(PyObject *module);

static int module_exec(PyObject *module) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    if (vaec_py_add_flow(module) < 0 || vaec_py_add_m2(module) < 0) return -1;
    if (vaec_py_model_add_type(module, "vaec._core.VAECore", "The C model behind vaec.VAE (use vaec.VAE).", VAE_new,
                               VAE_init, VAE_methods) < 0)
        return -1;
    if (add_model_kinds(module) < 0) return -1;
    if (PyModule_AddStringConstant(module, "c_version", VAEC_VERSION_STRING) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "vaec._core", "The C core of vaec (use the vaec package).", 0,
    module_methods, module_slots, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&module_def); }
