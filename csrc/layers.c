/* layers.c -- the layer kinds: one line each (net.h says what a kind provides). */
#include "net.h"

extern const vaec_layer_ops vaec_layer_linear, vaec_layer_act, vaec_layer_label;

const vaec_layer_ops *vaec_layer_ops_of(int kind) {
    switch (kind) {
    case VAEC_LAYER_LINEAR: return &vaec_layer_linear;
    case VAEC_LAYER_ACT: return &vaec_layer_act;
    case VAEC_LAYER_LABEL_LINEAR: return &vaec_layer_label;
    default: return NULL;
    }
}
