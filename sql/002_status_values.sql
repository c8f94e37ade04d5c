-- Adopt an ORM-made status enum (Prisma: enum OutboxStatus): add the values the relay writes
-- where they are missing. Its own transaction: a value added by ALTER TYPE cannot be used
-- until that transaction commits. A text status column needs nothing.
DO $$
DECLARE
    status_type regtype;
    v text;
BEGIN
    SELECT a.atttypid::regtype INTO status_type
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = {{table_literal}}::regclass
       AND a.attname = 'status' AND NOT a.attisdropped AND t.typtype = 'e';
    IF status_type IS NOT NULL THEN
        FOREACH v IN ARRAY ARRAY['PENDING', 'PROCESSING', 'COMPLETED', 'FAILED'] LOOP
            EXECUTE format('ALTER TYPE %s ADD VALUE IF NOT EXISTS %L', status_type, v);
        END LOOP;
    END IF;
END
$$;
