import Foundation
import NIOCore
import PorticoServer
import Yams

/// Walks Yams nodes, collecting diagnostics with their marks.
package struct NodeReader {
    package let file: String
    package var diagnostics: [ConfigurationDiagnostic] = []

    package init(file: String) { self.file = file }

    package func location(_ node: Node) -> SourceLocation? {
        node.mark.map { SourceLocation(file: file, line: $0.line, column: $0.column) }
    }

    package mutating func error(_ message: String, at node: Node) {
        diagnostics.append(ConfigurationDiagnostic(message, at: location(node)))
    }

    package func diagnostic(for error: YamlError) -> ConfigurationDiagnostic {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _), .composer(let context, let problem, let mark, _):
            let where_ = context.map { " \($0.text)" } ?? ""
            return ConfigurationDiagnostic("the file is not valid YAML: \(problem)\(where_)", at: SourceLocation(file: file, line: mark.line, column: mark.column))
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigurationDiagnostic("key \(duplicates.map { "'\($0)'" }.joined(separator: ", ")) appears twice in one mapping",
                                           at: SourceLocation(file: file, line: context.mark.line, column: context.mark.column))
        default:
            return ConfigurationDiagnostic("\(file): the file is not valid YAML: \(error)", at: nil)
        }
    }

    /// A mapping's entries by key; unknown keys are reported (with a suggestion) and left out.
    package mutating func mapping(_ node: Node, at path: String, keys allowed: [String], what: String = "key") -> [String: (key: Node, value: Node)]? {
        guard case .mapping(let mapping) = node else {
            if case .scalar(let s) = node, s.string.isEmpty || s.string == "~" || s.string == "null" { return [:] }
            error("\(path) must be a mapping of keys to values", at: node)
            return nil
        }
        var result: [String: (key: Node, value: Node)] = [:]
        for (key, value) in mapping {
            guard case .scalar(let scalar) = key else {
                error("keys in \(path) must be plain words", at: key)
                continue
            }
            let name = scalar.string
            if allowed.contains(name) {
                result[name] = (key, value)
            } else {
                var message = "unknown \(what) '\(name)' in \(path)"
                if let suggestion = Suggestion.closest(to: name, in: allowed) { message += "; did you mean '\(suggestion)'?" } else {
                    message += "; expected one of \(allowed.joined(separator: ", "))"
                }
                error(message, at: key)
            }
        }
        return result
    }

    package mutating func sequence(_ node: Node, at path: String) -> [Node]? {
        guard case .sequence(let sequence) = node else {
            error("\(path) must be a list", at: node)
            return nil
        }
        return Array(sequence)
    }

    package mutating func string(_ node: Node, at path: String) -> String? {
        guard case .scalar(let scalar) = node else {
            error("\(path) must be a single value, not a list or mapping", at: node)
            return nil
        }
        return scalar.string
    }

    /// A secret kept in a file the config names (a password, a token): its contents,
    /// trimmed. The file must be readable by its owner only (0600), and not empty.
    package mutating func secretFile(_ node: Node, at path: String, base: String) -> String? {
        guard let value = string(node, at: path) else { return nil }
        let file = Paths.resolve(value, against: base)
        guard let bytes = FileManager.default.contents(atPath: file) else {
            error("\(path) \(file) cannot be read", at: node)
            return nil
        }
        let mode = ((try? FileManager.default.attributesOfItem(atPath: file))?[.posixPermissions] as? Int) ?? 0
        guard mode & 0o077 == 0 else {
            error("\(path) \(file) may be read by others (mode \(String(mode, radix: 8))); chmod 600 it", at: node)
            return nil
        }
        let secret = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else {
            error("\(path) \(file) is empty", at: node)
            return nil
        }
        return secret
    }

    package mutating func stringList(_ node: Node, at path: String) -> [String]? {
        guard let list = sequence(node, at: path) else { return nil }
        return list.compactMap { string($0, at: path) }
    }

    package mutating func int(_ node: Node, at path: String) -> Int? {
        guard let text = string(node, at: path) else { return nil }
        if let value = Int(text.replacingUnderscores()) { return value }
        if let value = ByteSize.parse(text) { return value }
        error("\(path) must be a whole number, not '\(text)'", at: node)
        return nil
    }

    package mutating func bool(_ node: Node, at path: String) -> Bool? {
        guard let text = string(node, at: path) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            error("\(path) must be true or false, not '\(text)'", at: node)
            return nil
        }
    }

    package mutating func duration(_ node: Node, at path: String) -> TimeAmount? {
        guard let text = string(node, at: path) else { return nil }
        if let value = DurationText.parse(text) { return value }
        error("\(path) must be a duration such as 500ms, 10s, 5m, 1h or 7d, not '\(text)'", at: node)
        return nil
    }
}

extension String {
    package func replacingUnderscores() -> String { self.filter { $0 != "_" } }
}
