"""Strict mode: the node daemon's checks against its trust policy (`rtt fabric serve --strict`).

Three requests are gated, each in one method the daemon calls before it acts:
- PREPARE (`prepare`): the batch must belong to a plan whose signature the policy trusts
  (rtt_fabric.binding). A verified plan is held, the last `PLANS_HELD` of them, so the later
  batches of a plan need not bring it again.
- REGISTER (`register`): the manifest must be signed by a trusted key, unless `allow_unsigned`
  covers every symbol (rtt_fabric.manifests).
- ATTACH (`attach`): a capability token (signed by a trusted key, or MACed under one of the
  node's token keys) must grant that end of the symbol, with scopes that
  cover the capabilities of its routes (rtt_fabric.tokens). The scopes granted stay with the
  end while its session holds it, and a PREPARE that would give it a route whose capabilities
  they do not cover is NACKed (`routes`), so a route committed after the attach is held to
  the same token.

Holds only memory: verified plans, spent nonces, granted scopes. The clock is passed in.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from rtt_fabric import binding, envelope, graph, manifests, protocol, steps, tokens, trust

PLANS_HELD = 8


class Gate:
    def __init__(self, policy: trust.TrustPolicy, *, node: str,
                 clock: Callable[[], float] = time.time,
                 token_keys: Mapping[str, bytes] | None = None) -> None:
        self.policy, self.node, self._clock = policy, node, clock
        self._token_keys = dict(token_keys or {})  # MACed tokens' keys, by key id
        self._plans: collections.OrderedDict[str, binding.Bound] = collections.OrderedDict()
        self._nonces = tokens.NonceBook()
        self._grants: dict[tuple[str, str], frozenset[str]] = {}  # scopes of each end's token

    # --- PREPARE -------------------------------------------------------------------------------

    def prepare(self, plan_id: str, signed: protocol.SignedPlan | None,
                batch: Sequence[steps.Step]) -> str:
        """Why the batch may not be prepared here ("" if it may)."""
        try:
            bound = self._bound(plan_id, signed)
            binding.check(bound, batch)
        except binding.Refused as exc:
            return exc.reason()
        return ""

    def _bound(self, plan_id: str, signed: protocol.SignedPlan | None) -> binding.Bound:
        if signed is None:
            held = self._plans.get(plan_id)
            if held is None:
                raise binding.Refused(trust.Refusal.UNSIGNED,
                                      f"plan {plan_id} is not held here; a strict node needs "
                                      "the PREPARE to carry the signed plan (`plan`)")
            self._plans.move_to_end(plan_id)
            return held
        bound = binding.bind(plan_id, signed.signature, signed.content, signed.provenance,
                             policy=self.policy, node=self.node)
        self._plans[plan_id] = bound
        self._plans.move_to_end(plan_id)
        while len(self._plans) > PLANS_HELD:
            self._plans.popitem(last=False)
        return bound

    def routes(self, batch: Iterable[steps.Step], attached: Mapping[tuple[str, str], Hashable]
               ) -> str:
        """Why the batch would hand an attached end a route its token does not cover. Every
        holder of an end got it through `attach`, so the grant recorded is the holder's."""
        for step in batch:
            if step.op is steps.Op.DEL:
                continue
            for end in _local_ends(step.link, self.node):
                if end not in attached:  # free: its next holder shows a token for its routes
                    continue
                missing = sorted(set(step.link.caps) - self._grants.get(end, frozenset()))
                if missing:
                    return (f"{tokens.Refusal.SCOPE.value}: {end[0]} ({end[1]}) is attached "
                            f"with a token whose scopes do not cover {missing}, which "
                            f"{step.link.from_} -> {step.link.to} needs")
        return ""

    # --- REGISTER ------------------------------------------------------------------------------

    def register(self, service: str, symbols: Sequence[Mapping[str, Any]],
                 signature: protocol.EnvelopeWire | None) -> None:
        """Raise manifests.Refused unless the policy accepts this manifest."""
        try:
            env = _envelope(signature)
        except envelope.EnvelopeError as exc:
            raise manifests.Refused(trust.Refusal.INVALID.value, f"service {service}: {exc}"
                                    ) from None
        manifests.check(service, symbols, env, self.policy)

    # --- ATTACH --------------------------------------------------------------------------------

    def attach(self, session: Hashable, saddr: str, role: str,
               token: protocol.EnvelopeWire | None, *, routes: Iterable[graph.Link],
               attached: Mapping[tuple[str, str], Hashable]) -> None:
        """Raise tokens.Refused unless the token opens this end. `routes` are this node's
        committed links (those at this end are picked here); `attached` maps each end to the
        session holding it. The scopes are recorded for `routes` only if this session may take
        the end, so a refused attach never changes the holder's grant."""
        end = (saddr, role)
        caps = frozenset(c for link in routes if end in _local_ends(link, self.node)
                         for c in link.caps)
        try:
            env = _envelope(token)
        except envelope.EnvelopeError as exc:
            raise tokens.Refused(tokens.Refusal.INVALID, str(exc)) from None
        granted = tokens.check(env, self.policy, saddr=saddr, role=role, caps=caps,
                               now=self._clock(), nonces=self._nonces,
                               mac_keys=self._token_keys)
        if attached.get(end, session) == session:
            self._grants[end] = granted.scopes

    def detach(self, saddr: str, role: str) -> None:
        self._grants.pop((saddr, role), None)


def _local_ends(link: graph.Link, node: str) -> list[tuple[str, str]]:
    ends = []
    if link.from_node == node:
        ends.append((link.from_, "pub"))
    if link.to_node == node:
        ends.append((link.to, "sub"))
    return ends


def _envelope(wire: protocol.EnvelopeWire | None) -> envelope.Envelope | None:
    if wire is None:
        return None
    return envelope.Envelope.from_text(wire.payload_type, wire.payload,
                                       [(s.keyid, s.sig) for s in wire.signatures])
