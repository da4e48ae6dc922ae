/* _m2.c -- the binding of the M2 model (csrc/m2.h): the type vaec._core.M2Core (its files
 * are read by the module's load, _core.c). Converters of _common.c check every array
 * argument and name it in their errors; labels are checked here (integer dtype, length, range). The GIL is
 * released around the C work, and a model refuses a second caller while it is busy. */
#include "_common.h"
#include "m2.h"

/* An object is a vaec_py_model (_common.h) whose m is a vaec_m2. */
VAEC_PY_MODEL_OPS(vaec_py_m2_ops, vaec_m2, "model");

static PyObject *M2_new(PyTypeObject *tp, PyObject *args, PyObject *kw) { return vaec_py_model_new(tp, &vaec_py_m2_ops); }

static int M2_init(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"input_dim", "latent_dim", "n_classes", "hidden", "classifier_hidden", "activation",
                             "likelihood", "alpha", "seed", "threads", NULL};
    long long input_dim, latent_dim, n_classes;
    unsigned long long seed = 0;
    PyObject *hidden, *chidden, *act, *lik;
    double alpha;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLOOUUdKi", kwlist, &input_dim, &latent_dim, &n_classes, &hidden,
                                     &chidden, &act, &lik, &alpha, &seed, &threads))
        return -1;
    vaec_m2_config c = {0};
    c.input_dim = input_dim;
    c.latent_dim = latent_dim;
    c.n_classes = n_classes;
    c.alpha = alpha;
    c.seed = (uint64_t)seed;
    c.threads = threads;
    if (vaec_py_parse_widths(hidden, "hidden", &c.n_hidden, c.hidden)) return -1;
    if (vaec_py_parse_widths(chidden, "classifier_hidden", &c.n_cls_hidden, c.cls_hidden)) return -1;
    if (vaec_py_parse_act(act, &c.activation)) return -1;
    if (vaec_py_parse_likelihood(lik, &c.likelihood)) return -1;
    vaec_m2 *m = NULL;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_m2_create(&m, &c);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); return -1; }
    return vaec_py_model_install(self, m);
}

/* ------------------------------------------------------------ converters */
/* Labels: a 1-D integer array of length n with values in [0, C) -> int32 contiguous. */
static int convert_labels(PyObject *obj, const char *name, int64_t n, int64_t C, PyArrayObject **keep) {
    *keep = NULL;
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected an integer array of labels, got None", name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FromAny(obj, NULL, 0, 0, 0, NULL);
    if (!a) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s: expected a 1-D array of integer labels", name);
        }
        return -1;
    }
    char kind = PyArray_DESCR(a)->kind;
    if (kind != 'i' && kind != 'u') {
        PyObject *d = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s: expected integer class labels, got dtype %U", name, d ? d : Py_None);
        Py_XDECREF(d);
        Py_DECREF(a);
        return -1;
    }
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != n) {
        char expected[64];
        snprintf(expected, sizeof expected, "a 1-D array of %lld labels", (long long)n);
        vaec_py_wrong_shape(a, name, expected);
        Py_DECREF(a);
        return -1;
    }
    /* range check before the cast (values beyond int32 must not wrap into range) */
    int is_u = kind == 'u';
    PyArrayObject *w = (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(is_u ? NPY_UINT64 : NPY_INT64),
                                                        1, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!w) { Py_DECREF(a); return -1; }
    const int64_t *v = (const int64_t *)PyArray_DATA(w);
    const uint64_t *uv = (const uint64_t *)PyArray_DATA(w);
    for (int64_t i = 0; i < n; i++) {
        int bad = is_u ? uv[i] >= (uint64_t)C : (v[i] < 0 || v[i] >= C);
        if (bad) {
            if (is_u)
                PyErr_Format(PyExc_ValueError, "%s: label %llu at index %lld is out of range [0, %lld)", name,
                             (unsigned long long)uv[i], (long long)i, (long long)C);
            else
                PyErr_Format(PyExc_ValueError, "%s: label %lld at index %lld is out of range [0, %lld)", name,
                             (long long)v[i], (long long)i, (long long)C);
            Py_DECREF(w);
            Py_DECREF(a);
            return -1;
        }
    }
    Py_DECREF(w);
    *keep = (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(NPY_INT32), 1, 1,
                                             NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST, NULL);
    Py_DECREF(a);
    return *keep ? 0 : -1;
}

