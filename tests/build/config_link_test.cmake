# cmake -DMCX_SOURCE_DIR=<repo> -DMCX_SCRATCH_DIR=<dir> -DMCX_CXX=<c++> -DMCX_C=<cc>
#       [-DMCX_INCLUDE_DIRS=<dirs>] -P config_link_test.cmake
#
# mcx/context/config.h (context/config.h.in) keeps a consumer in the
# library's configuration:
#   - a consumer compiled against the headers of one configuration does not
#     link against a library of another, and the linker names the symbol
#     that spells the configuration the headers were from;
#   - a consumer that defines a configuration macro with another value than
#     the recorded one stops at compile time with an #error naming it;
#   - the header itself compiles warning-free as C99 and C++17, and a
#     consumer in the library's configuration links and runs.
# The "library" is context/config.cc, the translation unit that defines the
# symbol, compiled against headers configured as the CMake build does.
cmake_minimum_required(VERSION 3.16)
foreach(v MCX_SOURCE_DIR MCX_SCRATCH_DIR MCX_CXX MCX_C)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "config_link_test.cmake: -D${v}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE "${MCX_SCRATCH_DIR}")
file(MAKE_DIRECTORY "${MCX_SCRATCH_DIR}")
set(extra_includes "")
foreach(dir IN LISTS MCX_INCLUDE_DIRS)
  list(APPEND extra_includes "-I${dir}")
endforeach()

# configure_headers(<name> <checking>): <scratch>/<name>/mcx/context/config.h
# with MCX_CHECKING = <checking> and everything else off.
function(configure_headers name checking)
  set(MCX_CONFIG_CHECKING ${checking})
  foreach(v VALGRIND DIRECT SANITIZE_ADDRESS SANITIZE_THREAD SANITIZE_UNDEFINED)
    set(MCX_CONFIG_${v} 0)
  endforeach()
  configure_file("${MCX_SOURCE_DIR}/context/config.h.in"
                 "${MCX_SCRATCH_DIR}/${name}/mcx/context/config.h" @ONLY)
endfunction()
configure_headers(default 0)
configure_headers(checking 1)

# run(<expect: PASS|FAIL> <what> <command...>): runs the command; sets
# `output` (stdout and stderr) in the caller's scope.
function(run expect what)
  execute_process(COMMAND ${ARGN} WORKING_DIRECTORY "${MCX_SCRATCH_DIR}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(output "${out}${err}" PARENT_SCOPE)
  if(expect STREQUAL "PASS" AND NOT rc EQUAL 0)
    message(FATAL_ERROR "${what}: failed (${rc}), it must succeed:\n${out}${err}")
  elseif(expect STREQUAL "FAIL" AND rc EQUAL 0)
    message(FATAL_ERROR "${what}: succeeded, it must fail:\n${out}${err}")
  endif()
endfunction()

function(expect_in what text want)
  string(FIND "${text}" "${want}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${what}: the output does not say \"${want}\":\n${text}")
  endif()
endfunction()

set(consumer_cc "${MCX_SCRATCH_DIR}/consumer.cc")
file(WRITE "${consumer_cc}" [=[
#include "mcx/context/config.h"
int main() { return MCX_CHECKING + MCX_VALGRIND + MCX_DIRECT + MCX_SANITIZE_ADDRESS; }
]=])
set(consumer_c "${MCX_SCRATCH_DIR}/consumer.c")
file(WRITE "${consumer_c}" [=[
#include "mcx/context/config.h"
int main(void) { return MCX_CHECKING; }
]=])
set(cxx "${MCX_CXX}" -std=c++17 -Wall -Wextra -Werror ${extra_includes})

# The library of the default configuration.
run(PASS "compiling config.cc (default headers)"
    ${cxx} -I default -c "${MCX_SOURCE_DIR}/context/config.cc" -o library.o)

# A consumer of the same configuration links and runs; C99 compiles too.
run(PASS "a consumer in the library's configuration"
    ${cxx} -I default "${consumer_cc}" library.o -o matching)
run(PASS "running it" "${MCX_SCRATCH_DIR}/matching")
run(PASS "the header as C99"
    "${MCX_C}" -std=c99 -Wall -Wextra -pedantic-errors -Werror -I checking -c "${consumer_c}"
    -o consumer_c.o)

# The checking build's headers against the default library: a link error
# that names the configuration of the headers.
run(PASS "compiling a consumer against the checking headers"
    ${cxx} -I checking -c "${consumer_cc}" -o checking_consumer.o)
run(FAIL "linking a checking consumer with a default library"
    ${cxx} checking_consumer.o library.o -o mismatched)
expect_in("the mismatched link" "${output}"
          "mcx_config_checking1_valgrind0_direct0_asan0_tsan0_ubsan0")

# A contradicting definition stops at compile time; an agreeing one is fine.
run(FAIL "-DMCX_VALGRIND=1 against default headers"
    ${cxx} -I default -DMCX_VALGRIND=1 -c "${consumer_cc}" -o contradicting.o)
expect_in("-DMCX_VALGRIND=1" "${output}" "MCX_VALGRIND is defined with another value")
run(FAIL "-DMCX_CHECKING (as 1) against default headers"
    ${cxx} -I default -DMCX_CHECKING -c "${consumer_cc}" -o contradicting.o)
expect_in("-DMCX_CHECKING" "${output}" "MCX_CHECKING is defined with another value")
run(PASS "-DMCX_CHECKING=1 against checking headers"
    ${cxx} -I checking -DMCX_CHECKING=1 -c "${consumer_cc}" -o agreeing.o)

message(STATUS "OK: a configuration mismatch fails to link, naming the configuration; "
        "a contradicting -D fails to compile")
