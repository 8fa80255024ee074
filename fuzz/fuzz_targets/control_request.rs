//! The control-socket request parser: never panics; an accepted request
//! survives its own wire form unchanged.
#![no_main]

use datapath_user::{api::Request, control::parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    if let Ok(request) = parse_request(line) {
        let wire = serde_json::to_string(&request).expect("a request serializes");
        assert_eq!(serde_json::from_str::<Request>(&wire).ok(), Some(request), "{wire}");
    }
});
