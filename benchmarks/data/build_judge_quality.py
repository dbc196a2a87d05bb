"""Build benchmarks/data/judge_quality.jsonl: a labelled set of REAL text for judges.

Every item is cut from text installed on a Debian + CPython machine (none of it is
model output), and records where it came from (`source`). Labels:

- 1 `educational`: explanatory prose: the Python language reference (pydoc_data),
  man pages of section 7 (overviews), GNU info manuals' introductions, stdlib docs.
- 0 `boilerplate`: licence texts and Debian copyright files.
- 0 `promotional`: sponsorship / commercial-support blurbs and legal-consent text from
  installed packages' metadata (the closest thing to spam on an offline disk).
- 0 `offtopic`: changelogs, configuration files, mail headers and bounces, word lists.
- 0 `garbled`: educational prose from OTHER documents than the positives, corrupted
  deterministically (word shuffles, character noise, interleaved fragments).

`split` is `dev` or `holdout` (a hash of the id): tune on dev, report both.
Run: python benchmarks/data/build_judge_quality.py  (rewrites the JSONL next to it).
The output depends on the installed package versions; the shipped JSONL is the
reference copy, this script documents how it was made.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).with_name("judge_quality.jsonl")
CHARS = 1200
PYLIB = Path(os.__file__).parent
SITE = sorted({p for p in sys.path if p.endswith("site-packages")} |
              set(glob.glob("/root/.pyenv/versions/*/lib/python3*/site-packages")) |
              set(glob.glob("/usr/lib/python3/dist-packages")))


def clean(text: str) -> str:
    text = text.replace("\u2010", "-").replace("\u00ad", "")
    text = re.sub(r"-\n\s*", "", text)  # man's hyphenation at line ends
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return text.strip()


def cut(text: str, n: int = CHARS) -> str:
    """About `n` characters, ending at a sentence or paragraph end when there is one."""
    text = clean(text)
    if len(text) <= n:
        return text
    head = text[:n]
    end = max(head.rfind(". "), head.rfind(".\n"), head.rfind("\n\n"))
    return head[: end + 1].strip() if end > n // 2 else head.strip()


def man7(name: str) -> str:
    env = {**os.environ, "MANWIDTH": "200"}
    out = subprocess.run(["man", "-P", "cat", "7", name], capture_output=True, text=True, env=env).stdout
    m = re.search(r"\nDESCRIPTION\n(.*?)(?:\n(?:SEE ALSO|NOTES|EXAMPLES?|BUGS|VERSIONS|STANDARDS|"
                  r"CONFORMING TO|FILES|ERRORS|RETURN VALUE)\n|\Z)", out, re.S)
    return m.group(1) if m else ""


def info_node(manual: str, node: str) -> str:
    with gzip.open(f"/usr/share/info/{manual}.info.gz", "rt", errors="replace") as f:
        text = f.read()
    parts = text.split("\x1f")
    for p in parts:
        if re.search(rf"Node: {re.escape(node)},", p):
            body = p.split("\n", 2)[-1]
            body = re.sub(r"\* Menu:.*", "", body, flags=re.S)
            body = re.sub(r"^[=*]+\s*$", "", body, flags=re.M)
            return body
    return ""


def pydoc_topic(name: str) -> str:
    from pydoc_data.topics import topics

    body = topics[name]
    body = re.sub(r"^\s*\*+\s*$|^\s*[=\-*]{3,}\s*$", "", body, flags=re.M)
    # drop grammar blocks (indented lines with ::=)
    body = "\n".join(line for line in body.splitlines() if "::=" not in line and not line.startswith("   " * 3))
    return body


def corrupt(text: str, how: str, seed: int) -> str:
    rnd = random.Random(seed)
    words = text.split()
    if how == "shuffle":  # word salad: every word kept, order destroyed
        rnd.shuffle(words)
        return " ".join(words)
    if how == "chars":  # OCR-like noise: a third of the letters replaced
        letters = "etaoinshrdlucmfwypvbgkqjxz"
        return "".join(rnd.choice(letters) if c.isalpha() and rnd.random() < 0.35 else c for c in text)
    if how == "truncate":  # every word cut to its first 3 letters, punctuation dropped
        return " ".join(re.sub(r"\W", "", w)[:3] for w in words if re.sub(r"\W", "", w))
    if how == "interleave":  # fragments of 2-4 words, reversed order of fragments
        frags = [" ".join(words[i : i + rnd.randint(2, 4)]) for i in range(0, len(words), 3)]
        frags.reverse()
        return " | ".join(frags)
    raise ValueError(how)


def metadata_blurbs() -> list[tuple[str, str]]:
    """Promotional paragraphs in installed packages' METADATA (Tidelift, sponsors)."""
    found: dict[str, tuple[str, str]] = {}
    pat = re.compile(r"(tidelift|sponsor|enterprise|commercial support|donat|patreon|buy me)", re.I)
    for site in SITE:
        for meta in sorted(glob.glob(f"{site}/*.dist-info/METADATA")):
            try:
                text = Path(meta).read_text(errors="replace")
            except OSError:
                continue
            body = text.split("\n\n", 1)[-1]
            for para in re.split(r"\n\s*\n", body):
                if pat.search(para) and 150 < len(para) < 1500 and "```" not in para:
                    key = re.sub(r"\W+", " ", para.lower())[:120]
                    norm = re.sub(r"\b[a-z0-9_.-]+\b", "", key)[:40]
                    if norm not in found and key not in found:
                        found[key] = (clean(para), meta.split("site-packages/")[-1])
    return list(found.values())


def debian_changelog(pkg: str) -> str:
    path = f"/usr/share/doc/{pkg}/changelog.Debian.gz"
    with gzip.open(path, "rt", errors="replace") as f:
        return f.read()


