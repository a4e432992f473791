-- Live updates for Socket.IO subscribers, and the progress that read-your-writes waits for.
--
-- The read-models projection appends one row to `rm_updates` for each event that a
-- subscription can see, in the transaction that folds the event. `seq` numbers the rows in
-- commit order: every such transaction takes the row lock of `rm_update_head` before it
-- assigns numbers, so a transaction that commits later never holds a smaller `seq`. Query
-- services deliver rows in `seq` order and replay them to clients that resume.
CREATE TABLE rm_update_head
(
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Highest `seq` assigned so far.
    seq         bigint NOT NULL,
    -- Highest `seq` deleted by the retention window; a resume from before it is refused.
    pruned_seq  bigint NOT NULL
);
INSERT INTO rm_update_head (seq, pruned_seq) VALUES (0, 0);

CREATE TABLE rm_updates
(
    seq          bigint PRIMARY KEY,
    -- Global position of the event in `events`; clients resume from it.
    position     bigint      NOT NULL UNIQUE,
    user_id      uuid        NOT NULL,
    -- `location` or `profile`.
    kind         text        NOT NULL,
    -- Coordinates of a location update, for area subscriptions.
    latitude     double precision,
    longitude    double precision,
    -- The update as subscribers receive it; NULL once the user is erased.
    payload      jsonb,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rm_updates_user ON rm_updates (user_id, seq);
-- Rows arrive in time order, so a BRIN index serves the retention delete at little cost.
CREATE INDEX rm_updates_committed_at ON rm_updates USING brin (committed_at);

-- The last event of each aggregate that the read-models projection has processed, whether
-- or not it changed a row. A read that waits for position P looks up the aggregate and
-- sequence of P in `events` and compares. Holds ids and numbers only, so it outlives an erase.
CREATE TABLE rm_applied
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
