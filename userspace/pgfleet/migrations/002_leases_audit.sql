-- Version 2: DHCP leases and the routers' audit logs, each with its own
-- retention, and ingest taking lease events.

ALTER TABLE blocknat.meta
	ADD COLUMN leases_oldest_day integer NOT NULL DEFAULT 0,
	ADD COLUMN audit_oldest_day integer NOT NULL DEFAULT 0;

-- Ended leases, partitioned and copied into every day their interval
-- touches, as records are. Times are Unix nanoseconds, as the store keeps
-- lease times. The MAC, client id, hostname and source are bytes as the
-- DHCP hook reported them: a hostname need not be UTF-8.
CREATE TABLE blocknat.leases (
	day integer NOT NULL,
	router text NOT NULL,
	inside inet NOT NULL,
	mac bytea NOT NULL,
	start_ns bigint NOT NULL,
	end_ns bigint NOT NULL,
	client_id bytea NOT NULL,
	hostname bytea NOT NULL,
	source bytea NOT NULL,
	seq bigint NOT NULL,
	UNIQUE (day, router, inside, start_ns, mac)
) PARTITION BY RANGE (day);
CREATE INDEX leases_inside ON blocknat.leases (inside, start_ns);
CREATE INDEX leases_mac ON blocknat.leases (mac, start_ns);

-- The current lease of each router's address; expires_ns is null for an
-- infinite lease. A lease whose expiry passed reads as ended there.
CREATE TABLE blocknat.current_leases (
	router text NOT NULL,
	inside inet NOT NULL,
	mac bytea NOT NULL,
	start_ns bigint NOT NULL,
	expires_ns bigint,
	client_id bytea NOT NULL,
	hostname bytea NOT NULL,
	source bytea NOT NULL,
	seq bigint NOT NULL,
	PRIMARY KEY (router, inside)
);
CREATE INDEX current_leases_inside ON blocknat.current_leases (inside);
CREATE INDEX current_leases_mac ON blocknat.current_leases (mac);

