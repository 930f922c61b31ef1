//! The protobuf wire format for a codec that works on its own structures
//! (see `codec`). Reading: varints, fixed-width scalars, length-delimited
//! values, repeated fields packed or not, and unknown fields skipped as
//! protobuf (and prost) do. Writing ([`out`]): proto3 fields as prost
//! writes them.

/// Bytes that are not well-formed protobuf: what and where (the codec
/// reports it as `WireError::Protobuf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WireError(pub(super) String);

/// Protobuf wire types.
pub(super) const VARINT: u8 = 0;
pub(super) const FIXED64: u8 = 1;
pub(super) const LEN: u8 = 2;
pub(super) const START_GROUP: u8 = 3;
pub(super) const END_GROUP: u8 = 4;
pub(super) const FIXED32: u8 = 5;

/// Nesting allowed in skipped groups (prost's recursion limit).
pub(super) const MAX_DEPTH: u32 = 100;

pub(super) fn wire_error(what: &str) -> WireError {
    WireError(what.to_string())
}

/// A cursor over protobuf wire bytes.
pub(super) struct Wire<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Wire<'a> {
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn varint(&mut self) -> Result<u64, WireError> {
        let (value, len) = varint_at(self.buf)?;
        self.buf = &self.buf[len..];
        Ok(value)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(wire_error("buffer underflow"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn fixed64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| wire_error("fixed64"))?,
        ))
    }

    pub(super) fn fixed32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| wire_error("fixed32"))?,
        ))
    }

    pub(super) fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| wire_error("length overflow"))?;
        self.take(n)
    }

    /// The next field's number and wire type.
    pub(super) fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| wire_error("invalid key value"))?;
        let wire = (key & 7) as u8;
        if wire > FIXED32 {
            return Err(wire_error("invalid wire type value"));
        }
        let field = key >> 3;
        if field == 0 {
            return Err(wire_error("invalid tag value: 0"));
        }
        Ok((field, wire))
    }

    /// Skips an unknown field's value.
    /// `depth`: nesting so far (messages and groups), as prost counts it.
    pub(super) fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Result<(), WireError> {
        if depth >= MAX_DEPTH {
            return Err(wire_error("recursion limit reached"));
        }
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP => loop {
                let (inner, inner_wire) = self.key()?;
                if inner_wire == END_GROUP {
                    return if inner == field {
                        Ok(())
                    } else {
                        Err(wire_error("unexpected end group tag"))
                    };
                }
                self.skip(inner, inner_wire, depth + 1)?;
            },
            _ => Err(wire_error("unexpected end group tag")),
        }
    }
}

/// The varint at the start of `buf` and its length in bytes.
#[inline]
pub(super) fn varint_at(buf: &[u8]) -> Result<(u64, usize), WireError> {
    if let Some(&b) = buf.first() {
        if b < 0x80 {
            return Ok((u64::from(b), 1));
        }
    }
    let mut value = 0u64;
    for (i, &b) in buf.iter().take(10).enumerate() {
        if i == 9 && b > 1 {
            return Err(wire_error("invalid varint"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((value, i + 1));
        }
    }
    Err(wire_error(if buf.len() < 10 {
        "truncated varint"
    } else {
        "invalid varint"
    }))
}

pub(super) fn expect(wire: u8, want: u8) -> Result<(), WireError> {
    if wire == want {
        Ok(())
    } else {
        Err(wire_error("invalid wire type"))
    }
}

/// Appends a repeated varint field, packed or not (`as_t` truncates as
/// protobuf does for 32-bit fields).
pub(super) fn varints<T>(
    w: &mut Wire<'_>,
    wire: u8,
    out: &mut Vec<T>,
    as_t: fn(u64) -> T,
) -> Result<(), WireError> {
    match wire {
        LEN => {
            let mut rest = w.len_delimited()?;
            // Every varint ends in exactly one byte below 0x80.
            out.reserve(rest.iter().filter(|b| **b < 0x80).count());
            while !rest.is_empty() {
                let (value, len) = varint_at(rest)?;
                out.push(as_t(value));
                rest = &rest[len..];
            }
            Ok(())
        }
        VARINT => {
            out.push(as_t(w.varint()?));
            Ok(())
        }
        _ => Err(wire_error("invalid wire type")),
    }
}

/// A fixed-width protobuf scalar: its wire type, its size, how to read it.
pub(super) trait Fixed: Sized {
    const WIRE: u8;
    const BYTES: usize;
    fn read(w: &mut Wire<'_>) -> Result<Self, WireError>;
}

impl Fixed for u64 {
    const WIRE: u8 = FIXED64;
    const BYTES: usize = 8;
    fn read(w: &mut Wire<'_>) -> Result<u64, WireError> {
        w.fixed64()
    }
}

impl Fixed for f32 {
    const WIRE: u8 = FIXED32;
    const BYTES: usize = 4;
    fn read(w: &mut Wire<'_>) -> Result<f32, WireError> {
        w.fixed32().map(f32::from_bits)
    }
}

/// Appends a repeated fixed-width field (`fixed64`, `float`), packed or not.
pub(super) fn fixeds<T: Fixed>(
    w: &mut Wire<'_>,
    wire: u8,
    out: &mut Vec<T>,
) -> Result<(), WireError> {
    if wire == LEN {
        let mut packed = Wire {
            buf: w.len_delimited()?,
        };
        out.reserve(packed.buf.len() / T::BYTES);
        while !packed.is_empty() {
            out.push(T::read(&mut packed)?);
        }
        Ok(())
    } else if wire == T::WIRE {
        out.push(T::read(w)?);
        Ok(())
    } else {
        Err(wire_error("invalid wire type"))
    }
}

pub(super) fn u32_of(v: u64) -> u32 {
    v as u32
}

pub(super) fn u64_of(v: u64) -> u64 {
    v
}

pub(super) fn int64(w: &mut Wire<'_>, wire: u8) -> Result<i64, WireError> {
    expect(wire, VARINT)?;
    Ok(w.varint()? as i64)
}

pub(super) fn uint(w: &mut Wire<'_>, wire: u8) -> Result<u64, WireError> {
    expect(wire, VARINT)?;
    w.varint()
}

pub(super) fn float(w: &mut Wire<'_>, wire: u8) -> Result<f32, WireError> {
    expect(wire, FIXED32)?;
    f32::read(w)
}

pub(super) fn string<'a>(w: &mut Wire<'a>, wire: u8) -> Result<&'a str, WireError> {
    expect(wire, LEN)?;
    std::str::from_utf8(w.len_delimited()?)
        .map_err(|_| wire_error("invalid string value: data is not UTF-8 encoded"))
}

/// A nested message's bytes.
pub(super) fn message<'a>(w: &mut Wire<'a>, wire: u8) -> Result<Wire<'a>, WireError> {
    expect(wire, LEN)?;
    Ok(Wire {
        buf: w.len_delimited()?,
    })
}

