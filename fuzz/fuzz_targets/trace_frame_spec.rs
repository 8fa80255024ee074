//! The frame specs of `datapath trace --frame` (specs and hex): never panic;
//! a spec builds at least an Ethernet header.
#![no_main]

use datapath_user::cli::parse_frame_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = parse_frame_text(text) {
        let spec =
            text.split_whitespace().next().is_some_and(|w| ["arp", "icmp", "dhcp", "vlan"].contains(&w));
        assert!(!spec || frame.len() >= 14, "a spec built a {}-byte frame", frame.len());
    }
});
