/* _common.c -- the shared converters of the binding (see _common.h). */
#include "_common.h"
#include <signal.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- errors */
PyObject *vaec_py_raise(vaec_status st) {
    const char *msg = vaec_last_error();
    switch (st) {
    case VAEC_ERR_NOMEM: PyErr_SetString(PyExc_MemoryError, msg); break;
    case VAEC_ERR_IO:
    case VAEC_ERR_NOTFOUND: {
        /* OSError(errno, message): Python picks the subclass (PermissionError, ...) and e.errno
         * says ENOSPC, EROFS, ... */
        int err = vaec_last_errno();
        PyObject *args = err ? Py_BuildValue("(is)", err, msg) : NULL;
        if (args) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        } else {
            PyErr_SetString(st == VAEC_ERR_IO ? PyExc_OSError : PyExc_FileNotFoundError, msg);
        }
        break;
    }
    case VAEC_ERR_NONFINITE: PyErr_SetString(PyExc_FloatingPointError, msg); break;
    case VAEC_ERR_INTERRUPTED:
        /* Python's handler was tripped with the request: it raises KeyboardInterrupt */
        if (PyErr_CheckSignals() == 0) PyErr_SetNone(PyExc_KeyboardInterrupt);
        break;
    default: PyErr_SetString(PyExc_ValueError, msg); break;
    }
    return NULL;
}

/* ------------------------------------------------------- Ctrl-C (_common.h) */
static PyOS_sighandler_t chained_sigint;   /* Python's C-level SIGINT handler, while ours is in */

static void on_sigint(int sig) {
    vaec_interrupt_request();
    PyOS_sighandler_t h = chained_sigint;
    if (h && h != SIG_IGN && h != SIG_DFL) h(sig);
}

/* Whether this is the main thread and SIGINT has Python's default handler. */
static int default_sigint_here(void) {
    static PyObject *getsignal, *default_handler;
    static unsigned long main_ident;
    if (!getsignal) {
        PyObject *sig = PyImport_ImportModule("signal"), *th = PyImport_ImportModule("threading");
        PyObject *mt = th ? PyObject_CallMethod(th, "main_thread", NULL) : NULL;
        PyObject *ident = mt ? PyObject_GetAttrString(mt, "ident") : NULL;
        if (sig && ident) {
            main_ident = PyLong_AsUnsignedLong(ident);
            default_handler = PyObject_GetAttrString(sig, "default_int_handler");
            getsignal = default_handler ? PyObject_GetAttrString(sig, "getsignal") : NULL;
        }
        Py_XDECREF(sig);
        Py_XDECREF(th);
        Py_XDECREF(mt);
        Py_XDECREF(ident);
        if (!getsignal) {
            PyErr_Clear();
            return 0;
        }
    }
    if (PyThread_get_thread_ident() != main_ident) return 0;
    PyObject *h = PyObject_CallFunction(getsignal, "i", SIGINT);
    int yes = h == default_handler;
    Py_XDECREF(h);
    PyErr_Clear();
    return yes;
}

int vaec_py_interrupt_begin(vaec_py_interrupt *s) {
    s->armed = 0;
    if (!default_sigint_here()) return 0;
    chained_sigint = PyOS_getsig(SIGINT);
    s->prev = PyOS_setsig(SIGINT, on_sigint);
    vaec_interrupt_arm(1);
    s->armed = 1;
    if (PyErr_CheckSignals() < 0) {   /* a Ctrl-C that came just before */
        vaec_py_interrupt_end(s);
        return -1;
    }
    return 0;
}

void vaec_py_interrupt_end(vaec_py_interrupt *s) {
    if (!s->armed) return;
    vaec_interrupt_arm(0);
    PyOS_setsig(SIGINT, s->prev);
    s->armed = 0;
}

/* ---------------------------------------------------------- converters */
/* A real-valued array (bool, integer or float); anything else is a TypeError. */
PyArrayObject *vaec_py_real_array(PyObject *obj, const char *name) {
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an array, got None", name);
        return NULL;
    }
    PyArrayObject *a;
    if (PyArray_Check(obj)) {
        Py_INCREF(obj);
        a = (PyArrayObject *)obj;
    } else {
        a = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
        if (!a) {
            if (PyErr_ExceptionMatches(PyExc_ValueError)) {  /* ragged nesting and the like */
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "%s: expected a rectangular array of numbers", name);
            }
            return NULL;
        }
    }
    char kind = PyArray_DESCR(a)->kind;
    if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f') {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s: expected a real-valued numeric array (float32 or uint8 "
                     "preferred), got dtype %U", name, d ? d : Py_None);
        Py_XDECREF(d);
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *shape_str(PyArrayObject *a) {
    PyObject *t = PyTuple_New(PyArray_NDIM(a));
    if (!t) return NULL;
    for (int i = 0; i < PyArray_NDIM(a); i++) PyTuple_SET_ITEM(t, i, PyLong_FromSsize_t(PyArray_DIM(a, i)));
    PyObject *s = PyObject_Str(t);
    Py_DECREF(t);
    return s;
}

