//! Property tests: serialize → parse is the identity for every method, every
//! subset of the basic properties and arbitrary nested tables; and arbitrary
//! bytes never make the parser misbehave.

use amqp_types::method;
use amqp_types::{
    BasicProperties, FieldTable, FieldValue, LongString, Method, MethodKind, ShortString,
};
use amqp_wire::{
    ContentHeader, EncodeError, Frame, FrameLimits, FramePayload, Parsed, check_properties,
    decode_field_table, decode_properties, encode_field_table, encode_field_table_to_slice,
    encode_properties, has_property, parse_frame, property_flag, property_value,
    write_header_frame,
};
use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn roundtrip(frame: &Frame) {
    let mut buf = BytesMut::new();
    let n = frame.encode(&mut buf).expect("encodable");
    assert_eq!(n, buf.len());
    assert_eq!(frame.encoded_len().unwrap(), n);
    let bytes = buf.freeze();
    same_bytes_from_every_api(frame, &bytes);
    match parse_frame(&bytes, FrameLimits::UNLIMITED) {
        Ok(Parsed::Complete {
            frame: parsed,
            consumed,
        }) => {
            assert_eq!(consumed, n);
            assert_eq!(&parsed, frame);
        }
        other => panic!("{frame:?} parsed as {other:?}"),
    }
    // RabbitMQ's receive rule: a payload of up to frame_max bytes passes
    // (frame_max - 8, plus 8 bytes of slack); one byte more is refused.
    let payload = (n - 8) as u32;
    if payload > 0 {
        assert!(matches!(
            parse_frame(&bytes, FrameLimits::new(payload)),
            Ok(Parsed::Complete { .. })
        ));
    }
    if payload > 1 {
        let e = parse_frame(&bytes.slice(..7), FrameLimits::new(payload - 1)).unwrap_err();
        assert_eq!(e.code(), amqp_types::ReplyCode::FRAME_ERROR);
    }
}

/// `encode_to_slice` and `encode_to_vec` write exactly what `encode` wrote;
/// a slice one byte short is refused with the exact size needed, and bytes
/// after the frame are never touched.
fn same_bytes_from_every_api(frame: &Frame, bytes: &[u8]) {
    let n = bytes.len();
    let mut out = vec![0x5a; n + 16];
    assert_eq!(frame.encode_to_slice(&mut out), Ok(n));
    assert_eq!(&out[..n], bytes);
    assert!(out[n..].iter().all(|&b| b == 0x5a), "wrote past the frame");
    assert_eq!(
        frame.encode_to_slice(&mut out[..n - 1]),
        Err(EncodeError::BufferTooSmall {
            needed: n,
            available: n - 1
        })
    );
    let mut v = vec![1, 2, 3];
    assert_eq!(frame.encode_to_vec(&mut v), Ok(n));
    assert_eq!(&v[..3], &[1, 2, 3]);
    assert_eq!(&v[3..], bytes);
}

/// A method of the given kind with every argument drawn from `u`: generated
/// from the protocol table, so every method is covered by construction.
macro_rules! random_method {
    ($(
        $Name:ident ( $cid:literal, $mid:literal, $($head:tt)* )
        { $( $f:ident : $ty:ident = $fname:literal ),* $(,)? }
    )*) => {
        fn random_method(kind: MethodKind, u: &mut Unstructured<'_>) -> arbitrary::Result<Method> {
            Ok(match kind {
                $(
                    MethodKind::$Name => Method::$Name(method::$Name {
                        $( $f: <$ty as Arbitrary>::arbitrary(u)?, )*
                    }),
                )*
                _ => unreachable!("every kind is in the table"),
            })
        }
    };
}
amqp_types::for_each_method!(random_method);

/// A method's payload never takes more than its kind's bound
/// (`MethodInfo::max_payload_len`), when it has one. And a borrowed
/// `MethodFrame` encodes exactly as the `Frame` that owns the method,
/// refusing a slice one byte short with the size it needs.
fn within_bound(m: &Method) {
    let frame = Frame::method(3, m.clone());
    let len = frame.encoded_len().unwrap();
    if let Some(max) = m.kind().info().max_payload_len() {
        assert!(
            len - 8 <= max,
            "{:?}: {} bytes, bound {max}",
            m.kind(),
            len - 8
        );
    }
    let borrowed = amqp_wire::MethodFrame {
        channel: 3,
        method: m,
    };
    assert_eq!(borrowed.encoded_len().unwrap(), len);
    let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
    assert_eq!(borrowed.encode_to_slice(&mut a).unwrap(), len);
    assert_eq!(frame.encode_to_slice(&mut b).unwrap(), len);
    assert_eq!(a, b, "{:?}", m.kind());
    assert_eq!(
        borrowed.encode_to_slice(&mut a[..len - 1]),
        Err(amqp_wire::EncodeError::BufferTooSmall {
            needed: len,
            available: len - 1
        })
    );
}

