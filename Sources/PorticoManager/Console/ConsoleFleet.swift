import Foundation
import NIOCore
import NIOHTTP1
import PorticoGateway
import PorticoServer
import PorticoStore

/// The devices table (sorted, filtered, selected in bulk, exported), a device's page, and
/// groups.
extension ConsoleService {
    /// What the devices table shows: its filters, sort and page, read from a query or from
    /// the hidden fields of a bulk form.
    struct DeviceTable {
        static let pageSize = 100
        /// The most devices one bulk action takes ("all matching" included).
        static let bulkLimit = 10_000

        var text = ""
        var state: DeviceState?
        var group: String?
        var os: String?
        /// `1h`, `24h`, `7d` (seen within), or `stale` (not seen for 7 days, or never).
        var seen: String?
        /// `current` or `behind` the site's policy serial.
        var policy: String?
        var sort = DeviceSort.hostname
        var descending = false
        var page = 1

        init(_ fields: [String: String]) {
            func value(_ name: String) -> String? { fields[name].map { String($0.trimmingCharacters(in: .whitespaces).prefix(128)) }.flatMap { $0.isEmpty ? nil : $0 } }
            text = value("q") ?? ""
            state = value("state").flatMap(DeviceState.init(rawValue:))
            group = value("group")
            os = value("os")
            seen = value("seen").flatMap { ["1h", "24h", "7d", "stale"].contains($0) ? $0 : nil }
            policy = value("policy").flatMap { ["current", "behind"].contains($0) ? $0 : nil }
            sort = value("sort").flatMap(DeviceSort.init(rawValue:)) ?? .hostname
            descending = value("dir") == "desc"
            page = value("page").flatMap { Int($0) }.map { max(1, min($0, 100_000)) } ?? 1
        }

        func filter(now: Int64) -> DeviceFilter {
            var filter = DeviceFilter(state: state, hostname: text.isEmpty ? nil : text, os: os, groupID: group)
            switch seen {
            case "1h": filter.lastCheckInSince = now - 3_600_000
            case "24h": filter.lastCheckInSince = now - 86_400_000
            case "7d": filter.lastCheckInSince = now - 7 * 86_400_000
            case "stale": filter.lastCheckInBefore = now - 7 * 86_400_000
            default: break
            }
            if let policy { filter.policyCurrent = policy == "current" }
            return filter
        }

        /// The filters (and sort) as fields, for links and hidden inputs.
        func fields(sort: DeviceSort? = nil, descending: Bool? = nil, page: Int? = nil) -> [(String, String)] {
            var fields: [(String, String)] = []
            if !text.isEmpty { fields.append(("q", text)) }
            if let state { fields.append(("state", state.rawValue)) }
            if let group { fields.append(("group", group)) }
            if let os { fields.append(("os", os)) }
            if let seen { fields.append(("seen", seen)) }
            if let policy { fields.append(("policy", policy)) }
            fields.append(("sort", (sort ?? self.sort).rawValue))
            if descending ?? self.descending { fields.append(("dir", "desc")) }
            if let page, page > 1 { fields.append(("page", "\(page)")) }
            return fields
        }

        func query(sort: DeviceSort? = nil, descending: Bool? = nil, page: Int? = nil) -> String {
            var components = URLComponents()
            components.queryItems = fields(sort: sort, descending: descending, page: page).map { URLQueryItem(name: $0.0, value: $0.1) }
            return components.percentEncodedQuery ?? ""
        }
    }

