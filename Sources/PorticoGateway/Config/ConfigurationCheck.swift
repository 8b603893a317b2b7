import NIOConcurrencyHelpers
import NIOSSL
import PorticoServer

/// A configuration with every file it names read and its TLS material built: what `serve`
/// starts from and what `config check` proves can be started.
public struct PreparedConfiguration: Sendable {
    public let configuration: GatewayConfiguration
    /// The identity each TLS listener serves.
    let identities: [ListenerName: ReloadableIdentity]
    /// The TLS context each TLS listener uses for new connections.
    let tlsContexts: [ListenerName: ListenerTLS]
    /// Things an operator should know that are not errors.
    public let notes: [String]

    /// The identity a TLS listener serves (the shared one unless it names its own).
    public func identity(of listener: ListenerName) -> ReloadableIdentity? { identities[listener] }

    /// Every distinct identity in use.
    var distinctIdentities: [ReloadableIdentity] {
        var seen: Set<ObjectIdentifier> = []
        return configuration.names.compactMap { identities[$0] }.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }
}

/// Identities already loaded, by file pair, so that a reload keeps serving the pairs it has
/// (and their last good version) instead of loading them anew.
public final class IdentityCache: Sendable {
    private let entries = NIOLockedValueBox<[String: ReloadableIdentity]>([:])
    private let tickets = NIOLockedValueBox<[ListenerName: TicketKeys]>([:])

    public init() {}

    func identity(certificate: String, privateKey: String) throws(IdentityError) -> ReloadableIdentity {
        let key = certificate + "\u{0}" + privateKey
        if let existing = entries.withLockedValue({ $0[key] }) { return existing }
        let created = try ReloadableIdentity(certificatePath: certificate, privateKeyPath: privateKey)
        entries.withLockedValue { $0[key] = created }
        return created
    }

    /// Every identity loaded so far.
    var all: [ReloadableIdentity] { entries.withLockedValue { Array($0.values) } }

    /// A listener's session ticket keys, kept like its identity across reloads: a reloaded
    /// configuration does not cost every client a full handshake.
    func ticketKeys(for listener: ListenerName) -> TicketKeys {
        tickets.withLockedValue { keys in
            if let existing = keys[listener] { return existing }
            let created = TicketKeys()
            keys[listener] = created
            return created
        }
    }
}

