-- Version 1: block records, open records, epochs, the routers' progress,
-- and the router role's three functions.

CREATE TABLE blocknat.meta (
	one boolean PRIMARY KEY DEFAULT true CHECK (one),
	-- The oldest day whose records are kept in full: DropExpired drops the
	-- partitions before it, and ingest copies nothing into them.
	records_oldest_day integer NOT NULL DEFAULT 0
);
INSERT INTO blocknat.meta DEFAULT VALUES;

-- The highest seq taken from each router's stream ("store", "audit"),
-- with no gap before it.
CREATE TABLE blocknat.progress (
	router text NOT NULL,
	stream text NOT NULL,
	last_seq bigint NOT NULL,
	updated timestamptz NOT NULL,
	PRIMARY KEY (router, stream)
);

-- The widest block each router ever recorded, which bounds a lookup's
-- scan of port_lo as the store's "m width" does. Per router, so that
-- routers ingesting at once never update one row.
CREATE TABLE blocknat.widths (
	router text PRIMARY KEY,
	width integer NOT NULL
);

-- One partition per UTC day (day = Unix time / 86400 s). A closed record
-- is copied into every day partition its interval touches, from the
-- oldest retained day on, so that a lookup for T reads T's day only.
-- Times are Unix milliseconds, Start rounded down and End up, as the
-- router's store keeps them.
CREATE TABLE blocknat.records (
	day integer NOT NULL,
	router text NOT NULL,
	subscriber bigint NOT NULL,
	inside inet NOT NULL,
	public inet NOT NULL,
	port_lo integer NOT NULL,
	port_hi integer NOT NULL,
	start_ms bigint NOT NULL,
	end_ms bigint NOT NULL,
	epoch bigint NOT NULL,
	flags bigint NOT NULL,
	seq bigint NOT NULL,
	UNIQUE (day, router, public, port_lo, subscriber, start_ms)
) PARTITION BY RANGE (day);
CREATE INDEX records_block ON blocknat.records (public, port_lo);
CREATE INDEX records_inside ON blocknat.records (inside);

-- Records still held: activation inserts, the release deletes. One per
-- router, subscriber and block, as in the store.
CREATE TABLE blocknat.open_records (
	router text NOT NULL,
	subscriber bigint NOT NULL,
	inside inet NOT NULL,
	public inet NOT NULL,
	port_lo integer NOT NULL,
	port_hi integer NOT NULL,
	start_ms bigint NOT NULL,
	epoch bigint NOT NULL,
	flags bigint NOT NULL,
	seq bigint NOT NULL,
	PRIMARY KEY (router, public, port_lo, subscriber)
);
CREATE INDEX open_records_block ON blocknat.open_records (public, port_lo);
CREATE INDEX open_records_inside ON blocknat.open_records (inside);

-- Mapping epochs (RFC 7422 §3): small and about no one, so never
-- partitioned nor dropped. The copy with the latest recorded time stands.
CREATE TABLE blocknat.epochs (
	router text NOT NULL,
	start_ns bigint NOT NULL,
	id bigint NOT NULL,
	recorded_ns bigint NOT NULL,
	prefixes inet[] NOT NULL,
	pool inet[] NOT NULL,
	port_lo integer NOT NULL,
	port_hi integer NOT NULL,
	block_size integer NOT NULL,
	ratio bigint NOT NULL,
	hash bytea NOT NULL,
	clock jsonb,
	seq bigint NOT NULL,
	PRIMARY KEY (router, start_ns, id)
);

