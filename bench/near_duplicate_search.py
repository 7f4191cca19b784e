"""Near-duplicate search time versus the number of 64-bit hashes (shows the scaling).

Usage: python bench/near_duplicate_search.py [--max-distance 4] [--sizes 10000 100000 1000000]
Random hashes plus 1% planted near copies (1..max-distance bits flipped); prints seconds, pairs
found, and the planted copies recovered (every one must be: the search is exact).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.dedup import near_duplicate_pairs


def planted(n: int, max_distance: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    base = rng.integers(0, np.iinfo(np.int64).max, n, dtype=np.int64).astype(np.uint64) * 2
    copies = max(1, n // 100)
    hashes = base.copy()
    for index in range(copies):
        flipped = rng.choice(64, size=int(rng.integers(1, max_distance + 1)), replace=False)
        hashes[n - copies + index] = base[index] ^ np.bitwise_or.reduce(
            np.left_shift(np.uint64(1), flipped.astype(np.uint64))
        )
    return hashes, copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-distance", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in args.sizes:
        hashes, copies = planted(n, args.max_distance, rng)
        started = time.perf_counter()
        pairs = near_duplicate_pairs(hashes, args.max_distance)
        seconds = time.perf_counter() - started
        found = {(int(a), int(b)) for a, b in pairs}
        recovered = sum((i, n - copies + i) in found for i in range(copies))
        print(
            f"n={n:>9,} d={args.max_distance}  {seconds:7.2f} s  pairs {len(pairs):>7,}  "
            f"planted {recovered}/{copies}"
        )


if __name__ == "__main__":
    main()
