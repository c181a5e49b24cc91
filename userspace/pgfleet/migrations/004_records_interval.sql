-- Version 4: a lookup reads only the records whose interval meets the
-- one searched. The btree on (public, port_lo) finds a block's records but
-- not their times, so a lookup read every record of the block and day:
-- where a block is taken many times a day by several routers, hundreds of
-- rows to keep a few. A GiST index on the block and the interval finds the
-- block and the overlap in one descent.

-- btree_gist gives GiST the equality of inet and integer, so that the
-- block's columns and the interval share one index. It is trusted (since
-- PostgreSQL 13): a role with CREATE on the database, as its owner has,
-- creates it without a superuser. In blocknat, which the owner owns,
-- since from PostgreSQL 15 on only the database's owner may create in
-- public; a copy installed elsewhere already serves, as the index names
-- no operator class.
CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA blocknat;

-- The range's upper bound is never below its lower, so that no row can
-- make an insert or this index's build fail: int8range refuses one ending
-- before it starts, and only the Go side of ingest refuses such a record,
-- not blocknat.ingest. Created on the parent, so every day partition,
-- existing or to come, has its own. The build holds the records' lock in
-- this migration's transaction, so ingest waits for it (the routers keep
-- their outboxes meanwhile): about a second for 160 000 records on the
-- tests' server, so some twenty minutes for a year of ten routers.
CREATE INDEX records_interval ON blocknat.records
	USING gist (public, port_lo, int8range(start_ms, greatest(start_ms, end_ms), '[]'));

-- The new index serves every question the old one did (NearestRecords'
-- equality on public and port_lo), so keeping both would cost every
-- ingest a second index for nothing.
DROP INDEX blocknat.records_block;
