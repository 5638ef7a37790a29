//! Reading, measuring and writing the primitive types, field values and
//! tables, and (from the protocol table) every method and the basic
//! properties.
//!
//! Every primitive implements [`Arg`] once; the method and property code is
//! generated from `amqp_types::for_each_method!` and
//! `amqp_types::for_each_basic_property!`, so nothing here is written per
//! method.

use crate::{Frame, FramePayload, Parsed};
use amqp_types::method::{self as m};
use amqp_types::{
    BasicProperties, Decimal, ErrorKind, FieldArray, FieldTable, FieldValue, LongString,
    MAX_NESTING_DEPTH, Method, ProtocolError, ReplyCode, ShortString,
};
use bytes::Bytes;

/// Long strings and message bodies at least this long are handed out as
/// slices of the input (zero copy); shorter ones are copied (a long string
/// inline in the `LongString` up to 22 bytes, else one small allocation) so
/// that a small value does not keep a large read buffer alive, and costs no
/// atomic reference-count updates.
pub const ZERO_COPY_MIN: usize = 128;

/// Why a payload failed to decode (internal and `Copy`, so the hot path
/// returns small results; turned into a `ProtocolError` at the boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    Truncated(&'static str),
    Overrun {
        what: &'static str,
        len: u64,
        available: usize,
    },
    UnknownType(u8),
    TooDeep,
    UnknownMethod,
}

/// A first guess at how many entries `len` bytes of a table or array hold
/// (`per_entry` bytes each, at most 32), so that a typical table is one
/// allocation instead of three or four as the vector doubles. `len` has
/// been checked against the bytes actually present, so the guess is never
/// driven by an unbacked length field; an empty container allocates nothing.
#[inline]
fn capacity_for(len: usize, per_entry: usize) -> usize {
    len.div_ceil(per_entry).min(32)
}

