"""Benchmark data: 2x2 grids of a labelled picture folder's pictures (several smaller faces in one picture, a stand-in
for group pictures), written as a labels.json folder that ``anibot eval detector --pictures OUT --part all`` reads.

    python scripts/picture_grids.py SRC OUT [--part test] [--cell 512]

Each grid takes four pictures of SRC's ``--part`` (the detector build's hash split, core.evaluation.picture_folders),
in file-name order, each letterboxed into a ``--cell`` px square on white; their boxes follow. Pictures left over
(fewer than four) are dropped. Nothing is copied into the repository: OUT is a folder of yours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from core.evaluation.picture_folders import load_picture_folder, picture_split


def make_grids(source: Path, out: Path, *, part: str = "test", cell: int = 512) -> int:
    folder = load_picture_folder(source)
    chosen = sorted(
        (p for p in folder.pictures if part == "all" or picture_split(p.name) == part), key=lambda p: p.name
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels = []
    for g in range(len(chosen) // 4):
        canvas = Image.new("RGB", (2 * cell, 2 * cell), "white")
        boxes = []
        for k, picture in enumerate(chosen[4 * g : 4 * g + 4]):
            w, h = picture.image.size
            f = cell / max(w, h)
            small = picture.image.resize(
                (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS
            )
            ox = (k % 2) * cell + (cell - small.width) // 2
            oy = (k // 2) * cell + (cell - small.height) // 2
            canvas.paste(small, (ox, oy))
            boxes += [
                [ox + x1 * f, oy + y1 * f, ox + x2 * f, oy + y2 * f] for x1, y1, x2, y2 in picture.boxes
            ]
        name = f"images/grid{g:03d}.jpg"
        canvas.save(out / name, quality=92)
        labels.append({"file": name, "width": 2 * cell, "height": 2 * cell, "boxes": boxes, "kind": "face"})
    (out / "labels.json").write_text(json.dumps(labels, indent=1), encoding="utf-8")
    return len(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--part", default="test", choices=("all", "train", "val", "test"))
    parser.add_argument("--cell", type=int, default=512)
    args = parser.parse_args(argv)
    n = make_grids(args.source, args.out, part=args.part, cell=args.cell)
    print(f"{n} grids of 4 pictures written to {args.out}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
