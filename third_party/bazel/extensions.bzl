"""Module extensions for //MODULE.bazel (Bazel 7+; Bazel 4 never loads this file).

bench_peers: the system packages behind the benchmark peers (talloc, APR,
mimalloc), declared by the same repository rules as the WORKSPACE build.
"""

load("//third_party/bazel:system_libs.bzl", "mcx_bench_peer_repositories")

def _bench_peers_impl(_module_ctx):
    mcx_bench_peer_repositories()

bench_peers = module_extension(implementation = _bench_peers_impl)
