-- At most one snapshot per aggregate. The primary key includes last_sequence, so two
-- commits that each believed they wrote an aggregate's first snapshot could both insert
-- one: a command loads the snapshot and the events after it in two queries, and another
-- commit in between leaves it with that commit's events but no snapshot. With two rows, a
-- guarded update matched both and every later commit of the aggregate failed as a conflict.
-- The command service now upserts on this key and keeps the snapshot with the greater
-- last_sequence.
DELETE FROM snapshots AS older
USING snapshots AS newer
WHERE older.aggregate_type = newer.aggregate_type
  AND older.aggregate_id = newer.aggregate_id
  AND older.last_sequence < newer.last_sequence;

CREATE UNIQUE INDEX snapshots_one_per_aggregate ON snapshots (aggregate_type, aggregate_id);
