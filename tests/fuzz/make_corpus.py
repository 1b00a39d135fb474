#!/usr/bin/env python3
"""Writes the seed corpus for tree_fuzzer into tests/fuzz/corpus/.

Each seed is a structured program in the harness's encoding (README.md): an
8-byte header record [slack, roots, ...], one record per initial root, then
8-byte operation records [opcode, operands...]. The opcode byte is an index
into kOpTable in tree_fuzz_lib.cc (taken modulo 64); the indices below must
stay in sync with that table. Deterministic: rerunning gives the same files
(the exit seeds, gen-exits-*, come from a generator of their own, so the
older seeds did not change when they were added).

    python3 tests/fuzz/make_corpus.py          # rewrites gen-* seeds
"""
import os
import random

# Indices into kOpTable (tree_fuzz_lib.cc).
OPS = {
    "create-child": 0,
    "create-root": 3,
    "destroy": 5,
    "reset": 6,
    "destroy-children": 8,
    "set-parent": 9,
    "alloc": 11,
    "free": 18,
    "realloc": 21,
    "add-cleanup": 24,
    "remove-cleanup": 26,
    "run-cleanup": 27,
    "set-limit": 28,
    "fail-source": 29,
    "query-chunk": 31,
}

# The exits (slots of the table's second half).
EXIT_OPS = {
    "add-exit-cleanup": 33,
    "set-handler": 46,
}
# Operand of add-exit-cleanup's third byte (kExitThrow + byte % 4).
EXIT_THROW, EXIT_JUMP, EXIT_HANDLER_THROW, EXIT_HANDLER_JUMP = 0, 1, 2, 3
# Operand of set-handler (HandlerMode: byte % 4).
HANDLER_NONE, HANDLER_JUMP, HANDLER_THROW, HANDLER_RETURN = 0, 1, 2, 3

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def rec(rng, op, *operands):
    """One 8-byte record: the opcode, the given operands, random filler."""
    b = [OPS[op] if op in OPS else EXIT_OPS[op]] + list(operands)
    b += [rng.randrange(256) for _ in range(8 - len(b))]
    return bytes(b[:8])


def header(rng, slack, roots):
    out = bytes([slack, roots - 1] + [0] * 6)
    for _ in range(roots):
        # [ignored, pool?, kind a, kind b, name length, limit]
        out += bytes([0, rng.randrange(2), rng.randrange(256), rng.randrange(256),
                      rng.randrange(40), 1 + 4 * rng.randrange(64)] + [0, 0])
    return out


def setup(rng, n=6):
    """A few children, allocations and cleanups to work on."""
    out = b""
    for _ in range(n):
        # create-child: [ctx, pool?, a, b, name, limit byte (not 0 mod 8: none)]
        out += rec(rng, "create-child", rng.randrange(256), rng.randrange(2), rng.randrange(256),
                   rng.randrange(256), rng.randrange(40), 1)
        out += rec(rng, "alloc", rng.randrange(256), rng.randrange(7), rng.randrange(128))
        out += rec(rng, "add-cleanup", rng.randrange(256), rng.randrange(4))
    return out


def focused(rng, op, count):
    out = header(rng, rng.randrange(4), 1 + rng.randrange(3)) + setup(rng)
    for _ in range(count):
        if rng.random() < 0.7:
            out += rec(rng, op)
        else:
            out += rec(rng, rng.choice(list(OPS)))
    return out


def mixed(rng, count):
    out = header(rng, rng.randrange(4), 1 + rng.randrange(3))
    weights = {"create-child": 4, "alloc": 8, "free": 3, "realloc": 3, "add-cleanup": 2,
               "destroy": 1, "reset": 2, "set-parent": 2, "fail-source": 1, "set-limit": 1,
               "remove-cleanup": 1, "run-cleanup": 1, "destroy-children": 1, "query-chunk": 1,
               "create-root": 1}
    names = list(weights)
    for _ in range(count):
        out += rec(rng, rng.choices(names, [weights[n] for n in names])[0])
    return out


