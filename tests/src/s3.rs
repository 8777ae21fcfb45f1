//! An S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on a free loopback
//! port, run from a temp dir, with a bucket created for the test and static credentials that
//! both stowage and restic are given.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use crate::{TestProcess, free_port};

pub const ACCESS_KEY_ID: &str = "stowage-test-key";
pub const SECRET_ACCESS_KEY: &str = "stowage-test-secret";
pub const REGION: &str = "us-east-1";

/// A running `moto_server` with one bucket.
pub struct S3Server {
    pub process: TestProcess,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub port: u16,
    pub bucket: String,
}

/// One HTTP/1.1 request without a body; returns the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:.200}")))
}

impl S3Server {
    /// Starts `moto_server` with its log in `dir` and creates `bucket` (at least 3 characters,
    /// as S3 requires).
    pub fn start(dir: &Path, bucket: &str) -> S3Server {
        let port = free_port();
        let mut process = TestProcess::start(
            "moto-server",
            "moto_server",
            &[
                "-H".to_string(),
                "127.0.0.1".to_string(),
                "-p".to_string(),
                port.to_string(),
            ],
            &BTreeMap::new(),
            dir,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("moto_server exited with {status}; log:\n{}", process.log());
            }
            if http(port, "GET", "/").is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port}; log:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let server = S3Server {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            bucket: bucket.to_string(),
        };
        server.create_bucket(bucket);
        server
    }

    /// Creates another bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        assert!(bucket.len() >= 3, "S3 bucket names need 3 characters");
        let status = http(self.port, "PUT", &format!("/{bucket}"))
            .unwrap_or_else(|error| panic!("creating bucket {bucket}: {error}"));
        assert_eq!(status, 200, "creating bucket {bucket}");
    }

    /// Credentials and region, for stowage's services and for restic.
    pub fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY_ID.to_string()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                SECRET_ACCESS_KEY.to_string(),
            ),
            ("AWS_DEFAULT_REGION".to_string(), REGION.to_string()),
        ])
    }

    /// `s3://<bucket>[/<prefix>]`, the storage URL of the bucket.
    pub fn storage_url(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// The storage flags a stowage service needs for this server.
    pub fn storage_args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--storage-url".to_string(),
            self.storage_url(prefix),
            "--s3-endpoint".to_string(),
            self.endpoint.clone(),
            "--s3-region".to_string(),
            REGION.to_string(),
            "--s3-path-style".to_string(),
        ]
    }
}
