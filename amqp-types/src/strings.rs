//! AMQP short strings (at most 255 bytes) and long strings.

use bytes::Bytes;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Bytes a [`ShortString`] keeps inline, without a heap allocation.
const INLINE_CAP: usize = 38;

/// An AMQP `shortstr`: at most 255 bytes, not necessarily UTF-8.
///
/// The length is checked when the value is built, so every `ShortString`
/// serializes. A short string owns its bytes: it never keeps a read buffer
/// alive (a 20-byte routing key does not pin a 128 KiB frame). Strings of up
/// to 38 bytes, which covers almost every exchange, queue, routing key and
/// consumer tag seen in practice, are stored inline without allocating;
/// longer ones share one reference-counted allocation, so cloning is cheap
/// either way.
///
/// ```
/// use amqp_types::ShortString;
/// let key = ShortString::try_from("orders.eu.created").unwrap();
/// assert_eq!(key.as_str(), Some("orders.eu.created"));
/// assert!(ShortString::try_from(vec![b'x'; 256]).is_err());
/// ```
#[derive(Clone)]
pub struct ShortString(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE_CAP] },
    Shared(Bytes),
}

/// Copies at most `N` (at most 38) bytes into a zeroed inline buffer with a
/// few fixed-size (overlapping) moves instead of a variable-length `memcpy`
/// call: short and long strings are built inline for every key, name and
/// small value a parser reads.
#[inline(always)]
fn inline_copy<const N: usize>(src: &[u8]) -> [u8; N] {
    let mut buf = [0u8; N];
    let n = src.len();
    if n > N {
        return buf; // not reached: callers check the length
    }
    if n >= 16 {
        buf[..16].copy_from_slice(&src[..16]);
        if n > 32 {
            buf[16..32].copy_from_slice(&src[16..32]);
        }
        buf[n - 16..n].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        buf[..8].copy_from_slice(&src[..8]);
        buf[n - 8..n].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        buf[..4].copy_from_slice(&src[..4]);
        buf[n - 4..n].copy_from_slice(&src[n - 4..]);
    } else if n > 0 {
        buf[0] = src[0];
        buf[n / 2] = src[n / 2];
        buf[n - 1] = src[n - 1];
    }
    buf
}

/// 48 bytes of `0xFF` then 48 zeros: the 48 bytes from `48 - n` on keep
/// the first `n` bytes of a window and clear the rest.
static KEEP_FIRST: [u8; 96] = {
    let mut a = [0u8; 96];
    let mut i = 0;
    while i < 48 {
        a[i] = 0xFF;
        i += 1;
    }
    a
};

/// The first `n` (at most `N`) bytes of `w`, zero-padded to `N`: the window
/// is ANDed with a mask read from [`KEEP_FIRST`] at an offset given by the
/// length, which the compiler turns into a few whole-register loads, ANDs
/// and stores (no per-chunk shift arithmetic, and never a result assembled
/// from overlapping byte-sized stores). `W` is `N` rounded up to a multiple
/// of 16, at most 48.
#[inline(always)]
fn masked_copy<const W: usize, const N: usize>(w: &[u8; W], n: usize) -> [u8; N] {
    const { assert!(N <= W && W <= 48) };
    let n = n.min(W);
    let Some(mask) = KEEP_FIRST[48 - n..].first_chunk::<W>() else {
        unreachable!("48 - n + W <= 96")
    };
    let mut full = [0u8; W];
    for ((d, &b), &m) in full.iter_mut().zip(w).zip(mask) {
        *d = b & m;
    }
    let mut buf = [0u8; N];
    buf.copy_from_slice(&full[..N]);
    buf
}

/// The error for a short string longer than 255 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("short string of {0} bytes exceeds the 255-byte limit")]
pub struct ShortStringTooLong(pub usize);

impl ShortString {
    /// The longest short string, in bytes.
    pub const MAX_LEN: usize = 255;

    /// The empty short string.
    pub const EMPTY: ShortString = ShortString(Repr::Inline {
        len: 0,
        buf: [0; INLINE_CAP],
    });

