# cmake -DMCX_SOURCE_DIR=<repo> -DMCX_SCRATCH_DIR=<dir> -P parser_test.cmake
#
# cmake/McxBazel.cmake must read plain lists and strings exactly, and must stop
# with an error (never return an empty or partial list) on what it cannot read.
cmake_minimum_required(VERSION 3.16)
include("${MCX_SOURCE_DIR}/cmake/McxBazel.cmake")
file(MAKE_DIRECTORY "${MCX_SCRATCH_DIR}")
set(build "${MCX_SCRATCH_DIR}/BUILD.bazel")
file(WRITE "${build}" [=[
# A comment with srcs = ["commented.cc"]
cc_library(
    name = "a",
    srcs = [
        "a.cc",  # trailing comment
        "sub/b.cc",
    ],
    hdrs = ["a.h"],
    include_prefix = "mcx/a",
)

cc_library(name = "one_line", srcs = ["x.cc"])

cc_library(
    name = "globbed",
    srcs = glob(["*.cc"]),
    hdrs = ["g.h"] + ["h.h"],
)
]=])

function(expect what got want)
  if(NOT "${got}" STREQUAL "${want}")
    message(FATAL_ERROR "${what}: got [${got}], want [${want}]")
  endif()
endfunction()

mcx_bazel_attr(v "${build}" cc_library a srcs)
expect("a.srcs" "${v}" "a.cc;sub/b.cc")
mcx_bazel_attr(v "${build}" cc_library a hdrs)
expect("a.hdrs" "${v}" "a.h")
mcx_bazel_attr(v "${build}" cc_library a include_prefix)
expect("a.include_prefix" "${v}" "mcx/a")
mcx_bazel_attr(v "${build}" cc_library a deps)
expect("a.deps" "${v}" "")
mcx_bazel_attr(v "${build}" cc_library one_line srcs)
expect("one_line.srcs" "${v}" "x.cc")
mcx_bazel_calls(v "${build}" cc_library)
expect("calls" "${v}" "a;one_line;globbed")

# The errors: each in its own cmake -P, which must fail with the message.
foreach(case "srcs" "hdrs" "missing")
  if(case STREQUAL "missing")
    set(call "mcx_bazel_attr(v \"${build}\" cc_library nonexistent srcs REQUIRED)")
    set(want "found no cc_library")
  else()
    set(call "mcx_bazel_attr(v \"${build}\" cc_library globbed ${case})")
    set(want "cannot read `${case}`")
  endif()
  file(WRITE "${MCX_SCRATCH_DIR}/${case}.cmake"
       "include(\"${MCX_SOURCE_DIR}/cmake/McxBazel.cmake\")\n${call}\n")
  execute_process(COMMAND "${CMAKE_COMMAND}" -P "${MCX_SCRATCH_DIR}/${case}.cmake"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "reading ${case} of the bad rule succeeded; it must fail")
  endif()
  string(FIND "${err}" "${want}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "reading ${case} failed without saying \"${want}\":\n${err}")
  endif()
endforeach()
message(STATUS "OK: the BUILD.bazel parser reads lists exactly and rejects what it cannot read")
