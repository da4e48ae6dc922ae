/* _common.h -- what every part of the vaec._core binding shares: argument converters
 * that name the argument in their errors, status-to-exception mapping, zero-copy views
 * of a model's parameter arena, and the part of the model types (VAECore, M2Core,
 * FlowCore) that does not depend on the model. The extension is several C files;
 * NumPy's API table is imported once, in _core.c's module exec slot. */
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

/* Ctrl-C in a long C call. Python runs its SIGINT handler only between bytecodes, so a call
 * running without the GIL would finish first (minutes for a log-likelihood with k = 5000).
 * Around such a call, on the main thread and while SIGINT has Python's default handler
 * (KeyboardInterrupt), vaec_py_interrupt_begin installs a C handler that requests a C-core
 * interrupt (vaec_interrupt_request) and then calls Python's own handler, and arms the
 * thread; the call stops at its next check (within milliseconds), vaec_py_interrupt_end puts
 * the handler back, and vaec_py_raise(VAEC_ERR_INTERRUPTED) raises the KeyboardInterrupt.
 * Other threads, and a program with a SIGINT handler of its own, are left as they were.
 * begin returns -1 with an exception set when a signal was already pending. */
typedef struct { int armed; PyOS_sighandler_t prev; } vaec_py_interrupt;
int vaec_py_interrupt_begin(vaec_py_interrupt *s);
void vaec_py_interrupt_end(vaec_py_interrupt *s);

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
/* The one noise converter of every call that draws noise: `eps`, explicit standard-normal
 * noise of shape `dims` (ndim of them), or with `samples_dim` also (L, dims...) for L
 * samples, finite, float32 (a view or one copy, owned by *keep); without it (None or
 * NULL), `samples` draws (None or NULL: 1) from the counter-based RNG under `seed` (None
 * or NULL: the model's own stream). The errors name the argument: `name` for eps
 * ("eps", "eps_l", ...), "samples" and "seed". */
int vaec_py_convert_noise(PyObject *eps, PyObject *samples, PyObject *seed, const char *name, int ndim,
                          const int64_t *dims, int samples_dim, vaec_noise *noise, PyArrayObject **keep);
int vaec_py_convert_seed(PyObject *obj, int *use, uint64_t *seed);
/* Constructor arguments: an activation's name (not "identity"), "bernoulli" or "gaussian",
 * and a sequence of at most VAEC_MAX_HIDDEN layer widths; ValueError/TypeError naming
 * the argument. */
int vaec_py_parse_act(PyObject *s, vaec_act *out);
int vaec_py_parse_likelihood(PyObject *s, vaec_likelihood *out);
int vaec_py_parse_widths(PyObject *obj, const char *name, int *n, int64_t *out);
/* Zero-copy 1-D float32 view of one arena buffer ("params", "grads", "adam_m", "adam_v");
 * the array holds a reference to owner. */
PyObject *vaec_py_arena_view(PyObject *owner, vaec_arena *a, const char *which);
/* [(name, offset, shape, transposed)]: transposed tensors are stored (shape[1], shape[0]). */
PyObject *vaec_py_arena_tensors(const vaec_arena *a);
/* The optimizer and RNG state as a dict: step, beta1, beta2, adam_eps, rng_seed,
 * rng_counter, threads, optimizer ('adam' or 'adagrad'), weight_decay. */
PyObject *vaec_py_arena_state(const vaec_arena *a, uint64_t rng_seed, uint64_t rng_counter, int threads);
/* set_adam(beta1=, beta2=, eps=): the arena's Adam settings, unchanged ones kept. */
PyObject *vaec_py_arena_set_adam(vaec_arena *a, PyObject *args, PyObject *kw);
/* set_optimizer(optimizer=None, weight_decay=<kept>): the rule of the next steps ('adam' or
 * 'adagrad'; None keeps it) and the weight decay; the state is not reset. */
