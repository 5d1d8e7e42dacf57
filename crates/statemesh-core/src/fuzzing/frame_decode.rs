//! The `frame_decode` target: frame splitting and message decoding.

use super::common::MAX;
use super::escaping;
use crate::codec::{self, FrameDecoder};

/// Frame splitting and message decoding on an arbitrary byte stream: never a panic, never a
/// payload beyond the frame limit, and every accepted message re-encodes to a frame that
/// decodes and re-encodes identically. (This also covers message decoding of arbitrary
/// payloads: the whole input is decoded as one payload first.)
pub fn frame_decode(data: &[u8]) {
    escaping(|| frame_decode_inner(data));
}

fn frame_decode_inner(data: &[u8]) {
    let _ = codec::decode_message(data);
    let mut decoder = FrameDecoder::new(MAX);
    decoder.extend(data);
    while let Ok(Some(payload)) = decoder.next_payload() {
        assert!(payload.len() <= MAX);
        if let Ok(message) = codec::decode_message(&payload) {
            let frame = codec::encode_frame(&message, MAX)
                .unwrap_or_else(|e| panic!("a decoded message does not re-encode: {e}"));
            let mut again = FrameDecoder::new(MAX);
            again.extend(&frame);
            let back = again
                .next_message()
                .unwrap_or_else(|e| panic!("a re-encoded message does not decode: {e}"))
                .unwrap_or_else(|| panic!("a re-encoded frame is incomplete"));
            // Compared as bytes: a float NaN inside a value is not equal to itself.
            let twice = codec::encode_frame(&back, MAX)
                .unwrap_or_else(|e| panic!("a decoded message does not re-encode: {e}"));
            assert_eq!(twice, frame, "a message changed through a round trip");
        }
    }
}
