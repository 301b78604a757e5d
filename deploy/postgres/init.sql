-- Run once by the postgres image when its data volume is new (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates `subscriptions`; the dispatcher gets a database of its own.
CREATE DATABASE dispatcher OWNER webhooks;
