#!/usr/bin/env python3
"""File-level import cycles in src/ (issue 21): which files of this crate use each other in a
circle, directly or through others.

Reads every `crate::a::b` path in src/**/*.rs (use lines and inline paths), maps it to the file
that defines the module (src/a/b.rs or src/a/b/mod.rs, else the longest prefix that is a
file), and finds the strongly connected components of that graph (Tarjan). Prints each cycle.
With --allow FILE (one cycle per line, its files separated by spaces, sorted), exits 1 when a
cycle is not inside an allowed one: the known cycles may only shrink, never grow or multiply.
"""
import os
import re
import sys

SRC = "src"
PATH = re.compile(r"\bcrate((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_file(parts):
    """The file of the deepest module named by `parts` (['engine', 'transfer', 'X'])."""
    for n in range(len(parts), 0, -1):
        base = os.path.join(SRC, *parts[:n])
        for candidate in (base + ".rs", os.path.join(base, "mod.rs")):
            if os.path.isfile(candidate):
                return candidate
    return None


def graph():
    edges = {}
    for root, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            text = open(path, encoding="utf-8").read()
            text = re.sub(r"//.*", "", text)  # comments and doc comments name paths too
            targets = set()
            for match in PATH.finditer(text):
                parts = [p for p in match.group(1).split("::") if p]
                target = module_file(parts)
                if target and target != path and not target.endswith("mod.rs") and not target.endswith("lib.rs"):
                    targets.add(target)
            edges[path] = targets
    return edges


def cycles(edges):
    index, low, on, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def main():
    found = cycles(graph())
    allowed = []
    if len(sys.argv) == 3 and sys.argv[1] == "--allow":
        for line in open(sys.argv[2], encoding="utf-8"):
            line = line.split("#")[0].strip()
            if line:
                allowed.append(set(line.split()))
    new = [c for c in found if not any(set(c) <= a for a in allowed)]
    for c in found:
        print(("NEW cycle: " if c in new else "known cycle: ") + " ".join(c))
    if not found:
        print("no import cycles in src/")
    if new:
        print(f"{len(new)} import cycle(s) not in the allowed list: make the dependency point one way (ARCHITECTURE.md)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
