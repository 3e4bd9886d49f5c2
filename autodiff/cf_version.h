/* cf_version.h: the library's version, kept here once (CMakeLists.txt reads it from this file). */
#ifndef CF_VERSION_H
#define CF_VERSION_H

#define CF_VERSION_MAJOR 0
#define CF_VERSION_MINOR 1
#define CF_VERSION_PATCH 0
#define CF_VERSION_STRING "0.1.0"

#endif
