-- The kit's role and database on the PostgreSQL server (deploy/multihost/README.md).
-- Run once, as the server's superuser:
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -f deploy/multihost/database.sql
--   sudo -u postgres psql -c '\password spoolkit'
-- (\password sends a SCRAM hash of the password, which then never appears in
-- the server's logs or in a shell history.)

-- A login and nothing else: not a superuser, cannot create databases or roles,
-- no replication, no bypassing row security (CREATE ROLE's defaults).
CREATE ROLE spoolkit LOGIN;
-- It owns the kit's database, and so the tables the kit creates there at its
-- first start (each start checks the schema under an advisory lock, which
-- needs CREATE there and ownership of the tables).
CREATE DATABASE spoolkit OWNER spoolkit;
-- No other role may connect to it (superusers aside).
REVOKE ALL ON DATABASE spoolkit FROM PUBLIC;
\connect spoolkit
-- The kit's tables go into the schema public: the role owns it, nobody else
-- may create anything there (PostgreSQL 15 and later already give it to the
-- database's owner; older versions let every role create in it).
ALTER SCHEMA public OWNER TO spoolkit;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