/* ---------------------------------------------------------------- methods */
static PyObject *M2_loss_grad(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"X_labeled", "y_labeled", "X_unlabeled", "alpha", "wl", "wu", "eps_l", "eps_u",
                             "seed", "binarize", "lr", "row_offset_l", "row_offset_u", "n_total", NULL};
    PyObject *xl, *yl, *xu, *epsl = Py_None, *epsu = Py_None, *seed = Py_None;
    double alpha, wl, wu, lr = -1.0;
    int binarize = 0;
    long long row_offset_l = 0, row_offset_u = 0, n_total = 0;   /* a share of a batch (vaec_m2_batch) */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOddd|OOOpdLLL", kwlist, &xl, &yl, &xu, &alpha, &wl, &wu, &epsl,
                                     &epsu, &seed, &binarize, &lr, &row_offset_l, &row_offset_u, &n_total))
        return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_m2_config *c = vaec_m2_config_get(self->m);
    int unit = c->likelihood == VAEC_LIK_BERNOULLI || binarize;
    PyArrayObject *xla = NULL, *yla = NULL, *xua = NULL, *ela = NULL, *eua = NULL;
    PyObject *res = NULL;
    vaec_input inl = {0}, inu = {0};
    vaec_m2_batch b = {0};
    b.alpha = alpha;
    b.wl = wl;
    b.wu = wu;
    b.row_offset_l = row_offset_l;
    b.row_offset_u = row_offset_u;
    b.n_total = n_total;
    if (xl != Py_None) {
        if (vaec_py_convert_x(xl, "X_labeled", c->input_dim, unit, &inl, &xla)) goto done;
        inl.binarize = binarize;
        if (convert_labels(yl, "y_labeled", inl.n, c->n_classes, &yla)) goto done;
        b.xl = &inl;
        b.yl = (const int32_t *)PyArray_DATA(yla);
    }
    if (xu != Py_None) {
        if (vaec_py_convert_x(xu, "X_unlabeled", c->input_dim, unit, &inu, &xua)) goto done;
        inu.binarize = binarize;
        b.xu = &inu;
    }
    if (inl.n + inu.n == 0 && n_total <= 0) {
        PyErr_SetString(PyExc_ValueError, "X_labeled, X_unlabeled: empty batch; the loss needs at least one example");
        goto done;
    }
    if ((epsl != Py_None) != (epsu != Py_None) && inl.n > 0 && inu.n > 0) {
        PyErr_SetString(PyExc_ValueError, "eps: give the noise of both parts (eps_l and eps_u) or of neither");
        goto done;
    }
    /* the noise of each part present: its eps, or the RNG (under seed) */
    vaec_noise nl, nu;
    int64_t shl[2] = {inl.n, c->latent_dim}, shu[3] = {inu.n, c->n_classes, c->latent_dim};
    if (vaec_py_convert_noise(inl.n > 0 ? epsl : Py_None, NULL, NULL, "eps_l", 2, shl, 0, &nl, &ela) ||
        vaec_py_convert_noise(inu.n > 0 ? epsu : Py_None, NULL, seed, "eps_u", 3, shu, 0, &nu, &eua))
        goto done;
    b.eps_l = nl.eps;
    b.eps_u = nu.eps;
    b.use_seed = nu.use_seed;
    b.seed = nu.seed;
    double loss = 0.0, parts[3] = {0, 0, 0};
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = lr >= 0.0 ? vaec_m2_train_step(self->m, &b, (float)lr, &loss, parts) : vaec_m2_loss_grad(self->m, &b, &loss, parts);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = Py_BuildValue("d(ddd)", loss, parts[0], parts[1], parts[2]);
done:
    Py_XDECREF(xla); Py_XDECREF(yla); Py_XDECREF(xua); Py_XDECREF(ela); Py_XDECREF(eua);
    vaec_py_release(self);
    return res;
}

