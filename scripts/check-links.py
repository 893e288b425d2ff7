#!/usr/bin/env python3
"""Offline link check of the repository's documents (issue 21): every relative link resolves.

    python3 scripts/check-links.py [FILE.md ...]

With no argument it checks README.md, ARCHITECTURE.md, CHANGELOG.md and docs/*.md, and the
runbook links of the alert rules (the `runbook: "..."` annotations of monitoring/alerts.yml and
monitoring/alerts_test.yml, which are paths from the repository's root).

A link passes when the file or folder it names exists, relative to the document that holds it
(or, for a generated file, when it is one of GENERATED below), and its `#anchor`, if any,
is the GitHub slug of a heading of the target Markdown file (or of the document itself for a
bare `#anchor`). Inline links and images `[text](target)` and reference definitions
`[label]: target` are read; links inside code blocks and code spans are not links.

Offline: links with a scheme (https:, http:, mailto:, ...) are not checked, nor are anchors
into files other than Markdown (a `#L10` into a source file, say). Standard library only.

Exit 0 when every link resolves; 1 with one `file:line: link: why` line per broken link.
"""

import glob
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DEFAULT_DOCUMENTS = ["README.md", "ARCHITECTURE.md", "CHANGELOG.md", "docs/*.md"]
RUNBOOK_FILES = ["monitoring/alerts.yml", "monitoring/alerts_test.yml"]

# Files that links may name although a clean checkout does not have them: `make contracts`
# writes contracts/html/index.html (not committed).
GENERATED = {"contracts/html/index.html"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
# [text](target "title"): text may hold one level of brackets; target may be <...>.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"
    r"\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
RUNBOOK = re.compile(r"runbook:\s*\"([^\"]*)\"")


def blank(text, start, end):
    """`text` with [start, end) replaced by spaces, newlines kept (line numbers stay right)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def without_fences(text):
    """The text with fenced code blocks blanked out."""
    lines = text.split("\n")
    fence = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            lines[i] = ""
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            lines[i] = ""
    return "\n".join(lines)


def without_code(text):
    """The text with fenced code blocks and code spans blanked out."""
    text = without_fences(text)
    # Code spans: a run of n backticks up to the next run of exactly n.
    at = 0
    while True:
        m = re.compile(r"`+").search(text, at)
        if not m:
            return text
        ticks = m.group(0)
        close = re.compile(r"(?<!`)" + ticks + r"(?!`)").search(text, m.end())
        if not close:
            at = m.end()
            continue
        text = blank(text, m.start(), close.end())
        at = close.end()


def slug(heading):
    """GitHub's anchor for a heading: the text as rendered, lower-cased, punctuation dropped
    (letters, digits, `_` and `-` stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


_anchors = {}


def anchors(path):
    """The anchors of a Markdown file: its headings' slugs (a repeated one gets -1, -2, ...)
    and explicit `<a id=...>` / `<a name=...>`."""
    if path not in _anchors:
        with open(path, encoding="utf-8") as f:
            text = without_fences(f.read())
        found, seen = set(), {}
        for line in text.split("\n"):
            m = HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
            found.update(HTML_ANCHOR.findall(line))
        _anchors[path] = found
    return _anchors[path]


def check(link, base_dir, source):
    """Why `link`, found in `source` and relative to `base_dir`, does not resolve, or None."""
    if link.startswith("<") and link.endswith(">"):
        link = link[1:-1]
    if not link or SCHEME.match(link) or link.startswith("//"):
        return None  # external: not checked offline
    path, _, anchor = link.partition("#")
    if path:
        target = os.path.normpath(os.path.join(base_dir, path))
        relative = os.path.relpath(target, ROOT).replace(os.sep, "/")
        if relative.startswith("../"):
            return "points outside the repository"
        if not os.path.exists(target):
            return None if relative in GENERATED else f"no file {relative}"
    else:
        target = source
    if anchor and target.endswith(".md") and os.path.isfile(target):
        if anchor not in anchors(target):
            name = os.path.relpath(target, ROOT)
            return f"no heading with anchor #{anchor} in {name}"
    return None


def links_of_document(path):
    """(line, link) for every link of a Markdown document."""
    with open(path, encoding="utf-8") as f:
        text = without_code(f.read())
    found = []
    for pattern in (INLINE_LINK, REFERENCE_DEF):
        for m in pattern.finditer(text):
            found.append((text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return sorted(found)


def links_of_runbooks(path):
    found = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            found.extend((number, m) for m in RUNBOOK.findall(line))
    return found


def main(argv):
    os.chdir(ROOT)
    if argv:
        documents = [(p, links_of_document, os.path.dirname(os.path.abspath(p))) for p in argv]
    else:
        names = sorted({p for pattern in DEFAULT_DOCUMENTS for p in glob.glob(pattern)})
        documents = [(p, links_of_document, os.path.dirname(os.path.abspath(p))) for p in names]
        documents += [(p, links_of_runbooks, ROOT) for p in RUNBOOK_FILES if os.path.exists(p)]
    broken, count = [], 0
    for path, links_of, base_dir in documents:
        source = os.path.abspath(path)
        for line, link in links_of(path):
            count += 1
            why = check(link, base_dir, source)
            if why:
                broken.append(f"{path}:{line}: {link}: {why}")
    for line in broken:
        print(line, file=sys.stderr)
    if broken:
        print(f"check-links: {len(broken)} of {count} links broken", file=sys.stderr)
        return 1
    print(f"check-links: {count} links in {len(documents)} files resolve (external ones not checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
