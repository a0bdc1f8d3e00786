-- 0001: event history (partitioned by day) and latest state per product.

-- History: one row per canonical event. `day` is derived from ts_event (UTC) by the writer,
-- deterministically, so the same event always lands in the same partition and
-- ON CONFLICT on the primary key makes re-delivery idempotent. The partition key must be
-- part of the primary key on a partitioned table; (product, epoch, seq) stays unique because
-- one (product, epoch, seq) only ever has one ts_event.
CREATE TABLE md_history (
    product    text   NOT NULL,
    epoch      text   NOT NULL,
    seq        bigint NOT NULL,
    day        date   NOT NULL,
    type       text   NOT NULL,
    ts_event   bigint NOT NULL,
    ts_ingest  bigint NOT NULL,
    stream_seq bigint NOT NULL,
    -- The canonical wire object. Prices are JSON strings, which jsonb keeps exactly.
    payload    jsonb  NOT NULL,
    PRIMARY KEY (product, epoch, seq, day)
) PARTITION BY RANGE (day);

-- Day partitions (md_history_YYYYMMDD) are created on demand by the writer. The default
-- partition catches anything written before its day's partition exists, so an insert never
-- fails for want of a partition.
CREATE TABLE md_history_default PARTITION OF md_history DEFAULT;

CREATE TABLE md_latest (
    product    text        PRIMARY KEY,
    epoch      text        NOT NULL,
    seq        bigint      NOT NULL,
    ts_event   bigint      NOT NULL,
    stream_seq bigint      NOT NULL,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
