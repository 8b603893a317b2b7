#!/usr/bin/env python3
"""Reads against a manager holding a large fleet: device pages, searches and reports.

    bench/million.py API_URL REPORTING_URL TOKEN

Prints one line per kind of request: how many, p50, p99 and max in milliseconds."""
import base64, json, ssl, statistics, sys, time, urllib.parse, urllib.request

api, reporting, token = sys.argv[1], sys.argv[2], sys.argv[3]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE


def get(url):
    request = urllib.request.Request(url, headers={"authorization": "Bearer " + token})
    start = time.perf_counter()
    with urllib.request.urlopen(request, context=context) as response:
        body = response.read()
    return (time.perf_counter() - start) * 1000, body


def line(name, times, note=""):
    times = sorted(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"{name}\t{len(times)}\t{statistics.median(times):.1f}\t{p99:.1f}\t{times[-1]:.1f}\t{note}", flush=True)


print("request\tcount\tp50 ms\tp99 ms\tmax ms\tnote")
# 300 pages of 100 devices, each from the cursor of the one before (keyset paging).
times, cursor, seen = [], None, 0
for _ in range(300):
    url = api + "/devices?limit=100" + ("&cursor=" + urllib.parse.quote(cursor) if cursor else "")
    elapsed, body = get(url)
    page = json.loads(body)
    times.append(elapsed)
    seen += len(page["items"])
    cursor = page.get("next_cursor")
    if not cursor:
        break
line("devices, 100 a page, following the cursor", times, f"{seen} devices")
# Pages that start anywhere in the list (a cursor is the last id seen, base64url).
times = []
for prefix in "0123456789abcdef" * 4:
    cursor = base64.urlsafe_b64encode(("d-" + prefix * 3).encode()).decode().rstrip("=")
    elapsed, _ = get(api + "/devices?limit=100&cursor=" + cursor)
    times.append(elapsed)
line("devices, 100 a page, starting anywhere", times)
# Searches: a host name matching one device, one matching many, a state no device has.
for name, query, count in [("search: host name of one device", "hostname=fleet-765432", 20),
                           ("search: host name part of many", "hostname=fleet-99", 20),
                           ("filter: state locked (few or none)", "state=locked", 20),
                           ("filter: not checked in for a day", "checked_in_before=" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86_400)), 20)]:
    times = []
    for _ in range(count):
        elapsed, body = get(api + "/devices?limit=100&" + query)
        times.append(elapsed)
    line(name, times, f"{len(json.loads(body)['items'])} on the first page")
for report in ["compliance", "freshness", "rollout"]:
    times = []
    for _ in range(5):
        elapsed, _ = get(reporting + "/reports/" + report + ".json")
        times.append(elapsed)
    line("report: " + report, times)
