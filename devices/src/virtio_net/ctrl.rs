//! The control queue (virtio 1.2 §5.1.6.5) and which queue pairs carry traffic.
//!
//! A command is one chain: `{u8 class, u8 command}` and the command's data, device-readable, then
//! one device-writable byte the device sets to [`VIRTIO_NET_OK`] or [`VIRTIO_NET_ERR`]. flint knows
//! one command, `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (class 4, command 0, a little-endian `u16`
//! count): with MQ negotiated and 1 ≤ count ≤ the pairs whose queues the driver enabled, the first
//! `count` pairs carry traffic from then on. Everything else — other classes and commands, a
//! wrong data length, MQ not negotiated, a count out of range — is answered ERR. A chain with no
//! writable byte, or one that is malformed, is returned with length 0; the queue goes on.
//!
//! Switching pairs off is exact: a pair's worker delivers received frames holding its pair's
//! `rx_gate`, so once [`PairStates::set_active_pairs`] has set the pair inactive and taken the
//! gate, no frame will be put on that pair's receive queue, and only then is the TAP queue
//! detached and the command answered (the spec forbids frames on queues beyond the count once the
//! answer is in the used ring).

use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::MAX_DESCRIPTORS;
use super::TapControl;
use crate::virtio::{collect_chain, Chain};

/// Command status: done.
pub const VIRTIO_NET_OK: u8 = 0;
/// Command status: refused.
pub const VIRTIO_NET_ERR: u8 = 1;
/// Command class: multiqueue.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
/// Multiqueue command: set the number of queue pairs in use.
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// Most bytes of a command's readable part that are looked at (the only known command has 4).
pub const MAX_COMMAND: usize = 64;

/// A control command, as far as the device understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Use the first `n` queue pairs.
    SetPairs(u16),
    /// Anything else: unknown class or command, or the wrong data length.
    Unknown {
        /// The class byte (0 if the command had none).
        class: u8,
        /// The command byte (0 if none).
        command: u8,
    },
}

/// Parses the readable part of a control chain (`readable_len` bytes, of which `head` holds the
/// first up to [`MAX_COMMAND`]).
pub fn parse_command(head: &[u8], readable_len: u64) -> Command {
    let class = head.first().copied().unwrap_or(0);
    let command = head.get(1).copied().unwrap_or(0);
    match (class, command) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if readable_len == 4 => {
            match head.get(2..4) {
                Some(n) => Command::SetPairs(u16::from_le_bytes([n[0], n[1]])),
                // The chain said 4 bytes but fewer could be read.
                None => Command::Unknown { class, command },
            }
        }
        _ => Command::Unknown { class, command },
    }
}

/// What goes in the control queue's used ring for one chain ([`handle_ctrl_chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlAnswer {
    /// The chain's head.
    pub head: u16,
    /// 1 when the status byte was written, 0 for a chain that got no answer.
    pub len: u32,
}

/// Runs the command in the control chain `chain` on `states` (`mq`: the driver negotiated MQ)
/// and writes its status into the chain's first writable byte; `scratch` is reused from chain to
/// chain. A malformed chain, or one without a writable byte, runs nothing and gets length 0.
pub fn handle_ctrl_chain<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    states: &PairStates,
    mq: bool,
    scratch: &mut Chain,
) -> CtrlAnswer
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let mut len = 0;
    if collect_chain(chain, mem, MAX_DESCRIPTORS, scratch).is_ok() {
        if let Some(ack) = scratch.writable.first().map(|s| s.addr) {
            let mut head = [0u8; MAX_COMMAND];
            let n = gather_prefix(mem, scratch, &mut head);
            let command = parse_command(&head[..n], scratch.readable_len());
            let status = states.execute(command, mq);
            if mem.write_obj(status, ack).is_ok() {
                len = 1;
            }
        }
    }
    CtrlAnswer {
        head: scratch.head,
        len,
    }
}

/// Reads the first `buf.len()` readable bytes of `chain` (fewer if it is shorter); returns how many.
fn gather_prefix(mem: &GuestMemoryMmap, chain: &Chain, buf: &mut [u8]) -> usize {
    let mut done = 0usize;
    for seg in &chain.readable {
        let n = (seg.len as usize).min(buf.len() - done);
        if n == 0 || mem.read_slice(&mut buf[done..done + n], seg.addr).is_err() {
            break;
        }
        done += n;
    }
    done
}

struct PairState {
    active: AtomicBool,
    /// Held by the pair's worker while it reads and delivers received frames.
    rx_gate: Mutex<()>,
    /// Wakes the pair's worker (None: the driver did not enable this pair's queues).
    wake: Option<EventFd>,
}

/// Which queue pairs carry traffic; shared by the workers (which read it) and the control queue
/// (which changes it).
pub struct PairStates {
    pairs: Vec<PairState>,
    control: Option<Arc<dyn TapControl>>,
    /// Which TAP queues are attached, owned by the device (kept across resets).
    attached: Arc<Mutex<Vec<bool>>>,
}

impl PairStates {
    /// `pairs_max` pairs, all inactive; the first `wakes.len()` have workers woken through `wakes`.
    pub fn new(
        wakes: &[EventFd],
        pairs_max: usize,
        control: Option<Arc<dyn TapControl>>,
        attached: Arc<Mutex<Vec<bool>>>,
    ) -> io::Result<Self> {
        let mut pairs = Vec::with_capacity(pairs_max);
        for pair in 0..pairs_max {
            pairs.push(PairState {
                active: AtomicBool::new(false),
                rx_gate: Mutex::new(()),
                wake: wakes.get(pair).map(EventFd::try_clone).transpose()?,
            });
        }
        Ok(Self {
            pairs,
            control,
            attached,
        })
    }

