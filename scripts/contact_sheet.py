"""A contact sheet of an emitted image shard set: the adaptation images, then the selected ones in
selection order, each tile captioned; one PNG.

    python scripts/contact_sheet.py work/demo-image/output --out work/demo-image/contact_sheet.png
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

TILE, LABEL, PER_ROW = 96, 24, 12


def tiles(rows: list[dict], image_column: str, caption_column: str) -> list[tuple["Image", str]]:  # noqa: F821
    from PIL import Image

    out = []
    for row in rows:
        cell = row.get(image_column) or {}
        if not cell.get("bytes"):
            continue
        with Image.open(io.BytesIO(cell["bytes"])) as opened:
            image = opened.convert("RGB")
        image.thumbnail((TILE, TILE))
        out.append((image, str(row.get(caption_column) or "")))
    return out


def sheet(sections: list[tuple[str, list]]) -> "Image":  # noqa: F821
    from PIL import Image, ImageDraw

    heights = [LABEL + ((len(items) + PER_ROW - 1) // PER_ROW) * (TILE + LABEL) for _, items in sections]
    canvas = Image.new("RGB", (PER_ROW * TILE, sum(heights) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (title, items), height in zip(sections, heights):
        draw.rectangle([0, y, canvas.width, y + LABEL - 4], fill=(40, 40, 90))
        draw.text((4, y + 4), title, fill="white")
        for i, (image, caption) in enumerate(items):
            x0, y0 = (i % PER_ROW) * TILE, y + LABEL + (i // PER_ROW) * (TILE + LABEL)
            canvas.paste(image, (x0 + (TILE - image.width) // 2, y0 + (TILE - image.height) // 2))
            draw.text((x0 + 2, y0 + TILE + 2), caption[:15], fill=(0, 0, 0))
        y += height
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the emit stage's output folder (manifest.json)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    manifest = json.loads((args.output / "manifest.json").read_text())
    rows = [r for s in manifest["shards"] for r in pq.read_table(args.output / s["path"]).to_pylist()]
    caption = manifest["columns"]["text"]
    image_column = next(c for c in ("image", *rows[0].keys()) if isinstance(rows[0].get(c), dict)) if rows else "image"
    adaptation = tiles([r for r in rows if r["albat_is_adaptation"]], image_column, caption)
    selected = tiles([r for r in rows if not r["albat_is_adaptation"]], image_column, caption)
    picture = sheet([(f"adaptation set ({len(adaptation)})", adaptation),
                     (f"selected by {manifest['method']} ({len(selected)}, in selection order)", selected)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"{args.out}: {len(adaptation)} adaptation and {len(selected)} selected images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
