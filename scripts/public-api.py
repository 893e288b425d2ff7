#!/usr/bin/env python3
"""The crate's public API as a sorted text listing, from rustdoc's JSON output.

Usage:
    scripts/public-api.py            print the listing (builds the JSON first)
    scripts/public-api.py --check    compare with api/public-api.txt; exit 1 on any difference
    scripts/public-api.py --write    write api/public-api.txt

What is listed: every item reachable from the crate root through public paths, without the
items marked `#[doc(hidden)]` (rustdoc leaves them out): modules, structs with their public
fields, enums with their variants, functions and inherent methods with their signatures,
constants with their types, type aliases, and the traits each type implements (not the
automatic or blanket ones). `make package`'s default features are the ones documented.

Why: README and docs/library.md promise a stable library API across 0.1.x. A change to this
listing is a change to that API, made on purpose: CI fails until the listing is updated
(`scripts/public-api.py --write`) and the change is in the same commit, where a reviewer sees
it. The limit on the number of items (at most ITEMS_LIMIT, not counting methods, fields and
variants) keeps the surface small (issue 21).

The JSON comes from `cargo rustdoc -- --output-format json --document-hidden-items`, unstable
rustdoc options: they run on the pinned stable toolchain with RUSTC_BOOTSTRAP=1, so the format
is the toolchain's (format_version is checked). Hidden items are put in the JSON so that a
visible re-export of an item from a hidden module can be followed; the walk then leaves out
what is itself marked hidden, as rustdoc's pages do.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTING = os.path.join(ROOT, "api", "public-api.txt")
ITEMS_LIMIT = 150
FORMAT_VERSIONS = {57}
CRATE = "wallet_transfer"


def build_json():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    subprocess.run(
        ["cargo", "rustdoc", "--lib", "--quiet", "--", "-Z", "unstable-options",
         "--output-format", "json", "--document-hidden-items"],
        cwd=ROOT, env=env, check=True)
    with open(os.path.join(target, "doc", f"{CRATE}.json")) as f:
        doc = json.load(f)
    if doc["format_version"] not in FORMAT_VERSIONS:
        sys.exit(f"public-api: rustdoc JSON format {doc['format_version']} is not one this "
                 f"script reads ({sorted(FORMAT_VERSIONS)}): update FORMAT_VERSIONS after "
                 "checking the listing still reads right")
    return doc


def hidden(item):
    """Whether the item itself is marked #[doc(hidden)]. An item inside a hidden module is not
    hidden by that: re-exported by a visible `use`, rustdoc shows it (inlined)."""
    return any("doc(hidden)" in json.dumps(a) for a in item.get("attrs", []))


def plain(value):
    """`value` as JSON without rustdoc's item ids, which change whenever any item is added."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "id"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return json.dumps(strip(value), sort_keys=True)


def ty(t):
    """A type as Rust source, near enough to see a change."""
    if t is None:
        return "()"
    if isinstance(t, str):
        return t
    (kind, v), = t.items()
    if kind == "resolved_path":
        return v["path"] + args(v.get("args"))
    if kind in ("generic", "primitive"):
        return v
    if kind == "borrowed_ref":
        life = f"{v['lifetime']} " if v.get("lifetime") else ""
        return f"&{life}{'mut ' if v['is_mutable'] else ''}{ty(v['type'])}"
    if kind == "slice":
        return f"[{ty(v)}]"
    if kind == "array":
        return f"[{ty(v['type'])}; {v['len']}]"
    if kind == "tuple":
        return "(" + ", ".join(ty(x) for x in v) + ")"
    if kind == "impl_trait":
        return "impl " + " + ".join(bound(b) for b in v)
    if kind == "dyn_trait":
        return "dyn " + " + ".join(p["trait"]["path"] + args(p["trait"].get("args"))
                                   for p in v["traits"])
    if kind == "raw_pointer":
        return f"*{'mut' if v['is_mutable'] else 'const'} {ty(v['type'])}"
    if kind == "qualified_path":
        return f"<{ty(v['self_type'])}>::{v['name']}"
    return plain(t)