/// A cursor over one frame payload.
pub(crate) struct Reader<'a> {
    /// The whole input: strings are sliced (zero copy) or copied through
    /// a window that may run past the payload's end.
    buf: &'a Bytes,
    pub(crate) pos: usize,
    /// The input up to the end of the current region (payload, table or
    /// array): every read is one bounds check against it.
    data: &'a [u8],
    /// Mask of the next bit to read in `bits`; 0 when no octet is open.
    bit_mask: u16,
    bits: u8,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `start..end` of `buf` (`start <= end <= buf.len()`).
    pub(crate) fn new(buf: &'a Bytes, start: usize, end: usize) -> Self {
        Reader {
            buf,
            pos: start,
            data: &buf[..end],
            bit_mask: 0,
            bits: 0,
            depth: 0,
        }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Fail> {
        let Some(s) = self.data.get(self.pos..self.pos + n) else {
            return Err(Fail::Truncated(what));
        };
        self.pos += n;
        self.bit_mask = 0;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Fail> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, Fail> {
        Ok(self.array::<1>("octet")?[0])
    }
    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, Fail> {
        Ok(u16::from_be_bytes(self.array("short")?))
    }
    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, Fail> {
        Ok(u32::from_be_bytes(self.array("long")?))
    }
    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, Fail> {
        Ok(u64::from_be_bytes(self.array("longlong")?))
    }

    #[inline]
    fn bit(&mut self) -> Result<bool, Fail> {
        if self.bit_mask == 0 || self.bit_mask == 0x100 {
            let Some(&b) = self.data.get(self.pos) else {
                return Err(Fail::Truncated("bit"));
            };
            self.bits = b;
            self.pos += 1;
            self.bit_mask = 1;
        }
        let v = self.bits as u16 & self.bit_mask != 0;
        self.bit_mask <<= 1;
        Ok(v)
    }

    /// A length-prefixed slice whose length is checked against what is left.
    #[inline]
    fn sized(&mut self, len: usize, what: &'static str) -> Result<usize, Fail> {
        if len > self.remaining() {
            return Err(Fail::Overrun {
                what,
                len: len as u64,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += len;
        self.bit_mask = 0;
        Ok(start)
    }

    #[inline]
    fn short_string(&mut self) -> Result<ShortString, Fail> {
        let len = self.u8()?;
        let start = self.sized(len as usize, "short string")?;
        // The window runs on past the string to the end of the input, so
        // short strings copy with a few wide moves; the length has been
        // checked against the payload.
        Ok(ShortString::from_window_prefix(&self.buf[start..], len))
    }

    #[inline]
    fn long_bytes(&mut self, what: &'static str) -> Result<LongString, Fail> {
        let len = self.u32()? as usize;
        let start = self.sized(len, what)?;
        Ok(if len >= ZERO_COPY_MIN {
            LongString::shared(self.buf.slice(start..start + len))
        } else {
            // Inline up to 22 bytes, else one small allocation; the window
            // runs on to the end of the input so short ones copy wide.
            LongString::from_window(&self.buf[start..], len).expect("present")
        })
    }

    /// Runs `f` over the next `len`-prefixed region, with nesting depth
    /// checked and the region's end enforced.
    #[inline]
    fn nested<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self, usize) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let len = self.u32()? as usize;
        if self.depth >= MAX_NESTING_DEPTH {
            return Err(Fail::TooDeep);
        }
        let start = self.sized(len, what)?;
        let end = start + len;
        let saved = self.data;
        self.data = &saved[..end];
        self.pos = start;
        self.depth += 1;
        let r = f(self, end);
        self.depth -= 1;
        self.data = saved;
        r
    }

    /// Reads a table; scalar values are read inline in the loop, nested
    /// containers by a call.
    ///
    /// The key is checked first but built only once the value has been
    /// read, straight from the input, and each value arm hands its own
    /// variant to the push (no value merged from all arms on the stack).
    #[inline(never)]
    pub(crate) fn table(&mut self) -> Result<FieldTable, Fail> {
        self.nested("field table", |r, end| {
            let buf = r.buf;
            let mut entries = Vec::with_capacity(capacity_for(end - r.pos, 16));
            while r.pos < end {
                let klen = r.u8()?;
                let kstart = r.sized(klen as usize, "short string")?;
                // The window runs on past the key to the end of the input,
                // so short keys copy with a few wide moves (the length has
                // been checked against the table).
                let key = || ShortString::from_window_prefix(&buf[kstart..], klen);
                // Inlined into each arm: called (the compiler did not
                // inline it, as it is instantiated in all 17 arms), it took
                // each value through memory and copied it again, about 20
                // instructions per entry.
                r.value_with(
                    #[inline(always)]
                    |v| entries.push((key(), v)),
                )?;
            }
            Ok(FieldTable::from(entries))
        })
    }

    #[inline(never)]
    fn array_value(&mut self) -> Result<FieldArray, Fail> {
        self.nested("field array", |r, end| {
            let mut a = Vec::with_capacity(capacity_for(end - r.pos, 8));
            while r.pos < end {
                r.value_with(|v| a.push(v))?;
            }
            Ok(FieldArray::from(a))
        })
    }

    /// Reads one value (type letter and payload) and hands it to `f`; each
    /// arm makes its own call.
    #[inline(always)]
    fn value_with(&mut self, mut f: impl FnMut(FieldValue)) -> Result<(), Fail> {
        let letter = self.u8()?;
        match letter {
            b't' => f(FieldValue::Bool(self.u8()? != 0)),
            b'b' => f(FieldValue::I8(self.u8()? as i8)),
            b'B' => f(FieldValue::U8(self.u8()?)),
            b's' => f(FieldValue::I16(self.u16()? as i16)),
            b'u' => f(FieldValue::U16(self.u16()?)),
            b'I' => f(FieldValue::I32(self.u32()? as i32)),
            b'i' => f(FieldValue::U32(self.u32()?)),
            b'l' => f(FieldValue::I64(self.u64()? as i64)),
            b'f' => f(FieldValue::F32(f32::from_bits(self.u32()?))),
            b'd' => f(FieldValue::F64(f64::from_bits(self.u64()?))),
            b'D' => {
                let scale = self.u8()?;
                let value = self.u32()?;
                f(FieldValue::Decimal(Decimal { scale, value }))
            }
            b'S' => f(FieldValue::LongString(self.long_bytes("long string")?)),
            b'A' => f(FieldValue::Array(self.array_value()?)),
            b'T' => f(FieldValue::Timestamp(self.u64()?)),
            b'F' => f(FieldValue::Table(self.table()?)),
            b'V' => f(FieldValue::Void),
            b'x' => f(FieldValue::ByteArray(self.long_bytes("byte array")?)),
            other => {
                // Point the error at the type octet itself.
                self.pos -= 1;
                return Err(Fail::UnknownType(other));
            }
        }
        Ok(())
    }
}

/// Why a value cannot be serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Field tables or arrays nest deeper than [`MAX_NESTING_DEPTH`].
    #[error("field tables nested deeper than {MAX_NESTING_DEPTH} levels")]
    NestingTooDeep,
    /// A long string, table or frame is longer than its 32-bit length field
    /// can say.
    #[error("{what} of {len} bytes does not fit a 32-bit length")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: u64,
    },
    /// A field value this version of the encoder does not know.
    #[error("field value type {letter} is not supported by this encoder")]
    Unsupported {
        /// The value's type letter.
        letter: u8,
    },
    /// The destination buffer cannot grow to hold the frame.
    #[error("buffer has room for {available} bytes, the frame needs {needed}")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer can take.
        available: usize,
    },
}

