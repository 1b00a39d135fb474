"""Test rules for mcx: every test links the library, the test helpers and gtest_main."""

_COMMON_DEPS = [
    "//context",
    "//freelist",
    "//pool",
    "//testing",
    "@com_google_googletest//:gtest_main",
]

def mcx_test(name, srcs = None, deps = [], **kwargs):
    """A cc_test named after its source file, with the common test deps."""
    native.cc_test(
        name = name,
        srcs = srcs if srcs != None else [name + ".cc"],
        deps = deps + _COMMON_DEPS,
        **kwargs
    )
