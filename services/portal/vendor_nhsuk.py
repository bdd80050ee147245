"""Re-vendor nhsuk-frontend's built CSS and images into ``services/portal/static/nhsuk/``.

    python -m services.portal.vendor_nhsuk            # the version in NHSUK_FRONTEND_VERSION
    python -m services.portal.vendor_nhsuk 10.7.0     # another one (then update the constant)

A developer tool, not run by the service: it needs ``npm`` (the npm registry) and writes files in
the source tree. What it does to the CSS (``process_css``) is a pure function, unit-tested:
- removes every ``@font-face`` rule (they load Frutiger from assets.nhs.uk, a CDN the portal must
  not use at run time) and the "Frutiger W01" entry of every font-family list, so text falls back
  to Arial, as the NHS design system allows;
- makes the package's root-absolute image URLs (``url(/assets/images/...)``) relative to the
  stylesheet, so they resolve under ``/static/nhsuk/`` (and under any proxy path prefix);
- drops the source-map comment (the map is not vendored) and adds a banner saying all this
  (after ``@charset``, which must stay first).
It fails loudly if any absolute URL or ``@import`` is left. The package ships no licence file
(only "license": "MIT" in package.json); ``LICENCE`` beside the CSS holds the text of the
project's repository LICENSE and is kept as it is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NHSUK_FRONTEND_VERSION = "10.6.1"
TARGET_DIR = Path(__file__).resolve().parent / "static" / "nhsuk"
CSS_NAME = "nhsuk-frontend.min.css"
REMOVED_FONT_FAMILY = "Frutiger W01"
FALLBACK_FONT_STACK = "arial,sans-serif"
# Images vendored: the icons the CSS references, the favicon set, and the other small icons.
IMAGE_SUFFIXES = (".svg", ".ico")
NPM_TIMEOUT_S = 300

_FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}", re.IGNORECASE)
_FONT_FAMILY = re.compile(r"font-family\s*:\s*([^;}!]+)", re.IGNORECASE)
_SOURCE_MAP = re.compile(r"/\*#\s*sourceMappingURL=[^*]*\*/\s*")
_ROOT_ASSET_URL = re.compile(r"url\(\s*(['\"]?)/assets/")
_ABSOLUTE_URL = re.compile(r"url\(\s*['\"]?\s*(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


class VendorError(Exception):
    """The package's CSS is not what this script knows how to make CDN-free."""


def _without_family(match: re.Match[str]) -> str:
    families = [f.strip() for f in match.group(1).split(",")]
    kept = [f for f in families if f.strip("'\"").lower() != REMOVED_FONT_FAMILY.lower()]
    return "font-family:" + (",".join(kept) if kept else FALLBACK_FONT_STACK)


def process_css(css: str, *, version: str) -> str:
    """The package's minified CSS, made to load nothing from outside the portal."""
    out = _FONT_FACE.sub("", css)
    out = _FONT_FAMILY.sub(_without_family, out)
    out = _ROOT_ASSET_URL.sub(lambda m: f"url({m.group(1)}assets/", out)
    out = _SOURCE_MAP.sub("", out).rstrip() + "\n"
    if _ABSOLUTE_URL.search(out):
        raise VendorError(f"an absolute url() is left in the CSS: {_ABSOLUTE_URL.search(out).group(0)!r}")
    if "@import" in out:
        raise VendorError("the CSS has an @import: it would load another file at run time")
    if REMOVED_FONT_FAMILY.lower() in out.lower():
        raise VendorError(f"{REMOVED_FONT_FAMILY!r} is still named in the CSS")
    banner = (
        f"/*! nhsuk-frontend {version} (MIT licence, see LICENCE). Processed by "
        "services/portal/vendor_nhsuk.py: @font-face rules and the Frutiger W01 family removed "
        "(text falls back to Arial), image URLs made relative. */\n"
    )
    charset = re.match(r'@charset\s+"[^"]*";', out)
    if charset:  # @charset must stay the very first thing in the file
        return out[: charset.end()] + "\n" + banner + out[charset.end():]
    return banner + out


def vendor(version: str = NHSUK_FRONTEND_VERSION, target: Path = TARGET_DIR) -> None:
    with tempfile.TemporaryDirectory(prefix="nhsuk-frontend-") as tmp:
        tmp_path = Path(tmp)
        subprocess.run(
            ["npm", "pack", f"nhsuk-frontend@{version}", "--silent"],
            cwd=tmp_path, check=True, timeout=NPM_TIMEOUT_S,
        )
        tarball = tmp_path / f"nhsuk-frontend-{version}.tgz"
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        dist = tmp_path / "x" / "package" / "dist" / "nhsuk"
        css = process_css((dist / CSS_NAME).read_text(encoding="utf-8"), version=version)
        images_target = target / "assets" / "images"
        if images_target.exists():
            shutil.rmtree(images_target)
        images_target.mkdir(parents=True)
        (target / CSS_NAME).write_text(css, encoding="utf-8")
        for image in sorted((dist / "assets" / "images").iterdir()):
            if image.suffix in IMAGE_SUFFIXES:
                shutil.copy2(image, images_target / image.name)
    if not (target / "LICENCE").exists():
        raise VendorError(f"{target / 'LICENCE'} is missing: restore the MIT licence text (see README.md there)")
    print(f"vendored nhsuk-frontend {version} into {target}; now update the version in README.md there")


if __name__ == "__main__":
    vendor(sys.argv[1] if len(sys.argv) > 1 else NHSUK_FRONTEND_VERSION)
