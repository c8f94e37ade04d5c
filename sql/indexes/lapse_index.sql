-- Leases in flight, by when they lapse: the claim takes over those that did. Only rows in
-- flight are here, however many COMPLETED rows the table keeps. The second condition keeps
-- statements that look rows up by id and check their status (recording an outcome,
-- extending a lease) off this index: it holds an entry for every recent claim until vacuum
-- removes it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {{lapse_idx}} ON {{table}} (lease_expires_at)
    WHERE status = 'PROCESSING' AND lease_expires_at IS NOT NULL;
