"""Derive the implication list kept in core/tagging/data/implications.csv from a WD14 ``selected_tags.csv``.

python -m scripts.derive_implications --vocabulary /path/to/selected_tags.csv [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.tagging.implications import SHIPPED, derive_implications, write_implications
from core.vision.slots.tagger import CATEGORY_GENERAL, read_selected_tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabulary", type=Path, required=True, help="a WD14 selected_tags.csv")
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args()
    names = [t.name for t in read_selected_tags(args.vocabulary) if t.category == CATEGORY_GENERAL]
    pairs = derive_implications(names)
    write_implications(args.out, pairs, f"the general tags of {args.vocabulary.name} ({len(names)} names)")
    print(f"{len(pairs)} pairs written to {args.out}")


if __name__ == "__main__":
    main()
