-- Where each stream-order consumer of LedgerFlux stands, committed in the same transaction
-- as the rows it wrote: a restart resumes from here, in stream order, so correctness never
-- depends on when (or in which order) a message broker redelivers.
CREATE TABLE IF NOT EXISTS consumer_positions (
    consumer   text PRIMARY KEY,
    stream     text NOT NULL,
    stream_seq bigint NOT NULL CHECK (stream_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
