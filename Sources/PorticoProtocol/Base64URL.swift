import Foundation

/// Unpadded base64url, the encoding of every binary field in the agent protocol's JSON.
public enum Base64URL {
    public static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// The bytes of unpadded base64url text; nil for anything else (padding, `+` or `/`,
    /// whitespace, a length no encoding has), so that one value has one spelling.
    public static func decode(_ text: String) -> [UInt8]? {
        guard text.utf8.count % 4 != 1, text.utf8.allSatisfy({ byte in
            (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte) || (0x30...0x39).contains(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
        }) else { return nil }
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard let bytes = Data(base64Encoded: base64).map(Array.init) else { return nil }
        // The unused low bits of the last character must be zero: otherwise other text
        // decodes to the same bytes (found by fuzzing: `Sequei` and `Sequeg` both spelled the
        // same four bytes).
        guard encode(bytes) == text else { return nil }
        return bytes
    }
}