    /// Copies `bytes` into a new short string, or fails if it is longer than
    /// 255 bytes.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ShortStringTooLong> {
        if bytes.len() > Self::MAX_LEN {
            return Err(ShortStringTooLong(bytes.len()));
        }
        Ok(Self::copy_unchecked(bytes))
    }

    /// Copies the first `len` bytes of `window` into a new short string, or
    /// returns `None` if `len` is over 255 or `window` is shorter than `len`.
    ///
    /// Equal to `ShortString::from_bytes(&window[..len])`, but faster for a
    /// parser: when `window` runs on for a few dozen bytes past the string
    /// (the rest of an input buffer), a short string is copied with three
    /// wide masked moves instead of byte-sized ones.
    ///
    /// ```
    /// use amqp_types::ShortString;
    /// let input = b"orders.eu.created and whatever follows in the frame";
    /// let s = ShortString::from_window(input, 17).unwrap();
    /// assert_eq!(s, "orders.eu.created");
    /// assert!(ShortString::from_window(b"abc", 4).is_none());
    /// ```
    #[inline]
    pub fn from_window(window: &[u8], len: usize) -> Option<Self> {
        if len > window.len() {
            return None;
        }
        let len = u8::try_from(len).ok()?;
        Some(Self::from_window_prefix(window, len))
    }

    /// Copies the first `len` bytes of `window` into a new short string, or
    /// all of `window` if it is shorter: [`from_window`](Self::from_window)
    /// for a parser that has already checked the length against its input.
    ///
    /// It returns the string itself, not an `Option`, and takes the length
    /// as a `u8`, so a parser neither repeats its length checks nor unwraps
    /// a result.
    ///
    /// ```
    /// use amqp_types::ShortString;
    /// let input = b"orders.eu.created and whatever follows in the frame";
    /// assert_eq!(ShortString::from_window_prefix(input, 17), "orders.eu.created");
    /// assert_eq!(ShortString::from_window_prefix(b"abc", 4), "abc");
    /// ```
    #[inline]
    pub fn from_window_prefix(window: &[u8], len: u8) -> Self {
        let len = (len as usize).min(window.len());
        if len <= INLINE_CAP
            && let Some(w) = window.first_chunk::<48>()
        {
            return ShortString(Repr::Inline {
                len: len as u8,
                buf: masked_copy(w, len),
            });
        }
        Self::from_window_rare(window, len)
    }

    /// [`from_window`](Self::from_window) for a string that is long or
    /// near the end of the window: out of line, so that the common path
    /// saves no registers for it.
    #[cold]
    #[inline(never)]
    fn from_window_rare(window: &[u8], len: usize) -> Self {
        Self::copy_unchecked(&window[..len])
    }

    /// Builds a short string from a static string without copying it.
    ///
    /// # Panics
    ///
    /// Panics if `s` is longer than 255 bytes; meant for constants.
    pub fn from_static(s: &'static str) -> Self {
        assert!(
            s.len() <= Self::MAX_LEN,
            "short string longer than 255 bytes"
        );
        if s.len() <= INLINE_CAP {
            Self::copy_unchecked(s.as_bytes())
        } else {
            ShortString(Repr::Shared(Bytes::from_static(s.as_bytes())))
        }
    }

    #[inline]
    fn copy_unchecked(bytes: &[u8]) -> Self {
        debug_assert!(bytes.len() <= Self::MAX_LEN);
        if bytes.len() <= INLINE_CAP {
            ShortString(Repr::Inline {
                len: bytes.len() as u8,
                buf: inline_copy::<INLINE_CAP>(bytes),
            })
        } else {
            ShortString(Repr::Shared(Bytes::copy_from_slice(bytes)))
        }
    }

    /// The bytes of the string.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Shared(b) => b,
        }
    }

    /// The string as UTF-8, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The string with invalid UTF-8 sequences replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// The length in bytes (0 to 255).
    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the string is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ShortString {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Deref for ShortString {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for ShortString {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for ShortString {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for ShortString {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for ShortString {}

impl PartialOrd for ShortString {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ShortString {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for ShortString {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq<str> for ShortString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl PartialEq<&str> for ShortString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl PartialEq<[u8]> for ShortString {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl fmt::Debug for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "{:?}", Bytes::copy_from_slice(self.as_bytes())),
        }
    }
}

impl fmt::Display for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl TryFrom<&[u8]> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(v: &[u8]) -> Result<Self, Self::Error> {
        Self::from_bytes(v)
    }
}
impl TryFrom<&str> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(v: &str) -> Result<Self, Self::Error> {
        Self::from_bytes(v.as_bytes())
    }
}
impl TryFrom<String> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(v: String) -> Result<Self, Self::Error> {
        Self::from_bytes(v.as_bytes())
    }
}
impl TryFrom<&String> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(v: &String) -> Result<Self, Self::Error> {
        Self::from_bytes(v.as_bytes())
    }
}
impl TryFrom<Vec<u8>> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        if v.len() > Self::MAX_LEN {
            return Err(ShortStringTooLong(v.len()));
        }
        if v.len() <= INLINE_CAP {
            Ok(Self::copy_unchecked(&v))
        } else {
            Ok(ShortString(Repr::Shared(Bytes::from(v))))
        }
    }
}
impl TryFrom<Bytes> for ShortString {
    type Error = ShortStringTooLong;
    /// Takes the bytes; a slice of a larger buffer is copied so that it
    /// does not keep that buffer alive.
    fn try_from(v: Bytes) -> Result<Self, Self::Error> {
        Self::from_bytes(&v)
    }
}

