//! Data-plane features end to end: the lane carried in W3C `baggage` (in
//! and out, both engines), and WebSocket upgrades tunnelled through a
//! snapshot swap.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{Laneway, Upstream, SIMPLE_ROUTES};

fn baggage_in_and_out(engine: &str) {
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    let lw = Laneway::start_full(SIMPLE_ROUTES, &format!("engine = \"{engine}\""), "", "");
    lw.register("web-1", "web", Some("stable"), stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    let (code, _) = lw.create_lane(r#"{"name":"t1","services":{"web":"v2"}}"#);
    assert_eq!(code, 201);

    // The lane from baggage, other members passed on, the lane member set.
    let r = lw.get(
        "shop.example.com",
        "/",
        &[(
            "baggage",
            "userId=alice, laneway-lane=t1;prop=1,sessionId=abc%20d",
        )],
    );
    assert_eq!(r.upstream(), "v2", "{engine}: {}", r.body);
    // One header or two (the echo joins repeated headers with ", ").
    let seen: Vec<String> = r.json()["headers"]["baggage"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    assert_eq!(
        seen,
        ["userId=alice", "sessionId=abc%20d", "laneway-lane=t1"],
        "{engine}"
    );
    assert_eq!(r.json()["headers"]["x-laneway-lane"], "t1");

    // The header wins over baggage; baggage over the cookie.
    let r = lw.get(
        "shop.example.com",
        "/",
        &[
            ("X-Laneway-Lane", "baseline"),
            ("baggage", "laneway-lane=t1"),
        ],
    );
    assert_eq!(r.upstream(), "stable", "{engine}");
    assert_eq!(r.json()["headers"]["baggage"], "laneway-lane=baseline");
    let r = lw.get(
        "shop.example.com",
        "/",
        &[
            ("cookie", "laneway_lane=baseline"),
            ("baggage", "laneway-lane=t1"),
        ],
    );
    assert_eq!(r.upstream(), "v2", "{engine}");

    // A request without baggage gets the lane member too.
    let r = lw.get("shop.example.com", "/", &[("X-Laneway-Lane", "t1")]);
    assert_eq!(
        r.json()["headers"]["baggage"],
        "laneway-lane=t1",
        "{engine}"
    );

    // An unknown lane in baggage is ignored, like an unknown header lane.
    let r = lw.get("shop.example.com", "/", &[("baggage", "laneway-lane=nope")]);
    assert_eq!(r.upstream(), "stable", "{engine}");
}

#[test]
fn lane_travels_in_baggage_h1() {
    baggage_in_and_out("h1");
}

#[test]
fn lane_travels_in_baggage_pingora() {
    baggage_in_and_out("pingora");
}

/// An upstream that answers an upgrade with 101 and then echoes every
/// byte, prefixed with its name once.
fn upgrade_upstream(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.to_ascii_lowercase().starts_with("upgrade: websocket") {
                        upgrade = true;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                if !upgrade {
                    let _ =
                        writer.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let _ = writer.write_all(
                    format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nx-upstream: {name}\r\n\r\n").as_bytes(),
                );
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if writer.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn websocket_survives_a_snapshot_swap() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let port = upgrade_upstream("ws-1");
    lw.register("web-1", "web", None, port);
    let mut c = TcpStream::connect(lw.proxy).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /chat HTTP/1.1\r\nHost: shop.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    // A masked text frame "hello", echoed byte for byte.
    let frame = |text: &[u8]| {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | text.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    let mut echo = |c: &mut TcpStream, text: &[u8]| {
        let f = frame(text);
        c.write_all(&f).unwrap();
        let mut back = vec![0u8; f.len()];
        reader.read_exact(&mut back).unwrap();
        assert_eq!(back, f);
    };
    echo(&mut c, b"hello");
    let generation = |lw: &Laneway| -> u64 {
        let (_, body) = lw.api("GET", "/api/v1/status", None);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["snapshot"]["generation"]
            .as_u64()
            .unwrap()
    };
    let before = generation(&lw);
    // Snapshot swaps: another instance, a lane, the first instance's removal.
    let other = upgrade_upstream("ws-2");
    lw.register("web-2", "web", None, other);
    lw.create_lane(r#"{"name":"t9"}"#);
    lw.deregister("web-1");
    assert!(generation(&lw) >= before + 3);
    echo(&mut c, b"still here after three swaps");
    // New upgrades go to the instance that is left.
    let mut c2 = TcpStream::connect(lw.proxy).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c2.write_all(b"GET /chat HTTP/1.1\r\nHost: shop.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = String::new();
    let mut r2 = BufReader::new(c2);
    loop {
        let mut line = String::new();
        r2.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.contains("x-upstream: ws-2"), "{head}");
}