/// Reads everything a configuration names, as `nginx -t` does.
public enum ConfigurationCheck {
    /// - Parameters:
    ///   - generateMissing: make the shared identity when its files are missing and the config
    ///     allows it (`serve`); when false (`config check`) that is only noted.
    ///   - cache: identities already in service, reused by path.
    public static func prepare(_ config: GatewayConfiguration, generateMissing: Bool, cache: IdentityCache = IdentityCache()) throws(ConfigurationError) -> PreparedConfiguration {
        var diagnostics: [ConfigurationDiagnostic] = []
        var notes: [String] = []
        var identities: [ListenerName: ReloadableIdentity] = [:]
        var contexts: [ListenerName: ListenerTLS] = [:]
        let tlsListeners = config.enabledListeners.filter(\.tls)

        var shared: ReloadableIdentity? = nil
        let needsShared = tlsListeners.contains { $0.certificate == nil }
        if needsShared {
            let identity = config.identity
            let certExists = FileContents.exists(identity.certificate)
            let keyExists = FileContents.exists(identity.privateKey)
            var canLoad = true
            if !certExists && !keyExists, let keyType = identity.generate {
                if generateMissing {
                    do {
                        let generated = try IdentityGenerator.generate(keyType: keyType, commonName: identity.commonName, names: identity.names)
                        try IdentityGenerator.write(generated, certificatePath: identity.certificate, privateKeyPath: identity.privateKey)
                        notes.append("generated a new \(keyType.rawValue) server identity at \(identity.certificate)")
                    } catch {
                        diagnostics.append(ConfigurationDiagnostic("cannot create the server identity: \(error)", at: config.locations["identity.certificate"]))
                        canLoad = false
                    }
                } else {
                    notes.append("\(identity.certificate) does not exist yet; serve will generate a \(keyType.rawValue) identity")
                    canLoad = false
                }
            } else if certExists != keyExists {
                let missing = certExists ? identity.privateKey : identity.certificate
                let key = certExists ? "identity.private_key" : "identity.certificate"
                diagnostics.append(ConfigurationDiagnostic("\(missing) does not exist while its pair does; restore it, or remove both to generate a new identity", at: config.locations[key]))
                canLoad = false
            }
            if canLoad {
                do {
                    shared = try cache.identity(certificate: identity.certificate, privateKey: identity.privateKey)
                } catch {
                    let key = error.isKeyMismatch || error.message.contains(identity.privateKey) ? "identity.private_key" : "identity.certificate"
                    diagnostics.append(ConfigurationDiagnostic(error.message, at: config.locations[key]))
                }
            }
        }

        for listener in tlsListeners {
            let path = "listeners.\(listener.name)"
            var identity = shared
            if let certificate = listener.certificate, let key = listener.privateKey {
                do {
                    identity = try cache.identity(certificate: certificate, privateKey: key)
                } catch {
                    diagnostics.append(ConfigurationDiagnostic(error.message, at: config.locations["\(path).certificate"]))
                    continue
                }
            }
            var trust: [NIOSSLCertificate] = []
            if let trustPath = listener.trust {
                do {
                    trust = try TrustBundle.load(trustPath)
                } catch {
                    diagnostics.append(ConfigurationDiagnostic("\(path).trust: \(error.message)", at: config.locations["\(path).trust"]))
                    continue
                }
            }
            for extra in listener.extraTrust where !(extra.optional && !FileContents.exists(extra.file)) {
                do {
                    trust += try TrustBundle.load(extra.file)
                } catch {
                    diagnostics.append(ConfigurationDiagnostic("\(extra.key): \(error.message)", at: config.locations[extra.key]))
                }
            }
            if listener.clientAuth != .none && trust.isEmpty {
                notes.append("\(listener.name) asks for client certificates but trusts none yet; every client certificate will be refused until \(path).trust names peer certificates or a CA")
            }
            guard let identity else { continue }
            identities[listener.name] = identity
            do {
                contexts[listener.name] = try ListenerTLS(listener: listener, identity: identity, trust: trust, ticketKeys: cache.ticketKeys(for: listener.name))
            } catch {
                diagnostics.append(ConfigurationDiagnostic("\(path): cannot build its TLS context: \(error)", at: config.locations[path]))
            }
        }

        for (name, upstream) in config.upstreams.sorted(by: { $0.key < $1.key }) {
            guard let trustPath = upstream.trust else { continue }
            do {
                _ = try TrustBundle.load(trustPath)
            } catch {
                diagnostics.append(ConfigurationDiagnostic("upstreams.\(name).trust: \(error.message)", at: config.locations["upstreams.\(name).trust"]))
            }
        }
        if !config.accessLog.toStandardOutput {
            // Opened (and created) as `nginx -t` does, so that a path the service cannot write
            // is found before it starts or reloads.
            do {
                _ = try AccessLogWriter(file: config.accessLog.file)
            } catch {
                diagnostics.append(ConfigurationDiagnostic("access_log.file: \(error)", at: config.locations["access_log.file"]))
            }
        }
        diagnostics += routeDiagnostics(config)
        if !diagnostics.isEmpty { throw ConfigurationError(diagnostics) }
        return PreparedConfiguration(configuration: config, identities: identities, tlsContexts: contexts, notes: notes)
    }

    /// Compiles each listener's routes to find two that claim the same host, path and method.
    static func routeDiagnostics(_ config: GatewayConfiguration) -> [ConfigurationDiagnostic] {
        var diagnostics: [ConfigurationDiagnostic] = []
        for name in config.names {
            var definitions: [Router<Int>.Definition] = []
            for (index, route) in config.routes.enumerated() where route.listeners.contains(name) {
                definitions.append(.init(methods: route.methods, host: route.host, path: route.path, target: index, maxBodyBytes: route.maxBodyBytes))
                do {
                    _ = try Router(definitions)
                } catch {
                    diagnostics.append(ConfigurationDiagnostic("on listener \(name), \(error)", at: route.location))
                    definitions.removeLast()
                }
            }
        }
        return diagnostics
    }
}