def args(a):
    if not a:
        return ""
    if "angle_bracketed" in a:
        parts = []
        for x in a["angle_bracketed"]["args"]:
            if "type" in x:
                parts.append(ty(x["type"]))
            elif "lifetime" in x:
                parts.append(x["lifetime"])
            else:
                parts.append(plain(x))
        for c in a["angle_bracketed"].get("constraints", []):
            binding = c.get("binding", {})
            if "equality" in binding and "type" in binding["equality"]:
                parts.append(f"{c['name']} = {ty(binding['equality']['type'])}")
            else:
                parts.append(plain(c))
        return "<" + ", ".join(parts) + ">" if parts else ""
    if "parenthesized" in a:
        p = a["parenthesized"]
        return "(" + ", ".join(ty(x) for x in p["inputs"]) + ")" + (
            f" -> {ty(p['output'])}" if p.get("output") else "")
    return plain(a)


def bound(b):
    if "trait_bound" in b:
        t = b["trait_bound"]["trait"]
        return t["path"] + args(t.get("args"))
    if "outlives" in b:
        return b["outlives"]
    return plain(b)


def generics(g):
    names = []
    for p in g.get("params", []):
        kind = p["kind"]
        if "lifetime" in kind:
            names.append(p["name"])
        elif "type" in kind:
            if kind["type"].get("is_synthetic"):
                continue
            bounds = kind["type"].get("bounds", [])
            names.append(p["name"] + (": " + " + ".join(bound(b) for b in bounds) if bounds else ""))
        else:
            names.append(plain(p))
    where = [predicate(w) for w in g.get("where_predicates", [])]
    return ("<" + ", ".join(names) + ">" if names else "") + (
        " where " + ", ".join(where) if where else "")


def predicate(w):
    if "bound_predicate" in w:
        b = w["bound_predicate"]
        return f"{ty(b['type'])}: " + " + ".join(bound(x) for x in b["bounds"])
    return plain(w)


def signature(name, f):
    sig = f["sig"]
    inputs = ", ".join(n if n == "self" and False else f"{n}: {ty(t)}" for n, t in sig["inputs"])
    out = f" -> {ty(sig['output'])}" if sig.get("output") else ""
    return f"fn {name}{generics(f['generics'])}({inputs}){out}"


