//! The pure core of ptrack: everything that can be reasoned about and tested
//! without a PostgreSQL server.
//!
//! * [`lsn`]: log sequence numbers and their textual form.
//! * [`live`]: the live map on tmpfs that survives process crashes.
//! * [`block`]: the identity of a relation block and its two map slots.
//! * [`map`]: the lock-free LSN map that lives in shared memory.
//! * [`cuts`]: the forks cut or created since the map began, for WAL mode.
//! * [`dirty`]: which regions of the map changed since the last flush.
//! * [`mapfile`]: the on-disk map format, its atomic write and its verification.
//! * [`relfile`]: relation file names and data-directory paths.
//! * [`resize`]: carrying a map of another size (`ptrack.map_size` changed) over.
//! * [`startup`]: where a new map's knowledge starts (its init LSN).
//! * [`walk`]: the data-directory walk that turns the map into per-segment page maps.
//! * [`wal`]: the WAL decoder that lets a tracker follow an unpatched server's WAL.
//!
//! The extension (the crate one directory up) is a thin pgrx shell around these.

pub mod block;
pub mod cuts;
pub mod dirty;
pub mod live;
pub mod lsn;
pub mod map;
pub mod mapfile;
pub mod relfile;
pub mod resize;
pub mod startup;
pub mod wal;
pub mod walk;

pub use block::{BlockKey, Fork, RelFileKey};
pub use lsn::Lsn;
pub use map::{LsnMap, MapState, OwnedLsnMap};
