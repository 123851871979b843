//! A poll loop waiting on a channel and a socket at once.
//!
//! The server creates a pollable channel and a Unix socket, starts a client process, and hands
//! it the channel over the socket. The client then sends numbers through the channel and a few
//! words through the socket; the server's one `poll` call watches both the channel's doorbell
//! and the socket, and says which woke it.
//!
//! ```text
//! $ cargo run -p mmapkit --example poll_loop
//! ```

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use mmapkit::ErrorKind;
use mmapkit::channel::{Channel, ChannelOptions};
use rustix::event::{PollFd, PollFlags, Timespec};

fn main() -> mmapkit::Result<()> {
    if let Some(socket) = std::env::args()
        .nth(2)
        .filter(|_| std::env::args().nth(1).as_deref() == Some("client"))
    {
        return client(&socket);
    }
    let directory = tempfile::tempdir().map_err(|error| mmapkit::Error::io("tempdir", &error))?;
    let path = directory.path().join("socket");
    let listener = UnixListener::bind(&path).map_err(|error| mmapkit::Error::io("bind", &error))?;
    let channel = Channel::<u64>::create_memfd(ChannelOptions::new(64).pollable(true))?;
    let exe = std::env::current_exe().map_err(|error| mmapkit::Error::io("current_exe", &error))?;
    let mut child = Command::new(exe)
        .args(["client", path.to_str().unwrap_or_default()])
        .spawn()
        .map_err(|error| mmapkit::Error::io("spawn", &error))?;
    let (mut stream, _) = listener
        .accept()
        .map_err(|error| mmapkit::Error::io("accept", &error))?;
    channel.send_over(&stream)?;
    let mut receiver = channel.receiver()?;

    let (mut channel_open, mut socket_open) = (true, true);
    while channel_open || socket_open {
        let channel_ready = channel_open && receiver.arm()?;
        let doorbell = receiver.pollable_fd().expect("the channel is pollable");
        let mut fds = [
            PollFd::new(&stream, PollFlags::IN),
            PollFd::new(&doorbell, PollFlags::IN),
        ];
        let watched = if channel_open && !channel_ready { 2 } else { 1 };
        let timeout = Timespec {
            tv_sec: if channel_ready { 0 } else { 10 },
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds[..watched], Some(&timeout))
            .map_err(|errno| mmapkit::Error::os("poll", errno))?;
        if socket_open && fds[0].revents().intersects(PollFlags::IN | PollFlags::HUP) {
            let mut text = [0u8; 256];
            let len = stream
                .read(&mut text)
                .map_err(|error| mmapkit::Error::io("read", &error))?;
            match len {
                0 => socket_open = false,
                _ => println!(
                    "socket  woke the loop: {:?}",
                    String::from_utf8_lossy(&text[..len])
                ),
            }
        }
        while channel_open {
            match receiver.try_recv() {
                Ok(Some(number)) => println!("channel woke the loop: {number}"),
                Ok(None) => break,
                Err(error) if error.kind() == ErrorKind::Disconnected => channel_open = false,
                Err(error) => return Err(error),
            }
        }
    }
    child
        .wait()
        .map_err(|error| mmapkit::Error::io("wait", &error))?;
    println!("both closed; done");
    Ok(())
}

fn client(socket: &str) -> mmapkit::Result<()> {
    let mut stream =
        UnixStream::connect(socket).map_err(|error| mmapkit::Error::io("connect", &error))?;
    let channel = Channel::<u64>::receive_from(&stream)?;
    let mut sender = channel.sender()?;
    for round in 0..3u64 {
        sender.send(&(round * 10))?;
        std::thread::sleep(Duration::from_millis(100));
        let words = format!("hello #{round} over the socket");
        stream
            .write_all(words.as_bytes())
            .map_err(|error| mmapkit::Error::io("write", &error))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
