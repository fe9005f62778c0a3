//! Surviving files that shrink under us. Reading a mapped page past the end of a file
//! that was truncated after it was mapped raises SIGBUS, which would kill the process.
//! Every mapping is registered here; a SIGBUS handler maps a zero page over a faulting
//! address inside a registered mapping, notes the offset, and lets the read go on. The
//! reader checks the note after each tile and reports an I/O error naming the file.
//! Faults outside our mappings go to the handler that was installed before ours.

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Mappings watched at once; further ones are simply not protected.
const SLOTS: usize = 256;

/// Per slot: start address (0 = free), length, and 1 + the offset of the first fault.
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static FAULTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

static INSTALL: Once = Once::new();
/// The SIGBUS action in place before ours (written once, before ours is installed).
static mut PREVIOUS: Option<libc::sigaction> = None;

/// A watched mapping; dropping it stops the watch.
#[derive(Debug)]
pub struct Watch {
    slot: Option<usize>,
}

impl Watch {
    /// Starts watching `len` bytes at `start`.
    pub fn new(start: *const u8, len: usize) -> Watch {
        INSTALL.call_once(install);
        for slot in 0..SLOTS {
            if STARTS[slot].compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                LENS[slot].store(len, Ordering::Release);
                FAULTS[slot].store(0, Ordering::Release);
                STARTS[slot].store(start as usize, Ordering::Release);
                return Watch { slot: Some(slot) };
            }
        }
        Watch { slot: None }
    }

    /// The offset of the first page that faulted because the file shrank, if any.
    pub fn fault(&self) -> Option<u64> {
        let f = FAULTS[self.slot?].load(Ordering::Acquire);
        (f != 0).then(|| (f - 1) as u64)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            STARTS[slot].store(0, Ordering::Release);
        }
    }
}

fn install() {
    // SAFETY: plain sigaction calls with zeroed, fully initialized structs; PREVIOUS is
    // written here once, before the handler that reads it is installed.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = handler as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old);
        PREVIOUS = Some(old);
        libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut());
    }
}

/// The SIGBUS handler: only atomics, mmap and sigaction (async-signal-safe on Linux).
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in 0..SLOTS {
        let start = STARTS[slot].load(Ordering::Acquire);
        if start == 0 || start == usize::MAX {
            continue;
        }
        let len = LENS[slot].load(Ordering::Acquire);
        if addr >= start && addr < start + len {
            let page = addr & !4095;
            let _ = FAULTS[slot].compare_exchange(0, page - start + 1, Ordering::AcqRel, Ordering::Acquire);
            // SAFETY: replaces one page of our own read-only mapping with zeros; the
            // faulting read then completes and the reader reports the fault afterwards.
            let p = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                return;
            }
        }
    }
    // Not ours: hand it to the previous handler, or die of the default action.
    // SAFETY: PREVIOUS was written before this handler was installed and never changes.
    unsafe {
        match *std::ptr::addr_of!(PREVIOUS) {
            Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(prev.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}
