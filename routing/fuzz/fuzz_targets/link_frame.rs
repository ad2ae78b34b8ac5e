//! Fuzzes the decoder of the frames on links between data centers
//! (`meerkat_routing::global::link::decode_frame`), which reads bytes from
//! whoever reaches a link endpoint.
//!
//! Properties checked for arbitrary input:
//! 1. No panic, no stack overflow, no allocation beyond the decode limit.
//! 2. A frame that decodes encodes again, and the encoding decodes to the
//!    same frame (compared through its `Debug` form).
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run link_frame` from `routing`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meerkat_routing::global::link::{decode_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        let again = encode_frame(&frame).expect("a decoded frame encodes");
        let back = decode_frame(&again).expect("an encoded frame decodes");
        assert_eq!(format!("{frame:?}"), format!("{back:?}"));
    }
});
