//! `pg_lsn` for `#[pg_extern]` functions: pgrx 0.18 maps no Rust type to it.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::{pg_sys, FromDatum, IntoDatum};
use ptrack_core::Lsn;

/// A `pg_lsn` value, passed by value as the 64-bit `XLogRecPtr` itself.
///
/// A newtype because the orphan rule keeps pgrx's traits off `ptrack_core::Lsn`.
/// pgrx's `impl_sql_translatable!` is left out: with `no-schema-generation` no
/// code asks for `SqlTranslatable`, and the SQL file spells `pg_lsn` itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgLsn(pub Lsn);

impl FromDatum for PgLsn {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then(|| PgLsn(Lsn(datum.value() as u64)))
    }
}

impl IntoDatum for PgLsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0 .0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::PG_LSNOID
    }
}

// pgrx implements its argument and return traits only for its own types, by
// private macros: a type of ours needs these two small impls, written the way
// pgrx writes them for `i64`.

// SAFETY: unboxing reads the datum's bits and follows no pointer, so no datum
// can make it unsound; a NULL, which STRICT keeps away, panics into an ERROR
// (with the message pgrx gives for its own types) rather than reading as 0/0.
unsafe impl<'fcx> ArgAbi<'fcx> for PgLsn {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: `from_polymorphic_datum` above dereferences nothing.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

// SAFETY: the function's result is the by-value datum PostgreSQL expects of a
// `pg_lsn`, and every function returning a `PgLsn` is declared in SQL to
// return `pg_lsn` (or a `pg_lsn` column).
unsafe impl BoxRet for PgLsn {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: as for the impl: a complete pg_lsn datum, not a pointer.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0 .0)) }
    }
}
