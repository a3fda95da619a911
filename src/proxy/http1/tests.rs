//! Table tests: one row per case, with the status laneway must answer.

use super::*;

/// Parses `head` as a request; the status it is refused with, or 0.
fn request_status(head: &[u8]) -> u16 {
    match parse_request_head(head) {
        Ok(_) => 0,
        Err(r) => r.status(),
    }
}

#[test]
fn request_table() {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    let big_field = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "v".repeat(70_000)
    );
    let many_fields = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let hundred_fields = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..99).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let table: &[(&str, &[u8], u16)] = &[
        // valid requests
        ("plain GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
        ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", 0),
        ("empty lines before the request line", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
        ("length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 0),
        ("same length twice", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 0),
        ("same length in a list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 0),
        ("chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 0),
        ("chunked, any case, trailing OWS", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD \t\r\n\r\n", 0),
        ("value with obs-text and tab", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xe9\r\n\r\n", 0),
        ("absolute-form, same Host", b"GET http://a/x?y HTTP/1.1\r\nHost: a\r\n\r\n", 0),
        ("absolute-form https, HTTP/1.0 without Host", b"GET https://a:8443 HTTP/1.0\r\n\r\n", 0),
        ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0),
        ("CONNECT authority-form", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 0),
        ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 0),
        ("IPv6 Host", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 0),
        ("100 fields", hundred_fields.as_bytes(), 0),
        // framing
        ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("TE chunked, gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        ("TE split over two fields", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("TE empty element", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", 400),
        ("TE empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400),
        ("TE chunked with a parameter", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400),
        ("TE with a vertical tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", 400),
        ("TE quoted", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
        ("CL +5", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
        ("CL with a space inside", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", 400),
        ("CL then U+0085", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\xc2\x85\r\n\r\n", 400),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
        ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        ("CL overflows", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
        ("CL different values", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        ("CL list with different values", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400),
        // field syntax
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        ("obs-fold with a tab", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400),
        ("space before the colon", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400),
        ("tab before the colon", b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n", 400),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        ("bare LF in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb: c\r\n\r\n", 400),
        ("DEL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400),
        ("invalid name", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): a\r\n\r\n", 400),
        ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", 400),
        ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nXY\r\n\r\n", 400),
        ("bare LF line ends", b"GET / HTTP/1.1\nHost: a\n\n", 400),
        // Host
        ("two Host fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("two equal Host fields", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
        ("no Host on 1.1", b"GET / HTTP/1.1\r\nX: a\r\n\r\n", 400),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
        ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("Host with a slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        // absolute-form
        ("absolute-form, other Host", b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", 400),
        ("absolute-form, no Host on 1.1", b"GET http://a/ HTTP/1.1\r\n\r\n", 400),
        ("absolute-form ftp", b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("absolute-form without authority", b"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("absolute-form empty authority", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("absolute-form userinfo", b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("relative target", b"GET x/y HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("asterisk with GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // request line
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("HTTP/3", b"GET / HTTP/3\r\nHost: a\r\n\r\n", 505),
        ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
        ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        ("no version", b"GET /\r\nHost: a\r\n\r\n", 400),
        ("two spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("trailing space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
        ("invalid method", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        ("TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        // limits
        ("request line over 8 KiB", long_target.as_bytes(), 414),
        ("header section over 64 KiB", big_field.as_bytes(), 431),
        ("101 fields", many_fields.as_bytes(), 431),
    ];
    let mut failed = Vec::new();
    for (name, head, want) in table {
        let got = request_status(head);
        if got != *want {
            failed.push(format!("{name}: got {got}, want {want}"));
        }
        // the scanner agrees, wherever the head is cut
        if let Err(r) = scan_head(head) {
            if *want != 0 && r.status() != *want {
                failed.push(format!("{name}: scan_head got {}, want {want}", r.status()));
            }
            if *want == 0 {
                failed.push(format!("{name}: scan_head refused a valid head: {r}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn request_facts() {
    let buf = b"POST http://shop.example.com/cart?x=1 HTTP/1.1\r\nHost: shop.example.com\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc";
    let h = parse_request_head(buf).expect("valid");
    assert_eq!(h.len, buf.len() - 3);
    assert_eq!(h.method.of(buf), b"POST");
    assert_eq!(h.target.of(buf), b"http://shop.example.com/cart?x=1");
    assert_eq!(h.host.map(|s| s.of(buf)), Some(&b"shop.example.com"[..]));
    assert_eq!(h.origin_form(buf), (false, &b"/cart?x=1"[..]));
    assert_eq!(h.framing, Framing::Length(3));
    assert!(h.keep_alive && h.upgrade && h.expect_continue && h.has_host_field);
    assert_eq!(h.fields.len(), 5);
    let names: Vec<_> = h.fields.iter(buf).map(|(n, _)| n).collect();
    assert_eq!(names[0], b"Host");

    let buf = b"GET http://a?q HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let h = parse_request_head(buf).expect("valid");
    assert_eq!(h.origin_form(buf), (true, &b"?q"[..]));
    assert_eq!(h.host.map(|s| s.of(buf)), Some(&b"a"[..]));
    assert!(h.keep_alive && !h.has_host_field);

    let buf = b"GET / HTTP/1.0\r\n\r\n";
    let h = parse_request_head(buf).expect("valid");
    assert!(!h.keep_alive && h.host.is_none());
    assert_eq!(h.framing, Framing::None);

    // more fields than are kept in place: all of them, in order
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..60)
            .map(|i| format!("X-{i}: v{i}\r\n"))
            .collect::<String>()
    );
    let h = parse_request_head(many.as_bytes()).expect("valid");
    assert_eq!(h.fields.len(), 61);
    let fields: Vec<_> = h.fields.iter(many.as_bytes()).collect();
    assert_eq!(fields.len(), 61);
    assert_eq!(fields[0], (&b"Host"[..], &b"a"[..]));
    assert_eq!(fields[33], (&b"X-32"[..], &b"v32"[..]));
    assert_eq!(fields[60], (&b"X-59"[..], &b"v59"[..]));

    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX:  spaced  \r\n\r\n";
    let h = parse_request_head(buf).expect("valid");
    assert!(!h.keep_alive && !h.upgrade);
    assert_eq!(h.fields.iter(buf).nth(2), Some((&b"X"[..], &b"spaced"[..])));
}

#[test]
fn response_table() {
    /// status, framing, keep-alive; `Err` for a 502
    type Want = Result<(u16, Framing, bool), ()>;
    let table: &[(&str, &[u8], Want)] = &[
        (
            "length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Ok((200, Framing::Length(5), true)),
        ),
        (
            "no reason",
            b"HTTP/1.1 204\r\n\r\n",
            Ok((204, Framing::Close, true)),
        ),
        (
            "empty reason",
            b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
            Ok((200, Framing::None, true)),
        ),
        (
            "chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((200, Framing::Chunked, true)),
        ),
        (
            "gzip, chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Ok((200, Framing::Chunked, true)),
        ),
        (
            "chunked wins over CL",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((200, Framing::Chunked, false)),
        ),
        (
            "final coding not chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Ok((200, Framing::Close, false)),
        ),
        (
            "until close",
            b"HTTP/1.0 200 OK\r\n\r\n",
            Ok((200, Framing::Close, false)),
        ),
        (
            "1.0 keep-alive",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            Ok((200, Framing::Length(1), true)),
        ),
        (
            "1.1 close",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Ok((200, Framing::Length(1), false)),
        ),
        (
            "TE on HTTP/1.0",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok((200, Framing::Chunked, false)),
        ),
        (
            "100 Continue",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            Ok((100, Framing::Close, true)),
        ),
        (
            "CL values differ",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Err(()),
        ),
        (
            "CL not a number",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5a\r\n\r\n",
            Err(()),
        ),
        (
            "TE malformed",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,,\r\n\r\n",
            Err(()),
        ),
        ("HTTP/1.2", b"HTTP/1.2 200 OK\r\n\r\n", Err(())),
        ("HTTP/2", b"HTTP/2 200 OK\r\n\r\n", Err(())),
        ("two-digit status", b"HTTP/1.1 20 OK\r\n\r\n", Err(())),
        ("status 099", b"HTTP/1.1 099 OK\r\n\r\n", Err(())),
        ("status with letters", b"HTTP/1.1 2x0 OK\r\n\r\n", Err(())),
        (
            "no space after the status",
            b"HTTP/1.1 200OK\r\n\r\n",
            Err(()),
        ),
        (
            "control byte in the reason",
            b"HTTP/1.1 200 O\x01K\r\n\r\n",
            Err(()),
        ),
        (
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            Err(()),
        ),
        (
            "space before colon",
            b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
            Err(()),
        ),
        (
            "bare LF",
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            Err(()),
        ),
        ("not HTTP", b"SSH-2.0-OpenSSH\r\n\r\n", Err(())),
    ];
    let mut failed = Vec::new();
    for (name, head, want) in table {
        let got = match parse_response_head(head) {
            Ok(h) => Ok((h.status, h.framing, h.keep_alive)),
            Err(r) => {
                assert_eq!(r.status(), 502, "{name}: {r}");
                Err(())
            }
        };
        if got != *want {
            failed.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    let buf = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let h = parse_response_head(buf).expect("valid");
    assert_eq!(h.status_text.of(buf), b"404 Not Found");
    assert!(h.drop_content_length);
}

/// Feeds `body` split at every position; every split must give the same
/// outcome as the whole.
fn decode_all_ways(body: &[u8], limit: Option<u64>) -> Result<usize, ChunkError> {
    let whole = {
        let mut d = ChunkedDecoder::new(limit);
        d.feed(body).and_then(|n| {
            if d.done() {
                Ok(n)
            } else {
                Err(ChunkError::Malformed("incomplete"))
            }
        })
    };
    for split in 0..body.len() {
        let mut d = ChunkedDecoder::new(limit);
        let got = d.feed(&body[..split]).and_then(|a| {
            if d.done() {
                return Ok(a);
            }
            assert_eq!(
                a, split,
                "split at {split}: bytes before the end all belong to the body"
            );
            let b = d.feed(&body[split..])?;
            if d.done() {
                Ok(a + b)
            } else {
                Err(ChunkError::Malformed("incomplete"))
            }
        });
        assert_eq!(
            got.map_err(|e| e.status()),
            whole.map_err(|e| e.status()),
            "split at {split}"
        );
    }
    // and one byte at a time
    let mut d = ChunkedDecoder::new(limit);
    let mut fed = 0;
    let mut bytewise = Ok(0);
    for i in 0..body.len() {
        match d.feed(&body[i..=i]) {
            Ok(n) => fed += n,
            Err(e) => {
                bytewise = Err(e);
                break;
            }
        }
        if d.done() {
            break;
        }
    }
    if bytewise.is_ok() {
        bytewise = if d.done() {
            Ok(fed)
        } else {
            Err(ChunkError::Malformed("incomplete"))
        };
    }
    assert_eq!(
        bytewise.map_err(|e| e.status()),
        whole.map_err(|e| e.status()),
        "byte by byte"
    );
    whole
}

#[test]
fn chunked_table() {
    // Ok(0): the whole input is the body
    let table: &[(&str, &[u8], Result<usize, u16>)] = &[
        ("plain", b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n", Ok(0)),
        (
            "upper-case hex and leading zeros",
            b"000A\r\n0123456789\r\n0\r\n\r\n",
            Ok(0),
        ),
        ("extensions", b"4;a=b;c\r\nwiki\r\n0;last\r\n\r\n", Ok(0)),
        (
            "extension with BWS",
            b"4 ;\ta = \"q;\\\"x\" ; c\r\nwiki\r\n0\r\n\r\n",
            Ok(0),
        ),
        (
            "trailers",
            b"4\r\nwiki\r\n0\r\nX-T: 1\r\nY:2\r\n\r\n",
            Ok(0),
        ),
        ("stops at the end", b"0\r\n\r\nGET / HTTP/1.1\r\n", Ok(5)),
        ("empty size", b"\r\nwiki\r\n0\r\n\r\n", Err(400)),
        ("leading space", b" 4\r\nwiki\r\n0\r\n\r\n", Err(400)),
        ("trailing space", b"4 \r\nwiki\r\n0\r\n\r\n", Err(400)),
        ("0x prefix", b"0x4\r\nwiki\r\n0\r\n\r\n", Err(400)),
        ("negative", b"-4\r\nwiki\r\n0\r\n\r\n", Err(400)),
        (
            "17 digits",
            b"00000000000000004\r\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        ("overflow", b"fffffffffffffffff\r\n", Err(400)),
        ("bare LF after size", b"4\nwiki\r\n0\r\n\r\n", Err(400)),
        ("bare LF after data", b"4\r\nwiki\n0\r\n\r\n", Err(400)),
        (
            "data longer than size",
            b"4\r\nwikiX\r\n0\r\n\r\n",
            Err(400),
        ),
        ("bare LF at the end", b"4\r\nwiki\r\n0\r\n\n", Err(400)),
        ("bare LF after last size", b"4\r\nwiki\r\n0\n\r\n", Err(400)),
        (
            "bare LF in an extension",
            b"4;a\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        (
            "extension without a name",
            b"4;\r\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        (
            "extension with an empty value",
            b"4;a=\r\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        (
            "extension name not a token",
            b"4;a@b\r\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        (
            "extension unterminated quote",
            b"4;a=\"x\r\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        (
            "NUL in an extension",
            b"4;a=\x00\r\nwiki\r\n0\r\n\r\n",
            Err(400),
        ),
        ("whitespace then CR", b"4;a \r\nwiki\r\n0\r\n\r\n", Err(400)),
        ("trailer obs-fold", b"0\r\nX: 1\r\n 2\r\n\r\n", Err(400)),
        (
            "trailer space before colon",
            b"0\r\nX : 1\r\n\r\n",
            Err(400),
        ),
        ("trailer bare LF", b"0\r\nX: 1\n\r\n", Err(400)),
        ("trailer NUL", b"0\r\nX: \x00\r\n\r\n", Err(400)),
        ("trailer without colon", b"0\r\nX\r\n\r\n", Err(400)),
    ];
    let mut failed = Vec::new();
    for (name, body, want) in table {
        let got = decode_all_ways(body, None).map_err(|e| e.status());
        let want = want.map(|n| if n == 0 { body.len() } else { n });
        if got != want {
            failed.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn chunked_limit_counts_data_bytes() {
    let body = b"4\r\nwiki\r\n5;x=1\r\npedia\r\n0\r\nT: v\r\n\r\n";
    assert_eq!(decode_all_ways(body, Some(9)), Ok(body.len()));
    let e = decode_all_ways(body, Some(8)).unwrap_err();
    assert_eq!(e, ChunkError::TooLarge(8));
    assert_eq!(e.status(), 413);
    assert!(e.to_string().contains("max_body_size"));
}

#[test]
fn chunked_line_limits() {
    let mut ext = b"1".to_vec();
    while ext.len() < 5000 {
        ext.extend_from_slice(b";a=b");
    }
    ext.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert_eq!(
        ChunkedDecoder::new(None).feed(&ext).map_err(|e| e.status()),
        Err(400)
    );
    let mut trailers = b"0\r\n".to_vec();
    for i in 0..101 {
        trailers.extend_from_slice(format!("T{i}: v\r\n").as_bytes());
    }
    trailers.extend_from_slice(b"\r\n");
    assert_eq!(
        ChunkedDecoder::new(None)
            .feed(&trailers)
            .map_err(|e| e.status()),
        Err(400)
    );
}

#[test]
fn rejects_name_the_problem() {
    let r = parse_request_head(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap_err();
    assert_eq!(
        r.to_string(),
        "both Content-Length and Transfer-Encoding: send one of them"
    );
    let r = parse_request_head(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n").unwrap_err();
    assert!(r.to_string().contains("HTTP/1.1"), "{r}");
}
