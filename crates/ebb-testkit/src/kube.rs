//! Kubernetes for deploy tests: the tools `scripts/k8s-tools` installs (helm, kubeconform,
//! checkov, kubectl, a kube-apiserver built from source) and a real API server on loopback
//! ports, backed by Debian's etcd, for the life of a [`KubeApiServer`] value.
//!
//! Nothing here schedules Pods: there is no controller manager, kubelet or container
//! runtime. Objects are stored, defaulted and validated by the real API server, which is
//! what a deploy check needs. [`KedaOperator`] runs the real KEDA operator against it.

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

    /// Applies (server-side) every CRD of the tools' `crds/` (KEDA's, the Prometheus
    /// operator's) and waits until KEDA's are established.
    pub fn install_crds(&self) {
        run_ok(
            self.kubectl()
                .args(["apply", "--server-side", "-f"])
                .arg(tools().join("crds")),
        );
        run_ok(self.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/scaledobjects.keda.sh",
            "crd/scaledjobs.keda.sh",
            "crd/triggerauthentications.keda.sh",
            "crd/clustertriggerauthentications.keda.sh",
            "crd/cloudeventsources.eventing.keda.sh",
            "crd/clustercloudeventsources.eventing.keda.sh",
        ]));
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

/// The real KEDA operator (`bin/keda-operator`, KEDA v2.21.0 built by `scripts/k8s-tools`)
/// running as a child process against a [`KubeApiServer`] until this value drops.
///
/// It runs as in a cluster except: leader election off; its Prometheus metrics, health
/// probes and gRPC metrics service on free 127.0.0.1 ports; the metrics service's TLS from a
/// self-signed certificate made with openssl; every namespace watched (`WATCH_NAMESPACE`
/// empty); `keda` as its own namespace (`KEDA_CLUSTER_OBJECT_NAMESPACE`, `POD_NAMESPACE`;
/// it need not exist). Nothing calls its metrics service: there is no KEDA metrics adapter
/// (and the aggregator cannot proxy to loopback), so the HPAs it creates never get metrics;
/// what the operator does itself — the ScaledObject's status, the HPA object, polling the
/// triggers and scaling the target 0 ↔ 1 — all happens. Its log (JSON lines) goes to
/// [`KedaOperator::log`].
pub struct KedaOperator {
    child: Child,
    dir: PathBuf,
    /// Its Prometheus endpoint, `127.0.0.1:<port>` (`keda_scaler_metrics_value`,
    /// `keda_scaler_active`, `keda_scaler_detail_errors_total`, ...).
    pub metrics_addr: String,
    /// Its health probes, `127.0.0.1:<port>` (`/healthz`, `/readyz`).
    pub health_addr: String,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

impl KedaOperator {
    /// Starts the operator against `server`, whose KEDA CRDs must be installed
    /// ([`KubeApiServer::install_crds`]), and waits until its `/readyz` answers.
    pub fn start(server: &KubeApiServer) -> Self {
        let binary = tool("keda-operator");
        assert!(
            binary.exists(),
            "{} is missing; install it with: scripts/k8s-tools install",
            binary.display()
        );
        let crd = run(server
            .kubectl()
            .args(["get", "crd", "scaledobjects.keda.sh"]));
        assert!(
            crd.status.success(),
            "KEDA's CRDs are not installed on this API server (call install_crds first): {}",
            String::from_utf8_lossy(&crd.stderr)
        );
        let dir = std::env::temp_dir().join(unique("ebb-keda-operator"));
        let (certs, ca) = (dir.join("certs"), dir.join("ca"));
        std::fs::create_dir_all(&certs).expect("keda-operator cert dir");
        std::fs::create_dir_all(&ca).expect("keda-operator ca dir");
        // The gRPC metrics service reads ca.crt, tls.crt and tls.key from --cert-dir; --ca-dir
        // is read for scalers' TLS and must hold certificates only (a key there is logged as
        // an error).
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                ])
                .arg("/CN=keda-operator")
                .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
                .arg("-keyout")
                .arg(certs.join("tls.key"))
                .arg("-out")
                .arg(certs.join("tls.crt"))
                .stderr(Stdio::null()),
        );
        std::fs::copy(certs.join("tls.crt"), certs.join("ca.crt")).expect("ca.crt");
        std::fs::copy(certs.join("tls.crt"), ca.join("ca.crt")).expect("ca dir");

        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let health_addr = format!("127.0.0.1:{}", free_port());
        let service_addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("keda-operator.log");
        let child = Command::new(&binary)
            .env("KUBECONFIG", &server.kubeconfig)
            .env("WATCH_NAMESPACE", "")
            .env("KEDA_CLUSTER_OBJECT_NAMESPACE", "keda")
            .env("POD_NAMESPACE", "keda")
            .arg("--leader-elect=false")
            .arg(format!("--metrics-bind-address={metrics_addr}"))
            .arg(format!("--health-probe-bind-address={health_addr}"))
            .arg(format!("--metrics-service-bind-address={service_addr}"))
            .arg(format!("--cert-dir={}", certs.display()))
            .arg(format!("--ca-dir={}", ca.display()))
            .stdout(log_file(&dir, "keda-operator.log"))
            .stderr(log_file(&dir, "keda-operator.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut operator = KedaOperator {
            child,
            dir,
            metrics_addr,
            health_addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&operator.health_addr, "/readyz").map(|(s, _)| s) != Some(200) {
            if let Ok(Some(status)) = operator.child.try_wait() {
                panic!(
                    "keda-operator exited with {status}; its log:\n{}",
                    operator.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "keda-operator is not ready on {} within 60 s; its log:\n{}",
                operator.health_addr,
                operator.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        operator
    }

    /// Its Prometheus metrics, as text (empty if it does not answer).
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics").map_or_else(String::new, |(_, body)| body)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log, lines, |_| true)
    }

    /// The last `lines` lines of its log that contain `text` (a namespace, an object name).
    pub fn log_tail_matching(&self, text: &str, lines: usize) -> String {
        tail_lines(&self.log, lines, |l| l.contains(text))
    }
}

impl Drop for KedaOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("keda-operator's log is kept in {}", self.log.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A GET of `http://{addr}{path}`: (status, body), or None if it does not answer in 5 s.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .proxy(None)
        .build()
        .into();
    let mut response = agent.get(&format!("http://{addr}{path}")).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

fn tail_lines(path: &Path, lines: usize, keep: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}
