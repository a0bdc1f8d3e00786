"""Direct get (one message by sequence or subject), stream positions, and the
checkpoint object store."""

from __future__ import annotations

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from ledgerflux.bus.conversions import _direct_msg
from ledgerflux.bus.core import _BusCore
from ledgerflux.bus.publishing import PUBLISH_ATTEMPT_TIMEOUT_S
from ledgerflux.bus.types import CHECKPOINT_BUCKET, BusError, InMsg


class _Direct(_BusCore):
    """The :class:`Bus` methods of its direct get, positions, checkpoints."""

    async def last_for_subject(self, stream: str, subject: str) -> InMsg | None:
        """The last message stored on ``subject`` (direct get), or None."""
        return await self._direct_get(stream, {"last_by_subj": subject})

    async def get_msg(self, stream: str, seq: int) -> InMsg | None:
        """The message at ``seq`` (direct get), or None if there is none (deleted/expired).

        Stream sequences start at 1: an empty stream's ``last_seq`` is 0, which holds
        nothing (the server would answer "408 Empty Request").
        """
        if seq < 1:
            return None
        return await self._direct_get(stream, {"seq": seq})

    async def _direct_get(self, stream: str, request: dict[str, object]) -> InMsg | None:
        # The request form with a JSON body works on nats-server 2.9 as well as later ones.
        async def get() -> InMsg | None:
            reply = await self._client.request(
                f"$JS.API.DIRECT.GET.{stream}",
                orjson.dumps(request),
                timeout=PUBLISH_ATTEMPT_TIMEOUT_S,
            )
            return _direct_msg(reply)

        try:
            return await self._bridge.run(get)
        except nats.errors.NoRespondersError:
            raise BusError(f"stream {stream} does not exist or has no direct get") from None
        except nats.errors.TimeoutError:
            raise BusError(f"direct get on {stream} timed out") from None

    async def last_seq_matching(self, stream: str, filter_subject: str) -> int:
        """The stream sequence of the last message on any subject matching
        ``filter_subject`` (0 if there is none). A stream-order consumer with that filter
        has seen everything published so far once its position reaches this value (the
        drain of ``ledgerflux up`` waits for that)."""

        async def last() -> int:
            js = self._jsctx
            info = await js.stream_info(stream, subjects_filter=filter_subject)
            subjects = info.state.subjects or {}
            found = 0
            for subject in subjects:
                reply = await self._client.request(
                    f"$JS.API.DIRECT.GET.{stream}",
                    orjson.dumps({"last_by_subj": subject}),
                    timeout=PUBLISH_ATTEMPT_TIMEOUT_S,
                )
                msg = _direct_msg(reply)
                if msg is not None:
                    found = max(found, msg.stream_seq)
            return found

        return await self._api(f"last message of {stream} {filter_subject}", last)

    async def ensure_checkpoints(self) -> None:
        """Create the object-store bucket :data:`CHECKPOINT_BUCKET` if missing (same
        replicas as the streams). Idempotent."""

        async def ensure() -> None:
            js = self._jsctx
            try:
                await js.object_store(CHECKPOINT_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                await js.create_object_store(
                    CHECKPOINT_BUCKET,
                    api.ObjectStoreConfig(
                        bucket=CHECKPOINT_BUCKET,
                        description="LedgerFlux daemon checkpoints (normalizer state)",
                        storage=api.StorageType.FILE,
                        replicas=self._config.replicas,
                    ),
                )

        await self._api(f"ensure object store {CHECKPOINT_BUCKET}", ensure)

    async def put_checkpoint(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` in the checkpoint bucket (chunked by the object
        store, so any size fits under ``max_payload``). The previous version is replaced
        only once the new one is complete."""

        async def put() -> None:
            store = await self._jsctx.object_store(CHECKPOINT_BUCKET)
            await store.put(name, data)

        await self._api(f"put checkpoint {name}", put)

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The checkpoint stored under ``name``, or None if there is none."""

        async def get() -> bytes | None:
            try:
                store = await self._jsctx.object_store(CHECKPOINT_BUCKET)
                result = await store.get(name)
            except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
                return None
            except nats.js.errors.NotFoundError:
                return None
            return bytes(result.data or b"")

        return await self._api(f"get checkpoint {name}", get)
