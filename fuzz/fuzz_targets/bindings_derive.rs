//! A bindings document, parsed and derived against devices the input picks:
//! parsing and derivation never panic, the derivation is deterministic, and
//! every derived state keeps the desired-state invariants.
#![no_main]

use datapath_user::{
    bindings::Bindings,
    config::Config,
    desired::{Allocations, check_invariants, derive},
    netlink::Devices,
    tunnel::TUNNEL_DEVICE,
};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
host = "node0"
physical_interface_mappings = ["default:eth2", "physnet2:eth3", "absent:eth9"]
bindings = "/fuzz.json"
pin_path = "/sys/fs/bpf/fuzz"
local_ip = "192.0.2.10"
tunnel_types = ["vxlan"]
"#;

fuzz_target!(|data: &[u8]| {
    // The first byte says which devices exist; the rest is the document.
    let Some((&pick, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(bindings) = Bindings::parse_str(text, "fuzz") else { return };
    let cfg = Config::parse_str(CONFIG, "fuzz").expect("the fuzz config is valid");
    let mut devices = Devices::new();
    for (bit, name) in [(0, "eth2"), (1, "eth3"), (2, TUNNEL_DEVICE)] {
        if pick & (1 << bit) != 0 {
            devices.insert(name.to_string(), 2 + bit);
        }
    }
    for (i, port) in bindings.ports.iter().enumerate() {
        // Some bound ports have their tap, some do not; a stray tap or two too.
        if (i as u8).wrapping_add(pick) % 3 != 0 {
            devices.insert(port.device_name(), 100 + i as u32);
        }
    }
    devices.insert("tapdeadbeef-00".into(), 99);

    let mut alloc = Allocations::default();
    let first = derive(&cfg, &bindings, &devices, &mut alloc);
    if let Err(e) = check_invariants(&first) {
        panic!("invariant broken: {e}\ndocument: {text}");
    }
    // Again with the numbering kept (a reconcile), and from scratch: the same state.
    assert_eq!(derive(&cfg, &bindings, &devices, &mut alloc), first, "a second derivation changed");
    assert_eq!(derive(&cfg, &bindings, &devices, &mut Allocations::default()).state, first.state);
});
