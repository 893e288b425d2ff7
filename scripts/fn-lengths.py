#!/usr/bin/env python3
"""Lists Rust functions longer than a limit, counted from the `fn` line to its closing brace
(both included); exits 1 when there is one. Usage: scripts/fn-lengths.py 70 src"""
import re, sys, pathlib
limit = int(sys.argv[1]); roots = sys.argv[2:]
pat = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)')
bad = 0
for root in roots:
    for p in sorted(pathlib.Path(root).rglob('*.rs')):
        lines = p.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = pat.match(lines[i])
            if not m: i += 1; continue
            depth = 0; started = False; j = i
            while j < len(lines):
                s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                s = s.split('//')[0]
                for ch in s:
                    if ch == '{': depth += 1; started = True
                    elif ch == '}': depth -= 1
                if started and depth == 0: break
                if not started and s.rstrip().endswith(';'): break
                j += 1
            n = j - i + 1
            if started and n > limit:
                print(f"{n:5d} {p}:{i+1} {m.group(6)}"); bad += 1
            i += 1
print(f"{bad} functions over {limit} lines", file=sys.stderr)
sys.exit(1 if bad else 0)
