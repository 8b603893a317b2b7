#!/usr/bin/env python3
"""Microseconds per request by module, user and kernel apart.

    perf record -e cpu-clock -F 999 -g -p <pid> -o p.data -- sleep 8   (under a load)
    perf script -i p.data | python3 bench/perf/per_request.py <requests per second> <seconds>

Each sample is charged as in owner.py (to the module of its nearest frame that is not Swift
runtime work), and counted as kernel time when its innermost frame is in the kernel. Samples
are 1/999 s of CPU; divided by the requests served while recording, they give each module's
share of one request's CPU time, comparable between servers under the same load.
"""
import collections
import sys

from owner import owner_of, samples

FREQUENCY = 999


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: per_request.py REQUESTS_PER_SECOND SECONDS < perf-script-output")
    requests = float(sys.argv[1]) * float(sys.argv[2])
    counts = collections.Counter()
    total = 0
    for stack, kernel in samples(sys.stdin, with_kernel=True):
        total += 1
        counts[(owner_of(stack), 'kernel' if kernel else 'user')] += 1
    us = 1e6 / FREQUENCY / max(requests, 1)
    print(f"total {total * us:.2f} us per request")
    for (name, side), count in counts.most_common():
        if count * us >= 0.05:
            print(f"{name:16s} {side:6s} {count * us:6.2f}")


if __name__ == '__main__':
    main()
