#!/usr/bin/env python3
"""Build the bundled offline real-text corpus snapshot for ``mxd_saelens.zoo``.

Sources (all available offline on Debian 12 with Python installed):

* manual pages in several languages (Debian packages ``manpages``, ``manpages-dev``,
  ``manpages-fr``, ``manpages-de``, ...), rendered to plain UTF-8 text with ``man -l``;
* the Python documentation reST sources (Debian package ``python3.11-doc``);
* the Python standard library source (top-level ``*.py`` of the pyenv CPython);
* C headers owned by ``libc6-dev`` and ``linux-libc-dev`` under ``/usr/include``;
* licence texts in ``/usr/share/common-licenses``.

Needs (as root, once)::

    apt-get update && apt-get install -y manpages manpages-dev manpages-fr manpages-de \
        manpages-es manpages-it manpages-pl manpages-nl manpages-pt-br python3-doc

Run::

    python scripts/build_corpus.py            # writes mxd_saelens/zoo/data/corpus/

Output is deterministic given the same installed package versions: inputs are sorted,
sampling and the train/held-out split use a fixed seed, gzip headers carry no mtime.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "mxd_saelens" / "zoo" / "data" / "corpus"
SEED = 1234
MAX_DOC_CHARS = 20_000
MIN_DOC_CHARS = 400
HELDOUT_FRACTION = 0.05

PY_STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
PY_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
LICENCES = Path("/usr/share/common-licenses")
MAN_ROOT = Path("/usr/share/man")

# natural language label -> (man subdirectory, Debian package)
MAN_LANGS: dict[str, tuple[str, str]] = {
    "en": ("", "manpages"),
    "fr": ("fr", "manpages-fr"),
    "de": ("de", "manpages-de"),
    "es": ("es", "manpages-es"),
    "it": ("it", "manpages-it"),
    "pl": ("pl", "manpages-pl"),
    "nl": ("nl", "manpages-nl"),
    "pt": ("pt_BR", "manpages-pt-br"),
}
# Man page sections sampled (1 user commands, 2 syscalls, 3 library, 5 formats, 7 misc, 8 admin).
MAN_SECTIONS = ("1", "2", "3", "5", "7", "8")

# Character budget per group (source_kind, natural_language); keeps the mix balanced and the
# gzip snapshot small (~6 MB).
BUDGET = {
    "manpage/en": 2_600_000,
    "manpage/other": 1_300_000,  # per non-English language
    "python_doc": 2_600_000,
    "python_source": 2_600_000,
    "c_header": 1_800_000,
    "licence": 10**9,  # all of them (small)
}

OTHER_PACKAGES = ("manpages-dev", "python3.11-doc", "python3-doc", "libc6-dev", "linux-libc-dev")


@dataclass
class Doc:
    text: str
    natural_language: str
    programming_language: str
    source_kind: str
    source: str

    def group(self) -> str:
        return f"{self.source_kind}/{self.natural_language}/{self.programming_language}"


# ----------------------------------------------------------------------------- cleaning

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BLANKS = re.compile(r"\n{3,}")


def clean(text: str, dedent_man: bool = False) -> str:
    """Normalise unicode, drop control chars, trailing spaces and runs of blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\t", "    "))
    text = _CTRL.sub("", text)
    lines = [ln.rstrip() for ln in text.split("\n")]
    if dedent_man:  # man renders body text with a 7-column indent: drop it
        lines = [ln[7:] if ln.startswith("       ") else ln for ln in lines]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip() + "\n"


def cap(text: str, limit: int = MAX_DOC_CHARS) -> str:
    """Truncate to ``limit`` chars at a line boundary."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip() + "\n"


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")
    except OSError:
        return None


# ----------------------------------------------------------------------------- sources


def render_man(path: Path) -> str | None:
    """Render one man page source file to plain UTF-8 text (no overstrike, no hyphenation)."""
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="")
    try:
        out = subprocess.run(
            ["man", "-E", "UTF-8", "--no-hyphenation", "--no-justification", "-l", str(path)],
            env=env,
            capture_output=True,
            timeout=60,
            cwd=str(path.parent.parent),  # so that `.so manX/foo.X` includes resolve
            check=False,
        ).stdout
    except subprocess.TimeoutExpired:
        return None
    out = re.sub(rb".\x08", b"", out)  # strip any overstrike (col -b equivalent)
    return out.decode("utf-8", errors="replace")


def man_candidates(subdir: str) -> list[Path]:
    base = MAN_ROOT / subdir if subdir else MAN_ROOT
    files: list[Path] = []
    for sec in MAN_SECTIONS:
        d = base / f"man{sec}"
        if d.is_dir():
            files += [p for p in d.iterdir() if p.is_file() and not p.is_symlink()]
    return sorted(files)


def is_so_stub(path: Path) -> bool:
    """Pages that only `.so`-include another page are duplicates: skip them."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read(400)
        else:
            raw = path.read_bytes()[:400]
    except OSError:
        return True
    lines = [
        ln for ln in raw.decode("latin-1").splitlines() if ln.strip() and not ln.startswith('.\\"')
    ]
    return len(lines) <= 2 and any(ln.startswith(".so ") for ln in lines)


