import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
import X509

import PorticoGateway
import PorticoServer

/// A one-shot gate: requests wait on it, the test opens it, and the test can wait for a
/// request to have arrived.
public final class Gate: Sendable {
    public init() {}
    private let state = GateState()

    public func arrived() { state.arrive() }
    public func wait() async { await state.waitOpen() }
    public func open() { state.open() }
    public func waitForArrival() async { await state.waitArrival() }
}

import NIOConcurrencyHelpers

public final class GateState: Sendable {
    private struct S {
        public var isOpen = false
        public var arrivals = 0
        public var openWaiters: [CheckedContinuation<Void, Never>] = []
        public var arrivalWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let box = NIOLockedValueBox(S())

    public func arrive() {
        let waiters = box.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.arrivals += 1
            defer { s.arrivalWaiters = [] }
            return s.arrivalWaiters
        }
        waiters.forEach { $0.resume() }
    }

    func open() {
        let waiters = box.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.isOpen = true
            defer { s.openWaiters = [] }
            return s.openWaiters
        }
        waiters.forEach { $0.resume() }
    }

    public func waitOpen() async {
        await withCheckedContinuation { c in
            let now = box.withLockedValue { s -> Bool in
                if s.isOpen { return true }
                s.openWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    public func waitArrival() async {
        await withCheckedContinuation { c in
            let now = box.withLockedValue { s -> Bool in
                if s.arrivals > 0 { return true }
                s.arrivalWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }
}
