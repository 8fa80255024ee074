//! The agent config parser: never panics; what it accepts round-trips its own checks.
#![no_main]

use datapath_user::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = Config::parse_str(text, "fuzz") {
        assert!(!cfg.host.is_empty() && cfg.pin_path.is_absolute(), "accepted an invalid config: {cfg:?}");
        assert!((1..=86_400).contains(&cfg.mac_age_seconds));
    }
});
