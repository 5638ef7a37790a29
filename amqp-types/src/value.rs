//! Field values, field tables and field arrays, with RabbitMQ's type letters.

use crate::{LongString, ShortString};
use std::fmt;
use std::hash::{Hash, Hasher};

/// How deeply tables and arrays may nest (a value inside a table inside an
/// array ... counts one level per container).
///
/// The parser refuses deeper input, the serializer refuses to write it, and
/// the `arbitrary` impls never generate it, so recursion on field values is
/// bounded everywhere. RabbitMQ itself sets no limit; real traffic nests two
/// or three levels (`x-death` is an array of tables).
pub const MAX_NESTING_DEPTH: usize = 64;

/// An AMQP decimal: `value / 10^scale`, as RabbitMQ reads it (unsigned
/// 32-bit unscaled value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One typed value of a field table or array.
///
/// Each variant is one of RabbitMQ's type letters (see [`FieldValue::letter`]).
/// Equality, hashing and ordering compare floats by bit pattern, so that
/// `Eq` and `Hash` hold (`NaN == NaN`, `0.0 != -0.0`) and a value equals
/// exactly what re-encodes to the same bytes. Value-level comparisons with
/// RabbitMQ's headers-exchange semantics belong to `amqp-router`.
#[derive(Clone)]
#[non_exhaustive]
pub enum FieldValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit integer.
    I8(i8),
    /// `B`: unsigned 8-bit integer.
    U8(u8),
    /// `s`: signed 16-bit integer.
    I16(i16),
    /// `u`: unsigned 16-bit integer.
    U16(u16),
    /// `I`: signed 32-bit integer.
    I32(i32),
    /// `i`: unsigned 32-bit integer.
    U32(u32),
    /// `l`: signed 64-bit integer.
    I64(i64),
    /// `f`: 32-bit float.
    F32(f32),
    /// `d`: 64-bit float.
    F64(f64),
    /// `D`: decimal.
    Decimal(Decimal),
    /// `S`: long string.
    LongString(LongString),
    /// `A`: array of values.
    Array(FieldArray),
    /// `T`: timestamp, seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: nested field table.
    Table(FieldTable),
    /// `V`: void (no value).
    Void,
    /// `x`: byte array.
    ByteArray(LongString),
}

impl FieldValue {
    /// The type letter this value has on the wire.
    #[inline]
    pub const fn letter(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// Every type letter RabbitMQ accepts, in the order of the enum.
    pub const LETTERS: &'static [u8; 17] = b"tbBsuIilfdDSATFVx";

    /// The value as a string's bytes, for `S` and `x`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            FieldValue::LongString(s) | FieldValue::ByteArray(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The value as an `i128` for every integer type and timestamps.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v.into(),
            FieldValue::Timestamp(v) => v.into(),
            _ => return None,
        })
    }

    /// The nested table, for `F`.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The array, for `A`.
    pub fn as_array(&self) -> Option<&FieldArray> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// How deeply containers nest in this value: 0 for a scalar, 1 for a
    /// table or array of scalars, and so on. Iterative, so it is safe on
    /// values of any depth.
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack: Vec<(&FieldValue, usize)> = vec![(self, 0)];
        while let Some((v, d)) = stack.pop() {
            match v {
                FieldValue::Table(t) => {
                    max = max.max(d + 1);
                    stack.extend(t.iter().map(|(_, v)| (v, d + 1)));
                }
                FieldValue::Array(a) => {
                    max = max.max(d + 1);
                    stack.extend(a.iter().map(|v| (v, d + 1)));
                }
                _ => {}
            }
            if d > MAX_NESTING_DEPTH {
                // Deep enough to be refused; no need to walk further.
                return d;
            }
        }
        max
    }

    fn discriminant_key(&self) -> u8 {
        self.letter()
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U8(a), U8(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Decimal(a), Decimal(b)) => a == b,
            (LongString(a), LongString(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Table(a), Table(b)) => a == b,
            (Void, Void) => true,
            (ByteArray(a), ByteArray(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for FieldValue {}

impl Hash for FieldValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        use FieldValue::*;
        state.write_u8(self.discriminant_key());
        match self {
            Bool(v) => v.hash(state),
            I8(v) => v.hash(state),
            U8(v) => v.hash(state),
            I16(v) => v.hash(state),
            U16(v) => v.hash(state),
            I32(v) => v.hash(state),
            U32(v) => v.hash(state),
            I64(v) => v.hash(state),
            F32(v) => v.to_bits().hash(state),
            F64(v) => v.to_bits().hash(state),
            Decimal(v) => v.hash(state),
            LongString(v) | ByteArray(v) => v.hash(state),
            Array(v) => v.hash(state),
            Timestamp(v) => v.hash(state),
            Table(v) => v.hash(state),
            Void => {}
        }
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FieldValue::*;
        match self {
            Bool(v) => write!(f, "t:{v}"),
            I8(v) => write!(f, "b:{v}"),
            U8(v) => write!(f, "B:{v}"),
            I16(v) => write!(f, "s:{v}"),
            U16(v) => write!(f, "u:{v}"),
            I32(v) => write!(f, "I:{v}"),
            U32(v) => write!(f, "i:{v}"),
            I64(v) => write!(f, "l:{v}"),
            F32(v) => write!(f, "f:{v:?}"),
            F64(v) => write!(f, "d:{v:?}"),
            Decimal(v) => write!(f, "D:{}e-{}", v.value, v.scale),
            LongString(v) => write!(f, "S:{v:?}"),
            Array(v) => write!(f, "A:{v:?}"),
            Timestamp(v) => write!(f, "T:{v}"),
            Table(v) => write!(f, "F:{v:?}"),
            Void => f.write_str("V"),
            ByteArray(v) => write!(f, "x:{v:?}"),
        }
    }
}

macro_rules! from_impls {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for FieldValue {
            fn from(v: $t) -> Self { FieldValue::$v(v.into()) }
        }
    )*};
}
from_impls! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, f32 => F32, f64 => F64, Decimal => Decimal, LongString => LongString,
    &str => LongString, String => LongString, FieldArray => Array, FieldTable => Table,
}

