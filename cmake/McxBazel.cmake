# Reads build facts out of mcx's BUILD.bazel files, so that the source lists,
# header lists, include prefixes and test lists live in one place (the Bazel
# BUILD files) and the CMake build cannot drift from the Bazel build.
#
# The parser is deliberately small and strict. It understands buildifier-
# formatted BUILD files: every top-level call starts at column 0, `name` is its
# first argument, and the attributes read here are plain string lists
# (`srcs = ["a.cc", "b.cc"]`) or plain strings (`include_prefix = "mcx/pool"`).
# Anything else it is asked to read (glob(), select(), list concatenation, a
# variable) is a configuration error, never a silently empty list.

# mcx_bazel_rule_body(<out_var> <build_file> <rule_kind> <name>)
#
# Sets <out_var> to the text of the call `<rule_kind>(name = "<name>", ...)` in
# <build_file> (comments removed), or to "" if there is no such call.
function(mcx_bazel_rule_body out_var build_file rule_kind name)
  if(NOT EXISTS "${build_file}")
    message(FATAL_ERROR "mcx: ${build_file} does not exist")
  endif()
  file(READ "${build_file}" content)
  # Comments: BUILD strings read by this parser never contain '#'.
  string(REGEX REPLACE "#[^\n]*" "" content "\n${content}\n")
  string(REGEX MATCH
         "\n${rule_kind}\\([ \t\n]*name[ \t\n]*=[ \t\n]*\"${name}\"" head "${content}")
  if(head STREQUAL "")
    set(${out_var} "" PARENT_SCOPE)
    return()
  endif()
  string(FIND "${content}" "${head}" start)
  math(EXPR start "${start} + 1")
  string(SUBSTRING "${content}" ${start} -1 rest)
  # The call ends where the next top-level statement (column 0) begins.
  string(REGEX MATCH "\n[A-Za-z_]" next "${rest}")
  if(next STREQUAL "")
    set(${out_var} "${rest}" PARENT_SCOPE)
  else()
    string(FIND "${rest}" "${next}" end)
    string(SUBSTRING "${rest}" 0 ${end} body)
    set(${out_var} "${body}" PARENT_SCOPE)
  endif()
endfunction()

# mcx_bazel_attr(<out_var> <build_file> <rule_kind> <name> <attr>
#                [REQUIRED] [NONEMPTY])
#
# Sets <out_var> to the value of attribute <attr> of the call
# `<rule_kind>(name = "<name>", ...)` in <build_file>: a CMake list for a
# string-list attribute, a string for a string attribute, "" if the attribute
# is absent. REQUIRED: the rule must exist and have the attribute. NONEMPTY:
# the value must not be empty (implies REQUIRED).
function(mcx_bazel_attr out_var build_file rule_kind name attr)
  cmake_parse_arguments(PARSE_ARGV 5 arg "REQUIRED;NONEMPTY" "" "")
  if(arg_NONEMPTY)
    set(arg_REQUIRED TRUE)
  endif()
  set(where "${rule_kind}(name = \"${name}\") in ${build_file}")
  mcx_bazel_rule_body(body "${build_file}" "${rule_kind}" "${name}")
  if(body STREQUAL "")
    if(arg_REQUIRED)
      message(FATAL_ERROR "mcx: found no ${where}")
    endif()
    set(${out_var} "" PARENT_SCOPE)
    return()
  endif()

  # The attribute: a keyword argument preceded by '(' ',' or whitespace.
  string(REGEX MATCH "[(,[ \t\n]${attr}[ \t\n]*=[ \t\n]*[^ \t\n]" assign "${body}")
  if(assign STREQUAL "")
    if(arg_REQUIRED)
      message(FATAL_ERROR "mcx: ${where} has no `${attr}`")
    endif()
    set(${out_var} "" PARENT_SCOPE)
    return()
  endif()
  string(FIND "${body}" "${assign}" pos)
  string(LENGTH "${assign}" len)
  math(EXPR pos "${pos} + ${len} - 1")
  string(SUBSTRING "${body}" ${pos} -1 value_text)

  if(value_text MATCHES "^\\[")
    # A list: everything up to the first ']' (strings here contain none),
    # which must be followed by ',' or ')' (no `+ glob(...)` and the like).
    string(REGEX MATCH "^\\[[^]]*\\][ \t\n]*[,)]" list_text "${value_text}")
    if(list_text STREQUAL "")
      message(FATAL_ERROR
              "mcx: cannot read `${attr}` of ${where}: only a plain list of strings "
              "is understood (no glob(), select() or `+`)")
    endif()
    string(REGEX REPLACE "\"[^\"]*\"" "" leftover "${list_text}")
    if(NOT leftover MATCHES "^\\[[ \t\n,]*\\][ \t\n]*[,)]$")
      message(FATAL_ERROR
              "mcx: cannot read `${attr}` of ${where}: only a plain list of strings "
              "is understood, got: ${list_text}")
    endif()
    string(REGEX MATCHALL "\"[^\"]*\"" quoted "${list_text}")
    set(items "")
    foreach(q IN LISTS quoted)
      string(REGEX REPLACE "^\"(.*)\"$" "\\1" item "${q}")
      list(APPEND items "${item}")
    endforeach()
    set(value "${items}")
  elseif(value_text MATCHES "^\"([^\"]*)\"[ \t\n]*[,)]")
    set(value "${CMAKE_MATCH_1}")
  else()
    string(REGEX MATCH "^[^\n]*" first_line "${value_text}")
    message(FATAL_ERROR
            "mcx: cannot read `${attr}` of ${where}: expected a list of strings or "
            "a string, got: ${first_line}")
  endif()

  if(arg_NONEMPTY AND "${value}" STREQUAL "")
    message(FATAL_ERROR "mcx: `${attr}` of ${where} is empty")
  endif()
  set(${out_var} "${value}" PARENT_SCOPE)
