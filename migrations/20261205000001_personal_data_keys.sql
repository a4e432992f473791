-- Per-user encryption of personal data (issue 3).
--
-- Every personal field of an event is sealed with a data key of its user. The keys live
-- here, wrapped by the key provider (a local master key file or AWS KMS); erasing a user
-- deletes their row, after which nothing sealed with it can be opened again.

DO
$$
BEGIN
    IF EXISTS (SELECT 1 FROM events) THEN
        RAISE EXCEPTION 'this event store holds events written before personal data was encrypted; '
            'reset it (make reset deletes every stored event) and import again';
    END IF;
END;
$$;

CREATE TABLE user_keys
(
    user_id       text PRIMARY KEY,
    key_version   integer     NOT NULL DEFAULT 1 CHECK (key_version > 0),
    master_key_id text        NOT NULL,
    wrapped_key   bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    rewrapped_at  timestamptz
);

-- Keys that belong to no user, such as the key of the email blind index.
CREATE TABLE system_keys
(
    name          text PRIMARY KEY,
    master_key_id text        NOT NULL,
    wrapped_key   bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    rewrapped_at  timestamptz
);

-- Users whose key was destroyed. Tables that hold a user's data outside the event store
-- can delete it with a trigger on this table.
CREATE TABLE erased_users
(
    user_id   text PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);

-- Email uniqueness now rests on a blind index (a keyed HMAC of the normalized address),
-- so the address itself is stored nowhere outside sealed events and read models.
DROP TABLE user_emails;
CREATE TABLE user_emails
(
    email_index text PRIMARY KEY,
    user_id     text NOT NULL UNIQUE
);

-- Runs before each event row is written, in the transaction that writes it:
-- 1. The user's key row must exist. It is locked against a concurrent erase, so no event
--    of a user can commit after the transaction that destroyed their key.
-- 2. The command service passes the blind index of a new email address as the metadata key
--    `email_index`. It is moved into user_emails and removed from the metadata, so the
--    immutable event never carries it and an erase can delete it.
-- 3. `UserErased` destroys the key, the email index and the snapshots of the user's
--    aggregates, and records the erase.
CREATE FUNCTION meridian_before_event_insert() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    email_index text;
BEGIN
    IF NEW.aggregate_type IN ('User', 'Profile', 'LocationTrack') THEN
        PERFORM 1 FROM user_keys WHERE user_id = NEW.aggregate_id FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'user % has no data key: erased, or written around the key ring',
                NEW.aggregate_id USING ERRCODE = 'MR001';
        END IF;
    END IF;

    email_index := NEW.metadata::jsonb ->> 'email_index';
    IF NEW.aggregate_type = 'User' AND NEW.event_type IN ('UserRegistered', 'EmailChanged') THEN
        IF email_index IS NULL THEN
            RAISE EXCEPTION '% event of user % lacks the email_index metadata',
                NEW.event_type, NEW.aggregate_id USING ERRCODE = 'MR002';
        END IF;
        DELETE FROM user_emails WHERE user_id = NEW.aggregate_id;
        INSERT INTO user_emails (email_index, user_id) VALUES (email_index, NEW.aggregate_id);
    END IF;
    IF email_index IS NOT NULL THEN
        NEW.metadata := (NEW.metadata::jsonb - 'email_index')::json;
    END IF;

    IF NEW.aggregate_type = 'User' AND NEW.event_type = 'UserErased' THEN
        DELETE FROM user_keys WHERE user_id = NEW.aggregate_id;
        DELETE FROM user_emails WHERE user_id = NEW.aggregate_id;
        DELETE FROM snapshots WHERE aggregate_id = NEW.aggregate_id;
        INSERT INTO erased_users (user_id) VALUES (NEW.aggregate_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_before_insert
    BEFORE INSERT ON events
    FOR EACH ROW
EXECUTE FUNCTION meridian_before_event_insert();

CREATE OR REPLACE FUNCTION meridian_after_event_insert() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    INSERT INTO outbox (position) VALUES (NEW.position);
    RETURN NULL;
END;
$$;
