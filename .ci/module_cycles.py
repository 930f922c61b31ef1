#!/usr/bin/env python3
"""Import cycles between the modules of one directory of src/.

Usage: .ci/module_cycles.py DIR [--strict]

Reads every .rs file under DIR (test-only items, wherever they are in a
file, and comments left out), finds
which sibling modules each one names (`super::x`, `crate::<path>::x`), and
prints the strongly connected components with more than one module: each is
a set of modules that import each other in a cycle. With --strict, exits 1
when there is one. `make lint` (which `.ci/run` runs) runs it strict on
src/ and on every directory under it. A glob import (`use super::*`) names
no sibling and is not seen: outside tests, src/ has none.
"""
import glob
import os
import re
import sys


def modules(root):
    mods = {}
    for f in glob.glob(os.path.join(root, "*.rs")):
        name = os.path.basename(f)[:-3]
        if name not in ("mod", "tests", "lib", "main"):
            mods[name] = [f]
    for d in glob.glob(os.path.join(root, "*", "mod.rs")):
        name = os.path.basename(os.path.dirname(d))
        mods[name] = [
            f for f in glob.glob(os.path.join(os.path.dirname(d), "**", "*.rs"), recursive=True)
            if not f.endswith("tests.rs")
        ]
    return mods


def strip_tests(text):
    """The text without its test-only items: each `#[cfg(test)]` and the
    item after it (to its `;`, or its braces matched), wherever it is."""
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k = j + len("#[cfg(test)]")
        depth = 0
        while k < len(text):
            c = text[k]
            if c == '"':
                # A string literal: its braces do not count.
                k += 1
                while k < len(text) and text[k] != '"':
                    k += 2 if text[k] == "\\" else 1
            elif text.startswith("'{'", k) or text.startswith("'}'", k):
                k += 2
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    k += 1
                    break
            elif c == ";" and depth == 0:
                k += 1
                break
            k += 1
        i = k


def edges(root, mods):
    prefix = "crate::" + "::".join(os.path.relpath(root, "src").split(os.sep)) + "::"
    if os.path.relpath(root, "src") == ".":
        prefix = "crate::"
    g = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = strip_tests(open(f, encoding="utf-8").read())
            for line in text.split("\n"):
                if line.strip().startswith("//"):
                    continue
                names = re.findall(r"\bsuper::(\w+)", line) if os.path.dirname(f) == root else []
                names += re.findall(re.escape(prefix) + r"(\w+)", line)
                g[m].update(n for n in names if n in g and n != m)
    return g


def cycles(g):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0].rstrip("/") if args else "src"
    g = edges(root, modules(root))
    found = cycles(g)
    for comp in found:
        print(f"{root}: import cycle among {', '.join(comp)}")
    if not found:
        print(f"{root}: no import cycle among {len(g)} modules")
    sys.exit(1 if found and "--strict" in sys.argv else 0)


if __name__ == "__main__":
    main()
