"""The prefix-aware policy (`prefix.PrefixTable`) as a Ray Serve request router (`RequestRouter`, Ray >= 2.46,
`request_router_config` on the deployment).

The front calls the replicas' `handle` with `prefix_keys=` (`prefix.routing_keys` of the body); this router runs
in the front's process, ranks the replicas by the table and their queue lengths (as Ray last saw them), and
records where each request went. Ray then sends the request to the best-ranked replica that has room
(`max_ongoing_requests`), trying the next rank when it has none.

Not `FIFOMixin`: with it, a replica found for one request may be handed to an older waiting one, which would
undo the choice made for this one's prefix. Ray's own `PrefixCacheAffinityRouter` (ray.serve.llm) needs
`ray[llm]` (pyarrow and more), matches characters without regard to messages (two conversations opening with
"What" share a prefix), and waits on an actor inside the router loop; this one is a dict.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .prefix import PrefixKey, PrefixTable


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(self, n_slots: int = 4, **kwargs: object) -> None:
        self.table = PrefixTable(n_slots=n_slots)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        load = {unique_id: self._replica_queue_len_cache.get(replica.replica_id) or 0
                for unique_id, replica in by_id.items()}
        ranked = self.table.choose(self._keys(pending_request), load)
        if not ranked:
            return []
        return [[by_id[ranked[0]]], [by_id[unique_id] for unique_id in ranked[1:]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        self.table.record(self._keys(pending_request), replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id.unique_id)

    def _keys(self, pending_request: PendingRequest | None) -> tuple[PrefixKey, ...]:
        if pending_request is None:
            return ()
        return tuple(pending_request.kwargs.get("prefix_keys") or ())
