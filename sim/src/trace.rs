//! The trace: one readable line per step, hashed as it is written.
//!
//! The hash is the determinism check (madsim, firezone): the same seed must give a
//! byte-identical trace, so two runs compare by one number. Only the tail is kept in
//! memory for failure reports; the whole trace goes to a file when asked for.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;

use heartline_core::Instant;

/// FNV-1a, 64 bits: tiny, stable across platforms and versions, enough to compare runs.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The run's trace.
pub struct Trace {
    hash: Fnv,
    lines: u64,
    tail: VecDeque<String>,
    tail_cap: usize,
    sink: Option<Box<dyn Write>>,
    sink_failed: bool,
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("lines", &self.lines)
            .field("hash", &self.hash())
            .finish()
    }
}

impl Trace {
    /// A trace keeping `tail_cap` lines in memory and writing every line to `sink`, if any.
    pub fn new(tail_cap: usize, sink: Option<Box<dyn Write>>) -> Self {
        Trace {
            hash: Fnv::new(),
            lines: 0,
            tail: VecDeque::with_capacity(tail_cap.min(1024)),
            tail_cap,
            sink,
            sink_failed: false,
        }
    }

    /// Records one line: time, component, event.
    pub fn line(&mut self, now: Instant, component: &str, event: fmt::Arguments<'_>) {
        let text = format!("{:>11} {component:<7} {event}\n", now.to_string());
        self.hash.write(text.as_bytes());
        self.lines += 1;
        if let Some(sink) = &mut self.sink {
            if sink.write_all(text.as_bytes()).is_err() {
                self.sink_failed = true;
            }
        }
        if self.tail_cap > 0 {
            if self.tail.len() == self.tail_cap {
                self.tail.pop_front();
            }
            self.tail.push_back(text);
        }
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash.0
    }

    /// Lines written.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The last lines, oldest first.
    pub fn tail(&self) -> String {
        self.tail.iter().map(String::as_str).collect()
    }

    /// Flushes the file, if any; false if writing it failed at any point.
    pub fn finish(&mut self) -> bool {
        if let Some(sink) = &mut self.sink {
            if sink.flush().is_err() {
                self.sink_failed = true;
            }
        }
        !self.sink_failed
    }
}

/// Shortens frame text for a trace line.
pub fn short(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…({}B)", &text[..cut], text.len())
}