/// An AMQP field table: `(key, value)` pairs in wire order.
///
/// Unlike a map, a `FieldTable` keeps the order the entries arrived in and
/// any duplicate keys, so a table re-encodes to exactly the bytes it was
/// read from. Lookups with [`get`](Self::get) scan linearly and return the
/// first entry with the key, which is what RabbitMQ does for small tables
/// and is faster than hashing for the sizes AMQP tables have.
///
/// ```
/// use amqp_types::{FieldTable, FieldValue};
/// let mut t = FieldTable::new();
/// t.insert("x-max-priority", 10u8);
/// t.insert("colour", "blue");
/// assert_eq!(t.get("x-max-priority"), Some(&FieldValue::U8(10)));
/// assert_eq!(t.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["x-max-priority", "colour"]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldTable(Vec<(ShortString, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub const fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// An empty table with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        FieldTable(Vec::with_capacity(n))
    }

    /// Appends an entry, keeping any existing entry with the same key.
    ///
    /// # Panics
    ///
    /// Panics if `key` is longer than 255 bytes; use [`push`](Self::push)
    /// with a checked [`ShortString`] for keys that come from input.
    pub fn insert(&mut self, key: &str, value: impl Into<FieldValue>) {
        let key = ShortString::try_from(key).expect("field table key longer than 255 bytes");
        self.0.push((key, value.into()));
    }

    /// Appends an entry, keeping any existing entry with the same key.
    #[inline]
    pub fn push(&mut self, key: ShortString, value: FieldValue) {
        self.0.push((key, value));
    }

    /// Replaces the first entry with this key, or appends one.
    pub fn set(&mut self, key: ShortString, value: FieldValue) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes every entry with this key and returns the first one's value.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> Option<FieldValue> {
        let key = key.as_ref();
        let pos = self.0.iter().position(|(k, _)| k.as_bytes() == key)?;
        let (_, v) = self.0.remove(pos);
        self.0.retain(|(k, _)| k.as_bytes() != key);
        Some(v)
    }

    /// The value of the first entry with this key.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&FieldValue> {
        let key = key.as_ref();
        self.0
            .iter()
            .find(|(k, _)| k.as_bytes() == key)
            .map(|(_, v)| v)
    }

    /// Whether an entry has this key.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> bool {
        self.get(key).is_some()
    }

    /// The entries in wire order.
    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, (ShortString, FieldValue)> {
        self.0.iter()
    }

    /// The keys in wire order.
    pub fn keys(&self) -> impl Iterator<Item = &ShortString> {
        self.0.iter().map(|(k, _)| k)
    }

    /// The number of entries (duplicates included).
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries as a slice.
    pub fn as_slice(&self) -> &[(ShortString, FieldValue)] {
        &self.0
    }

    /// The entries, mutably.
    pub fn entries_mut(&mut self) -> &mut Vec<(ShortString, FieldValue)> {
        &mut self.0
    }

    /// Unwraps the entries.
    pub fn into_inner(mut self) -> Vec<(ShortString, FieldValue)> {
        std::mem::take(&mut self.0)
    }
}

