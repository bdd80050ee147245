-- Runs once, when the postgres container initialises an empty data directory
-- (mounted into /docker-entrypoint-initdb.d/ by docker-compose.yml).
-- One database per service; each service applies its own migrations at start-up.
CREATE DATABASE pp_feedback;
CREATE DATABASE pp_payments;
CREATE DATABASE pp_ledger;
CREATE DATABASE pp_funds;
