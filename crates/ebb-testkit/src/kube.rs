//! Kubernetes for deploy tests: the tools `scripts/k8s-tools` installs (helm, kubeconform,
//! checkov, kubectl, a kube-apiserver built from source) and a real API server on loopback
//! ports, backed by Debian's etcd, for the life of a [`KubeApiServer`] value.
//!
//! Nothing here schedules Pods: there is no controller manager, kubelet or container
//! runtime. Objects are stored, defaulted and validated by the real API server, which is
//! what a deploy check needs.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{free_port, repo_root, unique};

/// The tools directory (`bin/`, `schemas/`, `keda/crds/`), installing what is missing the
/// first time a test process asks: the first install on a new machine takes ~15 minutes
/// (the kube-apiserver build), with progress on stderr; later ones a second.
pub fn tools() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("scripts/k8s-tools");
        let status = Command::new(&script)
            .arg("install")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "`scripts/k8s-tools install` failed ({status}); its output above says what is \
             missing. It needs Go, Python 3 with venv, and apt-get for Debian's etcd-server."
        );
        let out = Command::new(&script)
            .arg("dir")
            .output()
            .expect("scripts/k8s-tools dir");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The path of an installed tool (`helm`, `kubeconform`, `checkov`, `kubectl`, ...).
pub fn tool(name: &str) -> PathBuf {
    tools().join("bin").join(name)
}

/// Runs a command and returns its output; panics if it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout. Panics with both streams if not.
pub fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}).\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// etcd and kube-apiserver running on loopback ports; both are stopped (and their data
/// deleted) when this value drops, a failing test included.
pub struct KubeApiServer {
    dir: PathBuf,
    etcd: Child,
    apiserver: Child,
    /// A kubeconfig with cluster-admin rights (a static token in `system:masters`).
    pub kubeconfig: PathBuf,
}

impl KubeApiServer {
    /// Starts etcd and the API server and waits until `/readyz` answers (a few seconds).
    pub fn start() -> Self {
        let bin = tools().join("bin");
        let dir = std::env::temp_dir().join(unique("ebb-kube"));
        std::fs::create_dir_all(dir.join("certs")).expect("kube test dir");
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());

        let etcd = Command::new("etcd")
            .args(["--name", "ebb-test", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=ebb-test=http://127.0.0.1:{peer_port}"
            ))
            .stdout(log_file(&dir, "etcd.log"))
            .stderr(log_file(&dir, "etcd.log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}); install it with: scripts/k8s-tools install")
            });

        let key = dir.join("sa.key");
        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048")
                .stderr(Stdio::null()),
        );
        let token = unique("token");
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{token},ebb-test-admin,ebb-test-admin,\"system:masters\"\n"),
        )
        .expect("token file");
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={api_port}"))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--endpoint-reconciler-type=none")
            .stdout(log_file(&dir, "kube-apiserver.log"))
            .stderr(log_file(&dir, "kube-apiserver.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}/kube-apiserver: {e}", bin.display()));

        let kubeconfig = dir.join("kubeconfig");
        let mut server = KubeApiServer {
            dir,
            etcd,
            apiserver,
            kubeconfig,
        };
        server.wait_ready(api_port, &token);
        server
    }

    fn wait_ready(&mut self, port: u16, token: &str) {
        // The API server writes its self-signed serving certificate into --cert-dir at start.
        let ca = self.dir.join("certs/apiserver.crt");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited with {status}; its log:\n{}",
                        tail(&self.dir.join(format!("{name}.log")))
                    );
                }
            }
            if ca.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver did not listen on 127.0.0.1:{port} within 90 s; its log:\n{}",
                tail(&self.dir.join("kube-apiserver.log"))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n",
            ca.display()
        );
        std::fs::write(&self.kubeconfig, config).expect("kubeconfig");
        loop {
            let out = run(self.kubectl().args(["get", "--raw", "/readyz"]));
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver is not ready within 90 s: {}\nits log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.dir.join("kube-apiserver.log"))
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A `kubectl` command pointed at this server.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(tool("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// `kubectl get <what> -n <namespace> -o jsonpath=<path>`: the stored value(s) at `path`
    /// (`what` is the resource and any selector arguments).
    pub fn get(&self, namespace: &str, what: &[&str], path: &str) -> String {
        run_ok(
            self.kubectl()
                .arg("get")
                .args(what)
                .args(["-n", namespace, "-o"])
                .arg(format!("jsonpath={path}")),
        )
    }

    /// Applies `manifest` server-side in `namespace`; panics naming `what` (and with the
    /// server's answer) if it is refused.
    pub fn apply(&self, namespace: &str, manifest: &str, what: &str) {
        let out = self.kubectl_stdin(&["apply", "--server-side", "-n", namespace], manifest);
        assert!(
            out.status.success(),
            "applying {what} in namespace {namespace}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl <args> -f -` with `manifest` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], manifest: &str) -> Output {
        let mut child = self
            .kubectl()
            .args(args)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(manifest.as_bytes())
            .expect("write manifest to kubectl");
        child.wait_with_output().expect("kubectl output")
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
