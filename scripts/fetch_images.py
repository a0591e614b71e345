"""Fetch the image track's real, offline image-caption data from Debian packages (never committed).

    tuxpaint-stamps-default   Tux Paint stamps in category folders, each with a description .txt
    openclipart-png           Open Clip Art Library PNGs in category folders, titled by file name
    fonts-noto-color-emoji    Noto Color Emoji, rendered here, named by unicode-data's emoji-test.txt
    unicode-data

`apt-get download` fetches the .deb files into OUT/debs/ (after `apt-get update` if the package
lists do not know them yet; run as root), `dpkg-deb -x` unpacks them, and every image becomes a
96-pixel RGB PNG (transparency over white) in an imagefolder albat reads:

    OUT/pool/SOURCE/CATEGORY/NAME.png + OUT/pool/captions.jsonl   file_name, text, id, source, category
    OUT/demo-adaptation/, OUT/demo-eval/                          the demo's sets (same layout)

The demo holds out 16 Tux Paint *animals* stamps as the adaptation set (not in the pool) and names
16 others, left in the pool on purpose, as its evaluation set (`--exclude` must keep them out).
Licences: Tux Paint stamps GPL-2+ (some CC/public domain), Open Clip Art public domain, Noto Color
Emoji OFL-1.1, Unicode data Unicode-DFS-2016 (see OUT/raw/usr/share/doc/*/copyright).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PACKAGES = ("tuxpaint-stamps-default", "openclipart-png", "fonts-noto-color-emoji", "unicode-data")
SIZE = 96
DEMO_TARGET = ("tuxpaint", "animals")
DEMO_ADAPTATION = DEMO_EVAL = 16
SEED = 0


def download(debs: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs.glob(f"{p}_*.deb"))]
    if not missing:
        return
    if subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True, capture_output=True)


def unpack(debs: Path, raw: Path) -> None:
    if (raw / ".complete").exists():
        return
    shutil.rmtree(raw, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(raw)], check=True)
    (raw / ".complete").write_text("ok\n")


def _words(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def tuxpaint_items(raw: Path) -> list[dict]:
    root = raw / "usr/share/tuxpaint/stamps"
    items = []
    for png in sorted(root.rglob("*.png")):
        if png.stem.endswith(("_mirror", "_flip", "_back")) or png.name.endswith("_thumb.png"):
            continue
        desc = png.with_suffix(".txt")
        caption = desc.read_text(errors="replace").splitlines()[0].strip() if desc.exists() else ""
        rel = png.relative_to(root)
        items.append({"source": "tuxpaint", "category": rel.parts[0], "path": str(png),
                      "text": caption or _words(png.stem), "name": rel.as_posix()})
    return items


def openclipart_items(raw: Path) -> list[dict]:
    root = raw / "usr/share/openclipart/png"
    items = []
    for png in sorted(root.rglob("*.png")):
        rel = png.relative_to(root)
        title = _words(png.stem.rstrip("0123456789_"))
        where = _words(" ".join(rel.parts[:-1]))
        items.append({"source": "openclipart", "category": rel.parts[0], "path": str(png),
                      "text": f"{title}, {where} clip art", "name": rel.as_posix()})
    return items


def emoji_items(raw: Path) -> list[dict]:
    """Single-code-point fully-qualified emoji (sequences need a shaping engine to render)."""
    test = raw / "usr/share/unicode/emoji/emoji-test.txt"
    items, group = [], ""
    for line in test.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        if "; fully-qualified" not in line or group in ("Component", "Flags"):
            continue
        points = [p for p in line.split(";")[0].split() if p != "FE0F"]
        if len(points) != 1:
            continue
        name = line.split("#", 1)[1].split(maxsplit=2)[2]  # "# 😀 E1.0 grinning face"
        category = _words(group.replace("&", "and")).lower().replace(" ", "_")
        items.append({"source": "emoji", "category": category, "char": chr(int(points[0], 16)),
                      "text": f"{name} emoji", "name": f"{category}/u{points[0].lower()}.png"})
    return items


_FONT = None


def _render(item: dict, font_path: str) -> bytes | None:
    from PIL import Image, ImageDraw, ImageFont

    global _FONT
    try:
        if "char" in item:
            if _FONT is None:
                _FONT = ImageFont.truetype(font_path, 109)  # the bitmap font's one size
            image = Image.new("RGB", (136, 128), "white")
            ImageDraw.Draw(image).text((0, 0), item["char"], font=_FONT, embedded_color=True)
            if np.asarray(image).min() > 250:  # no glyph in the font
                return None
        else:
            with warnings.catch_warnings():
                # a few Open Clip Art PNGs are ~170 Mpixel: decoded once (Debian's own files, not user
                # input) and thumbnailed; PIL's DecompressionBombError above 2x its limit still skips one
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(item["path"]) as opened:
                    rgba = opened.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        image.thumbnail((SIZE, SIZE), Image.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False)
        return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # a file PIL cannot read, or one too large to decode safely: left out


def _write_folder(root: Path, items: list[dict]) -> None:
    root.mkdir(parents=True)
    with open(root / "captions.jsonl", "w", encoding="utf-8") as fh:
        for item in items:
            target = root / item["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item["png"])
            fh.write(json.dumps({k: item[k] for k in ("file_name", "text", "id", "source", "category")}) + "\n")


def build(out: Path, workers: int) -> dict:
    raw = out / "raw"
    download(out / "debs")
    unpack(out / "debs", raw)
    items = tuxpaint_items(raw) + openclipart_items(raw) + emoji_items(raw)
    font = str(raw / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pngs = list(pool.map(_render, items, [font] * len(items), chunksize=64))
    kept = []
    for item, png in zip(items, pngs):
        if png is not None:
            kept.append({**item, "png": png, "file_name": f"{item['source']}/{item['name']}"})
    for i, item in enumerate(kept):
        item["id"] = i
    target = [i for i, item in enumerate(kept) if (item["source"], item["category"]) == DEMO_TARGET]
    rng = np.random.default_rng(SEED)
    picked = rng.permutation(target)
    adaptation = sorted(picked[:DEMO_ADAPTATION].tolist())
    evaluation = sorted(picked[DEMO_ADAPTATION:DEMO_ADAPTATION + DEMO_EVAL].tolist())
    held = set(adaptation)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    _write_folder(staging / "pool", [item for i, item in enumerate(kept) if i not in held])
    _write_folder(staging / "demo-adaptation", [kept[i] for i in adaptation])
    _write_folder(staging / "demo-eval", [kept[i] for i in evaluation])
    counts: dict[str, int] = {}
    for item in kept:
        counts[item["source"]] = counts.get(item["source"], 0) + 1
    summary = {"images": len(kept), "pool": len(kept) - len(held), "per_source": counts,
               "skipped": len(items) - len(kept), "demo_target": list(DEMO_TARGET)}
    (staging / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name in ("pool", "demo-adaptation", "demo-eval", "summary.json"):
        shutil.rmtree(out / name, ignore_errors=True) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
        os.replace(staging / name, out / name)
    staging.rmdir()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/images"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--force", action="store_true", help="rebuild even when OUT/summary.json exists")
    args = parser.parse_args()
    if (args.out / "summary.json").exists() and not args.force:
        print(f"{args.out}: already built ({(args.out / 'summary.json').read_text().strip()})")
        return 0
    summary = build(args.out, args.workers)
    print(f"{args.out}: {summary['pool']} pool images {summary['per_source']}, "
          f"{DEMO_ADAPTATION} demo adaptation and {DEMO_EVAL} evaluation images ({'/'.join(DEMO_TARGET)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
