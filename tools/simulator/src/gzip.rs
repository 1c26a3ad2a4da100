//! A misbehaving backend on request: gzip bodies the client did not ask for (stored deflate blocks).
//!
//! Real model servers compress when asked (`accept-encoding`); the token meter removes that
//! header, so only a misbehaving server compresses anyway, and the meter must refuse what it
//! cannot read. `x-simulator-compress: gzip` makes the simulator be that server. The body is a
//! valid gzip stream whose deflate blocks are stored, not compressed: no compression library is
//! needed, and any gzip reader accepts it.

/// The request header that asks for a gzip response.
pub const HEADER_COMPRESS: &str = "x-simulator-compress";

/// `data` as a gzip member: header, stored deflate blocks, CRC-32 and length.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    // ID1 ID2, CM=deflate, no flags, no mtime, no extra flags, OS unknown.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(u16::MAX as usize).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = block.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses it), bit by bit: bodies here are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_stored_gzip_member_frames_the_data_as_the_format_says() {
        let data = b"hello";
        let gz = gzip_stored(data);
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        // One final stored block: BFINAL=1, LEN=5, NLEN=!5, the bytes.
        assert_eq!(&gz[10..15], &[1, 5, 0, 0xfa, 0xff]);
        assert_eq!(&gz[15..20], data);
        assert_eq!(&gz[20..24], &crc32(data).to_le_bytes());
        assert_eq!(&gz[24..], &5u32.to_le_bytes());
        let big = vec![b'x'; 70_000];
        let gz = gzip_stored(&big);
        assert_eq!(gz.len(), 10 + 5 + 65_535 + 5 + (70_000 - 65_535) + 8);
        assert_eq!(gz[10], 0, "the first of two blocks is not final");
    }
}
