"""Check an augmentation report the way a reader meets it: every image decodes, every link lands.

    python scripts/check_report.py RUN_DIR/report                 # index.html and report.md
    python scripts/check_report.py RUN_DIR --screenshot shot.png   # write the report first, then
                                                                   # render it in headless Chromium

Checks ``index.html``'s ``img src``, ``a href``, ``link href`` and ``script src`` and
``report.md``'s image and link targets: a ``data:`` image must decode (with Pillow), a local file
must exist (and decode, for an image), a ``#fragment`` must name an element of the page. Links
to other sites are listed, not fetched (the project runs offline). ``--screenshot`` renders
``index.html`` with Chromium (``chromium --headless``; Debian's package ``chromium``) at
1200x2000 and fails if the screenshot is missing, does not decode or is blank. Prints one line
per problem and exits 1 if there is any, else prints what it checked and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EXTERNAL = ("http:", "https:", "mailto:", "ftp:")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str]] = []  # (kind, target): kind "img" or "link"
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if a.get(name):
                self.ids.add(a[name])
        if tag == "img":
            self.refs.append(("img", a.get("src") or ""))
        elif tag in ("a", "link") and "href" in a:
            self.refs.append(("link", a["href"] or ""))
        elif tag == "script" and a.get("src"):
            self.refs.append(("link", a["src"]))


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a decodable image (None if it is)."""
    try:
        from PIL import Image
    except ImportError:  # without Pillow: the PNG signature at least
        return None if data.startswith(b"\x89PNG\r\n\x1a\n") else "not a PNG (Pillow not installed)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.width < 2 or im.height < 2:
                return f"a {im.width}x{im.height} image"
    except Exception as e:  # PIL raises many kinds
        return f"does not decode ({type(e).__name__}: {e})"
    return None


def _data_uri(target: str) -> bytes:
    head, _, payload = target.partition(",")
    if ";base64" in head:
        return base64.b64decode(payload, validate=True)
    return urllib.parse.unquote_to_bytes(payload)


def check_target(kind: str, target: str, base: Path, ids: set[str], where: str) -> str | None:
    """One problem line for ``target`` (found in ``where``), or None."""
    if not target.strip():
        return f"{where}: empty {'src' if kind == 'img' else 'href'}"
    if target.startswith("data:"):
        try:
            data = _data_uri(target)
        except (binascii.Error, ValueError) as e:
            return f"{where}: data URI does not decode ({e})"
        problem = image_problem(data) if kind == "img" else None
        return f"{where}: embedded image {problem}" if problem else None
    if target.lower().startswith(EXTERNAL):
        return None
    if target.startswith("#"):
        return None if target[1:] in ids else f"{where}: no element with id {target[1:]!r} for {target}"
    parsed = urllib.parse.urlparse(target)
    path = Path(urllib.parse.unquote(parsed.path)) if parsed.scheme in ("", "file") else None
    if path is None:
        return f"{where}: {target}: a link of an unknown kind"
    full = path if path.is_absolute() else base / path
    if not full.exists():
        return f"{where}: {target}: no such file ({full})"
    if kind == "img":
        problem = image_problem(full.read_bytes())
        return f"{where}: {target} {problem}" if problem else None
    return None


def check_html(index: Path) -> tuple[list[str], int]:
    """(problems, number of references checked) of one HTML file."""
    parser = _Refs()
    parser.feed(index.read_text(encoding="utf-8"))
    problems = []
    for kind, target in parser.refs:
        shown = target if len(target) < 60 else target[:40] + "…"
        problem = check_target(kind, target, index.parent, parser.ids, f"{index.name} {kind} {shown}")
        if problem:
            problems.append(problem)
    return problems, len(parser.refs)


_MD_REF = re.compile(r"(!?)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def check_markdown(md: Path) -> tuple[list[str], int]:
    text = md.read_text(encoding="utf-8")
    refs = [("img" if bang else "link", target) for bang, target in _MD_REF.findall(text)]
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+\s+(.*)$", text, re.M)}
    problems = [p for kind, t in refs
                if (p := check_target(kind, t, md.parent, anchors, f"{md.name} {kind} {t}"))]
    return problems, len(refs)


def browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def screenshot(index: Path, out: Path, size: str = "1200,2000", timeout_s: float = 120) -> list[str]:
    """Render ``index`` headless into ``out``; problems if that fails or the picture is blank."""
    exe = browser()
    if exe is None:
        return [f"no browser found ({', '.join(BROWSERS)}); apt-get install chromium"]
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}",
               index.resolve().as_uri()]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [f"{exe} did not finish in {timeout_s:.0f} s"]
    if not out.exists():
        return [f"{exe} wrote no screenshot (exit {run.returncode}): {run.stderr.strip()[-300:]}"]
    data = out.read_bytes()
    if problem := image_problem(data):
        return [f"screenshot {out} {problem}"]
    try:
        from PIL import Image
    except ImportError:
        return []
    with Image.open(io.BytesIO(data)) as im:
        lo, hi = im.convert("L").getextrema()
    return [] if hi - lo > 64 else [f"screenshot {out} is blank (grey levels {lo}..{hi})"]


def check_report(path: Path, shot: Path | None = None) -> tuple[list[str], list[str]]:
    """(problems, what was checked) for a report directory, or a run directory (reported first)."""
    path = Path(path)
    notes = []
    if not (path / "index.html").exists() and (path / "stats.json").exists():
        from commands.report import write_report

        out = Path(tempfile.mkdtemp(prefix="report-"))
        write_report(path, out)
        notes.append(f"wrote the report of run {path} to {out}")
        path = out
    index, md = path / "index.html", path / "report.md"
    if not index.exists():
        return [f"{path}: no index.html"], notes
    problems, n = check_html(index)
    notes.append(f"{index}: {n} references")
    if md.exists():
        more, m = check_markdown(md)
        problems += more
        notes.append(f"{md}: {m} references")
    if shot is not None:
        problems += screenshot(index, shot)
        notes.append(f"screenshot {shot}")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a report directory (index.html, report.md) or a run directory")
    parser.add_argument("--screenshot", type=Path, help="render index.html headless into this PNG")
    args = parser.parse_args(argv)
    problems, notes = check_report(Path(args.path), args.screenshot)
    for line in notes:
        print(line)
    for line in problems:
        print("PROBLEM", line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
