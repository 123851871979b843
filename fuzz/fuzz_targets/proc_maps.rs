//! /proc/PID/maps and smaps text is the kernel's, but a parser must survive anything: any
//! bytes give entries or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mmapkit::inspect::parse_maps(data);
    if let Ok(entries) = mmapkit::inspect::parse_smaps(data) {
        for entry in entries {
            let _ = entry.map.kind.label();
            let _ = entry.fields.dirty();
            let _ = entry.map.size();
        }
    }
});
