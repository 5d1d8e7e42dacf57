//! Frame splitting and message decoding on arbitrary bytes: never a panic, never an allocation
//! beyond the frame limit, and every accepted message re-encodes to a frame that decodes and re-encodes identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statemesh_core::codec::{FrameDecoder, decode_message, encode_frame};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let _ = decode_message(data);
    let mut decoder = FrameDecoder::new(MAX);
    decoder.extend(data);
    while let Ok(Some(payload)) = decoder.next_payload() {
        assert!(payload.len() <= MAX);
        if let Ok(message) = decode_message(&payload) {
            let frame = encode_frame(&message, MAX).expect("a decoded message re-encodes");
            let mut again = FrameDecoder::new(MAX);
            again.extend(&frame);
            let back = again.next_message().expect("re-decodes").expect("complete");
            // Compared as bytes: a float NaN inside a value is not equal to itself.
            assert_eq!(encode_frame(&back, MAX).expect("re-encodes"), frame);
        }
    }
});
