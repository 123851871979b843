//! The pager's built-in stores end to end: a seekable zstd archive, and HTTP range requests
//! against a real nginx started by the test (nginx must be installed; `.ci/run` installs it).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mmapkit::ErrorKind;
use mmapkit::pager::{CompressedStore, HttpStore, Pager, SeekableWriter, Store};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 3) * 7 % 251) as u8).collect()
}

/// Reads the region in a scan and at scattered offsets, comparing with `expected`.
fn check_contents(region: &mmapkit::pager::PagedRegion, expected: &[u8]) {
    let mut scanned = vec![0u8; expected.len()];
    for (index, chunk) in scanned.chunks_mut(300_000).enumerate() {
        region.read_at(index * 300_000, chunk).unwrap();
    }
    assert!(scanned == expected, "the scan differs from the source");
    let mut buf = [0u8; 777];
    for step in 0..200 {
        let offset = (step * 982_451) % (expected.len() - buf.len());
        region.read_at(offset, &mut buf).unwrap();
        assert_eq!(buf[..], expected[offset..offset + buf.len()], "at {offset}");
    }
}

fn write_archive(path: &Path, data: &[u8], frame_size: usize) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SeekableWriter::new(std::io::BufWriter::new(file), frame_size, 3).unwrap();
    for piece in data.chunks(10_000) {
        writer.write_all(piece).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn a_seekable_zstd_archive_pages_like_the_data_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.zst");
    let data = pattern(3 * 1024 * 1024 + 12_345);
    write_archive(&path, &data, 256 * 1024);
    let compressed = std::fs::metadata(&path).unwrap().len();
    assert!(
        compressed < data.len() as u64 / 4,
        "the pattern compresses well"
    );

    let store = CompressedStore::open(&path).unwrap();
    assert_eq!(store.len(), data.len() as u64);
    let region = Pager::new(store)
        .page_size(16 * 1024)
        .budget(512 * 1024)
        .build()
        .unwrap();
    assert!(!region.is_writable());
    check_contents(&region, &data);
    assert!(region.stats().evictions > 0);
}

#[test]
fn a_damaged_archive_frame_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.zst");
    let data = pattern(1024 * 1024);
    write_archive(&path, &data, 128 * 1024);
    // Damage the middle of the first frame's compressed bytes.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let region = Pager::new(CompressedStore::open(&path).unwrap())
        .build()
        .unwrap();
    let mut buf = [0u8; 16];
    let error = region.read_at(1000, &mut buf).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
    region.read_at(600 * 1024, &mut buf).unwrap();
    assert_eq!(buf[..], data[600 * 1024..600 * 1024 + 16]);

    std::fs::write(&path, &data[..1000]).unwrap();
    let error = CompressedStore::open(&path).unwrap_err();
    assert!(
        error.to_string().contains("not a seekable zstd archive"),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::Corrupt, "{error}");
    assert_eq!(error.path(), Some(path.as_path()));
}

/// An nginx serving `root` on a free loopback port, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .expect("nginx is needed for the HTTP store tests: apt-get install nginx-light");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let prefix = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n\
             proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n\
             uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        nginx
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn an_http_resource_pages_through_range_requests() {
    let www = tempfile::tempdir().unwrap();
    let data = pattern(2 * 1024 * 1024 + 4321);
    std::fs::write(www.path().join("data.bin"), &data).unwrap();
    let nginx = Nginx::start(www.path());

    let store = HttpStore::open(&nginx.url("data.bin")).unwrap();
    assert_eq!(store.len(), data.len() as u64);
    let region = Pager::new(store)
        .page_size(64 * 1024)
        .budget(256 * 1024)
        .build()
        .unwrap();
    check_contents(&region, &data);
    let stats = region.stats();
    assert!(stats.evictions > 0 && stats.pages_prefetched > 0, "{stats}");

    let error = HttpStore::open(&nginx.url("missing.bin")).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    for url in ["https://127.0.0.1/data.bin", "ftp://127.0.0.1/data.bin"] {
        let error = HttpStore::open(url).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
        assert!(error.to_string().contains("only http:// is"), "{error}");
    }
}

#[test]
fn a_resource_replaced_on_the_server_fails_reads_instead_of_mixing_versions() {
    let www = tempfile::tempdir().unwrap();
    let path = www.path().join("data.bin");
    std::fs::write(&path, pattern(1024 * 1024)).unwrap();
    let nginx = Nginx::start(www.path());
    let region = Pager::new(HttpStore::open(&nginx.url("data.bin")).unwrap())
        .readahead(0)
        .build()
        .unwrap();
    let mut buf = [0u8; 8];
    region.read_at(0, &mut buf).unwrap();

    let replacement = vec![0xeeu8; 1024 * 1024];
    std::fs::write(&path, &replacement).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    let error = region.read_at(512 * 1024, &mut buf).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store);
    assert!(error.to_string().contains("changed"), "{error}");
}

#[test]
fn a_server_that_goes_away_gives_errors_not_hangs() {
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("data.bin"), pattern(1024 * 1024)).unwrap();
    let mut nginx = Nginx::start(www.path());
    let store = HttpStore::with_timeout(&nginx.url("data.bin"), Duration::from_secs(2)).unwrap();
    let region = Pager::new(store).readahead(0).build().unwrap();
    let mut buf = [0u8; 8];
    region.read_at(0, &mut buf).unwrap();
    nginx.stop();
    let started = Instant::now();
    let error = region.read_at(700 * 1024, &mut buf).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Store, "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    region.read_at(0, &mut buf).unwrap();
}

#[test]
fn a_file_store_whose_file_shrinks_reports_truncated_with_file_and_offset() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("data.bin");
    std::fs::write(&path, pattern(256 * 1024)).unwrap();
    let store = mmapkit::pager::FileStore::open(&path, false).unwrap();
    let region = Pager::new(store)
        .page_size(4096)
        .readahead(0)
        .build()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let mut buf = [0u8; 16];
    let error = region.read_at(100 * 1024, &mut buf).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Truncated, "{error}");
    let text = error.to_string();
    assert!(text.contains("data.bin was truncated"), "{text}");
    assert!(
        text.contains("102400"),
        "the store's offset is named: {text}"
    );
    assert_eq!(error.offset(), Some(100 * 1024));
}

#[test]
fn store_constructors_name_what_is_wrong() {
    let directory = tempfile::tempdir().unwrap();
    let fifo = directory.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        0o600.into(),
        0,
    )
    .unwrap();
    let error = mmapkit::pager::FileStore::open(&fifo, false).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    assert!(error.to_string().contains("a FIFO"), "{error}");
    assert_eq!(error.path(), Some(fifo.as_path()));
    let missing = directory.path().join("missing");
    let error = mmapkit::pager::FileStore::open(&missing, false).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    let error = SeekableWriter::new(Vec::new(), 0, 3).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
}
