import Foundation
import Testing

@testable import PorticoStore

/// The hand-written JSON of change pages: what it writes is JSON any parser reads, what it
/// reads back is what was written, and what is not a page is refused with a reason.
@Suite struct ChangeBatchJSONTests {
    static let awkward = ["", "plain", "quote \" backslash \\ slash /", "lines\n\r\ttabs", "\u{01}\u{1F} controls", "é ü 漢字 🎉", "\u{2028}\u{2029}"]

    static var sample: ChangeBatch {
        ChangeBatch(siteID: "site \"a\"", head: 42, next: 40, changes: [
            ReplicatedChange(sequence: 1, entity: "group", key: "g-1", op: "upsert", origin: "site-a", hlc: UInt64(Int64.max), row: awkward.map(ReplicatedValue.text)),
            ReplicatedChange(sequence: 2, entity: "policy", key: "p/1", op: "upsert", origin: "b", hlc: 7,
                             row: [.null, .integer(Int64.min), .integer(0), .integer(-5), .text(Data([0, 255, 1]).base64EncodedString())]),
            ReplicatedChange(sequence: 3, entity: "group", key: "g-2", op: "delete", origin: "site-a", hlc: 9, row: nil),
        ])
    }

    @Test func whatIsWrittenIsJSONAndReadsBackTheSame() throws {
        let bytes = Self.sample.json()
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(parsed["site_id"] as? String == "site \"a\"")
        let first = try #require((parsed["changes"] as? [[String: Any]])?.first)
        #expect(first["row"] as? [String] == Self.awkward)
        #expect(try ChangeBatch(json: bytes) == Self.sample)
        // Foundation's output (escaped slashes, \u escapes, spaces) reads the same too.
        let foreign = try JSONSerialization.data(withJSONObject: ["site_id": "x/y", "head": 1, "next": 1, "changes": [
            ["seq": 1, "entity": "group", "key": "k", "op": "upsert", "origin": "o", "hlc": 3, "row": ["a\u{1}b", NSNull(), 12]] as [String: Any],
        ]] as [String: Any], options: [.prettyPrinted])
        let read = try ChangeBatch(json: Array(foreign))
        #expect(read.siteID == "x/y" && read.changes.first?.row == [.text("a\u{1}b"), .null, .integer(12)])
        #expect(try ChangeBatch(json: Array(#"{"site_id":"\ud83c\udf89","head":0,"next":0,"changes":[]}"#.utf8)).siteID == "🎉")
    }

    @Test(arguments: [
        "", "[]", "{", #"{"site_id":"a","head":1,"next":1}"#, #"{"site_id":"a","head":1.5,"next":1,"changes":[]}"#,
        #"{"site_id":"a","head":1,"next":1,"changes":[]} x"#, #"{"site_id":"a","head":99999999999999999999,"next":1,"changes":[]}"#,
        #"{"site_id":"\ud800","head":1,"next":1,"changes":[]}"#, "{\"site_id\":\"a\u{1}\",\"head\":1,\"next\":1,\"changes\":[]}",
        #"{"site_id":"a","head":1,"next":1,"changes":[{"seq":1,"entity":"group","key":"k","op":"upsert","origin":"o","hlc":1,"row":[true]}]}"#,
        #"{"site_id":"a","head":01,"next":1,"changes":[]}"#, String(repeating: "[", count: 100) + String(repeating: "]", count: 100),
    ])
    func whatIsNotAPageIsRefused(_ text: String) {
        #expect(throws: StoreError.self) { try ChangeBatch(json: Array(text.utf8)) }
    }
}