/// How many levels of containers a plain recursive drop may go through: a
/// value with no containers nested deeper than this below it is dropped
/// recursively (bounded, no allocation); deeper ones use
/// [`drop_iteratively`]. Real traffic (`x-death`: an array of tables) stays
/// well inside it.
const RECURSIVE_DROP_LEVELS: u32 = 4;

/// Whether `v` is a container with containers nested more than `levels`
/// deep inside it. Recursion is bounded by `levels`. Scalars (most entries)
/// are answered inline, without a call.
#[inline(always)]
fn nests_deeper(v: &FieldValue, levels: u32) -> bool {
    matches!(v, FieldValue::Table(_) | FieldValue::Array(_)) && container_nests_deeper(v, levels)
}

#[inline(never)]
fn container_nests_deeper(v: &FieldValue, levels: u32) -> bool {
    match v {
        FieldValue::Table(t) => levels == 0 || t.0.iter().any(|(_, v)| nests_deeper(v, levels - 1)),
        FieldValue::Array(a) => levels == 0 || a.0.iter().any(|v| nests_deeper(v, levels - 1)),
        _ => false,
    }
}

/// Drops nested containers with an explicit stack instead of recursion, so
/// that a value nested arbitrarily deep (built by hand; the parser stops at
/// [`MAX_NESTING_DEPTH`]) cannot overflow the stack when it is dropped.
fn drop_iteratively(mut stack: Vec<FieldValue>) {
    while let Some(v) = stack.pop() {
        match v {
            FieldValue::Table(mut t) => stack.extend(t.0.drain(..).map(|(_, v)| v)),
            FieldValue::Array(mut a) => stack.append(&mut a.0),
            _ => {}
        }
    }
}

// Shallow values (the common case) are dropped recursively without
// allocating: the recursion below a table or array that passes the check is
// at most RECURSIVE_DROP_LEVELS deep, and each nested drop checks again.
impl Drop for FieldTable {
    fn drop(&mut self) {
        if self
            .0
            .iter()
            .any(|(_, v)| nests_deeper(v, RECURSIVE_DROP_LEVELS))
        {
            drop_iteratively(self.0.drain(..).map(|(_, v)| v).collect());
        }
    }
}

impl Drop for FieldArray {
    fn drop(&mut self) {
        if self
            .0
            .iter()
            .any(|v| nests_deeper(v, RECURSIVE_DROP_LEVELS))
        {
            drop_iteratively(std::mem::take(&mut self.0));
        }
    }
}

impl fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl From<Vec<(ShortString, FieldValue)>> for FieldTable {
    #[inline]
    fn from(v: Vec<(ShortString, FieldValue)>) -> Self {
        FieldTable(v)
    }
}

impl FromIterator<(ShortString, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortString, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = &'a (ShortString, FieldValue);
    type IntoIter = std::slice::Iter<'a, (ShortString, FieldValue)>;
    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for FieldTable {
    type Item = (ShortString, FieldValue);
    type IntoIter = std::vec::IntoIter<(ShortString, FieldValue)>;
    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.into_inner().into_iter()
    }
}

/// An AMQP field array (`A`): values in order, each with its own type.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldArray(Vec<FieldValue>);

impl FieldArray {
    /// An empty array.
    pub const fn new() -> Self {
        FieldArray(Vec::new())
    }

    /// Appends a value.
    pub fn push(&mut self, value: impl Into<FieldValue>) {
        self.0.push(value.into());
    }

    /// The values in order.
    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, FieldValue> {
        self.0.iter()
    }

    /// The number of values.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values as a slice.
    pub fn as_slice(&self) -> &[FieldValue] {
        &self.0
    }

    /// The values, mutably.
    pub fn values_mut(&mut self) -> &mut Vec<FieldValue> {
        &mut self.0
    }

    /// Unwraps the values.
    pub fn into_inner(mut self) -> Vec<FieldValue> {
        std::mem::take(&mut self.0)
    }
}

