/* cf_plugin.h: plugins, shared libraries that register ops and layer kinds.
 *
 * A plugin is a shared library built against the installed package (find_package(cincflow) or
 * pkg-config) that exports one entry point, written with CF_PLUGIN:
 *
 *     #include <cincflow/cincflow.h>
 *
 *     CF_PLUGIN("my_layers")            // the plugin's name, recorded as its kinds' provider
 *     {
 *         cf_status st = cf_op_register(&my_op);
 *         if (st == CF_OK) st = cf_layer_kind_register(&my_kind);
 *         return st;                    // a failure is reported with cf_last_error()
 *     }
 *
 * and is loaded by path: cf_plugin_load("./libmy_layers.so") from C, `--plugin FILE` (on every
 * command, repeatable) from the command-line tool. A checkpoint records each kind's provider,
 * so a program missing a kind can say which plugin to load, but code is only ever loaded from
 * a path the user gives: never from a path found in a file, so opening a checkpoint runs no
 * code. The plugin must use the same libcincflow as the program that loads it (the tool links
 * the shared library, so a plugin linking cincflow::cincflow shares its registries).
 *
 * Not here: writing the kinds and ops themselves (cf_layer.h, cf_op.h).
 */
#ifndef CF_PLUGIN_H
#define CF_PLUGIN_H

#include "cf_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when what a plugin may rely on changes incompatibly; a plugin built for another ABI
 * is refused. */
#define CF_PLUGIN_ABI 1

/* Defines a plugin's exported symbols: its name, the ABI it was built for, and the body of its
 * init function (which registers what it provides and returns CF_OK, or a failure). */
#define CF_PLUGIN(plugin_name)                                                                 \
    __attribute__((visibility("default"))) const char cf_plugin_name[] = plugin_name;          \
    __attribute__((visibility("default"))) const int cf_plugin_abi = CF_PLUGIN_ABI;            \
    __attribute__((visibility("default"))) cf_status cf_plugin_init(void);                     \
    cf_status cf_plugin_init(void)

/* Loads the plugin at path (as dlopen finds it: give a path with a '/' for a file) and runs its
 * init, once: loading the same file again does nothing and returns CF_OK. Kinds it registers
 * without a provider of their own get the plugin's name as provider. Returns CF_OK, or
 * CF_ERR_NOT_FOUND (the file cannot be loaded, or has no CF_PLUGIN entry), CF_ERR_FORMAT (an
 * ABI other than CF_PLUGIN_ABI) or the init's failure, with cf_last_error() naming the file.
 * The library stays loaded for the life of the process. Not thread-safe with other
 * registrations in progress. */
cf_status cf_plugin_load(const char *path);

/* Plugins loaded so far, in order: their names (borrowed). */
int cf_plugin_count(void);
const char *cf_plugin_name_at(int i);

/* The provider of a kind: its own provider field, else the plugin that registered it, else
 * "cincflow". Never NULL; borrowed. */
struct cf_layer_kind;
const char *cf_layer_kind_provider(const struct cf_layer_kind *kind);

#ifdef __cplusplus
}
#endif
#endif
