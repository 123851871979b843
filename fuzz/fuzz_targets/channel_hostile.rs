//! Channels whose shared bytes a hostile peer rewrites between operations: every operation
//! must end in a value or an error — no crash, no out-of-bounds access (AddressSanitizer
//! watches), no hang (the non-blocking variants are used).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmapkit::channel::{ByteChannel, Channel, ChannelOptions, MpmcChannel};

fuzz_target!(|data: &[u8]| {
    let bytes = ByteChannel::create_memfd(&ChannelOptions::new(256)).unwrap();
    let typed = Channel::<[u32; 3]>::create_memfd(&ChannelOptions::new(8)).unwrap();
    let mpmc = MpmcChannel::<u64>::create_memfd(&ChannelOptions::new(8)).unwrap();
    let (Ok(mut byte_tx), Ok(mut byte_rx)) = (bytes.sender(), bytes.receiver()) else { return };
    let (Ok(mut typed_tx), Ok(mut typed_rx)) = (typed.sender(), typed.receiver()) else { return };
    let (Ok(mut mpmc_tx), Ok(mut mpmc_rx)) = (mpmc.sender(), mpmc.receiver()) else { return };
    for op in data.chunks(6) {
        let arg = |index: usize| op.get(index).copied().unwrap_or(0);
        match arg(0) % 10 {
            0 => drop(byte_tx.try_send(&vec![arg(2); usize::from(arg(1))])),
            1 => drop(byte_rx.try_recv()),
            2 => {
                if let Ok(mut loan) = byte_tx.try_loan(usize::from(arg(1) % 100)) {
                    let _ = loan.write_at(usize::from(arg(2) % 100), &[arg(3); 4]);
                    let _ = loan.commit();
                }
            }
            3 => drop(typed_tx.try_send(&[u32::from(arg(1)); 3])),
            4 => drop(typed_rx.try_recv()),
            5 => drop(mpmc_tx.try_send(&u64::from(arg(1)))),
            6 => drop(mpmc_rx.try_recv()),
            which => {
                // The hostile peer: overwrite 4 bytes anywhere in one of the segments.
                let segment = match which {
                    7 => bytes.segment(),
                    8 => typed.segment(),
                    _ => mpmc.segment(),
                };
                let offset = usize::from(u16::from_le_bytes([arg(1), arg(2)])) % segment.payload_len();
                let _ = segment.write_at(offset, &[arg(3), arg(4), arg(5), arg(1)]);
            }
        }
    }
});
