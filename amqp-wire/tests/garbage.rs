//! Hostile input, on purpose: each malformed, truncated or oversized frame
//! becomes the typed error with the reply code docs/DESIGN.md gives it, and never
//! a panic, an overflow or an allocation sized by an unchecked length.

use amqp_types::method::{self, BasicAck, QueueDeclare};
use amqp_types::{
    ErrorKind, FieldArray, FieldTable, FieldValue, Method, MethodKind, ReplyCode, Scope,
    ShortString,
};
use amqp_wire::{
    EncodeError, Frame, FrameLimits, FramePayload, Parsed, ProtocolError, decode_field_table,
    encode_field_table, parse_frame, parse_protocol_header,
};
use bytes::{BufMut, Bytes, BytesMut};

fn encode(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b).unwrap();
    b.to_vec()
}

fn parse(bytes: &[u8]) -> Result<Parsed<Frame>, ProtocolError> {
    parse_frame(&Bytes::copy_from_slice(bytes), FrameLimits::UNLIMITED)
}

fn err(bytes: &[u8]) -> ProtocolError {
    match parse(bytes) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A raw frame: type, channel, payload, end octet.
fn raw(frame_type: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut v = vec![frame_type];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(end);
    v
}

fn declare() -> Vec<u8> {
    encode(&Frame::method(
        5,
        QueueDeclare {
            queue: ShortString::from_static("orders"),
            durable: true,
            ..Default::default()
        },
    ))
}

#[test]
fn bad_end_octet_is_501_at_its_offset() {
    let mut f = declare();
    let last = f.len() - 1;
    f[last] = 0x00;
    let e = err(&f);
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    assert_eq!(e.scope(), Scope::Connection);
    assert_eq!(e.kind(), &ErrorKind::BadFrameEnd { found: 0 });
    assert_eq!(e.offset(), Some(last as u64));
    assert_eq!(e.channel_id(), 5);
}

#[test]
fn unknown_frame_types_are_501_from_the_header() {
    for t in [0u8, 4, 5, 7, 9, 0x41, 0xff] {
        let e = err(&raw(t, 1, b"", 0xce)[..7]);
        assert_eq!(e.code(), ReplyCode::FRAME_ERROR, "type {t}");
        assert_eq!(e.kind(), &ErrorKind::UnknownFrameType { frame_type: t });
    }
}

#[test]
fn unknown_class_or_method_is_503_naming_the_ids() {
    for (c, m) in [(60u16, 999u16), (99, 10), (0, 0), (10, 12)] {
        let mut p = c.to_be_bytes().to_vec();
        p.extend_from_slice(&m.to_be_bytes());
        let e = err(&raw(1, 3, &p, 0xce));
        assert_eq!(e.code(), ReplyCode::COMMAND_INVALID);
        assert_eq!(e.scope(), Scope::Connection);
        assert_eq!((e.class_id(), e.method_id()), (c, m));
        assert_eq!(e.channel_id(), 3);
    }
}

#[test]
fn size_beyond_frame_max_is_refused_from_seven_bytes() {
    let header = [3u8, 0, 1, 0, 0, 0x13, 0x88]; // body of 5000 bytes
    let e = parse_frame(&Bytes::copy_from_slice(&header), FrameLimits::new(4096)).unwrap_err();
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    assert_eq!(
        e.kind(),
        &ErrorKind::FrameTooLarge {
            size: 5000,
            frame_max: 4096
        }
    );
    // RabbitMQ's slack: a payload of exactly frame_max is still accepted.
    let ok = [3u8, 0, 1, 0, 0, 0x10, 0x00];
    assert!(matches!(
        parse_frame(&Bytes::copy_from_slice(&ok), FrameLimits::new(4096)),
        Ok(Parsed::Incomplete { .. })
    ));
}

#[test]
fn size_of_u32_max_overflows_nothing() {
    let header = [3u8, 0, 1, 0xff, 0xff, 0xff, 0xff];
    match parse_frame(&Bytes::copy_from_slice(&header), FrameLimits::UNLIMITED) {
        Ok(Parsed::Incomplete { needed }) => assert_eq!(needed.get() as u64, 0xffff_ffffu64 + 1),
        other => panic!("{other:?}"),
    }
    let e = parse_frame(&Bytes::copy_from_slice(&header), FrameLimits::new(131072)).unwrap_err();
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    let e = parse_frame(
        &Bytes::copy_from_slice(&header),
        FrameLimits::new(u32::MAX - 1),
    )
    .unwrap_err();
    assert_eq!(
        e.kind(),
        &ErrorKind::FrameTooLarge {
            size: u32::MAX,
            frame_max: u32::MAX - 1
        }
    );
}

#[test]
fn size_beyond_remaining_input_is_incomplete_with_exact_need() {
    let f = declare();
    for cut in 0..f.len() {
        match parse(&f[..cut]) {
            Ok(Parsed::Incomplete { needed }) => {
                if cut >= 7 {
                    assert_eq!(needed.get(), f.len() - cut);
                } else {
                    assert!(needed.get() <= f.len() - cut);
                }
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

#[test]
fn truncated_fields_inside_a_complete_frame_are_501_never_incomplete() {
    let f = declare();
    let payload = &f[7..f.len() - 1];
    for keep in 0..payload.len() {
        let e = err(&raw(1, 5, &payload[..keep], 0xce));
        assert_eq!(e.code(), ReplyCode::FRAME_ERROR, "payload cut at {keep}");
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Truncated { .. } | ErrorKind::LengthOverrun { .. }
            ),
            "{keep}: {:?}",
            e.kind()
        );
        if keep >= 4 {
            assert_eq!((e.class_id(), e.method_id()), (50, 10));
        }
    }
}

#[test]
fn trailing_bytes_in_a_method_payload_are_501() {
    let f = encode(&Frame::method(
        1,
        BasicAck {
            delivery_tag: 1,
            multiple: true,
        },
    ));
    let mut payload = f[7..f.len() - 1].to_vec();
    payload.extend_from_slice(&[0, 0, 0]);
    let e = err(&raw(1, 1, &payload, 0xce));
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    assert_eq!(e.kind(), &ErrorKind::TrailingBytes { count: 3 });
    assert_eq!((e.class_id(), e.method_id()), (60, 80));
    // Methods with no arguments take none.
    let e = err(&raw(1, 1, &[0, 90, 0, 10, 1], 0xce));
    assert_eq!(e.kind(), &ErrorKind::TrailingBytes { count: 1 });
}

fn table_frame(table_bytes: &[u8]) -> Vec<u8> {
    // queue.declare with an empty name and the given raw arguments table.
    let mut p = vec![0, 50, 0, 10, 0, 0, 0, 0];
    p.extend_from_slice(table_bytes);
    raw(1, 1, &p, 0xce)
}

#[test]
fn unknown_field_type_letter_is_501() {
    // {"k": U 1} with 'U', which the 0-9-1 spec lists but RabbitMQ does not.
    let entry = [1, b'k', b'U', 0, 1];
    let mut t = (entry.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(&entry);
    let e = err(&table_frame(&t));
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    assert_eq!(e.kind(), &ErrorKind::UnknownFieldType { letter: b'U' });
    assert_eq!(e.offset(), Some(7 + 8 + 4 + 2));
}

fn deep_table_bytes(depth: usize) -> Vec<u8> {
    // F{"a": F{"a": ... {} }}, built inside out.
    let mut inner: Vec<u8> = 0u32.to_be_bytes().to_vec();
    for _ in 1..depth {
        let mut entry = vec![1, b'a', b'F'];
        entry.extend_from_slice(&inner);
        inner = (entry.len() as u32).to_be_bytes().to_vec();
        inner.extend_from_slice(&entry);
    }
    inner
}

#[test]
fn ten_thousand_deep_tables_are_refused_without_recursion() {
    let e = err(&table_frame(&deep_table_bytes(10_000)));
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    assert!(matches!(e.kind(), ErrorKind::NestingTooDeep { .. }));
    // Exactly at the limit it parses.
    let ok = deep_table_bytes(amqp_types::MAX_NESTING_DEPTH);
    assert!(matches!(
        parse(&table_frame(&ok)),
        Ok(Parsed::Complete { .. })
    ));
    let over = deep_table_bytes(amqp_types::MAX_NESTING_DEPTH + 1);
    assert!(matches!(
        err(&table_frame(&over)).kind(),
        ErrorKind::NestingTooDeep { .. }
    ));
    // Arrays count too.
    let mut arr: Vec<u8> = 0u32.to_be_bytes().to_vec();
    for _ in 0..10_000 {
        let mut v = vec![b'A'];
        v.extend_from_slice(&arr);
        arr = (v.len() as u32).to_be_bytes().to_vec();
        arr.extend_from_slice(&v);
    }
    let mut entry = vec![1, b'a', b'A'];
    entry.extend_from_slice(&arr);
    let mut t = (entry.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(&entry);
    assert!(matches!(
        err(&table_frame(&t)).kind(),
        ErrorKind::NestingTooDeep { .. }
    ));
}

#[test]
fn the_serializer_refuses_what_the_parser_would() {
    let mut v = FieldValue::Void;
    for _ in 0..10_000 {
        let mut t = FieldTable::new();
        t.push(ShortString::from_static("a"), v);
        v = FieldValue::Table(t);
    }
    let FieldValue::Table(deep) = v else {
        unreachable!()
    };
    let mut buf = BytesMut::new();
    assert_eq!(
        encode_field_table(&deep, &mut buf),
        Err(EncodeError::NestingTooDeep)
    );
    assert!(buf.is_empty(), "nothing written on error");
    let frame = Frame::method(
        1,
        QueueDeclare {
            arguments: deep,
            ..Default::default()
        },
    );
    assert_eq!(frame.encode(&mut buf), Err(EncodeError::NestingTooDeep));
    assert!(buf.is_empty());
    // The slice APIs refuse it too, whether or not the slice has room.
    for room in [16, 1 << 20] {
        let mut out = vec![0u8; room];
        assert_eq!(
            frame.encode_to_slice(&mut out),
            Err(EncodeError::NestingTooDeep)
        );
        let mut v = Vec::new();
        assert_eq!(
            frame.encode_to_vec(&mut v),
            Err(EncodeError::NestingTooDeep)
        );
        assert!(v.is_empty());
    }
    if let FramePayload::Method(Method::QueueDeclare(q)) = &frame.payload {
        let mut out = vec![0u8; 1 << 20];
        assert_eq!(
            amqp_wire::encode_field_table_to_slice(&q.arguments, &mut out),
            Err(EncodeError::NestingTooDeep)
        );
    }
    // Deep drops are iterative enough not to overflow in the test thread.
    drop(frame);
    let mut a = FieldArray::new();
    a.push(1i32);
    assert!(
        encode_field_table(
            &FieldTable::from(vec![(ShortString::from_static("x"), FieldValue::Array(a))]),
            &mut buf
        )
        .is_ok()
    );
}

#[test]
fn short_string_claiming_255_with_3_present_is_501() {
    // queue.declare: ticket, then a queue name claiming 255 bytes.
    let mut p = vec![0, 50, 0, 10, 0, 0, 255, b'a', b'b', b'c'];
    let e = err(&raw(1, 1, &p, 0xce));
    assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
    assert_eq!(
        e.kind(),
        &ErrorKind::LengthOverrun {
            what: "short string",
            len: 255,
            available: 3
        }
    );
    // A long string claiming 4 GiB with nothing behind it: no allocation.
    p = vec![0, 10, 0, 21, 0xff, 0xff, 0xff, 0xff];
    let e = err(&raw(1, 0, &p, 0xce));
    assert!(matches!(
        e.kind(),
        ErrorKind::LengthOverrun {
            len: 0xffff_ffff,
            ..
        }
    ));
    // A table claiming more than the payload holds.
    let e = err(&table_frame(&[0, 0, 1, 0, 1]));
    assert!(matches!(
        e.kind(),
        ErrorKind::LengthOverrun {
            what: "field table",
            ..
        }
    ));
}

#[test]
fn bit_packing_across_argument_boundaries() {
    // queue.declare: passive, durable, exclusive, auto-delete, nowait share
    // one octet, low bit first; the table after them starts a new octet.
    let f = encode(&Frame::method(
        1,
        QueueDeclare {
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
    ));
    // header 7 | class 2 | method 2 | ticket 2 | queue 1 | bits 1 | table 4 | end
    assert_eq!(f[7 + 7], 0b0000_1010);
    assert_eq!(&f[7 + 8..7 + 12], &[0, 0, 0, 0]);
    // basic.nack: a longlong, then two bits in one octet.
    let f = encode(&Frame::method(
        1,
        method::BasicNack {
            delivery_tag: 9,
            multiple: false,
            requeue: true,
        },
    ));
    assert_eq!(f.len(), 7 + 4 + 8 + 1 + 1);
    assert_eq!(f[7 + 12], 0b10);
    // access.request: a short string, then five bits.
    let f = encode(&Frame::method(
        1,
        method::AccessRequest {
            realm: ShortString::from_static("/data"),
            exclusive: true,
            read: true,
            ..Default::default()
        },
    ));
    assert_eq!(f[7 + 4 + 6], 0b1_0001);
    // Unused high bits on input are ignored, and re-encoded as zero.
    let mut p = vec![0, 60, 0, 80];
    p.extend_from_slice(&7u64.to_be_bytes());
    p.push(0xff);
    let Ok(Parsed::Complete { frame, .. }) = parse(&raw(1, 1, &p, 0xce)) else {
        panic!()
    };
    assert_eq!(
        frame.payload,
        FramePayload::Method(Method::from(BasicAck {
            delivery_tag: 7,
            multiple: true
        }))
    );
    assert_eq!(*encode(&frame).get(7 + 12).unwrap(), 1);
    // A bit with no octet left is a truncation.
    let e = err(&raw(1, 1, &p[..12], 0xce));
    assert_eq!(e.kind(), &ErrorKind::Truncated { what: "bit" });
}

#[test]
fn boolean_octets_other_than_one_read_as_true() {
    let entry = [1, b'b', b't', 2];
    let mut t = (entry.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(&entry);
    let table = decode_field_table(&Bytes::from(t)).unwrap();
    assert_eq!(table.get("b"), Some(&FieldValue::Bool(true)));
}

#[test]
fn heartbeat_with_a_payload_is_501_and_on_other_channels_parses() {
    let e = err(&raw(8, 0, &[1, 2], 0xce));
    assert_eq!(e.kind(), &ErrorKind::BadHeartbeat { size: 2 });
    // Channel 1: a sequence fault (505) judged by the codec, not here.
    let Ok(Parsed::Complete { frame, .. }) = parse(&raw(8, 1, &[], 0xce)) else {
        panic!()
    };
    assert_eq!(frame.channel, 1);
}

#[test]
fn content_headers_are_checked() {
    // Class 50 has no content.
    let mut p = vec![0, 50, 0, 0];
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    assert_eq!(
        err(&raw(2, 1, &p, 0xce)).kind(),
        &ErrorKind::UnknownContentClass { class_id: 50 }
    );
    // Reserved flag bits (bit 0 = continuation, bit 1 unused).
    for flags in [0x0001u16, 0x0002] {
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        assert_eq!(
            err(&raw(2, 1, &p, 0xce)).kind(),
            &ErrorKind::BadPropertyFlags { flags }
        );
    }
    // A flag announcing a property that is not there.
    let mut p = vec![0, 60, 0, 0];
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&0x8000u16.to_be_bytes());
    assert_eq!(err(&raw(2, 1, &p, 0xce)).code(), ReplyCode::FRAME_ERROR);
    // Too short for the fixed part.
    assert_eq!(
        err(&raw(2, 1, &[0, 60, 0], 0xce)).code(),
        ReplyCode::FRAME_ERROR
    );
}

#[test]
fn method_payload_too_short_for_ids() {
    for p in [&[][..], &[0], &[0, 60, 0]] {
        let e = err(&raw(1, 1, p, 0xce));
        assert_eq!(
            e.kind(),
            &ErrorKind::Truncated {
                what: "class and method ids"
            }
        );
    }
}

#[test]
fn protocol_headers() {
    assert!(matches!(
        parse_protocol_header(b"AMQ"),
        Ok(Parsed::Incomplete { .. })
    ));
    let Ok(Parsed::Complete { frame, consumed: 8 }) =
        parse_protocol_header(b"AMQP\x01\x01\x00\x0a")
    else {
        panic!()
    };
    assert!(!frame.is_0_9_1());
    let e = parse_protocol_header(b"GET / HTTP/1.1\r\n").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::BadProtocolHeader { .. }));
    // Refused as soon as the first byte cannot start "AMQP".
    assert!(parse_protocol_header(b"G").is_err());
}

#[test]
fn encoding_into_a_full_buffer_fails_cleanly() {
    let mut space = [0u8; 10];
    let mut dst: &mut [u8] = &mut space;
    let r = Frame::method(
        1,
        BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    )
    .encode(&mut dst);
    assert_eq!(
        r,
        Err(EncodeError::BufferTooSmall {
            needed: 21,
            available: 10
        })
    );
    assert_eq!(space, [0u8; 10]);
}

#[test]
fn body_frames_can_go_out_without_copying() {
    let body = Bytes::from(vec![0xCEu8; 100]);
    let mut head = BytesMut::new();
    amqp_wire::write_body_frame_header(&mut head, 4, body.len() as u32);
    let mut stream = head.to_vec();
    stream.extend_from_slice(&body);
    stream.put_u8(amqp_wire::FRAME_END);
    let Ok(Parsed::Complete { frame, .. }) = parse(&stream) else {
        panic!()
    };
    assert_eq!(frame, Frame::body(4, body));
}

#[test]
fn every_method_id_neighbour_is_unknown_or_decodes() {
    // Walk every (class, method) pair in the classes we know, with an empty
    // payload: known methods with arguments are truncations (501), methods
    // without arguments decode, unknown pairs are 503. Never a panic.
    for class in [10u16, 20, 30, 40, 50, 60, 85, 90] {
        for m in 0..=130u16 {
            let mut p = class.to_be_bytes().to_vec();
            p.extend_from_slice(&m.to_be_bytes());
            let r = parse(&raw(1, 1, &p, 0xce));
            match MethodKind::from_ids(class, m) {
                None => assert_eq!(r.unwrap_err().code(), ReplyCode::COMMAND_INVALID),
                Some(k) if k.info().fields.is_empty() => {
                    assert!(matches!(r, Ok(Parsed::Complete { .. })))
                }
                Some(_) => assert_eq!(r.unwrap_err().code(), ReplyCode::FRAME_ERROR),
            }
        }
    }
}
