"""Instance masks from per-word probability maps (a text-prompted segmenter's output).

Each pixel belongs to the word with the highest probability there, if that probability reaches
the threshold: instances never overlap (the router learns one owner per latent position). An
instance is then either all pixels of one word (`mode="words"`) or one 8-connected component of
them (`mode="components"`: two dogs are two instances). Instances smaller than `min_area` (a
fraction of the picture) are left out; the largest `max_instances` are kept.

No scipy here: components are labelled from runs of pixels row by row with a union-find, which
is exact and fast enough at the working resolution (a few hundred pixels a side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("components", "words")


@dataclass
class FoundInstance:
    word: int  # index into the prompted words
    mask: np.ndarray  # bool [H, W]
    area: float  # fraction of the picture
    score: float  # mean probability of the word inside the mask


@dataclass
class Instances:
    kept: list[FoundInstance]
    candidates: int  # instances before the area filter (0: nothing reached the threshold)
    too_small: int  # left out for min_area
    cut: int  # left out for max_instances (the smallest)
    largest: float  # area of the largest candidate (0.0 when there is none)


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D bool array."""
    padded = np.concatenate(([False], row, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool [H, W] mask: labels int32 (0 outside, 1..n) and n."""
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs_by_row = []
    previous: list[tuple[int, int, int]] = []
    for y in range(mask.shape[0]):
        current = []
        for start, stop in _runs(mask[y]):
            run = len(parent)
            parent.append(run)
            for p_start, p_stop, p_run in previous:  # 8-connected: touching diagonally counts
                if p_start <= stop and start <= p_stop:
                    a, b = find(run), find(p_run)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            current.append((start, stop, run))
        runs_by_row.append(current)
        previous = current
    roots: dict[int, int] = {}
    labels = np.zeros(mask.shape, np.int32)
    for y, runs in enumerate(runs_by_row):
        for start, stop, run in runs:
            label = roots.setdefault(find(run), len(roots) + 1)
            labels[y, start:stop] = label
    return labels, len(roots)


def find_instances(
    probabilities: np.ndarray, threshold: float, min_area: float, max_instances: int, mode: str = "components"
) -> Instances:
    """Instances from probabilities [K, H, W] (one map per word, values in [0, 1])."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities must be [words, height, width], got shape {probabilities.shape}")
    owner = probabilities.argmax(0)
    inside = probabilities.max(0) >= threshold
    total = float(owner.size)
    candidates, big = 0, []
    largest = 0.0
    for word in range(probabilities.shape[0]):
        pixels = inside & (owner == word)
        if not pixels.any():
            continue
        if mode == "words":
            labels, count = pixels.astype(np.int32), 1
        else:
            labels, count = label_components(pixels)
        # areas and mean probabilities of every part at once; masks only for the parts kept
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:] / total
        sums = np.bincount(labels.ravel(), weights=probabilities[word].ravel(), minlength=count + 1)[1:]
        candidates += count
        largest = max(largest, float(areas.max()))
        for label in np.flatnonzero(areas >= min_area) + 1:
            area = float(areas[label - 1])
            score = float(sums[label - 1] / (area * total))
            big.append(FoundInstance(word, labels == label, area, score))
    big.sort(key=lambda c: -c.area)
    return Instances(big[:max_instances], candidates, candidates - len(big), max(0, len(big) - max_instances), largest)
