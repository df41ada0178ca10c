//! Rotation and its timing. For now, the timing policy every loop uses: when to poll next and
//! how to back off after a failure. Rotation itself (schedules, the staged protocol, leases)
//! lands here next.

pub mod timing;
