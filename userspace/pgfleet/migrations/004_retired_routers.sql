-- Version 4: a router taken out of the fleet for good is marked retired,
-- so that the fleet stops expecting its deliveries (its records, leases
-- and audit entries stay until retention drops them, like everyone's).
-- A retired router that delivers again is simply active again: its last
-- ingest is then after its retirement. Only the owner writes here; the
-- router role has no grant on it.
CREATE TABLE blocknat.retired_routers (
	router  text PRIMARY KEY,
	retired timestamptz NOT NULL DEFAULT now(),
	by_role text NOT NULL DEFAULT session_user
);
