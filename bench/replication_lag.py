#!/usr/bin/env python3
"""Replication lag between two running managers: edits a policy through A's API and times
how long each new version takes to be visible through B's API.

    replication_lag.py A_API_PORT B_API_PORT USER PASSWORD [EDITS] [INTERVAL_S]
    replication_lag.py catchup B_API_PORT USER PASSWORD A_HEAD B_STARTED_EPOCH_S

The second form times a restarted B until it has applied A's change log up to A_HEAD.
"""
import http.client
import json
import ssl
import sys
import time


def connect(port):
    return http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context(), timeout=30)


def call(conn, method, path, token=None, body=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    conn.request(method, "/api/v1" + path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else {})


def login(conn, user, password):
    status, answer = call(conn, "POST", "/auth/login", body={"name": user, "password": password})
    if status != 200:
        sys.exit(f"login failed: {status} {answer}")
    return answer["access_token"]


def wait_for(predicate, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
    sys.exit("timed out waiting for replication")


def catchup():
    b_port, user, password, head, started = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
    b = connect(b_port)
    token = login(b, user, password)
    first = None
    while True:
        status, peers = call(b, "GET", "/peers", token)
        peer = (peers.get("items") or [{}])[0]
        cursor = peer.get("cursor") or 0
        if first is None and cursor:
            first = cursor
        if cursor >= head:
            break
        time.sleep(0.05)
    elapsed = time.time() - started
    print(f"caught_up_to\t{cursor}\tfrom\t{first}\tseconds_since_start\t{elapsed:.2f}\tapplied\t{peer.get('applied')}\tchanges_per_s\t{peer.get('applied', 0) / elapsed:.0f}")


def main():
    if sys.argv[1] == "catchup":
        return catchup()
    a_port, b_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    edits = int(sys.argv[5]) if len(sys.argv) > 5 else 300
    interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0.02
    a, b = connect(a_port), connect(b_port)
    token_a = login(a, user, password)
    wait_for(lambda: call(b, "POST", "/auth/login", body={"name": user, "password": password})[0] == 200)
    token_b = login(b, user, password)
    status, policy = call(a, "POST", "/policies", token_a, {"name": f"lag-{time.time_ns()}", "document": {"n": 0}})
    if status != 201:
        sys.exit(f"creating the policy failed: {status} {policy}")
    path = "/policies/" + policy["id"]
    wait_for(lambda: call(b, "GET", path, token_b)[0] == 200)
    lags = []
    for n in range(1, edits + 1):
        status, version = call(a, "POST", path + "/versions", token_a, {"document": {"n": n}})
        if status != 201:
            sys.exit(f"editing failed: {status} {version}")
        committed = time.monotonic()  # A answered: the edit is durable there
        target = version["version"]
        wait_for(lambda: call(b, "GET", path, token_b)[1].get("current_version", 0) >= target)
        lags.append((time.monotonic() - committed) * 1000)
        time.sleep(interval)
    lags.sort()

    def pct(p):
        return lags[min(len(lags) - 1, int(len(lags) * p))]

    print(f"edits\t{len(lags)}\tlag_p50_ms\t{pct(0.50):.1f}\tlag_p99_ms\t{pct(0.99):.1f}\tlag_max_ms\t{lags[-1]:.1f}")


if __name__ == "__main__":
    main()
