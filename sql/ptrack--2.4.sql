/* ptrack--2.4.sql: the SQL API of ptrack 2.4, as pg_probackup uses it. */

\echo Use "CREATE EXTENSION ptrack" to load this file. \quit

-- The C functions are src/sql.rs's #[pg_extern] functions: pgrx names their
-- symbols <name>_wrapper. This file, not pgrx, declares their SQL signatures.

CREATE FUNCTION ptrack_version()
RETURNS text
AS 'MODULE_PATHNAME', 'ptrack_version_wrapper'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION ptrack_version() IS
'Version of the ptrack SQL API.';

CREATE FUNCTION ptrack_init_lsn()
RETURNS pg_lsn
AS 'MODULE_PATHNAME', 'ptrack_init_lsn_wrapper'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION ptrack_init_lsn() IS
'LSN since which ptrack misses no change: start LSNs before it report every block.';

CREATE FUNCTION ptrack_get_pagemapset(start_lsn pg_lsn)
RETURNS TABLE (path text, pagecount bigint, pagemap bytea)
AS 'MODULE_PATHNAME', 'ptrack_get_pagemapset_wrapper'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION ptrack_get_pagemapset(pg_lsn) IS
'One row per relation segment file with blocks changed since start_lsn: path relative to PGDATA, number of changed blocks, bitmap of changed blocks (bit b % 8 of byte b / 8 is block b of the segment).';

CREATE FUNCTION ptrack_get_change_stat(start_lsn pg_lsn)
RETURNS TABLE (files bigint, pages numeric, "size, MB" numeric)
LANGUAGE sql STRICT VOLATILE PARALLEL RESTRICTED
BEGIN ATOMIC
    SELECT count(*),
           coalesce(sum(pagecount), 0)::numeric,
           coalesce(sum(pagecount), 0)::numeric * current_setting('block_size')::numeric / (1024 * 1024)
      FROM ptrack_get_pagemapset(start_lsn);
END;

COMMENT ON FUNCTION ptrack_get_change_stat(pg_lsn) IS
'Files, pages and megabytes an incremental backup since start_lsn would copy.';

CREATE FUNCTION ptrack_status()
RETURNS TABLE (mode text, map_size_mb integer, init_lsn pg_lsn,
               wal_tracked_through pg_lsn, wal_lag_bytes bigint)
AS 'MODULE_PATHNAME', 'ptrack_status_wrapper'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION ptrack_status() IS
'How ptrack tracks changes (mode hooks, wal or off), its map size and init LSN, and in WAL mode how far the WAL follower has read and how many bytes of WAL it has still to read.';

-- As in ptrack 2.4 the functions are executable by PUBLIC, so the backup role
-- pg_probackup documents (USAGE on this schema, nothing more) can use them. The
-- README gives the REVOKE/GRANT recipe for least privilege.