int vaec_py_wrong_shape(PyArrayObject *a, const char *name, const char *expected) {
    PyObject *s = shape_str(a);
    PyErr_Format(PyExc_ValueError, "%s: expected %s, got shape %U", name, expected, s ? s : Py_None);
    Py_XDECREF(s);
    return -1;
}

/* float32 contiguous copy-or-view of a real array. float64 is converted here rather than
 * by NumPy's cast, so values beyond float32's range become +-inf (reported by
 * vaec_py_check_values) without a RuntimeWarning from the cast. */
PyArrayObject *vaec_py_as_f32(PyArrayObject *a) {
    if (PyArray_TYPE(a) == NPY_FLOAT64) {
        PyArrayObject *d = (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(NPY_FLOAT64), 0, 0,
                                                            NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
        if (!d) return NULL;
        PyArrayObject *f = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(d), PyArray_DIMS(d), NPY_FLOAT32);
        if (f) {
            const double *src = PyArray_DATA(d);
            float *dst = PyArray_DATA(f);
            npy_intp n = PyArray_SIZE(d);
            Py_BEGIN_ALLOW_THREADS
            for (npy_intp i = 0; i < n; i++) {
                double v = src[i];
                dst[i] = fabs(v) <= (double)FLT_MAX ? (float)v : (v != v ? NAN : (v > 0 ? INFINITY : -INFINITY));
            }
            Py_END_ALLOW_THREADS
        }
        Py_DECREF(d);
        return f;
    }
    return (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(NPY_FLOAT32), 0, 0,
                                            NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST, NULL);
}

/* Check a float32 array for NaN/Inf and (optionally) [0,1]; GIL released for a long scan. */
int vaec_py_check_values(PyArrayObject *f, const char *name, int unit_range, const char *why) {
    const float *p = (const float *)PyArray_DATA(f);
    int64_t n = (int64_t)PyArray_SIZE(f), bad;
    VAEC_PY_BEGIN_ALLOW_THREADS_IF(n > VAEC_PY_SMALL_WORK)
    bad = vaec_check_range(p, n, 0.0f, 1.0f, unit_range);
    VAEC_PY_END_ALLOW_THREADS_IF
    if (bad < 0) return 0;
    int64_t cols = PyArray_NDIM(f) >= 2 ? (int64_t)PyArray_DIM(f, PyArray_NDIM(f) - 1) : 1;
    if (cols < 1) cols = 1;
    float v = p[bad];
    PyObject *fv = PyFloat_FromDouble((double)v);
    PyObject *fs = fv ? PyObject_Repr(fv) : NULL;
    if (v != v || v - v != 0.0f)
        PyErr_Format(PyExc_ValueError, "%s: contains %U at flat index %lld (row %lld, column %lld); "
                     "expected finite values (within float32's range)", name, fs, (long long)bad, (long long)(bad / cols), (long long)(bad % cols));
    else
        PyErr_Format(PyExc_ValueError, "%s: values must be in [0, 1]%s; found %U at row %lld, column %lld "
                     "(uint8 images are scaled by 1/255 automatically)", name, why, fs,
                     (long long)(bad / cols), (long long)(bad % cols));
    Py_XDECREF(fv);
    Py_XDECREF(fs);
    return -1;
}

/* A data matrix (n, dim): uint8 or float32 C-contiguous are used in place; other real
 * dtypes or layouts are converted once. `*keep` holds the reference to release. */
