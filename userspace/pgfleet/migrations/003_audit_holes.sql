-- Version 3: a router's audit log may lack entries its own retention
-- removed before they reached the database: a router that ran for longer
-- than audit retention before replication was turned on, or one cut off
-- from the database for that long. Its replication then says so, and the
-- database records the hole (audit_holes) instead of refusing every later
-- entry: the gap check stays strict for everything else.

CREATE TABLE blocknat.audit_holes (
	router   text NOT NULL,
	from_seq bigint NOT NULL,
	to_seq   bigint NOT NULL,
	reported timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (router, from_seq),
	CHECK (from_seq >= 1 AND to_seq >= from_seq)
);

-- skip_audit moves the router's audit progress from p_have to p_first - 1,
-- recording entries p_have+1 to p_first-1 as a hole, and returns the new
-- progress. p_have must be the progress the router last read, so that a
-- stale or repeated call (the database already took those entries, or an
-- earlier skip) changes nothing: it returns the progress as it is, and a
-- progress at or past p_first is never moved back.
CREATE FUNCTION blocknat.skip_audit(p_router text, p_have bigint, p_first bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = blocknat, pg_temp AS $$
DECLARE
	v_last bigint;
BEGIN
	PERFORM blocknat.check_router(p_router);
	IF p_have IS NULL OR p_first IS NULL OR p_have < 0 OR p_first <= p_have + 1 THEN
		RAISE EXCEPTION USING ERRCODE = '22023',
			MESSAGE = format('router %s stream audit: skip from %s to %s: not a hole', p_router, p_have, p_first);
	END IF;
	v_last := blocknat.lock_progress(p_router, 'audit');
	IF v_last <> p_have THEN
		RETURN v_last;
	END IF;
	INSERT INTO blocknat.audit_holes (router, from_seq, to_seq) VALUES (p_router, p_have + 1, p_first - 1);
	UPDATE blocknat.progress SET last_seq = p_first - 1, updated = now() WHERE router = p_router AND stream = 'audit';
	RETURN p_first - 1;
END $$;

REVOKE ALL ON FUNCTION blocknat.skip_audit(text, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION blocknat.skip_audit(text, bigint, bigint) TO blocknat_router;
