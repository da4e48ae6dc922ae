/* _flow.c -- the binding of the flow model (placeholder until it lands): registers its types. */
#include "_common.h"

int vaec_py_add_flow(PyObject *module) {
    (void)module;
    return 0;
}
