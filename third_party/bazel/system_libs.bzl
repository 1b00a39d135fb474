"""Repositories that wrap the system (Debian) C++ libraries for the WORKSPACE build.

The WORKSPACE build runs offline with Debian's packages:

  libabsl-dev       -> @com_google_absl
  libgtest-dev      -> @com_google_googletest  (libgmock-dev too)
  libbenchmark-dev  -> @com_github_google_benchmark
  liblua5.4-dev     -> @lua       (//:lua; for examples/lua and bench/)
  libsqlite3-dev    -> @sqlite3   (//:sqlite3; for examples/sqlite and bench/)
  libtalloc-dev     -> @talloc    (//:talloc; peer in bench/workloads)
  libapr1-dev       -> @apr       (//:apr; peer in bench/workloads)
  libmimalloc-dev   -> @mimalloc  (//:mimalloc; bench/workloads_mimalloc only:
                                   linking it replaces malloc in that binary)
  libprotobuf-dev   -> @com_google_protobuf (//:protobuf; peer in bench/threads:
                                   protobuf's thread-safe Arena)

The repository names and target labels match the upstream projects (and the
Bazel Central Registry modules used by //MODULE.bazel with `repo_name`), so
BUILD files are the same for both build paths.

Headers live in /usr/include, which is on the compiler's default search path,
so the generated targets have no `hdrs`; they only carry `linkopts`. Lua is
the exception: Debian installs it in /usr/include/lua5.4 (so that several Lua
versions can coexist), so @lua links that directory into the repository and
exports it with `includes`.

For Abseil, the link flags are not hard-coded: Debian's libabsl-dev ships one
pkg-config file per Abseil CMake target (absl_<name>.pc, with `Requires:` and
`Libs:`). The repository rule reads those files and generates one cc_library
per .pc file under //pkgconfig (with `deps` following `Requires:`), and the
upstream-style labels (//absl/strings:str_format, ...) are aliases onto them.
So every label links exactly the libraries Abseil itself says it needs, and the
mapping follows the installed Abseil version. Labels whose .pc file does not
exist in the installed version (e.g. //absl/log in Debian 12's 20220623) are
simply not generated.
"""

# Upstream Bazel package -> targets. An entry "name" maps to absl_<name>.pc;
# "name=pcname" is used where the CMake (pkg-config) name differs from the
# Bazel target name. Targets missing from the installed Abseil are skipped.
_ABSL_LABELS = {
    "absl/algorithm": ["algorithm", "container=absl_algorithm_container"],
    "absl/base": [
        "atomic_hook",
        "base",
        "base_internal",
        "config",
        "core_headers",
        "dynamic_annotations",
        "endian",
        "errno_saver",
        "fast_type_id",
        "log_severity",
        "malloc_internal",
        "nullability",
        "no_destructor",
        "prefetch",
        "pretty_function",
        "raw_logging_internal",
        "spinlock_wait",
        "strerror",
        "throw_delegate",
    ],
    "absl/cleanup": ["cleanup"],
    "absl/container": [
        "btree",
        "common=absl_container_common",
        "compressed_tuple",
        "container_memory",
        "fixed_array",
        "flat_hash_map",
        "flat_hash_set",
        "hash_function_defaults",
        "hash_policy_traits",
        "inlined_vector",
        "layout",
        "node_hash_map",
        "node_hash_set",
        "raw_hash_map",
        "raw_hash_set",
    ],
    "absl/crc": ["crc32c"],
    "absl/debugging": [
        "demangle_internal",
        "examine_stack",
        "failure_signal_handler",
        "leak_check",
        "stacktrace",
        "symbolize",
    ],
    "absl/flags": [
        "commandlineflag=absl_flags_commandlineflag",
        "config=absl_flags_config",
        "flag=absl_flags",
        "marshalling=absl_flags_marshalling",
        "parse=absl_flags_parse",
        "reflection=absl_flags_reflection",
        "usage=absl_flags_usage",
    ],
    "absl/functional": ["any_invocable", "bind_front", "function_ref", "overload"],
    "absl/hash": ["city", "hash", "low_level_hash"],
    "absl/log": [
        "absl_check",
        "absl_log",
        "check",
        "die_if_null",
        "globals=absl_log_globals",
        "initialize=absl_log_initialize",
        "log",
        "log_sink=absl_log_sink",
        "log_sink_registry=absl_log_sink_registry",
        "scoped_mock_log",
        "vlog_is_on",
    ],
    "absl/memory": ["memory"],
    "absl/meta": ["type_traits"],
    "absl/numeric": ["bits", "int128", "representation=absl_numeric_representation"],
    "absl/profiling": ["exponential_biased", "periodic_sampler", "sample_recorder"],
    "absl/random": [
        "bit_gen_ref=absl_random_bit_gen_ref",
        "distributions=absl_random_distributions",
        "random=absl_random_random",
        "seed_gen_exception=absl_random_seed_gen_exception",
        "seed_sequences=absl_random_seed_sequences",
    ],
    "absl/status": ["status", "statusor"],
    "absl/strings": [
        "cord",
        "str_format",
        "string_view",
        "strings",
        "internal=absl_strings_internal",
    ],
    "absl/synchronization": ["synchronization"],
    "absl/time": ["time"],
    "absl/types": [
        "any",
        "bad_any_cast",
        "bad_optional_access",
        "bad_variant_access",
        "compare",
        "optional",
        "span",
        "variant",
    ],
    "absl/utility": ["utility"],
}

