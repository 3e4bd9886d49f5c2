/* cf_layer_list.h: the built-in layer kinds, one X-macro entry each: X(name). Each entry names
 * a `const cf_layer_kind cf__kind_<name>` defined in models/<file>_layer.c, registered at first
 * use of the registry in this order (which is also the order of the command line's choices for
 * a role: --conv cinc|1x1|emerging, --coupling quad|affine). Adding a built-in kind is its file
 * plus one line here; the command line, `cincflow check --kind` and the tests that walk every
 * kind follow from the registry. */
#ifndef CF_LAYER_LIST_H
#define CF_LAYER_LIST_H

#define CF_LAYER_LIST(X)                                                                     \
    X(actnorm)                                                                               \
    X(cinc_conv)                                                                             \
    X(invconv1x1)                                                                            \
    X(emerging_conv)                                                                         \
    X(masked_conv)                                                                           \
    X(quad_coupling)                                                                         \
    X(affine_coupling)                                                                       \
    X(squeeze)                                                                               \
    X(split)                                                                                 \
    X(prior)

#endif
