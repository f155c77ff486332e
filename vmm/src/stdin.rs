//! The stdin forwarder: a detached thread that feeds host stdin to the
//! guest, to ttyS1's receive FIFO or to the virtio-console's stdin port,
//! whichever guest-init says the program reads, once it says so.

use std::io::Read;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::builder::{ConsoleUart, VmDevices};
use crate::devices::bus::lock;
use crate::devices::virtio::console::ConsoleInput;
use crate::{host_err, seccomp, StdinReader, VmmError};

/// Starts the stdin forwarder for `devices` (its thread under the stdin
/// filter, if any);
/// the sender returned opens its gate with the reader guest-init names.
pub(crate) fn forward_stdin(
    devices: &VmDevices,
    filters: Option<&seccomp::Filters>,
) -> Result<mpsc::Sender<StdinReader>, VmmError> {
    let (open, gate) = mpsc::channel();
    let targets = StdinTargets {
        uart: Arc::downgrade(&devices.stdout),
        console: devices.console_input.clone(),
    };
    spawn_stdin_forwarder(targets, gate, filters.map(|f| f.stdin.clone()))?;
    Ok(open)
}

/// Where host stdin goes.
enum StdinTarget {
    /// ttyS1's receive FIFO: no end of file.
    Uart(Weak<Mutex<ConsoleUart>>),
    /// The virtio-console's stdin port, which ends when stdin does.
    Virtio(ConsoleInput),
}

impl StdinTarget {
    /// Hands over as much of `data` as there is room for; `None` once the
    /// device is gone.
    fn send(&self, data: &[u8]) -> Option<usize> {
        match self {
            // Upgraded per attempt: between attempts (and while blocked
            // in `read`) only the weak reference is held.
            StdinTarget::Uart(uart) => {
                let uart = uart.upgrade()?;
                let sent = lock(&uart).receive(data);
                Some(sent)
            }
            StdinTarget::Virtio(input) => input.push(data),
        }
    }

    fn end(&self) {
        if let StdinTarget::Virtio(input) = self {
            input.close();
        }
    }
}

/// Where host stdin may go; the gate says which.
struct StdinTargets {
    uart: Weak<Mutex<ConsoleUart>>,
    console: Option<ConsoleInput>,
}

/// Feeds host stdin to the target the gate names, never more than fits,
/// once the gate opens: the guest's serial driver clears the FIFO when it
/// opens the port, and the console's driver drops input for a port nobody
/// opened, so bytes sent earlier would be lost. The thread is detached: it
/// may be blocked in `read` when the VM ends. It holds the devices weakly,
/// so that the VM can be torn down meanwhile.
fn spawn_stdin_forwarder(
    targets: StdinTargets,
    gate: mpsc::Receiver<StdinReader>,
    filter: Option<seccompiler::BpfProgram>,
) -> Result<(), VmmError> {
    seccomp::spawn(
        "stdin".into(),
        seccomp::ThreadKind::Stdin,
        filter,
        move || {
            let target = match (gate.recv(), targets.console) {
                (Ok(StdinReader::ConsolePort), Some(console)) => StdinTarget::Virtio(console),
                (Ok(_), _) => StdinTarget::Uart(targets.uart),
                (Err(_), _) => return,
            };
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => return target.end(),
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let Some(sent) = target.send(rest) else {
                        return;
                    };
                    rest = &rest[sent..];
                    if sent == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        },
    )
    .map(drop)
    .map_err(host_err("start the stdin thread"))
}
