#!/usr/bin/env python3
"""Checks that every relative link in README.md and docs/*.md points to a file that exists
and, when it has a #fragment, to a heading of that file.

    python3 .ci/check_links.py

Anchors follow GitHub's rules: the heading's text, lowercased, without punctuation other
than `-` and `_`, spaces turned into `-`; a repeated heading gets -1, -2, ... Links inside
code blocks and code spans are not links; http:, https: and mailto: links are not checked.
Exits 1 with one line per broken link.
"""
import collections
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def outside_code_blocks(text):
    """The text with every fenced code block's lines blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = re.match(r"^\s*(```+|~~~+)", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append("" if fence else line)
    return "\n".join(out)


def anchors(path):
    seen = collections.Counter()
    result = set()
    for line in outside_code_blocks(path.read_text()).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link: its text
        text = text.replace("`", "").replace("*", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        result.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return result


def main():
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    cache, broken, checked = {}, [], 0
    for f in files:
        text = outside_code_blocks(f.read_text())
        text = re.sub(r"``.*?``", "CODE", text, flags=re.S)
        text = re.sub(r"`[^`]*`", "CODE", text)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            checked += 1
            where = f"{f.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: {target}"
            path, _, frag = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif frag and dest.suffix != ".md":
                broken.append(f"{where}: a #fragment on a file that is not markdown")
            elif frag:
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if frag not in cache[dest]:
                    broken.append(f"{where}: no heading with anchor #{frag}")
    for line in broken:
        print(line)
    print(f"{checked} relative links in {len(files)} files, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
