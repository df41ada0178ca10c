//! Placeholder; the emulator lands here.
