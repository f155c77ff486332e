//! An i8042 keyboard controller stub: just enough for the kernel's reset path.

use super::bus::{BusDevice, BusEvent};

/// Offset of the command/status register from the data port (0x64 - 0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// The "pulse reset line" command.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 at 0x60..=0x64: no keyboard, empty buffers, reset on 0xfe.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty (ready for commands).
        data.fill(0);
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
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }
}
