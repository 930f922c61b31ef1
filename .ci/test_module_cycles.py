#!/usr/bin/env python3
"""Tests of module_cycles.py: it finds a cycle, including one named after a
test module in the middle of a file, and ignores imports made only by test
code. Run by `make lint`."""
import os
import subprocess
import sys
import tempfile

CHECKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "module_cycles.py")


def check(files):
    """module_cycles.py --strict on a src/ tree of `files`: (exit, output)."""
    with tempfile.TemporaryDirectory() as root:
        for path, text in files.items():
            full = os.path.join(root, "src", path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)
        run = subprocess.run(
            [sys.executable, CHECKER, "src", "--strict"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        return run.returncode, run.stdout


def main():
    failures = []

    def expect(name, files, code, needle):
        got, out = check(files)
        if got != code or needle not in out:
            failures.append(f"{name}: exit {got}, output {out!r}")

    expect(
        "a plain cycle",
        {"a.rs": "use crate::b::B;\n", "b.rs": "use crate::a::A;\n"},
        1,
        "import cycle among a, b",
    )
    expect(
        "a cycle after a test module in the middle of a file",
        {
            "a.rs": "#[cfg(test)]\nmod tests {\n    fn f() { let s = \"}\"; }\n}\n\nuse crate::b::B;\n",
            "b.rs": "use crate::a::A;\n",
        },
        1,
        "import cycle among a, b",
    )
    expect(
        "imports made only by test code",
        {
            "a.rs": "#[cfg(test)]\nuse crate::b::B;\n#[cfg(test)]\nmod tests {\n    use crate::b::C;\n}\n",
            "b.rs": "use crate::a::A;\n",
        },
        0,
        "no import cycle",
    )
    expect(
        "a directory module",
        {"a/mod.rs": "mod x;\n", "a/x.rs": "use crate::b::B;\n", "b.rs": "use crate::a::A;\n"},
        1,
        "import cycle among a, b",
    )
    for f in failures:
        print(f"module_cycles.py: {f}")
    if failures:
        sys.exit(1)
    print("module_cycles.py: 4 checks pass")


if __name__ == "__main__":
    main()