impl fmt::Debug for FieldArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl From<Vec<FieldValue>> for FieldArray {
    #[inline]
    fn from(v: Vec<FieldValue>) -> Self {
        FieldArray(v)
    }
}

impl FromIterator<FieldValue> for FieldArray {
    fn from_iter<I: IntoIterator<Item = FieldValue>>(iter: I) -> Self {
        FieldArray(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a FieldArray {
    type Item = &'a FieldValue;
    type IntoIter = std::slice::Iter<'a, FieldValue>;
    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(feature = "arbitrary")]
mod arb {
    use super::*;
    use arbitrary::{Arbitrary, Result, Unstructured};

    /// How deep `arbitrary` nests: well inside [`MAX_NESTING_DEPTH`].
    const ARB_DEPTH: usize = 6;

    fn value(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldValue> {
        let choices = if depth >= ARB_DEPTH { 15 } else { 17 };
        Ok(match u.choose_index(choices)? {
            0 => FieldValue::Bool(u.arbitrary()?),
            1 => FieldValue::I8(u.arbitrary()?),
            2 => FieldValue::U8(u.arbitrary()?),
            3 => FieldValue::I16(u.arbitrary()?),
            4 => FieldValue::U16(u.arbitrary()?),
            5 => FieldValue::I32(u.arbitrary()?),
            6 => FieldValue::U32(u.arbitrary()?),
            7 => FieldValue::I64(u.arbitrary()?),
            8 => FieldValue::F32(u.arbitrary()?),
            9 => FieldValue::F64(u.arbitrary()?),
            10 => FieldValue::Decimal(u.arbitrary()?),
            11 => FieldValue::LongString(u.arbitrary()?),
            12 => FieldValue::Timestamp(u.arbitrary()?),
            13 => FieldValue::Void,
            14 => FieldValue::ByteArray(u.arbitrary()?),
            15 => FieldValue::Array(array(u, depth + 1)?),
            _ => FieldValue::Table(table(u, depth + 1)?),
        })
    }

    fn array(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldArray> {
        let n = u.arbitrary_len::<u64>()?.min(16);
        (0..n).map(|_| value(u, depth)).collect()
    }

    fn table(u: &mut Unstructured<'_>, depth: usize) -> Result<FieldTable> {
        let n = u.arbitrary_len::<u64>()?.min(16);
        (0..n)
            .map(|_| Ok((u.arbitrary()?, value(u, depth)?)))
            .collect()
    }

    impl<'a> Arbitrary<'a> for FieldValue {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            value(u, 0)
        }
    }
    impl<'a> Arbitrary<'a> for FieldTable {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            table(u, 1)
        }
    }
    impl<'a> Arbitrary<'a> for FieldArray {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            array(u, 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(FieldValue::F64(f64::NAN), FieldValue::F64(f64::NAN));
        assert_ne!(FieldValue::F64(0.0), FieldValue::F64(-0.0));
        assert_ne!(FieldValue::I32(1), FieldValue::I64(1));
    }

    #[test]
    fn table_keeps_order_and_duplicates() {
        let mut t = FieldTable::new();
        t.insert("b", 1i32);
        t.insert("a", 2i32);
        t.insert("b", 3i32);
        assert_eq!(t.len(), 3);
        assert_eq!(t.get("b"), Some(&FieldValue::I32(1)));
        assert_eq!(t.remove("b"), Some(FieldValue::I32(1)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn deep_tables_drop_without_recursion() {
        let mut v = FieldValue::Void;
        for i in 0..200_000 {
            if i % 2 == 0 {
                let mut t = FieldTable::new();
                t.insert("a", v);
                v = FieldValue::Table(t);
            } else {
                v = FieldValue::Array(FieldArray::from(vec![v, FieldValue::I8(1)]));
            }
        }
        assert!(v.depth() > MAX_NESTING_DEPTH);
        drop(v);
    }

    #[test]
    fn depth_is_iterative() {
        let mut v = FieldValue::Void;
        for _ in 0..10_000 {
            let mut a = FieldArray::new();
            a.push(v);
            v = FieldValue::Array(a);
        }
        assert!(v.depth() > MAX_NESTING_DEPTH);
        assert_eq!(FieldValue::I8(1).depth(), 0);
        let mut t = FieldTable::new();
        t.insert("k", FieldTable::new());
        assert_eq!(FieldValue::Table(t).depth(), 2);
        // Dropping a 10,000-deep value must not overflow the stack either.
        drop(v);
    }
}