static PyObject *M2_classify(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", NULL};
    PyObject *x;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &x)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_m2_config *c = vaec_m2_config_get(self->m);
    vaec_input in;
    PyArrayObject *xa = NULL;
    PyObject *res = NULL;
    if (vaec_py_convert_x(x, "X", c->input_dim, c->likelihood == VAEC_LIK_BERNOULLI, &in, &xa)) goto done;
    npy_intp dims[2] = {(npy_intp)in.n, (npy_intp)c->n_classes};
    res = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!res) goto done;
    vaec_status st;
    float *out = (float *)PyArray_DATA((PyArrayObject *)res);
    Py_BEGIN_ALLOW_THREADS
    st = vaec_m2_classify(self->m, &in, out);
    Py_END_ALLOW_THREADS
    if (st) { Py_CLEAR(res); vaec_py_raise(st); }
done:
    Py_XDECREF(xa);
    vaec_py_release(self);
    return res;
}

static PyObject *M2_elbo(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "y", "eps", "seed", "binarize", NULL};
    PyObject *x, *y = Py_None, *eps = Py_None, *seed = Py_None;
    int binarize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOp", kwlist, &x, &y, &eps, &seed, &binarize)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_m2_config *c = vaec_m2_config_get(self->m);
    PyArrayObject *xa = NULL, *ya = NULL, *ea = NULL;
    PyObject *res = NULL;
    vaec_input in;
    vaec_noise noise;
    if (vaec_py_convert_x(x, "X", c->input_dim, c->likelihood == VAEC_LIK_BERNOULLI || binarize, &in, &xa)) goto done;
    in.binarize = binarize;
    if (y != Py_None && convert_labels(y, "y", in.n, c->n_classes, &ya)) goto done;
    /* labelled: one z per row (n, Z); unlabelled: one per row and class (n, C, Z) */
    int64_t sh2[2] = {in.n, c->latent_dim}, sh3[3] = {in.n, c->n_classes, c->latent_dim};
    if (vaec_py_convert_noise(eps, NULL, seed, "eps", y != Py_None ? 2 : 3, y != Py_None ? sh2 : sh3, 0, &noise, &ea))
        goto done;
    npy_intp dims[1] = {(npy_intp)in.n};
    res = PyArray_SimpleNew(1, dims, NPY_FLOAT64);
    if (!res) goto done;
    double *out = (double *)PyArray_DATA((PyArrayObject *)res);
    const int32_t *yp = ya ? (const int32_t *)PyArray_DATA(ya) : NULL;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_m2_elbo(self->m, &in, yp, noise.eps, noise.use_seed, noise.seed, out);
    Py_END_ALLOW_THREADS
    if (st) { Py_CLEAR(res); vaec_py_raise(st); }
done:
    Py_XDECREF(xa); Py_XDECREF(ya); Py_XDECREF(ea);
    vaec_py_release(self);
    return res;
}

static PyObject *M2_encode(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "y", NULL};
    PyObject *x, *y;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &x, &y)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_m2_config *c = vaec_m2_config_get(self->m);
    vaec_input in;
    PyArrayObject *xa = NULL, *ya = NULL;
    PyObject *mu = NULL, *lv = NULL, *res = NULL;
    if (vaec_py_convert_x(x, "X", c->input_dim, c->likelihood == VAEC_LIK_BERNOULLI, &in, &xa)) goto done;
    if (convert_labels(y, "y", in.n, c->n_classes, &ya)) goto done;
    npy_intp dims[2] = {(npy_intp)in.n, (npy_intp)c->latent_dim};
    mu = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    lv = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!mu || !lv) goto done;
    vaec_status st;
    const int32_t *yp = (const int32_t *)PyArray_DATA(ya);
    float *mp = (float *)PyArray_DATA((PyArrayObject *)mu), *lp = (float *)PyArray_DATA((PyArrayObject *)lv);
    Py_BEGIN_ALLOW_THREADS
    st = vaec_m2_encode(self->m, &in, yp, mp, lp);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(2, mu, lv);
done:
    Py_XDECREF(mu); Py_XDECREF(lv); Py_XDECREF(xa); Py_XDECREF(ya);
    vaec_py_release(self);
    return res;
}

