# CincflowDeps.cmake: finds cincflow's dependencies (all from Debian) and gathers them in the
# interface target cf_deps. A missing dependency stops configuration with the Debian package
# that provides it; tests/run.sh and examples/run.sh install them.

find_package(PkgConfig)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "pkg-config not found: install the Debian package pkg-config")
endif()

# cf_require_pkg(<var> <pkg-config module> <Debian package>)
function(cf_require_pkg var module debian)
  pkg_check_modules(${var} QUIET IMPORTED_TARGET ${module})
  if(NOT ${var}_FOUND)
    message(FATAL_ERROR "${module} not found (pkg-config): install the Debian package ${debian}")
  endif()
endfunction()

cf_require_pkg(CF_HDF5 hdf5 libhdf5-dev)
cf_require_pkg(CF_PNG libpng libpng-dev)
cf_require_pkg(CF_ZLIB zlib zlib1g-dev)
cf_require_pkg(CF_CJSON libcjson libcjson-dev)

# libxsmm 1.17 ships static archives whose pkg-config file omits their BLAS; we link OpenBLAS
# after it (libxsmm's GEMM fallback and our own sgemm calls both use it).
find_path(CF_XSMM_INCLUDE libxsmm.h)
find_library(CF_XSMM_LIB NAMES libxsmm.a xsmm)
if(NOT CF_XSMM_INCLUDE OR NOT CF_XSMM_LIB)
  message(FATAL_ERROR "libxsmm not found: install the Debian package libxsmm-dev")
endif()

find_path(CF_CBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas)
find_library(CF_OPENBLAS_LIB NAMES openblas)
if(NOT CF_CBLAS_INCLUDE OR NOT CF_OPENBLAS_LIB)
  message(FATAL_ERROR "OpenBLAS not found: install the Debian package libopenblas-dev")
endif()

find_package(OpenMP)
if(NOT OpenMP_C_FOUND)
  message(FATAL_ERROR "OpenMP for C not found: install the Debian package libgomp1 (gcc)")
endif()
find_package(Threads REQUIRED)

add_library(cf_deps INTERFACE)
target_include_directories(cf_deps INTERFACE ${CF_XSMM_INCLUDE} ${CF_CBLAS_INCLUDE})
target_link_libraries(cf_deps INTERFACE PkgConfig::CF_HDF5 PkgConfig::CF_PNG PkgConfig::CF_ZLIB
                      PkgConfig::CF_CJSON
                      ${CF_XSMM_LIB} ${CF_OPENBLAS_LIB} OpenMP::OpenMP_C Threads::Threads
                      ${CMAKE_DL_LIBS} m)

if(CF_BUILD_TESTS)
  cf_require_pkg(CF_CHECK check check)
endif()

# MPI (Open MPI from Debian: libopenmpi-dev, and openmpi-bin for mpirun) for data-parallel
# training in the command-line tool only; the library never links it. CF_MPI: AUTO uses it when
# found, ON requires it, OFF builds without it. CF_HAVE_MPI tells the rest of the build.
set(CF_MPI AUTO CACHE STRING "Data-parallel training over MPI in the cincflow tool: AUTO, ON or OFF")
set_property(CACHE CF_MPI PROPERTY STRINGS AUTO ON OFF)
set(CF_HAVE_MPI OFF)
if(NOT CF_MPI STREQUAL "OFF")
  find_package(MPI COMPONENTS C QUIET)
  if(MPI_C_FOUND)
    set(CF_HAVE_MPI ON)
    message(STATUS "MPI found (${MPI_C_LIBRARIES}): `mpirun -np N cincflow train` trains on N processes")
  elseif(CF_MPI STREQUAL "ON")
    message(FATAL_ERROR "MPI for C not found (CF_MPI=ON): install the Debian packages "
                        "libopenmpi-dev and openmpi-bin, or configure with -DCF_MPI=OFF")
  else()
    message(STATUS "MPI not found: the cincflow tool trains on one process "
                   "(install libopenmpi-dev and openmpi-bin for more)")
  endif()
endif()