#[test]
fn the_payload_bound_is_reached_by_the_longest_arguments() {
    let long = ShortString::try_from("x".repeat(255).as_str()).unwrap();
    let m: Method = method::BasicDeliver {
        consumer_tag: long.clone(),
        delivery_tag: u64::MAX,
        redelivered: true,
        exchange: long.clone(),
        routing_key: long,
    }
    .into();
    let len = Frame::method(1, m.clone()).encoded_len().unwrap() - 8;
    assert_eq!(Some(len), m.kind().info().max_payload_len());
}

#[test]
fn every_method_roundtrips_with_defaults_and_extremes() {
    for &kind in MethodKind::ALL {
        for fill in [0u8, 0xff, 0x55] {
            let data = vec![fill; 4096];
            let mut u = Unstructured::new(&data);
            let m = random_method(kind, &mut u).unwrap();
            assert_eq!(m.kind(), kind);
            within_bound(&m);
            for channel in [0, 1, u16::MAX] {
                roundtrip(&Frame::method(channel, m.clone()));
            }
        }
    }
}

#[test]
fn every_subset_of_properties_roundtrips() {
    let mut full_headers = FieldTable::new();
    full_headers.insert("k", "v");
    let all = BasicProperties {
        content_type: Some(ShortString::from_static("application/json")),
        content_encoding: Some(ShortString::from_static("gzip")),
        headers: Some(full_headers),
        delivery_mode: Some(2),
        priority: Some(9),
        correlation_id: Some(ShortString::from_static("corr")),
        reply_to: Some(ShortString::from_static("amq.rabbitmq.reply-to")),
        expiration: Some(ShortString::from_static("60000")),
        message_id: Some(ShortString::from_static("id-1")),
        timestamp: Some(u64::MAX),
        kind: Some(ShortString::from_static("t")),
        user_id: Some(ShortString::from_static("guest")),
        app_id: Some(ShortString::from_static("app")),
        cluster_id: Some(ShortString::EMPTY),
    };
    assert_eq!(all.flags(), 0xfffc);
    for mask in 0u16..(1 << 14) {
        let flags = mask << 2;
        let mut p = all.clone();
        macro_rules! keep {
            ($( $f:ident : $ty:ident = $name:literal @ $bit:literal ),* $(,)?) => {
                $( if flags & (1 << $bit) == 0 { p.$f = None; } )*
            };
        }
        amqp_types::for_each_basic_property!(keep);
        assert_eq!(p.flags(), flags);
        // Borrowed, the properties encode to the same bytes.
        let borrowed = amqp_wire::HeaderFrame {
            channel: 1,
            body_size: mask as u64 * 1000,
            properties: &p,
        };
        let owned = Frame::header(1, mask as u64 * 1000, p.clone());
        let len = owned.encoded_len().unwrap();
        assert_eq!(borrowed.encoded_len().unwrap(), len);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        assert_eq!(borrowed.encode_to_slice(&mut a).unwrap(), len);
        owned.encode_to_slice(&mut b).unwrap();
        assert_eq!(a, b);
        roundtrip(&Frame {
            channel: 1,
            payload: FramePayload::Header(Box::new(ContentHeader {
                weight: 0,
                body_size: mask as u64 * 1000,
                properties: p,
            })),
        });
    }
}