def take_budget(
    paths: list[Path], budget: int, make: callable, rng: random.Random, workers: int
) -> list[Doc]:
    """Shuffle candidates deterministically and materialise docs until the char budget is hit."""
    order = list(paths)
    rng.shuffle(order)
    docs: list[Doc] = []
    total = 0
    batch = 64
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(order), batch):
            for doc in pool.map(make, order[i : i + batch]):  # map keeps order: deterministic
                if doc is None or total >= budget:
                    continue
                docs.append(doc)
                total += len(doc.text)
            if total >= budget:
                break
    return docs


def manpage_docs(
    lang: str, subdir: str, budget: int, rng: random.Random, workers: int
) -> list[Doc]:
    def make(p: Path) -> Doc | None:
        if is_so_stub(p):
            return None
        raw = render_man(p)
        if not raw:
            return None
        text = cap(clean(raw, dedent_man=True))
        if len(text) < MIN_DOC_CHARS:
            return None
        return Doc(text, lang, "none", "manpage", str(p))

    return take_budget(man_candidates(subdir), budget, make, rng, workers)


def file_docs(
    paths: list[Path], budget: int, rng: random.Random, nl: str, pl: str, kind: str
) -> list[Doc]:
    def make(p: Path) -> Doc | None:
        raw = read_text(p)
        if raw is None:
            return None
        text = cap(clean(raw))
        return Doc(text, nl, pl, kind, str(p)) if len(text) >= MIN_DOC_CHARS else None

    return take_budget(paths, budget, make, rng, workers=1)