    func devicesPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let now = Int64(HybridLogicalClock.wallMilliseconds())
        // A refused bulk form shows the table it came from.
        let table = DeviceTable(call.refusal == nil ? call.query : call.form)
        let filter = table.filter(now: now)
        let total = try await store.deviceCount(filter)
        let devices = try await store.devices(filter, sort: table.sort, descending: table.descending, offset: (table.page - 1) * DeviceTable.pageSize, limit: DeviceTable.pageSize)
        let groups = try await store.groups()
        let names = Dictionary(uniqueKeysWithValues: groups.map { ($0.id, $0.name) })
        let memberships = try await store.groupMemberships(of: devices.map(\.id))
        let systems = try await store.deviceSystems()
        let selected = Set(call.refusal == nil ? [] : call.values("device"))
        let columns: [(DeviceSort, String)] = [(.hostname, "Hostname"), (.os, "OS"), (.state, "State"), (.lastCheckIn, "Last check-in"), (.enrolled, "Enrolled"),
                                               (.policySerial, "Policy serial")]
        let pages = max(1, (total + DeviceTable.pageSize - 1) / DeviceTable.pageSize)
        var context: [String: Any] = [
            "query": table.text, "systems": systems.map { ["value": $0, "selected": $0 == table.os] }, "total": total, "page": table.page, "pages": pages,
            "states": DeviceState.allCases.map { ["value": $0.rawValue, "selected": $0 == table.state] },
            "groups": groups.map { ["id": $0.id, "name": $0.name, "selected": $0.id == table.group] },
            "seen": [("1h", "in the last hour"), ("24h", "in the last day"), ("7d", "in the last 7 days"), ("stale", "not for 7 days")]
                .map { ["value": $0.0, "label": $0.1, "selected": $0.0 == table.seen] },
            "policy": [("current", "up to date"), ("behind", "behind")].map { ["value": $0.0, "label": $0.1, "selected": $0.0 == table.policy] },
            "columns": columns.map { column, label -> [String: Any] in
                let here = column == table.sort
                return ["label": label, "link": "/devices?" + table.query(sort: column, descending: here ? !table.descending : false, page: 1),
                        "mark": here ? (table.descending ? " ▼" : " ▲") : "", "sorted": here ? (table.descending ? "descending" : "ascending") : "none"]
            },
            "devices": devices.map { device -> [String: Any] in
                var row = Self.deviceContext(device, groups: names, memberships: memberships[device.id] ?? [])
                row["checked"] = selected.contains(device.id)
                return row
            },
            "hidden": table.fields().map { ["name": $0.0, "value": $0.1] },
            "csv": "/devices.csv?" + table.query(page: 1),
            "canAct": session.mayAct, "canMove": session.may(.write("groups")), "canRevoke": session.may(.write("devices")),
            "csrf": session.record.csrfToken, "bulkLimit": DeviceTable.bulkLimit,
        ]
        if table.page > 1 { context["previous"] = table.query(page: table.page - 1) }
        if table.page < pages { context["next"] = table.query(page: table.page + 1) }
        if call.refusal != nil, let action = call.form["action"] { context["action"] = [action: true] }
        let notice = call.query["done"].flatMap { done -> String? in
            guard let count = call.query["count"].flatMap({ Int($0) }) else { return nil }
            let what = ["lock": "Lock queued for", "unlock": "Unlock queued for", "move": "Moved", "revoke": "Revoked"][done] ?? "Done for"
            return "\(what) \(count) device\(count == 1 ? "" : "s")."
        }
        return page(call.status, title: "Devices", template: "devices", context, session: session, nav: "devices", notice: notice, error: call.refusal?.message)
    }

    /// The filtered table, every page of it, as CSV.
    func devicesCSV(_ call: ConsoleCall) async throws -> GatewayResponse {
        let table = DeviceTable(call.query)
        let filter = table.filter(now: Int64(HybridLogicalClock.wallMilliseconds()))
        let names = Dictionary(uniqueKeysWithValues: try await store.groups().map { ($0.id, $0.name) })
        var text = ReportingService.csvLine(["id", "hostname", "os", "state", "groups", "enrolled", "last_check_in", "policy_serial", "connection"])
        var offset = 0
        while true {
            let devices = try await store.devices(filter, sort: table.sort, descending: table.descending, offset: offset, limit: 1000)
            let memberships = try await store.groupMemberships(of: devices.map(\.id))
            for device in devices {
                let row = Self.deviceContext(device, groups: names, memberships: memberships[device.id] ?? [])
                text += ReportingService.csvLine([device.id, device.hostname, device.os, device.state.rawValue, row["groups"] as? String ?? "",
                                                  APIJSON.time(device.enrolledMilliseconds), APIJSON.time(device.lastCheckInMilliseconds) ?? "", "\(device.policySerial)",
                                                  row["connection"] as? String ?? ""])
            }
            if devices.count < 1000 { break }
            offset += devices.count
        }
        var headers = ConsolePages.securityHeaders(contentType: "text/csv; charset=utf-8")
        headers.add(name: "content-disposition", value: "attachment; filename=\"devices.csv\"")
        return GatewayResponse(status: .ok, headers: headers, body: ByteBuffer(string: text))
    }

    /// Lock, unlock, move or revoke the devices ticked (or every device matching the filter):
    /// first a page that names the count and asks to confirm, then the change, device by
    /// device through the same operations (and audit entries) as one at a time.
    func bulkAction(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let form = call.form
        let table = DeviceTable(form)
        guard let action = form["action"], ["lock", "unlock", "move", "revoke"].contains(action) else { throw ConsoleRefusal.invalid("Choose what to do with the devices.") }
        switch action {
        case "move": guard session.may(.write("groups")) else { return forbidden(session) }
        case "revoke": guard session.may(.write("devices")) else { return forbidden(session) }
        default: break
        }
        // The group devices move to (nil: out of every group), read once for its name too.
        var target: GroupRecord?
        if action == "move" {
            let chosen = form["to_group"] ?? ""
            if chosen != "none" {
                guard !chosen.isEmpty, let found = try await store.group(id: chosen) else { throw ConsoleRefusal.invalid("Choose the group to move the devices to.") }
                target = found
            }
        }
        let group = target?.id
        var ids: [String]
        if form["all"] == "yes" {
            let filter = table.filter(now: Int64(HybridLogicalClock.wallMilliseconds()))
            let total = try await store.deviceCount(filter)
            guard total <= DeviceTable.bulkLimit else {
                throw ConsoleRefusal.invalid("\(total) devices match; one action takes at most \(DeviceTable.bulkLimit). Narrow the filter.")
            }
            ids = try await store.devices(filter, sort: .hostname, descending: false, offset: 0, limit: DeviceTable.bulkLimit).map(\.id)
        } else {
            ids = Array(Set(call.values("device"))).sorted()
        }
        guard !ids.isEmpty else { throw ConsoleRefusal.invalid("Tick the devices to act on, or \"all matching\".") }
        guard ids.count <= DeviceTable.bulkLimit else { throw ConsoleRefusal.invalid("One action takes at most \(DeviceTable.bulkLimit) devices.") }
        let verb = ["lock": "Lock", "unlock": "Unlock", "move": "Move", "revoke": "Revoke"][action]!
        let groupName = target?.name
        let what = action == "move" ? "\(verb) \(ids.count) device\(ids.count == 1 ? "" : "s") to \(groupName.map { "the group \($0)" } ?? "no group")"
            : "\(verb) \(ids.count) device\(ids.count == 1 ? "" : "s")"
        guard form["confirm"] == "yes" else {
            var fields = table.fields().map { ["name": $0.0, "value": $0.1] }
            fields.append(["name": "action", "value": action])
            if let chosen = form["to_group"] { fields.append(["name": "to_group", "value": chosen]) }
            fields += ids.map { ["name": "device", "value": $0] }
            return page(.ok, title: "Confirm", template: "confirm", [
                "heading": what + "?", "text": action == "revoke" ? "Revoked devices can no longer check in; they must enroll again." : "",
                "action": "/devices/bulk", "fields": fields, "button": what, "csrf": session.record.csrfToken, "back": "/devices?" + table.query(),
                "danger": action == "revoke",
            ], session: session, nav: "devices")
        }
        for id in ids {
            switch action {
            case "lock": _ = try await operations.issueCommand(deviceID: id, kind: .lock, by: session.actor)
            case "unlock": _ = try await operations.issueCommand(deviceID: id, kind: .unlock, by: session.actor)
            case "move": try await operations.moveDevice(id, toGroup: group, by: session.actor)
            default: try await operations.revokeDevice(id: id, by: session.actor)
            }
        }
        return ConsolePages.redirect("/devices?" + table.query() + "&done=\(action)&count=\(ids.count)")
    }

    func devicePage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let id = call.parameter("id")
        guard let device = try await store.device(id: id) else {
            return page(.notFound, title: "Not found", template: "message", ["heading": "No such device", "text": "There is no device \(id).", "back": "/devices"], session: session)
        }
        let commands = try await store.commands(deviceID: id, limit: 20)
        let events = try await store.events(EventFilter(deviceID: id), limit: 20)
        let groups = try await store.groups()
        let names = Dictionary(uniqueKeysWithValues: groups.map { ($0.id, $0.name) })
        let memberships = try await store.groupIDs(ofDevice: id)
        var context: [String: Any] = [
            "device": Self.deviceContext(device, groups: names, memberships: memberships),
            "canAct": session.mayAct && (device.state == .active || device.state == .locked),
            // A locked device is offered unlock, an unlocked one lock.
            "locked": device.state == .locked,
            "canMove": session.may(.write("groups")),
            "groups": groups.map { ["id": $0.id, "name": $0.name, "selected": memberships.first == $0.id] },
            "noGroup": memberships.isEmpty,
            "csrf": session.record.csrfToken,
            "commands": commands.map { ["issued": ConsolePages.time($0.issuedMilliseconds), "kind": $0.kind.rawValue, "state": $0.state.rawValue, "result": $0.result ?? "", "issuedBy": $0.issuedBy] },
            "events": events.map { ["at": ConsolePages.time($0.occurredMilliseconds), "kind": $0.kind, "body": $0.body] },
        ]
        if let remoteHelp = call.remoteHelp { context["remoteHelp"] = remoteHelp }
        if let user = call.remoteHelpUser { context["remoteHelpUser"] = user }
        let notice: String? = switch call.query["done"] {
        case "move": "The device's group is changed."
        case let done?: "The \(done) command is queued; the device gets it at once if it is connected, else at its next check-in."
        case nil: nil
        }
        return page(call.status, title: device.hostname, template: "device", context, session: session, nav: "devices", notice: notice, error: call.refusal?.message)
    }

    func issueCommand(_ call: ConsoleCall) async throws -> GatewayResponse {
        let deviceID = call.parameter("id")
        guard let kind = call.form["kind"].flatMap(CommandKind.init(rawValue:)), [.lock, .unlock, .wipe].contains(kind) else {
            throw ConsoleRefusal.invalid("That is not a command the console sends.")
        }
        if kind == .wipe, call.form["confirm"] != "yes" { throw ConsoleRefusal.invalid("The device was not wiped: tick the box to confirm that it is to be erased.") }
        _ = try await operations.issueCommand(deviceID: deviceID, kind: kind, by: call.session.actor)
        return ConsolePages.redirect("/devices/\(deviceID)?done=\(kind.rawValue)")
    }

    func remoteHelp(_ call: ConsoleCall) async throws -> GatewayResponse {
        let challenge = (call.form["challenge"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !challenge.isEmpty, challenge.utf8.count <= 64 else { throw ConsoleRefusal.invalid("Type the challenge the device shows.") }
        let user = (call.form["user"] ?? "").trimmingCharacters(in: .whitespaces)
        var answered = call
        answered.remoteHelp = try await operations.remoteHelpResponse(deviceID: call.parameter("id"), challenge: challenge, unlockingUser: user.isEmpty ? nil : user,
                                                                      by: call.session.actor)
        answered.remoteHelpUser = user.isEmpty ? nil : user
        return try await devicePage(answered)
    }

    func moveDevice(_ call: ConsoleCall) async throws -> GatewayResponse {
        let id = call.parameter("id")
        let chosen = call.form["to_group"] ?? ""
        guard !chosen.isEmpty else { throw ConsoleRefusal.invalid("Choose a group, or \"No group\".") }
        try await operations.moveDevice(id, toGroup: chosen == "none" ? nil : chosen, by: call.session.actor)
        return ConsolePages.redirect("/devices/\(id)?done=move")
    }

    // MARK: - Groups

    func groupsPage(_ call: ConsoleCall) async throws -> GatewayResponse {
        let session = call.session
        let groups = try await store.groups()
        let sizes = try await store.groupSizes()
        var policiesByGroup: [String: [String]] = [:]
        for policy in try await store.policies() {
            for group in try await store.policyAssignments(policyID: policy.id) { policiesByGroup[group, default: []].append(policy.name) }
        }
        let canWrite = session.may(.write("groups"))
        let draft = call.draft
        // A refused rename is shown on its group's row.
        let editing = call.refusal == nil ? nil : call.request.parameters["id"]
        return page(call.status, title: "Groups", template: "groups", [
            "groups": groups.map { group -> [String: Any] in
                let edited = editing == group.id
                return ["id": group.id, "name": edited ? draft["name"] ?? group.name : group.name, "description": edited ? draft["description"] ?? group.description : group.description,
                        "devices": sizes[group.id] ?? 0, "policies": (policiesByGroup[group.id] ?? []).joined(separator: ", "),
                        "canWrite": canWrite, "csrf": session.record.csrfToken]
            },
            "draft": editing == nil ? draft : [:],
            "canWrite": canWrite, "csrf": session.record.csrfToken,
        ], session: session, nav: "groups", notice: call.query["done"].flatMap { ["created": "The group is created.", "saved": "The group is saved.", "deleted": "The group is deleted; its devices stay."][$0] },
           error: call.refusal?.message)
    }

    func createGroup(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = (call.form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { throw ConsoleRefusal.invalid("A group needs a name.") }
        _ = try await operations.createGroup(name: name, description: call.form["description"] ?? "", by: call.session.actor)
        return ConsolePages.redirect("/groups?done=created")
    }

    func renameGroup(_ call: ConsoleCall) async throws -> GatewayResponse {
        let name = (call.form["name"] ?? "").trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { throw ConsoleRefusal.invalid("A group needs a name.") }
        _ = try await operations.updateGroup(id: call.parameter("id"), name: name, description: call.form["description"], by: call.session.actor)
        return ConsolePages.redirect("/groups?done=saved")
    }

    func deleteGroup(_ call: ConsoleCall) async throws -> GatewayResponse {
        guard call.form["confirm"] == "yes" else { throw ConsoleRefusal.invalid("Tick the box to confirm the group is to be deleted (its devices stay, out of the group).") }
        try await operations.deleteGroup(id: call.parameter("id"), by: call.session.actor)
        return ConsolePages.redirect("/groups?done=deleted")
    }
}
