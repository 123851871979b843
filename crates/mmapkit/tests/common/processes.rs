//! Helpers for the test binaries that run without the libtest harness (so that fork happens
//! on a single thread): a case runner, fork, and waiting for children.

/// Runs each `(name, case)` in turn, or those whose name contains the first non-flag argument.
pub fn run(cases: &[(&str, fn())]) {
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let mut ran = 0;
    for (name, case) in cases {
        if filter
            .as_ref()
            .is_some_and(|filter| !name.contains(filter.as_str()))
        {
            continue;
        }
        print!("test {name} ... ");
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        case();
        println!("ok");
        ran += 1;
    }
    println!("\ntest result: ok. {ran} passed");
}

/// Runs `child` in a forked process, which exits with the code it returns (101 if it panics).
pub fn fork(child: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the test binaries that call this run without the libtest harness, on one
    // thread, so the child inherits no lock held by another thread.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: ends the child at once, without running the parent's exit handlers twice.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
}

/// Waits for the child `pid`.
pub fn wait(pid: libc::pid_t) -> Ended {
    let mut status = 0;
    // SAFETY: waits for our own child, writing its status into a valid integer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Ended::Signalled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}