# Where pkg-config files can live (Debian multiarch first).
_PKGCONFIG_DIRS = [
    "/usr/lib/x86_64-linux-gnu/pkgconfig",
    "/usr/lib/aarch64-linux-gnu/pkgconfig",
    "/usr/lib64/pkgconfig",
    "/usr/lib/pkgconfig",
    "/usr/local/lib/pkgconfig",
    "/usr/share/pkgconfig",
]

def _parse_pc(text):
    """Returns (requires, linkopts) of a pkg-config file (no variable expansion needed).

    `Libs:` entries other than -L are kept in order (Debian's Abseil adds e.g.
    `-Wl,--push-state,--as-needed -latomic -Wl,--pop-state -lrt`); -L is
    dropped because the library directory is on the default search path.
    """
    requires = []
    linkopts = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Requires:"):
            for item in line[len("Requires:"):].split(","):
                words = item.strip().split(" ")
                if words and words[0]:
                    requires.append(words[0])
        elif line.startswith("Libs:"):
            for word in line[len("Libs:"):].split(" "):
                if word and not word.startswith("-L"):
                    linkopts.append(word)
    return requires, linkopts

def _find_pc_files(rctx, prefix):
    """Returns {module name: path} for <prefix>*.pc in the first directory that has any."""
    for d in rctx.attr.pkgconfig_dirs:
        p = rctx.path(d)
        if not p.exists:
            continue
        found = {}
        for f in p.readdir():
            if f.basename.startswith(prefix) and f.basename.endswith(".pc"):
                found[f.basename[:-len(".pc")]] = f
        if found:
            return found
    return {}

def _system_abseil_impl(rctx):
    pcs = _find_pc_files(rctx, "absl_")
    if not pcs:
        fail(("@%s: no absl_*.pc files found in %s; install Debian's libabsl-dev " +
              "(apt-get install libabsl-dev)") % (rctx.name, rctx.attr.pkgconfig_dirs))

    # //pkgconfig: one cc_library per pkg-config module.
    lines = [
        "# Generated by //third_party/bazel:system_libs.bzl from %s." % pcs.values()[0].dirname,
        "# One target per Abseil pkg-config module; deps follow `Requires:`.",
        'package(default_visibility = ["//:__subpackages__"])',
        "",
    ]
    for name in sorted(pcs.keys()):
        requires, linkopts = _parse_pc(rctx.read(pcs[name]))
        deps = [":" + r for r in requires if r in pcs]
        lines.append("cc_library(")
        lines.append("    name = %r," % name)
        if linkopts:
            lines.append("    linkopts = %r," % linkopts)
        if deps:
            lines.append("    deps = %r," % deps)
        lines.append(")")
        lines.append("")
    rctx.file("pkgconfig/BUILD.bazel", "\n".join(lines))

    # Upstream-style packages: aliases onto //pkgconfig.
    for pkg, entries in _ABSL_LABELS.items():
        out = [
            "# Generated by //third_party/bazel:system_libs.bzl (system Abseil).",
            'package(default_visibility = ["//visibility:public"])',
            "",
        ]
        n = 0
        for entry in entries:
            if "=" in entry:
                target, pc = entry.split("=")
            else:
                target, pc = entry, "absl_" + entry
            if pc not in pcs:
                continue
            out.append("alias(name = %r, actual = %r)" % (target, "//pkgconfig:" + pc))
            n += 1
        if n:
            rctx.file(pkg + "/BUILD.bazel", "\n".join(out) + "\n")

    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD.bazel", "# System Abseil (libabsl-dev); see //absl/... packages.\n")

system_abseil = repository_rule(
    implementation = _system_abseil_impl,
    attrs = {
        "pkgconfig_dirs": attr.string_list(default = _PKGCONFIG_DIRS),
    },
    local = True,
    doc = "Upstream-compatible @com_google_absl labels for the system Abseil (libabsl-dev).",
)

def _system_cc_repository_impl(rctx):
    for f in rctx.attr.required_files:
        if not rctx.path(f).exists:
            fail("@%s: %s is missing; install %s" % (rctx.name, f, rctx.attr.package_hint))
    for link, target in rctx.attr.symlinks.items():
        rctx.symlink(target, link)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD.bazel", "# Generated by //third_party/bazel:system_libs.bzl.\n" +
                             rctx.attr.build_file_content)

system_cc_repository = repository_rule(
    implementation = _system_cc_repository_impl,
    attrs = {
        "build_file_content": attr.string(mandatory = True),
        "required_files": attr.string_list(),
        "package_hint": attr.string(),
        # Path in the repository -> system path, e.g. a header directory
        # that is not on the default search path.
        "symlinks": attr.string_dict(),
    },
    local = True,
    doc = "A repository holding only a BUILD file for a system library.",
)