def main() -> None:
    items: list[dict] = []

    def add(text: str, label: int, kind: str, source: str) -> None:
        text = cut(text)
        if len(text) < 200:
            print(f"skip (too short): {source}", file=sys.stderr)
            return
        h = hashlib.sha256(source.encode()).hexdigest()[:10]
        split = "holdout" if int(h, 16) % 3 == 0 else "dev"
        items.append({"id": f"{kind}-{h}", "label": label, "kind": kind, "split": split,
                      "source": source, "text": text})

    # --- educational prose
    for t in ["if", "while", "for", "try", "with", "function", "class", "numbers", "types",
              "exceptions", "execmodel", "naming", "integers", "floating", "strings", "truth",
              "comparisons", "lambda", "assert", "import", "global", "booleans", "sequence-types",
              "typesmapping", "slicings"]:
        add(pydoc_topic(t), 1, "educational", f"python {sys.version.split()[0]} pydoc_data/topics.py: {t}")
    for m in ["ascii", "utf-8", "hier", "signal", "glob", "regex", "time", "charsets", "unicode",
              "pipe", "environ", "locale", "symlink", "path_resolution", "inode", "credentials",
              "uri", "boot", "epoll", "inotify", "pty", "hostname", "cgroups", "namespaces", "shm_overview"]:
        add(man7(m), 1, "educational", f"man 7 {m}")
    for manual, node in [("bc", "Description"), ("bc", "Basic Expressions"), ("grep", "Introduction"),
                         ("sed", "Introduction"), ("gzip", "Overview"), ("bzip2", "Description"),
                         ("diffutils", "Overview"), ("find", "Introduction"), ("time", "Resource Measurement"),
                         ("wget", "Overview"), ("ed", "Introduction to line editing"),
                         ("coreutils", "Introduction"), ("gettext", "Why"), ("sed", "Regular Expressions Overview")]:
        add(info_node(manual, node), 1, "educational", f"info {manual} '{node}'")
    import heapq

    add(heapq.__about__, 1, "educational", "python stdlib heapq.__about__")

    # --- boilerplate: licences and copyright files
    for lic in ["GPL-3", "GPL-2", "Apache-2.0", "MPL-2.0", "Artistic", "GFDL-1.3", "LGPL-2.1", "CC0-1.0"]:
        text = Path(f"/usr/share/common-licenses/{lic}").read_text(errors="replace")
        for start in (len(text) // 5, len(text) // 2):
            add(text[start:start + 3000].split("\n", 1)[-1], 0, "boilerplate",
                f"/usr/share/common-licenses/{lic} (offset {start})")
    for pkg in ["curl", "openssl", "bash", "gzip", "tar", "sed", "coreutils", "python3.11"]:
        p = f"/usr/share/doc/{pkg}/copyright"
        if os.path.exists(p):
            add(Path(p).read_text(errors="replace")[:3000], 0, "boilerplate", p)

    # --- promotional / consent text found in installed packages
    for para, where in metadata_blurbs()[:14]:
        add(para, 0, "promotional", f"site-packages/{where}")
    for p in ["/usr/share/doc/openjdk-17-jre-headless/copyright"]:
        if os.path.exists(p):
            text = Path(p).read_text(errors="replace")
            i = text.lower().find("cookie")
            if i > 0:
                add(text[max(0, i - 600): i + 900], 0, "promotional", f"{p} (cookie/consent passage)")

    # --- off-topic: changelogs, configs, mail headers, word lists
    for pkg in ["curl", "openssl", "bash", "gzip", "tar", "git", "wget", "sed"]:
        if os.path.exists(f"/usr/share/doc/{pkg}/changelog.Debian.gz"):
            add(debian_changelog(pkg), 0, "offtopic", f"/usr/share/doc/{pkg}/changelog.Debian.gz")
    for conf in ["/etc/services", "/etc/protocols", "/etc/mime.types", "/etc/adduser.conf",
                 "/etc/ssl/openssl.cnf", "/etc/login.defs", "/etc/nsswitch.conf"]:
        if os.path.exists(conf):
            text = Path(conf).read_text(errors="replace")
            add(text[len(text) // 3:], 0, "offtopic", conf)
    maildir = next(iter(glob.glob("/root/.pyenv/versions/3.11*/lib/python3.11/test/test_email/data")), None)
    if maildir:
        for name in ["msg_25.txt", "msg_16.txt", "msg_02.txt", "msg_19.txt", "msg_07.txt", "msg_30.txt"]:
            p = Path(maildir) / name
            if p.exists():
                add(p.read_text(errors="replace"), 0, "offtopic", f"cpython test_email/data/{name}")

    # --- garbled: other documents than the positives, corrupted
    sources = [(man7(m), f"man 7 {m}") for m in ["tcp", "udp", "ip", "socket", "pthreads", "sem_overview",
                                                  "mq_overview", "netlink"]]
    sources += [(pydoc_topic(t), f"pydoc_data/topics.py: {t}") for t in ["dict", "attribute-access",
                                                                          "bltin-code-objects", "yield"]]
    hows = ["shuffle", "chars", "truncate", "interleave"]
    for k, (text, src) in enumerate(sources):
        how = hows[k % len(hows)]
        add(corrupt(cut(text, 1400), how, k), 0, "garbled", f"{src}, corrupted: {how} (seed {k})")

    items.sort(key=lambda r: r["id"])
    with OUT.open("w") as f:
        for r in items:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    kinds: dict[str, int] = {}
    for r in items:
        kinds[f"{r['kind']}/{r['split']}"] = kinds.get(f"{r['kind']}/{r['split']}", 0) + 1
    print(json.dumps({"items": len(items), **dict(sorted(kinds.items()))}))


if __name__ == "__main__":
    main()
