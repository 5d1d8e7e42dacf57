//! The `frame_decode` target: frame splitting and message decoding.

use super::common::MAX;
use super::escaping;
use crate::codec::{self, FrameDecoder};

/// Frame splitting and message decoding on an arbitrary byte stream: never a panic, never a
/// frame beyond the frame limit, every frame the splitter returns passes the header checks,
/// every accepted message re-encodes to a frame that decodes and re-encodes identically, and
/// whatever the fast decoder of views takes from a payload, postcard decodes to the same view.
/// (This also covers the header checks and message decoding of arbitrary frames and
/// payloads: the whole input is decoded as one frame, and as one payload, first.)
pub fn frame_decode(data: &[u8]) {
    escaping(|| frame_decode_inner(data));
}

fn frame_decode_inner(data: &[u8]) {
    if let Some(view) = codec::decode_view_fast(data) {
        assert_eq!(
            codec::decode_postcard(data),
            Ok(codec::Message::View(view)),
            "the fast decoder of views took a payload postcard decodes otherwise"
        );
    }
    let _ = codec::decode_frame(data, MAX);
    let _ = codec::decode_frame(&codec::frame_raw(data), MAX);
    let mut decoder = FrameDecoder::new(MAX);
    decoder.extend(data);
    while let Ok(Some(frame)) = decoder.next_frame() {
        assert!(codec::frame_payload(&frame, MAX).is_ok());
        if let Ok(message) = codec::decode_frame(&frame, MAX) {
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