impl std::str::FromStr for ShortString {
    type Err = ShortStringTooLong;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes())
    }
}

/// An AMQP `longstr` (and the `S` and `x` field values): up to 2³²−1 bytes,
/// not necessarily UTF-8.
///
/// Up to 22 bytes (most header values, content types, reasons) are stored
/// inline without allocating; longer strings are [`Bytes`], which parsers
/// may hand out as slices of the frame they came from (zero copy; see
/// `amqp-wire` for when they copy instead). Either way a `LongString` is 32
/// bytes and cheap to clone.
///
/// ```
/// use amqp_types::LongString;
/// let s = LongString::from("PLAIN AMQPLAIN");
/// assert_eq!(s.as_str(), Some("PLAIN AMQPLAIN"));
/// assert_eq!(s.len(), 14);
/// assert_eq!(std::mem::size_of::<LongString>(), 32);
/// ```
#[derive(Clone)]
pub struct LongString(LongRepr);

/// Bytes a [`LongString`] keeps inline.
const LONG_INLINE_CAP: usize = 22;

#[derive(Clone)]
enum LongRepr {
    Inline { len: u8, buf: [u8; LONG_INLINE_CAP] },
    Shared(Bytes),
}

impl Default for LongString {
    fn default() -> Self {
        LongString(LongRepr::Inline {
            len: 0,
            buf: [0; LONG_INLINE_CAP],
        })
    }
}

impl PartialEq for LongString {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for LongString {}
impl PartialOrd for LongString {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for LongString {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl Hash for LongString {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl LongString {
    /// Wraps bytes as a long string (short ones are copied inline, so that
    /// they do not keep a larger buffer alive).
    pub fn new(bytes: Bytes) -> Self {
        if bytes.len() <= LONG_INLINE_CAP {
            Self::copy_from(&bytes)
        } else {
            LongString(LongRepr::Shared(bytes))
        }
    }

    /// Wraps bytes as a long string without looking at their length: the
    /// string shares `bytes` whatever its size.
    pub const fn shared(bytes: Bytes) -> Self {
        LongString(LongRepr::Shared(bytes))
    }

    /// Copies `bytes` into a new long string (inline when short).
    #[inline]
    pub fn copy_from(bytes: &[u8]) -> Self {
        if bytes.len() <= LONG_INLINE_CAP {
            LongString(LongRepr::Inline {
                len: bytes.len() as u8,
                buf: inline_copy::<LONG_INLINE_CAP>(bytes),
            })
        } else {
            LongString(LongRepr::Shared(Bytes::copy_from_slice(bytes)))
        }
    }