static PyObject *M2_decode(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"y", "z", NULL};
    PyObject *y, *z;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &y, &z)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    const vaec_m2_config *c = vaec_m2_config_get(self->m);
    PyObject *out = NULL;
    PyArrayObject *za = NULL, *zf = NULL, *ya = NULL;
    char expected[64];
    snprintf(expected, sizeof expected, "a 2-D array of shape (n, %lld)", (long long)c->latent_dim);
    if (!(za = vaec_py_real_array(z, "z"))) goto done;
    if (PyArray_NDIM(za) != 2 || PyArray_DIM(za, 1) != c->latent_dim) { vaec_py_wrong_shape(za, "z", expected); goto done; }
    if (!(zf = vaec_py_as_f32(za))) goto done;
    if (vaec_py_check_values(zf, "z", 0, "")) goto done;
    if (convert_labels(y, "y", PyArray_DIM(zf, 0), c->n_classes, &ya)) goto done;
    npy_intp dims[2] = {PyArray_DIM(zf, 0), (npy_intp)c->input_dim};
    out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) goto done;
    vaec_status st;
    const float *zp = (const float *)PyArray_DATA(zf);
    const int32_t *yp = (const int32_t *)PyArray_DATA(ya);
    float *op = (float *)PyArray_DATA((PyArrayObject *)out);
    int64_t n = (int64_t)dims[0];
    Py_BEGIN_ALLOW_THREADS
    st = vaec_m2_decode(self->m, yp, zp, n, op);
    Py_END_ALLOW_THREADS
    if (st) { Py_CLEAR(out); vaec_py_raise(st); }
done:
    Py_XDECREF(za); Py_XDECREF(zf); Py_XDECREF(ya);
    vaec_py_release(self);
    return out;
}

static PyObject *widths_tuple(int n, const int64_t *w) {
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (int i = 0; i < n; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(w[i]));
    return t;
}

static PyObject *M2_config(vaec_py_model *self, PyObject *noargs) {
    if (vaec_py_ready(self)) return NULL;
    const vaec_m2_config *c = vaec_m2_config_get(self->m);
    PyObject *h = widths_tuple(c->n_hidden, c->hidden), *ch = widths_tuple(c->n_cls_hidden, c->cls_hidden);
    if (!h || !ch) { Py_XDECREF(h); Py_XDECREF(ch); return NULL; }
    return Py_BuildValue("{s:L,s:L,s:L,s:N,s:N,s:s,s:s,s:d,s:K}", "input_dim", (long long)c->input_dim,
                         "latent_dim", (long long)c->latent_dim, "n_classes", (long long)c->n_classes,
                         "hidden", h, "classifier_hidden", ch, "activation", vaec_act_name(c->activation),
                         "likelihood", c->likelihood == VAEC_LIK_BERNOULLI ? "bernoulli" : "gaussian",
                         "alpha", c->alpha, "seed", (unsigned long long)c->seed);
}

static PyMethodDef M2_methods[] = {
    {"loss_grad", (PyCFunction)(void (*)(void))M2_loss_grad, METH_VARARGS | METH_KEYWORDS,
     "loss_grad(x_labeled, y_labeled, x_unlabeled, alpha, wl, wu, eps_l=None, eps_u=None, seed=None, "
     "binarize=False, lr=-1, row_offset_l=0, row_offset_u=0, n_total=0) -> (loss, (sum -L, sum -log q(y|x), sum -U))\n"
     "loss = wl * sum_l [-L - alpha log q(y|x)] + wu * sum_u [-U]; gradients written to the grads arena; "
     "with lr >= 0 also one Adam step. n_total > 0: the parts are rows from row_offset_l / row_offset_u "
     "of a batch of n_total rows (their noise; both may be empty)."},
    {"classify", VAEC_PY_KW(M2_classify), "classify(x) -> log q(y|x), float32 (n, C)"},
    {"elbo", (PyCFunction)(void (*)(void))M2_elbo, METH_VARARGS | METH_KEYWORDS,
     "elbo(x, y=None, eps=None, seed=None, binarize=False) -> L(x,y) or U(x), float64 (n,)"},
    {"encode", VAEC_PY_KW(M2_encode), "encode(x, y) -> (mu, logvar)"},
    {"decode", VAEC_PY_KW(M2_decode), "decode(y, z) -> (n, input_dim)"},
    {"config", (PyCFunction)M2_config, METH_NOARGS, "the configuration as a dict"},
    VAEC_PY_MODEL_METHODS,
    {NULL}
};

int vaec_py_add_m2(PyObject *module) {
    if (vaec_py_model_add_type(module, "vaec._core.M2Core", "The C model behind vaec.M2 (use vaec.M2).", M2_new, M2_init,
                               M2_methods) < 0)
        return -1;
    return 0;
}
