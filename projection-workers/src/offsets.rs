//! The `projection_offsets` table: per projection, topic and partition, the offset of the
//! next message to apply.

use std::collections::{BTreeMap, HashMap};

use sqlx::{PgConnection, PgPool};

/// Returns the stored next offsets of `projection` on `topic`, by partition.
pub async fn load(
    pool: &PgPool,
    projection: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projection_offsets
         WHERE projection = $1 AND topic = $2",
    )
    .bind(projection)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Locks the offset rows of `partitions` until the transaction ends and returns their
/// next offsets. A missing row is created with offset 0 first, so that two consumers
/// that both hold a partition during a rebalance apply its messages one after the other.
pub async fn lock(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_offsets (projection, topic, partition, next_offset)
         SELECT $1, $2, partition, 0 FROM unnest($3::integer[]) AS partition
         ORDER BY partition
         ON CONFLICT (projection, topic, partition) DO NOTHING",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .execute(&mut *connection)
    .await?;

    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projection_offsets
         WHERE projection = $1 AND topic = $2 AND partition = ANY($3)
         ORDER BY partition
         FOR UPDATE",
    )
    .bind(projection)
    .bind(topic)
    .bind(partitions)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Raises the stored next offsets of `projection` to `next_offsets`; an offset never
/// moves backwards.
pub async fn store(
    connection: &mut PgConnection,
    projection: &str,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<(), sqlx::Error> {
    let partitions: Vec<i32> = next_offsets.keys().copied().collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();
    sqlx::query(
        "INSERT INTO projection_offsets (projection, topic, partition, next_offset)
         SELECT $1, $2, partition, next_offset
         FROM unnest($3::integer[], $4::bigint[]) AS t (partition, next_offset)
         ON CONFLICT (projection, topic, partition) DO UPDATE
         SET next_offset = GREATEST(projection_offsets.next_offset, EXCLUDED.next_offset),
             updated_at = now()",
    )
    .bind(projection)
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(connection)
    .await?;
    Ok(())
}