    /// Copies the first `len` bytes of `window` into a new long string
    /// (inline when short), or returns `None` if `window` is shorter than
    /// `len`.
    ///
    /// Equal to `LongString::copy_from(&window[..len])`, but faster for a
    /// parser: when `window` runs on past the string (the rest of an input
    /// buffer), a short string is copied with two wide masked moves.
    ///
    /// ```
    /// use amqp_types::LongString;
    /// let s = LongString::from_window(b"acme-eu, then other bytes of the frame", 7).unwrap();
    /// assert_eq!(s, "acme-eu");
    /// assert!(LongString::from_window(b"abc", 4).is_none());
    /// ```
    #[inline]
    pub fn from_window(window: &[u8], len: usize) -> Option<Self> {
        if len > window.len() {
            return None;
        }
        if len <= LONG_INLINE_CAP
            && let Some(w) = window.first_chunk::<32>()
        {
            let buf = masked_copy(w, len);
            return Some(LongString(LongRepr::Inline {
                len: len as u8,
                buf,
            }));
        }
        Some(Self::from_window_rare(window, len))
    }

    /// [`from_window`](Self::from_window) for a string stored on the heap
    /// or near the end of the window, out of line.
    #[inline(never)]
    fn from_window_rare(window: &[u8], len: usize) -> Self {
        Self::copy_from(&window[..len])
    }

    /// A long string from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        LongString(LongRepr::Shared(Bytes::from_static(s.as_bytes())))
    }

    /// The bytes of the string.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            LongRepr::Inline { len, buf } => &buf[..*len as usize],
            LongRepr::Shared(b) => b,
        }
    }

    /// The string as [`Bytes`]: a cheap clone when it is shared, a copy
    /// when it is stored inline.
    pub fn bytes(&self) -> Bytes {
        match &self.0 {
            LongRepr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            LongRepr::Shared(b) => b.clone(),
        }
    }

    /// Unwraps the string as [`Bytes`] (a copy when it is stored inline).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            LongRepr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            LongRepr::Shared(b) => b,
        }
    }

    /// Whether the string shares a [`Bytes`] buffer (rather than being
    /// stored inline).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, LongRepr::Shared(_))
    }

    /// The string as UTF-8, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The string with invalid UTF-8 sequences replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// The length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the string is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Deref for LongString {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for LongString {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => fmt::Debug::fmt(s, f),
            None => write!(f, "{:?}", Bytes::copy_from_slice(self.as_bytes())),
        }
    }
}

