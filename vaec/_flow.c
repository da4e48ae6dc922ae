/* _flow.c -- the binding of the stand-alone flow model (csrc/flow_model.c): the FlowCore
 * type and a few module functions, registered into vaec._core by vaec_py_add_flow.
 *
 * As in _core.c: converters name the argument they reject, float32 C-contiguous arrays
 * are passed to C without a copy, the GIL is released only around pure C work, and a
 * model refuses a second caller while it is busy. An energy step with a Python potential
 * is two calls (energy_forward, then energy_backward) with the Python callable in
 * between; the C model discards the pending forward if any other call comes first. */
#include "_common.h"
#include "flows.h"

/* An object is a vaec_py_model (_common.h) whose m is a vaec_flowmodel. */
VAEC_PY_MODEL_OPS(vaec_py_flow_ops, vaec_flowmodel, "flow");

/* ------------------------------------------------------------ converters */
/* A float32 C-contiguous (n, dim) array of finite values (a view when possible). */
static PyArrayObject *convert_rows(PyObject *obj, const char *name, int64_t dim) {
    PyArrayObject *a = vaec_py_real_array(obj, name);
    if (!a) return NULL;
    char expected[80];
    snprintf(expected, sizeof expected, "a 2-D array of shape (n, %lld)", (long long)dim);
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 1) != dim) {
        vaec_py_wrong_shape(a, name, expected);
        Py_DECREF(a);
        return NULL;
    }
    PyArrayObject *f = vaec_py_as_f32(a);
    Py_DECREF(a);
    if (!f) return NULL;
    if (vaec_py_check_values(f, name, 0, "")) {
        Py_DECREF(f);
        return NULL;
    }
    return f;
}

/* A float64 C-contiguous array of exactly the given shape (ndim 1 or 2); values are
 * checked in C (a non-finite potential is a FloatingPointError there). */
static PyArrayObject *convert_f64(PyObject *obj, const char *name, int ndim, int64_t d0, int64_t d1) {
    PyArrayObject *a = vaec_py_real_array(obj, name);
    if (!a) return NULL;
    int ok = PyArray_NDIM(a) == ndim && PyArray_DIM(a, 0) == d0 && (ndim == 1 || PyArray_DIM(a, 1) == d1);
    if (!ok) {
        char expected[80];
        if (ndim == 1) snprintf(expected, sizeof expected, "shape (%lld,)", (long long)d0);
        else snprintf(expected, sizeof expected, "shape (%lld, %lld)", (long long)d0, (long long)d1);
        vaec_py_wrong_shape(a, name, expected);
        Py_DECREF(a);
        return NULL;
    }
    PyArrayObject *f = (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(NPY_FLOAT64), 0, 0,
                                                        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST,
                                                        NULL);
    Py_DECREF(a);
    return f;
}

static int convert_count(PyObject *obj, const char *name, int64_t low, int64_t *out) {
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an integer, got %s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < low || v > ((long long)1 << 40)) {
        PyErr_Format(PyExc_ValueError, "%s: expected an integer between %lld and 2**40, got %lld", name, (long long)low, v);
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* noise of n rows: eps (n, dim) or a seed (None: the model's own stream) */
static int convert_noise(vaec_py_model *self, PyObject *seed, PyObject *eps, int64_t n, vaec_noise *noise,
                         PyArrayObject **keep) {
    int64_t dims[2] = {n, vaec_flowmodel_config_get(self->m)->dim};
    return vaec_py_convert_noise(eps, NULL, seed, "eps", 2, dims, 0, noise, keep);
}

static PyObject *new_f32(int64_t n, int64_t d) {
    npy_intp dims[2] = {(npy_intp)n, (npy_intp)d};
    return PyArray_SimpleNew(2, dims, NPY_FLOAT32);
}
static PyObject *new_f64(int64_t n) {
    npy_intp dims[1] = {(npy_intp)n};
    return PyArray_SimpleNew(1, dims, NPY_FLOAT64);
}
#define F32(o) ((float *)PyArray_DATA((PyArrayObject *)(o)))
#define F64(o) ((double *)PyArray_DATA((PyArrayObject *)(o)))

/* --------------------------------------------------------------- the type */
static PyObject *Flow_new(PyTypeObject *tp, PyObject *args, PyObject *kw) { return vaec_py_model_new(tp, &vaec_py_flow_ops); }

static int Flow_init(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"dim", "flow", "seed", "threads", NULL};
    long long dim;
    const char *spec;
    unsigned long long seed = 0;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Ls|Ki", kwlist, &dim, &spec, &seed, &threads)) return -1;
    vaec_flowmodel_config c = {0};
    c.dim = dim;
    c.seed = (uint64_t)seed;
    c.threads = threads;
    vaec_status st = vaec_flow_spec_parse(&c.flow, spec);
    if (st) { vaec_py_raise(st); return -1; }
    vaec_flowmodel *m = NULL;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_create(&m, &c);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); return -1; }
    return vaec_py_model_install(self, m);
}

