"""Render a run's report.html in headless Chromium and save a screenshot.

    python bench/render_report.py RUN_DIR_OR_REPORT_HTML [--out SHOT.png] [--height 4000]

Writes the report first when RUN_DIR has none. Prints one JSON line: the screenshot path, its
size, the report's sections (id and heading) and its embedded images (how many, whether all
decode as PNG), Chromium's exit code and the seconds it took. Exit code 3 when no Chromium is
installed (Debian: ``apt-get install -y chromium``).

Chromium runs with no network, no sandbox (containers), no GPU and a fresh empty profile, so
a report that needed anything from outside would render broken.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


class ReportStructure(HTMLParser):
    """Sections (id → h2 text), images (src) and external references of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[dict] = []
        self.external: list[str] = []
        self._section: str | None = None
        self._in_h2 = False
        self._h2 = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith(("#", "data:")):
                self.external.append(v)
        if tag == "section":
            self._section = a.get("id")
        elif tag == "h2" and self._section is not None:
            self._in_h2, self._h2 = True, ""
        elif tag == "img":
            self.images.append({"section": self._section, "src": a.get("src", ""), "alt": a.get("alt", "")})
        elif tag == "link":
            self.external.append(a.get("href", "link"))

    def handle_endtag(self, tag):
        if tag == "h2" and self._in_h2:
            self.sections[self._section] = self._h2.strip()
            self._in_h2 = False
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._in_h2:
            self._h2 += data


def parse_report(html_text: str) -> ReportStructure:
    p = ReportStructure()
    p.feed(html_text)
    return p


def decode_png(src: str) -> bytes | None:
    """The PNG bytes of a ``data:image/png;base64,…`` URI, or None when it is not one."""
    prefix = "data:image/png;base64,"
    if not src.startswith(prefix):
        return None
    try:
        raw = base64.b64decode(src[len(prefix):], validate=True)
    except ValueError:
        return None
    return raw if raw.startswith(PNG_MAGIC) else None


def screenshot(html_path: Path, out: Path, width: int = 1280, height: int = 4000,
               chromium: str | None = None, timeout: float = 120) -> dict:
    """Render ``html_path`` headless; returns {returncode, seconds, stderr tail}."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install -y chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    with tempfile.TemporaryDirectory(prefix="fedcredit-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", html_path.resolve().as_uri()]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return {"returncode": proc.returncode, "seconds": round(time.time() - t0, 2),
            "stderr_tail": proc.stderr[-400:] if proc.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="run directory or report.html")
    ap.add_argument("--out", help="screenshot file (default: next to the report, report.png)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args(argv)

    target = Path(args.target)
    if target.is_dir():
        html_path = target / "report.html"
        if not html_path.is_file():
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from server.report import write_report

            write_report(target)
    else:
        html_path = target
    structure = parse_report(html_path.read_text(encoding="utf-8"))
    pngs = [decode_png(i["src"]) for i in structure.images]
    out = Path(args.out) if args.out else html_path.with_suffix(".png")
    result = {"report": str(html_path), "report_bytes": html_path.stat().st_size,
              "sections": [{"id": k, "heading": v} for k, v in structure.sections.items()],
              "images": len(pngs), "images_decoded": sum(p is not None for p in pngs),
              "external_references": structure.external}
    chromium = find_chromium()
    if chromium is None:
        result.update({"screenshot": None, "error": "no Chromium installed (Debian: apt-get install -y chromium)"})
        print(json.dumps(result))
        return 3
    shot = screenshot(html_path, out, args.width, args.height, chromium)
    result.update({"screenshot": str(out) if out.is_file() else None, "chromium": chromium, **shot,
                   "screenshot_bytes": out.stat().st_size if out.is_file() else 0})
    print(json.dumps(result))
    return 0 if out.is_file() and shot["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