int vaec_py_convert_x(PyObject *obj, const char *name, int64_t dim, int unit_range, vaec_input *in,
                     PyArrayObject **keep) {
    *keep = NULL;
    PyArrayObject *a = vaec_py_real_array(obj, name);
    if (!a) return -1;
    char expected[96];
    snprintf(expected, sizeof expected, "a 2-D array of shape (n, %lld)", (long long)dim);
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 1) != dim) {
        vaec_py_wrong_shape(a, name, expected);
        Py_DECREF(a);
        return -1;
    }
    PyArrayObject *c;
    int is_u8 = PyArray_TYPE(a) == NPY_UINT8;
    if (is_u8) {
        c = (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(NPY_UINT8), 0, 0,
                                             NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    } else {
        c = vaec_py_as_f32(a);
    }
    Py_DECREF(a);
    if (!c) return -1;
    if (!is_u8 && vaec_py_check_values(c, name, unit_range, " for a Bernoulli likelihood")) {
        Py_DECREF(c);
        return -1;
    }
    in->data = PyArray_DATA(c);
    in->dtype = is_u8 ? VAEC_U8 : VAEC_F32;
    in->n = (int64_t)PyArray_DIM(c, 0);
    in->dim = dim;
    in->binarize = 0;
    *keep = c;
    return 0;
}

/* seed: None or a non-negative integer < 2^64. */
int vaec_py_convert_seed(PyObject *obj, int *use, uint64_t *seed) {
    *use = 0;
    *seed = 0;
    if (obj == NULL || obj == Py_None) return 0;
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "seed: expected None or a non-negative integer, got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *i = PyNumber_Index(obj);
    if (!i) return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(i);
    Py_DECREF(i);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed: expected an integer in [0, 2**64)");
        return -1;
    }
    *use = 1;
    *seed = v;
    return 0;
}

static int convert_samples(PyObject *obj, int *L) {
    if (obj == NULL || obj == Py_None) { *L = 1; return 0; }
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "samples: expected a positive integer, got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 1 || v > 1000000) {
        PyErr_Format(PyExc_ValueError, "samples: expected an integer between 1 and 1000000, got %ld", v);
        return -1;
    }
    *L = (int)v;
    return 0;
}

/* "a, b, c" of the first ndim dims */
static void dims_text(char *buf, size_t size, int ndim, const int64_t *dims) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)dims[i]);
}

int vaec_py_convert_noise(PyObject *eps, PyObject *samples, PyObject *seed, const char *name, int ndim,
                          const int64_t *dims, int samples_dim, vaec_noise *noise, PyArrayObject **keep) {
    memset(noise, 0, sizeof *noise);
    *keep = NULL;
    int L = 1;
    if (eps != NULL && eps != Py_None) {
        PyArrayObject *a = vaec_py_real_array(eps, name);
        if (!a) return -1;
        int lead = samples_dim && PyArray_NDIM(a) == ndim + 1;
        int ok = PyArray_NDIM(a) == ndim + lead && (!lead || PyArray_DIM(a, 0) >= 1);
        for (int i = 0; ok && i < ndim; i++) ok = PyArray_DIM(a, i + lead) == dims[i];
        if (!ok) {
            char d[96], expected[224];
            dims_text(d, sizeof d, ndim, dims);
            if (samples_dim) snprintf(expected, sizeof expected, "shape (samples, %s) or (%s)", d, d);
            else snprintf(expected, sizeof expected, "shape (%s)", d);
            vaec_py_wrong_shape(a, name, expected);
            Py_DECREF(a);
            return -1;
        }
        if (lead && PyArray_DIM(a, 0) > 1000000) {
            PyErr_Format(PyExc_ValueError, "%s: too many samples", name);
            Py_DECREF(a);
            return -1;
        }
        PyArrayObject *c = vaec_py_as_f32(a);
        Py_DECREF(a);
        if (!c) return -1;
        *keep = c;
        if (vaec_py_check_values(c, name, 0, "")) goto fail;
        L = lead ? (int)PyArray_DIM(c, 0) : 1;
        if (samples && samples != Py_None) {
            int Ls;
            if (convert_samples(samples, &Ls)) goto fail;
            if (Ls != L) {
                PyErr_Format(PyExc_ValueError, "samples: %d does not match %s, which holds %d sample(s)", Ls, name, L);
                goto fail;
            }
        }
        noise->eps = (const float *)PyArray_DATA(c);
    } else if (convert_samples(samples, &L)) {
        return -1;
    }
    noise->samples = L;
    if (vaec_py_convert_seed(seed, &noise->use_seed, &noise->seed)) goto fail;
    return 0;
fail:
    Py_CLEAR(*keep);
    noise->eps = NULL;
    return -1;
}

int vaec_py_parse_act(PyObject *s, vaec_act *out) {
    for (int i = 1; i < VAEC_ACT_COUNT; i++)
        if (PyUnicode_CompareWithASCIIString(s, vaec_act_name((vaec_act)i)) == 0) { *out = (vaec_act)i; return 0; }
    PyErr_Format(PyExc_ValueError, "activation: expected one of 'tanh', 'relu', 'softplus', 'sigmoid', "
                 "'elu', 'leaky_relu', got %R", s);
    return -1;
}