def chain_and_cycles(rng):
    """A chain of children, then reparenting attempts (many are cycles)."""
    out = header(rng, 0, 1)
    for i in range(12):
        # always under the newest context: the chain grows
        out += rec(rng, "create-child", i, rng.randrange(2), rng.randrange(256),
                   rng.randrange(256), 3, 1)
        out += rec(rng, "add-cleanup", i, rng.randrange(4))
    for _ in range(30):
        out += rec(rng, "set-parent", rng.randrange(256), rng.randrange(256))
    out += rec(rng, "destroy", 0)
    return out


def cleanup_order(rng):
    """A bushy tree, cleanups of both phases everywhere, then teardowns."""
    out = header(rng, 1, 2)
    for _ in range(10):
        out += rec(rng, "create-child", rng.randrange(256), rng.randrange(2), rng.randrange(256),
                   rng.randrange(256), 0, 1)
    for _ in range(25):
        out += rec(rng, "add-cleanup", rng.randrange(256), rng.randrange(4))
    for _ in range(6):
        out += rec(rng, rng.choice(["run-cleanup", "remove-cleanup", "set-parent"]))
    out += rec(rng, "reset", 0, rng.randrange(3)) + rec(rng, "destroy-children", 1)
    return out


def failures(rng):
    """Armed block-source failures between allocations, creates and reallocs."""
    out = header(rng, rng.randrange(4), 2) + setup(rng, 3)
    for _ in range(40):
        kind = rng.choice(["alloc", "alloc", "realloc", "create-child", "add-cleanup"])
        out += rec(rng, "fail-source", rng.randrange(256))
        out += rec(rng, kind)
    return out


def limits(rng):
    out = header(rng, rng.choice([0, 2]), 2) + setup(rng, 4)
    for _ in range(30):
        out += rec(rng, rng.choice(["set-limit", "alloc", "alloc", "realloc", "set-parent",
                                    "create-child", "reset"]))
    return out


def exits_tree(rng, exit_ops=40):
    """A tree with cleanups everywhere, some of which throw or longjmp (at any
    depth, both phases, either form), failure handlers that longjmp or throw,
    then teardowns that abandon and finish each other, allocations and
    failures in between."""
    out = header(rng, rng.randrange(4), 1 + rng.randrange(2))
    for _ in range(8):
        out += rec(rng, "create-child", rng.randrange(256), rng.randrange(2), rng.randrange(256),
                   rng.randrange(256), rng.randrange(40), rng.choice([0, 1]))
        out += rec(rng, "alloc", rng.randrange(256), rng.randrange(8), rng.randrange(256))
    for _ in range(12):
        out += rec(rng, "add-cleanup", rng.randrange(256), rng.randrange(4))
    for _ in range(6):
        out += rec(rng, "add-exit-cleanup", rng.randrange(256), rng.randrange(4), rng.randrange(4))
    for _ in range(exit_ops):
        op = rng.choice(["add-exit-cleanup", "add-exit-cleanup", "set-handler", "destroy", "reset",
                         "reset", "destroy-children", "run-cleanup", "alloc", "alloc", "realloc",
                         "set-parent", "set-parent", "fail-source", "set-limit", "add-cleanup",
                         "add-cleanup", "create-child", "create-child", "create-child",
                         "create-root", "free", "remove-cleanup"])
        if op == "add-exit-cleanup":
            out += rec(rng, op, rng.randrange(256), rng.randrange(4), rng.randrange(4))
        elif op == "set-handler":
            out += rec(rng, op, rng.randrange(256), rng.choice([HANDLER_JUMP, HANDLER_THROW,
                                                                 HANDLER_JUMP, HANDLER_RETURN,
                                                                 HANDLER_NONE]))
        elif op == "alloc":
            # throwing flavours (Alloc, Strdup, AllocAligned(n, 3)) meet the handlers
            out += rec(rng, op, rng.randrange(256), rng.choice([1, 6, 7]), rng.randrange(256),
                       rng.randrange(256), 4)
        else:
            out += rec(rng, op)
    return out


