-- 0003: one-minute OHLCV candles per product, built from the trades in md_history.
--
-- Written by the same transaction as the history rows of the trades they summarise
-- (Store.write_batch), so a candle never counts a trade that is not stored, nor misses
-- one that is. open/close are the prices of the first/last trade of the minute in the order
-- (ts_event, epoch, seq); first_*/last_* keep that key so that partial candles merge exactly
-- in any order. Epochs are compared byte-wise (COLLATE "C"), as Python compares them.
CREATE TABLE md_candles (
    product     text    NOT NULL,
    start_ns    bigint  NOT NULL,  -- first ns of the UTC minute (ts_event floored)
    open        numeric NOT NULL,
    high        numeric NOT NULL,
    low         numeric NOT NULL,
    close       numeric NOT NULL,
    volume      numeric NOT NULL,  -- sum of the trades' sizes, exact
    trades      bigint  NOT NULL,
    first_ts    bigint  NOT NULL,
    first_epoch text    COLLATE "C" NOT NULL,
    first_seq   bigint  NOT NULL,
    last_ts     bigint  NOT NULL,
    last_epoch  text    COLLATE "C" NOT NULL,
    last_seq    bigint  NOT NULL,
    stream_seq  bigint  NOT NULL,  -- highest LF_MD position of a trade in the candle
    PRIMARY KEY (product, start_ns)
);