PyObject *vaec_py_arena_set_optimizer(vaec_arena *a, PyObject *args, PyObject *kw);

/* ------------------------------------------------------ the model types */
/* What differs between the model types in the methods they share: the C model's
 * functions, taking it as void *, and the word of the RuntimeErrors ("the model is not
 * initialised", "the flow is in use by another thread"). Every model's save and load
 * carry the file's extra record (a trainer's state, for checkpoints). */
typedef struct {
    const char *what;
    vaec_arena *(*arena)(void *m);
    uint64_t (*rng_seed)(const void *m);
    uint64_t (*rng_counter)(const void *m);
    void (*rng_set)(void *m, uint64_t seed, uint64_t counter);
    int (*threads)(const void *m);
    vaec_status (*adam_step)(void *m, float lr);
    vaec_status (*save)(const void *m, const char *path, const void *extra, uint32_t extra_len);
    vaec_status (*load)(void **m, const char *path, int threads, void **extra, uint32_t *extra_len);
    void (*destroy)(void *m);
} vaec_py_model_ops;

/* The ops of each model type (defined by VAEC_PY_MODEL_OPS in its binding file); the
 * module's table of model kinds (_core.c) maps each kind a file can hold to one. */
extern const vaec_py_model_ops vaec_py_vae_ops, vaec_py_m2_ops, vaec_py_flow_ops;

/* The object of every model type. m is NULL until __init__ or a load succeeds; ops is set
 * by tp_new (vaec_py_model_new), so it is there even for an object made by __new__ alone;
 * busy is set while a call uses m, which may be with the GIL released. */
typedef struct {
    PyObject_HEAD
    void *m;
    const vaec_py_model_ops *ops;
    int busy;
    PyObject *weakrefs;
} vaec_py_model;

/* The ops table `name` of the C model type P, whose functions are P_arena, P_threads, ...
 * (vaec_vae, vaec_m2, vaec_flowmodel; every kind's save and load carry the file's extra
 * record). The adapters are functions rather than casts of the model's function pointers
 * so that each call is compiled against the model's own prototype (a cast compiles
 * whatever the signature). */
