#!/usr/bin/env python3
"""Inclusive share of what a function calls directly, from `perf script` output.

    perf script | python3 bench/perf/under.py 'HTTP1ConnectionC5parse' | swift demangle --simplified

PATTERN is a regular expression matched against (mangled) frame names; the first line is the
share of all samples with the function on the stack, then its direct callees by share.
"""
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from owner import samples  # noqa: E402


def main():
    pattern = re.compile(sys.argv[1])
    callees = collections.Counter()
    total = hit = 0
    for stack in samples(sys.stdin):
        total += 1
        frames = [re.sub(r'\+0x[0-9a-f]+$', '', frame) for frame in stack]
        for index in range(len(frames) - 1, -1, -1):  # outermost match first
            if pattern.search(frames[index]):
                hit += 1
                callees[frames[index - 1] if index > 0 else '<self>'] += 1
                break
    print(f"under pattern: {100 * hit / max(total, 1):.1f}% of {total} samples")
    for name, count in callees.most_common(25):
        print(f"{100 * count / max(total, 1):6.2f}%  {name[:160]}")


if __name__ == '__main__':
    main()