class Walker:
    def __init__(self, doc):
        self.index = doc["index"]
        self.lines = set()
        self.items = set()
        self.seen = set()

    def item(self, id_):
        return self.index.get(str(id_))

    def walk_module(self, id_, path):
        module = self.item(id_)
        for child in module["inner"]["module"]["items"]:
            self.visit(child, path)

    def visit(self, id_, path, name=None):
        it = self.item(id_)
        if it is None or it.get("visibility") != "public" or it.get("crate_id") != 0:
            return
        if hidden(it):
            return
        (kind, inner), = it["inner"].items()
        if kind == "use":
            if inner.get("id") is None:
                return
            target = self.item(inner["id"])
            if target is None:
                return
            if inner.get("is_glob"):
                if "module" in target["inner"]:
                    self.walk_module(inner["id"], path)
                return
            return self.visit(inner["id"], path, inner["name"])
        name = name or it.get("name")
        full = f"{path}::{name}"
        if kind == "module":
            if (id_, full) in self.seen:
                return
            self.seen.add((id_, full))
            self.lines.add(f"mod {full}")
            return self.walk_module(id_, full)
        if id_ in self.seen:
            # One item reachable by two paths (a re-export): listed under each path, described once.
            self.lines.add(f"{kind} {full} (= {self.seen_path[id_]})")
            return
        self.seen.add(id_)
        self.seen_path = getattr(self, "seen_path", {})
        self.seen_path[id_] = full
        self.items.add(id_)
        self.describe(kind, inner, full, name)

    def describe(self, kind, inner, full, name):
        if kind == "function":
            self.lines.add(f"{full}: {signature(name, inner)}")
        elif kind in ("constant", "static"):
            self.lines.add(f"{kind} {full}: {ty(inner.get('type'))}")
        elif kind == "type_alias":
            self.lines.add(f"type {full}{generics(inner['generics'])} = {ty(inner['type'])}")
        elif kind == "struct":
            self.lines.add(f"struct {full}{generics(inner['generics'])}")
            fields = inner["kind"]
            for fid in fields.get("plain", {}).get("fields", []) or []:
                self.field(fid, full)
            for fid in fields.get("tuple", []) or []:
                if fid is not None:
                    self.field(fid, full)
            self.impls(inner.get("impls", []), full)
        elif kind == "enum":
            self.lines.add(f"enum {full}{generics(inner['generics'])}")
            for vid in inner.get("variants", []):
                v = self.item(vid)
                self.lines.add(f"variant {full}::{v['name']}{self.variant_fields(v)}")
            self.impls(inner.get("impls", []), full)
        elif kind == "trait":
            self.lines.add(f"trait {full}")
        elif kind == "macro":
            self.lines.add(f"macro {full}")
        else:
            self.lines.add(f"{kind} {full}")

    def variant_fields(self, v):
        kind = v["inner"]["variant"]["kind"]
        if kind == "plain":
            return ""
        if "tuple" in kind:
            types = [ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_"
                     for f in kind["tuple"]]
            return "(" + ", ".join(types) + ")"
        fields = [self.item(f) for f in kind["struct"]["fields"]]
        return " { " + ", ".join(f"{f['name']}: {ty(f['inner']['struct_field'])}"
                                 for f in fields) + " }"

    def field(self, fid, owner):
        f = self.item(fid)
        if f is None or f.get("visibility") != "public" or hidden(f):
            return
        self.lines.add(f"field {owner}.{f['name']}: {ty(f['inner']['struct_field'])}")

    def impls(self, impl_ids, owner):
        for iid in impl_ids:
            imp = self.item(iid)
            if imp is None:
                continue
            i = imp["inner"]["impl"]
            if i.get("is_synthetic") or i.get("blanket_impl") is not None or hidden(imp):
                continue
            if i.get("trait"):
                self.lines.add(f"impl {i['trait']['path']}{args(i['trait'].get('args'))} for {owner}")
                continue
            for mid in i["items"]:
                m = self.item(mid)
                if m is None or m.get("visibility") != "public" or hidden(m):
                    continue
                (mk, mi), = m["inner"].items()
                if mk == "function":
                    self.lines.add(f"{owner}::{m['name']}: {signature(m['name'], mi)}")
                elif mk in ("assoc_const", "constant"):
                    self.lines.add(f"const {owner}::{m['name']}")


def listing():
    doc = build_json()
    w = Walker(doc)
    w.walk_module(doc["root"], CRATE)
    return sorted(w.lines), len(w.items)


def main():
    lines, items = listing()
    text = "".join(line + "\n" for line in lines)
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if items > ITEMS_LIMIT:
        print(f"public-api: {items} public items, over the limit of {ITEMS_LIMIT}: make "
              "internals pub(crate), or #[doc(hidden)] where the binary or the tests need them",
              file=sys.stderr)
        if mode:
            return 1
    if mode == "--write":
        os.makedirs(os.path.dirname(LISTING), exist_ok=True)
        with open(LISTING, "w") as f:
            f.write(text)
        print(f"public-api: wrote {LISTING} ({len(lines)} lines, {items} items)")
        return 0
    if mode == "--check":
        try:
            with open(LISTING) as f:
                committed = f.read()
        except FileNotFoundError:
            committed = ""
        if committed == text:
            print(f"public-api: the public API matches api/public-api.txt ({items} items)")
            return 0
        old, new = set(committed.splitlines()), set(lines)
        for line in sorted(old - new):
            print(f"- {line}", file=sys.stderr)
        for line in sorted(new - old):
            print(f"+ {line}", file=sys.stderr)
        print("public-api: the public API changed (above: - removed, + added). If that is "
              "intended, run scripts/public-api.py --write and commit api/public-api.txt with "
              "the change; a removal or a changed signature is a breaking change "
              "(docs/library.md, \"Compatibility\")", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    print(f"({items} items)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
