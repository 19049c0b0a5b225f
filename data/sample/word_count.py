"""Count words in text files and print the most common ones."""

import argparse
import collections
import pathlib
import re

WORD = re.compile(r"[A-Za-z']+")


def count_words(paths):
    counts = collections.Counter()
    for path in paths:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
        for word in WORD.findall(text):
            counts[word.lower()] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()

    counts = count_words(args.paths)
    for word, n in counts.most_common(args.top):
        print(f"{n:8d}  {word}")


if __name__ == "__main__":
    main()
