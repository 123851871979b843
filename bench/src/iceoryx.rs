//! The iceoryx2 anchor of `ipc-latency` (feature `iceoryx2`): the same ping-pong as mmapkit's,
//! between two processes, with the service settings of iceoryx2's own benchmark (no history,
//! a subscriber buffer of one, safe overflow) and its zero-copy use (loan, send without
//! writing the payload, receive without reading it).

use std::time::Instant;

use iceoryx2::prelude::*;

use crate::process::{Handshake, fork, reap};

struct Ports {
    publisher: iceoryx2::port::publisher::Publisher<ipc::Service, [u8], ()>,
    subscriber: iceoryx2::port::subscriber::Subscriber<ipc::Service, [u8], ()>,
    _node: Node<ipc::Service>,
}

/// Opens (or creates) the two services and this side's ports.
fn ports(outgoing: &str, incoming: &str, size: usize) -> Ports {
    let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
    let service = |name: &str| {
        node.service_builder(&ServiceName::new(name).expect("name"))
            .publish_subscribe::<[u8]>()
            .history_size(0)
            .subscriber_max_buffer_size(1)
            .enable_safe_overflow(true)
            .open_or_create()
            .expect("service")
    };
    let publisher = service(outgoing)
        .publisher_builder()
        .initial_max_slice_len(size)
        .create()
        .expect("publisher");
    let subscriber = service(incoming)
        .subscriber_builder()
        .create()
        .expect("subscriber");
    Ports {
        publisher,
        subscriber,
        _node: node,
    }
}

fn send(ports: &Ports, size: usize) {
    // SAFETY: the payload is left uninitialised on purpose (zero-copy, as iceoryx2's benchmark
    // does); nobody reads it.
    let sample = unsafe {
        ports
            .publisher
            .loan_slice_uninit(size)
            .expect("loan")
            .assume_init()
    };
    sample.send().expect("send");
}

fn receive(ports: &Ports) {
    while ports.subscriber.receive().expect("receive").is_none() {}
}

/// One-way latency in nanoseconds of `iterations` round trips of `size`-byte messages.
pub fn latency(size: usize, iterations: u64) -> f64 {
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    let unique = format!(
        "mmapkit-bench/{}/{}",
        std::process::id(),
        crate::process::now_ns()
    );
    let (ping, pong) = (format!("{unique}/ping"), format!("{unique}/pong"));
    let warm_up = iterations / 10;
    let ready = Handshake::new();
    let child = fork(|| {
        let ports = ports(&pong, &ping, size);
        ready.signal();
        for _ in 0..warm_up + iterations {
            receive(&ports);
            send(&ports, size);
        }
    });
    let ports = ports(&ping, &pong, size);
    ready.wait();
    let round_trip = || {
        send(&ports, size);
        receive(&ports);
    };
    (0..warm_up).for_each(|_| round_trip());
    let started = Instant::now();
    (0..iterations).for_each(|_| round_trip());
    let result = started.elapsed().as_nanos() as f64 / (2 * iterations) as f64;
    reap(child);
    result
}
