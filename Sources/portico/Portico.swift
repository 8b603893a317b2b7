import ArgumentParser
import Logging
import PorticoGateway
import PorticoManager
import PorticoServer
import PorticoStore
import ServiceLifecycle

@main
struct Portico: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portico",
        abstract: "Central manager for endpoint security agents.",
        subcommands: [Serve.self, Config.self, Database.self, Token.self, AgentConfig.self, Admin.self, Cert.self, Peer.self],
        defaultSubcommand: Serve.self
    )
}

/// Options every command that reads the config shares.
struct ConfigOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The config file. Without one, conf/portico.yaml if it exists, else the embedded defaults.")
    var config: String?

    /// Loads the configuration or returns the problems.
    func load() throws(ConfigurationError) -> ManagerConfiguration {
        if let config { return try ManagerConfiguration.load(file: config) }
        if FileExists.at("conf/portico.yaml") { return try ManagerConfiguration.load(file: "conf/portico.yaml") }
        return ManagerConfiguration.embeddedDefaults(in: Paths.currentDirectory)
    }

    var sourceDescription: String { config ?? (FileExists.at("conf/portico.yaml") ? "conf/portico.yaml" : "the embedded defaults") }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the manager: every listener in the config, until SIGTERM or SIGINT. SIGHUP reloads.")

    @OptionGroup var options: ConfigOptions

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "portico")
        let cache = IdentityCache()
        let configuration: ManagerConfiguration
        do {
            configuration = try options.load()
        } catch {
            printError("portico: the configuration from \(options.sourceDescription) cannot be used:\n\(error)")
            throw ExitCode(1)
        }
        let store: Store
        do {
            store = try await Store.open(configuration.storeConfiguration, siteID: configuration.siteName, logger: Logger(label: "portico.store"))
            let schema = try await store.schemaVersion()
            logger.info("database ready", metadata: ["database": "\(configuration.storeConfiguration.redacted)", "schema": "\(schema)"])
        } catch {
            printError("portico: cannot open the database \(configuration.storeConfiguration.redacted): \(error)")
            throw ExitCode(1)
        }
        // The site's identity comes from the database when the site has one; the files are
        // this manager's copy. A first manager's generated identity becomes the site's.
        let vault: SiteVault
        let sync: IdentitySync
        let prepared: PreparedConfiguration
        do {
            vault = try ManagerServices.vault(configuration, store: store)
            sync = IdentitySync(vault: vault, configuration: configuration.gateway, dataDirectory: configuration.dataDirectory)
            if try await sync.exchange() == .adopted { logger.notice("took the site's identity from the database") }
        } catch {
            await store.close()
            printError("portico: the site's secrets cannot be read: \(error)")
            throw ExitCode(1)
        }
        do {
            prepared = try ConfigurationCheck.prepare(configuration.gateway, generateMissing: true, cache: cache)
        } catch {
            await store.close()
            printError("portico: the configuration from \(options.sourceDescription) cannot be used:\n\(error)")
            throw ExitCode(1)
        }
        let metrics = GatewayMetrics(listeners: ManagerConfiguration.roles.map(\.name))
        let runtime: ManagerServices.Runtime
        do {
            if try await sync.exchange() == .adopted {
                // Another manager of the site stored its identity first.
                for identity in ManagerServices.liveIdentities(prepared) { identity.reload(force: true) }
            }
            runtime = try await ManagerServices.registry(configuration, prepared: prepared, store: store, vault: vault, sync: sync, metrics: metrics, logger: Logger(label: "portico.agent"))
        } catch {
            await store.close()
            printError("portico: \(error)")
            throw ExitCode(1)
        }
        do {
            try await ManagerServices.syncConfiguredPeers(configuration, store: store)
        } catch {
            await store.close()
            printError("portico: the peers in the config cannot be recorded: \(error)")
            throw ExitCode(1)
        }
        let options = self.options
        // The server engine's loops, one per core: the gateway's listeners run on them, and
        // they are shut down once it has stopped.
        let serverLoops: CoreEventLoopGroup
        do {
            serverLoops = try CoreEventLoopGroup.perCore()
        } catch {
            await store.close()
            printError("portico: cannot start the server's event loops: \(error)")
            throw ExitCode(1)
        }
        let gateway = Gateway(
            configuration: prepared,
            identityCache: cache,
            serverLoops: serverLoops,
            services: runtime.registry,
            logger: logger,
            metrics: metrics,
            source: { () throws(ConfigurationError) -> GatewayConfiguration in try options.load().gateway },
            handleSIGHUP: true
        )
        // A peer added or removed on any manager of the site: the replication listener trusts the new set.
        runtime.links.onTrustChange { await gateway.reload() }
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: gateway), .init(service: runtime.agent.push), .init(service: runtime.rotation), .init(service: runtime.history), .init(service: runtime.links), .init(service: runtime.notifier)] + (runtime.fleetMetrics.map { [.init(service: $0)] } ?? []) + (runtime.directorySync.map { [.init(service: $0)] } ?? []), gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        do {
            try await group.run()
            await store.close()
            try? await serverLoops.shutdownGracefully()
        } catch let error as ListenerError {
            await store.close()
            try? await serverLoops.shutdownGracefully()
            printError("portico: \(error)")
            throw ExitCode(1)
        }
    }
}

struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Work with the config file.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load and validate the config and every file it names, as serve would; print OK or every problem found.")

        @OptionGroup var options: ConfigOptions

        func run() async throws {
            do {
                let prepared = try ConfigurationCheck.prepare(try options.load().gateway, generateMissing: false)
                for note in prepared.notes { print("note: \(note)") }
                print("OK")
            } catch {
                printError(error.description)
                printError("\(error.diagnostics.count) problem\(error.diagnostics.count == 1 ? "" : "s") in \(options.sourceDescription)")
                throw ExitCode(1)
            }
        }
    }
}
