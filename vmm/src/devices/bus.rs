//! A tiny bus: devices claim address ranges and see offsets into them. One
//! instance serves port I/O, another MMIO.

use std::sync::{Arc, Mutex};

/// Something a device write asks the VMM to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// The status channel received an exit status.
    Status(u8),
    /// The status channel received an `@event` line (name without `@`).
    Event(String),
    /// The guest asked for a reset (the VM ends).
    Reset,
}

/// A device model: a state machine driven by reads and writes at offsets.
pub trait BusDevice: Send {
    /// Fills `data` for a read at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write at `offset`; may return an event for the VMM.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent>;
}

/// Errors building the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("address range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A port-I/O or MMIO bus. Addresses without a device read as 0xff and
/// ignore writes, as on a PC with nothing at that address.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at addresses `base..base + len`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = u128::from(base) + u128::from(len);
        let overlaps = self.entries.iter().any(|e| {
            u128::from(base) < u128::from(e.base) + u128::from(e.len) && u128::from(e.base) < end
        });
        if overlaps || len == 0 {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.push(Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        self.entries
            .iter()
            .find(|e| addr >= e.base && addr - e.base < e.len)
            .map(|e| (e, addr - e.base))
    }

    /// Reads from `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((entry, offset)) => lock(&entry.device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to `addr`; returns the device's event, if any.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusEvent> {
        let (entry, offset) = self.find(addr)?;
        let event = lock(&entry.device).write(offset, data);
        event
    }
}

/// Locks a device even if another thread panicked while holding it: device
/// state stays usable, and the VM is ending in that case anyway.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, u8)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
            self.0.push((offset, data[0]));
            (data[0] == 0xfe).then_some(BusEvent::Reset)
        }
    }

    #[test]
    fn dispatch_by_offset_and_defaults() {
        let dev = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.insert(dev.clone(), 0x3ff, 2).is_err());
        let mut b = [0u8; 1];
        bus.read(0x3fd, &mut b);
        assert_eq!(b, [5]);
        bus.read(0x80, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(bus.write(0x80, &[1]), None);
        assert_eq!(bus.write(0x3f9, &[0xfe]), Some(BusEvent::Reset));
        assert_eq!(lock(&dev).0, vec![(1, 0xfe)]);
    }
}
