"""What a written figure is checked with: its pixels, decoded with PIL (not matplotlib, not the
service's viz helpers), rather than its first bytes.

`picture` decodes a PNG and checks it holds a drawing (not blank, not one colour); `strip_tiles`
finds the row of image tiles of a strip figure (`vae interpolate`) and reads each tile's cells
back as grey levels, to be compared with values the test computed itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def picture(path: Path, min_size: tuple[int, int] = (100, 100)) -> np.ndarray:
    """The PNG at `path` as RGB floats in [0, 1], (H, W, 3); fails unless it is a PNG that
    decodes whole, at least `min_size` (width, height) pixels, and not blank: some of it is
    drawn (not white) and it has more than a couple of colours."""
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()  # every chunk decoded: a cut-off or damaged file fails here
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    height, width = rgb.shape[:2]
    assert width >= min_size[0] and height >= min_size[1], f"{path}: {width}×{height} px"
    drawn = (rgb.min(axis=2) < 0.9).mean()
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert drawn > 0.01 and colours > 8 and rgb.std() > 0.02, f"{path} is blank ({drawn:.1%} drawn, {colours} colours)"
    return rgb


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def strip_tiles(rgb: np.ndarray, cells: int = 28) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """The tiles of a one-row strip of square images of `cells`×`cells` pixels, left to right:
    each as (cells, cells) grey levels read at the middle of each of its cells, and its box
    (x0, y0, x1, y1) in the PNG. A tile is a block of drawn (non-white) pixels in the band of
    rows where most of the width is drawn (the tallest such band: titles and the heading are thin)."""
    grey = rgb.mean(axis=2)
    drawn = grey < 0.9
    rows = drawn.sum(axis=1)
    bands = _runs(rows > 0.5 * rows.max())  # the tiles, and maybe a long heading's few rows
    y0, y1 = max(bands, key=lambda run: run[1] - run[0])
    assert y1 - y0 >= cells, f"no row of tiles: drawn rows {bands}"
    columns = drawn[y0 : y1 + 1].mean(axis=0) > 0.5
    boxes, tiles = [], []
    for x0, x1 in _runs(columns):
        if x1 - x0 < 0.5 * (y1 - y0):  # a stray line, not a tile
            continue
        boxes.append((int(x0), int(y0), int(x1), int(y1)))
        # The middle of each cell: a frame of a pixel or two at the edges moves it by a fraction of a cell.
        ys = np.round(y0 + (np.arange(cells) + 0.5) * (y1 - y0 + 1) / cells - 0.5).astype(int)
        xs = np.round(x0 + (np.arange(cells) + 0.5) * (x1 - x0 + 1) / cells - 0.5).astype(int)
        tiles.append(grey[np.ix_(ys, xs)])
    return tiles, boxes
