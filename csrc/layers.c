/* layers.c -- the layer kinds: one line each (net.h says what a kind provides). */
#include "net.h"

extern const vaec_layer_ops vaec_layer_linear, vaec_layer_act, vaec_layer_label, vaec_layer_conv2d,
    vaec_layer_convt2d, vaec_layer_maxpool2d, vaec_layer_avgpool2d, vaec_layer_upsample, vaec_layer_flatten,
    vaec_layer_unflatten, vaec_layer_to_nchw;

const vaec_layer_ops *vaec_layer_ops_of(int kind) {
    switch (kind) {
    case VAEC_LAYER_LINEAR: return &vaec_layer_linear;
    case VAEC_LAYER_ACT: return &vaec_layer_act;
    case VAEC_LAYER_CONV2D: return &vaec_layer_conv2d;
    case VAEC_LAYER_CONVT2D: return &vaec_layer_convt2d;
    case VAEC_LAYER_MAXPOOL2D: return &vaec_layer_maxpool2d;
    case VAEC_LAYER_AVGPOOL2D: return &vaec_layer_avgpool2d;
    case VAEC_LAYER_UPSAMPLE: return &vaec_layer_upsample;
    case VAEC_LAYER_FLATTEN: return &vaec_layer_flatten;
    case VAEC_LAYER_UNFLATTEN: return &vaec_layer_unflatten;
    case VAEC_LAYER_LABEL_LINEAR: return &vaec_layer_label;
    case VAEC_LAYER_TO_NCHW: return &vaec_layer_to_nchw;
    default: return NULL;
    }
}
