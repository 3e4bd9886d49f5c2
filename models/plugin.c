/* plugin.c: loading plugins (cf_plugin.h) with dlopen, once per file, checking their ABI and
 * recording their name as the provider of the kinds they register.
 *
 * Not here: anything a plugin registers (the registries are layer_api.c's and autodiff's).
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_layer.h"
#include "cf_plugin.h"

#define MAX_PLUGINS 64

extern const char *cf__registering_plugin; /* layer_api.c */

static struct {
    char path[PATH_MAX];
    char name[128];
} loaded[MAX_PLUGINS];
static int n_loaded;
static pthread_mutex_t plugins_lock = PTHREAD_MUTEX_INITIALIZER;

cf_status cf_plugin_load(const char *path)
{
    if (!path || !*path) return cf_set_error(CF_ERR_ARG, "plugin: no path given");
    char real[PATH_MAX];
    if (!realpath(path, real)) snprintf(real, sizeof real, "%s", path);
    pthread_mutex_lock(&plugins_lock);
    cf_status st = CF_OK;
    for (int i = 0; i < n_loaded; i++)
        if (strcmp(loaded[i].path, real) == 0) {
            pthread_mutex_unlock(&plugins_lock);
            return CF_OK;
        }
    if (n_loaded == MAX_PLUGINS) {
        pthread_mutex_unlock(&plugins_lock);
        return cf_set_error(CF_ERR_NOMEM, "%s: more than %d plugins", path, MAX_PLUGINS);
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        pthread_mutex_unlock(&plugins_lock);
        return cf_set_error(CF_ERR_NOT_FOUND, "plugin %s: cannot load it (%s)", path,
                            why ? why : "unknown reason");
    }
    const char *name = dlsym(h, "cf_plugin_name");
    const int *abi = dlsym(h, "cf_plugin_abi");
    cf_status (*init)(void) = NULL;
    *(void **)&init = dlsym(h, "cf_plugin_init");
    if (!name || !abi || !init) {
        st = cf_set_error(CF_ERR_NOT_FOUND, "plugin %s: not a cincflow plugin (it exports no "
                          "cf_plugin_name, cf_plugin_abi and cf_plugin_init: define it with "
                          "CF_PLUGIN)", path);
    } else if (*abi != CF_PLUGIN_ABI) {
        st = cf_set_error(CF_ERR_FORMAT, "plugin %s ('%s') was built for plugin ABI %d; this "
                          "library has ABI %d: rebuild it against this version", path, name,
                          *abi, CF_PLUGIN_ABI);
    } else {
        snprintf(loaded[n_loaded].path, sizeof loaded[n_loaded].path, "%s", real);
        snprintf(loaded[n_loaded].name, sizeof loaded[n_loaded].name, "%s", name);
        (void)cf_layer_kind_count(); /* the built-in kinds first, so they stay the library's */
        cf__registering_plugin = loaded[n_loaded].name;
        st = init();
        cf__registering_plugin = NULL;
        if (st != CF_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", cf_last_error());
            st = cf_set_error(st, "plugin %s ('%s'): its init failed: %s", path, name, msg);
        } else {
            n_loaded++;
        }
    }
    /* A plugin whose init failed may have registered part of what it provides, which points
     * into it: it stays loaded. One that never ran is closed. */
    if (st != CF_OK && (!name || !abi || !init || *abi != CF_PLUGIN_ABI)) dlclose(h);
    pthread_mutex_unlock(&plugins_lock);
    return st;
}

int cf_plugin_count(void)
{
    pthread_mutex_lock(&plugins_lock);
    int n = n_loaded;
    pthread_mutex_unlock(&plugins_lock);
    return n;
}

const char *cf_plugin_name_at(int i)
{
    pthread_mutex_lock(&plugins_lock);
    const char *n = i >= 0 && i < n_loaded ? loaded[i].name : NULL;
    pthread_mutex_unlock(&plugins_lock);
    return n;
}