-- Audit entries, one partition per UTC day of the entry's time. entry is
-- json, not jsonb: json keeps the entry's text exactly as the router
-- wrote it, and takes the \u0000 a client may put in a criterion, which
-- jsonb refuses (a refusal would stop the router's audit stream for good).
CREATE TABLE blocknat.audit (
	day integer NOT NULL,
	router text NOT NULL,
	seq bigint NOT NULL,
	time_ns bigint NOT NULL,
	hash text NOT NULL,
	entry json NOT NULL,
	UNIQUE (day, router, seq)
) PARTITION BY RANGE (day);
CREATE INDEX audit_router_seq ON blocknat.audit (router, seq);

CREATE OR REPLACE FUNCTION blocknat.ingest(p_router text, p_events jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = blocknat, pg_temp AS $$
DECLARE
	v_last bigint;
	v_new bigint;
	v_oldest integer;
	v_lease_oldest integer;
	v_day integer;
	v_ev jsonb;
	v_r jsonb;
	v_l jsonb;
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
	SELECT records_oldest_day, leases_oldest_day INTO STRICT v_oldest, v_lease_oldest FROM blocknat.meta FOR SHARE;
	-- Partitions first, records then leases, each in order of day, so
	-- that two batches never hold one day's lock while waiting for
	-- another's.
	FOR v_day IN
		SELECT DISTINCT g FROM jsonb_array_elements(p_events) AS e,
			generate_series(greatest(((e->'r'->>'s')::bigint / 86400000)::integer, v_oldest),
			                ((e->'r'->>'e')::bigint / 86400000)::integer) AS g
		WHERE (e->>'seq')::bigint > v_last AND (e->>'k')::integer = 2
		ORDER BY g
	LOOP
		PERFORM blocknat.ensure_partition('records', v_day);
	END LOOP;
	FOR v_day IN
		SELECT DISTINCT g FROM jsonb_array_elements(p_events) AS e,
			generate_series(greatest(((e->'l'->>'s')::bigint / 86400000000000)::integer, v_lease_oldest),
			                ((e->'l'->>'e')::bigint / 86400000000000)::integer) AS g
		WHERE (e->>'seq')::bigint > v_last AND (e->>'k')::integer = 4
		ORDER BY g
	LOOP
		PERFORM blocknat.ensure_partition('leases', v_day);
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
		WHEN 3 THEN -- lease held: the address's current lease
			v_l := v_ev->'l';
			INSERT INTO blocknat.current_leases AS c (router, inside, mac, start_ns, expires_ns, client_id, hostname, source, seq)
			VALUES (p_router, (v_l->>'in')::inet, decode(v_l->>'mac', 'hex'), (v_l->>'s')::bigint,
			        nullif((v_l->>'e')::bigint, 0), decode(v_l->>'cid', 'hex'), decode(v_l->>'host', 'hex'),
			        decode(v_l->>'src', 'hex'), v_seq)
			ON CONFLICT (router, inside) DO UPDATE SET
				mac = excluded.mac, start_ns = excluded.start_ns, expires_ns = excluded.expires_ns,
				client_id = excluded.client_id, hostname = excluded.hostname, source = excluded.source, seq = excluded.seq;
		WHEN 4 THEN -- lease ended: the copies; if it was the current lease, the address has none
			v_l := v_ev->'l';
			INSERT INTO blocknat.leases AS x (day, router, inside, mac, start_ns, end_ns, client_id, hostname, source, seq)
			SELECT g, p_router, (v_l->>'in')::inet, decode(v_l->>'mac', 'hex'), (v_l->>'s')::bigint, (v_l->>'e')::bigint,
			       decode(v_l->>'cid', 'hex'), decode(v_l->>'host', 'hex'), decode(v_l->>'src', 'hex'), v_seq
			FROM generate_series(greatest(((v_l->>'s')::bigint / 86400000000000)::integer, v_lease_oldest),
			                     ((v_l->>'e')::bigint / 86400000000000)::integer) AS g
			ON CONFLICT (day, router, inside, start_ns, mac) DO UPDATE SET
				end_ns = excluded.end_ns, client_id = excluded.client_id, hostname = excluded.hostname,
				source = excluded.source, seq = excluded.seq;
			DELETE FROM blocknat.current_leases
				WHERE router = p_router AND inside = (v_l->>'in')::inet
				  AND start_ns = (v_l->>'s')::bigint AND mac = decode(v_l->>'mac', 'hex');
		WHEN 5 THEN
			PERFORM blocknat.put_epoch(p_router, v_seq, v_ev->'ep');
		ELSE
			RAISE EXCEPTION USING ERRCODE = '22023',
				MESSAGE = format('router %s stream store: event %s: kind %s is not one schema version 2 takes', p_router, v_seq, v_ev->>'k');
		END CASE;
	END LOOP;
	IF v_width > 0 THEN
		INSERT INTO blocknat.widths AS w (router, width) VALUES (p_router, v_width)
		ON CONFLICT (router) DO UPDATE SET width = greatest(w.width, excluded.width);
	END IF;
	UPDATE blocknat.progress SET last_seq = v_new, updated = now() WHERE router = p_router AND stream = 'store';
	RETURN v_new;
END $$;

-- ingest_audit takes a batch of a router's audit log, a JSON array of
-- {seq, t (Unix ns), h (hash), e64 (the entry's JSON, base64)} in seq
-- order, and returns the stream's last seq. The entry travels as base64
-- so that no JSON function ever de-escapes it (they refuse \u0000). An
-- entry of a day already dropped is counted as taken and not kept.
CREATE FUNCTION blocknat.ingest_audit(p_router text, p_entries jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = blocknat, pg_temp AS $$
DECLARE
	v_last bigint;
	v_new bigint;
	v_oldest integer;
	v_day integer;
BEGIN
	PERFORM blocknat.check_router(p_router);
	IF jsonb_typeof(p_entries) IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('router %s stream audit: entries: not a JSON array', p_router);
	END IF;
	v_last := blocknat.lock_progress(p_router, 'audit');
	v_new := blocknat.check_gap(p_router, 'audit', v_last,
		ARRAY(SELECT (e->>'seq')::bigint FROM jsonb_array_elements(p_entries) WITH ORDINALITY AS a(e, i) ORDER BY i));
	IF v_new = v_last THEN
		RETURN v_last;
	END IF;
	SELECT audit_oldest_day INTO STRICT v_oldest FROM blocknat.meta FOR SHARE;
	FOR v_day IN
		SELECT DISTINCT ((e->>'t')::bigint / 86400000000000)::integer AS d FROM jsonb_array_elements(p_entries) AS e
		WHERE (e->>'seq')::bigint > v_last AND ((e->>'t')::bigint / 86400000000000)::integer >= v_oldest
		ORDER BY d
	LOOP
		PERFORM blocknat.ensure_partition('audit', v_day);
	END LOOP;
	INSERT INTO blocknat.audit (day, router, seq, time_ns, hash, entry)
	SELECT ((e->>'t')::bigint / 86400000000000)::integer, p_router, (e->>'seq')::bigint, (e->>'t')::bigint, e->>'h',
	       convert_from(decode(e->>'e64', 'base64'), 'UTF8')::json
	FROM jsonb_array_elements(p_entries) AS e
	WHERE (e->>'seq')::bigint > v_last AND ((e->>'t')::bigint / 86400000000000)::integer >= v_oldest
	ON CONFLICT DO NOTHING;
	UPDATE blocknat.progress SET last_seq = v_new, updated = now() WHERE router = p_router AND stream = 'audit';
	RETURN v_new;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA blocknat FROM PUBLIC;
GRANT EXECUTE ON FUNCTION blocknat.progress(text), blocknat.ingest(text, jsonb), blocknat.ingest_audit(text, jsonb) TO blocknat_router;
