-- The event store of postgres-es, plus two columns it does not write:
-- `position`, a global identity used as the outbox key and returned to clients,
-- and `stored_at`, the commit time.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    stored_at      timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Transactional outbox: one row per stored event that has not reached Kafka yet. The
-- trigger below writes it in the transaction that stores the event; the relay deletes it
-- once Kafka has acknowledged the message. Rows are deleted, never skipped by a cursor,
-- so an event committed late by a slow transaction is still published.
CREATE TABLE outbox
(
    position bigint PRIMARY KEY REFERENCES events (position)
);

-- Email addresses in use, written in the transaction that stores the event, so two users
-- can never commit the same address. A clash raises unique_violation (23505), which
-- postgres-es reports as an optimistic-lock conflict; the command service then retries,
-- sees the address taken and answers 409.
CREATE TABLE user_emails
(
    email   text PRIMARY KEY,
    user_id text NOT NULL UNIQUE
);

CREATE FUNCTION meridian_after_event_insert() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO outbox (position) VALUES (NEW.position);
    IF NEW.aggregate_type = 'User' AND NEW.event_type = 'UserRegistered' THEN
        INSERT INTO user_emails (email, user_id)
        VALUES (NEW.payload -> 'UserRegistered' ->> 'email', NEW.aggregate_id);
    ELSIF NEW.aggregate_type = 'User' AND NEW.event_type = 'EmailChanged' THEN
        DELETE FROM user_emails WHERE user_id = NEW.aggregate_id;
        INSERT INTO user_emails (email, user_id)
        VALUES (NEW.payload -> 'EmailChanged' ->> 'email', NEW.aggregate_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_after_insert
    AFTER INSERT ON events
    FOR EACH ROW
EXECUTE FUNCTION meridian_after_event_insert();

-- Kafka offsets up to which the relay has published and deleted outbox rows, per
-- partition. After a crash the relay reads the topic from here to find messages that
-- reached Kafka but whose outbox rows were not yet deleted.
CREATE TABLE relay_checkpoints
(
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Results of commands sent with an Idempotency-Key header.
CREATE TABLE idempotency_keys
(
    key          text PRIMARY KEY,
    request_hash text        NOT NULL,
    status_code  integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);