fn frame_from(data: &[u8]) -> Option<Frame> {
    let u = &mut Unstructured::new(data);
    let channel = u16::arbitrary(u).ok()?;
    let payload = match u.choose_index(4).ok()? {
        0 => {
            let kind = MethodKind::ALL[u.choose_index(MethodKind::ALL.len()).ok()?];
            FramePayload::Method(random_method(kind, u).ok()?)
        }
        1 => FramePayload::Header(Box::new(ContentHeader {
            weight: u16::arbitrary(u).ok()?,
            body_size: u64::arbitrary(u).ok()?,
            properties: BasicProperties::arbitrary(u).ok()?,
        })),
        2 => FramePayload::Body(Bytes::from(Vec::<u8>::arbitrary(u).ok()?)),
        _ => FramePayload::Heartbeat,
    };
    Some(Frame { channel, payload })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    #[test]
    fn random_method_of_every_kind_roundtrips(kind in 0..MethodKind::ALL.len(), data in prop::collection::vec(any::<u8>(), 0..2048), channel in any::<u16>()) {
        let mut u = Unstructured::new(&data);
        if let Ok(m) = random_method(MethodKind::ALL[kind], &mut u) {
            within_bound(&m);
            roundtrip(&Frame::method(channel, m));
        }
    }

    #[test]
    fn arbitrary_frames_roundtrip(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Some(f) = frame_from(&data) {
            roundtrip(&f);
        }
    }

    #[test]
    fn arbitrary_properties_roundtrip(data in prop::collection::vec(any::<u8>(), 0..2048), body_size in any::<u64>()) {
        if let Ok(p) = BasicProperties::arbitrary(&mut Unstructured::new(&data)) {
            roundtrip(&Frame::header(7, body_size, p));
        }
    }

    #[test]
    fn encoded_properties_are_the_header_frames_own(data in prop::collection::vec(any::<u8>(), 0..2048), body_size in any::<u64>()) {
        if let Ok(p) = BasicProperties::arbitrary(&mut Unstructured::new(&data)) {
            let mut wire = Vec::new();
            let n = encode_properties(&p, &mut wire).unwrap();
            prop_assert_eq!(n, wire.len());
            // The same bytes as inside the header frame Frame::encode writes.
            let mut frame = BytesMut::new();
            Frame::header(9, body_size, p.clone()).encode(&mut frame).unwrap();
            let mut raw = BytesMut::new();
            prop_assert_eq!(write_header_frame(&mut raw, 9, body_size, &wire), frame.len());
            prop_assert_eq!(&raw[..], &frame[..]);
            prop_assert_eq!(check_properties(&wire), Ok(()));
            // One value found without decoding the others.
            let octet = |v: Option<u8>| v.map(|b| vec![b]);
            let string = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_bytes().to_vec());
            for (name, want) in [
                ("delivery-mode", octet(p.delivery_mode)),
                ("priority", octet(p.priority)),
                ("content-type", string(&p.content_type)),
                ("expiration", string(&p.expiration)),
                ("cluster-id", string(&p.cluster_id)),
            ] {
                let flag = property_flag(name);
                prop_assert_eq!(property_value(&wire, flag).map(<[u8]>::to_vec), want.clone());
                prop_assert_eq!(has_property(&wire, flag), want.is_some());
            }
            prop_assert_eq!(has_property(&wire, property_flag("headers")), p.headers.is_some());
            let bytes = Bytes::from(wire.clone());
            prop_assert_eq!(decode_properties(&bytes).unwrap(), p);
            // Every cut is refused by both, and so is a trailing byte.
            for cut in 0..wire.len() {
                prop_assert!(check_properties(&wire[..cut]).is_err());
                prop_assert!(decode_properties(&bytes.slice(..cut)).is_err());
            }
            wire.push(0);
            prop_assert!(check_properties(&wire).is_err());
            prop_assert!(decode_properties(&Bytes::from(wire)).is_err());
        }
    }

    #[test]
    fn properties_that_fail_the_check_fail_to_decode(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let bytes = Bytes::from(data);
        if check_properties(&bytes).is_err() {
            prop_assert!(decode_properties(&bytes).is_err());
        }
    }

    #[test]
    fn arbitrary_nested_tables_roundtrip(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(t) = FieldTable::arbitrary(&mut Unstructured::new(&data)) {
            let mut buf = BytesMut::new();
            let n = encode_field_table(&t, &mut buf).unwrap();
            prop_assert_eq!(n, buf.len());
            let mut out = vec![0x5a; n + 8];
            prop_assert_eq!(encode_field_table_to_slice(&t, &mut out), Ok(n));
            prop_assert_eq!(&out[..n], &buf[..]);
            prop_assert!(out[n..].iter().all(|&b| b == 0x5a));
            prop_assert_eq!(
                encode_field_table_to_slice(&t, &mut out[..n - 1]),
                Err(EncodeError::BufferTooSmall { needed: n, available: n - 1 })
            );
            let back = decode_field_table(&buf.freeze()).unwrap();
            prop_assert_eq!(back, t);
        }
    }

    /// Any byte sequence is a frame, "incomplete" or a typed connection error;
    /// a complete frame re-encodes to a frame that parses to the same value,
    /// and "incomplete" never asks for fewer bytes than are really missing.
    #[test]
    fn garbage_is_a_value_incomplete_or_error(data in prop::collection::vec(any::<u8>(), 0..512), fm in prop_oneof![Just(0u32), Just(4096u32), any::<u32>()]) {
        let bytes = Bytes::from(data);
        match parse_frame(&bytes, FrameLimits::new(fm)) {
            Ok(Parsed::Complete { frame, consumed }) => {
                prop_assert!(consumed <= bytes.len());
                let mut out = BytesMut::new();
                frame.encode(&mut out).unwrap();
                match parse_frame(&out.freeze(), FrameLimits::UNLIMITED) {
                    Ok(Parsed::Complete { frame: again, .. }) => prop_assert_eq!(again, frame),
                    other => prop_assert!(false, "re-encoding parsed as {:?}", other),
                }
            }
            Ok(Parsed::Incomplete { needed }) => {
                // Once the 7-byte header is there, `needed` is exact:
                // appending that many bytes completes the frame (a frame or
                // an error, never "incomplete" again). Before that it is a
                // lower bound.
                let mut more = bytes.to_vec();
                if bytes.len() >= 7 && needed.get() < 1 << 20 {
                    more.resize(bytes.len() + needed.get(), 0xCE);
                    let r = parse_frame(&Bytes::from(more), FrameLimits::new(fm));
                    prop_assert!(!matches!(r, Ok(Parsed::Incomplete { .. })), "still incomplete: {:?}", r);
                }
            }
            Err(e) => {
                prop_assert!(e.code().is_hard(), "frame faults close the connection: {}", e);
                prop_assert!(e.code().0 >= 500);
                prop_assert!(!e.reply_text().is_empty() && e.reply_text().len() <= 255);
            }
        }
    }
}