/* transform(z) -> (x, logdet); inverse(x) -> (z0, logdet_inv) */
static PyObject *map_rows(vaec_py_model *self, PyObject *args, PyObject *kw, int inverse) {
    static char *kwlist_z[] = {"z", NULL}, *kwlist_x[] = {"x", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", inverse ? kwlist_x : kwlist_z, &obj)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyObject *out = NULL, *ld = NULL, *res = NULL;
    PyArrayObject *a = convert_rows(obj, inverse ? "x" : "z", D);
    if (!a) goto done;
    int64_t n = (int64_t)PyArray_DIM(a, 0);
    if (!(out = new_f32(n, D)) || !(ld = new_f64(n))) goto done;
    const float *in = (const float *)PyArray_DATA(a);
    float *o = F32(out);
    double *l = F64(ld);
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = inverse ? vaec_flowmodel_inverse(self->m, in, n, o, l) : vaec_flowmodel_transform(self->m, in, n, o, l);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(2, out, ld);
done:
    Py_XDECREF(a);
    Py_XDECREF(out);
    Py_XDECREF(ld);
    vaec_py_release(self);
    return res;
}
static PyObject *Flow_transform(vaec_py_model *self, PyObject *args, PyObject *kw) { return map_rows(self, args, kw, 0); }
static PyObject *Flow_inverse(vaec_py_model *self, PyObject *args, PyObject *kw) { return map_rows(self, args, kw, 1); }

static PyObject *Flow_log_prob(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &obj)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyObject *out = NULL;
    PyArrayObject *a = convert_rows(obj, "x", D);
    if (!a) goto done;
    int64_t n = (int64_t)PyArray_DIM(a, 0);
    if (!(out = new_f64(n))) goto done;
    const float *in = (const float *)PyArray_DATA(a);
    double *o = F64(out);
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_log_prob(self->m, in, n, o);
    Py_END_ALLOW_THREADS
    if (st) { Py_CLEAR(out); vaec_py_raise(st); }
done:
    Py_XDECREF(a);
    vaec_py_release(self);
    return out;
}

/* vjp(z, g_out, c, inverse=False) -> dL/dz for L = Σ g_out·f(z) + Σ c·logdet (grads written) */
static PyObject *Flow_vjp(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"z", "g_out", "c", "inverse", NULL};
    PyObject *zo, *go, *co;
    int inverse = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|p", kwlist, &zo, &go, &co, &inverse)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyObject *out = NULL;
    PyArrayObject *z = NULL, *g = NULL, *c = NULL;
    if (!(z = convert_rows(zo, "z", D)) || !(g = convert_rows(go, "g_out", D))) goto done;
    int64_t n = (int64_t)PyArray_DIM(z, 0);
    if (PyArray_DIM(g, 0) != n) { vaec_py_wrong_shape(g, "g_out", "the shape of z"); goto done; }
    if (!(c = convert_f64(co, "c", 1, n, 0))) goto done;
    if (!(out = new_f32(n, D))) goto done;
    const float *zp = (const float *)PyArray_DATA(z), *gp = (const float *)PyArray_DATA(g);
    const double *cp = (const double *)PyArray_DATA(c);
    float *op = F32(out);
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_vjp(self->m, inverse, zp, n, gp, cp, op);
    Py_END_ALLOW_THREADS
    if (st) { Py_CLEAR(out); vaec_py_raise(st); }
done:
    Py_XDECREF(z);
    Py_XDECREF(g);
    Py_XDECREF(c);
    vaec_py_release(self);
    return out;
}