def handler_failures(rng):
    """Failure handlers that longjmp or throw at every depth, and failing
    throwing calls under them: limits, an armed block source, bad requests."""
    out = header(rng, rng.randrange(4), 2) + setup(rng, 4)
    for _ in range(6):
        out += rec(rng, "set-handler", rng.randrange(256), rng.randrange(4))
    for _ in range(40):
        kind = rng.choice(["alloc", "alloc", "realloc", "add-cleanup", "set-limit", "fail-source",
                           "set-handler"])
        if kind == "alloc":
            out += rec(rng, kind, rng.randrange(256), rng.choice([1, 6, 7]), 0xC0 | rng.randrange(64),
                       rng.randrange(256), 4)
        elif kind == "realloc":
            out += rec(rng, kind, rng.randrange(256), rng.randrange(256), 2, 0xC0 | rng.randrange(64))
        elif kind == "add-cleanup":
            out += rec(rng, kind, rng.randrange(256), 2 | rng.randrange(2))
        else:
            out += rec(rng, kind)
    return out


def large_heap(rng, ops=400):
    """One freelist root filled past a few hundred KiB (its frees are then
    deferred in release builds), then frees of every form (through the
    context, sized, mcx::Free), reallocs, queries and a reset among more
    allocations: the shadow model checks the live bytes after each."""
    out = bytes([rng.randrange(4), 0] + [0] * 6)
    # [ignored, pool? (odd: a freelist root), kind a, kind b, name length, limit: none]
    out += bytes([0, 1, rng.randrange(256), rng.randrange(256), rng.randrange(40), 1, 0, 0])
    for _ in range(250):
        # alloc: [ctx, flavor 1 (Alloc), size: 0b11 then 14 bits, 2..10 KB]
        out += rec(rng, "alloc", 0, 1, 0xC0 | rng.randrange(8, 40), rng.randrange(256))
    weights = {"alloc": 5, "free": 8, "realloc": 2, "query-chunk": 1, "reset": 0.05}
    names = list(weights)
    for _ in range(ops):
        op = rng.choices(names, [weights[n] for n in names])[0]
        if op == "alloc":
            out += rec(rng, op, 0, rng.randrange(2), 0xC0 | rng.randrange(8, 40), rng.randrange(256))
        else:
            out += rec(rng, op)
    return out


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for f in os.listdir(CORPUS):
        if f.startswith("gen-"):
            os.remove(os.path.join(CORPUS, f))
    rng = random.Random(20261122)
    seeds = {}
    for op in OPS:
        seeds["gen-%s" % op] = focused(rng, op, 25)
    for i in range(10):
        seeds["gen-mixed-%02d" % i] = mixed(rng, 60 + 10 * i)
    for i in range(3):
        seeds["gen-chain-cycles-%d" % i] = chain_and_cycles(rng)
        seeds["gen-cleanup-order-%d" % i] = cleanup_order(rng)
        seeds["gen-failures-%d" % i] = failures(rng)
        seeds["gen-limits-%d" % i] = limits(rng)
    # The exits: their own generator, so the seeds above stay as they were.
    rng = random.Random(20261207)
    for op in EXIT_OPS:
        seeds["gen-exits-%s" % op] = focused(rng, op, 25)
    for i in range(6):
        seeds["gen-exits-tree-%d" % i] = exits_tree(rng, 30 + 10 * i)
    for i in range(3):
        seeds["gen-exits-handlers-%d" % i] = handler_failures(rng)
    # Large heaps (deferred frees): a generator of their own as well.
    rng = random.Random(20261208)
    for i in range(3):
        seeds["gen-large-heap-%d" % i] = large_heap(rng)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(CORPUS, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds, %d bytes" % (len(seeds), sum(len(d) for d in seeds.values())))


if __name__ == "__main__":
    main()
