# cmake -DMCX_SOURCE_DIR=<repo> [-DMCX_TEST_PACKAGES="context;pool;..."] -P check_sources.cmake
#
# Fails if the CMake build would not compile what the Bazel build compiles:
#  - a .cc/.c/.h file in a library package (context/, pool/, freelist/, c/,
#    and the test kit, testing/) that is in neither `srcs` nor `hdrs` of its
#    cc_library,
#  - a listed file that does not exist,
#  - a library whose lists parse as empty (the parser found nothing),
#  - a .cc/.c/.h file in a test package (tests/<package>/) that is in no rule
#    of its BUILD.bazel (not a test's srcs).
# The lists are read with the same parser as the CMake build
# (cmake/McxBazel.cmake), so this also checks that parser.
cmake_minimum_required(VERSION 3.16)
if(NOT MCX_SOURCE_DIR)
  get_filename_component(MCX_SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
endif()
if(NOT DEFINED MCX_TEST_PACKAGES)
  set(MCX_TEST_PACKAGES context pool freelist stress kit c)
endif()
include("${MCX_SOURCE_DIR}/cmake/McxBazel.cmake")

set(problems "")
set(checked 0)

# check_package(<package dir> <listed files, relative to it>)
function(check_package pkg listed)
  set(dir "${MCX_SOURCE_DIR}/${pkg}")
  file(GLOB_RECURSE present RELATIVE "${dir}" "${dir}/*.cc" "${dir}/*.c" "${dir}/*.h")
  list(LENGTH present n)
  math(EXPR n "${checked} + ${n}")
  set(checked ${n} PARENT_SCOPE)
  foreach(f IN LISTS present)
    if(NOT f IN_LIST listed)
      list(APPEND problems "${pkg}/${f} is in no srcs/hdrs list of ${pkg}/BUILD.bazel")
    endif()
  endforeach()
  foreach(f IN LISTS listed)
    if(NOT EXISTS "${dir}/${f}")
      list(APPEND problems "${pkg}/BUILD.bazel lists ${f}, which does not exist")
    endif()
  endforeach()
  set(problems "${problems}" PARENT_SCOPE)
endfunction()

# The libraries. A package may hold several (context/: core, context, dot):
# a file must be in the lists of one of them.
set(libraries 0)
set(packages "")
foreach(lib IN LISTS MCX_BAZEL_LIBRARIES MCX_BAZEL_TESTING_KIT)
  string(REPLACE ":" ";" lib "${lib}")
  list(GET lib 0 pkg)
  list(GET lib 1 name)
  mcx_bazel_library(L "${MCX_SOURCE_DIR}" "${pkg}" "${name}")
  set(listed ${L_SRCS} ${L_HDRS})
  if(L_SRCS STREQUAL "" AND L_HDRS STREQUAL "")
    list(APPEND problems "//${pkg}:${name}: srcs and hdrs parsed as empty")
  endif()
  list(LENGTH listed n)
  message(STATUS "//${pkg}:${name}: ${n} files listed")
  string(MAKE_C_IDENTIFIER "${pkg}" key)
  list(APPEND listed_in_${key} ${listed})
  list(APPEND packages "${pkg}")
  math(EXPR libraries "${libraries} + 1")
endforeach()
list(REMOVE_DUPLICATES packages)
foreach(pkg IN LISTS packages)
  string(MAKE_C_IDENTIFIER "${pkg}" key)
  check_package("${pkg}" "${listed_in_${key}}")
endforeach()
if(libraries EQUAL 0)
  list(APPEND problems "no libraries (MCX_BAZEL_LIBRARIES is empty)")
endif()

# The test packages: every rule's srcs/hdrs, plus mcx_test's default source.
foreach(pkg IN LISTS MCX_TEST_PACKAGES)
  set(build_file "${MCX_SOURCE_DIR}/tests/${pkg}/BUILD.bazel")
  set(listed "")
  foreach(kind cc_library cc_test cc_binary mcx_test)
    mcx_bazel_calls(names "${build_file}" ${kind})
    foreach(name IN LISTS names)
      mcx_bazel_attr(srcs "${build_file}" ${kind} "${name}" srcs)
      mcx_bazel_attr(hdrs "${build_file}" ${kind} "${name}" hdrs)
      if(kind STREQUAL "mcx_test" AND srcs STREQUAL "")
        set(srcs "${name}.cc")
      endif()
      list(APPEND listed ${srcs} ${hdrs})
    endforeach()
  endforeach()
  if(listed STREQUAL "")
    list(APPEND problems "tests/${pkg}/BUILD.bazel: no rules with sources found")
  endif()
  check_package("tests/${pkg}" "${listed}")
endforeach()

if(checked EQUAL 0)
  list(APPEND problems "no source files found under ${MCX_SOURCE_DIR}")
endif()
if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "BUILD.bazel lists and the source tree disagree:\n  ${text}\n"
          "Add the file to the right srcs/hdrs list (the CMake build reads them too).")
endif()
message(STATUS "OK: ${checked} source files, each listed in a BUILD.bazel file")
