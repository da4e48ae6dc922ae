/* _m2.c -- the binding of the m2 model (placeholder until it lands): registers its types. */
#include "_common.h"

int vaec_py_add_m2(PyObject *module) {
    (void)module;
    return 0;
}