#define VAEC_PY_MODEL_OPS(name, P, what)                                                                \
    static vaec_arena *P##_op_arena(void *m) { return P##_arena(m); }                                   \
    static uint64_t P##_op_rng_seed(const void *m) { return P##_rng_seed(m); }                          \
    static uint64_t P##_op_rng_counter(const void *m) { return P##_rng_counter(m); }                    \
    static void P##_op_rng_set(void *m, uint64_t s, uint64_t c) { P##_rng_set(m, s, c); }               \
    static int P##_op_threads(const void *m) { return P##_threads(m); }                                 \
    static vaec_status P##_op_adam_step(void *m, float lr) { return P##_adam_step(m, lr); }             \
    static vaec_status P##_op_save(const void *m, const char *path, const void *extra, uint32_t extra_len) { \
        return P##_save(m, path, extra, extra_len);                                                     \
    }                                                                                                   \
    static vaec_status P##_op_load(void **m, const char *path, int threads, void **extra,               \
                                   uint32_t *extra_len) {                                               \
        P *typed = NULL;                                                                                \
        vaec_status st = P##_load(&typed, path, threads, extra, extra_len);                             \
        *m = typed;                                                                                     \
        return st;                                                                                      \
    }                                                                                                   \
    static void P##_op_destroy(void *m) { P##_destroy(m); }                                             \
    const vaec_py_model_ops name = {what, P##_op_arena, P##_op_rng_seed, P##_op_rng_counter,            \
                                    P##_op_rng_set, P##_op_threads, P##_op_adam_step, P##_op_save,       \
                                    P##_op_load, P##_op_destroy}

/* RuntimeError unless the model is initialised and no other call is using it; then marks
 * it busy until vaec_py_release. */
int vaec_py_acquire(vaec_py_model *self);
void vaec_py_release(vaec_py_model *self);
/* RuntimeError unless the model is initialised: for calls that only read (configuration,
 * arena layout and views, state), which stay available while another thread trains. */
int vaec_py_ready(vaec_py_model *self);
/* tp_new of a model type: an object without a model, whose methods refuse to run. */
PyObject *vaec_py_model_new(PyTypeObject *tp, const vaec_py_model_ops *ops);
/* The end of a model type's __init__: m (just created) becomes the object's model.
 * Refused (m destroyed, RuntimeError) when the object already has one: in use by another
 * thread, or idle with arena views that would be left dangling. */
int vaec_py_model_install(vaec_py_model *self, void *m);
/* Creates the model type spec_name ("vaec._core.<Name>") and adds it to the module as
 * <Name>: the type's own tp_new (vaec_py_model_new with its ops), __init__ and method
 * table, the shared dealloc, traverse and members. */
int vaec_py_model_add_type(PyObject *module, const char *spec_name, const char *doc, newfunc tp_new,
                           int (*init)(vaec_py_model *self, PyObject *args, PyObject *kw), PyMethodDef *methods);
/* A new object of the module's type `type_name` around the model of kind `ops` read from
 * path (threads <= 0: every core). With extra non-NULL, *extra receives the file's extra
 * record (None when it has none). */
PyObject *vaec_py_model_load(PyObject *module, const char *path, int threads, const char *type_name,
                             const vaec_py_model_ops *ops, PyObject **extra);

/* The methods every model type has, listed in each type's table by these entries. */
PyObject *vaec_py_model_arena(PyObject *self, PyObject *args, PyObject *kw);
PyObject *vaec_py_model_tensors(PyObject *self, PyObject *noargs);
PyObject *vaec_py_model_state(PyObject *self, PyObject *noargs);
PyObject *vaec_py_model_set_adam(PyObject *self, PyObject *args, PyObject *kw);
PyObject *vaec_py_model_set_optimizer(PyObject *self, PyObject *args, PyObject *kw);
PyObject *vaec_py_model_reset_optimizer(PyObject *self, PyObject *noargs);
PyObject *vaec_py_model_adam_step(PyObject *self, PyObject *args, PyObject *kw);
PyObject *vaec_py_model_set_rng(PyObject *self, PyObject *args, PyObject *kw);
PyObject *vaec_py_model_save(PyObject *self, PyObject *args, PyObject *kw);
/* A method table entry's function and flags for a method taking keywords. */
#define VAEC_PY_KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
#define VAEC_PY_MODEL_METHODS                                                                              \
    {"adam_step", VAEC_PY_KW(vaec_py_model_adam_step), "adam_step(lr): the optimizer on the current grads."}, \
    {"arena", VAEC_PY_KW(vaec_py_model_arena), "arena(which) -> zero-copy float32 view"},                  \
    {"tensors", vaec_py_model_tensors, METH_NOARGS, "[(name, offset, shape, transposed)]"},                \
    {"state", vaec_py_model_state, METH_NOARGS, "optimizer and RNG state"},                                \
    {"set_adam", VAEC_PY_KW(vaec_py_model_set_adam), "set_adam(beta1, beta2, eps)"},                       \
    {"set_optimizer", VAEC_PY_KW(vaec_py_model_set_optimizer),                                             \
     "set_optimizer(optimizer=None, weight_decay=<kept>): 'adam' or 'adagrad' (state not reset)"},          \
    {"reset_optimizer", vaec_py_model_reset_optimizer, METH_NOARGS, "zero the optimizer's state and step"},\
    {"set_rng", VAEC_PY_KW(vaec_py_model_set_rng),                                                         \
     "set_rng(seed, counter, step=-1): RNG stream position (and Adam step count)"},                        \
    {"save", VAEC_PY_KW(vaec_py_model_save),                                                               \
     "save(path, extra=b''): atomic write of the model file, with an extra record (a trainer's state)"}
#endif