/// Why a [`Writer`] could not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteFail {
    /// The destination slice is too small (the bytes written are garbage;
    /// measure and retry with more room).
    Full,
    /// The value cannot be encoded at all.
    Encode(EncodeError),
}

/// Writes an encoding in one pass straight into a `&mut [u8]`, patching
/// each table's and array's length once its entries are written. Every
/// write is one bounds check on the slice (no capacity bookkeeping, no
/// growth). Errors are sticky: running out of room or a value that cannot
/// be encoded (nesting too deep, a string or table over 4 GiB) is recorded,
/// writing carries on cheaply, and the caller discards the bytes.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pub(crate) pos: usize,
    bits: u8,
    nbits: u8,
    full: bool,
    depth: usize,
    error: Option<EncodeError>,
}

/// Copies `s` into `d` (same length) with a few fixed-size, possibly
/// overlapping moves for short slices instead of a `memcpy` call: keys and
/// short strings are mostly under 64 bytes.
#[inline(always)]
fn copy_small(d: &mut [u8], s: &[u8]) {
    let n = s.len();
    if n != d.len() {
        return; // not reached: callers pass equal lengths
    }
    if n > 64 {
        d.copy_from_slice(s);
    } else if n >= 32 {
        d[..32].copy_from_slice(&s[..32]);
        d[n - 32..].copy_from_slice(&s[n - 32..]);
    } else if n >= 16 {
        d[..16].copy_from_slice(&s[..16]);
        d[n - 16..].copy_from_slice(&s[n - 16..]);
    } else if n >= 8 {
        d[..8].copy_from_slice(&s[..8]);
        d[n - 8..].copy_from_slice(&s[n - 8..]);
    } else if n >= 4 {
        d[..4].copy_from_slice(&s[..4]);
        d[n - 4..].copy_from_slice(&s[n - 4..]);
    } else if n > 0 {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

impl<'a> Writer<'a> {
    /// A writer at `pos` in `buf`.
    pub(crate) fn new(buf: &'a mut [u8], pos: usize) -> Self {
        Writer {
            buf,
            pos,
            bits: 0,
            nbits: 0,
            full: false,
            depth: 0,
            error: None,
        }
    }

    /// Flushes pending bits and returns the end position, or the first
    /// error (an encoding error before running out of room).
    pub(crate) fn finish(mut self) -> Result<usize, WriteFail> {
        self.flush_bits();
        match (self.error, self.full) {
            (Some(e), _) => Err(WriteFail::Encode(e)),
            (None, true) => Err(WriteFail::Full),
            (None, false) => Ok(self.pos),
        }
    }

    #[cold]
    fn fail(&mut self, e: EncodeError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    #[cold]
    fn overflow(&mut self) {
        self.full = true;
    }

    /// Writes a fixed-size array.
    #[inline(always)]
    fn put<const N: usize>(&mut self, b: [u8; N]) {
        match self.buf.get_mut(self.pos..self.pos + N) {
            Some(d) => {
                d.copy_from_slice(&b);
                self.pos += N;
            }
            None => self.overflow(),
        }
    }

    /// Writes a one-octet length and the bytes of a short string (at most
    /// 255 bytes).
    #[inline(always)]
    fn put_short(&mut self, s: &[u8]) {
        let n = s.len();
        match self.buf.get_mut(self.pos..self.pos + 1 + n) {
            Some(d) => {
                d[0] = n as u8;
                copy_small(&mut d[1..], s);
                self.pos += 1 + n;
            }
            None => self.overflow(),
        }
    }

    /// Writes an optional prefix octet, a four-octet length and the bytes.
    #[inline(always)]
    fn put_long_with(&mut self, letter: Option<u8>, s: &[u8], what: &'static str) {
        let Ok(len) = u32::try_from(s.len()) else {
            return self.fail(EncodeError::TooLong {
                what,
                len: s.len() as u64,
            });
        };
        let head = letter.is_some() as usize;
        let n = s.len();
        match self.buf.get_mut(self.pos..self.pos + head + 4 + n) {
            Some(d) => {
                if let Some(l) = letter {
                    d[0] = l;
                }
                d[head..head + 4].copy_from_slice(&len.to_be_bytes());
                copy_small(&mut d[head + 4..], s);
                self.pos += head + 4 + n;
            }
            None => self.overflow(),
        }
    }

    #[inline]
    pub(crate) fn flush_bits(&mut self) {
        if self.nbits > 0 {
            let b = self.bits;
            self.bits = 0;
            self.nbits = 0;
            self.put([b]);
        }
    }

    #[inline]
    fn bit(&mut self, v: bool) {
        if self.nbits == 8 {
            self.flush_bits();
        }
        self.bits |= (v as u8) << self.nbits;
        self.nbits += 1;
    }

    #[inline]
    pub(crate) fn u8(&mut self, v: u8) {
        self.flush_bits();
        self.put([v]);
    }
    #[inline]
    pub(crate) fn u16(&mut self, v: u16) {
        self.flush_bits();
        self.put(v.to_be_bytes());
    }
    #[inline]
    pub(crate) fn u32(&mut self, v: u32) {
        self.flush_bits();
        self.put(v.to_be_bytes());
    }
    #[inline]
    pub(crate) fn u64(&mut self, v: u64) {
        self.flush_bits();
        self.put(v.to_be_bytes());
    }
    /// Writes raw bytes (a frame header).
    #[inline]
    pub(crate) fn raw<const N: usize>(&mut self, b: [u8; N]) {
        self.flush_bits();
        self.put(b);
    }
    /// Overwrites four bytes at `at` (a length patched after the fact).
    #[inline]
    pub(crate) fn patch_u32(&mut self, at: usize, v: u32) {
        if let Some(d) = self.buf.get_mut(at..at + 4) {
            d.copy_from_slice(&v.to_be_bytes());
        }
    }
    #[inline]
    fn short_string(&mut self, s: &ShortString) {
        self.flush_bits();
        self.put_short(s);
    }
    #[inline]
    fn long_bytes(&mut self, s: &[u8], what: &'static str) {
        self.flush_bits();
        self.put_long_with(None, s, what);
    }

    pub(crate) fn table(&mut self, t: &FieldTable) {
        self.flush_bits();
        put_table(self, t);
    }

    /// Starts a container: a length placeholder, returned as its offset.
    #[inline]
    fn open(&mut self) -> Option<usize> {
        if self.depth >= MAX_NESTING_DEPTH {
            self.fail(EncodeError::NestingTooDeep);
            return None;
        }
        self.depth += 1;
        let at = self.pos;
        self.put([0; 4]);
        Some(at)
    }

    /// Ends a container: patches its length.
    #[inline]
    fn close(&mut self, at: usize, what: &'static str) {
        self.depth -= 1;
        let len = self.pos.wrapping_sub(at + 4);
        if self.full {
            return;
        }
        match u32::try_from(len) {
            Ok(l) => self.patch_u32(at, l),
            Err(_) => self.fail(EncodeError::TooLong {
                what,
                len: len as u64,
            }),
        }
    }
}

// Tables and arrays never hold bits, so they are written straight into the
// buffer (no bit-packing checks per write), each scalar with its type letter
// as one fixed-size write.

/// Writes a table; scalar values are written inline in the loop, nested
/// containers by a call.
#[inline(never)]
fn put_table(w: &mut Writer<'_>, t: &FieldTable) {
    let Some(at) = w.open() else { return };
    for (k, v) in t {
        w.put_short(k);
        put_value(w, v);
    }
    w.close(at, "field table");
}

/// Writes an array's type letter and the array.
#[inline(never)]
fn put_array(w: &mut Writer<'_>, a: &FieldArray) {
    w.put([b'A']);
    let Some(at) = w.open() else { return };
    for v in a {
        put_value(w, v);
    }
    w.close(at, "field array");
}

/// Writes a type letter and a fixed-size big-endian value as one
/// fixed-size write.
macro_rules! put_tagged {
    ($w:expr, $letter:expr, [$($b:expr),*]) => {
        $w.put([$letter, $($b),*])
    };
    ($w:expr, $letter:expr, $bytes:expr; 2) => {{
        let b = $bytes;
        put_tagged!($w, $letter, [b[0], b[1]])
    }};
    ($w:expr, $letter:expr, $bytes:expr; 4) => {{
        let b = $bytes;
        put_tagged!($w, $letter, [b[0], b[1], b[2], b[3]])
    }};
    ($w:expr, $letter:expr, $bytes:expr; 8) => {{
        let b = $bytes;
        put_tagged!($w, $letter, [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }};
}

/// Writes one value with its type letter (each arm knows its letter).
#[inline(always)]
fn put_value(w: &mut Writer<'_>, v: &FieldValue) {
    match v {
        FieldValue::Bool(b) => put_tagged!(w, b't', [*b as u8]),
        FieldValue::I8(x) => put_tagged!(w, b'b', [*x as u8]),
        FieldValue::U8(x) => put_tagged!(w, b'B', [*x]),
        FieldValue::I16(x) => put_tagged!(w, b's', x.to_be_bytes(); 2),
        FieldValue::U16(x) => put_tagged!(w, b'u', x.to_be_bytes(); 2),
        FieldValue::I32(x) => put_tagged!(w, b'I', x.to_be_bytes(); 4),
        FieldValue::U32(x) => put_tagged!(w, b'i', x.to_be_bytes(); 4),
        FieldValue::I64(x) => put_tagged!(w, b'l', x.to_be_bytes(); 8),
        FieldValue::F32(x) => put_tagged!(w, b'f', x.to_bits().to_be_bytes(); 4),
        FieldValue::F64(x) => put_tagged!(w, b'd', x.to_bits().to_be_bytes(); 8),
        FieldValue::Decimal(d) => {
            let [a, b, c, e] = d.value.to_be_bytes();
            put_tagged!(w, b'D', [d.scale, a, b, c, e]);
        }
        FieldValue::LongString(s) => w.put_long_with(Some(b'S'), s, "long string"),
        FieldValue::ByteArray(s) => w.put_long_with(Some(b'x'), s, "byte array"),
        FieldValue::Array(a) => put_array(w, a),
        FieldValue::Timestamp(x) => put_tagged!(w, b'T', x.to_be_bytes(); 8),
        FieldValue::Table(t) => {
            w.put([b'F']);
            put_table(w, t);
        }
        FieldValue::Void => w.put([b'V']),
        other => w.fail(EncodeError::Unsupported {
            letter: other.letter(),
        }),
    }
}

/// One argument type: how to read and write it. Implemented once per
/// primitive; methods and properties are sequences of these.
pub(crate) trait Arg: Sized {
    fn read(r: &mut Reader<'_>) -> Result<Self, Fail>;
    fn write(&self, w: &mut Writer<'_>);
}

macro_rules! int_arg {
    ($($t:ty => $n:literal, $f:ident);* $(;)?) => {$(
        impl Arg for $t {
            #[inline]
            fn read(r: &mut Reader<'_>) -> Result<Self, Fail> { r.$f() }
            #[inline]
            fn write(&self, w: &mut Writer<'_>) { w.$f(*self) }
        }
    )*};
}
int_arg! { u8 => 1, u8; u16 => 2, u16; u32 => 4, u32; u64 => 8, u64 }

impl Arg for bool {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self, Fail> {
        r.bit()
    }
    #[inline]
    fn write(&self, w: &mut Writer<'_>) {
        w.bit(*self)
    }
}

impl Arg for ShortString {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self, Fail> {
        r.short_string()
    }
    #[inline]
    fn write(&self, w: &mut Writer<'_>) {
        w.short_string(self)
    }
}

impl Arg for LongString {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self, Fail> {
        r.long_bytes("long string")
    }
    #[inline]
    fn write(&self, w: &mut Writer<'_>) {
        w.long_bytes(self, "long string")
    }
}

impl Arg for FieldTable {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self, Fail> {
        r.table()
    }
    #[inline]
    fn write(&self, w: &mut Writer<'_>) {
        w.table(self)
    }
}

/// Reads one method's arguments (implemented for every method struct by
/// `gen_methods!`).
trait ReadMethod {
    fn read_frame(
        r: &mut Reader<'_>,
        channel: u16,
        consumed: usize,
    ) -> Result<Parsed<Frame>, ProtocolError>;
}

/// The error for a method payload that failed to decode, naming the method
/// and channel a close must carry.
#[cold]
#[inline(never)]
pub(crate) fn method_error(
    f: Fail,
    r: &Reader<'_>,
    channel: u16,
    class_id: u16,
    method_id: u16,
) -> ProtocolError {
    let e = match f {
        Fail::UnknownMethod => ProtocolError::connection(
            ReplyCode::COMMAND_INVALID,
            ErrorKind::UnknownMethod {
                class_id,
                method_id,
            },
        )
        .at_offset(r.pos.saturating_sub(4) as u64),
        f => f.into_error(r.pos),
    };
    e.on_channel(channel).with_method(class_id, method_id)
}

/// The error for bytes left over after the last field.
#[cold]
#[inline(never)]
pub(crate) fn trailing_error(r: &Reader<'_>) -> ProtocolError {
    ProtocolError::frame_error(ErrorKind::TrailingBytes {
        count: r.remaining(),
    })
    .at_offset(r.pos as u64)
}

impl Fail {
    /// The `ProtocolError` (501) for a decoding failure at `offset`.
    #[cold]
    #[inline(never)]
    pub(crate) fn into_error(self, offset: usize) -> ProtocolError {
        let kind = match self {
            Fail::Truncated(what) => ErrorKind::Truncated { what },
            Fail::Overrun {
                what,
                len,
                available,
            } => ErrorKind::LengthOverrun {
                what,
                len,
                available,
            },
            Fail::UnknownType(letter) => ErrorKind::UnknownFieldType { letter },
            Fail::TooDeep => ErrorKind::NestingTooDeep {
                limit: MAX_NESTING_DEPTH,
            },
            // Only method payloads can name an unknown method; see `method_error`.
            Fail::UnknownMethod => ErrorKind::UnknownMethod {
                class_id: 0,
                method_id: 0,
            },
        };
        ProtocolError::frame_error(kind).at_offset(offset as u64)
    }
}

macro_rules! gen_methods {
    ($(
        $Name:ident ( $cid:literal, $mid:literal, $($head:tt)* )
        { $( $f:ident : $ty:ident = $fname:literal ),* $(,)? }
    )*) => {
        $(
            impl ReadMethod for m::$Name {
                /// Reads the arguments into locals, checks that nothing is
                /// left over, and builds the whole parse result in place:
                /// `parse_frame` returns it as it is, so the method is never
                /// moved through intermediate `Result`s.
                #[inline(never)]
                fn read_frame(r: &mut Reader<'_>, channel: u16, consumed: usize) -> Result<Parsed<Frame>, ProtocolError> {
                    $(
                        let $f = match <$ty as Arg>::read(r) {
                            Ok(v) => v,
                            Err(f) => return Err(method_error(f, r, channel, $cid, $mid)),
                        };
                    )*
                    if r.remaining() != 0 {
                        return Err(trailing_error(r).on_channel(channel).with_method($cid, $mid));
                    }
                    Ok(Parsed::Complete {
                        frame: Frame {
                            channel,
                            payload: FramePayload::Method(Method::$Name(m::$Name { $( $f, )* })),
                        },
                        consumed,
                    })
                }
            }
        )*

        /// Decodes a method frame's arguments (the reader stands after the
        /// class and method ids) into the finished parse result.
        ///
        /// Each method is read by its own function: one `match` building all
        /// 66 variants inline made the compiler merge the arms into one tail
        /// that stored every variant's fields.
        #[inline]
        pub(crate) fn read_method_frame(
            class_id: u16,
            method_id: u16,
            r: &mut Reader<'_>,
            channel: u16,
            consumed: usize,
        ) -> Result<Parsed<Frame>, ProtocolError> {
            // The steady state of a busy connection is publishes, deliveries
            // and acks: they are tested first, one compare each, before the
            // search over all 66 methods.
            let key = (class_id as u32) << 16 | method_id as u32;
            if key == 60 << 16 | 80 {
                return <m::BasicAck as ReadMethod>::read_frame(r, channel, consumed);
            }
            if key == 60 << 16 | 40 {
                return <m::BasicPublish as ReadMethod>::read_frame(r, channel, consumed);
            }
            if key == 60 << 16 | 60 {
                return <m::BasicDeliver as ReadMethod>::read_frame(r, channel, consumed);
            }
            match (class_id, method_id) {
                $( ($cid, $mid) => <m::$Name as ReadMethod>::read_frame(r, channel, consumed), )*
                _ => Err(method_error(Fail::UnknownMethod, r, channel, class_id, method_id)),
            }
        }

        /// Writes a method's arguments (without the class and method ids).
        #[inline]
        pub(crate) fn write_method(method: &Method, w: &mut Writer<'_>) {
            match method {
                $(
                    #[allow(unused_variables)]
                    Method::$Name(x) => { $( Arg::write(&x.$f, w); )* }
                )*
                #[allow(unreachable_patterns)]
                _ => {}
            }
            w.flush_bits();
        }
    };
}
amqp_types::for_each_method!(gen_methods);

/// How a property value's length is found on the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    /// Always this many bytes.
    Fixed(usize),
    /// A 1-byte length, then that many bytes (short string).
    Len8,
    /// A 4-byte length, then that many bytes (field table).
    Len32,
}

/// The [`Shape`] of each property type.
pub(crate) trait HasShape {
    const SHAPE: Shape;
}
impl HasShape for u8 {
    const SHAPE: Shape = Shape::Fixed(1);
}
impl HasShape for u64 {
    const SHAPE: Shape = Shape::Fixed(8);
}
impl HasShape for ShortString {
    const SHAPE: Shape = Shape::Len8;
}
impl HasShape for FieldTable {
    const SHAPE: Shape = Shape::Len32;
}

macro_rules! gen_properties {
    ($( $f:ident : $ty:ident = $name:literal @ $bit:literal ),* $(,)?) => {
        #[inline]
        /// Reads the properties `flags` announces into `p` (all `None`),
        /// in place: the header is already in its box.
        pub(crate) fn read_properties_into(flags: u16, r: &mut Reader<'_>, p: &mut BasicProperties) -> Result<(), Fail> {
            $( if flags & (1 << $bit) != 0 { p.$f = Some(<$ty as Arg>::read(r)?); } )*
            Ok(())
        }

        #[inline]
        pub(crate) fn write_properties(p: &BasicProperties, w: &mut Writer<'_>) {
            $( if let Some(v) = &p.$f { Arg::write(v, w); } )*
        }

        /// Each property's flag bit and how its length is found, in wire
        /// order.
        pub(crate) const PROPERTY_SHAPES: [(u16, Shape); 14] =
            [$( (1 << $bit, <$ty as HasShape>::SHAPE) ),*];
    };
}
amqp_types::for_each_basic_property!(gen_properties);
