-- Read models written by the projection workers. `last_sequence` is the sequence of the
-- aggregate's last event folded in; `last_position` is that event's global position.
CREATE TABLE rm_users
(
    user_id       uuid PRIMARY KEY,
    email         text        NOT NULL,
    name          text        NOT NULL,
    active        boolean     NOT NULL,
    registered_at timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_sequence bigint      NOT NULL,
    last_position bigint      NOT NULL
);
CREATE INDEX rm_users_email ON rm_users (email);

CREATE TABLE rm_profiles
(
    user_id       uuid PRIMARY KEY,
    settings      jsonb       NOT NULL DEFAULT '{}',
    image         jsonb,
    updated_at    timestamptz NOT NULL,
    last_sequence bigint      NOT NULL,
    last_position bigint      NOT NULL
);

CREATE TABLE rm_latest_locations
(
    user_id     uuid PRIMARY KEY,
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL,
    recorded_at timestamptz      NOT NULL,
    sequence    bigint           NOT NULL,
    position    bigint           NOT NULL,
    event_id    uuid             NOT NULL
);

CREATE TABLE rm_location_history
(
    event_id    uuid PRIMARY KEY,
    user_id     uuid             NOT NULL,
    sequence    bigint           NOT NULL,
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL,
    recorded_at timestamptz      NOT NULL,
    position    bigint           NOT NULL
);
CREATE INDEX rm_location_history_user_time ON rm_location_history (user_id, recorded_at, sequence);

-- Kafka offsets consumed by each projection, written in the transaction that changes the
-- read model, so a restart neither skips nor repeats a message.
CREATE TABLE projection_offsets
(
    projection  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);