impl fmt::Display for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl From<Bytes> for LongString {
    fn from(v: Bytes) -> Self {
        LongString::new(v)
    }
}
impl From<Vec<u8>> for LongString {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= LONG_INLINE_CAP {
            LongString::copy_from(&v)
        } else {
            LongString(LongRepr::Shared(Bytes::from(v)))
        }
    }
}
impl From<String> for LongString {
    fn from(v: String) -> Self {
        LongString::from(v.into_bytes())
    }
}
impl From<&str> for LongString {
    fn from(v: &str) -> Self {
        LongString::copy_from(v.as_bytes())
    }
}
impl From<&[u8]> for LongString {
    fn from(v: &[u8]) -> Self {
        LongString::copy_from(v)
    }
}
impl From<ShortString> for LongString {
    fn from(v: ShortString) -> Self {
        LongString::copy_from(v.as_bytes())
    }
}
impl PartialEq<str> for LongString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl PartialEq<&str> for LongString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_string_limits() {
        assert!(ShortString::from_bytes(&[b'a'; 255]).is_ok());
        assert_eq!(
            ShortString::from_bytes(&[b'a'; 256]),
            Err(ShortStringTooLong(256))
        );
        assert_eq!(
            ShortString::try_from(vec![0u8; 300]).unwrap_err(),
            ShortStringTooLong(300)
        );
    }

    #[test]
    fn inline_and_shared_compare_equal() {
        let long = "x".repeat(100);
        let a = ShortString::try_from(long.as_str()).unwrap();
        let b = ShortString::try_from(long.clone().into_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 100);
        let short = ShortString::from_static("amq.direct");
        assert_eq!(short, "amq.direct");
        assert_eq!(ShortString::from_static(""), ShortString::EMPTY);
        assert!(std::mem::size_of::<ShortString>() <= 40);
    }

    #[test]
    fn inline_copy_every_length() {
        let src: Vec<u8> = (1..=255u8).collect();
        for n in 0..=ShortString::MAX_LEN {
            let s = ShortString::from_bytes(&src[..n]).unwrap();
            assert_eq!(s.as_bytes(), &src[..n], "length {n}");
            if n <= INLINE_CAP {
                let Repr::Inline { buf, .. } = &s.0 else {
                    panic!("length {n} should be inline")
                };
                assert!(
                    buf[n..].iter().all(|&b| b == 0),
                    "length {n}: tail not zero"
                );
            }
        }
    }

    #[test]
    fn long_string_inline_copy_every_length() {
        let src: Vec<u8> = (1..=64u8).collect();
        for n in 0..=64 {
            let s = LongString::copy_from(&src[..n]);
            assert_eq!(s.as_bytes(), &src[..n], "length {n}");
            assert_eq!(s.is_shared(), n > LONG_INLINE_CAP, "length {n}");
            if let LongRepr::Inline { buf, .. } = &s.0 {
                assert!(buf[n..].iter().all(|&b| b == 0), "length {n}: tail");
            }
            assert_eq!(s, LongString::from(src[..n].to_vec()));
        }
    }

    #[test]
    fn from_window_equals_from_bytes() {
        let src: Vec<u8> = (1..=255u8).chain(1..=100).collect();
        for n in 0..=ShortString::MAX_LEN {
            for extra in [0usize, 1, 10, 47, 48, 100] {
                let window = &src[..(n + extra).min(src.len())];
                let s = ShortString::from_window(window, n).unwrap();
                assert_eq!(
                    s,
                    ShortString::from_bytes(&src[..n]).unwrap(),
                    "{n}+{extra}"
                );
                if let Repr::Inline { buf, .. } = &s.0 {
                    assert!(buf[n..].iter().all(|&b| b == 0), "{n}+{extra}: tail");
                }
            }
        }
        assert!(ShortString::from_window(&src, 256).is_none());
        assert!(ShortString::from_window(&src[..3], 4).is_none());
    }

    #[test]
    fn from_window_prefix_equals_from_bytes_or_the_whole_window() {
        let src: Vec<u8> = (1..=255u8).chain(1..=100).collect();
        for n in 0..=255u8 {
            for extra in [0usize, 1, 10, 47, 48, 100] {
                let window = &src[..(n as usize + extra).min(src.len())];
                let s = ShortString::from_window_prefix(window, n);
                assert_eq!(s, ShortString::from_bytes(&src[..n as usize]).unwrap());
                if let Repr::Inline { buf, .. } = &s.0 {
                    assert!(
                        buf[n as usize..].iter().all(|&b| b == 0),
                        "{n}+{extra}: tail"
                    );
                }
            }
        }
        // A window shorter than the length gives the whole window.
        assert_eq!(ShortString::from_window_prefix(&src[..3], 4), src[..3]);
        assert_eq!(ShortString::from_window_prefix(&src[..60], 200), src[..60]);
    }

    #[test]
    fn long_from_window_equals_copy_from() {
        let src: Vec<u8> = (1..=200u8).collect();
        for n in 0..=100 {
            for extra in [0usize, 1, 9, 31, 32, 60] {
                let window = &src[..(n + extra).min(src.len())];
                let s = LongString::from_window(window, n).unwrap();
                assert_eq!(s, LongString::copy_from(&src[..n]), "{n}+{extra}");
                assert_eq!(s.is_shared(), n > LONG_INLINE_CAP);
                if let LongRepr::Inline { buf, .. } = &s.0 {
                    assert!(buf[n..].iter().all(|&b| b == 0), "{n}+{extra}: tail");
                }
            }
        }
        assert!(LongString::from_window(&src[..3], 4).is_none());
    }

    #[test]
    fn short_string_does_not_pin_its_source() {
        let big = Bytes::from(vec![7u8; 128 * 1024]);
        let s = ShortString::try_from(big.slice(10..200)).unwrap();
        drop(big);
        assert_eq!(s.as_bytes(), &[7u8; 190][..]);
    }
}
