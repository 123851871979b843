//! A read-only store over HTTP: each page is one range request (`Range: bytes=a-b`).
//!
//! Opening asks the server for the resource's length (HEAD) and checks that it serves byte
//! ranges. Every range request then carries the resource's validator (`If-Match` with its
//! ETag, or `If-Unmodified-Since` with its Last-Modified date), so that a resource replaced
//! on the server makes reads fail — an error value — instead of mixing pages of two
//! versions. Connections are kept alive and shared by the handler threads; every request has
//! a deadline, so a server that stops answering makes the read fail rather than hang.
//!
//! Plain `http://` only: TLS is left to a reverse proxy (or a store of your own).

use std::io::{self, Read};
use std::time::Duration;

use super::Store;

/// The default deadline of one request, from connecting to the last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP resource as a read-only [`Store`].
#[derive(Debug)]
pub struct HttpStore {
    agent: ureq::Agent,
    url: String,
    len: u64,
    validator: Option<(&'static str, String)>,
}

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

fn request_error(url: &str, error: ureq::Error) -> io::Error {
    match error {
        ureq::Error::Io(error) => io::Error::new(error.kind(), format!("{url}: {error}")),
        ureq::Error::Timeout(what) => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{url}: timed out ({what})"),
        ),
        error => other(format!("{url}: {error}")),
    }
}

impl HttpStore {
    /// Opens `url` with the default deadline per request.
    pub fn open(url: &str) -> crate::Result<HttpStore> {
        HttpStore::with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// Opens `url`; every request must complete within `timeout`. `Unsupported` for a scheme
    /// other than `http://` (no TLS here).
    pub fn with_timeout(url: &str, timeout: Duration) -> crate::Result<HttpStore> {
        if !url.starts_with("http://") {
            let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
            return Err(crate::Error::new(
                crate::ErrorKind::Unsupported,
                "open store",
                format!("the {scheme:?} scheme is not supported: only http:// is"),
            ));
        }
        HttpStore::connect(url, timeout).map_err(|error| crate::Error::io("open store", &error))
    }

    fn connect(url: &str, timeout: Duration) -> io::Result<HttpStore> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .head(url)
            .call()
            .map_err(|error| request_error(url, error))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{url}: 404 not found"),
            ));
        }
        if status != 200 {
            return Err(other(format!(
                "{url}: the server answered HEAD with {status}"
            )));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let len = header("content-length")
            .and_then(|len| len.parse::<u64>().ok())
            .ok_or_else(|| other(format!("{url}: the server does not say how long it is")))?;
        if header("accept-ranges").as_deref() != Some("bytes") {
            return Err(other(format!(
                "{url}: the server does not serve byte ranges"
            )));
        }
        let validator = header("etag")
            .filter(|etag| !etag.starts_with("W/"))
            .map(|etag| ("if-match", etag))
            .or_else(|| header("last-modified").map(|date| ("if-unmodified-since", date)));
        Ok(HttpStore {
            agent,
            url: url.to_owned(),
            len,
            validator,
        })
    }
}

impl Store for HttpStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let last = offset
            .checked_add(buf.len() as u64 - 1)
            .filter(|&last| last < self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut request = self
            .agent
            .get(&self.url)
            .header("range", format!("bytes={offset}-{last}"));
        if let Some((name, value)) = &self.validator {
            request = request.header(*name, value);
        }
        let mut response = request
            .call()
            .map_err(|error| request_error(&self.url, error))?;
        match response.status().as_u16() {
            206 => {
                let expected = format!("bytes {offset}-{last}/{}", self.len);
                let range = response
                    .headers()
                    .get("content-range")
                    .and_then(|value| value.to_str().ok());
                if range != Some(expected.as_str()) {
                    return Err(other(format!(
                        "{}: asked for {expected}, the server sent {}",
                        self.url,
                        range.unwrap_or("no Content-Range")
                    )));
                }
            }
            412 => {
                return Err(other(format!(
                    "{}: the resource changed on the server since it was opened",
                    self.url
                )));
            }
            200 => {
                return Err(other(format!(
                    "{}: the server ignored the byte range and sent the whole resource",
                    self.url
                )));
            }
            status => {
                return Err(other(format!(
                    "{}: range {offset}-{last} answered with {status}",
                    self.url
                )));
            }
        }
        let mut body = response.body_mut().as_reader();
        body.read_exact(buf)
            .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", self.url)))?;
        let mut extra = [0u8; 1];
        if body.read(&mut extra)? != 0 {
            return Err(other(format!(
                "{}: range {offset}-{last} returned more bytes than asked for",
                self.url
            )));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