/// Writers of proto3 fields as prost writes them: a scalar only when it is
/// not its default, a repeated or bytes field only when not empty, packed.
pub(super) mod out {
    use prost::encoding::{encode_varint, encoded_len_varint};

    use super::{FIXED32, LEN, VARINT};

    fn key(w: &mut Vec<u8>, field: u32, wire: u8) {
        encode_varint(u64::from(field << 3 | u32::from(wire)), w);
    }

    /// An integer field (int64 as its two's complement, as protobuf does).
    pub(in crate::state) fn scalar(w: &mut Vec<u8>, field: u32, value: u64) {
        if value != 0 {
            key(w, field, VARINT);
            encode_varint(value, w);
        }
    }

    pub(in crate::state) fn float(w: &mut Vec<u8>, field: u32, value: f32) {
        if value != 0.0 {
            key(w, field, FIXED32);
            w.extend_from_slice(&value.to_le_bytes());
        }
    }

    pub(in crate::state) fn string(w: &mut Vec<u8>, field: u32, value: &str) {
        if !value.is_empty() {
            key(w, field, LEN);
            encode_varint(value.len() as u64, w);
            w.extend_from_slice(value.as_bytes());
        }
    }

    pub(in crate::state) fn packed_varints<I>(w: &mut Vec<u8>, field: u32, values: I)
    where
        I: Iterator<Item = u64> + Clone,
    {
        let len: usize = values.clone().map(encoded_len_varint).sum();
        if len > 0 {
            key(w, field, LEN);
            encode_varint(len as u64, w);
            for v in values {
                encode_varint(v, w);
            }
        }
    }

    pub(in crate::state) fn packed_fixed64(
        w: &mut Vec<u8>,
        field: u32,
        values: impl ExactSizeIterator<Item = u64>,
    ) {
        if values.len() > 0 {
            key(w, field, LEN);
            encode_varint(values.len() as u64 * 8, w);
            for v in values {
                w.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    pub(in crate::state) fn packed_floats(w: &mut Vec<u8>, field: u32, values: &[f32]) {
        if !values.is_empty() {
            key(w, field, LEN);
            encode_varint(values.len() as u64 * 4, w);
            for v in values {
                w.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// A `bytes` field of one byte per item.
    pub(in crate::state) fn bytes(
        w: &mut Vec<u8>,
        field: u32,
        values: impl ExactSizeIterator<Item = u8>,
    ) {
        if values.len() > 0 {
            key(w, field, LEN);
            encode_varint(values.len() as u64, w);
            w.extend(values);
        }
    }

    /// A sub-message field, written whatever its contents (prost writes a
    /// present message even when it is empty), through `nested`: its
    /// length goes before it.
    pub(in crate::state) fn message(
        w: &mut Vec<u8>,
        field: u32,
        nested: &mut Vec<u8>,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        nested.clear();
        body(nested);
        key(w, field, LEN);
        encode_varint(nested.len() as u64, w);
        w.extend_from_slice(nested);
    }
}
