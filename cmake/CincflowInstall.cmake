# CincflowInstall.cmake: `cmake --install` puts the libraries, the public headers under
# include/cincflow/, the command-line tool, a pkg-config file and a CMake package config, so
# another project can find_package(cincflow) and link cincflow::cincflow.
include(CMakePackageConfigHelpers)

install(TARGETS cincflow_shared EXPORT cincflowTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS cincflow_static ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${CF_PUBLIC_HEADERS} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/cincflow)

install(EXPORT cincflowTargets NAMESPACE cincflow:: FILE cincflowTargets.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cincflow)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/cincflowConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/cincflowConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cincflow)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/cincflowConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cincflowConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/cincflowConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cincflow)

# Relocatable: the prefix is found from the .pc file's own folder.
file(RELATIVE_PATH CF_PC_TO_PREFIX "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/cincflow.pc.in ${CMAKE_CURRENT_BINARY_DIR}/cincflow.pc
               @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/cincflow.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