int vaec_py_parse_likelihood(PyObject *s, vaec_likelihood *out) {
    if (PyUnicode_CompareWithASCIIString(s, "bernoulli") == 0) *out = VAEC_LIK_BERNOULLI;
    else if (PyUnicode_CompareWithASCIIString(s, "gaussian") == 0) *out = VAEC_LIK_GAUSSIAN;
    else {
        PyErr_Format(PyExc_ValueError, "likelihood: expected 'bernoulli' or 'gaussian', got %R", s);
        return -1;
    }
    return 0;
}

int vaec_py_parse_widths(PyObject *obj, const char *name, int *n, int64_t *out) {
    char msg[80];
    snprintf(msg, sizeof msg, "%s: expected a sequence of layer widths", name);
    PyObject *seq = PySequence_Fast(obj, msg);
    if (!seq) return -1;
    int ok = 0;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (k > VAEC_MAX_HIDDEN) {
        PyErr_Format(PyExc_ValueError, "%s: at most %d layers, got %zd", name, VAEC_MAX_HIDDEN, k);
        goto done;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        long long w = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (w == -1 && PyErr_Occurred()) goto done;
        out[i] = w;
    }
    *n = (int)k;
    ok = 1;
done:
    Py_DECREF(seq);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------- arenas */
PyObject *vaec_py_arena_view(PyObject *owner, vaec_arena *a, const char *which) {
    float *p;
    if (strcmp(which, "params") == 0) p = a->params;
    else if (strcmp(which, "grads") == 0) p = a->grads;
    else if (strcmp(which, "adam_m") == 0) p = a->adam_m;
    else if (strcmp(which, "adam_v") == 0) p = a->adam_v;
    else { PyErr_Format(PyExc_ValueError, "arena: unknown buffer '%s'", which); return NULL; }
    npy_intp dims[1] = {(npy_intp)a->n};
    PyObject *arr = PyArray_SimpleNewFromData(1, dims, NPY_FLOAT32, p);
    if (!arr) return NULL;
    Py_INCREF(owner);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) { Py_DECREF(arr); return NULL; }
    return arr;
}

PyObject *vaec_py_arena_tensors(const vaec_arena *a) {
    PyObject *list = PyList_New(a->ntensors);
    if (!list) return NULL;
    for (int i = 0; i < a->ntensors; i++) {
        const vaec_tensor_info *t = &a->tensors[i];
        PyObject *shape = PyTuple_New(t->ndim);
        for (int k = 0; shape && k < t->ndim; k++) {
            PyObject *d = PyLong_FromLongLong(t->shape[k]);
            if (!d) { Py_CLEAR(shape); break; }
            PyTuple_SET_ITEM(shape, k, d);
        }
        PyObject *item = shape ? Py_BuildValue("(sLNO)", t->name, (long long)t->offset, shape,
                                               t->transposed ? Py_True : Py_False) : NULL;
        if (!item) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static const char *const optimizer_names[] = {"adam", "adagrad"};

PyObject *vaec_py_arena_state(const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter, int threads) {
    return Py_BuildValue("{s:L,s:f,s:f,s:f,s:K,s:K,s:i,s:s,s:f}", "step", (long long)a->step, "beta1",
                         (double)a->adam.beta1, "beta2", (double)a->adam.beta2, "adam_eps", (double)a->adam.eps,
                         "rng_seed", (unsigned long long)rng_seed, "rng_counter", (unsigned long long)rng_counter,
                         "threads", threads, "optimizer", optimizer_names[a->optimizer == VAEC_OPT_ADAGRAD],
                         "weight_decay", (double)a->weight_decay);
}

PyObject *vaec_py_arena_set_optimizer(vaec_arena *a, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"optimizer", "weight_decay", NULL};
    const char *name = NULL;
    float wd = a->weight_decay;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|zf", kwlist, &name, &wd)) return NULL;
    vaec_optimizer opt = a->optimizer;
    if (name) {
        if (strcmp(name, "adam") == 0) opt = VAEC_OPT_ADAM;
        else if (strcmp(name, "adagrad") == 0) opt = VAEC_OPT_ADAGRAD;
        else return PyErr_Format(PyExc_ValueError, "optimizer: expected 'adam' or 'adagrad', got '%s'", name);
    }
    vaec_status st = vaec_arena_optimizer_set(a, opt, wd);
    if (st) return vaec_py_raise(st);
    Py_RETURN_NONE;
}

PyObject *vaec_py_arena_set_adam(vaec_arena *a, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"beta1", "beta2", "eps", NULL};
    vaec_adam_config c = a->adam;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|fff", kwlist, &c.beta1, &c.beta2, &c.eps)) return NULL;
    vaec_status st = vaec_arena_adam_set(a, c);
    if (st) return vaec_py_raise(st);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------- model types */
int vaec_py_ready(vaec_py_model *self) {
    if (!self->m) {
        PyErr_Format(PyExc_RuntimeError, "the %s is not initialised", self->ops->what);
        return -1;
    }
    return 0;
}

/* The busy flag is only read and written with the GIL held, so it needs no atomics: it
 * keeps a second thread out while the first runs C code on the model without the GIL. */
int vaec_py_acquire(vaec_py_model *self) {
    if (vaec_py_ready(self)) return -1;
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError, "the %s is in use by another thread", self->ops->what);
        return -1;
    }
    self->busy = 1;
    return 0;
}