_GOOGLETEST_BUILD = """
package(default_visibility = ["//visibility:public"])

# GoogleTest + GoogleMock (libgtest-dev, libgmock-dev: static archives).
cc_library(
    name = "gtest",
    linkopts = ["-lgmock", "-lgtest", "-lpthread"],
)

# Order matters for static archives: gtest_main before gtest.
cc_library(
    name = "gtest_main",
    linkopts = ["-lgtest_main", "-lgmock", "-lgtest", "-lpthread"],
    deps = [":gtest"],
)
"""

_BENCHMARK_BUILD = """
package(default_visibility = ["//visibility:public"])

# Google Benchmark (libbenchmark-dev).
cc_library(
    name = "benchmark",
    linkopts = ["-lbenchmark", "-lpthread"],
)

cc_library(
    name = "benchmark_main",
    linkopts = ["-lbenchmark_main", "-lbenchmark", "-lpthread"],
    deps = [":benchmark"],
)
"""

# Lua 5.4 (liblua5.4-dev), built as C: its errors are longjmps, so host code
# must not let one cross C++ frames (examples/lua runs everything under
# lua_pcall). `include` is a link to /usr/include/lua5.4, so both
# `#include "lua.hpp"` and `#include <lua.h>` work.
_LUA_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "lua",
    hdrs = glob(["include/*.h", "include/*.hpp"]),
    includes = ["include"],
    linkopts = ["-llua5.4"],
)
"""

_SQLITE3_BUILD = """
package(default_visibility = ["//visibility:public"])

# SQLite 3 (libsqlite3-dev); sqlite3.h is in /usr/include.
cc_library(
    name = "sqlite3",
    linkopts = ["-lsqlite3"],
)
"""

# Peers of the benchmark suite (bench/workloads.cc). APR's headers live in
# /usr/include/apr-1.0, linked into the repository like Lua's.
_TALLOC_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "talloc",
    linkopts = ["-ltalloc"],
)
"""

_APR_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "apr",
    hdrs = glob(["include/*.h"]),
    includes = ["include"],
    linkopts = ["-lapr-1"],
)
"""

# libmimalloc.so exports malloc/free: whatever links it allocates with
# mimalloc throughout, so only a binary meant to measure mimalloc may.
_MIMALLOC_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "mimalloc",
    linkopts = ["-lmimalloc"],
)
"""

_PROTOBUF_BUILD = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "protobuf",
    linkopts = ["-lprotobuf", "-lpthread"],
)
"""

def mcx_bench_peer_repositories():
    """Declares @talloc, @apr, @mimalloc, @com_google_protobuf (the peers of //bench)."""
    system_cc_repository(
        name = "talloc",
        build_file_content = _TALLOC_BUILD,
        required_files = ["/usr/include/talloc.h"],
        package_hint = "libtalloc-dev",
    )
    system_cc_repository(
        name = "apr",
        build_file_content = _APR_BUILD,
        required_files = ["/usr/include/apr-1.0/apr_pools.h"],
        package_hint = "libapr1-dev",
        symlinks = {"include": "/usr/include/apr-1.0"},
    )
    system_cc_repository(
        name = "mimalloc",
        build_file_content = _MIMALLOC_BUILD,
        required_files = ["/usr/include/mimalloc.h"],
        package_hint = "libmimalloc-dev",
    )
    system_cc_repository(
        name = "com_google_protobuf",
        build_file_content = _PROTOBUF_BUILD,
        required_files = ["/usr/include/google/protobuf/arena.h"],
        package_hint = "libprotobuf-dev",
    )

def mcx_system_dependencies():
    """Declares @com_google_absl, @com_google_googletest, @com_github_google_benchmark, @lua, @sqlite3, @talloc, @apr, @mimalloc."""
    system_abseil(name = "com_google_absl")
    system_cc_repository(
        name = "com_google_googletest",
        build_file_content = _GOOGLETEST_BUILD,
        required_files = ["/usr/include/gtest/gtest.h", "/usr/include/gmock/gmock.h"],
        package_hint = "libgtest-dev and libgmock-dev",
    )
    system_cc_repository(
        name = "com_github_google_benchmark",
        build_file_content = _BENCHMARK_BUILD,
        required_files = ["/usr/include/benchmark/benchmark.h"],
        package_hint = "libbenchmark-dev",
    )
    system_cc_repository(
        name = "lua",
        build_file_content = _LUA_BUILD,
        required_files = ["/usr/include/lua5.4/lua.h", "/usr/include/lua5.4/lua.hpp"],
        package_hint = "liblua5.4-dev",
        symlinks = {"include": "/usr/include/lua5.4"},
    )
    system_cc_repository(
        name = "sqlite3",
        build_file_content = _SQLITE3_BUILD,
        required_files = ["/usr/include/sqlite3.h"],
        package_hint = "libsqlite3-dev",
    )
    mcx_bench_peer_repositories()
