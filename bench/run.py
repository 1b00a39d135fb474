#!/usr/bin/env python3
"""Runs the benchmark suite (bench/workloads.cc) against every peer and prints
one table per workload.

    ./mcx bench                     everything, tables on stdout
    ./mcx bench --callgrind         instruction counts (W1-W4, W11, W12, W13) instead of times
    ./mcx bench --smoke             each callgrind case once, natively, without
                                    valgrind: fails if a contender crashes (CI)
    ./mcx bench --write docs/performance
                                    also writes results.md (machine, date,
                                    command, tables) and the PNG plots there
    ./mcx bench --quick             fewer repetitions, shorter runs
    ./mcx bench --workloads W12,W13 only these workloads (names or prefixes:
                                    W5 and W11 are the --memory runs, W12 and
                                    W13 their benchmarks and memory runs);
                                    --write then writes results-W12-W13.md
    ./mcx bench --w8                W8 (long-lived heap) alone
    ./mcx bench --repetitions N --min-time S   (defaults 7 and 0.1 s)
    ./mcx bench --handles [--callgrind] [--write docs/performance]
                                    only `handles_and_sources` (and W2 of the
                                    pool on a buddy region under --callgrind);
                                    writes handles_results.md or
                                    handles_callgrind.md

Also runs `handles_and_sources`: handle pools against the freelist kind and
glibc, and the buddy block source against the system and caching sources.

How the peers are run: one program (`workloads`) holds mcx, glibc malloc,
talloc, talloc_pool, APR pools, std::pmr and the bump arena; jemalloc and
tcmalloc replace malloc in that same program through LD_PRELOAD, and only its
malloc contender is run then; `workloads_mimalloc` links mimalloc and adds its
mi_heap API. Times are medians of repetitions; ratios compare contenders of
the same run of the suite.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Display names, in table order.
NAMES = {
    "mcx_pool": "mcx pool",
    "mcx_pool8": "mcx pool, chunk_alignment 8",
    "mcx_freelist": "mcx freelist",
    "mcx_slab": "mcx slab",
    "mcx_generation": "mcx generation",
    "bump": "bump arena (30 lines)",
    "apr": "APR pools",
    "talloc": "talloc",
    "talloc_pool": "talloc_pool",
    "pmr_monotonic": "pmr monotonic_buffer",
    "pmr_pool": "pmr unsync_pool",
    "mi_heap": "mimalloc mi_heap",
    "glibc": "glibc malloc",
    "jemalloc": "jemalloc",
    "tcmalloc": "tcmalloc",
    "mimalloc": "mimalloc",
    # handles_and_sources and the buddy region
    "mcx_pool_buddy": "mcx pool on a buddy region",
    "handle_pool": "mcx handle pool",
    "buddy": "buddy source",
    "caching": "caching source",
    "system": "system source",
}
ORDER = list(NAMES)

WORKLOADS = {
    "W1.rand": "W1 bump-and-drop, 10,000 allocations of 8..256 B, then release all (ns per allocation)",
    "W1.32B": "W1 bump-and-drop, 10,000 allocations of 32 B, then release all (ns per allocation)",
    "W2": "W2 request lifecycle: create a context, 20..200 allocations of 16..512 B (one in 8 requests also 8..64 KiB), destroy (ns per request)",
    "W3": "W3 churn: 10,000 live chunks of 8..1024 B; free a random one, allocate a new one (ns per step)",
    "W4": "W4 context tree: depth 4, fanout 8 (4,681 contexts), 4 allocations of 16..128 B each, destroy the root (ns per context)",
    "W11": "W11 million contexts: 1,000,000 contexts under one parent, one allocation of 16..64 B in each, then the parent destroyed (ns per context)",
    "W7": "W7 realloc growth: 256 buffers grown from 16 B by half again plus 16 B until above 16 KiB (ns per realloc)",
    "W12.churn32": "W12 fixed-size churn: 10,000 live objects of 32 B; free a random one, allocate another (ns per step)",
    "W12.churn200": "W12 fixed-size churn: 10,000 live objects of 200 B; free a random one, allocate another (ns per step)",
    "W12.tree": "W12 linked structure: build a complete binary tree of 2^20 - 1 nodes of 24 B, sum it, free every node (ns per node)",
    "W13": "W13 FIFO lifetimes: a queue of 10,000 chunks of 16..1024 B; produce one, consume one of the 16 oldest (ns per step)",
}

# W12 and W13 (bench/fixed_and_fifo.h): the contenders each runs, for the
# callgrind mode (the time tables take whatever the programs register).
W12_W13_CALLGRIND = {
    "W12.churn32": ["mcx_slab", "mcx_freelist", "malloc", "pmr_pool"],
    "W12.churn200": ["mcx_slab", "mcx_freelist", "malloc", "pmr_pool"],
    "W12.tree": ["mcx_slab", "mcx_freelist", "malloc", "pmr_pool"],
    "W13": ["mcx_generation", "mcx_freelist", "malloc"],
}

# bench/handles_and_sources.cc: handle pools and block sources, one table
# each; the baseline column is the named contender.
EXTRA_WORKLOADS = {
    "H.churn": ("handle pool churn: 10,000 live 64-byte objects; free a random one, allocate one, "
                "read 4 random live ones through their handle or pointer (ns per step)", "glibc"),
    "H.get": ("handle pool lookups: read a random live object through its handle or pointer "
              "(ns per read)", "glibc"),
    "H.alloc_free": ("handle pool allocate and free at once, one 64-byte object (ns per pair)",
                     "glibc"),
    "B.churn": ("block sources: 64 live blocks of 8..64 KiB; release a random one, acquire one "
                "(ns per step)", "system"),
    "B.cycle": ("block sources: acquire an 8 KiB block and release it (ns per pair)", "system"),
}

# Optimised as Debian builds the peers' packages: -O2 without frame pointers
# (Bazel's default toolchain keeps them, which costs every non-leaf call a
# push, a move and a pop that the peers do not pay).
BUILD_FLAGS = ["-c", "opt", "--copt=-fomit-frame-pointer"]

PRELOADS = {
    "jemalloc": ["libjemalloc.so.2"],
    "tcmalloc": ["libtcmalloc_minimal.so.4", "libtcmalloc.so.4"],
}


def find_lib(names):
    for d in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]:
        for n in names:
            p = os.path.join(d, n)
            if os.path.exists(p):
                return p
    return None


def sh(cmd, env=None, check=True):
    return subprocess.run(cmd, env=env, check=check, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def build(tmp):
    """Builds both programs optimised and copies them out of bazel-bin, so a
    concurrent build of another configuration cannot swap them."""
    subprocess.run([os.path.join(ROOT, "mcx"), "bazel", "build"] + BUILD_FLAGS +
                   ["//bench:workloads", "//bench:workloads_mimalloc",
                    "//bench:handles_and_sources"], check=True,
                   stdout=sys.stderr)
    out = sh(["bazel", "info"] + BUILD_FLAGS + ["bazel-bin"]).stdout.strip()
    paths = {}
    for name in ["workloads", "workloads_mimalloc", "handles_and_sources"]:
        dst = os.path.join(tmp, name)
        shutil.copy(os.path.join(out, "bench", name), dst)
        paths[name] = dst
    return paths


def run_gbench(binary, label_of, args, env_extra=None, bench_filter=None):
    """Runs a Google Benchmark program; returns {(workload, contender, arg): result}."""
    env = dict(os.environ)
    env.update(env_extra or {})
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [binary, "--benchmark_out=" + out.name, "--benchmark_out_format=json",
               "--benchmark_repetitions=%d" % args.repetitions,
               "--benchmark_report_aggregates_only=true",
               # Repetitions of all benchmarks in a random order: a burst of
               # load from elsewhere on a shared machine then falls on every
               # contender alike instead of on whichever ran at that moment.
               "--benchmark_enable_random_interleaving=true",
               "--benchmark_min_time=%g" % args.min_time]
        if bench_filter:
            cmd.append("--benchmark_filter=" + bench_filter)
        print("running:", " ".join(
            ["%s=%s" % kv for kv in (env_extra or {}).items()] + cmd[:1] + cmd[6:]), file=sys.stderr)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        data = json.load(open(out.name))
    results = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        parts = b["run_name"].split("/")
        workload, contender = parts[0], parts[1]
        extra = [p for p in parts[2:]
                 if p not in ("real_time", "manual_time") and not p.startswith("iterations:")]
        label = label_of(contender)
        if label is None:
            continue
        r = {"ns": 1e9 / b["items_per_second"] if b.get("items_per_second") else None,
             "time_ns": b["real_time"] if "manual_time" in parts else b.get("cpu_time"),
             "items_per_second": b.get("items_per_second")}
        for k in ("blocks", "allocations"):
            if k in b:
                r[k] = b[k]
        results[(workload, label, "/".join(extra))] = r
    return results


def run_memory(binary, label_of, env_extra=None, mode="--memory"):
    env = dict(os.environ)
    env.update(env_extra or {})
    out = sh([binary, mode], env=env).stdout
    rows = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        label = label_of(d["contender"])
        if label is None:
            continue
        rows[(label, d.get("size", d.get("workload")))] = d
    return rows


def collect_w8(bins):
    """W8 alone: mcx freelist and glibc in one program, then jemalloc and
    tcmalloc under LD_PRELOAD and mimalloc linked."""
    memory = {}
    memory.update(run_memory(bins["workloads"], glibc_label, mode="--memory=W8"))
    for name, libs in PRELOADS.items():
        lib = find_lib(libs)
        if lib is None:
            print("note: %s not found (%s); skipped" % (name, ", ".join(libs)), file=sys.stderr)
            continue
        memory.update(run_memory(bins["workloads"], only_malloc(name), {"LD_PRELOAD": lib},
                                 mode="--memory=W8"))
    memory.update(run_memory(bins["workloads_mimalloc"], mimalloc_label, mode="--memory=W8"))
    return memory


def glibc_label(c):
    return "glibc" if c == "malloc" else c


def only_malloc(name):
    return lambda c: name if c == "malloc" else None


def mimalloc_label(c):
    return "mimalloc" if c == "malloc" else c


def selected(args, workload):
    """Whether --workloads (comma-separated names or prefixes) asks for `workload`."""
    return not args.workloads or any(workload.startswith(w) for w in args.workloads.split(","))


def collect(args, bins):
    results, memory = {}, {}
    # Benchmark names start with their workload (W12.tree/mcx_slab).
    prefix = ""
    if args.workloads:
        prefix = "^(%s)[^/]*" % "|".join(re.escape(w) for w in args.workloads.split(","))
    memory_runs = selected(args, "W5") or selected(args, "W11")
    results.update(run_gbench(bins["workloads"], glibc_label, args, bench_filter=prefix or None))
    if memory_runs:
        memory.update(run_memory(bins["workloads"], glibc_label))
    for name, libs in PRELOADS.items():
        lib = find_lib(libs)
        if lib is None:
            print("note: %s not found (%s); skipped" % (name, ", ".join(libs)), file=sys.stderr)
            continue
        env = {"LD_PRELOAD": lib}
        results.update(run_gbench(bins["workloads"], only_malloc(name), args, env,
                                  bench_filter=(prefix or "") + "/malloc(/|$)"))
        if memory_runs:
            memory.update(run_memory(bins["workloads"], only_malloc(name), env))
    results.update(run_gbench(bins["workloads_mimalloc"], mimalloc_label, args,
                              bench_filter=prefix or None))
    if memory_runs:
        memory.update(run_memory(bins["workloads_mimalloc"], mimalloc_label))
    if not args.workloads:
        results.update(run_gbench(bins["handles_and_sources"], lambda c: c, args))
    return results, memory


def fmt(x, digits=1):
    if x is None:
        return "-"
    if x >= 1000:
        return "{:,.0f}".format(x)
    return "{:.{}f}".format(x, digits)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ordered(labels):
    return sorted(labels, key=lambda l: ORDER.index(l) if l in ORDER else len(ORDER))


def time_tables(results):
    out = []
    for w, title in WORKLOADS.items():
        arg = "10000" if w == "W3" else ("4" if w == "W4" else "")
        rows = {l: r for (wl, l, a), r in results.items() if wl == w and a == arg}
        if not rows:
            continue
        base = rows.get("glibc", {}).get("ns")
        bump = rows.get("bump", {}).get("ns")
        body = []
        for l in sorted(rows, key=lambda l: rows[l]["ns"]):
            ns = rows[l]["ns"]
            body.append([NAMES.get(l, l), fmt(ns), fmt(ns / base, 2) if base else "-",
                         fmt(ns / bump, 2) if bump else "-"])
        out.append("### " + title + "\n\n" +
                   table(["contender", "ns/op (median)", "vs glibc malloc", "vs bump arena"], body))
    return out


def extra_tables(results):
    out = []
    for w, (title, base_label) in EXTRA_WORKLOADS.items():
        rows = {l: r for (wl, l, a), r in results.items() if wl == w}
        if not rows:
            continue
        base = rows.get(base_label, {}).get("ns")
        body = [[NAMES.get(l, l), fmt(rows[l]["ns"]),
                 fmt(rows[l]["ns"] / base, 2) if base else "-"]
                for l in sorted(rows, key=lambda l: rows[l]["ns"])]
        out.append("### " + title + "\n\n" +
                   table(["contender", "ns/op (median)", "vs " + NAMES.get(base_label, base_label)],
                         body))
    return out


def w11_memory_table(memory):
    rows = {l: d["resident_per_context"] for (l, k), d in memory.items() if k == "W11"}
    if not rows:
        return None
    talloc = rows.get("talloc")
    body = [[NAMES.get(l, l), fmt(rows[l], 0), fmt(rows[l] / talloc, 2) if talloc else "-"]
            for l in sorted(rows, key=lambda l: rows[l])]
    return ("### W11 memory: resident bytes per context while 1,000,000 contexts of one "
            "16..64 B allocation each are alive (from /proc/self/statm, in a fresh child "
            "process; malloc peers allocate the chunk alone)\n\n" +
            table(["contender", "bytes per context", "vs talloc"], body))


def w8_table(memory):
    """Returns (markdown, series) for W8, or (None, {})."""
    rows = {l: d for (l, k), d in memory.items() if k == "W8"}
    if not rows:
        return None, {}
    glibc = rows.get("glibc")
    body = []
    for l in sorted(rows, key=lambda l: rows[l]["resident_peak"]):
        d = rows[l]
        shrinks = [r / lv for i, (r, lv) in enumerate(zip(d["phase_end_resident"], d["phase_end_live"]))
                   if i % 2 == 1 and lv]
        # Pages holding a live byte: what the heap keeps resident at least,
        # for where it placed the chunks (chunks never move).
        pages = [p / lv for i, (p, lv) in enumerate(zip(d.get("phase_end_live_pages", []),
                                                        d["phase_end_live"]))
                 if i % 2 == 1 and lv]
        body.append([NAMES.get(l, l), fmt(d["ns_per_op"]),
                     fmt(d["resident_peak"] / 2.0 ** 20),
                     fmt(d["resident_peak"] / d["live_peak"], 3),
                     fmt(d["resident_peak"] / glibc["resident_peak"], 2) if glibc else "-",
                     " / ".join(fmt(x, 2) for x in shrinks),
                     " / ".join(fmt(x, 2) for x in pages) if pages else "-"])
    text = ("### W8 long-lived heap: 10^7 operations in six phases of 8..4096 B chunks (the size "
            "range changes each phase), live data grown to 64 MiB, shrunk to a tenth, three "
            "times; resident bytes from /proc/self/statm in a fresh child process\n\n" +
            table(["contender", "ns/op", "peak resident MiB", "peak resident / live peak",
                   "peak resident vs glibc", "resident / live after each shrink",
                   "pages holding live bytes / live after each shrink"], body))
    series = {l: d["samples"] for l, d in rows.items()}
    return text, series


def w8_plot(series, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: python3-matplotlib is missing; no plots", file=sys.stderr)
        return []
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    live = None
    for l in ordered(series):
        pts = series[l]
        live = live or pts
        style = "-" if l.startswith("mcx") else "--"
        ax.plot([p[0] / 1e6 for p in pts], [p[2] / 2.0 ** 20 for p in pts], style,
                label=NAMES.get(l, l))
    if live:
        ax.plot([p[0] / 1e6 for p in live], [p[1] / 2.0 ** 20 for p in live], ":k",
                label="live data")
    ax.set_title("W8 long-lived heap: resident bytes over time")
    ax.set_xlabel("operations (millions)")
    ax.set_ylabel("MiB")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(outdir, "w8_resident.png")
    fig.savefig(path)
    plt.close(fig)
    return [path]


def memory_table(memory):
    memory = {k: d for k, d in memory.items() if k[1] not in ("W11", "W8")}
    labels = ordered({l for (l, _) in memory})
    body = []
    for l in labels:
        def rpr(size):
            d = memory.get((l, size))
            return fmt(d["resident_per_requested"], 3) if d else "-"
        d24 = memory.get((l, 24))
        body.append([NAMES.get(l, l), rpr(24), rpr(100), rpr(0),
                     fmt(d24["header_bytes"], 0) if d24 else "-",
                     fmt(d24["stride_bytes"], 0) if d24 else "-"])
    return ("### W5 memory: 64 MiB requested in chunks of one size or random 8..1024 B, "
            "every byte written; resident bytes per requested byte (from /proc/self/statm, "
            "in a fresh child process)\n\n" +
            table(["contender", "24 B", "100 B", "random 8..1024 B",
                   "header bytes per chunk (24 B)", "bytes per 24 B chunk"], body))


def scaling(results):
    """Returns (markdown, series) for the scaling curves."""
    out, series = [], {}
    # Destroy against allocations.
    rows = {}
    for (w, l, a), r in results.items():
        if w == "S.destroy":
            rows.setdefault(int(a), {})[l] = r
    if rows:
        labels = ordered({l for v in rows.values() for l in v})
        body = []
        for n in sorted(rows):
            line = [fmt(n, 0)]
            for l in labels:
                r = rows[n].get(l)
                line.append(fmt(r["time_ns"] / 1000.0, 2) if r else "-")
                if l.startswith("mcx"):
                    line.append(fmt(r["blocks"], 0) if r else "-")
            body.append(line)
        header = ["allocations (64 B)"]
        for l in labels:
            header.append(NAMES.get(l, l) + " destroy µs")
            if l.startswith("mcx"):
                header.append("blocks")
        out.append("### Destroy against the number of allocations in the context\n\n" +
                   table(header, body))
        series["destroy"] = (sorted(rows), {l: [rows[n][l]["time_ns"] / 1000.0 if l in rows[n] else None
                                                for n in sorted(rows)] for l in labels})
    # Tree size.
    rows = {}
    for (w, l, a), r in results.items():
        if w == "S.tree":
            rows.setdefault(int(a), {})[l] = r
    if rows:
        labels = ordered({l for v in rows.values() for l in v})
        contexts = {d: sum(8 ** k for k in range(d + 1)) for d in rows}
        body = [[str(d), fmt(contexts[d], 0)] + [fmt(rows[d][l]["ns"]) if l in rows[d] else "-"
                                                  for l in labels] for d in sorted(rows)]
        out.append("### Create and destroy a tree (fanout 8) against its size (ns per context)\n\n" +
                   table(["depth", "contexts"] + [NAMES.get(l, l) for l in labels], body))
        series["tree"] = ([contexts[d] for d in sorted(rows)],
                          {l: [rows[d][l]["ns"] if l in rows[d] else None for d in sorted(rows)]
                           for l in labels})
    # Churn against working set.
    rows = {}
    for (w, l, a), r in results.items():
        if w == "S.churn":
            rows.setdefault(int(a), {})[l] = r
    if rows:
        labels = ordered({l for v in rows.values() for l in v})
        body = [[fmt(n, 0)] + [fmt(rows[n][l]["ns"]) if l in rows[n] else "-" for l in labels]
                for n in sorted(rows)]
        out.append("### W3 churn against the working set (ns per step)\n\n" +
                   table(["live chunks"] + [NAMES.get(l, l) for l in labels], body))
        series["churn"] = (sorted(rows), {l: [rows[n][l]["ns"] if l in rows[n] else None
                                              for n in sorted(rows)] for l in labels})
    # Threads.
    rows = {}
    for (w, l, a), r in results.items():
        if w == "W6":
            m = re.search(r"threads:(\d+)", a)
            rows.setdefault(l, {})[int(m.group(1))] = r["items_per_second"]
    if rows:
        body = []
        for l in sorted(rows, key=lambda l: -(rows[l].get(2) or 0)):
            one, two = rows[l].get(1), rows[l].get(2)
            body.append([NAMES.get(l, l), fmt(one / 1000.0 if one else None, 0),
                         fmt(two / 1000.0 if two else None, 0),
                         fmt(two / one, 2) if one and two else "-"])
        out.append("### W6 threads: W2 on each thread's own contexts (requests per second, thousands)\n\n" +
                   table(["contender", "1 thread", "2 threads", "2 / 1"], body))
        labels = ordered(rows)
        series["threads"] = ([1, 2], {l: [rows[l].get(1, 0) / 1000.0, rows[l].get(2, 0) / 1000.0]
                                      for l in labels})
    return out, series


def plots(series, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: python3-matplotlib is missing; no plots", file=sys.stderr)
        return []
    made = []
    specs = {
        "destroy": ("Destroy of one context", "64-byte allocations in the context",
                    "destroy time (µs)", True, True),
        "tree": ("Create and destroy a tree (fanout 8)", "contexts in the tree",
                 "ns per context", True, False),
        "churn": ("W3 churn", "live chunks (working set)", "ns per free + allocate", True, False),
        "threads": ("W6 requests on each thread's own contexts", "threads",
                    "thousand requests per second", False, False),
    }
    for key, (x, ys) in series.items():
        title, xl, yl, logx, logy = specs[key]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        for l, y in ys.items():
            pts = [(a, b) for a, b in zip(x, y) if b is not None]
            if not pts:
                continue
            style = "-o" if l.startswith("mcx") else "--."
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=NAMES.get(l, l))
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if key == "threads":
            ax.set_xticks([1, 2])
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(outdir, "scaling_%s.png" % key)
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    return made


def callgrind_cases(args, bins):
    """The cases of the callgrind tables, (workload, binary, contender, label,
    environment), and the workloads they cover."""
    handles_only = args.handles
    cases = []
    workloads = [] if handles_only else [
        w for w in ["W1.rand", "W1.32B", "W2", "W3", "W4", "W11"] if selected(args, w)]
    main = ["malloc", "mcx_pool", "mcx_freelist", "bump", "talloc", "talloc_pool", "apr",
            "pmr_monotonic", "pmr_pool"]
    for w in workloads:
        for c in main:
            cases.append((w, bins["workloads"], c, glibc_label(c), {}))
        for name, libs in PRELOADS.items():
            lib = find_lib(libs)
            if lib:
                cases.append((w, bins["workloads"], "malloc", name, {"LD_PRELOAD": lib}))
        for c in ["malloc", "mi_heap"]:
            cases.append((w, bins["workloads_mimalloc"], c, mimalloc_label(c), {}))
    extra = [] if handles_only else [w for w in W12_W13_CALLGRIND if selected(args, w)]
    for w in extra:
        for c in W12_W13_CALLGRIND[w]:
            cases.append((w, bins["workloads"], c, glibc_label(c), {}))
        for name, libs in PRELOADS.items():
            lib = find_lib(libs)
            if lib:
                cases.append((w, bins["workloads"], "malloc", name, {"LD_PRELOAD": lib}))
        cases.append((w, bins["workloads_mimalloc"], "malloc", "mimalloc", {}))
    workloads = workloads + extra
    if handles_only:
        # W2 of the pool kind on a buddy region, against the same on the
        # default block cache and glibc.
        workloads = ["W2"]
        for c in ["malloc", "mcx_pool", "mcx_pool_buddy"]:
            cases.append(("W2", bins["workloads"], c, glibc_label(c), {}))
    for w in EXTRA_WORKLOADS if (handles_only or not args.workloads) else []:
        contenders = (["handle_pool", "mcx_freelist", "glibc"] if w.startswith("H.")
                      else ["buddy", "system", "caching"])
        for c in contenders:
            cases.append((w, bins["handles_and_sources"], c, c, {}))
    return cases, workloads


def smoke(args, bins):
    """Runs every callgrind case once, natively (each is a few rounds): a
    case whose contender does not run the workload exits 2; one that dies
    of a signal fails the run. What CI runs, so that no contender's row
    can crash unseen."""
    cases, _ = callgrind_cases(args, bins)
    ran = 0
    for w, binary, c, label, env_extra in cases:
        env = dict(os.environ)
        env.update(env_extra)
        p = subprocess.run([binary, "--callgrind=%s:%s" % (w, c)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode == 2:
            continue
        if p.returncode != 0:
            sys.exit("smoke %s %s: exit %d\n%s" % (w, label, p.returncode, p.stderr[-2000:]))
        ran += 1
    print("smoke: %d cases ran, none failed" % ran, file=sys.stderr)


def callgrind(args, bins):
    """Instructions per operation for W1-W4, W11, W12 and W13, and for the
    workloads of handles_and_sources, each contender in its own valgrind run
    with collection on only around the measured rounds."""
    if shutil.which("valgrind") is None:
        sys.exit("callgrind mode needs valgrind (apt-get install valgrind)")
    cases, workloads = callgrind_cases(args, bins)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w, binary, c, label, env_extra in cases:
            env = dict(os.environ)
            env.update(env_extra)
            out_file = os.path.join(tmp, "cg.out")
            p = subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no",
                                "--callgrind-out-file=" + out_file, binary,
                                "--callgrind=%s:%s" % (w, c)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            if p.returncode < 0:
                # A crash is not a contender that does not run the workload:
                # its row must not vanish from the table unnoticed.
                sys.exit("callgrind %s %s: the run died of signal %d" %
                         (w, label, -p.returncode))
            if p.returncode != 0:
                continue  # the contender does not run this workload (exit 2)
            ops = json.loads(p.stdout.strip().splitlines()[-1])["ops"]
            total = None
            for line in open(out_file):
                if line.startswith("totals:") or line.startswith("summary:"):
                    total = int(line.split()[1])
            counts[(w, label)] = total / ops
            print("callgrind %s %s: %.0f instructions per op" % (w, label, total / ops),
                  file=sys.stderr)
    out = []
    for w in workloads:
        rows = {l: v for (wl, l), v in counts.items() if wl == w}
        if not rows:
            continue
        base, bump = rows.get("glibc"), rows.get("bump")
        body = [[NAMES.get(l, l), fmt(v, 0), fmt(v / base, 2) if base else "-",
                 fmt(v / bump, 2) if bump else "-"] for l, v in sorted(rows.items(), key=lambda kv: kv[1])]
        out.append("### %s (instructions per operation)\n\n" % WORKLOADS[w] .split(" (")[0] +
                   table(["contender", "instructions/op", "vs glibc malloc", "vs bump arena"], body))
    for w, (title, base_label) in EXTRA_WORKLOADS.items():
        rows = {l: v for (wl, l), v in counts.items() if wl == w}
        if not rows:
            continue
        base = rows.get(base_label)
        body = [[NAMES.get(l, l), fmt(v, 0), fmt(v / base, 2) if base else "-"]
                for l, v in sorted(rows.items(), key=lambda kv: kv[1])]
        out.append("### %s (instructions per operation)\n\n" % title.split(" (")[0] +
                   table(["contender", "instructions/op", "vs " + NAMES.get(base_label, base_label)],
                         body))
    return out


def run_w12_w13_memory(binary, label_of, env_extra=None, quick=False):
    """W12's and W13's memory (--memory-w12-w13): {(workload, label, size): row}."""
    env = dict(os.environ)
    env.update(env_extra or {})
    if quick:
        env["MCX_BENCH_W13_STEPS"] = "1000000"
    out = sh([binary, "--memory-w12-w13"], env=env).stdout
    rows = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        label = label_of(d["contender"])
        if label is not None:
            rows[(d["workload"], label, d["size"])] = d
    return rows


def collect_w12_w13_memory(args, bins):
    rows = run_w12_w13_memory(bins["workloads"], glibc_label, quick=args.quick)
    for name, libs in PRELOADS.items():
        lib = find_lib(libs)
        if lib is not None:
            rows.update(run_w12_w13_memory(bins["workloads"], only_malloc(name),
                                           {"LD_PRELOAD": lib}, args.quick))
    rows.update(run_w12_w13_memory(bins["workloads_mimalloc"], only_malloc("mimalloc"),
                                   quick=args.quick))
    return rows


def w12_w13_memory_tables(rows):
    out = []
    labels = ordered({l for (w, l, _) in rows if w == "W12.mem"})
    if labels:
        body = []
        for l in labels:
            line = [NAMES.get(l, l)]
            for size in (32, 200):
                d = rows.get(("W12.mem", l, size))
                line += [fmt(d["full_per_requested"], 3) if d else "-",
                         fmt(d["after_per_live"], 2) if d else "-"]
            body.append(line)
        out.append("### W12 memory: 64 MiB of 32 B or 200 B objects, every byte written, then "
                   "90% of them freed in random order (resident bytes from /proc/self/statm, "
                   "in a fresh child process)\n\n" +
                   table(["contender", "32 B: resident / requested", "32 B: after, resident / live",
                          "200 B: resident / requested", "200 B: after, resident / live"], body))
    labels = ordered({l for (w, l, _) in rows if w == "W13.mem"})
    if labels:
        body = []
        for l in labels:
            d = rows[("W13.mem", l, 0)]
            body.append([NAMES.get(l, l), fmt(d["peak_mib"], 1), fmt(d["peak_per_live"], 2),
                         fmt(d["ns_per_step"], 1)])
        steps = next(iter(d["steps"] for (w, _, _), d in rows.items() if w == "W13.mem"))
        out.append("### W13 memory: the queue for %s steps in a fresh child process; peak "
                   "resident bytes, and per byte live at the peak\n\n" % "{:,}".format(steps) +
                   table(["contender", "peak resident MiB", "peak resident / peak live",
                          "CPU ns per step (one run)"], body))
    return out


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.0f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    gxx = sh(["g++", "--version"], check=False).stdout.splitlines()[0] if shutil.which("g++") else ""
    pkgs = []
    for p in ["libc6", "libjemalloc2", "libmimalloc2.0", "libtcmalloc-minimal4", "libtalloc2",
              "libapr1", "libbenchmark1debian", "valgrind"]:
        v = sh(["dpkg-query", "-W", "-f=${Version}", p], check=False).stdout.strip()
        if v:
            pkgs.append("%s %s" % (p, v))
    return ("- CPU: %s, %d cores; memory %s; %s %s\n- compiler: %s\n- peers: %s" %
            (model, os.cpu_count(), mem, platform.system(), platform.release(), gxx,
             ", ".join(pkgs)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callgrind", action="store_true", help="instruction counts for W1-W4, W11, W12, W13")
    ap.add_argument("--smoke", action="store_true",
                    help="run each callgrind case once, natively; fail on a crash (CI)")
    ap.add_argument("--quick", action="store_true", help="3 repetitions of 0.05 s")
    ap.add_argument("--w8", action="store_true", help="W8 (long-lived heap) alone")
    ap.add_argument("--handles", action="store_true",
                    help="only handles_and_sources (handle pools, block sources)")
    ap.add_argument("--repetitions", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.1)
    ap.add_argument("--write", metavar="DIR", help="write results.md and plots into DIR")
    ap.add_argument("--workloads", metavar="W,...",
                    help="only the workloads with these names or prefixes (W12,W13)")
    args = ap.parse_args()
    if args.quick:
        args.repetitions, args.min_time = 3, 0.05
    command = "./mcx bench " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        bins = build(tmp)
        if args.smoke:
            smoke(args, bins)
            return
        w8_series = {}
        if args.callgrind:
            sections = callgrind(args, bins)
            series = {}
            kind = "callgrind"
        elif args.w8:
            w8, w8_series = w8_table(collect_w8(bins))
            sections = [w8] if w8 else []
            series = {}
            kind = "w8"
        elif args.handles:
            results = run_gbench(bins["handles_and_sources"], lambda c: c, args)
            # W2 of the pool kind on a buddy region, against the same on the
            # default block cache and glibc, in the same run.
            results.update(run_gbench(bins["workloads"], glibc_label, args,
                                      bench_filter="^W2/(malloc|mcx_pool|mcx_pool_buddy)$"))
            sections = time_tables(results) + extra_tables(results)
            series = {}
            kind = "times"
        else:
            results, memory = collect(args, bins)
            sections = time_tables(results)
            if memory:
                sections.append(memory_table(memory))
            w11 = w11_memory_table(memory)
            if w11:
                sections.append(w11)
            if selected(args, "W12") or selected(args, "W13"):
                sections += w12_w13_memory_tables(collect_w12_w13_memory(args, bins))
            w8, w8_series = w8_table(memory)
            if w8:
                sections.append(w8)
            sections += extra_tables(results)
            more, series = scaling(results)
            sections += more
            kind = "times"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = ("Generated by `%s` on %s.\n\n%s\n" % (command.strip(), date, machine()))
    text = head + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.write:
        os.makedirs(args.write, exist_ok=True)
        name = {"callgrind": "callgrind", "w8": "w8"}.get(kind, "results")
        if args.workloads:  # a part of the suite: beside the full tables, not over them
            name += "-" + args.workloads.replace(",", "-")
        if args.handles:
            name = "handles_" + name
        name += ".md"
        with open(os.path.join(args.write, name), "w") as f:
            f.write("# Benchmark results (%s)\n\n" % kind + text)
        for p in plots(series, args.write) + (w8_plot(w8_series, args.write) if w8_series else []):
            print("wrote", p, file=sys.stderr)


if __name__ == "__main__":
    main()
