//! A bounded tail of a byte stream: a step's stdout or stderr without unbounded memory.

use std::collections::VecDeque;

/// Keeps the last `capacity` bytes written to it, and counts everything written.
///
/// A step may print gigabytes; its report carries at most [`baton_proto::limits::OUTPUT_BYTES_MAX`]
/// bytes, and the end of a log is what explains how a process ended, so the tail is what we keep.
#[derive(Debug)]
pub struct TailBuffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    written: u64,
}

impl TailBuffer {
    pub fn new(capacity: usize) -> TailBuffer {
        TailBuffer {
            // Grows as output arrives: most steps print little, and slots × 2 full buffers
            // allocated up front would be wasted.
            bytes: VecDeque::new(),
            capacity,
            written: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.written += chunk.len() as u64;
        if self.capacity == 0 {
            return;
        }
        // Only the chunk's own tail can survive; dropping from the front first keeps the
        // buffer's allocation at `capacity`, never more.
        let chunk = &chunk[chunk.len().saturating_sub(self.capacity)..];
        let excess = (self.bytes.len() + chunk.len()).saturating_sub(self.capacity);
        self.bytes.drain(..excess);
        self.bytes.extend(chunk);
    }

    /// Bytes held (at most the capacity).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes written in all, kept or not.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether earlier bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.written > self.bytes.len() as u64
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// The tail as text. Invalid UTF-8 is replaced; a character cut in half by truncation is
    /// dropped rather than shown as a replacement character.
    pub fn to_string_lossy(&self) -> String {
        let bytes = self.to_vec();
        let start = if self.truncated() {
            utf8_boundary(&bytes)
        } else {
            0
        };
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

/// Index of the first byte that is not a UTF-8 continuation byte (at most 3 skipped).
fn utf8_boundary(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take(3)
        .position(|byte| byte & 0b1100_0000 != 0b1000_0000)
        .unwrap_or(0)
}

/// The last `bytes_max` bytes of `text`, cut at a character boundary.
pub fn tail_str(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut start = text.len() - bytes_max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The first `bytes_max` bytes of `text`, cut at a character boundary.
pub fn head_str(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_capacity() {
        let mut tail = TailBuffer::new(8);
        tail.push(b"abc");
        tail.push(b"de");
        assert_eq!(tail.to_vec(), b"abcde");
        assert!(!tail.truncated());
        assert_eq!(tail.written(), 5);
    }

    #[test]
    fn keeps_only_the_last_bytes_across_and_within_chunks() {
        let mut tail = TailBuffer::new(4);
        tail.push(b"abc");
        tail.push(b"def");
        assert_eq!(tail.to_vec(), b"cdef");
        tail.push(b"0123456789");
        assert_eq!(tail.to_vec(), b"6789");
        assert!(tail.truncated());
        assert_eq!(tail.written(), 16);
        assert_eq!(tail.len(), 4);
        tail.push(b"");
        assert_eq!(tail.to_vec(), b"6789");
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut tail = TailBuffer::new(1000);
        for round in 0..10_000u32 {
            tail.push(&round.to_le_bytes().repeat((round % 7) as usize));
            assert!(tail.len() <= 1000);
        }
        assert!(tail.bytes.capacity() <= 2048, "{}", tail.bytes.capacity());
    }

    #[test]
    fn a_cut_character_is_dropped_not_replaced() {
        let mut tail = TailBuffer::new(4);
        tail.push("xé€".as_bytes()); // 1 + 2 + 3 bytes: the cut falls inside "é"
        assert_eq!(tail.to_string_lossy(), "€");
        assert_eq!(tail_str("aé€", 4), "€");
        assert_eq!(head_str("aé€", 4), "aé");
        assert_eq!(head_str("ab", 4), "ab");
    }

    #[test]
    fn zero_capacity_counts_but_keeps_nothing() {
        let mut tail = TailBuffer::new(0);
        tail.push(b"abc");
        assert!(tail.is_empty());
        assert_eq!(tail.written(), 3);
    }
}
