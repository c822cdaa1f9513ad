"""Count words in a text file. Line 11 has a bug: select lines 10-12 and press "repair"."""

import sys
from collections import Counter


def word_counts(path: str) -> Counter:
    counts: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            for word in line.split(" ", "\t"):
                counts[word.lower()] += 1
    return counts


if __name__ == "__main__":
    for word, n in word_counts(sys.argv[1]).most_common(10):
        print(f"{n:6d}  {word}")