-- check_router refuses a router name a session may not write under: a
-- router's login role writes only as itself, so that a compromised
-- router cannot forge another's records; the owner (the fleet service,
-- for its own audit log) writes under any name.
CREATE FUNCTION blocknat.check_router(p_router text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = blocknat, pg_temp AS $$
BEGIN
	IF p_router IS NULL OR p_router = '' OR octet_length(p_router) > 128 THEN
		RAISE EXCEPTION USING ERRCODE = '22023',
			MESSAGE = format('router %L: must be 1 to 128 bytes', p_router);
	END IF;
	IF p_router <> session_user AND NOT pg_has_role(session_user,
			(SELECT nspowner FROM pg_namespace WHERE nspname = 'blocknat'), 'USAGE') THEN
		RAISE EXCEPTION USING ERRCODE = '42501',
			MESSAGE = format('router %s: role %s may write only as router %s', p_router, session_user, session_user);
	END IF;
END $$;

-- lock_progress returns the stream's last seq, its row locked until the
-- transaction ends, so that two deliveries of one router's stream are
-- taken one after the other.
CREATE FUNCTION blocknat.lock_progress(p_router text, p_stream text) RETURNS bigint
LANGUAGE plpgsql SET search_path = blocknat, pg_temp AS $$
DECLARE
	v_last bigint;
BEGIN
	INSERT INTO blocknat.progress (router, stream, last_seq, updated)
		VALUES (p_router, p_stream, 0, now()) ON CONFLICT DO NOTHING;
	SELECT last_seq INTO STRICT v_last FROM blocknat.progress
		WHERE router = p_router AND stream = p_stream FOR UPDATE;
	RETURN v_last;
END $$;

-- check_gap raises SQLSTATE BNGAP unless the seqs after p_last run
-- p_last+1, p_last+2, … with no hole; seqs at or below p_last are
-- deliveries already taken. The detail is "have got" for the Go side.
CREATE FUNCTION blocknat.check_gap(p_router text, p_stream text, p_last bigint, p_seqs bigint[]) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	v_next bigint := p_last + 1;
	v_seq bigint;
BEGIN
	FOREACH v_seq IN ARRAY p_seqs LOOP
		IF v_seq IS NULL THEN
			RAISE EXCEPTION USING ERRCODE = '22023',
				MESSAGE = format('router %s stream %s: an event without seq', p_router, p_stream);
		END IF;
		CONTINUE WHEN v_seq <= p_last;
		IF v_seq <> v_next THEN
			RAISE EXCEPTION USING ERRCODE = 'BNGAP',
				MESSAGE = format('router %s stream %s: have seq %s, got %s', p_router, p_stream, v_next - 1, v_seq),
				DETAIL = format('%s %s', v_next - 1, v_seq);
		END IF;
		v_next := v_next + 1;
	END LOOP;
	RETURN v_next - 1;
END $$;

-- ensure_partition creates parent's partition of day unless it exists.
-- The advisory lock makes routers creating the same new day wait for one
-- another; the exception block covers the catalog race that remains.
CREATE FUNCTION blocknat.ensure_partition(p_parent text, p_day integer) RETURNS void
LANGUAGE plpgsql SET search_path = blocknat, pg_temp AS $$
DECLARE
	v_name text := p_parent || '_' || to_char(date '1970-01-01' + p_day, 'YYYYMMDD');
BEGIN
	IF to_regclass(format('blocknat.%I', v_name)) IS NOT NULL THEN
		RETURN;
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('blocknat partition ' || p_parent), p_day);
	BEGIN
		EXECUTE format('CREATE TABLE IF NOT EXISTS blocknat.%I PARTITION OF blocknat.%I FOR VALUES FROM (%s) TO (%s)',
			v_name, p_parent, p_day, p_day + 1);
	EXCEPTION WHEN duplicate_table OR unique_violation THEN
		NULL;
	END;
END $$;

