//! The console UART: vm-superio's 16550A model on COM1, its interrupt line an eventfd (a KVM irqfd), its
//! output any writer (stdout, a file, nothing).
//!
//! Input flows the other way: the VMM's event loop reads host stdin and calls
//! [`SerialConsole::enqueue_input`]. The UART's receive FIFO holds 64 bytes; when it is full the event
//! loop stops reading stdin until the guest drains the FIFO, which the [`InputSpace`] eventfd signals.

use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// How many port addresses the UART decodes.
pub const REGISTER_SPACE_LEN: u64 = 8;

/// Raises the UART's interrupt by signalling an eventfd (registered with KVM as an irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Signals, through an eventfd, that the guest emptied the receive FIFO so more input fits.
pub struct InputSpace(pub EventFd);

impl SerialEvents for InputSpace {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("serial: cannot signal input space: {e}");
        }
    }
}

/// The console UART.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, InputSpace, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART that raises `irq` for interrupts, signals `input_space` when its FIFO empties, and writes
    /// what the guest sends to `out`.
    pub fn new(irq: EventFd, input_space: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::with_events(IrqTrigger(irq), InputSpace(input_space), out),
        }
    }

    /// Queues host input for the guest. Returns how many bytes fit in the receive FIFO; the caller keeps
    /// the rest until the FIFO has room again.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(input.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&input[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: cannot queue input: {e}");
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&first), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            // A failed write to the host side (a closed pipe, say) loses output but must not stop the
            // guest; the UART already raised its THR-empty interrupt.
            if let Err(e) = self.uart.write(offset, first) {
                log::debug!("serial: output lost: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn efd() -> EventFd {
        EventFd::new(libc_nonblock()).unwrap()
    }

    fn libc_nonblock() -> i32 {
        // EFD_NONBLOCK; spelled out to keep this crate free of a libc dependency.
        0o4000
    }

    #[test]
    fn output_reaches_the_writer_and_input_reaches_the_guest() {
        let out = SharedBuf::default();
        let irq = efd();
        let space = efd();
        let mut uart = SerialConsole::new(
            irq.try_clone().unwrap(),
            space.try_clone().unwrap(),
            Box::new(out.clone()),
        );
        for b in b"hi\n" {
            uart.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");

        // Enable the receive interrupt, queue input, and read it back as the guest would.
        uart.write(1, &[0x01]);
        let big = vec![b'x'; 100];
        assert_eq!(uart.enqueue_input(&big), 64);
        assert_eq!(uart.enqueue_input(&big), 0);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        for _ in 0..64 {
            uart.read(0, &mut b);
            assert_eq!(b[0], b'x');
        }
        assert_eq!(space.read().unwrap(), 1);
        assert_eq!(uart.input_room(), 64);
        // Offsets beyond a byte are ignored rather than truncated onto a register.
        uart.write(0x100, b"!");
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }
}
