/* _common.h -- what every part of the vaec._core binding shares: argument converters
 * that name the argument in their errors, status-to-exception mapping, and zero-copy
 * views of a model's parameter arena. The extension is several C files; NumPy's API
 * table is imported once, in _core.c's module exec slot. */
#ifndef VAEC_PY_COMMON_H
#define VAEC_PY_COMMON_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL vaec_ARRAY_API
#ifndef VAEC_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>
#include <numpy/npy_2_compat.h>
#include <structmember.h>
#include "vaec.h"

/* Release the GIL around C work only when there is enough of it: a release and re-acquire
 * costs about as much as scanning a few thousand floats, so calls on a few rows (encoding
 * one example) keep it. `big` is evaluated once. */
#define VAEC_PY_SMALL_WORK 16384   /* elements */
#define VAEC_PY_BEGIN_ALLOW_THREADS_IF(big) { PyThreadState *vaec_save_ = (big) ? PyEval_SaveThread() : NULL;
#define VAEC_PY_END_ALLOW_THREADS_IF if (vaec_save_) PyEval_RestoreThread(vaec_save_); }

/* Raise the Python exception for a C status, with vaec_last_error()'s message. */
PyObject *vaec_py_raise(vaec_status st);
/* A real-valued (bool/int/float) array view or conversion of obj; TypeError otherwise. */
PyArrayObject *vaec_py_real_array(PyObject *obj, const char *name);
/* ValueError "<name>: expected <expected>, got shape (...)"; returns -1. */
int vaec_py_wrong_shape(PyArrayObject *a, const char *name, const char *expected);
/* float32 C-contiguous view or one copy. */
PyArrayObject *vaec_py_as_f32(PyArrayObject *a);
/* NaN/Inf (and with unit_range, outside [0,1]) -> ValueError naming the argument. */
int vaec_py_check_values(PyArrayObject *f, const char *name, int unit_range, const char *why);
/* A data matrix (n, dim): uint8 and float32 C-contiguous used in place; *keep owns it. */
int vaec_py_convert_x(PyObject *obj, const char *name, int64_t dim, int unit_range, vaec_input *in,
                      PyArrayObject **keep);
/* eps of shape (L, n, Z) or (n, Z). */
int vaec_py_convert_eps(PyObject *obj, int64_t n, int64_t Z, int *L, PyArrayObject **keep);
int vaec_py_convert_seed(PyObject *obj, int *use, uint64_t *seed);
int vaec_py_convert_samples(PyObject *obj, int *L);
/* Zero-copy 1-D float32 view of one arena buffer ("params", "grads", "adam_m", "adam_v");
 * the array holds a reference to owner. */
PyObject *vaec_py_arena_view(PyObject *owner, vaec_arena *a, const char *which);
/* [(name, offset, shape)]. */
PyObject *vaec_py_arena_tensors(const vaec_arena *a);
/* The optimizer and RNG state as a dict: step, beta1, beta2, adam_eps, rng_seed,
 * rng_counter, threads. */
PyObject *vaec_py_arena_state(const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter, int threads);
/* set_adam(beta1=, beta2=, eps=): the arena's Adam settings, unchanged ones kept. */
PyObject *vaec_py_arena_set_adam(vaec_arena *a, PyObject *args, PyObject *kw);
#endif