/* sample(n, seed=None, eps=None) -> (x, log_prob) */
static PyObject *Flow_sample(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n", "seed", "eps", NULL};
    PyObject *nobj, *seed = Py_None, *eps = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OO", kwlist, &nobj, &seed, &eps)) return NULL;
    int64_t n;
    if (convert_count(nobj, "n", 0, &n)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyObject *x = NULL, *lp = NULL, *res = NULL;
    PyArrayObject *ea = NULL;
    vaec_noise noise;
    if (convert_noise(self, seed, eps, n, &noise, &ea)) goto done;
    if (!(x = new_f32(n, D)) || !(lp = new_f64(n))) goto done;
    float *xp = F32(x);
    double *lpp = F64(lp);
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_sample(self->m, n, &noise, xp, lpp);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(2, x, lp);
done:
    Py_XDECREF(ea);
    Py_XDECREF(x);
    Py_XDECREF(lp);
    vaec_py_release(self);
    return res;
}

/* nll_step(x, lr=-1, n_total=0) -> mean -log p(x); grads written; lr >= 0: one Adam step;
 * n_total > 0: x is a share of a batch of n_total rows (sums divided by n_total) */
static PyObject *Flow_nll_step(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "lr", "n_total", NULL};
    PyObject *obj;
    double lr = -1.0;
    long long n_total = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|dL", kwlist, &obj, &lr, &n_total)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyObject *res = NULL;
    PyArrayObject *a = convert_rows(obj, "x", D);
    if (!a) goto done;
    int64_t n = (int64_t)PyArray_DIM(a, 0);
    const float *in = (const float *)PyArray_DATA(a);
    double loss = 0.0;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_nll_step_ex(self->m, in, n, n_total, lr >= 0.0 ? (float)lr : -1.0f, &loss);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyFloat_FromDouble(loss);
done:
    Py_XDECREF(a);
    vaec_py_release(self);
    return res;
}

/* energy_forward(n, seed=None, eps=None) -> (zK, log q(zK)) */
static PyObject *Flow_energy_forward(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n", "seed", "eps", NULL};
    PyObject *nobj, *seed = Py_None, *eps = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OO", kwlist, &nobj, &seed, &eps)) return NULL;
    int64_t n;
    if (convert_count(nobj, "batch_size", 1, &n)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyObject *z = NULL, *lq = NULL, *res = NULL;
    PyArrayObject *ea = NULL;
    vaec_noise noise;
    if (convert_noise(self, seed, eps, n, &noise, &ea)) goto done;
    if (!(z = new_f32(n, D)) || !(lq = new_f64(n))) goto done;
    float *zp = F32(z);
    double *lqp = F64(lq);
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_energy_forward(self->m, n, &noise, zp, lqp);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyTuple_Pack(2, z, lq);
done:
    Py_XDECREF(ea);
    Py_XDECREF(z);
    Py_XDECREF(lq);
    vaec_py_release(self);
    return res;
}

/* energy_backward(U, dU, beta=1, lr=-1) -> loss */
static PyObject *Flow_energy_backward(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"U", "dU", "beta", "lr", NULL};
    PyObject *Uo, *dUo;
    double beta = 1.0, lr = -1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|dd", kwlist, &Uo, &dUo, &beta, &lr)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    PyObject *res = NULL;
    PyArrayObject *U = NULL, *dU = NULL;
    /* the pending batch's size is what the arrays must match; the C call checks it is there */
    int64_t D = vaec_flowmodel_config_get(self->m)->dim;
    PyArrayObject *probe = vaec_py_real_array(Uo, "U");
    if (!probe) goto done;
    int64_t n = PyArray_NDIM(probe) == 1 ? (int64_t)PyArray_DIM(probe, 0) : -1;
    Py_DECREF(probe);
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "U: expected a 1-D array with one value per row of z");
        goto done;
    }
    if (!(U = convert_f64(Uo, "U", 1, n, 0)) || !(dU = convert_f64(dUo, "dU", 2, n, D))) goto done;
    const double *Up = (const double *)PyArray_DATA(U), *dUp = (const double *)PyArray_DATA(dU);
    double loss = 0.0;
    vaec_status st = VAEC_OK;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_energy_backward(self->m, n, Up, dUp, beta, lr >= 0.0 ? (float)lr : -1.0f, &loss);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyFloat_FromDouble(loss);
