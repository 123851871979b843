//! Two unrelated processes, started from two shells, exchanging messages through a named
//! channel in /dev/shm.
//!
//! ```text
//! shell 1$ cargo run -p mmapkit --example named_channel -- receive demo
//! shell 2$ cargo run -p mmapkit --example named_channel -- send demo hello from shell two
//! shell 2$ echo "more lines" | cargo run -p mmapkit --example named_channel -- send demo
//! ```
//!
//! The receiver creates the channel (or reuses it if a sender created it first) and prints
//! each message; it reports when a sender leaves and waits for the next one. Ctrl-C ends it;
//! `cargo run -p mmapkit --example named_channel -- remove demo` removes the channel's name.

use std::io::BufRead;
use std::time::Duration;

use mmapkit::ErrorKind;
use mmapkit::channel::{ByteChannel, ChannelOptions};

fn main() -> mmapkit::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [command, name] if command == "receive" => receive(name),
        [command, name] if command == "remove" => mmapkit::shm::unlink(name),
        [command, name, words @ ..] if command == "send" => send(name, words),
        _ => {
            eprintln!("usage: named_channel receive NAME | send NAME [WORDS...] | remove NAME");
            std::process::exit(2);
        }
    }
}

fn open_or_create(name: &str) -> mmapkit::Result<ByteChannel> {
    match ByteChannel::create(name, &ChannelOptions::new(64 * 1024)) {
        Err(error) if error.kind() == ErrorKind::AlreadyExists => ByteChannel::open(name),
        result => result,
    }
}

fn receive(name: &str) -> mmapkit::Result<()> {
    let channel = open_or_create(name)?;
    let mut receiver = channel.receiver()?;
    println!("receiving on /dev/shm/{name}; send with: named_channel send {name} WORDS...");
    loop {
        match receiver.recv_timeout(Duration::from_secs(3600)) {
            Ok(message) => println!("received: {}", String::from_utf8_lossy(&message)),
            Err(error) if error.kind() == ErrorKind::Disconnected => {
                println!("(the sender left; waiting for the next one)");
                drop(receiver);
                receiver = channel.receiver()?;
            }
            Err(error) if error.kind() == ErrorKind::Timeout => {}
            Err(error) => return Err(error),
        }
    }
}

fn send(name: &str, words: &[String]) -> mmapkit::Result<()> {
    let channel = open_or_create(name)?;
    let mut sender = channel.sender()?;
    if !words.is_empty() {
        return sender.send(words.join(" ").as_bytes());
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|error| mmapkit::Error::io("read stdin", &error))?;
        sender.send(line.as_bytes())?;
    }
    Ok(())
}
