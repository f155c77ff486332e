//! An i8042 keyboard controller stub: just enough for the kernel's reset path.

use super::bus::{BusDevice, BusEvent};

/// Offset of the command/status register from the data port (0x64 - 0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// The "pulse reset line" command.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Status register: output buffer full (a byte for the host to read).
pub const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status register: input buffer full (the controller is busy).
pub const STATUS_INPUT_FULL: u8 = 0x02;

/// The i8042 at 0x60..=0x64: only the reset line. Reset on 0xfe.
///
/// The status register always reads "output buffer full, input buffer
/// empty" (0x01), and the data port 0. That tells each of Linux's two
/// users what it needs at once: the i8042 driver flushes the output buffer
/// at probe, finds it never empties, and concludes there is no controller
/// ("No controller found", after 16 reads) instead of sending commands and
/// polling for each answer (a status of 0, "empty", made it poll the
/// status port 10,000 times with 50 µs delays, half a second of guest time
/// and 10,000 exits, before giving up); the reboot path (`reboot=k`) waits
/// only for the input buffer to be empty, so it writes 0xfe at once.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == COMMAND_OFFSET {
            if let Some(status) = data.first_mut() {
                *status = STATUS_OUTPUT_FULL;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        (offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU))
            .then_some(BusEvent::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_0xfe_on_the_command_port_resets() {
        let mut dev = I8042;
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xfe]), Some(BusEvent::Reset));
        assert_eq!(dev.write(0, &[0xfe]), None);
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xd1]), None);
        // Never ready for commands, always ready for the reset.
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0] & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(b[0] & STATUS_INPUT_FULL, 0);
        dev.read(0, &mut b);
        assert_eq!(b, [0]);
    }
}