done:
    Py_XDECREF(U);
    Py_XDECREF(dU);
    vaec_py_release(self);
    return res;
}

/* energy_step(potential, box, n, seed=None, eps=None, beta=1, lr=-1) -> loss (built-in U1..U4) */
static PyObject *Flow_energy_step(vaec_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"potential", "box", "n", "seed", "eps", "beta", "lr", NULL};
    int pot;
    double box;
    PyObject *nobj, *seed = Py_None, *eps = Py_None;
    double beta = 1.0, lr = -1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "idO|OOdd", kwlist, &pot, &box, &nobj, &seed, &eps, &beta, &lr))
        return NULL;
    int64_t n;
    if (convert_count(nobj, "batch_size", 1, &n)) return NULL;
    if (vaec_py_acquire(self)) return NULL;
    PyObject *res = NULL;
    PyArrayObject *ea = NULL;
    vaec_noise noise;
    if (convert_noise(self, seed, eps, n, &noise, &ea)) goto done;
    double loss = 0.0;
    vaec_status st;
    Py_BEGIN_ALLOW_THREADS
    st = vaec_flowmodel_energy_step(self->m, (vaec_potential)pot, box, n, &noise, beta, lr >= 0.0 ? (float)lr : -1.0f, &loss);
    Py_END_ALLOW_THREADS
    if (st) { vaec_py_raise(st); goto done; }
    res = PyFloat_FromDouble(loss);
done:
    Py_XDECREF(ea);
    vaec_py_release(self);
    return res;
}

static PyObject *Flow_config(vaec_py_model *self, PyObject *noargs) {
    if (vaec_py_ready(self)) return NULL;
    const vaec_flowmodel_config *c = vaec_flowmodel_config_get(self->m);
    char spec[96];
    vaec_flow_spec_format(&c->flow, spec, sizeof spec);
    const vaec_flow *f = vaec_flowmodel_flow(self->m);
    return Py_BuildValue("{s:L,s:s,s:s,s:i,s:L,s:s,s:d,s:K,s:i,s:L}", "dim", (long long)c->dim, "flow", spec,
                         "kind", vaec_flow_kind_name(c->flow.kind), "K", c->flow.K, "hidden", (long long)c->flow.hidden,
                         "activation", vaec_act_name(c->flow.act), "fixed_scale", (double)c->flow.fixed_scale,
                         "seed", (unsigned long long)c->seed, "has_inverse", vaec_flow_has_inverse(f),
                         "num_params", (long long)vaec_flow_num_params(f));
}