#[test]
fn long_strings_share_big_input_and_copy_small() {
    let mut t = FieldTable::new();
    t.push(
        ShortString::from_static("small"),
        FieldValue::LongString(LongString::from("x".repeat(20))),
    );
    t.push(
        ShortString::from_static("big"),
        FieldValue::LongString(LongString::from("y".repeat(4096))),
    );
    let m = Method::from(method::QueueDeclare {
        queue: ShortString::from_static("q"),
        arguments: t,
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    Frame::method(1, m).encode(&mut buf).unwrap();
    let input = buf.freeze();
    let inside = |p: *const u8| {
        let start = input.as_ptr() as usize;
        (start..start + input.len()).contains(&(p as usize))
    };
    let Ok(Parsed::Complete { frame, .. }) = parse_frame(&input, FrameLimits::UNLIMITED) else {
        panic!("parse")
    };
    let FramePayload::Method(Method::QueueDeclare(d)) = frame.payload else {
        panic!("kind")
    };
    let small = d
        .arguments
        .get("small")
        .and_then(FieldValue::as_bytes)
        .unwrap();
    let big = d
        .arguments
        .get("big")
        .and_then(FieldValue::as_bytes)
        .unwrap();
    assert!(
        !inside(small.as_ptr()),
        "a 20-byte string must not pin the frame"
    );
    assert!(inside(big.as_ptr()), "a 4 KiB string is zero copy");
    assert!(!inside(d.queue.as_ptr()), "short strings own their bytes");
}

/// A body frame of `ZERO_COPY_MIN` bytes or more is a slice of the input;
/// a smaller one is copied (no reference-count traffic, and it does not
/// keep the read buffer alive). The boundary is checked on both sides.
#[test]
fn bodies_share_big_input_and_copy_small() {
    use amqp_wire::ZERO_COPY_MIN;
    for len in [0, 1, ZERO_COPY_MIN - 1, ZERO_COPY_MIN, 128 * 1024] {
        let body = Bytes::from(vec![7u8; len]);
        let mut buf = BytesMut::new();
        Frame::body(3, body.clone()).encode(&mut buf).unwrap();
        let input = buf.freeze();
        let Ok(Parsed::Complete { frame, consumed }) = parse_frame(&input, FrameLimits::UNLIMITED)
        else {
            panic!("parse {len}")
        };
        assert_eq!(consumed, input.len());
        let FramePayload::Body(b) = frame.payload else {
            panic!("kind")
        };
        assert_eq!(b, body, "{len}");
        let start = input.as_ptr() as usize;
        let inside = (start..start + input.len()).contains(&(b.as_ptr() as usize));
        if len >= ZERO_COPY_MIN {
            assert!(inside, "a {len}-byte body is zero copy");
        } else {
            assert!(
                len == 0 || !inside,
                "a {len}-byte body must not pin the input"
            );
        }
    }
}

/// Frames and tables larger than the scratch space's first size (4 KiB)
/// make it grow, through every API.
#[test]
fn large_frames_and_tables_encode_through_every_api() {
    for len in [4000usize, 4096, 5000, 70_000] {
        let mut t = FieldTable::new();
        t.insert("big", LongString::from(vec![b'z'; len]));
        t.insert("after", 1i32);
        let mut buf = BytesMut::new();
        let n = encode_field_table(&t, &mut buf).unwrap();
        assert_eq!(n, 4 + 1 + 3 + 1 + 4 + len + 1 + 5 + 1 + 4);
        assert_eq!(decode_field_table(&buf.clone().freeze()).unwrap(), t);
        let mut out = vec![0; n];
        assert_eq!(encode_field_table_to_slice(&t, &mut out), Ok(n));
        assert_eq!(out, buf);
        let frame = Frame::header(
            1,
            9,
            BasicProperties {
                headers: Some(t),
                ..Default::default()
            },
        );
        roundtrip(&frame);
    }
}
