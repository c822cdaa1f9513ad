"""Scores: the unbiased pass@k estimator, exact match and edit similarity."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with ``n`` samples of which ``c`` pass: 1 - C(n-c, k) / C(n, k).

    Computed as a running product (Chen et al. 2021) so that large ``n`` neither overflows floats nor
    loses precision: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n (got n={n}, c={c})")
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, n] (got k={k}, n={n})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_exact(n: int, c: int, k: int) -> float:
    """The same estimator with exact integers (slow for large n; the tests compare the two)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """Benchmark pass@k: the mean over tasks; None when some task has fewer than k samples."""
    counts = list(counts)
    if not counts or any(n < k for n, _ in counts):
        return None
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def normalize_code(s: str) -> str:
    """Trailing whitespace and surrounding blank lines never decide a match."""
    lines = [ln.rstrip() for ln in s.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def exact_match(prediction: str, target: str) -> bool:
    return normalize_code(prediction) == normalize_code(target)


def edit_similarity(prediction: str, target: str) -> float:
    """1 - normalized Levenshtein distance on characters (1.0 = identical), after ``normalize_code``."""
    a, b = normalize_code(prediction), normalize_code(target)
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def levenshtein(a: Sequence, b: Sequence) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def diff_ratio(prediction: str, target: str) -> float:
    """difflib's similarity ratio, reported beside the Levenshtein one."""
    return difflib.SequenceMatcher(None, normalize_code(prediction), normalize_code(target), autojunk=False).ratio()