CREATE FUNCTION blocknat.progress(p_router text, OUT store_seq bigint, OUT audit_seq bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = blocknat, pg_temp AS $$
BEGIN
	PERFORM blocknat.check_router(p_router);
	SELECT coalesce(max(p.last_seq) FILTER (WHERE p.stream = 'store'), 0),
	       coalesce(max(p.last_seq) FILTER (WHERE p.stream = 'audit'), 0)
	  INTO store_seq, audit_seq
	  FROM blocknat.progress p WHERE p.router = p_router;
END $$;

-- ingest takes a batch of a router's store outbox, a JSON array of
-- events in seq order (see ingest.go for the fields), and returns the
-- stream's last seq. Version 1 takes records and epochs.
CREATE FUNCTION blocknat.ingest(p_router text, p_events jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = blocknat, pg_temp AS $$
DECLARE
	v_last bigint;
	v_new bigint;
	v_oldest integer;
	v_day integer;
	v_ev jsonb;
	v_r jsonb;
	v_seq bigint;
	v_width integer := 0;
BEGIN
	PERFORM blocknat.check_router(p_router);
	IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('router %s stream store: events: not a JSON array', p_router);
	END IF;
	v_last := blocknat.lock_progress(p_router, 'store');
	v_new := blocknat.check_gap(p_router, 'store', v_last,
		ARRAY(SELECT (e->>'seq')::bigint FROM jsonb_array_elements(p_events) WITH ORDINALITY AS a(e, i) ORDER BY i));
	IF v_new = v_last THEN
		RETURN v_last;
	END IF;
	-- Shared, so that DropExpired (which takes it for update) never drops
	-- a day this batch is about to write.
	SELECT records_oldest_day INTO STRICT v_oldest FROM blocknat.meta FOR SHARE;
	-- Partitions first, in order of day, so that two batches never hold
	-- one day's lock while waiting for another's.
	FOR v_day IN
		SELECT DISTINCT g FROM jsonb_array_elements(p_events) AS e,
			generate_series(greatest(((e->'r'->>'s')::bigint / 86400000)::integer, v_oldest),
			                ((e->'r'->>'e')::bigint / 86400000)::integer) AS g
		WHERE (e->>'seq')::bigint > v_last AND (e->>'k')::integer = 2
		ORDER BY g
	LOOP
		PERFORM blocknat.ensure_partition('records', v_day);
	END LOOP;
	FOR v_ev IN
		SELECT e FROM jsonb_array_elements(p_events) WITH ORDINALITY AS a(e, i)
		WHERE (e->>'seq')::bigint > v_last ORDER BY i
	LOOP
		v_seq := (v_ev->>'seq')::bigint;
		CASE (v_ev->>'k')::integer
		WHEN 1 THEN -- open: replaces any open record of the subscriber's block
			v_r := v_ev->'r';
			INSERT INTO blocknat.open_records AS o (router, subscriber, inside, public, port_lo, port_hi, start_ms, epoch, flags, seq)
			VALUES (p_router, (v_r->>'sub')::bigint, (v_r->>'in')::inet, (v_r->>'pub')::inet, (v_r->>'lo')::integer,
			        (v_r->>'hi')::integer, (v_r->>'s')::bigint, (v_r->>'ep')::bigint, (v_r->>'fl')::bigint, v_seq)
			ON CONFLICT (router, public, port_lo, subscriber) DO UPDATE SET
				inside = excluded.inside, port_hi = excluded.port_hi, start_ms = excluded.start_ms,
				epoch = excluded.epoch, flags = excluded.flags, seq = excluded.seq;
			v_width := greatest(v_width, (v_r->>'hi')::integer - (v_r->>'lo')::integer + 1);
		WHEN 2 THEN -- close: the copies, and the open record goes
			v_r := v_ev->'r';
			DELETE FROM blocknat.open_records
				WHERE router = p_router AND public = (v_r->>'pub')::inet AND port_lo = (v_r->>'lo')::integer
				  AND subscriber = (v_r->>'sub')::bigint;
			INSERT INTO blocknat.records AS x (day, router, subscriber, inside, public, port_lo, port_hi, start_ms, end_ms, epoch, flags, seq)
			SELECT g, p_router, (v_r->>'sub')::bigint, (v_r->>'in')::inet, (v_r->>'pub')::inet, (v_r->>'lo')::integer,
			       (v_r->>'hi')::integer, (v_r->>'s')::bigint, (v_r->>'e')::bigint, (v_r->>'ep')::bigint, (v_r->>'fl')::bigint, v_seq
			FROM generate_series(greatest(((v_r->>'s')::bigint / 86400000)::integer, v_oldest),
			                     ((v_r->>'e')::bigint / 86400000)::integer) AS g
			-- Two records of a block that begin within one millisecond
			-- share a key: the later release stands, as in the store.
			ON CONFLICT (day, router, public, port_lo, subscriber, start_ms) DO UPDATE SET
				inside = excluded.inside, port_hi = excluded.port_hi, end_ms = excluded.end_ms,
				epoch = excluded.epoch, flags = excluded.flags, seq = excluded.seq;
			v_width := greatest(v_width, (v_r->>'hi')::integer - (v_r->>'lo')::integer + 1);
		WHEN 5 THEN
			PERFORM blocknat.put_epoch(p_router, v_seq, v_ev->'ep');
		ELSE
			RAISE EXCEPTION USING ERRCODE = '22023',
				MESSAGE = format('router %s stream store: event %s: kind %s is not one schema version 1 takes', p_router, v_seq, v_ev->>'k');
		END CASE;
	END LOOP;
	IF v_width > 0 THEN
		INSERT INTO blocknat.widths AS w (router, width) VALUES (p_router, v_width)
		ON CONFLICT (router) DO UPDATE SET width = greatest(w.width, excluded.width);
	END IF;
	UPDATE blocknat.progress SET last_seq = v_new, updated = now() WHERE router = p_router AND stream = 'store';
	RETURN v_new;
END $$;

CREATE FUNCTION blocknat.put_epoch(p_router text, p_seq bigint, p_ep jsonb) RETURNS void
LANGUAGE sql SET search_path = blocknat, pg_temp AS $$
	INSERT INTO blocknat.epochs AS x (router, start_ns, id, recorded_ns, prefixes, pool, port_lo, port_hi, block_size, ratio, hash, clock, seq)
	VALUES (p_router, (p_ep->>'s')::bigint, (p_ep->>'id')::bigint, (p_ep->>'rec')::bigint,
	        ARRAY(SELECT jsonb_array_elements_text(p_ep->'pfx')::inet), ARRAY(SELECT jsonb_array_elements_text(p_ep->'pool')::inet),
	        (p_ep->>'plo')::integer, (p_ep->>'phi')::integer, (p_ep->>'bs')::integer, (p_ep->>'ratio')::bigint,
	        decode(p_ep->>'hash', 'hex'), nullif(p_ep->'clock', 'null'::jsonb), p_seq)
	ON CONFLICT (router, start_ns, id) DO UPDATE SET
		recorded_ns = excluded.recorded_ns, prefixes = excluded.prefixes, pool = excluded.pool,
		port_lo = excluded.port_lo, port_hi = excluded.port_hi, block_size = excluded.block_size,
		ratio = excluded.ratio, hash = excluded.hash, clock = excluded.clock, seq = excluded.seq
	WHERE x.recorded_ns <= excluded.recorded_ns;
$$;

-- The router role: it calls the three functions and reads or writes no
-- table. Each router's login role is created by the operator IN ROLE
-- blocknat_router, named as the router.
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'blocknat_router') THEN
		CREATE ROLE blocknat_router NOLOGIN;
	END IF;
EXCEPTION WHEN duplicate_object THEN
	NULL; -- created by another database's migration meanwhile
END $$;
REVOKE ALL ON SCHEMA blocknat FROM PUBLIC;
GRANT USAGE ON SCHEMA blocknat TO blocknat_router;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA blocknat FROM PUBLIC;
GRANT EXECUTE ON FUNCTION blocknat.progress(text), blocknat.ingest(text, jsonb) TO blocknat_router;