def libc_headers() -> list[Path]:
    out = subprocess.run(
        ["dpkg", "-L", "libc6-dev", "linux-libc-dev"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(
        {
            Path(p)
            for p in out.split()
            if p.endswith(".h") and Path(p).is_file() and not Path(p).is_symlink()
        }
    )


# ----------------------------------------------------------------------------- split / write


def split(docs: list[Doc], rng: random.Random) -> tuple[list[Doc], list[Doc]]:
    """Split by document, stratified by group, so every label value appears in held-out."""
    by_group: dict[str, list[Doc]] = {}
    for d in docs:
        by_group.setdefault(d.group(), []).append(d)
    train, held = [], []
    for g in sorted(by_group):
        items = sorted(by_group[g], key=lambda d: d.source)
        rng.shuffle(items)
        n_held = max(1, round(HELDOUT_FRACTION * len(items))) if len(items) > 1 else 0
        held += items[:n_held]
        train += items[n_held:]
    key = lambda d: (d.source_kind, d.natural_language, d.source)  # noqa: E731
    return sorted(train, key=key), sorted(held, key=key)


def write_jsonl_gz(path: Path, docs: list[Doc]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for d in docs:
            gz.write((json.dumps(d.__dict__, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def pkg_version(pkg: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False
    )
    return r.stdout.strip() or "not installed"


def write_provenance(path: Path, train: list[Doc], held: list[Doc], argv: list[str]) -> None:
    def table(field: str) -> str:
        ct, ch = Counter(getattr(d, field) for d in train), Counter(getattr(d, field) for d in held)
        rows = [f"| {k} | {ct[k]} | {ch[k]} |" for k in sorted(set(ct) | set(ch))]
        return "\n".join([f"| {field} | train | heldout |", "|---|---|---|", *rows])

    chars = sum(len(d.text) for d in train + held)
    pkgs = [p for _, p in MAN_LANGS.values()] + list(OTHER_PACKAGES)
    versions = "\n".join(f"| {p} | {pkg_version(p)} |" for p in pkgs)
    text = f"""# Corpus provenance

Snapshot of real text gathered offline from a Debian 12 machine, cleaned and split by
`scripts/build_corpus.py`. Files: `train.jsonl.gz`, `heldout.jsonl.gz` (one JSON object per
document with `text`, `natural_language`, `programming_language`, `source_kind`, `source`).

Built with:

```
{" ".join(argv)}
```

Documents: {len(train)} train, {len(held)} held-out, {chars:,} characters in all. Each
document is capped at {MAX_DOC_CHARS:,} characters (cut at a line boundary); documents shorter
than {MIN_DOC_CHARS} characters are dropped; exact duplicates are removed. Split is by
document, seed {SEED}, ~{HELDOUT_FRACTION:.0%} held-out, stratified by
(source_kind, natural_language, programming_language) so every label value appears in held-out.

## Sources and licences

| source_kind | where | labels | licence |
|---|---|---|---|
| manpage | `/usr/share/man/<lang>/man{{{",".join(MAN_SECTIONS)}}}`, rendered with `man -E UTF-8 --no-hyphenation --no-justification -l` at width 80, 7-column body indent removed; `.so` stub pages skipped | natural_language = page language, programming_language = none | various free licences, per page (Linux man-pages project: mostly "Linux man-pages copyleft"/GPL/BSD-style; translations by the manpages-l10n project: GPL-3+ for translations, original page licence for the content; pages of other installed packages: their package's free licence, see `/usr/share/doc/<package>/copyright`) |
| python_doc | `{PY_DOC_SOURCES}/**/*.rst.txt` (reST sources of the Python 3.11 documentation) | en / none | PSF License Agreement (Python documentation) |
| python_source | `{PY_STDLIB}/*.py` (CPython 3.11.7 standard library, top level) | none / python | PSF License Agreement |
| c_header | `*.h` files owned by `libc6-dev` and `linux-libc-dev` under `/usr/include` | none / c | glibc: LGPL-2.1-or-later (some files with other permissive notices); Linux UAPI headers: GPL-2.0 WITH Linux-syscall-note |
| licence | `{LICENCES}/*` (symlinks skipped) | en / none | licence texts, verbatim copying permitted |

Sampling: candidates of each group are sorted, shuffled with a fixed seed and taken until a
character budget per group is reached (English man pages {BUDGET["manpage/en"]:,}, each other
man page language {BUDGET["manpage/other"]:,}, Python docs {BUDGET["python_doc"]:,}, Python
source {BUDGET["python_source"]:,}, C headers {BUDGET["c_header"]:,}, licences: all).

## Debian packages

| package | version |
|---|---|
{versions}

## Counts per label (documents)

{table("natural_language")}

{table("programming_language")}

{table("source_kind")}
"""
    path.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--workers", type=int, default=2, help="parallel `man` renderers")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    docs: list[Doc] = []
    for lang, (subdir, _pkg) in MAN_LANGS.items():
        budget = BUDGET["manpage/en"] if lang == "en" else BUDGET["manpage/other"]
        got = manpage_docs(lang, subdir, budget, random.Random(f"{SEED}-man-{lang}"), args.workers)
        print(f"manpage/{lang}: {len(got)} docs", file=sys.stderr)
        docs += got
    groups = [
        (sorted(PY_DOC_SOURCES.rglob("*.rst.txt")), "python_doc", "en", "none"),
        (sorted(PY_STDLIB.glob("*.py")), "python_source", "none", "python"),
        (libc_headers(), "c_header", "none", "c"),
        (
            sorted(p for p in LICENCES.iterdir() if p.is_file() and not p.is_symlink()),
            "licence",
            "en",
            "none",
        ),
    ]
    for paths, kind, nl, pl in groups:
        got = file_docs(paths, BUDGET[kind], random.Random(f"{SEED}-{kind}"), nl, pl, kind)
        print(f"{kind}: {len(got)} docs", file=sys.stderr)
        docs += got

    seen: set[str] = set()
    unique = []
    for d in docs:  # drop exact duplicates (hard-linked pages, identical translations)
        h = hashlib.sha1(d.text.encode()).hexdigest()
        if h not in seen:
            seen.add(h)
            unique.append(d)

    train, held = split(unique, random.Random(SEED))
    write_jsonl_gz(args.out / "train.jsonl.gz", train)
    write_jsonl_gz(args.out / "heldout.jsonl.gz", held)
    rel_argv = ["python", "scripts/build_corpus.py", *sys.argv[1:]]
    write_provenance(args.out / "PROVENANCE.md", train, held, rel_argv)
    for f in ("train.jsonl.gz", "heldout.jsonl.gz"):
        print(f"{f}: {(args.out / f).stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    print(f"train {len(train)} docs, heldout {len(held)} docs", file=sys.stderr)


if __name__ == "__main__":
    main()
