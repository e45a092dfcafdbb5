//! The stop signals every long-running subcommand honours: SIGTERM (Kubernetes, `ebb scale`)
//! and SIGINT (Ctrl-C), listened to in one place.

use std::fmt;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
        })
    }
}

/// Listens for SIGTERM and SIGINT from the moment it is made; [`StopSignals::recv`] waits
/// for the next one, so a second signal can be told from the first.
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    /// Starts listening. Fails only if the process cannot install a signal handler.
    pub fn new() -> anyhow::Result<Self> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot listen for {name}"))
        };
        Ok(StopSignals {
            terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// The next SIGTERM or SIGINT. Cancel-safe: usable as a `tokio::select!` branch in a
    /// loop without losing a signal.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            Some(()) = self.terminate.recv() => StopSignal::Terminate,
            Some(()) = self.interrupt.recv() => StopSignal::Interrupt,
            // Both streams closed: no signal can come any more.
            else => std::future::pending().await,
        }
    }
}
