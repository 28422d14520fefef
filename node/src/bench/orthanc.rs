//! Debian's Orthanc as a reference in benchmarks. It listens on every address whatever its
//! configuration, so it runs only in a network namespace of its own that has nothing but a
//! loopback; the clients that measure it are started in there too. It is stopped by its PID and
//! the namespace is deleted when [`Orthanc`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(super) const ORTHANC: &str = "/usr/sbin/Orthanc";
pub(super) const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";
pub(super) const ECHOSCU: &str = "/usr/bin/echoscu";
pub(super) const IP: &str = "/usr/sbin/ip";
pub(super) const AET: &str = "ORTHANC";
pub(super) const DICOM_PORT: u16 = 4242;
pub(super) const HTTP_PORT: u16 = 8042;

/// A child process killed (by its PID) and reaped when dropped, whatever happened meanwhile.
pub(super) struct Guard(pub(super) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace with only a loopback, deleted when dropped.
pub(super) struct Netns(String);

impl Netns {
    pub(super) fn new(name: String) -> Result<Self, String> {
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(IP)
                .args(args)
                .output()
                .map_err(|e| format!("{IP}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &name])?;
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `program` run inside the namespace.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut c = Command::new(IP);
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(IP).args(["netns", "del", &self.0]).output();
    }
}

/// Why Orthanc cannot be measured here (with its DICOMweb plugin when `dicomweb`), if it cannot.
pub(super) fn missing(dicomweb: bool) -> Option<String> {
    if !Path::new(ORTHANC).is_file() {
        return Some(format!(
            "{ORTHANC} is not installed (Debian package orthanc)"
        ));
    }
    if dicomweb && !Path::new(DICOMWEB_PLUGIN).is_file() {
        return Some(format!(
            "{DICOMWEB_PLUGIN} is not installed (Debian package orthanc-dicomweb)"
        ));
    }
    if !Path::new(IP).is_file() || !Path::new(ECHOSCU).is_file() {
        return Some(format!(
            "{IP} (iproute2) and {ECHOSCU} are needed to run Orthanc apart"
        ));
    }
    if !rustix::process::geteuid().is_root() {
        return Some(
            "Orthanc listens on all addresses, so it runs only in a network namespace of its \
             own, which needs root"
                .into(),
        );
    }
    None
}

/// A running Orthanc in its own namespace, answering C-ECHO.
pub(super) struct Orthanc {
    // Dropped in this order: Orthanc first, then its namespace.
    _process: Guard,
    ns: Netns,
    storage: PathBuf,
}

impl Orthanc {
    /// Starts Orthanc with its files under `root`, DICOM on 127.0.0.1:4242 of its namespace and,
    /// with `dicomweb`, HTTP with the DICOMweb plugin on 127.0.0.1:8042 (`/dicom-web/`).
    pub(super) fn start(root: &Path, dicomweb: bool) -> Result<Self, String> {
        std::fs::create_dir_all(root).map_err(|e| e.to_string())?;
        let config = root.join("orthanc.json");
        let storage = root.join("storage");
        let mut conf = serde_json::json!({
            "Name": "discless-bench",
            "StorageDirectory": storage,
            "IndexDirectory": root.join("index"),
            "StorageCompression": false,
            "HttpServerEnabled": dicomweb,
            "HttpPort": HTTP_PORT,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomServerEnabled": true,
            "DicomAet": AET,
            "DicomPort": DICOM_PORT,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowEcho": true,
            "Plugins": [],
        });
        if dicomweb {
            conf["Plugins"] = serde_json::json!([DICOMWEB_PLUGIN]);
            conf["DicomWeb"] = serde_json::json!({ "Enable": true, "Root": "/dicom-web/" });
        }
        std::fs::write(&config, conf.to_string()).map_err(|e| e.to_string())?;
        let name = format!(
            "dlbench{}{}",
            std::process::id(),
            root.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>())
                .unwrap_or_default()
        );
        let ns = Netns::new(name)?;
        let log = std::fs::File::create(root.join("orthanc.log")).map_err(|e| e.to_string())?;
        // Orthanc's DICOM side is dcmtk: without this, Nagle delays every C-STORE-RSP ~40 ms.
        let child = ns
            .command(ORTHANC)
            .env("TCP_NODELAY", "1")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {ORTHANC}: {e}"))?;
        // `ip netns exec` execs Orthanc: this PID is Orthanc's.
        let mut process = Guard(child);
        let start = Instant::now();
        loop {
            let echo = ns
                .command(ECHOSCU)
                .args(["-aec", AET, "127.0.0.1", &DICOM_PORT.to_string()])
                .output()
                .map_err(|e| format!("{ECHOSCU}: {e}"))?;
            if echo.status.success() {
                break;
            }
            if let Ok(Some(s)) = process.0.try_wait() {
                return Err(format!(
                    "Orthanc exited early ({s}); see {}",
                    root.join("orthanc.log").display()
                ));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err("Orthanc did not answer C-ECHO within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            _process: process,
            ns,
            storage,
        })
    }

    pub(super) fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Files in its storage area (one per stored instance, at least).
    pub(super) fn stored_files(&self) -> u64 {
        walkdir::WalkDir::new(&self.storage)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .count() as u64
    }
}