endfunction()

# mcx_bazel_calls(<out_var> <build_file> <rule_kind>)
#
# Sets <out_var> to the names of every `<rule_kind>(name = "...")` call in
# <build_file>, in file order.
function(mcx_bazel_calls out_var build_file rule_kind)
  file(READ "${build_file}" content)
  string(REGEX REPLACE "#[^\n]*" "" content "\n${content}")
  string(REGEX MATCHALL "\n${rule_kind}\\([ \t\n]*name[ \t\n]*=[ \t\n]*\"[^\"]+\""
         heads "${content}")
  set(names "")
  foreach(h IN LISTS heads)
    string(REGEX REPLACE ".*\"([^\"]+)\"$" "\\1" n "${h}")
    list(APPEND names "${n}")
  endforeach()
  set(${out_var} "${names}" PARENT_SCOPE)
endfunction()

# mcx_bazel_module_version(<out_var> <module_bazel_file>)
#
# The `version` of the `module(...)` call in MODULE.bazel.
function(mcx_bazel_module_version out_var module_file)
  file(READ "${module_file}" content)
  string(REGEX REPLACE "#[^\n]*" "" content "\n${content}")
  if(NOT content MATCHES "\nmodule\\([^)]*version[ \t\n]*=[ \t\n]*\"([0-9][0-9.]*)\"")
    message(FATAL_ERROR "mcx: no module(version = \"...\") in ${module_file}")
  endif()
  set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
endfunction()

# The libraries of the CMake build, each compiled from Bazel cc_library rules
# ("<package dir>:<cc_library name>", in link order), and what they are:
#   mcx_core  mcx::core, libmcx_core, mcx-core.pc: the tree, its text and JSON
#             reports and the dump, the kinds, the C API, handle pools and
#             the buddy source. Links no Abseil library: C programs and
#             embedders link this.
#   mcx       mcx::mcx, libmcx, mcx.pc: mcx_core and the members of Context
#             that return absl::Status (status.cc), with Abseil's status.
#   mcx_dot   mcx::dot, libmcx_dot, mcx-dot.pc: the report as a Graphviz
#             drawing (context/dot.h), on mcx_core and Abseil's strings.
# context/BUILD.bazel says why the core is split this way.
set(MCX_CMAKE_LIBRARIES mcx_core mcx mcx_dot)
set(MCX_BAZEL_LIBRARIES_mcx_core "context:core" "pool:pool" "freelist:freelist" "c:mcx_c"
    "slab:slab" "generation:generation" "buddy:buddy" "handle:handle")
set(MCX_BAZEL_LIBRARIES_mcx "context:context")
set(MCX_BAZEL_LIBRARIES_mcx_dot "context:dot")
# Every rule above (tests/build/check_sources.cmake checks them all).
set(MCX_BAZEL_LIBRARIES
    ${MCX_BAZEL_LIBRARIES_mcx_core} ${MCX_BAZEL_LIBRARIES_mcx} ${MCX_BAZEL_LIBRARIES_mcx_dot})

