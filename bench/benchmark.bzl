"""The shape every benchmark program here shares."""

def mcx_benchmark(name, srcs, deps = [], copts = [], benchmark_main = False):
    """A Google Benchmark program: testonly, tagged "benchmark".

    `bazel test //...` builds it and never runs it; bench/run.py and the
    callgrind scripts run it optimised.

    Args:
      name: the program's name.
      srcs: its sources.
      deps: what it links beside Google Benchmark.
      copts: extra compiler options (a contender switch, say).
      benchmark_main: link Google Benchmark's main rather than its own.
    """
    benchmark = "@com_github_google_benchmark//:benchmark_main" if benchmark_main else "@com_github_google_benchmark//:benchmark"
    native.cc_binary(
        name = name,
        testonly = True,
        srcs = srcs,
        copts = copts,
        tags = ["benchmark"],
        deps = deps + [benchmark],
    )
