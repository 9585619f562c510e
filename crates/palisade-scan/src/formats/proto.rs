//! A minimal protobuf wire-format reader over a blob: fields are yielded with the offsets of
//! their payloads, so large messages (ONNX initializers) are walked without being loaded.

use crate::blob::{Blob, fill_at, read_upto_at};

/// One field's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Varint(u64),
    Fixed64,
    Fixed32,
    /// Length-delimited: `len` bytes at `off`.
    Len {
        off: u64,
        len: u64,
    },
}

/// Iterates the fields of the message in `[pos, end)` of a blob.
pub(crate) struct Msg<'a> {
    blob: &'a dyn Blob,
    pos: u64,
    end: u64,
}

impl<'a> Msg<'a> {
    pub(crate) fn new(blob: &'a dyn Blob, off: u64, len: u64) -> Self {
        Msg {
            blob,
            pos: off,
            end: off.saturating_add(len).min(blob.len()),
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        // On the stack: messages are walked varint by varint.
        let mut buf = [0u8; 10];
        let n = fill_at(self.blob, self.pos, &mut buf).map_err(|e| e.to_string())?;
        let mut v: u64 = 0;
        for (i, byte) in buf[..n].iter().enumerate() {
            if self.pos + i as u64 >= self.end {
                break;
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.pos += i as u64 + 1;
                return Ok(v);
            }
        }
        Err(format!("bad varint at offset {}", self.pos))
    }

    /// The next field, `Ok(None)` at the end of the message.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u64, Field)>, String> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        if num == 0 {
            return Err(format!("field number 0 at offset {}", self.pos));
        }
        let f = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.pos = self.pos.checked_add(8).ok_or("overflow")?;
                Field::Fixed64
            }
            5 => {
                self.pos = self.pos.checked_add(4).ok_or("overflow")?;
                Field::Fixed32
            }
            2 => {
                let len = self.varint()?;
                let off = self.pos;
                self.pos = self.pos.checked_add(len).ok_or("overflow")?;
                Field::Len { off, len }
            }
            w => return Err(format!("unsupported wire type {w} at offset {}", self.pos)),
        };
        if self.pos > self.end {
            return Err(format!("field {num} runs past the end of its message"));
        }
        Ok(Some((num, f)))
    }

    /// Reads a length-delimited payload as a (bounded) UTF-8 string.
    pub(crate) fn string(&self, off: u64, len: u64) -> Result<String, String> {
        if len > 1 << 20 {
            return Err("string too long".into());
        }
        let b = read_upto_at(self.blob, off, len as usize).map_err(|e| e.to_string())?;
        String::from_utf8(b).map_err(|_| "string is not UTF-8".into())
    }
}

/// Collects the top-level fields (number, wire) of a whole blob; `None` if it is not a valid
/// protobuf message, or has more than `max` fields.
pub(crate) fn top_level(blob: &dyn Blob, max: usize) -> Option<Vec<(u64, Field)>> {
    let mut m = Msg::new(blob, 0, blob.len());
    let mut out = Vec::new();
    while let Some(f) = m.next_field().ok()? {
        out.push(f);
        if out.len() > max {
            return None;
        }
    }
    Some(out)
}
