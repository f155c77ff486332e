//! The guest's devices: three UARTs and an i8042 stub, behind a port bus.

pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError, BusEvent};
