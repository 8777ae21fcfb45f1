//! An S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on a free loopback
//! port, run from a temp dir, with a bucket created for the test and static credentials that
//! both stowage and restic are given; optionally behind an [`S3Gate`] a test can shut.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{TestProcess, free_port};

pub const ACCESS_KEY_ID: &str = "stowage-test-key";
pub const SECRET_ACCESS_KEY: &str = "stowage-test-secret";
pub const REGION: &str = "us-east-1";

/// A running `moto_server` with one bucket.
pub struct S3Server {
    pub process: TestProcess,
    /// `http://127.0.0.1:<port>`, or the gate's address when the server is behind one.
    pub endpoint: String,
    /// moto's own port.
    pub port: u16,
    pub bucket: String,
    /// The relay every client goes through, after [`S3Server::behind_gate`].
    pub gate: Option<S3Gate>,
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
            gate: None,
        };
        server.create_bucket(bucket);
        server
    }

    /// Puts an open [`S3Gate`] in front of the server: [`S3Server::endpoint`] (and so
    /// [`S3Server::storage_args`]) then leads through it.
    pub fn behind_gate(mut self) -> S3Server {
        let gate = S3Gate::open_in_front_of(self.port);
        self.endpoint = format!("http://127.0.0.1:{}", gate.port);
        self.gate = Some(gate);
        self
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

/// A TCP relay in front of the S3 server that a test can shut and open again. Shut, its port
/// refuses connections and the relayed ones are cut, as when the server stops; the server keeps
/// running, so its objects are all there when the gate opens again (moto keeps them in memory:
/// a restarted moto starts empty).
pub struct S3Gate {
    pub port: u16,
    upstream: u16,
    accepting: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    relayed: Arc<Mutex<Vec<TcpStream>>>,
}

impl S3Gate {
    fn open_in_front_of(upstream: u16) -> S3Gate {
        let mut gate = S3Gate {
            port: crate::free_port(),
            upstream,
            accepting: None,
            relayed: Arc::default(),
        };
        gate.open();
        gate
    }

    pub fn is_open(&self) -> bool {
        self.accepting.is_some()
    }

    /// Listens on the gate's port again and relays every new connection to the server.
    pub fn open(&mut self) {
        if self.is_open() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "the S3 gate cannot listen on port {} again: {error}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        // Polled, so that shutting the gate can stop the loop and close the port.
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = {
            let stop = stop.clone();
            let relayed = self.relayed.clone();
            let upstream = self.upstream;
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => relay(client, upstream, &relayed),
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        self.accepting = Some((stop, accepting));
    }

    /// Closes the gate's port (new connections are refused) and cuts every relayed connection.
    pub fn shut(&mut self) {
        if let Some((stop, accepting)) = self.accepting.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = accepting.join();
        }
        let mut relayed = self.relayed.lock().unwrap_or_else(|e| e.into_inner());
        for stream in relayed.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for S3Gate {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Copies bytes both ways between `client` and a new connection to `upstream`, keeping both
/// sockets in `relayed` so [`S3Gate::shut`] can cut them.
fn relay(client: TcpStream, upstream: u16, relayed: &Mutex<Vec<TcpStream>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    let (Ok(client_in), Ok(server_in), Ok(client_kept), Ok(server_kept)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    relayed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([client_kept, server_kept]);
    for (mut from, mut to) in [(client_in, server), (server_in, client)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