void vaec_py_release(vaec_py_model *self) { self->busy = 0; }

PyObject *vaec_py_model_new(PyTypeObject *tp, const vaec_py_model_ops *ops) {
    vaec_py_model *self = (vaec_py_model *)tp->tp_alloc(tp, 0);
    if (self) self->ops = ops;
    return (PyObject *)self;
}

/* A second __init__ is refused: the old model may be in use by a call running without the
 * GIL, and NumPy views of its arena may be alive even when it is idle. */
int vaec_py_model_install(vaec_py_model *self, void *m) {
    if (self->busy) {
        self->ops->destroy(m);
        PyErr_Format(PyExc_RuntimeError, "the %s is in use by another thread", self->ops->what);
        return -1;
    }
    if (self->m) {
        /* NumPy views of the old arena (arena()) keep this object alive, not its model:
         * replacing the model would leave them pointing at freed memory */
        self->ops->destroy(m);
        PyErr_Format(PyExc_RuntimeError, "the %s is already initialised; create a new object instead",
                     self->ops->what);
        return -1;
    }
    self->m = m;
    return 0;
}

static void model_dealloc(vaec_py_model *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->m) self->ops->destroy(self->m);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* A heap type's instances must visit their type; they hold no other Python object. */
static int model_traverse(vaec_py_model *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    return 0;
}

PyObject *vaec_py_model_load(PyObject *module, const char *path, int threads, const char *type_name,
                             const vaec_py_model_ops *ops, PyObject **extra) {
    PyObject *obj = NULL;
    PyTypeObject *tp = NULL;
    void *m = NULL, *ex = NULL;
    uint32_t ex_len = 0;
    if (extra) *extra = NULL;
    /* the type first: a module without it fails before the file is read */
    if (!(tp = (PyTypeObject *)PyObject_GetAttrString(module, type_name))) goto done;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ops->load(&m, path, threads, extra ? &ex : NULL, &ex_len);
    Py_END_ALLOW_THREADS
    if (st) {
        vaec_py_raise(st);
        goto done;
    }
    if (!(obj = vaec_py_model_new(tp, ops))) goto done;
    ((vaec_py_model *)obj)->m = m;
    m = NULL;
    if (extra) {
        *extra = ex ? PyBytes_FromStringAndSize(ex, ex_len) : (Py_INCREF(Py_None), Py_None);
        if (!*extra) Py_CLEAR(obj);
    }
done:
    if (m) ops->destroy(m);
    free(ex);
    Py_XDECREF(tp);
    return obj;
}

/* --------------------------------------------- methods of every model type */
/* A 1-D float32 view of one of the arena's buffers; the array keeps the model alive. */
PyObject *vaec_py_model_arena(PyObject *op, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"which", NULL};
    vaec_py_model *self = (vaec_py_model *)op;
    const char *which;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s", kwlist, &which)) return NULL;
    if (vaec_py_ready(self)) return NULL;
    return vaec_py_arena_view(op, self->ops->arena(self->m), which);
}

PyObject *vaec_py_model_tensors(PyObject *op, PyObject *noargs) {
    vaec_py_model *self = (vaec_py_model *)op;
    if (vaec_py_ready(self)) return NULL;
    return vaec_py_arena_tensors(self->ops->arena(self->m));
}

