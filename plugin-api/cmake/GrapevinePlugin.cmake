# grapevine_add_plugin(NAME SOURCES... [INSTALL])
# Builds NAME.so from SOURCES as a Grapevine plugin: C++20, hidden symbols
# (only the entry point is exported), linked against Grapevine::sdk. With
# INSTALL it is installed where the host looks for plugins.
include_guard(GLOBAL)
function(grapevine_add_plugin name)
  cmake_parse_arguments(GP "INSTALL" "" "SOURCES" ${ARGN})
  set(sources ${GP_SOURCES} ${GP_UNPARSED_ARGUMENTS})
  add_library(${name} MODULE ${sources})
  target_link_libraries(${name} PRIVATE Grapevine::sdk)
  target_compile_features(${name} PRIVATE cxx_std_20)
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  # Export the entry point only: a plugin's C++ internals (template
  # instances included) stay private, so two plugins never collide.
  set(version_script ${CMAKE_CURRENT_BINARY_DIR}/${name}.exports)
  file(WRITE ${version_script} "{ global: grapevine_plugin_entry_v1; local: *; };\n")
  target_link_options(${name} PRIVATE -Wl,--no-undefined -Wl,-z,defs
    -Wl,--version-script=${version_script})
  set_property(TARGET ${name} APPEND PROPERTY LINK_DEPENDS ${version_script})
  if(DEFINED GRAPEVINE_PLUGIN_OUTPUT_DIR)
    set_target_properties(${name} PROPERTIES
      LIBRARY_OUTPUT_DIRECTORY ${GRAPEVINE_PLUGIN_OUTPUT_DIR})
  endif()
  if(GP_INSTALL)
    if(DEFINED GRAPEVINE_PLUGIN_SUBDIR)
      install(TARGETS ${name} LIBRARY DESTINATION ${GRAPEVINE_PLUGIN_SUBDIR})
    else()
      install(TARGETS ${name} LIBRARY DESTINATION ${GRAPEVINE_PLUGIN_INSTALL_DIR})
    endif()
  endif()
endfunction()
