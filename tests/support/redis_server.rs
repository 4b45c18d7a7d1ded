//! A real Redis (Debian's `redis-server`, 7.x) on a free loopback port, for
//! the Redis store's tests; stopped when dropped. `.ci/run` installs it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Durable as valet asks (AOF, fsync always, no eviction), plus `extra`
    /// (`--name value` pairs; later ones win).
    pub fn start(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        // A port the kernel just gave out and took back is free, barring a
        // race with another test: then this server does not start, and
        // another port is tried.
        for _ in 0..5 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if server.try_start() {
                return server;
            }
        }
        panic!("redis-server did not start");
    }

    /// Stops it (SIGKILL: as a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with no data (a Redis restarted
    /// empty: no persistence, or its volume lost).
    pub fn restart_empty(&mut self) {
        self.stop();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        self.restart();
    }

    /// Stops it, copies its data aside (a backup), starts it again.
    pub fn backup(&mut self) -> tempfile::TempDir {
        self.stop();
        let to = tempfile::tempdir().unwrap();
        copy_dir(self.dir.path(), to.path());
        self.restart();
        to
    }

    /// Stops it, puts `backup`'s data in place of its own, starts it again.
    pub fn restore(&mut self, backup: &tempfile::TempDir) {
        self.stop();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        copy_dir(backup.path(), self.dir.path());
        self.restart();
    }

    /// Starts it again on the same port and data (its append-only file).
    pub fn restart(&mut self) {
        assert!(self.try_start(), "redis-server did not start again");
    }

    /// Starts it on `self.port`; false if it did not (the port taken).
    fn try_start(&mut self) -> bool {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            // Ours, not another test's server on the same port.
            let dir = self.cli(&["CONFIG", "GET", "dir"]);
            if !exited && dir.contains(self.dir.path().to_str().unwrap()) {
                return true;
            }
            if exited || Instant::now() > deadline {
                self.stop();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` on this server (as the default user); its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_as(None, args)
    }

    /// `redis-cli` as ACL user (name, password).
    pub fn cli_as(&self, user: Option<(&str, &str)>, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-p", &self.port.to_string()]);
        if let Some((u, p)) = user {
            c.args(["--user", u, "--pass", p, "--no-auth-warning"]);
        }
        let out = c.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a failed");
}