static PyMethodDef Flow_methods[] = {
    {"transform", VAEC_PY_KW(Flow_transform), "transform(z) -> (f(z) float32 (n, dim), logdet float64 (n,))"},
    {"inverse", VAEC_PY_KW(Flow_inverse), "inverse(x) -> (f^-1(x), log|det df^-1/dx|) (Real NVP)"},
    {"log_prob", VAEC_PY_KW(Flow_log_prob), "log_prob(x) -> float64 (n,) (Real NVP)"},
    {"sample", (PyCFunction)(void (*)(void))Flow_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(n, seed=None, eps=None) -> (x, log_prob)"},
    {"vjp", (PyCFunction)(void (*)(void))Flow_vjp, METH_VARARGS | METH_KEYWORDS,
     "vjp(z, g_out, c, inverse=False) -> dL/dz for L = sum(g_out * f(z)) + sum(c * logdet); parameter gradients written"},
    {"nll_step", (PyCFunction)(void (*)(void))Flow_nll_step, METH_VARARGS | METH_KEYWORDS,
     "nll_step(x, lr=-1, n_total=0) -> mean -log p(x); gradients written; lr >= 0: one Adam step (Real NVP);\n"
     "n_total > 0: x is a share of a batch of n_total rows (sums divided by n_total; x may be empty)"},
    {"energy_forward", (PyCFunction)(void (*)(void))Flow_energy_forward, METH_VARARGS | METH_KEYWORDS,
     "energy_forward(n, seed=None, eps=None) -> (zK, log q(zK)); the backward must follow"},
    {"energy_backward", (PyCFunction)(void (*)(void))Flow_energy_backward, METH_VARARGS | METH_KEYWORDS,
     "energy_backward(U, dU, beta=1, lr=-1) -> loss = mean(log q + beta U); gradients written"},
    {"energy_step", (PyCFunction)(void (*)(void))Flow_energy_step, METH_VARARGS | METH_KEYWORDS,
     "energy_step(potential, box, n, seed=None, eps=None, beta=1, lr=-1) -> loss, with a built-in potential 1..4"},
    {"config", (PyCFunction)Flow_config, METH_NOARGS, "the configuration as a dict"},
    VAEC_PY_MODEL_METHODS,
    {NULL}
};

/* ------------------------------------------------------ module functions */
/* flow_potential(code, z, box=0) -> (U float64 (n,), dU float64 (n, 2)) */
static PyObject *mod_flow_potential(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"code", "z", "box", NULL};
    int code;
    PyObject *zo;
    double box = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO|d", kwlist, &code, &zo, &box)) return NULL;
    PyArrayObject *a = vaec_py_real_array(zo, "z");
    if (!a) return NULL;
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 1) != 2) {
        vaec_py_wrong_shape(a, "z", "a 2-D array of shape (n, 2)");
        Py_DECREF(a);
        return NULL;
    }
    PyArrayObject *z = (PyArrayObject *)PyArray_FromAny((PyObject *)a, PyArray_DescrFromType(NPY_FLOAT64), 0, 0,
                                                        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST,
                                                        NULL);
    Py_DECREF(a);
    if (!z) return NULL;
    int64_t n = (int64_t)PyArray_DIM(z, 0);
    npy_intp d1[1] = {(npy_intp)n}, d2[2] = {(npy_intp)n, 2};
    PyObject *U = PyArray_SimpleNew(1, d1, NPY_FLOAT64), *dU = PyArray_SimpleNew(2, d2, NPY_FLOAT64), *res = NULL;
    if (U && dU) {
        const double *zp = (const double *)PyArray_DATA(z);
        double *Up = F64(U), *dUp = F64(dU);
        vaec_status st;
        Py_BEGIN_ALLOW_THREADS
        st = vaec_potential_eval((vaec_potential)code, box, zp, n, Up, dUp);
        Py_END_ALLOW_THREADS
        if (st) vaec_py_raise(st);
        else res = PyTuple_Pack(2, U, dU);
    }
    Py_DECREF(z);
    Py_XDECREF(U);
    Py_XDECREF(dU);
    return res;
}

/* flow_parse(spec, dim=None) -> canonical spec; ValueError listing the accepted forms */
static PyObject *mod_flow_parse(PyObject *module, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"spec", "dim", NULL};
    const char *text;
    long long dim = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|L", kwlist, &text, &dim)) return NULL;
    vaec_flow_spec s;
    vaec_status st = vaec_flow_spec_parse(&s, text);
    if (st) return vaec_py_raise(st);
    if (dim > 0 && s.kind == VAEC_FLOW_REALNVP && dim < 2) {
        /* the planner's message, without planning anything */
        vaec_arena a;
        memset(&a, 0, sizeof a);
        vaec_flow *f = PyMem_Malloc(sizeof *f);
        if (!f) return PyErr_NoMemory();
        st = vaec_flow_plan(f, &a, &s, dim, "flow");
        PyMem_Free(f);
        if (st) return vaec_py_raise(st);
    }
    char buf[96];
    return PyUnicode_FromString(vaec_flow_spec_format(&s, buf, sizeof buf));
}

static PyMethodDef flow_functions[] = {
    {"flow_potential", VAEC_PY_KW(mod_flow_potential), "flow_potential(code, z, box=0) -> (U, dU): U1..U4 of Rezende & Mohamed (+ a wall outside [-box, box]^2)"},
    {"flow_parse", VAEC_PY_KW(mod_flow_parse), "flow_parse(spec, dim=0) -> canonical spec string"},
    {NULL}
};

int vaec_py_add_flow(PyObject *module) {
    if (vaec_py_model_add_type(module, "vaec._core.FlowCore", "The C model behind vaec.Flow (use vaec.Flow).", Flow_new,
                               Flow_init, Flow_methods) < 0)
        return -1;
    if (PyModule_AddFunctions(module, flow_functions) < 0) return -1;
    return 0;
}