    /// Pairs whose queues the driver enabled (they have a worker).
    pub fn usable(&self) -> usize {
        self.pairs.iter().take_while(|p| p.wake.is_some()).count()
    }

    /// Whether `pair` carries traffic.
    pub fn is_active(&self, pair: usize) -> bool {
        self.pairs
            .get(pair)
            .is_some_and(|p| p.active.load(Ordering::Acquire))
    }

    /// The gate a worker holds while it delivers frames to `pair`'s receive queue.
    pub fn rx_gate(&self, pair: usize) -> Option<MutexGuard<'_, ()>> {
        let p = self.pairs.get(pair)?;
        Some(p.rx_gate.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes the first `n` pairs carry traffic and the others not: TAP queues attached before a
    /// pair turns on, detached after it has turned off and its worker has left any delivery.
    pub fn set_active_pairs(&self, n: usize) -> io::Result<()> {
        for (pair, state) in self.pairs.iter().enumerate() {
            let on = pair < n;
            if on {
                self.set_attached(pair, true)?;
                state.active.store(true, Ordering::Release);
            } else {
                state.active.store(false, Ordering::Release);
                drop(self.rx_gate(pair));
                self.set_attached(pair, false)?;
            }
            if let Some(wake) = &state.wake {
                // The worker starts or stops watching its TAP queue.
                let _ = wake.write(1);
            }
        }
        Ok(())
    }

    fn set_attached(&self, pair: usize, on: bool) -> io::Result<()> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        match attached.get_mut(pair) {
            Some(state) if *state != on => {
                control.set_queue_attached(pair, on)?;
                *state = on;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Carries out `command` (MQ negotiated or not) and returns the status for the driver.
    pub fn execute(&self, command: Command, mq: bool) -> u8 {
        match command {
            Command::SetPairs(n) if mq && n >= 1 && usize::from(n) <= self.usable() => {
                match self.set_active_pairs(usize::from(n)) {
                    Ok(()) => VIRTIO_NET_OK,
                    Err(e) => {
                        log::warn!("virtio-net: cannot switch to {n} queue pairs: {e}");
                        VIRTIO_NET_ERR
                    }
                }
            }
            Command::SetPairs(n) => {
                log::debug!("virtio-net: refused {n} queue pairs (MQ negotiated: {mq})");
                VIRTIO_NET_ERR
            }
            Command::Unknown { class, command } => {
                log::debug!("virtio-net: unknown control command {class}.{command}");
                VIRTIO_NET_ERR
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_strictly() {
        assert_eq!(parse_command(&[4, 0, 3, 0], 4), Command::SetPairs(3));
        assert_eq!(parse_command(&[4, 0, 0, 1], 4), Command::SetPairs(256));
        // Wrong length, unknown command, unknown class, nothing at all.
        assert_eq!(
            parse_command(&[4, 0, 3], 3),
            Command::Unknown {
                class: 4,
                command: 0
            }
        );
        assert_eq!(
            parse_command(&[4, 0, 3, 0, 0], 5),
            Command::Unknown {
                class: 4,
                command: 0
            }
        );
        assert_eq!(
            parse_command(&[4, 1, 0, 0], 4),
            Command::Unknown {
                class: 4,
                command: 1
            }
        );
        assert_eq!(
            parse_command(&[0, 0, 1], 3),
            Command::Unknown {
                class: 0,
                command: 0
            }
        );
        // A length that promises more than was read.
        assert_eq!(
            parse_command(&[4, 0], 4),
            Command::Unknown {
                class: 4,
                command: 0
            }
        );
        assert_eq!(
            parse_command(&[], 0),
            Command::Unknown {
                class: 0,
                command: 0
            }
        );
    }

    struct Recorder(Mutex<Vec<(usize, bool)>>);
    impl TapControl for Recorder {
        fn set_offload(&self, _flags: u32) -> io::Result<()> {
            Ok(())
        }
        fn set_queue_attached(&self, pair: usize, attached: bool) -> io::Result<()> {
            self.0.lock().unwrap().push((pair, attached));
            Ok(())
        }
    }

    #[test]
    fn pairs_switch_with_attach_and_detach() {
        let wakes: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let states = PairStates::new(
            &wakes,
            4,
            Some(recorder.clone()),
            Arc::new(Mutex::new(vec![true; 4])),
        )
        .unwrap();
        assert_eq!(states.usable(), 3);
        states.set_active_pairs(1).unwrap();
        assert!(states.is_active(0) && !states.is_active(1));
        assert_eq!(
            *recorder.0.lock().unwrap(),
            vec![(1, false), (2, false), (3, false)]
        );
        // Only the pairs with enabled queues can be used; MQ must be negotiated.
        assert_eq!(states.execute(Command::SetPairs(4), true), VIRTIO_NET_ERR);
        assert_eq!(states.execute(Command::SetPairs(0), true), VIRTIO_NET_ERR);
        assert_eq!(states.execute(Command::SetPairs(2), false), VIRTIO_NET_ERR);
        assert_eq!(
            states.execute(
                Command::Unknown {
                    class: 1,
                    command: 1
                },
                true
            ),
            VIRTIO_NET_ERR
        );
        assert!(!states.is_active(1));
        assert_eq!(states.execute(Command::SetPairs(3), true), VIRTIO_NET_OK);
        assert!((0..3).all(|p| states.is_active(p)) && !states.is_active(3));
        assert_eq!(states.execute(Command::SetPairs(2), true), VIRTIO_NET_OK);
        assert!(!states.is_active(2));
        assert_eq!(
            recorder.0.lock().unwrap()[3..],
            [(1, true), (2, true), (2, false)]
        );
        // Every worker was woken each time.
        assert!(wakes.iter().all(|w| w.read().unwrap() >= 3));
    }
}
