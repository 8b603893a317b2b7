import Crypto
import Foundation
import NIOCore
import NIOHTTP1
@testable import PorticoGateway
@testable import PorticoManager
@testable import PorticoProtocol
@testable import PorticoServer
import PorticoStore

enum ProxyFuzz {
    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        let bytes = Array(input.dropFirst())
        _ = ProxyProtocol.parse(ByteBuffer(bytes: bytes))
        // The reader, fed in the pieces the first byte chooses, from a trusted peer.
        var reader = ProxyHeaderReader(trusted: true, peer: "192.0.2.1")
        let step = Int(input.first ?? 0) % 32 + 1
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + step, bytes.count)
            switch reader.read(ByteBuffer(bytes: bytes[offset..<end])) {
            case .needMore: offset = end
            case .pass(_, let rest):
                // What follows the header is every byte after it, no more.
                precondition((rest?.readableBytes ?? 0) <= bytes.count - offset)
                return
            case .refuse: return
            }
        }
    }
}

enum ConfigFuzz {
    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        let text = String(decoding: input, as: UTF8.self)
        do {
            // The whole file as `portico` reads it: the gateway's keys and the manager's.
            _ = try ManagerConfiguration.load(yaml: text, file: "/fuzz/portico.yaml")
        } catch {
            // Every refusal names the file and a place in it.
            precondition(error.description.hasPrefix("/fuzz/portico.yaml"), "a configuration error without its file: \(error.description)")
        }
    }
}

enum AgentFuzz {
    /// Session keys both sides would hold, from fixed inputs.
    static let keys: SessionKeys = {
        let agent = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 1, count: 32))
        let manager = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 2, count: 32))
        return SessionKeys.derive(sharedSecret: try! agent.sharedSecretFromKeyAgreement(with: manager.publicKey), sessionID: [UInt8](repeating: 3, count: 16), transcript: [])
    }()

    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        let bytes = Array(input)
        let data = Data(bytes)
        // The envelope: its header, and opening (which must refuse whatever it did not seal).
        if let (sessionID, _) = try? Envelope.header(of: bytes) {
            precondition(sessionID.count == 16)
            _ = try? Envelope.open(bytes, keys: keys, direction: .agentToManager)
        }
        // A message sealed from the input opens to the same bytes.
        if bytes.count <= 4096, let sealed = try? Envelope.seal(bytes, keys: keys, counter: 7, direction: .managerToAgent) {
            let opened = try? Envelope.open(sealed, keys: keys, direction: .managerToAgent)
            precondition(opened?.counter == 7 && opened?.plaintext == bytes, "an envelope did not open to what was sealed")
        }
        // Every message an agent or a manager may receive.
        let decoder = JSONDecoder()
        _ = try? decoder.decode(AgentMessage.self, from: data)
        _ = try? decoder.decode(ManagerMessage.self, from: data)
        _ = try? decoder.decode(EnrollRequest.self, from: data)
        _ = try? decoder.decode(EnrollResponse.self, from: data)
        _ = try? decoder.decode(SessionRequest.self, from: data)
        _ = try? decoder.decode(SessionResponse.self, from: data)
        _ = try? decoder.decode(Hello.self, from: data)
        _ = try? decoder.decode(BootstrapFile.self, from: data)
        _ = try? decoder.decode(PolicyBundle.Contents.self, from: data)
        if let box = try? decoder.decode(SealedBox.self, from: data) {
            _ = try? box.open(with: Curve25519.KeyAgreement.PrivateKey(), context: "portico-enroll-v1")
        }
        if let bundle = try? decoder.decode(PolicyBundle.self, from: data) {
            _ = try? PolicyBundle.decrypt(bundle.sealed, siteKey: SymmetricKey(data: [UInt8](repeating: 4, count: 32)))
        }
        let text = String(decoding: input, as: UTF8.self)
        if let decoded = Base64URL.decode(text) {
            precondition(Base64URL.encode(decoded) == text, "base64url with two spellings: \(text)")
        }
        _ = RemoteHelp.verify(response: text, challenge: text, secret: SymmetricKey(data: [UInt8](repeating: 5, count: 32)), now: 1_795_305_600_000)
    }
}

enum ReplicationFuzz {
    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        guard let batch = try? ChangeBatch(json: Array(input)) else { return }
        // What parses is written back the same way and parses to the same batch.
        let again = try? ChangeBatch(json: batch.json())
        precondition(again == batch, "a change batch did not survive being written and read again")
    }
}

enum APIFuzz {
    static func request(_ input: UnsafeBufferPointer<UInt8>) -> GatewayRequest {
        GatewayRequest(
            method: .POST, uri: "/api/v1/x", headers: ["content-type": "application/json"], body: ByteBuffer(bytes: input), host: nil, parameters: [:],
            listener: .webservices, httpMajorVersion: 1, isTLS: true, peerAddress: nil, clientAddress: nil, peerIsTrustedProxy: false, clientCertificate: nil)
    }

    @Sendable static func run(_ input: UnsafeBufferPointer<UInt8>) {
        let request = request(input)
        // The first byte picks the body type, so that each gets its share of inputs.
        let decoders: [(GatewayRequest) -> Void] = [
            { _ = try? APIJSON.decode(LoginBody.self, from: $0) },
            { _ = try? APIJSON.decode(RefreshBody.self, from: $0) },
            { _ = try? APIJSON.decode(RemoteHelpBody.self, from: $0) },
            { _ = try? APIJSON.decode(GroupBody.self, from: $0) },
            { _ = try? APIJSON.decode(GroupPatch.self, from: $0) },
            { _ = try? APIJSON.decode(PolicyBody.self, from: $0) },
            { _ = try? APIJSON.decode(PolicyVersionBody.self, from: $0) },
            { _ = try? APIJSON.decode(PublishBody.self, from: $0) },
            { _ = try? APIJSON.decode(EnrollmentTokenBody.self, from: $0) },
            { _ = try? APIJSON.decode(CommandBody.self, from: $0) },
            { _ = try? APIJSON.decode(OperatorBody.self, from: $0) },
            { _ = try? APIJSON.decode(OperatorPatch.self, from: $0) },
            { _ = try? APIJSON.decode(APITokenBody.self, from: $0) },
            { _ = try? APIJSON.decode(CSRBody.self, from: $0) },
            { _ = try? APIJSON.decode(ImportBody.self, from: $0) },
            { _ = try? APIJSON.decode(RotateBody.self, from: $0) },
        ]
        decoders[Int(input.first ?? 0) % decoders.count](request)
    }
}