# mcx_bazel_label_library(<out_var> <label>)
#
# The CMake library (of MCX_CMAKE_LIBRARIES) compiled from the Bazel label
# //<package>:<name> (or //<package> for <name> equal to the package's last
# directory), or "" if none is.
function(mcx_bazel_label_library out_var label)
  set(found "")
  foreach(lib IN LISTS MCX_CMAKE_LIBRARIES)
    foreach(rule IN LISTS MCX_BAZEL_LIBRARIES_${lib})
      string(REPLACE ":" ";" parts "${rule}")
      list(GET parts 0 pkg)
      list(GET parts 1 name)
      get_filename_component(last "${pkg}" NAME)
      if(label STREQUAL "//${pkg}:${name}" OR (name STREQUAL last AND label STREQUAL "//${pkg}"))
        set(found "${lib}")
      endif()
    endforeach()
  endforeach()
  set(${out_var} "${found}" PARENT_SCOPE)
endfunction()

# The test kit for kind authors (GoogleTest-based, testonly in Bazel), built
# as a library of its own, mcx::testing, and installed as the optional
# component `testing` of the CMake package.
set(MCX_BAZEL_TESTING_KIT "testing:testing")

# mcx_bazel_library(<prefix> <source_dir> <package_dir> <name>)
#
# Reads cc_library <name> of <source_dir>/<package_dir>/BUILD.bazel and sets,
# in the caller's scope:
#   <prefix>_SRCS            sources, relative to the package directory
#   <prefix>_HDRS            headers, relative to the package directory
#   <prefix>_INCLUDE_PREFIX  the include_prefix ("" if none)
#   <prefix>_DEPS            deps labels
# A library may have no headers (//context:context, whose members are
# declared in //context:core's context.h) or no sources, not neither.
function(mcx_bazel_library prefix source_dir package_dir name)
  set(build_file "${source_dir}/${package_dir}/BUILD.bazel")
  mcx_bazel_rule_body(body "${build_file}" cc_library "${name}")
  if(body STREQUAL "")
    message(FATAL_ERROR "mcx: found no cc_library(name = \"${name}\") in ${build_file}")
  endif()
  mcx_bazel_attr(srcs "${build_file}" cc_library "${name}" srcs)
  mcx_bazel_attr(hdrs "${build_file}" cc_library "${name}" hdrs)
  if(srcs STREQUAL "" AND hdrs STREQUAL "")
    message(FATAL_ERROR "mcx: cc_library(name = \"${name}\") in ${build_file}: "
            "neither srcs nor hdrs could be read")
  endif()
  mcx_bazel_attr(include_prefix "${build_file}" cc_library "${name}" include_prefix)
  mcx_bazel_attr(deps "${build_file}" cc_library "${name}" deps)
  set(${prefix}_SRCS "${srcs}" PARENT_SCOPE)
  set(${prefix}_HDRS "${hdrs}" PARENT_SCOPE)
  set(${prefix}_INCLUDE_PREFIX "${include_prefix}" PARENT_SCOPE)
  set(${prefix}_DEPS "${deps}" PARENT_SCOPE)
endfunction()

# mcx_bazel_absl_deps(<cmake_targets_var> <pkgconfig_names_var> <labels...>)
#
# Maps the @com_google_absl labels among <labels> onto the targets of
# Abseil's CMake package and the names of its pkg-config modules:
#   @com_google_absl//absl/strings:str_format -> absl::str_format, absl_str_format
#   @com_google_absl//absl/status             -> absl::status,     absl_status
# Other labels are ignored; duplicates are removed.
function(mcx_bazel_absl_deps targets_var pcs_var)
  set(targets "")
  set(pcs "")
  foreach(label IN LISTS ARGN)
    if(label MATCHES "^@com_google_absl//absl/([a-z_/]+):([a-z_]+)$")
      set(n "${CMAKE_MATCH_2}")
    elseif(label MATCHES "^@com_google_absl//absl/([a-z_/]*/)?([a-z_]+)$")
      set(n "${CMAKE_MATCH_2}")
    elseif(label MATCHES "^@com_google_absl")
      message(FATAL_ERROR "mcx: cannot map the Abseil label ${label} onto a CMake target")
    else()
      continue()
    endif()
    list(APPEND targets "absl::${n}")
    list(APPEND pcs "absl_${n}")
  endforeach()
  list(REMOVE_DUPLICATES targets)
  list(REMOVE_DUPLICATES pcs)
  set(${targets_var} "${targets}" PARENT_SCOPE)
  set(${pcs_var} "${pcs}" PARENT_SCOPE)
endfunction()