PyObject *vaec_py_model_state(PyObject *op, PyObject *noargs) {
    vaec_py_model *self = (vaec_py_model *)op;
    if (vaec_py_ready(self)) return NULL;
    const vaec_py_model_ops *o = self->ops;
    return vaec_py_arena_state(o->arena(self->m), o->rng_seed(self->m), o->rng_counter(self->m), o->threads(self->m));
}

/* The setters below hold the model although they run with the GIL: a call of another
 * thread may be reading the Adam settings or the RNG position without it. */
PyObject *vaec_py_model_set_adam(PyObject *op, PyObject *args, PyObject *kw) {
    vaec_py_model *self = (vaec_py_model *)op;
    if (vaec_py_acquire(self)) return NULL;
    PyObject *res = vaec_py_arena_set_adam(self->ops->arena(self->m), args, kw);
    vaec_py_release(self);
    return res;
}

PyObject *vaec_py_model_set_optimizer(PyObject *op, PyObject *args, PyObject *kw) {
    vaec_py_model *self = (vaec_py_model *)op;
    if (vaec_py_acquire(self)) return NULL;
    PyObject *res = vaec_py_arena_set_optimizer(self->ops->arena(self->m), args, kw);
    vaec_py_release(self);
    return res;
}

PyObject *vaec_py_model_reset_optimizer(PyObject *op, PyObject *noargs) {
    vaec_py_model *self = (vaec_py_model *)op;
    if (vaec_py_acquire(self)) return NULL;
    vaec_arena_adam_reset(self->ops->arena(self->m));
    vaec_py_release(self);
    Py_RETURN_NONE;
}

PyObject *vaec_py_model_set_rng(PyObject *op, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"seed", "counter", "step", NULL};
    vaec_py_model *self = (vaec_py_model *)op;
    unsigned long long seed, counter;
    long long step = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KK|L", kwlist, &seed, &counter, &step)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    self->ops->rng_set(self->m, seed, counter);
    if (step >= 0) self->ops->arena(self->m)->step = step;
    vaec_py_release(self);
    Py_RETURN_NONE;
}

PyObject *vaec_py_model_adam_step(PyObject *op, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"lr", NULL};
    vaec_py_model *self = (vaec_py_model *)op;
    double lr;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "d", kwlist, &lr)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = self->ops->adam_step(self->m, (float)lr);
    Py_END_ALLOW_THREADS
    vaec_py_release(self);
    if (st) return vaec_py_raise(st);
    Py_RETURN_NONE;
}

/* save(path, extra=b''): an atomic write of the model's file, with an extra record. */
PyObject *vaec_py_model_save(PyObject *op, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "extra", NULL};
    vaec_py_model *self = (vaec_py_model *)op;
    PyObject *path = NULL, *res = NULL;
    Py_buffer extra = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|y*", kwlist, PyUnicode_FSConverter, &path, &extra)) return NULL;
    if (extra.len > 0x7fffffff) {  /* the file stores its length in 32 bits */
        PyErr_SetString(PyExc_ValueError, "extra: at most 2 GiB");
        goto done;
    }
    const char *p = PyBytes_AS_STRING(path);
    if (vaec_py_acquire(self)) goto done;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = self->ops->save(self->m, p, extra.buf, (uint32_t)extra.len);
    Py_END_ALLOW_THREADS
    vaec_py_release(self);
    if (st) vaec_py_raise(st);
    else res = (Py_INCREF(Py_None), Py_None);
done:
    PyBuffer_Release(&extra);
    Py_DECREF(path);
    return res;
}

static PyMemberDef model_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(vaec_py_model, weakrefs), READONLY},
    {NULL}
};

/* The slots and spec are read only while the type is made (the name is a literal). */
int vaec_py_model_add_type(PyObject *module, const char *spec_name, const char *doc, newfunc tp_new,
                           int (*init)(vaec_py_model *self, PyObject *args, PyObject *kw), PyMethodDef *methods) {
    PyType_Slot slots[] = {
        {Py_tp_doc, (void *)doc},
        {Py_tp_new, tp_new},
        {Py_tp_init, init},
        {Py_tp_dealloc, model_dealloc},
        {Py_tp_traverse, model_traverse},
        {Py_tp_methods, methods},
        {Py_tp_members, model_members},
        {0, NULL}
    };
    PyType_Spec spec = {spec_name, sizeof(vaec_py_model), 0,
                        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, slots};
    PyObject *tp = PyType_FromModuleAndSpec(module, &spec, NULL);
    if (!tp) return -1;
    if (PyModule_AddObject(module, strrchr(spec_name, '.') + 1, tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}
