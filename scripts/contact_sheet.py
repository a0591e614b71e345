"""A contact sheet of an emitted image shard set: the adaptation images, then the selected ones in
selection order, each tile captioned; one PNG.

    python scripts/contact_sheet.py work/demo-image --out work/demo-image/contact_sheet.png
    python scripts/contact_sheet.py work/demo-image --task cats --out cats.png
    python scripts/contact_sheet.py work/demo-image/tasks/default/output --out sheet.png   # an output folder

A work directory is read through its task's recorded output (WORK/tasks/TASK/output by default).
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


def output_folder(path: Path, task: str) -> Path:
    """The emitted set to draw: `path` itself when it holds manifest.json (an output folder), else the
    task's recorded output in the work directory `path`."""
    if (path / "manifest.json").is_file():
        return path
    from albat.stores.workdir import Workdir

    output = Workdir(path, task=task).output
    if not (output / "manifest.json").is_file():
        raise SystemExit(f"contact_sheet: {path}: no manifest.json there nor in task {task!r}'s output ({output}); "
                         "run `albat run` (or `albat emit`) first, or pass the emit stage's output folder")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a work directory, or the emit stage's output folder (manifest.json)")
    parser.add_argument("--task", default="default", help="the task of a work directory (default: default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    output = output_folder(args.path, args.task)
    manifest = json.loads((output / "manifest.json").read_text())
    rows = [r for s in manifest["shards"] for r in pq.read_table(output / s["path"]).to_pylist()]
    caption = manifest["columns"]["text"]
    image_column = next(c for c in ("image", *rows[0].keys()) if isinstance(rows[0].get(c), dict)) if rows else "image"
    adaptation = tiles([r for r in rows if r["albat_is_adaptation"]], image_column, caption)
    selected = tiles([r for r in rows if not r["albat_is_adaptation"]], image_column, caption)
    left_out = manifest["counts"].get("adaptation_left_out")  # captions alone: no adaptation images to show
    picture = sheet([(f"adaptation set: {left_out}, not shown" if left_out else f"adaptation set ({len(adaptation)})",
                      adaptation),
                     (f"selected by {manifest['method']} ({len(selected)}, in selection order)", selected)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"{args.out}: {len(adaptation)} adaptation and {len(selected)} selected images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
