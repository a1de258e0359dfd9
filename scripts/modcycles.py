#!/usr/bin/env python3
"""Fails when the top-level modules of a crate import each other in a circle.

usage: scripts/modcycles.py CRATE/src...

A top-level module is a file `src/x.rs` or a folder `src/x/`; module `a` depends on `b` when
any of a's files (before its `#[cfg(test)]` part) names `crate::b`, directly or inside a
`use crate::{...}` group. Doc comments count: a doc link is a dependency a reader follows.
Prints each circle and exits 1 when there is one.
"""
import pathlib
import re
import sys

PATH = re.compile(r"crate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"use\s+crate::\{([^;]*)\}\s*;", re.S)
IDENT = re.compile(r"(?<![:\w])([a-z_][a-z0-9_]*)\s*(?:::|,|\}|$|\s+as\b)")


def modules(src):
    found = {}
    for f in sorted(src.rglob("*.rs")):
        top = f.relative_to(src).parts[0].removesuffix(".rs")
        if top not in ("lib", "main"):
            found.setdefault(top, []).append(f)
    return found


def edges(mods):
    graph = {}
    for name, files in mods.items():
        deps = set()
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace").split("#[cfg(test)]")[0]
            deps.update(PATH.findall(text))
            for group in GROUP.findall(text):
                # Only the first segment of each path in the group is a module of this crate.
                depth, start = 0, 0
                for i, ch in enumerate(group + ","):
                    if ch == "{":
                        depth += 1
                    elif ch == "}":
                        depth -= 1
                    elif ch == "," and depth == 0:
                        first = group[start:i].strip().split("::")[0].strip()
                        deps.add(first)
                        start = i + 1
        graph[name] = sorted(d for d in deps if d in mods and d != name)
    return graph


def circles(graph):
    """Strongly connected sets of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on.add(node)
            succ = graph[node]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def main(dirs):
    bad = False
    for d in dirs:
        graph = edges(modules(pathlib.Path(d)))
        for comp in circles(graph):
            bad = True
            detail = "; ".join(f"{m} -> {', '.join(x for x in graph[m] if x in comp)}" for m in comp)
            print(f"{d}: modules import each other in a circle: {detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
